"""``selfrec dissect``: which response properties drive a judge's preferences (P2's dissection).

Three ways to run it:

* ``--comparisons FILE``: fit the labels in the file;
* ``--comparisons FILE --judge MODEL``: lines without ``preferred`` are labelled by the model first
  (they must carry ``article``, ``response_1``, ``response_2``);
* ``--self-preference --corpus DIR --self-source S --judge NAME=PATH [--judge ...]``: compare the
  self summary with the others' on held-out articles, label with every judge, fit each with the
  ``self`` feature, and compare the judges (the first is the base).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from selfrec_ft.cli.common import int_at_least
from selfrec_ft.dissection.fit import DEFAULT_PRIOR_SCALE
from selfrec_ft.errors import UserError
from selfrec_ft.prompts.templates import DEFAULT_PRESET
from selfrec_ft.scoring.engine import DEFAULT_BATCH_SIZE


def register(sub) -> None:
    p = sub.add_parser(
        "dissect",
        help="fit P2's Bayesian logistic regression of preferences on property comparisons",
        description=(
            "Regress 'response 1 preferred' on comparison features (-1/0/+1 per property: P2's 29 "
            "properties and 'self') with a Laplace(0, b) prior and no intercept. Writes report.json, "
            "report.md and preference_scores.png to --out. With --judge, a model labels the lines "
            "without 'preferred'; with --self-preference, every --judge labels the self-vs-other "
            "summary comparisons of a corpus and the judges' 'self' and attribute scores are compared "
            "(OUT/<name>/report.json per judge, OUT/comparison.json, comparison.md, comparison.png)."
        ),
    )
    p.add_argument("--comparisons", metavar="FILE.jsonl",
                   help='lines {"features": {PROPERTY: -1|0|1, ...}, "preferred": 1|0}; with --judge, '
                        'lines may omit "preferred" and then carry "article", "response_1", "response_2"')
    p.add_argument("--self-preference", action="store_true",
                   help="build self-vs-other comparisons from --corpus and label them with every --judge")
    p.add_argument("--judge", action="append", metavar="[NAME=]PATH",
                   help="judge model: a model directory or LoRA adapter directory (NAME defaults to the "
                        "directory name). One with --comparisons; one or more with --self-preference, "
                        "the first being the base the others are compared with")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    g = p.add_argument_group("self-preference mode")
    g.add_argument("--corpus", help="corpus directory (articles.jsonl, summaries.jsonl)")
    g.add_argument("--self-source", help="the evaluator's own source name in the corpus")
    g.add_argument("--others", help="comma-separated other sources (default: every other source)")
    g.add_argument("--skip-first", type=int_at_least(0), help="skip the first N articles (the training "
                   "articles; default 0)")
    g.add_argument("--limit", type=int_at_least(1), help="use at most K articles")
    g.add_argument("--seed", type=int, help="seed of the coin that puts the self summary first or second "
                   "(default 0); also the bootstrap seed")
    g = p.add_argument_group("judging (with --judge)")
    g.add_argument("--prompt-preset", default=DEFAULT_PRESET, help="preset name or YAML template file")
    g.add_argument("--template", default="pairwise-preference",
                   help="preference template of the preset (default pairwise-preference)")
    g.add_argument("--batch-size", type=int_at_least(1), default=DEFAULT_BATCH_SIZE,
                   help=f"rows per forward pass (default {DEFAULT_BATCH_SIZE})")
    g.add_argument("--max-batch-tokens", type=int_at_least(1), help="also bound rows x padded length")
    g.add_argument("--max-length", type=int_at_least(8),
                   help="token budget of a prompt + answer; longer articles are shortened "
                        "(default: the model's context length)")
    g.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("fit")
    g.add_argument("--method", choices=["map", "nuts"], default="map",
                   help="map: posterior mode + Laplace interval (fast, default); nuts: P2's exact "
                        "NUTS posterior mean averaged over folds (needs pip install selfrec_ft[bayes])")
    g.add_argument("--prior-scale", type=float, default=DEFAULT_PRIOR_SCALE, metavar="B",
                   help="scale b of the Laplace(0, b) prior on each weight (P2: 0.1)")
    g.add_argument("--folds", type=int, default=10, help="nuts only: training folds averaged (P2: 10)")
    p.set_defaults(func=_run)


def parse_judge(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or a bare ``PATH`` (named after its directory) -> ``(name, path)``."""
    spec = spec.strip()
    name, sep, path = spec.partition("=")
    if not sep or os.path.exists(os.path.expanduser(spec)):
        path = spec
        name = Path(os.path.expanduser(spec).rstrip("/\\")).name
    name, path = name.strip(), os.path.expanduser(path.strip())
    if not path:
        raise UserError(f"--judge {spec!r}: no model path (use NAME=PATH or PATH)")
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UserError(f"--judge {spec!r}: {name!r} is not usable as a judge name (use NAME=PATH)")
    return name, path


