"""Batched (left-padded, length-sorted) vs one-prompt-at-a-time greedy generation on the `small` model
(or ``--model DIR``, e.g. SmolLM2-135M-Instruct; ``--dtypes float32,bfloat16`` measures both in one run).

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


def measure(args, model_dir, dtype: str) -> dict:
    """Batched vs one prompt at a time, greedy, with weights in ``dtype``."""
    import torch
    from transformers import GenerationConfig

    from selfrec_ft.data.synth import synth_corpus
    from selfrec_ft.generation.generate import HFGenerator, trim_at_eos
    from selfrec_ft.models.loading import load_model
    from selfrec_ft.prompts.templates import load_preset, render_generation_prompt

    model, tokenizer = load_model(model_dir, dtype=dtype, device="cpu")
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
        "dtype": dtype,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT", help="also write the result JSON here")
    parser.add_argument("--n", type=int, default=32, help="number of prompts (default 32)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine more threads spin-wait)")
    parser.add_argument("--model", metavar="DIR", help="model directory (default: build the `small` model)")
    parser.add_argument("--dtypes", default="float32",
                        help="weight dtypes measured one after another (e.g. float32,bfloat16: adds bf16_speedup)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from selfrec_ft.jsonl import atomic_write_json
    from selfrec_ft.models.tiny import make_tiny_model

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or make_tiny_model(os.path.join(tmp, "small"), seed=0, size="small")
        runs = {dtype: measure(args, model_dir, dtype) for dtype in dtypes}
    if len(runs) == 1:
        (result,) = runs.values()
    else:
        result = {"model": args.model or "small", "dtypes": runs}
        if {"float32", "bfloat16"} <= set(runs):
            result["bf16_speedup"] = {k: round(runs["bfloat16"][k] / runs["float32"][k], 2)
                                      for k in ("batched_tokens_per_s", "sequential_tokens_per_s")}
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    # float32 must match exactly; bf16 rounding differs with the padded width, so its mismatches are reported
    return 0 if all(r["identical_outputs"] for r in runs.values() if r["dtype"] == "float32") else 1


if __name__ == "__main__":
    sys.exit(main())
