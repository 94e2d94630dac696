"""bf16 vs float32 scores: how far ``--dtype bfloat16`` moves option probabilities and pairwise scores.

The same scoring items (pairwise recognition and preference, both orders, individual recognition) are
scored twice through one :class:`~selfrec_ft.scoring.scorer.Scorer` path (the engine with shared
prefixes), once with float32 weights and once with bfloat16 weights, and compared row by row.
Default model and corpus: the CPU demo's trained evaluator on its held-out in-domain articles (built
into the demo cache on first use); ``--model`` / ``--corpus`` / ``--self-source`` score any other.

Prints JSON: ``max_abs_diff_prob`` (largest |Δp| of an option probability), ``p99_abs_diff_prob``,
``mean_abs_diff_prob``, ``max_abs_diff_pair_score`` (largest |Δ| of a pair's recognition or
preference score, the number the report averages), ``mean_recognition`` / ``mean_preference`` in
each dtype, ``max_prob`` (the sharpest option probability seen: a flat model gives tiny |Δp|
trivially), ``rows``, ``argmax_flips`` (rows whose most likely option differs between the dtypes),
``pair_choice_flips`` (pairs whose choice, score above or below ½, differs: per task, with the pairs
compared) and ``seconds`` per dtype with ``bf16_speedup``. docs/ARCHITECTURE.md states the tolerance
these figures support.

Usage: python benchmarks/bf16_scores.py [--limit 40] [--model DIR --corpus DIR --self-source S]
       [--others A,B] [--prompt-preset P] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

TASKS = ("pairwise-recognition", "pairwise-preference", "individual-recognition")


def score_rows(model: str, spec, dtype: str) -> tuple[list[dict], float]:
    """The rows of ``spec`` scored with ``dtype`` weights, and the seconds scoring took (loading left out)."""
    import time

    from selfrec_ft.scoring.scorer import Scorer

    scorer = Scorer(model, dtype=dtype, device="cpu", batch_size=8)
    try:
        items = scorer.items(spec)
        t0 = time.perf_counter()
        rows = scorer.score_items(items, progress=False)
        return rows, time.perf_counter() - t0
    finally:
        scorer.close()


def compare(rows32: list[dict], rows16: list[dict]) -> dict:
    """The figures of the module docstring from two lists of scoring rows in the same item order."""
    import numpy as np

    from selfrec_ft.scoring.metrics import pairwise_scores

    diffs, top, flips = [], 0.0, 0
    for a, b in zip(rows32, rows16, strict=True):
        assert (a["task"], a["article_id"], a.get("order")) == (b["task"], b["article_id"], b.get("order"))
        for option, p in a["probs"].items():
            diffs.append(abs(p - b["probs"][option]))
            top = max(top, p)
        flips += max(a["probs"], key=a["probs"].get) != max(b["probs"], key=b["probs"].get)
    out = {"rows": len(rows32), "max_prob": top, "max_abs_diff_prob": max(diffs),
           "p99_abs_diff_prob": float(np.quantile(diffs, 0.99)), "mean_abs_diff_prob": float(np.mean(diffs)),
           "argmax_flips": flips, "pair_choice_flips": {}}
    worst = 0.0
    for task in ("recognition", "preference"):
        s32, s16 = pairwise_scores(rows32, task), pairwise_scores(rows16, task)
        pairs = [(x["score"], y["score"]) for x, y in zip(s32, s16, strict=True) if x["valid"] and y["valid"]]
        if not pairs:
            continue
        worst = max([worst] + [abs(x - y) for x, y in pairs])
        out[f"mean_{task}"] = {"float32": float(np.mean([x for x, _ in pairs])),
                               "bfloat16": float(np.mean([y for _, y in pairs]))}
        out["pair_choice_flips"][task] = {"flips": sum((x > 0.5) != (y > 0.5) for x, y in pairs), "pairs": len(pairs)}
    out["max_abs_diff_pair_score"] = worst
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model directory (default: the CPU demo's evaluator)")
    p.add_argument("--corpus", help="corpus directory (default: the demo's in-domain corpus)")
    p.add_argument("--self-source", default="demo-evaluator")
    p.add_argument("--skip-first", type=int, default=256, help="held-out articles start here (demo: 256)")
    p.add_argument("--limit", type=int, default=40, help="articles scored (default 40)")
    p.add_argument("--others", help="comma-separated other sources (default: every other source)")
    p.add_argument("--prompt-preset", default="panickssery2024", help="prompt preset (default panickssery2024)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"tasks scored (default {','.join(TASKS)})")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from selfrec_ft.scoring.spec import EvalSpec
    from selfrec_ft.training.demo_assets import demo_corpus, demo_model

    model = args.model or str(demo_model("evaluator"))
    corpus = args.corpus or str(demo_corpus("in_domain"))
    spec = EvalSpec(corpus=corpus, self_source=args.self_source, tasks=args.tasks, skip_first=args.skip_first,
                    limit=args.limit, others=args.others, preset=args.prompt_preset)
    (rows32, t32), (rows16, t16) = score_rows(model, spec, "float32"), score_rows(model, spec, "bfloat16")
    result = {"model": model, "corpus": corpus, "articles": args.limit, "preset": args.prompt_preset,
              **compare(rows32, rows16), "seconds": {"float32": round(t32, 2), "bfloat16": round(t16, 2)},
              "bf16_speedup": round(t32 / t16, 2)}
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
