"""`selfrec pairs`: write the pairwise "which one is yours?" training rows as JSON lines."""

from __future__ import annotations

import json

from selfrec_ft.cli.common import int_at_least, split_list
from selfrec_ft.defaults import DEFAULT_PRESET, LABEL_STRATEGIES
from selfrec_ft.errors import UserError


def _pairs(args) -> int:
    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.jsonl import atomic_write_text
    from selfrec_ft.pairs.build import build_pairwise_dataset

    if args.max_length is not None and not args.tokenizer:
        raise UserError("--max-length needs --tokenizer (the tokens are counted with it)")
    tokenizer = None
    if args.tokenizer:
        from selfrec_ft.models.loading import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    ds, stats = build_pairwise_dataset(
        load_corpus(args.corpus), args.self_source, split_list(args.others), args.n_articles, args.labels,
        args.flip_fraction, args.seed, args.prompt_preset, args.question, tokenizer, args.max_length,
    )
    atomic_write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ds))
    labels = ", ".join(f'"{k}": {v}' for k, v in stats.labels.items())
    print(f"wrote {stats.rows} rows ({stats.articles} articles x {len(stats.by_source)} other sources x 2 orders) "
          f"to {args.out}; labels {labels}; shortened {stats.shortened}"
          + (f"; skipped {stats.skipped_missing} pairs with a missing summary" if stats.skipped_missing else ""))
    options = " / ".join(repr(o) for o in stats.options)
    print(f"answer options {options}: " + ("each one token for this tokenizer" if stats.options_checked else
          "not checked to be single tokens (no --tokenizer); eval and training check them"))
    if stats.chat and stats.chat["system_role"] == "folded":
        print(f"the tokenizer's chat template has no system role: the system prompt is folded into the user "
              f"message ({stats.chat['reason']})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("pairs", help="build pairwise recognition training rows (both orders)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--self-source", required=True, help="the evaluator's own source name")
    p.add_argument("--others", help="comma-separated other sources (default: all others)")
    p.add_argument("--n-articles", type=int_at_least(1), required=True, help="use the first N articles")
    p.add_argument("--labels", default="self", choices=LABEL_STRATEGIES)
    p.add_argument("--flip-fraction", type=float, help="mix self/other labels: this fraction gets 'other'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-preset", default=DEFAULT_PRESET, help="preset name or YAML template file")
    p.add_argument("--question", choices=("recognition", "own"), default="recognition",
                   help="control strategies: ask the recognition question or their own (longer/vowels/readable)")
    p.add_argument("--tokenizer", help="tokenizer (model dir): checks that each answer option is one token, "
                   "as eval does, and shortens articles to --max-length")
    p.add_argument("--max-length", type=int_at_least(2), help="token budget of prompt + answer (needs --tokenizer)")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.set_defaults(func=_pairs)
