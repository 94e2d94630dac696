"""Scoring engine vs P1-style one-prompt loop vs a plain padded batch, on the `small` model.

All pairwise prompts (recognition and preference, both orders, every other source) of a few
articles are scored three ways: (a) P1-style, one prompt per forward pass with full logits; (b) a
plain left-padded batched forward with full logits; (c) :func:`selfrec_ft.scoring.engine.score_requests`
(shared prefixes once, packed rows without padding, logits only where read). Articles are XSUM's
(the first ``shared/data/selfrec/xsum`` beside or above the repository, or ``--data``) when present,
else synthetic articles of XSUM length. The three methods run article by article, in an order that
rotates every article and round, so that other jobs on a shared machine slow them alike; times are
pooled over ``--rounds`` rounds (wall clock; process CPU time under ``cpu``).

Prints JSON with, among others:

* ``speedup_vs_p1_loop``, ``speedup_vs_batched``; ``max_abs_diff``: the largest |Δp| of an option
  probability, engine or batched vs the P1 loop (``max_abs_logprob_diff_engine``: the largest |Δ log p|,
  since a random model's option probabilities are small);
* ``token_ratio`` = tokens the P1 loop runs / tokens the engine runs (shared prefixes once): the
  most a compute-bound machine can gain from sharing; ``ceiling_fraction`` = speedup_vs_p1_loop /
  token_ratio (the engine also skips the full logits, so it can exceed 1);
* ``sgemm_gflops``: this machine's measured matmul rate at the model's shapes (same threads);
  ``engine_gflops`` / ``p1_loop_gflops``: useful FLOPs (linear layers, the attention each token
  needs, the logits each method computes) per second;
* ``scaling``: engine time per unique token on 3 / 6 / 12 articles (flat = linear in articles);
* ``threads``, ``machine.loadavg`` (at the start) and ``loadavg_end``.

Usage: python benchmarks/bench_scoring.py [--threads 1] [--rounds 2] [--articles 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import benchlib  # noqa: E402

TASKS = ["pairwise-recognition", "pairwise-preference"]
XSUM_SELF = "llama2-7b-chat"
TARGETS = {"ceiling_fraction": 0.9, "speedup_vs_batched": 3.0, "max_abs_diff": 1e-4}


SYNTH_STORIES = 16
"""Synthetic stories joined into one article: prompts of XSUM's mean length (about 1.3k tokens with the
`small` tokenizer)."""


def synthetic_corpus(n: int, stories: int = SYNTH_STORIES):
    """Synthetic articles of XSUM-like length (``stories`` synthetic stories joined) with a self source
    and four others."""
    from selfrec_ft.data.corpus import Article, Corpus
    from selfrec_ft.data.synth import synth_corpus

    parts = synth_corpus("short", n * stories, seed=11)
    corpus = Corpus(articles=[], summaries={s: {} for s in ("self", "human", "lead", "human_lower", "tail")})
    for i in range(n):
        chunk = parts.articles[stories * i: stories * (i + 1)]
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


def load_data(data: str | None, n_articles: int):
    """(corpus, self source, label): XSUM when found, else synthetic articles of similar length."""
    from selfrec_ft.data.corpus import load_corpus

    xsum = benchlib.find_xsum(data)
    if xsum is not None:
        return load_corpus(xsum), XSUM_SELF, "xsum"
    corpus, self_source = synthetic_corpus(n_articles)
    return corpus, self_source, "synthetic"


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def p1_loop(model, requests) -> list[dict[str, float]]:
    """P1's way: one prompt per forward pass, full logits."""
    import torch

    device = model.get_input_embeddings().weight.device
    out = []
    with torch.inference_mode():
        for r in requests:
            logits = model(input_ids=torch.tensor([r.prompt_ids], device=device)).logits  # full logits, batch 1
            p = torch.softmax(logits[0, -1].float(), dim=-1)
            out.append({o: float(p[t]) for o, t in r.option_ids.items()})
    return out


