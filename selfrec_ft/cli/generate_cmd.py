"""``selfrec generate``: the evaluator writes its own summaries (batched, resumable)."""

from __future__ import annotations

import argparse

from selfrec_ft.cli.common import int_at_least
from selfrec_ft.defaults import DEFAULT_PRESET, DTYPE_CHOICES, GENERATION_BACKENDS, GENERATION_DOMAINS
from selfrec_ft.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate the evaluator's own summaries for a corpus (resumable)",
        description="Generate summaries with the evaluator through the preset's generate-<domain> "
        "template and the model's chat template, clean them, and append {id, source, summary} rows to "
        "the corpus's summaries.jsonl (or --out) batch by batch. A rerun generates only what is missing. "
        "Empty generations are not written; they are logged to <out stem>.failures.jsonl and retried "
        "on the next run.",
    )
    p.add_argument("--model", required=True, metavar="PATH",
                   help="base model, LoRA adapter or checkpoint directory (or a hub id)")
    p.add_argument("--corpus", required=True, metavar="DIR", help="corpus directory (articles.jsonl)")
    p.add_argument("--source", required=True, metavar="NAME", help="source name recorded on each row")
    p.add_argument("--prompt-preset", metavar="NAME",
                   help="prompt preset name or YAML path (default: the preset the model was trained with, from its "
                        f"training_manifest.json; {DEFAULT_PRESET} for a model without one)")
    p.add_argument("--domain", choices=GENERATION_DOMAINS, default="short",
                   help="short: one sentence (XSUM-like); highlights: 3-4 lines (CNN/DM-like)")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=100, metavar="T", help="default 100")
    p.add_argument("--batch-size", type=int_at_least(1), default=8, metavar="B",
                   help="sequences per batch (default 8; use hundreds with --backend vllm)")
    p.add_argument("--limit", type=int_at_least(0), metavar="K", help="only the first K articles")
    p.add_argument("--max-length", type=int_at_least(2), metavar="L",
                   help="prompt + new tokens limit; longer articles are shortened (default: model context)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, metavar="X", help="sampling temperature (default 1.0)")
    p.add_argument("--top-p", type=float, metavar="Y", help="nucleus sampling mass (default 1.0: off)")
    p.add_argument("--num-return-sequences", type=int_at_least(1), metavar="K",
                   help="candidates per article, recorded as \"candidate\": 0..K-1 (default 1); with K > 1 "
                   "the default output is the corpus's candidates.jsonl")
    p.add_argument("--seed", type=int, metavar="S",
                   help="sampling seed; candidate k of an article always uses the same stream (default 0)")
    p.add_argument("--backend", choices=GENERATION_BACKENDS, default="hf",
                   help="hf (default) or vllm (GPU, pip install vllm)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES,
                   help="weights dtype (default bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--out", metavar="FILE", help="output JSONL (default: the corpus's summaries.jsonl)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfrec_ft.prompts.protocol import resolve_protocol

    sampling = {"--temperature": args.temperature, "--top-p": args.top_p,
                "--num-return-sequences": args.num_return_sequences, "--seed": args.seed}
    if not args.sample:
        given = [name for name, value in sampling.items() if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} only apply with --sample (the default is greedy decoding)")
    protocol = resolve_protocol(args.model, args.prompt_preset)
    protocol.announce()
    from selfrec_ft.generation.generate import generate_summaries

    result = generate_summaries(
        args.model, args.corpus, args.source,
        prompt_preset=protocol.preset, domain=args.domain, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, limit=args.limit, max_length=args.max_length, sample=args.sample,
        temperature=1.0 if args.temperature is None else args.temperature,
        top_p=1.0 if args.top_p is None else args.top_p,
        num_return_sequences=args.num_return_sequences or 1,
        seed=args.seed or 0, backend=args.backend, dtype=args.dtype, out=args.out,
    )
    print(result.format())
    return 0
