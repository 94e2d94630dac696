"""Scoring engine vs P1-style one-prompt loop vs a plain padded batch, on the `small` model.

All pairwise prompts (recognition and preference, both orders, every other source) of a few
articles are scored three ways: (a) P1-style, one prompt per forward pass with full logits; (b) a
plain left-padded batched forward with full logits; (c) :func:`selfrec_ft.scoring.engine.score_requests`
(shared-prefix KV cache, logits only where read). Articles are XSUM's (``../shared/data/selfrec/xsum``
next to the repository, read at run time) when present, else synthetic articles of similar length.
Prints JSON:

    {"prompts", "p1_loop_s", "batched_s", "engine_s", "speedup_vs_p1_loop", "speedup_vs_batched",
     "max_abs_diff", ...}

``max_abs_diff`` is the largest |Δp| of an option probability, engine or batched vs the P1 loop.
``token_ratio`` = prompt tokens / tokens the engine runs (shared prefixes once): the engine's
compute saving vs the P1 loop, before attention and full-logit costs, i.e. roughly the most it can
gain where the loop is compute-bound (a CPU); on a GPU the loop is also latency-bound at batch 1.
Usage: python benchmarks/bench_scoring.py [--json OUT] [--articles N] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
XSUM = REPO.parent / "shared" / "data" / "selfrec" / "xsum"
TASKS = ["pairwise-recognition", "pairwise-preference"]


def synthetic_corpus(n: int):
    """Synthetic articles of XSUM-like length (several synthetic stories joined) with a self source
    and four others."""
    from selfrec_ft.data.corpus import Article, Corpus
    from selfrec_ft.data.synth import synth_corpus

    parts = synth_corpus("short", n * 5, seed=11)
    corpus = Corpus(articles=[], summaries={s: {} for s in ("self", "human", "lead", "human_lower", "tail")})
    for i in range(n):
        chunk = parts.articles[5 * i: 5 * i + 5]
        aid = chunk[0].id
        corpus.articles.append(Article(aid, " ".join(a.text for a in chunk)))
        first = chunk[0].id
        corpus.summaries["self"][aid] = parts.summary(first, "lead") + " " + parts.summary(chunk[1].id, "human")
        corpus.summaries["human"][aid] = parts.summary(first, "human")
        corpus.summaries["lead"][aid] = parts.summary(first, "lead")
        corpus.summaries["human_lower"][aid] = parts.summary(chunk[1].id, "human").lower()
        corpus.summaries["tail"][aid] = chunk[-1].text.split(". ")[-1]
    corpus.__post_init__()
    return corpus, "self"


def p1_loop(model, requests) -> list[dict[str, float]]:
    import torch

    out = []
    with torch.inference_mode():
        for r in requests:
            logits = model(input_ids=torch.tensor([r.prompt_ids])).logits  # full logits, batch 1
            p = torch.softmax(logits[0, -1].float(), dim=-1)
            out.append({o: float(p[t]) for o, t in r.option_ids.items()})
    return out


def plain_batched(model, requests, batch_size: int, pad_id: int) -> list[dict[str, float]]:
    import torch

    out = []
    with torch.inference_mode():
        for b in range(0, len(requests), batch_size):
            rows = requests[b:b + batch_size]
            width = max(len(r.prompt_ids) for r in rows)
            ids = torch.full((len(rows), width), pad_id)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
                mask[i, width - len(r.prompt_ids):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits  # full logits
            p = torch.softmax(logits[:, -1].float(), dim=-1)
            out.extend({o: float(p[i, t]) for o, t in r.option_ids.items()} for i, r in enumerate(rows))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT", help="also write the result JSON here")
    parser.add_argument("--articles", type=int, default=3, help="number of articles (default 3)")
    parser.add_argument("--model", metavar="DIR", help="model directory (default: build the `small` model)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=2048, help="prompt length cap (articles are cut)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    args = parser.parse_args(argv)

    import json

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.jsonl import atomic_write_json
    from selfrec_ft.models.loading import load_model
    from selfrec_ft.models.tiny import make_tiny_model
    from selfrec_ft.scoring.engine import _pad_id, plan_units, score_requests
    from selfrec_ft.scoring.items import build_items

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or make_tiny_model(os.path.join(tmp, "small"), seed=0, size="small")
        model, tokenizer = load_model(model_dir, dtype="float32", device="cpu")
    if XSUM.is_dir():
        corpus, self_source, data = load_corpus(XSUM), "llama2-7b-chat", "xsum"
    else:
        corpus, self_source = synthetic_corpus(args.articles)
        data = "synthetic"
    ids = [a.id for a in corpus.articles[: args.articles]]
    items = build_items(corpus, tokenizer, self_source, None, TASKS, ids, max_length=args.max_length)
    requests = [it.request for it in items]
    lengths = [len(r.prompt_ids) for r in requests]

    model(input_ids=torch.tensor([requests[0].prompt_ids[:64]]))  # warm-up
    cpu = {}

    def timed(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        cpu[name] = round(time.process_time() - c0, 3)
        return out, time.perf_counter() - t0

    ref, p1_s = timed("p1_loop", lambda: p1_loop(model, requests))
    batched, batched_s = timed("batched", lambda: plain_batched(model, requests, args.batch_size, _pad_id(model)))
    engine, engine_s = timed("engine", lambda: score_requests(model, requests, batch_size=args.batch_size,
                                                               progress=False))

    units = plan_units(requests)
    engine_tokens = sum(u.prefix_len + sum(len(requests[i].prompt_ids) - u.prefix_len for i in u.indices)
                        for u in units)

    def diff(rows) -> float:
        return max(abs(a[o] - b[o]) for a, b in zip(rows, ref) for o in a)

    result = {
        "prompts": len(requests),
        "p1_loop_s": round(p1_s, 3),
        "batched_s": round(batched_s, 3),
        "engine_s": round(engine_s, 3),
        "speedup_vs_p1_loop": round(p1_s / engine_s, 2),
        "speedup_vs_batched": round(batched_s / engine_s, 2),
        "max_abs_diff": max(diff([r.probs for r in engine]), diff(batched)),
        "max_abs_diff_engine": diff([r.probs for r in engine]),
        "articles": len(ids),
        "data": data,
        "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1),
        "prompt_tokens_max": max(lengths),
        "shortened_prompts": items.shortened,
        "prompt_tokens_total": sum(lengths),
        "engine_tokens_total": engine_tokens,
        "token_ratio": round(sum(lengths) / engine_tokens, 2),
        "batch_size": args.batch_size,
        "cpu_s": cpu,  # process CPU time: less sensitive to other jobs on a shared machine
        "torch_threads": torch.get_num_threads(),
        "dtype": "float32",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    return 0 if result["max_abs_diff"] <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
