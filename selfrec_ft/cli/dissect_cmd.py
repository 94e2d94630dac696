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
import sys
from pathlib import Path

from selfrec_ft.cli.common import int_at_least, split_list
from selfrec_ft.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DISSECTION_METHOD,
    DEFAULT_PRESET,
    DEFAULT_PRIOR_SCALE,
    DISSECTION_METHODS,
    DTYPE_CHOICES,
)
from selfrec_ft.errors import UserError

PREFERENCE = "pairwise-preference"


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
    g.add_argument("--prompt-preset",
                   help="preset name or YAML template file (default: the preset the fine-tuned judge was trained "
                        f"with, from its training_manifest.json; {DEFAULT_PRESET} when no judge has one)")
    g.add_argument("--template", default=PREFERENCE,
                   help="preference template of the preset (default pairwise-preference)")
    g.add_argument("--batch-size", type=int_at_least(1), default=DEFAULT_BATCH_SIZE,
                   help=f"rows per forward pass (default {DEFAULT_BATCH_SIZE})")
    g.add_argument("--max-batch-tokens", type=int_at_least(1), help="also bound rows x padded length")
    g.add_argument("--max-length", type=int_at_least(8),
                   help="token budget of a prompt + answer; longer articles are shortened "
                        "(default: the model's context length)")
    g.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("fit")
    g.add_argument("--method", choices=DISSECTION_METHODS, default=DEFAULT_DISSECTION_METHOD,
                   help="nuts (default): NUTS posterior mean and 95%% credible interval, as P2 reports; "
                        "nuts-p2: P2's exact procedure (4 chains x 2000 draws on each of 10 folds, slow); "
                        "map: posterior mode + Laplace interval (fast, puts many weights at exactly 0)")
    g.add_argument("--prior-scale", type=float, default=DEFAULT_PRIOR_SCALE, metavar="B",
                   help=f"scale b of the Laplace(0, b) prior on each weight (default P2's {DEFAULT_PRIOR_SCALE})")
    g.add_argument("--folds", type=int_at_least(1),
                   help="NUTS methods: training folds whose posterior means are averaged "
                        "(default: 1 for nuts, 10 for nuts-p2)")
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


_SELF_PREF_ONLY = ("corpus", "self_source", "others", "skip_first", "limit", "seed")


def _scorer(path: str, args: argparse.Namespace):
    """A judge: its tokenizer now, its model when it first judges (freed after judging)."""
    from selfrec_ft.scoring.scorer import Scorer

    return Scorer(path, dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                  max_batch_tokens=args.max_batch_tokens, max_length=args.max_length)


def _judges_protocol(paths: list[str], flag: str | None):
    """One protocol for every judge (compared judges read the same prompts): --prompt-preset, else
    the preset of the judges' training manifests (they must agree), else the default. Said in one
    line; a judge trained with another preset than the one used gets its warning line."""
    from selfrec_ft.prompts.protocol import resolve_protocol, templates_sha256

    found = [resolve_protocol(path, flag) for path in paths]
    chosen = found[0]
    if flag is None:
        trained = [p for p in found if p.origin == "manifest"]
        if len({templates_sha256(p.preset) for p in trained}) > 1:
            raise UserError("the judges were trained with different prompt presets ("
                            + ", ".join(f"{p.preset} in {p.manifest}" for p in trained) + "); pass --prompt-preset")
        chosen = trained[0] if trained else chosen
    if not chosen.quiet:
        print(chosen.line, file=sys.stderr)
    for p in found:
        if p.warning:
            print(p.warning, file=sys.stderr)
    return chosen


def _run(args: argparse.Namespace) -> int:
    from selfrec_ft.files import writable_dir

    writable_dir(args.out, create=False)  # before anything is read, judged or fitted (nothing created yet)
    kwargs = {}
    if args.folds is not None:
        if args.method == "map":
            raise UserError("--folds applies to the NUTS methods, not --method map")
        kwargs["folds"] = args.folds
    if args.self_preference == (args.comparisons is not None):
        raise UserError("give either --comparisons FILE.jsonl or --self-preference (with --corpus, "
                        "--self-source and --judge)")
    if args.self_preference:
        return _run_self_preference(args, kwargs)

    given = [f"--{k.replace('_', '-')}" for k in _SELF_PREF_ONLY if getattr(args, k) is not None]
    if given:
        raise UserError(f"{', '.join(given)} only apply with --self-preference")
    if not args.judge:
        from selfrec_ft.dissection.run import run_dissection

        report = run_dissection(args.comparisons, args.out, method=args.method, prior_scale=args.prior_scale, **kwargs)
    else:
        if len(args.judge) > 1:
            raise UserError("--comparisons takes one --judge (the model that labels lines without \"preferred\")")
        from selfrec_ft.dissection.comparisons import fit_and_write, label_comparisons_file

        _, path = parse_judge(args.judge[0])
        protocol = _judges_protocol([path], args.prompt_preset)
        labelled = label_comparisons_file(args.comparisons, _scorer(path, args), args.out, preset=protocol.preset,
                                          template=args.template, progress=not args.no_progress)
        summary = labelled.summary
        print(f"judged {summary['judged']} lines ({summary['ties']} ties, {summary['invalid']} invalid dropped); "
              f"{summary['labelled_in_file']} were labelled in the file")
        title = f"Preference dissection: {Path(args.comparisons).name}, judge {Path(path).name}"
        report = fit_and_write(labelled.comparisons, args.out, title, method=args.method,
                               prior_scale=args.prior_scale, **kwargs)
    print(f"{report['n']} comparisons, {len(report['properties'])} properties fitted, "
          f"accuracy {report['accuracy']:.3f}; wrote {args.out}/report.json, report.md, preference_scores.png")
    return 0


def _run_self_preference(args: argparse.Namespace, fit_kwargs: dict) -> int:
    from selfrec_ft.dissection.judge_report import comparison_markdown
    from selfrec_ft.dissection.self_preference import run_judge_dissection
    from selfrec_ft.scoring.spec import EvalSpec

    missing = [flag for flag, v in (("--corpus", args.corpus), ("--self-source", args.self_source),
                                    ("--judge", args.judge)) if not v]
    if missing:
        raise UserError(f"--self-preference needs {', '.join(missing)}")
    paths: dict[str, str] = {}
    for spec in args.judge:
        name, path = parse_judge(spec)
        if name in paths:
            raise UserError(f"two judges are named {name!r}; name them with NAME=PATH")
        paths[name] = path
    protocol = _judges_protocol(list(paths.values()), args.prompt_preset)
    judges = {name: _scorer(path, args) for name, path in paths.items()}
    others = split_list(args.others)
    if args.others is not None and not others:
        raise UserError("--others names no source")
    spec = EvalSpec(corpus=args.corpus, self_source=args.self_source, others=others, tasks=[PREFERENCE],
                    skip_first=args.skip_first or 0, limit=args.limit, preset=protocol.preset, protocol=protocol,
                    templates={PREFERENCE: args.template}, seed=args.seed or 0)
    result = run_judge_dissection(judges, spec, args.out, method=args.method, prior_scale=args.prior_scale,
                                  progress=not args.no_progress, **fit_kwargs)
    print(comparison_markdown(result), end="")
    print(f"wrote {args.out}/comparison.json, comparison.md, comparison.png and "
          f"{', '.join(e['name'] for e in result['judges'])}/report.json")
    return 0
