#!/usr/bin/env python
"""GPU check (issue 16): the main job, the scoring engine and SFT steps at real model shapes.

One command, nothing to install beyond the project (bitsandbytes for QLoRA is a project dependency),
random weights (no hub): Llama configs built with ``transformers.LlamaConfig`` and the project's tiny
tokenizer (``selfrec_ft.models.tiny``). Parts, each timed, with its figures and the targets beside them:

(a) **main job**: ``recipes/selfrec_sft.py``'s ``main`` (in this process) end to end for a few steps on a ~1B-shaped Llama
    (TinyLlama's shape) in bf16 with the demo corpora (``demo://short`` in domain,
    ``demo://highlights`` out of domain), ``share_prefix``, LoRA and QLoRA: exit status and
    ``report.json`` written;
(b) **scoring** on a 7B-shaped Llama (Llama-2-7B's shape) in bf16 at XSUM-length prompts (XSUM's
    articles when ``shared/data/selfrec/xsum`` is found beside or above the repository, else synthetic
    ones of the same length): the engine vs the P1 loop vs a plain padded batch, speedups and max
    |Δp| (the output layer is scaled so that probabilities are far from uniform);
(c) **SFT steps** on the 7B-shaped model, LoRA and QLoRA, one shared-prefix row (an article's 8
    examples) and 8 unshared rows per step: ``torch.cuda.max_memory_allocated``, tokens/s, examples/s
    (the second step's time; the first warms up).

``--dry-run`` runs the same code paths at tiny shapes on the CPU in float32 (a test runs it).
The JSON is rewritten after every part (``--out``/gpu_check.json) and printed at the end; the exit
status is 1 when a part failed (a missed target is reported, not an error).

    bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--parts a,b,c]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import benchlib  # noqa: E402

TARGETS = {
    "scoring_speedup_vs_p1_loop": 10.0,   # at least
    "scoring_max_abs_diff_bf16": 2e-3,    # at most
    "qlora_shared_peak_gb": 10.0,         # at most
    "shared_vs_unshared_examples_per_s": 2.5,  # at least
}


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int


@dataclass(frozen=True)
class Profile:
    device: str
    dtype: str
    tokenizer: str          # the tiny-model size whose tokenizer is used
    main_job: Shape         # (a)
    big: Shape              # (b), (c)
    score_articles: int
    max_length: int
    main_job_args: tuple[str, ...]


PROFILES = {
    "gpu": Profile("cuda", "bfloat16", "small",
                   Shape(2048, 5632, 22, 32, 4, 32000),     # ~1.1B (TinyLlama-1.1B's shape)
                   Shape(4096, 11008, 32, 32, 32, 32000),   # ~6.7B (Llama-2-7B's shape)
                   score_articles=3, max_length=2048,
                   main_job_args=("--n_articles", "16", "--max_steps", "3", "--save_steps", "2", "--hook_limit", "8",
                                  "--per_device_train_batch_size", "2", "--max_length", "1024", "--bf16", "true",
                                  "--use_cpu", "false", "--dtype", "bfloat16", "--activation_checkpointing", "true")),
    "dry": Profile("cpu", "float32", "tiny",
                   Shape(64, 192, 2, 4, 2, 1024),           # every out-dim a multiple of 32: bitsandbytes packs 4-bit weights for CPUs with AVX512-BF16 in blocks of 32
                   Shape(64, 128, 2, 4, 4, 1024),
                   score_articles=1, max_length=512,
                   main_job_args=("--n_articles", "2", "--max_steps", "1", "--save_steps", "1", "--hook_limit", "1",
                                  "--per_device_train_batch_size", "2", "--max_length", "256", "--bf16", "false",
                                  "--use_cpu", "true", "--dtype", "float32", "--activation_checkpointing", "true")),
}


# ----------------------------------------------------------------------------- models


def tokenizer_dir(profile: Profile, root: Path) -> Path:
    """A directory with the project's tiny tokenizer (and a tiny model nobody uses)."""
    from selfrec_ft.models.tiny import make_tiny_model

    return make_tiny_model(root / f"tokenizer-{profile.tokenizer}", seed=0, size=profile.tokenizer)


