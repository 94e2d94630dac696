"""The shared command-line helpers, as the ``selfrec`` command modules import them.

They live in :mod:`selfrec_ft.cmdline`, below both the command line and the recipes' entry points;
this module only names them for ``selfrec_ft.cli``. Nothing outside ``selfrec_ft/cli/`` imports it.
"""

from __future__ import annotations

from selfrec_ft.cmdline import (
    ArgumentParser,
    config_value_problem,
    int_at_least,
    run_main,
    split_list,
)

__all__ = ["ArgumentParser", "config_value_problem", "int_at_least", "run_main", "split_list"]