def plain_batched(model, requests, batch_size: int, pad_id: int) -> list[dict[str, float]]:
    """A plain batched forward: left-padded batches in input order, full logits."""
    import torch

    device = model.get_input_embeddings().weight.device
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
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device)).logits  # full logits
            p = torch.softmax(logits[:, -1].float(), dim=-1)
            out.extend({o: float(p[i, t]) for o, t in r.option_ids.items()} for i, r in enumerate(rows))
    return out


def engine_work(config, requests, batch_size: int, max_batch_tokens: int | None = None) -> dict[str, int]:
    """Tokens and useful FLOPs of the engine's plan (prefix once, every remainder against it) and of
    the P1 loop (every prompt alone, full logits)."""
    from selfrec_ft.scoring.engine import DEFAULT_ROW_TOKENS
    from selfrec_ft.scoring.packing import full_ids, pack_rows, plan_units

    units = plan_units(requests)
    rows = pack_rows(requests, units, max_batch_tokens or DEFAULT_ROW_TOKENS, batch_size)
    engine_tokens = sum(len(r.ids) for r in rows)
    pairs = 0
    for u in units:
        p = u.prefix_len
        pairs += benchlib.causal_pairs(p)
        for i in u.indices:
            s = len(full_ids(requests[i])) - p
            pairs += p * s + benchlib.causal_pairs(s)
    reads = sum(max(1, len(r.span_ids or ())) for r in requests)
    logit_flops = 2 * config.hidden_size * config.vocab_size
    lens = [len(r.prompt_ids) for r in requests]
    return {
        "p1_tokens": sum(lens),
        "engine_tokens": engine_tokens,
        "engine_rows": len(rows),
        "engine_flops": benchlib.flops_per_token(config) * engine_tokens + benchlib.attention_flops(config, pairs)
        + logit_flops * reads,
        "p1_flops": benchlib.flops_per_token(config) * sum(lens)
        + benchlib.attention_flops(config, sum(benchlib.causal_pairs(n) for n in lens)) + logit_flops * sum(lens),
    }


def max_diff(rows, ref) -> float:
    """Largest |Δp| over every option of every prompt."""
    return max(abs(a[o] - b[o]) for a, b in zip(rows, ref) for o in a)


def max_logprob_diff(rows, ref) -> float:
    """Largest |Δ log p| (relative accuracy, meaningful for small probabilities too)."""
    import math

    return max(abs(math.log(a[o]) - math.log(b[o])) for a, b in zip(rows, ref) for o in a
               if a[o] > 0 and b[o] > 0)


def dtype_comparison(rows32, rows16, res32: dict, res16: dict) -> dict:
    """bf16 against float32 on the same prompts (engine outputs): the largest |Δp| of an option
    probability, how often a prompt's argmax option flips, and bf16's speed-ups per method."""
    flips = sum(max(a, key=a.get) != max(b, key=b.get) for a, b in zip(rows32, rows16, strict=True))
    return {"prompts": len(rows32), "max_abs_diff_prob": max_diff(rows16, rows32),
            "argmax_flips": flips, "argmax_flip_rate": round(flips / len(rows32), 4),
            "bf16_speedup": {m: round(res32[f"{m}_s"] / res16[f"{m}_s"], 2) for m in ("p1_loop", "batched", "engine")}}


