"""What every ``selfrec`` command and recipe shares: the one ``UserError`` handler and argument types.

Standard library only: command modules import this while the parser is built.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from selfrec_ft.errors import UserError


def run_main(func: Callable[..., int | None], *args, **kwargs) -> int:
    """``func(*args, **kwargs)`` as a program: its return value is the exit status (None is 0); a
    :class:`UserError` prints ``error: <message>`` as one line on stderr and gives 2; Ctrl-C prints
    ``interrupted`` and gives 130. The ``selfrec`` command line and the three recipes all end here."""
    try:
        rc = func(*args, **kwargs)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <what is wrong> (see: <prog> --help)`` and exit 2,
    instead of the usage block. Subcommand parsers inherit the class (``add_subparsers`` makes
    parsers of its parent's type)."""

    def error(self, message: str):  # noqa: D102  (argparse's hook)
        message = " ".join(str(message).split())
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum`` (a bad value is argparse's one-line error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def split_list(value: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; empty or None -> None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
