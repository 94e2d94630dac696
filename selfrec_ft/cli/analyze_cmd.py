"""``selfrec analyze SWEEP_DIR``: recognition vs preference across a sweep's runs."""

from __future__ import annotations

import argparse

from selfrec_ft.cli.common import int_at_least


def register(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="correlate recognition and preference across a sweep's runs",
        description="Read SWEEP_DIR/runs.json and the runs' examples.jsonl files; write "
        "analysis.json, report.md and PNG plots into SWEEP_DIR and print the report. A relation "
        "across runs is called supported only when a test with the run as the unit (permutation "
        "test over runs) and the article-level bootstrap interval agree.",
    )
    p.add_argument("sweep_dir", metavar="SWEEP_DIR")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--n-resamples", type=int_at_least(1), default=2000,
                   help="bootstrap resamples (default 2000)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfrec_ft.sweep.analysis import analyse_sweep, render_analysis_markdown

    analysis = analyse_sweep(args.sweep_dir, seed=args.seed, n_resamples=args.n_resamples,
                             plots=not args.no_plots)
    print(render_analysis_markdown(analysis), end="")
    return 0
