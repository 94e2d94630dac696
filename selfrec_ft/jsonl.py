"""JSON-lines I/O: line-numbered validation, crash-safe appends and atomic writes.

Long jobs (generation, evaluation, sweeps) append rows with :class:`JsonlAppender`: each batch is
written as complete lines in a single ``write`` followed by ``fsync``. When the file is opened again,
a last line without its newline is kept (and given its newline) when it is a complete JSON object — a
hand-edited file often lacks the final newline — and dropped only when it does not parse (a line cut
short by a kill or a full disk), so a rerun neither loses nor duplicates rows.

Text is read through :mod:`selfrec_ft.files` (UTF-8, a byte-order mark accepted, a bad byte named by
file and line); a write that fails raises a one-line ``UserError`` naming the path and the reason.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from selfrec_ft.errors import UserError
from selfrec_ft.files import (
    REPLACED_WHOLE,
    current_umask,
    decode_utf8,
    ensure_dir,
    iter_text_lines,
    open_input,
    writing,
)


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__


def parse_object_line(text: str, path: str | os.PathLike, lineno: int) -> dict[str, Any]:
    """One line of a JSONL file as a JSON object, or a :class:`UserError` naming the file and line."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON ({exc.msg})", path, lineno) from None
    if not isinstance(obj, dict):
        raise UserError("expected a JSON object", path, lineno)
    return obj


def iter_jsonl(
    path: str | os.PathLike, required: Mapping[str, type | tuple[type, ...]] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of ``path``.

    Raises :class:`UserError` naming the file and line for malformed JSON, a line that is not a JSON
    object, or a ``required`` field that is missing or of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found" if not path.exists() else "not a file", path)
    for lineno, raw in iter_text_lines(path):
        if not raw.strip():
            continue
        obj = parse_object_line(raw, path, lineno)
        for field, ftype in (required or {}).items():
            if field not in obj:
                raise UserError(f'missing field "{field}"', path, lineno)
            if not isinstance(obj[field], ftype) or isinstance(obj[field], bool) and bool not in (
                ftype if isinstance(ftype, tuple) else (ftype,)
            ):
                raise UserError(
                    f'field "{field}" must be {_type_name(ftype)}, got {type(obj[field]).__name__}',
                    path,
                    lineno,
                )
        yield lineno, obj


def _complete_object(line: bytes) -> dict | None:
    """The JSON object ``line`` (no newline) holds, or None: a line cut short never is one."""
    try:
        obj = json.loads(line.decode("utf-8").lstrip("\ufeff"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _tail(path: Path, block: int = 1 << 16) -> tuple[int, bytes]:
    """``(offset, bytes)`` of what follows the last newline of ``path`` (empty when it ends in one)."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        pos, tail = size, b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
            cut = tail.rfind(b"\n")
            if cut >= 0:
                return pos + cut + 1, tail[cut + 1:]
        return 0, tail


def repair_tail(path: str | os.PathLike) -> str | None:
    """Make ``path`` end with a newline: a last line that is a complete JSON object gets its newline
    (``"completed"``); one that does not parse — a write cut short — is truncated (``"dropped"``);
    ``None`` when there was nothing to do (or no file). The file is opened for writing only then."""
    path = Path(path)
    if not path.is_file():
        return None
    offset, tail = _tail(path)
    if not tail:
        return None
    with writing(path), open(path, "r+b") as fh:
        if _complete_object(tail) is not None:
            fh.seek(0, os.SEEK_END)
            fh.write(b"\n")
            action = "completed"
        else:
            fh.truncate(offset)
            action = "dropped"
        fh.flush()
        os.fsync(fh.fileno())
    return action


def read_jsonl_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a file written by :class:`JsonlAppender`; a missing file is empty.

    A last line without its newline counts when it is a complete JSON object and is ignored
    otherwise (a write cut short by a kill, perhaps inside a multi-byte character:
    :class:`JsonlAppender` drops it on opening); any other malformed line is an error naming the
    file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open_input(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):  # the last line, without its newline
                obj = _complete_object(raw)
                if obj is not None:
                    rows.append(obj)
                break
            text = decode_utf8(raw, path, lineno)
            if not text.strip():
                continue
            rows.append(parse_object_line(text, path, lineno))
    return rows


class JsonlAppender:
    """Append complete JSON lines durably; see the module docstring. An ``OSError`` (a directory in
    the way, permission denied, disk full) is a one-line ``UserError`` naming the file; what was
    written before stays, so the job resumes once the cause is fixed."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = None

    def __enter__(self) -> "JsonlAppender":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        ensure_dir(self.path.parent, for_file=self.path)
        with writing(self.path):
            if self.path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "Is a directory", os.fspath(self.path))
            repair_tail(self.path)
            self._fh = open(self.path, "ab")

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
        if not lines:
            return 0
        if self._fh is None:
            self.open()
        with writing(self.path):
            self._fh.write("".join(lines).encode("utf-8"))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return len(lines)

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError:
                pass  # every append was flushed and synced: nothing is lost


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (the old file stays
    whole if anything fails). The file gets the user's umask (or keeps the mode of the file it
    replaces); a failure is a one-line ``UserError`` naming ``path``."""
    path = Path(path)
    ensure_dir(path.parent, for_file=path)
    with writing(path, full_note=REPLACED_WHOLE):
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory", os.fspath(path))
        # mkstemp makes the file 0600: give it the mode of the file it replaces, else the umask's
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~current_umask()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), mode)
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def record_settings(path: str | os.PathLike, settings: Mapping[str, Any], held: str, hint: str,
                    write: bool = True, strict: bool = False) -> None:
    """The settings a resumable directory was made with: written to ``path`` the first time (when
    ``write``), compared on every later run. A key whose recorded value differs is one line, "``held``
    with k=old, not new; ``hint``". Keys the recorded file lacks are allowed (a newer version may add
    one) unless ``strict``."""
    from selfrec_ft.files import read_text

    path = Path(path)
    settings = json.loads(json.dumps(settings, default=str))
    if not path.exists():
        if write:
            atomic_write_json(path, settings)
        return
    try:
        old = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON ({exc.msg})", path, exc.lineno) from None
    if not isinstance(old, dict):
        raise UserError("expected a JSON object (the settings this directory was made with)", path)
    changed = [k for k in settings if (strict or k in old) and old.get(k) != settings[k]]
    if changed:
        k = changed[0]
        raise UserError(f"{held} with {k}={old.get(k)!r}, not {settings[k]!r}; {hint}", path)
