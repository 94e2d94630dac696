"""``selfrec report``: metrics tables (and report.json) from scoring rows or P1's released files."""

from __future__ import annotations

import argparse

from selfrec_ft.cli.common import int_at_least
from selfrec_ft.cli.controls_args import add_report_control_arguments, check_report_controls, report_controls
from selfrec_ft.defaults import REPORT_FORMATS
from selfrec_ft.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="recognition/preference metrics from examples.jsonl or P1 result files",
        description="Recompute recognition, preference and individual-setting metrics from raw "
        "option probabilities and print markdown tables (PROTOCOL.md §3).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="examples.jsonl files, or P1 files")
    p.add_argument("--format", choices=REPORT_FORMATS, default="selfrec",
                   help="selfrec: examples.jsonl rows; p1: Panickssery et al.'s released "
                   "llama_results files (.jsonl or the original .json list)")
    p.add_argument("--skip-first", type=int_at_least(0), default=0, metavar="N",
                   help="p1 only: leave out the first N articles of each file, in the file's order "
                   "(a fine-tuned evaluator's training articles: P1 trained on the first 2, 10 or 500)")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON to OUT")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--n-resamples", type=int_at_least(1), default=2000,
                   help="bootstrap resamples (default 2000)")
    add_report_control_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfrec_ft.jsonl import atomic_write_json
    from selfrec_ft.prompts.protocol import protocols_differ_note, report_protocol
    from selfrec_ft.scoring.report import render_markdown, report_paths

    check_report_controls(args)
    protocols, note = {}, None
    if args.format == "selfrec":  # each examples.jsonl's evaluation states its prompt protocol
        protocols = {str(p): report_protocol(p) for p in args.inputs}
        note = protocols_differ_note(args.inputs)
        if note:  # before the numbers (and before reading them): they measure different prompts
            print(note, flush=True)
    report = report_paths(args.inputs, fmt=args.format, seed=args.seed, n_resamples=args.n_resamples,
                          skip_first=args.skip_first)
    if any(protocols.values()):
        report["protocols"] = protocols
    if note:
        report["protocol_note"] = note
    print(render_markdown(report) + report_controls(args, report), end="")
    if args.json:
        try:
            atomic_write_json(args.json, report)
        except OSError as exc:
            raise UserError(f"cannot write report: {exc.strerror}", args.json) from None
    return 0
