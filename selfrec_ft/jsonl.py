"""JSON-lines I/O: line-numbered validation, crash-safe appends and atomic writes.

Long jobs (generation, evaluation, sweeps) append rows with :class:`JsonlAppender`: each batch is
written as complete lines in a single ``write`` followed by ``fsync``, and a partial line left by a
kill is dropped the next time the file is opened, so a rerun neither loses nor duplicates rows.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from selfrec_ft.errors import UserError


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__


def iter_jsonl(
    path: str | os.PathLike, required: Mapping[str, type | tuple[type, ...]] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of ``path``.

    Raises :class:`UserError` naming the file and line for malformed JSON, a line that is not a JSON
    object, or a ``required`` field that is missing or of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path)
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise UserError(f"malformed JSON ({exc.msg})", path, lineno) from None
            if not isinstance(obj, dict):
                raise UserError("expected a JSON object", path, lineno)
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


def read_jsonl_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a file written by :class:`JsonlAppender`; a missing file is empty.

    A trailing line without its newline (a write cut short by a kill) is ignored; any other
    malformed line is an error.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    rows = []
    for lineno, raw in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw))
        except json.JSONDecodeError as exc:
            raise UserError(f"malformed JSON ({exc.msg})", path, lineno) from None
    return rows


class JsonlAppender:
    """Append complete JSON lines durably; see the module docstring."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = None

    def __enter__(self) -> "JsonlAppender":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end != len(data):  # a partial last line from an interrupted write
                with open(self.path, "r+b") as fh:
                    fh.truncate(end)
        self._fh = open(self.path, "ab")

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
        if not lines:
            return 0
        if self._fh is None:
            self.open()
        self._fh.write("".join(lines).encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return len(lines)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
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