def measure(args, model_dir, dtype: str, corpus, self_source: str, scaling: list[int]) -> tuple[dict, list]:
    """The three methods timed side by side with weights in ``dtype``: (result, engine outputs)."""
    from selfrec_ft.models.loading import load_model, resolve_dtype
    from selfrec_ft.scoring.engine import pad_id
    from selfrec_ft.scoring.scorer import Scorer
    from selfrec_ft.scoring.spec import EvalSpec

    model, tokenizer = load_model(model_dir, dtype=dtype, device="cpu")
    scorer = Scorer(model, tokenizer, batch_size=args.batch_size, max_length=args.max_length)
    spec = EvalSpec(corpus=corpus, self_source=self_source, tasks=TASKS)

    def requests_for(first: int, n: int):
        """The engine requests of articles first..first+n-1, rendered as every evaluation renders them."""
        items = scorer.items(spec.replace(skip_first=first, limit=n))
        return [it.request for it in items], items.shortened

    per_article = [requests_for(i, 1)[0] for i in range(args.articles)]
    requests = [r for chunk in per_article for r in chunk]
    shortened = requests_for(0, args.articles)[1]
    lengths = [len(r.prompt_ids) for r in requests]

    methods = {
        "p1_loop": lambda reqs: p1_loop(model, reqs),
        "batched": lambda reqs: plain_batched(model, reqs, args.batch_size, pad_id(model)),
        "engine": lambda reqs: [r.probs for r in scorer.score(reqs)],
    }
    for fn in methods.values():  # warm-up (allocator, one-time registration)
        fn(per_article[0][:2])
    names = list(methods)
    clock = benchlib.Clock()
    outputs: dict[str, list] = {name: [] for name in names}
    for rnd in range(args.rounds):
        for a, chunk in enumerate(per_article):
            k = (rnd + a) % len(names)
            for name in names[k:] + names[:k]:
                out = clock.run(name, lambda: methods[name](chunk))
                if rnd == 0:
                    outputs[name].extend(out)

    work = engine_work(model.config, requests, args.batch_size)
    wall, cpu = clock.wall, clock.cpu
    token_ratio = work["p1_tokens"] / work["engine_tokens"]
    speedup = wall["p1_loop"] / wall["engine"]
    sgemm = benchlib.sgemm_gflops(model.config, rows=2048, dtype=resolve_dtype(dtype))

    def gflops(flops_per_round: int, seconds: float) -> float:
        return flops_per_round * args.rounds / seconds / 1e9

    scaling_rows = []
    for n in scaling:
        reqs, _ = requests_for(0, n)
        sc = benchlib.Clock()
        sc.run("engine", lambda: scorer.score(reqs))
        w = engine_work(model.config, reqs, args.batch_size)
        scaling_rows.append({"articles": n, "prompts": len(reqs), "unique_tokens": w["engine_tokens"],
                             "engine_s": round(sc.wall["engine"], 3), "engine_cpu_s": round(sc.cpu["engine"], 3),
                             "us_per_unique_token": round(1e6 * sc.wall["engine"] / w["engine_tokens"], 1),
                             "cpu_us_per_unique_token": round(1e6 * sc.cpu["engine"] / w["engine_tokens"], 1)})

    diff_engine = max_diff(outputs["engine"], outputs["p1_loop"])
    diff_batched = max_diff(outputs["batched"], outputs["p1_loop"])
    result = {
        "prompts": len(requests),
        "articles": args.articles,
        "rounds": args.rounds,
        "p1_loop_s": round(wall["p1_loop"], 3),
        "batched_s": round(wall["batched"], 3),
        "engine_s": round(wall["engine"], 3),
        "speedup_vs_p1_loop": round(speedup, 2),
        "speedup_vs_batched": round(wall["batched"] / wall["engine"], 2),
        "token_ratio": round(token_ratio, 3),
        "ceiling_fraction": round(speedup / token_ratio, 3),
        "max_abs_diff": max(diff_engine, diff_batched),
        "max_abs_diff_engine": diff_engine,
        "max_abs_logprob_diff_engine": max_logprob_diff(outputs["engine"], outputs["p1_loop"]),
        "option_prob_max": max(max(p.values()) for p in outputs["p1_loop"]),
        "cpu": {"p1_loop_s": round(cpu["p1_loop"], 3), "batched_s": round(cpu["batched"], 3),
                "engine_s": round(cpu["engine"], 3),
                "speedup_vs_p1_loop": round(cpu["p1_loop"] / cpu["engine"], 2),
                "speedup_vs_batched": round(cpu["batched"] / cpu["engine"], 2),
                "ceiling_fraction": round(cpu["p1_loop"] / cpu["engine"] / token_ratio, 3),
                "sgemm_gflops": round(sgemm["cpu"], 1),
                "engine_gflops": round(gflops(work["engine_flops"], cpu["engine"]), 1),
                "p1_loop_gflops": round(gflops(work["p1_flops"], cpu["p1_loop"]), 1),
                "engine_fraction_of_sgemm": round(gflops(work["engine_flops"], cpu["engine"]) / sgemm["cpu"], 3)},
        "sgemm_gflops": round(sgemm["wall"], 1),
        "engine_gflops": round(gflops(work["engine_flops"], wall["engine"]), 1),
        "p1_loop_gflops": round(gflops(work["p1_flops"], wall["p1_loop"]), 1),
        "engine_fraction_of_sgemm": round(gflops(work["engine_flops"], wall["engine"]) / sgemm["wall"], 3),
        "flop_ratio": round(work["p1_flops"] / work["engine_flops"], 3),
        "p1_tokens_total": work["p1_tokens"],
        "engine_tokens_total": work["engine_tokens"],
        "engine_rows": work["engine_rows"],
        "scaling": scaling_rows,
        "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1),
        "prompt_tokens_max": max(lengths),
        "shortened_prompts": shortened,
        "batch_size": args.batch_size,
        "dtype": dtype,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "targets": TARGETS,
    }
    return result, outputs["engine"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT", help="also write the result JSON here")
    parser.add_argument("--articles", type=int, default=3, help="articles timed against the loops (default 3)")
    parser.add_argument("--model", metavar="DIR", help="model directory (default: build the `small` model)")
    parser.add_argument("--data", metavar="DIR", help="an XSUM corpus directory (default: found beside the repo)")
    parser.add_argument("--batch-size", type=int, default=16, help="engine and plain batch size (default 16)")
    parser.add_argument("--max-length", type=int, default=2048, help="prompt length cap (articles are cut)")
    parser.add_argument("--threads", type=int, default=benchlib.DEFAULT_THREADS, help=benchlib.THREADS_HELP)
    parser.add_argument("--rounds", type=int, default=2, help="rotated rounds of the three methods (default 2)")
    parser.add_argument("--scaling", default="3,6,12", help="article counts of the scaling row ('' to skip)")
    parser.add_argument("--dtypes", default="float32",
                        help="weight dtypes measured one after another in this run (e.g. float32,bfloat16: adds "
                        "bf16_vs_float32, the |Δp| between them, argmax flips and bf16's speed-ups)")
    args = parser.parse_args(argv)

    import json

    threads = benchlib.set_threads(args.threads)
    start = benchlib.machine()

    from selfrec_ft.jsonl import atomic_write_json
    from selfrec_ft.models.tiny import make_tiny_model

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    scaling = [int(x) for x in args.scaling.split(",") if x.strip()]
    corpus, self_source, data = load_data(args.data, max([args.articles, *scaling]))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or make_tiny_model(os.path.join(tmp, "small"), seed=0, size="small")
        runs = {dtype: measure(args, model_dir, dtype, corpus, self_source, scaling) for dtype in dtypes}
    if len(runs) == 1:
        (result, _), = runs.values()
        result.update(data=data, model=args.model or "small", threads=threads, machine=start)
    else:
        result = {"model": args.model or "small", "data": data, "threads": threads, "machine": start,
                  "dtypes": {d: res for d, (res, _) in runs.items()}}
        if {"float32", "bfloat16"} <= set(runs):
            result["bf16_vs_float32"] = dtype_comparison(runs["float32"][1], runs["bfloat16"][1],
                                                         runs["float32"][0], runs["bfloat16"][0])
        result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    exact = [res["max_abs_diff"] for res, _ in runs.values() if res["dtype"] == "float32"]
    return 0 if all(d <= TARGETS["max_abs_diff"] for d in exact) else 1


if __name__ == "__main__":
    sys.exit(main())
