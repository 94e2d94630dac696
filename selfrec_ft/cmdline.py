"""What the ``selfrec`` commands, the recipes' entry points, sweeps and training arguments share: the
one ``UserError`` handler (:func:`run_main`), the one-line argument parser and argument types, and the
check of a recipe YAML value against its flag (:func:`config_value_problem`).

It sits below :mod:`selfrec_ft.cli` and :mod:`selfrec_ft.scripts` (both import it; it imports neither),
so no library module has to reach up into the command line. Standard library only: command modules
import this while the parser is built.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

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


def _converts(conv, text: str) -> tuple[bool, Any]:
    try:
        return True, conv(text)
    except Exception:  # noqa: BLE001  (argparse type functions raise ValueError, TypeError, ArgumentTypeError)
        return False, None


def config_value_problem(action, value: Any) -> str | None:
    """What is wrong with ``value`` from a recipe YAML for the recipe parser's ``action`` (as
    ``TrlParser`` reads a config: a string goes through the field's type, other values are taken as
    they are, so a wrong type would otherwise surface mid-training), or None: "must be an integer,
    got 'x'". Fields with unusual types (dicts, config objects) are left to the recipe. The sweep
    config checks every knob with it; the recipes can check their ``--config`` the same way."""
    conv = action.type
    name = getattr(conv, "__name__", "")
    if name not in ("int", "float", "str", "string_to_bool", "<lambda>"):
        return None
    what = {"int": "an integer", "float": "a number", "string_to_bool": "true or false"}.get(name, "text")
    if action.choices:
        shown = [getattr(c, "value", c) for c in action.choices]
        what = "one of " + ", ".join(map(str, shown[:8])) + (", ..." if len(shown) > 8 else "")
    many = action.nargs in ("+", "*")
    if isinstance(value, list) and not many:
        return f"must be {what}, not a list"
    for v in (value if isinstance(value, list) else [value]):
        if v is None:
            if action.default is not None and _converts(conv, "none") != (True, None):
                return f"must be {what}, not null"
            continue
        if isinstance(v, (dict, list)):
            return f"must be {what}, got {type(v).__name__}"
        if isinstance(v, str):
            ok, converted = _converts(conv, v)
        elif name == "int":
            ok, converted = isinstance(v, int) and not isinstance(v, bool), v
        elif name == "float":
            ok, converted = isinstance(v, (int, float)) and not isinstance(v, bool), v
        elif name == "string_to_bool":
            ok, converted = isinstance(v, bool), v
        else:
            ok, converted = _converts(conv, str(v).lower() if isinstance(v, bool) else str(v))
        if ok and action.choices and converted not in action.choices:
            ok = False
        if not ok:
            return f"must be {what}, got {v!r}"
    return None


def split_list(value: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; empty or None -> None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
