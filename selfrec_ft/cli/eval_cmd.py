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


def _quality(args: argparse.Namespace, corpus, spec, held):
    """The quality reference of quality-aware preference: the gold file, or ROUGE-L against
    ``--quality-reference`` when named explicitly (the default ``human`` is used by evaluate when present)."""
    from selfrec_ft.scoring.quality import DEFAULT_REFERENCE_SOURCE, file_quality, rouge_quality

    if (args.quality_file is None) != (args.quality_key is None):
        raise UserError("--quality-file and --quality-key go together")
    if args.quality_file:
        return file_quality(args.quality_file, args.quality_key)
    if args.quality_reference == DEFAULT_REFERENCE_SOURCE:
        return None
    ids = [a.id for a in corpus.heldout_articles(held.skip_first, args.limit)]
    others = spec.others or [s for s in corpus.sources() if s != spec.self_source]
    return rouge_quality(corpus, ids, [spec.self_source, *others], args.quality_reference)


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
    p.add_argument("--prompt-preset",
                   help="preset name or YAML template file (default: the preset the model was trained with, from "
                        f"its training_manifest.json; {DEFAULT_PRESET} for a model without one)")
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
    p.add_argument("--no-worse-question", action="store_true",
                   help='do not also ask the preference pairs "which summary is worse?" (the question-following '
                        "control: self picked under better minus under worse, with a CI)")
    p.add_argument("--quality-file", help="JSONL of gold quality scores per summary (article_id, source, "
                   "--quality-key) for quality-aware preference (default: ROUGE-L against --quality-reference)")
    p.add_argument("--quality-key", help="the score field of --quality-file")
    p.add_argument("--quality-reference", default="human",
                   help="source whose summaries are the ROUGE-L reference of quality-aware preference (default human)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--n-resamples", type=int_at_least(1), default=2000, help="bootstrap resamples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output directory")
    add_control_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.files import writable_dir
    from selfrec_ft.models.loading import check_model_dir
    from selfrec_ft.prompts.protocol import resolve_protocol
    from selfrec_ft.prompts.templates import load_preset
    from selfrec_ft.scoring.heldout import resolve_heldout
    from selfrec_ft.scoring.spec import EvalSpec

    tasks = split_list(args.tasks) or []
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task(s) {', '.join(unknown)}; use {', '.join(TASKS)}")
    if args.familiarity and args.domain is None:
        raise UserError("--familiarity needs --domain (short or highlights) to pick the generation prompt")
    writable_dir(args.out, create=False)  # before the model loads (nothing created yet)
    protocol = resolve_protocol(args.model, args.prompt_preset)
    corpus = load_corpus(args.corpus)
    others = split_list(args.others)
    corpus.require_sources([args.self_source, *(others or [])])
    held = resolve_heldout(args.model, args.corpus, [a.id for a in corpus.articles], args.skip_first,
                           args.allow_train_articles, args.limit)
    if not corpus.heldout_articles(held.skip_first, args.limit):
        raise UserError(f"no articles to evaluate: the corpus has {len(corpus.articles)} and the first "
                        f"{held.skip_first} are skipped", corpus.path)
    spec = EvalSpec(corpus=corpus, self_source=args.self_source, others=others,
                    tasks=tasks + ([FAMILIARITY] if args.familiarity else []), skip_first=held.skip_first,
                    limit=args.limit, preset=protocol.preset, protocol=protocol, templates=_templates(args.template),
                    domain=args.domain, seed=args.seed, n_resamples=args.n_resamples,
                    worse_question=not args.no_worse_question)
    quality = _quality(args, corpus, spec, held)
    load_preset(protocol.preset)  # an unknown preset or a broken preset file: one line, before loading
    check_model_dir(args.model)
    # every cheap check done: say what is used and loaded before torch and transformers are imported
    protocol.announce()
    if held.note:
        print(held.note, file=sys.stderr)
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    from selfrec_ft.scoring.evaluate import evaluate
    from selfrec_ft.scoring.scorer import Scorer

    scorer = Scorer(args.model, dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                    max_batch_tokens=args.max_batch_tokens, max_length=args.max_length, base_model=args.base_model)
    result = evaluate(scorer, spec, args.out, progress=not args.no_progress, quality=quality)
    result.markdown = run_eval_controls(args, scorer, spec, result.markdown)
    print(result.markdown, end="")
    print(f"scored {result.scored} prompts ({result.resumed} already done) -> {result.examples_path}; "
          f"report: {result.out_dir / REPORT_JSON}, {result.out_dir / REPORT_MD}", file=sys.stderr)
    return 0
