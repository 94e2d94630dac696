"""``selfrec eval``: score recognition/preference tasks on held-out articles (resumable)."""

from __future__ import annotations

import argparse
import sys

from selfrec_ft.cli.common import int_at_least, split_list
from selfrec_ft.cli.controls_args import add_control_arguments, run_eval_controls
from selfrec_ft.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PRESET,
    DEFAULT_TASKS,
    DTYPE_CHOICES,
    FAMILIARITY,
    GENERATION_DOMAINS,
    REPORT_JSON,
    REPORT_MD,
    TASKS,
)
from selfrec_ft.errors import UserError


def _templates(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        task, sep, name = p.partition("=")
        if not sep or not task.strip() or not name.strip():
            raise UserError(f"--template needs TASK=TEMPLATE, got {p!r}")
        out[task.strip()] = name.strip()
    return out


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score pairwise/individual recognition and preference on held-out articles",
        description="Score the evaluator on the articles after the first --skip-first (the training "
        "articles) into OUT/examples.jsonl (resumable: rerun the same command after a kill), then "
        "write OUT/report.json and OUT/report.md and print the tables.",
    )
    p.add_argument("--model", required=True, help="model directory, LoRA adapter directory or checkpoint")
    p.add_argument("--corpus", required=True, help="corpus directory (articles.jsonl, summaries.jsonl)")
    p.add_argument("--self-source", required=True, help="the evaluator's own source name in the corpus")
    p.add_argument("--others", help="comma-separated other sources (default: every other source)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                   help=f"comma-separated tasks (default: all of {', '.join(TASKS)})")
    p.add_argument("--skip-first", type=int_at_least(0),
                   help="skip the first N articles (the training articles). Default: for a model directory "
                        "written by the SFT/DPO recipe (or one of its checkpoints) whose training_manifest.json "
                        "names this corpus file, every article up to its last training article; else 0")
    p.add_argument("--allow-train-articles", action="store_true",
                   help="score articles the model was trained on (its training manifest lists them); refused "
                        "without this flag")
    p.add_argument("--limit", type=int_at_least(1), help="score at most K articles")
    p.add_argument("--prompt-preset", default=DEFAULT_PRESET, help="preset name or YAML template file")
    p.add_argument("--template", action="append", metavar="TASK=TEMPLATE",
                   help="use a variant template for a task, e.g. pairwise-preference=pairwise-preference-worse")
    p.add_argument("--batch-size", type=int_at_least(1), default=DEFAULT_BATCH_SIZE,
                   help=f"rows per forward pass (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--max-batch-tokens", type=int_at_least(1),
                   help="also bound rows x padded length of a forward pass (GPU memory)")
    p.add_argument("--max-length", type=int_at_least(8),
                   help="token budget of a prompt + answer; longer articles are shortened "
                   "(default: the model's context length)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--base-model", help="base model for an adapter directory (default: from its config)")
    p.add_argument("--familiarity", action="store_true",
                   help="also score each summary's mean token log-likelihood given the generation prompt")
    p.add_argument("--domain", choices=GENERATION_DOMAINS,
                   help="dataset domain, recorded in rows; picks the generation template for --familiarity")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--n-resamples", type=int_at_least(1), default=2000, help="bootstrap resamples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output directory")
    add_control_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.files import writable_dir
    from selfrec_ft.scoring.evaluate import evaluate
    from selfrec_ft.scoring.heldout import resolve_heldout
    from selfrec_ft.scoring.scorer import Scorer
    from selfrec_ft.scoring.spec import EvalSpec

    tasks = split_list(args.tasks) or []
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task(s) {', '.join(unknown)}; use {', '.join(TASKS)}")
    if args.familiarity and args.domain is None:
        raise UserError("--familiarity needs --domain (short or highlights) to pick the generation prompt")
    writable_dir(args.out, create=False)  # before the model loads (nothing created yet)
    corpus = load_corpus(args.corpus)
    held = resolve_heldout(args.model, args.corpus, [a.id for a in corpus.articles], args.skip_first,
                           args.allow_train_articles, args.limit)
    if held.note:
        print(held.note, file=sys.stderr)
    spec = EvalSpec(corpus=corpus, self_source=args.self_source, others=split_list(args.others),
                    tasks=tasks + ([FAMILIARITY] if args.familiarity else []), skip_first=held.skip_first,
                    limit=args.limit, preset=args.prompt_preset, templates=_templates(args.template),
                    domain=args.domain, seed=args.seed, n_resamples=args.n_resamples)
    scorer = Scorer(args.model, dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                    max_batch_tokens=args.max_batch_tokens, max_length=args.max_length, base_model=args.base_model)
    result = evaluate(scorer, spec, args.out, progress=not args.no_progress)
    result.markdown = run_eval_controls(args, scorer, spec, result.markdown)
    print(result.markdown, end="")
    print(f"scored {result.scored} prompts ({result.resumed} already done) -> {result.examples_path}; "
          f"report: {result.out_dir / REPORT_JSON}, {result.out_dir / REPORT_MD}", file=sys.stderr)
    return 0
