"""``selfrec analyze SWEEP_DIR``: recognition vs preference across a sweep's runs;
``selfrec analyze style-ceiling --corpus DIR ...``: the style-classifier ceiling
(:mod:`selfrec_ft.analysis.style_ceiling`)."""

from __future__ import annotations

import argparse
import sys

from selfrec_ft.cli.common import int_at_least, split_list
from selfrec_ft.errors import UserError

STYLE_CEILING = "style-ceiling"
STYLE_FLAGS = ("corpus", "self_source", "others", "train_articles", "limit", "report", "examples", "out")


def register(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="correlate recognition and preference across a sweep's runs; or the style-classifier ceiling",
        description="Read SWEEP_DIR/runs.json and the runs' examples.jsonl files; write "
        "analysis.json, report.md and PNG plots into SWEEP_DIR and print the report. A relation "
        "across runs is called supported only when a test with the run as the unit (permutation "
        "test over runs) and the article-level bootstrap interval agree. "
        f"`selfrec analyze {STYLE_CEILING} --corpus DIR --self-source S --train-articles N` instead trains a "
        "TF-IDF n-gram + logistic-regression classifier to tell S from each other source on the first N "
        "articles and reports its pairwise accuracy on the held-out articles (with an article-clustered CI): "
        "the recognition surface style alone reaches; --report puts a judge's recognition beside it, and its "
        "rows (--examples, default: the examples.jsonl beside --report) split it by whether the length rule "
        "points at its own summary.",
    )
    p.add_argument("sweep_dir", metavar=f"SWEEP_DIR|{STYLE_CEILING}")
    p.add_argument("--seed", type=int, default=0, help="bootstrap (and classifier) seed (default 0)")
    p.add_argument("--n-resamples", type=int_at_least(1), default=2000,
                   help="bootstrap resamples (default 2000)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g = p.add_argument_group(f"{STYLE_CEILING}")
    g.add_argument("--corpus", help="corpus directory (articles.jsonl, summaries.jsonl)")
    g.add_argument("--self-source", help="the judge's own source")
    g.add_argument("--others", help="comma-separated other sources (default: every other source)")
    g.add_argument("--train-articles", type=int_at_least(1),
                   help="train on the first N articles (the judge's training articles); score the rest")
    g.add_argument("--limit", type=int_at_least(1), help="score at most K held-out articles")
    g.add_argument("--report", help="a selfrec eval or training report.json: the judge's recognition beside the "
                   "ceiling")
    g.add_argument("--examples", help="the judge's selfrec eval examples.jsonl: its recognition split by length "
                   "(default: examples.jsonl beside --report, when there is one)")
    g.add_argument("--out", help="where style_ceiling.json/.md go (default: the report's directory, else the "
                   "current directory)")
    p.set_defaults(func=run)


def run_style_ceiling(args: argparse.Namespace) -> int:
    from pathlib import Path

    from selfrec_ft.analysis import style_ceiling as sc
    from selfrec_ft.data.corpus import load_corpus

    for flag in ("corpus", "self_source", "train_articles"):
        if getattr(args, flag) is None:
            raise UserError(f"{STYLE_CEILING} needs --{flag.replace('_', '-')}")
    judge = sc.judge_recognition(sc.read_report(args.report), args.report) if args.report else None
    corpus = load_corpus(args.corpus)
    result = sc.style_ceiling(corpus, args.self_source, split_list(args.others),
                              train_articles=args.train_articles, limit=args.limit, seed=args.seed,
                              n_resamples=args.n_resamples)
    result = sc.with_judge(result, judge)
    examples = args.examples
    if examples is None and args.report and (Path(args.report).parent / "examples.jsonl").is_file():
        examples = str(Path(args.report).parent / "examples.jsonl")
    if examples is not None:
        from selfrec_ft.scoring.report import load_rows

        result["judge_by_length"] = sc.judge_by_length(
            load_rows([examples]), corpus, args.self_source, result["length_rule"]["rule"],
            seed=args.seed, n_resamples=args.n_resamples, path=examples)
    out = Path(args.out) if args.out else (Path(args.report).parent if args.report else Path.cwd())
    json_path, md_path = sc.write_style_ceiling(result, out)
    print(md_path.read_text(encoding="utf-8"), end="")
    print(f"-> {json_path}, {md_path}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.sweep_dir == STYLE_CEILING:
        return run_style_ceiling(args)
    given = [f"--{f.replace('_', '-')}" for f in STYLE_FLAGS if getattr(args, f) is not None]
    if given:
        raise UserError(f"{', '.join(given)} belong to `selfrec analyze {STYLE_CEILING}`, not to a sweep analysis")
    from selfrec_ft.sweep.analysis import analyse_sweep, render_analysis_markdown

    analysis = analyse_sweep(args.sweep_dir, seed=args.seed, n_resamples=args.n_resamples,
                             plots=not args.no_plots)
    print(render_analysis_markdown(analysis), end="")
    return 0