def _names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _check_model_path(path: str) -> None:
    if not os.path.exists(path) and path.count("/") != 1:  # "owner/name" may be a hub id
        raise UserError("model path not found", path)


_SELF_PREF_ONLY = ("corpus", "self_source", "others", "skip_first", "limit", "seed")


def _run(args: argparse.Namespace) -> int:
    from selfrec_ft.dissection.run import run_dissection

    kwargs = {}
    if args.method == "nuts":
        if args.folds < 1:
            raise UserError(f"--folds must be at least 1, got {args.folds}")
        kwargs["folds"] = args.folds
    if args.self_preference == (args.comparisons is not None):
        raise UserError("give either --comparisons FILE.jsonl or --self-preference (with --corpus, "
                        "--self-source and --judge)")
    judge_opts = dict(preset=args.prompt_preset, template=args.template, batch_size=args.batch_size,
                      max_batch_tokens=args.max_batch_tokens, max_length=args.max_length, dtype=args.dtype,
                      device=args.device, progress=not args.no_progress)
    if args.self_preference:
        return _run_self_preference(args, judge_opts, kwargs)

    given = [f"--{k.replace('_', '-')}" for k in _SELF_PREF_ONLY if getattr(args, k) is not None]
    if given:
        raise UserError(f"{', '.join(given)} only apply with --self-preference")
    comparisons = args.comparisons
    if args.judge:
        if len(args.judge) > 1:
            raise UserError("--comparisons takes one --judge (the model that labels lines without \"preferred\")")
        from selfrec_ft.dissection.judge import COMPARISONS_FILE, label_comparisons_file

        _, path = parse_judge(args.judge[0])
        _check_model_path(path)
        summary = label_comparisons_file(comparisons, path, args.out, **judge_opts)
        print(f"judged {summary['judged']} lines ({summary['ties']} ties, {summary['invalid']} invalid dropped); "
              f"{summary['labelled_in_file']} were labelled in the file")
        comparisons = Path(args.out) / COMPARISONS_FILE
        kwargs["title"] = f"Preference dissection: {Path(args.comparisons).name}, judge {Path(path).name}"
    report = run_dissection(comparisons, args.out, method=args.method, prior_scale=args.prior_scale, **kwargs)
    print(f"{report['n']} comparisons, {len(report['properties'])} properties fitted, "
          f"accuracy {report['accuracy']:.3f}; wrote {args.out}/report.json, report.md, preference_scores.png")
    return 0


def _run_self_preference(args: argparse.Namespace, judge_opts: dict, fit_kwargs: dict) -> int:
    from selfrec_ft.dissection.judge import run_judge_dissection

    missing = [flag for flag, v in (("--corpus", args.corpus), ("--self-source", args.self_source),
                                    ("--judge", args.judge)) if not v]
    if missing:
        raise UserError(f"--self-preference needs {', '.join(missing)}")
    judges: dict[str, str] = {}
    for spec in args.judge:
        name, path = parse_judge(spec)
        if name in judges:
            raise UserError(f"two judges are named {name!r}; name them with NAME=PATH")
        _check_model_path(path)
        judges[name] = path
    others = _names(args.others)
    if others is not None and not others:
        raise UserError("--others names no source")
    result = run_judge_dissection(
        judges, args.corpus, args.self_source, others, args.skip_first or 0, args.limit, args.out,
        seed=args.seed or 0, method=args.method, prior_scale=args.prior_scale, **judge_opts, **fit_kwargs,
    )
    from selfrec_ft.dissection.judge import comparison_markdown

    print(comparison_markdown(result), end="")
    print(f"wrote {args.out}/comparison.json, comparison.md, comparison.png and "
          f"{', '.join(e['name'] for e in result['judges'])}/report.json")
    return 0
