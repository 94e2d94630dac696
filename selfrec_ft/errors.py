"""User-facing errors: one line naming the file, the line and what is wrong."""

from __future__ import annotations

import os


class UserError(Exception):
    """A mistake the user can fix (bad input file, unknown name, impossible option).

    The CLI prints ``error: <str(e)>`` on one line and exits with status 2; it never shows a
    traceback for these.
    """

    def __init__(self, message: str, file: str | os.PathLike | None = None, line: int | None = None):
        self.message = message
        self.file = None if file is None else os.fspath(file)
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file + (f":{self.line}" if self.line is not None else "") + ": "
        return where + self.message
