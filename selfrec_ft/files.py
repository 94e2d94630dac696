"""Reading the user's text files and writing outputs, with one-line errors instead of tracebacks.

Every input text file (corpus JSONL, prompt presets, sweep and recipe YAML, report inputs) is read as
UTF-8 through :func:`read_text` or :func:`iter_text_lines`: a UTF-8 byte-order mark is accepted and
dropped; any other byte sequence that is not UTF-8 raises ``UserError(file, line, "not valid UTF-8
...")``. Every output goes through :func:`writing` (or a helper built on it): an ``OSError`` — the
path is a directory, a parent is a file, permission denied, disk full — becomes ``UserError(path,
"cannot write: <reason>")``. :func:`atomic_write_text` lives in :mod:`selfrec_ft.jsonl`; files it
creates get the user's umask (:func:`apply_umask`).

Standard library only.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from selfrec_ft.errors import UserError

UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _not_utf8(data: bytes, start: int, path, first_line: int = 1) -> UserError:
    """The error for ``data`` (the file's bytes from line ``first_line`` on) failing at byte ``start``."""
    line = first_line + data.count(b"\n", 0, start)
    column = start - (data.rfind(b"\n", 0, start) + 1) + 1
    hint = ""
    if first_line == 1 and data.startswith(_UTF16_BOMS):
        hint = "; the file starts with a UTF-16 byte-order mark: save it as UTF-8"
    return UserError(f"not valid UTF-8 (byte 0x{data[start]:02x} at column {column}{hint})", path, line)


def decode_utf8(data: bytes, path: str | os.PathLike | None = None, first_line: int = 1) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark dropped when ``first_line`` is 1)."""
    if first_line == 1 and data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(data, exc.start, path, first_line) from None


def _input_error(exc: OSError, path, what: str) -> UserError:
    if isinstance(exc, FileNotFoundError):
        return UserError(f"{what} not found", path)
    if isinstance(exc, IsADirectoryError):
        return UserError(f"is a directory, expected a {what}", path)
    return UserError(f"cannot read {what}: {exc.strerror or exc}", path)


def read_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _input_error(exc, path, what) from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A user's text file as UTF-8 (see the module docstring); ``what`` names it in errors."""
    return decode_utf8(read_bytes(path, what), path)