def build_model(shape: Shape, tok_dir: Path, device: str, dtype: str):
    """A random Llama of ``shape`` on ``device`` with the tokenizer's special ids; its output layer
    scaled so that logits have a standard deviation near 5 (peaked next-token distributions)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    tiny = AutoConfig.from_pretrained(tok_dir)
    config = LlamaConfig(**asdict(shape), max_position_embeddings=4096, bos_token_id=tiny.bos_token_id,
                         eos_token_id=tiny.eos_token_id, pad_token_id=tiny.pad_token_id, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    config.vocab_size = max(shape.vocab_size, tiny.vocab_size)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0 / (config.initializer_range * shape.hidden_size ** 0.5))
    return model.eval()


def save_model(model, tok_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(out)
    return out


def peak_gb(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device == "cuda" else None


def reset_peak(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ----------------------------------------------------------------------------- (a) main job


def _recipe_main():
    """``main(argv) -> exit status`` of ``recipes/selfrec_sft.py`` (run in this process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("selfrec_sft_recipe", REPO / "recipes" / "selfrec_sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def part_main_job(profile: Profile, root: Path, tok_dir: Path) -> dict:
    model_dir = save_model(build_model(profile.main_job, tok_dir, profile.device, profile.dtype), tok_dir,
                           root / "main-job-model")
    reset_peak(profile.device)
    out: dict = {"shape": asdict(profile.main_job)}
    recipe = _recipe_main()
    for mode, extra in (("lora", ("--use_peft", "true")), ("qlora", ("--use_peft", "true", "--load_in_4bit", "true"))):
        run_dir = root / f"main-job-{mode}"
        argv = ["--model_name_or_path", str(model_dir), "--corpus", "demo://short", "--self_source", "lead",
                "--others", "human", "--share_prefix", "true", "--hook_in_domain", "demo://short",
                "--hook_out_of_domain", "demo://highlights", "--demo_cache", str(root / "demo-cache"),
                "--output_dir", str(run_dir), "--learning_rate", "1e-4", "--logging_steps", "1",
                "--disable_tqdm", "true", "--report_to", "none", *profile.main_job_args, *extra]
        t0 = time.perf_counter()
        status = recipe(argv)
        report = run_dir / "report.json"
        res = {"exit": status, "seconds": round(time.perf_counter() - t0, 1), "report_written": report.is_file(),
               "output_dir": str(run_dir), "peak_gb": peak_gb(profile.device)}
        if report.is_file():
            res["report_keys"] = sorted(json.loads(report.read_text()))
        manifest = run_dir / "training_manifest.json"
        if manifest.is_file():
            man = json.loads(manifest.read_text())
            res.update({k: man.get(k) for k in ("status", "global_step", "mode")})
        out[mode] = res
        reset_peak(profile.device)
    out["ok"] = all(out[m]["exit"] == 0 and out[m]["report_written"] for m in ("lora", "qlora"))
    return out


# ----------------------------------------------------------------------------- (b) scoring


def p1_with_top(model, requests) -> tuple[list[dict[str, float]], list[int]]:
    """The P1 loop (one prompt per forward, full logits), also giving each prompt's most likely token
    (read as the option ``top``)."""
    import torch

    device = model.get_input_embeddings().weight.device
    out, top = [], []
    with torch.inference_mode():
        for r in requests:
            logits = model(input_ids=torch.tensor([r.prompt_ids], device=device)).logits
            p = torch.softmax(logits[0, -1].float(), dim=-1)
            t = int(p.argmax())
            out.append({**{o: float(p[i]) for o, i in r.option_ids.items()}, "top": float(p[t])})
            top.append(t)
    return out, top


def part_scoring(profile: Profile, root: Path, tok_dir: Path, data: str | None) -> dict:
    import torch
    from bench_scoring import TASKS, engine_work, load_data, max_diff, max_logprob_diff, plain_batched

    from selfrec_ft.models.loading import load_tokenizer
    from selfrec_ft.scoring.engine import pad_id
    from selfrec_ft.scoring.scorer import Scorer
    from selfrec_ft.scoring.spec import EvalSpec

    tokenizer = load_tokenizer(tok_dir)
    corpus, self_source, label = load_data(data, profile.score_articles)
    model = build_model(profile.big, tok_dir, profile.device, profile.dtype)
    scorer = Scorer(model, tokenizer, batch_size=16, max_length=profile.max_length)
    items = scorer.items(EvalSpec(corpus=corpus, self_source=self_source, tasks=TASKS, limit=profile.score_articles))
    requests = [it.request for it in items]
    reset_peak(profile.device)
    sync = torch.cuda.synchronize if profile.device == "cuda" else None
    clock = benchlib.Clock()
    p1_with_top(model, requests[:2])  # warm-up: kernels, allocator
    ref, top = clock.run("p1_loop", lambda: p1_with_top(model, requests), sync=sync)
    # read each prompt's most likely token too (the P1 loop's full softmax gives it for free): a random
    # model's probabilities of the option tokens are tiny, the top token's are not
    requests = [dataclasses.replace(r, option_ids={**r.option_ids, "top": t}) for r, t in zip(requests, top)]
    methods = {
        "batched": lambda reqs: plain_batched(model, reqs, 16, pad_id(model)),
        "engine": lambda reqs: [r.probs for r in scorer.score(reqs)],
    }
    outputs = {"p1_loop": ref}
    for name, fn in methods.items():
        fn(requests[:2])
        outputs[name] = clock.run(name, lambda: fn(requests), sync=sync)
    work = engine_work(model.config, requests, 16)
    lengths = [len(r.prompt_ids) for r in requests]
    out = {
        "shape": asdict(profile.big), "dtype": profile.dtype, "data": label, "prompts": len(requests),
        "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1), "prompt_tokens_max": max(lengths),
        "seconds": {k: round(v, 3) for k, v in clock.wall.items()},
        "speedup_vs_p1_loop": round(clock.wall["p1_loop"] / clock.wall["engine"], 2),
        "speedup_vs_batched": round(clock.wall["batched"] / clock.wall["engine"], 2),
        "token_ratio": round(work["p1_tokens"] / work["engine_tokens"], 3),
        "max_abs_diff": max_diff(outputs["engine"], outputs["p1_loop"]),
        "max_abs_diff_batched": max_diff(outputs["batched"], outputs["p1_loop"]),
        "max_abs_logprob_diff": max_logprob_diff(outputs["engine"], outputs["p1_loop"]),
        "top_prob_mean": round(sum(p["top"] for p in ref) / len(ref), 3),
        "peak_gb": peak_gb(profile.device),
    }
    if profile.device == "cuda":
        save_model(model, tok_dir, root / "big-model")  # for (c)
    scorer.close()  # the caller owns the model: the scorer only forgets it
    methods.clear()  # the lambdas hold the model too
    del scorer, model
    reset_peak(profile.device)
    return out


# ----------------------------------------------------------------------------- (c) SFT steps


def sft_step(model_dir: Path, corpus: tuple, profile: Profile, out: Path, qlora: bool, share: bool) -> dict:
    """Two SFT steps with the recipe's trainer; the second step's time and the peak memory."""
    import torch
    from transformers import TrainerCallback
    from trl import ModelConfig, SFTConfig

    from selfrec_ft.training.args import SelfRecDataArguments
    from selfrec_ft.training.sft import prepare_sft

    corpus_dir, self_source, others = corpus

    class Steps(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kw):
            if profile.device == "cuda":
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if profile.device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

    steps = Steps()
    cuda = profile.device == "cuda"
    data_args = SelfRecDataArguments(corpus=corpus_dir, self_source=self_source, others=others, n_articles=2,
                                     share_prefix=share)
    training_args = SFTConfig(output_dir=str(out), use_cpu=not cuda, bf16=cuda, activation_checkpointing=True,
                              max_length=profile.max_length, per_device_train_batch_size=1 if share else 8,
                              max_steps=2, learning_rate=1e-4, lr_scheduler_type="constant", save_strategy="no",
                              logging_steps=10_000, report_to="none", disable_tqdm=True, seed=0,
                              train_sampling_strategy="sequential")
    model_args = ModelConfig(model_name_or_path=str(model_dir), dtype=profile.dtype, use_peft=True, lora_r=16,
                             lora_alpha=32, lora_dropout=0.0, lora_target_modules="all-linear", load_in_4bit=qlora,
                             bnb_4bit_quant_type="nf4")
    setup = prepare_sft(data_args, training_args, model_args, callbacks=[steps])
    trainer = setup.trainer
    rows = trainer.train_dataset["input_ids"]
    per_step = rows[:1] if share else rows[:8]
    reset_peak(profile.device)
    trainer.train()
    step_s = steps.times[-1]
    tokens = sum(len(r) for r in per_step)
    res = {"step_s": round(step_s, 3), "tokens_per_step": tokens, "examples_per_step": 8,
           "tokens_per_s": round(tokens / step_s, 1), "examples_per_s": round(8 / step_s, 3),
           "peak_gb": peak_gb(profile.device), "attention_path": getattr(trainer, "attention_path", "model"),
           "first_step_s": round(steps.times[0], 3)}
    del trainer, setup
    reset_peak(profile.device)
    return res


def part_sft(profile: Profile, root: Path, tok_dir: Path, data: str | None) -> dict:
    from bench_scoring import load_data

    from selfrec_ft.data.corpus import write_corpus

    corpus, self_source, label = load_data(data, 2)
    others = [s for s in corpus.sources() if s != self_source][:4]
    if label != "xsum":
        corpus_dir = str(write_corpus(corpus, root / "sft-corpus"))
    else:
        corpus_dir = str(benchlib.find_xsum(data))
    model_dir = root / "big-model"
    if not (model_dir / "config.json").is_file():
        save_model(build_model(profile.big, tok_dir, profile.device, profile.dtype), tok_dir, model_dir)
    out: dict = {"shape": asdict(profile.big), "data": label, "others": others}
    for mode in ("lora", "qlora"):
        for share in (True, False):
            key = f"{mode}_{'shared' if share else 'unshared'}"
            out[key] = sft_step(model_dir, (corpus_dir, self_source, others), profile, root / key, mode == "qlora",
                                share)
    for mode in ("lora", "qlora"):
        out[f"{mode}_shared_vs_unshared"] = round(out[f"{mode}_shared"]["examples_per_s"]
                                                  / out[f"{mode}_unshared"]["examples_per_s"], 2)
    return out


# ----------------------------------------------------------------------------- driver


def targets_met(parts: dict) -> dict:
    b, c = parts.get("b") or {}, parts.get("c") or {}
    met = {}
    if "speedup_vs_p1_loop" in b:
        met["scoring_speedup_vs_p1_loop"] = b["speedup_vs_p1_loop"] >= TARGETS["scoring_speedup_vs_p1_loop"]
        met["scoring_max_abs_diff_bf16"] = b["max_abs_diff"] <= TARGETS["scoring_max_abs_diff_bf16"]
    if "qlora_shared" in c and c["qlora_shared"].get("peak_gb") is not None:
        met["qlora_shared_peak_gb"] = c["qlora_shared"]["peak_gb"] <= TARGETS["qlora_shared_peak_gb"]
    if "lora_shared_vs_unshared" in c:
        met["shared_vs_unshared_examples_per_s"] = all(
            c[f"{m}_shared_vs_unshared"] >= TARGETS["shared_vs_unshared_examples_per_s"] for m in ("lora", "qlora"))
    return met


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (same code paths)")
    parser.add_argument("--out", metavar="DIR", help="working directory and gpu_check.json (default: a temp dir)")
    parser.add_argument("--parts", default="a,b,c", help="parts to run (default a,b,c)")
    parser.add_argument("--data", metavar="DIR", help="an XSUM corpus directory (default: found beside the repo)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads, set before every part (default: 1 with --dry-run, else torch's "
                             "choice; the SFT recipe sets its own for CPU runs)")
    args = parser.parse_args(argv)
    profile = PROFILES["dry" if args.dry_run else "gpu"]
    import torch

    if profile.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run for the CPU-sized check)", file=sys.stderr)
        return 2
    threads = args.threads or (1 if args.dry_run else None)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"a", "b", "c"})
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from a, b, c")
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check."))
    root.mkdir(parents=True, exist_ok=True)
    result = {"dry_run": args.dry_run, "device": benchlib.machine(), "profile": profile.device + "/" + profile.dtype,
              "threads": args.threads or (1 if args.dry_run else torch.get_num_threads()), "targets": TARGETS, "parts": {}, "seconds": {}}
    json_path = root / "gpu_check.json"

    def save():
        from selfrec_ft.jsonl import atomic_write_json

        result["targets_met"] = None if args.dry_run else targets_met(result["parts"])
        atomic_write_json(json_path, result)

    t_all = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    tok_dir = tokenizer_dir(profile, root)
    failed = False
    runners = {"a": lambda: part_main_job(profile, root, tok_dir),
               "b": lambda: part_scoring(profile, root, tok_dir, args.data),
               "c": lambda: part_sft(profile, root, tok_dir, args.data)}
    for part in parts:
        if threads:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        try:
            result["parts"][part] = runners[part]()
            failed |= result["parts"][part].get("ok", True) is False
        except Exception as exc:  # one part failing must not hide the others' figures
            failed = True
            result["parts"][part] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        result["seconds"][part] = round(time.perf_counter() - t0, 1)
        save()
    result["seconds"]["total"] = round(time.perf_counter() - t_all, 1)
    save()
    print(json.dumps(result, indent=2))
    print(f"gpu_check: {'FAILED' if failed else 'ok'}; JSON in {json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
