"""The ``selfrec`` command line. Each subcommand lives in its own module with ``register(sub)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from selfrec_ft.errors import UserError

# Modules under selfrec_ft.cli that define subcommands, in help order.
COMMAND_MODULES = [
    "corpus_cmds",
    "model_cmds",
    "generate_cmd",
    "pairs_cmd",
    "eval_cmd",
    "eval_checkpoints_cmd",
    "report_cmd",
    "analyze_cmd",
    "dissect_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if "torch.distributed" in sys.modules:  # e.g. `accelerate launch -m selfrec_ft eval ...`
        from selfrec_ft.scoring.engine import release_distributed

        release_distributed()  # a process group left to the interpreter's exit can abort a rank
    return int(rc or 0)