def open_input(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """``open(path, "rb")`` with a one-line error (not found, a directory, unreadable)."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise _input_error(exc, path, what) from None


def iter_text_lines(path: str | os.PathLike, what: str = "file") -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of every line of a UTF-8 file, streamed; lines end at ``\\n`` only
    (so a U+2028 or U+0085 inside a JSON string never splits a line) and keep their ending."""
    with open_input(path, what) as fh:
        for lineno, raw in enumerate(fh, start=1):
            yield lineno, decode_utf8(raw, path, lineno)


# ----------------------------------------------------------------------------- writing


def _file_in_the_way(path: Path) -> str:
    """The first of ``path`` and its parents that exists and is not a directory (else ``path``)."""
    for p in (path, *path.parents):
        if os.path.lexists(p) and not p.is_dir():
            return os.fspath(p)
    return os.fspath(path)


RESUMABLE = "what was written so far is kept: free space and rerun to resume"
REPLACED_WHOLE = "the file was left as it was: free space and rerun"


def write_error(exc: BaseException, path: str | os.PathLike, full_note: str = RESUMABLE) -> UserError:
    """``UserError(path, "cannot write: <reason>")`` for an error raised while writing ``path``: an
    ``OSError`` or a library's own I/O error (e.g. safetensors'), whose message is used. A full
    disk adds ``full_note`` (what happened to the output and what to do)."""
    if not isinstance(exc, OSError):
        text = " ".join(str(exc).split())
        full = "no space left on device" in text.lower() or "os error 28" in text
        return UserError(f"cannot write: {text}" + (f" ({full_note})" if full else ""), path)
    code = exc.errno
    if isinstance(exc, IsADirectoryError):
        reason = "it is a directory, expected a file"
    elif code == errno.ENOSPC:
        reason = f"no space left on device ({full_note})"
    elif code == errno.EDQUOT:
        reason = f"disk quota exceeded ({full_note})"
    elif code == errno.EROFS:
        reason = "read-only file system"
    elif isinstance(exc, (NotADirectoryError, FileExistsError)):
        where = _file_in_the_way(Path(exc.filename if exc.filename is not None else path))
        reason = ("it" if where == os.fspath(path) else where) + " is a file, expected a directory"
    else:
        reason = exc.strerror.lower() if exc.strerror else str(exc)
    return UserError(f"cannot write: {reason}", path)


@contextmanager
def writing(path: str | os.PathLike, also: tuple[type[BaseException], ...] = (), full_note: str = RESUMABLE):
    """Turn an ``OSError`` (or one of the exception types ``also``: a library's I/O errors) raised
    inside the block into :func:`write_error` for ``path``."""
    try:
        yield
    except UserError:
        raise
    except (OSError, *also) as exc:
        raise write_error(exc, path, full_note) from None


def ensure_dir(path: str | os.PathLike, for_file: str | os.PathLike | None = None) -> Path:
    """``path`` as a directory (created with its parents); a file in the way (or no permission) is a
    ``UserError`` naming ``for_file`` — the output the directory is for — when given, else ``path``."""
    path = Path(path)
    with writing(for_file if for_file is not None else path):
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", os.fspath(path))
        path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a matplotlib figure to ``path`` (its directory created; an unwritable path is one
    :class:`UserError`) and close it when pyplot tracks it."""
    import sys

    path = Path(path)
    ensure_dir(path.parent, for_file=path)
    try:
        with writing(path):
            fig.savefig(path, dpi=dpi)
    finally:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close(fig)
    return path


def writable_dir(path: str | os.PathLike, create: bool = True) -> Path:
    """``path`` as a directory this process can write in: created (:func:`ensure_dir`) and probed
    with a temporary file, so that a read-only file system, a permission problem or a file in the
    way is one line before any work starts (not a traceback when the first result is saved). With
    ``create=False`` nothing is left behind: the nearest existing directory on the way is probed."""
    path = Path(path)
    if create:
        probe = ensure_dir(path)
    else:
        probe = next((p for p in (path, *path.parents) if os.path.lexists(p)), Path("."))
        if not probe.is_dir():
            with writing(path):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", os.fspath(probe))
    with writing(path):
        fd, name = tempfile.mkstemp(dir=probe, prefix=".selfrec-write-check-")
        os.close(fd)
        os.unlink(name)
    return path


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(*paths: str | os.PathLike) -> None:
    """Give ``paths`` (files; directories are walked) the mode a plain ``open`` would: 0o666 minus
    the umask. For files written through temporary files (created 0600) or by libraries that do."""
    mode = 0o666 & ~current_umask()
    for p in paths:
        p = Path(p)
        files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
        for f in files:
            with writing(f):
                os.chmod(f, mode)


# ----------------------------------------------------------------------------- YAML


def parse_yaml(text: str, source: str | os.PathLike | None = None) -> tuple[Any, dict[tuple, int]]:
    """``(data, lines)``: ``yaml.safe_load`` of ``text`` and the 1-based line of every key path in it
    (``lines[("tasks", "pairwise-recognition", "user")]``); invalid YAML is a ``UserError`` at its line."""
    import yaml

    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = re.sub(r"\s+", " ", str(getattr(exc, "problem", None) or exc)).strip()
        raise UserError(f"invalid YAML ({problem})", source, mark.line + 1 if mark else None) from None
    lines: dict[tuple, int] = {}

    def walk(n, prefix: tuple) -> None:
        lines.setdefault(prefix, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                lines[prefix + (k.value,)] = k.start_mark.line + 1
                walk(v, prefix + (k.value,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, prefix + (i,))

    if node is not None:
        walk(node, ())
    return data, lines


def load_yaml(path: str | os.PathLike, what: str = "YAML file") -> tuple[Any, dict[tuple, int]]:
    """:func:`parse_yaml` of a user's YAML file read with :func:`read_text`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found" if not path.exists() else f"{what} is not a file", path)
    return parse_yaml(read_text(path, what), path)


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes, read in blocks (corpus files, GGUF files, steering vectors)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
