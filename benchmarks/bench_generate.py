"""Batched (left-padded, length-sorted) vs one-prompt-at-a-time greedy generation on the `small` model.

Both paths get the same chat-template prompts (synthetic articles, `generate-short` template) and the
same greedy generation config; the comparison is of generated token ids (a random-init model writes
token soup, so text is beside the point), each cut at its first EOS. Prints JSON:

    {"prompts", "max_new_tokens", "batch_size", "batched_tokens_per_s", "sequential_tokens_per_s",
     "speedup", "identical_outputs", "mismatches"}

and exits 1 if any output differs. Usage: python benchmarks/bench_generate.py [--json OUT] [--n N] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT", help="also write the result JSON here")
    parser.add_argument("--n", type=int, default=32, help="number of prompts (default 32)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine more threads spin-wait)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from transformers import GenerationConfig

    from selfrec_ft.data.synth import synth_corpus
    from selfrec_ft.generation.generate import HFGenerator, trim_at_eos
    from selfrec_ft.jsonl import atomic_write_json
    from selfrec_ft.models.loading import load_model
    from selfrec_ft.models.tiny import make_tiny_model
    from selfrec_ft.prompts.templates import load_preset, render_generation_prompt

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_model(make_tiny_model(os.path.join(tmp, "small"), seed=0, size="small"),
                                      dtype="float32", device="cpu")
    template = load_preset("panickssery2024").task("generate-short")
    corpus = synth_corpus("short", args.n, seed=7)
    prompts = [render_generation_prompt(tokenizer, template, None, article=a.text)[0] for a in corpus.articles]

    gen = HFGenerator(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    batched: list[list[int] | None] = [None] * len(prompts)
    t0 = time.perf_counter()
    batched_tokens = 0
    for b in range(0, len(order), args.batch_size):
        idx = order[b:b + args.batch_size]
        outs, n_new = gen.generate([prompts[i] for i in idx], args.max_new_tokens)
        batched_tokens += n_new
        for i, o in zip(idx, outs):
            batched[i] = o
    batched_s = time.perf_counter() - t0

    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=sorted(gen.eos), pad_token_id=gen.pad_id)
    sequential, sequential_tokens = [], 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            kept, n_new = trim_at_eos(out[0, len(p):].tolist(), gen.eos)
            sequential.append(kept)
            sequential_tokens += n_new
    sequential_s = time.perf_counter() - t0

    mismatches = [i for i in range(len(prompts)) if batched[i] != sequential[i]]
    result = {
        "prompts": len(prompts),
        "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "new_tokens": sequential_tokens,
        "batched_tokens_per_s": round(batched_tokens / batched_s, 1),
        "sequential_tokens_per_s": round(sequential_tokens / sequential_s, 1),
        "speedup": round((batched_tokens / batched_s) / (sequential_tokens / sequential_s), 2),
        "identical_outputs": not mismatches and batched_tokens == sequential_tokens,
        "mismatches": len(mismatches),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    return 0 if result["identical_outputs"] else 1


if __name__ == "__main__":
    sys.exit(main())
