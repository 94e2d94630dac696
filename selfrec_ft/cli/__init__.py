"""The ``selfrec`` command line. Each subcommand lives in its own module with ``register(sub)``.

Building the parser imports no heavy module (torch, transformers, trl, scipy, ...): command modules
read their choices and defaults from :mod:`selfrec_ft.defaults` and import what they run inside
their run functions. ``selfrec train``, ``selfrec dpo`` and ``selfrec sweep`` hand their arguments
to the recipes' entry points in :mod:`selfrec_ft.scripts`. A bad argument is one line (``error: ...
(see: selfrec CMD --help)``) and exit status 2, like every other user mistake.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from selfrec_ft.cli.common import ArgumentParser, run_main

__all__ = ["COMMAND_MODULES", "build_parser", "main", "run_main"]

# Modules under selfrec_ft.cli that define subcommands, in help order.
COMMAND_MODULES = [
    "corpus_cmds",
    "model_cmds",
    "generate_cmd",
    "pairs_cmd",
    "train_cmds",
    "eval_cmd",
    "eval_checkpoints_cmd",
    "report_cmd",
    "analyze_cmd",
    "dissect_cmd",
    "steer_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="selfrec",
        description="Fine-tune LLM evaluators' self-recognition and measure their self-preference.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"selfrec_ft.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the subcommand's help, not the top level's
        sub = " ".join(filter(None, (args.command, getattr(args, "corpus_command", None))))
        parser.exit(2, f"error: unrecognized arguments: {' '.join(extra)} (see: {parser.prog} {sub} --help)\n")
    rc = run_main(args.func, args)
    if "torch.distributed" in sys.modules:  # e.g. `accelerate launch -m selfrec_ft eval ...`
        from selfrec_ft.training.teardown import end_distributed

        end_distributed()  # a process group left to the interpreter's exit can abort a rank
    return rc
