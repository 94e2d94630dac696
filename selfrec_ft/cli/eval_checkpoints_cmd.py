"""``selfrec eval-checkpoints``: recognition/preference of the base model, every checkpoint and the final
model of SFT runs, in-domain and out-of-domain, as one table (see :mod:`selfrec_ft.sweep.checkpoints`)."""

from __future__ import annotations

import argparse
import sys

from selfrec_ft.cli.common import int_at_least, split_list
from selfrec_ft.defaults import DEFAULT_BATCH_SIZE, DEFAULT_HOOK_TASKS, DTYPE_CHOICES, GENERATION_DOMAINS, TASKS
from selfrec_ft.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "eval-checkpoints",
        help="evaluate the base model, checkpoints and final model of SFT runs in both domains",
        description="For each RUN_DIR (an SFT output_dir with training_manifest.json and resolved_config.yaml), "
        "score the untrained base model (once per distinct base), every checkpoint-* and the final "
        "adapter/model on held-out in-domain articles (after the run's first n_articles) and on the "
        "out-of-domain corpus. Each evaluation lives in RUN_DIR/eval/<checkpoint>/<domain>-<hash>/ "
        "(base models: OUT/base_model/) and is resumable; a finished one is read back, not rerun. "
        "Writes OUT/eval_checkpoints.json and OUT/eval_checkpoints.md.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="SFT output directories")
    p.add_argument("--in-domain", help="in-domain corpus directory (or demo://...); default: the run's "
                   "hook_in_domain, else its training corpus")
    p.add_argument("--out-of-domain", help="out-of-domain corpus directory (or demo://...); default: the run's "
                   "hook_out_of_domain")
    p.add_argument("--in-domain-kind", choices=GENERATION_DOMAINS,
                   help="short (XSUM-like) or highlights (CNN-like); default: guessed from the directory name")
    p.add_argument("--out-of-domain-kind", choices=GENERATION_DOMAINS, help="as --in-domain-kind")
    p.add_argument("--tasks", default=",".join(DEFAULT_HOOK_TASKS),
                   help=f"comma-separated tasks (default: {','.join(DEFAULT_HOOK_TASKS)}; any of {', '.join(TASKS)})")
    p.add_argument("--self-source", help="the evaluator's own source (default: the run's manifest)")
    p.add_argument("--others", help="comma-separated other sources (default: the run's training others)")
    p.add_argument("--limit", type=int_at_least(1), help="score at most K articles per domain")
    p.add_argument("--batch-size", type=int_at_least(1), default=DEFAULT_BATCH_SIZE,
                   help=f"rows per forward pass (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--familiarity", action="store_true",
                   help="also score the log-likelihood of each source's summaries (self minus others in the table)")
    p.add_argument("--no-worse-question", action="store_true",
                   help='do not also ask the preference pairs "which summary is worse?" (question-following gap)')
    p.add_argument("--canary", action="store_true",
                   help="capability canary of every model: LM loss on the reference summaries of held-out articles "
                   "and ROUGE of its greedy summaries; a loss rise or ROUGE-L drop against the base model is flagged")
    p.add_argument("--canary-articles", type=int_at_least(1), default=16,
                   help="articles whose reference the canary's LM loss scores (default 16)")
    p.add_argument("--canary-generate", type=int_at_least(0), default=4,
                   help="of those, how many the model summarises greedily for ROUGE (default 4; 0: none)")
    p.add_argument("--canary-reference", default="human", help="source of the reference summaries (default human)")
    p.add_argument("--no-base", action="store_true", help="do not evaluate the base model")
    p.add_argument("--final-only", action="store_true", help="only the final model (and the base), no checkpoints")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, help="default: the run's training dtype")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--n-resamples", type=int_at_least(1), default=2000, help="bootstrap resamples")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", help="where the table goes (default: the run directory for one run, else the "
                   "deepest directory containing all run directories)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfrec_ft.sweep.checkpoints import EvalSettings, eval_checkpoints

    tasks = split_list(args.tasks) or []
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task(s) {', '.join(unknown)}; use {', '.join(TASKS)}")
    if not tasks and not args.familiarity:
        raise UserError("nothing to score: --tasks is empty and no --familiarity")
    settings = EvalSettings(
        in_domain=args.in_domain, out_of_domain=args.out_of_domain, in_domain_kind=args.in_domain_kind,
        out_of_domain_kind=args.out_of_domain_kind, tasks=tasks, limit=args.limit, batch_size=args.batch_size,
        familiarity=args.familiarity, self_source=args.self_source, others=split_list(args.others), dtype=args.dtype,
        device=args.device, seed=args.seed, n_resamples=args.n_resamples, progress=not args.no_progress,
        worse_question=not args.no_worse_question,
    )
    if args.canary:
        from selfrec_ft.training.canary import CanarySettings

        settings.canary = CanarySettings(articles=args.canary_articles, generate=args.canary_generate,
                                         reference=args.canary_reference)
    table = eval_checkpoints(args.run_dirs, settings, out=args.out, include_base=not args.no_base,
                             checkpoints=not args.final_only)
    print(table.md_path.read_text(encoding="utf-8"), end="")
    cached = sum(r["cached"] for r in table.rows)
    print(f"{len(table.rows)} evaluations ({cached} read back from finished ones) -> {table.json_path}, "
          f"{table.md_path}", file=sys.stderr)
    return 0
