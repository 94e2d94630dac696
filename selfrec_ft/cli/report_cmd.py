"""``selfrec report``: metrics tables (and report.json) from scoring rows or P1's released files."""

from __future__ import annotations

import argparse

from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import atomic_write_json
from selfrec_ft.scoring.report import FORMATS, render_markdown, report_paths


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="recognition/preference metrics from examples.jsonl or P1 result files",
        description="Recompute recognition, preference and individual-setting metrics from raw "
        "option probabilities and print markdown tables (PROTOCOL.md §3).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="examples.jsonl files, or P1 files")
    p.add_argument("--format", choices=FORMATS, default="selfrec",
                   help="selfrec: examples.jsonl rows; p1: Panickssery et al.'s released "
                   "llama_results files (.jsonl or the original .json list)")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON to OUT")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--n-resamples", type=_positive_int, default=2000,
                   help="bootstrap resamples (default 2000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = report_paths(args.inputs, fmt=args.format, seed=args.seed, n_resamples=args.n_resamples)
    print(render_markdown(report), end="")
    if args.json:
        try:
            atomic_write_json(args.json, report)
        except OSError as exc:
            raise UserError(f"cannot write report: {exc.strerror}", args.json) from None
    return 0
