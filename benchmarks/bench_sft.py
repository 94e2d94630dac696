#!/usr/bin/env python
"""Training throughput: the SFT recipe's trainer vs a P1-style loop, on the same examples.

* recipe: ``selfrec_ft.training.sft.prepare_sft`` -> TRL ``SFTTrainer``, LoRA (r 16, all linear
  layers), loss on the completion tokens, as the Llama-2 LoRA recipes train: ``share_prefix`` (each
  article's 2 x |others| examples in one row, the shared prompt computed once through packed
  attention; 8 examples per step);
* recipe_unshared: the same trainer with one example per row, batch 8 grouped by length;
* P1 loop: a hand-written loop like Panickssery et al.'s — batch 1, all parameters, AdamW, loss on the
  last token (the label after ``[/INST] ``), full logits.

Model: the ``small`` Llama-architecture model (~25M parameters, random weights), float32 on CPU (or the GPU if there
is one). Data: pairs from XSUM (the first ``shared/data/selfrec/xsum`` beside or above the repository,
or ``--data``; self ``llama2-7b-chat``, four others) when present, else a synthetic corpus of XSUM-length
articles with four other sources. The three methods run ``--rounds`` times on the same examples (one
epoch each), rotating which goes first; each run is timed from its first step to its last and the
rounds are pooled (setup, tokenization and model loading are not timed).

    python benchmarks/bench_sft.py [--threads 1] [--examples 24] [--rounds 2] [--json OUT]

Prints ``speedup`` (recipe / P1 loop examples per second), ``speedup_unshared``, ``token_ratio``
(tokens the P1 loop runs / tokens the recipe runs), ``ceiling_fraction`` = speedup / token_ratio,
``sgemm_gflops`` (this machine's matmul rate at the model's shapes) and each method's useful
``gflops`` (forward: linear layers, needed attention, logits; backward: input gradients, plus weight
gradients where every parameter trains — the P1 loop), a ``scaling`` row (the recipe on 3 / 6 / 12
articles: time per unique token), ``threads`` and the load average. Process CPU times are under ``cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import benchlib  # noqa: E402

BATCH = 8
XSUM_OTHERS = ["human", "gpt35", "gpt4", "claude"]
TARGETS = {"speedup": 3.0}


def _corpus_args(tmp: Path, articles: int, data: str | None):
    """(corpus dir, self source, others, label): XSUM, else synthetic XSUM-length articles."""
    xsum = benchlib.find_xsum(data)
    if xsum is not None:
        return str(xsum), "llama2-7b-chat", XSUM_OTHERS, "xsum"
    from bench_scoring import synthetic_corpus

    from selfrec_ft.data.corpus import write_corpus

    corpus, self_source = synthetic_corpus(articles)
    others = [s for s in corpus.sources() if s != self_source]
    return str(write_corpus(corpus, tmp / "corpus")), self_source, others, "synthetic"


def row_pairs(position_ids: list[int]) -> tuple[int, int]:
    """(tokens, attention (query, key) pairs) of one shared-prefix row."""
    from selfrec_ft.training.shared_prefix import row_families

    n = len(position_ids)
    (fam,) = row_families(position_ids, n)
    p = fam.root_end
    pairs = benchlib.causal_pairs(p)
    prev = p
    for b in fam.bounds:
        pairs += p * (b - prev) + benchlib.causal_pairs(b - prev)
        prev = b
    return n, pairs


def train_flops(config, tokens: int, pairs: int, logit_tokens: int, all_weights: bool) -> int:
    """Forward + backward FLOPs: linear layers and logits 2x forward (3x when every weight gets a
    gradient), attention 3x forward (scores, dQ/dK, dV)."""
    lin = benchlib.flops_per_token(config) * tokens + 2 * config.hidden_size * config.vocab_size * logit_tokens
    return lin * (3 if all_weights else 2) + 3 * benchlib.attention_flops(config, pairs)


class RecipeRunner:
    """The recipe's trainer, built once; :meth:`run` trains one epoch and returns (examples, seconds)
    from the start of the first step to the end of the last."""

    def __init__(self, model_dir: str, data: tuple, n_articles: int, out: Path, max_length: int,
                 share_prefix: bool, dtype: str = "float32"):
        import torch
        from transformers import TrainerCallback
        from trl import ModelConfig, SFTConfig

        from selfrec_ft.training.args import SelfRecDataArguments
        from selfrec_ft.training.sft import prepare_sft

        corpus, self_source, others, _ = data

        class Clock(TrainerCallback):
            def __init__(self):
                self.t = []

            def on_step_begin(self, args, state, control, **kw):
                if not self.t:
                    self.t.append(time.perf_counter())
                    self.c0 = time.process_time()

            def on_step_end(self, args, state, control, **kw):
                self.t.append(time.perf_counter())
                self.c1 = time.process_time()

        self.clock = Clock()
        cuda = torch.cuda.is_available()
        group = 2 * len(others)  # examples of one article
        rows_per_step = max(1, BATCH // group) if share_prefix else BATCH
        data_args = SelfRecDataArguments(corpus=corpus, self_source=self_source, others=others,
                                         n_articles=n_articles, share_prefix=share_prefix)
        bf16 = dtype == "bfloat16"  # bf16 weights train under bf16 autocast (kept on CPU too: lifecycle.cpu_precision)
        training_args = SFTConfig(output_dir=str(out), use_cpu=not cuda, bf16=bf16, activation_checkpointing=False,
                                  max_length=max_length, per_device_train_batch_size=rows_per_step,
                                  num_train_epochs=1, learning_rate=1e-4, lr_scheduler_type="constant",
                                  save_strategy="no", logging_steps=10_000, report_to="none", disable_tqdm=True,
                                  seed=0, train_sampling_strategy="random" if share_prefix else "group_by_length")
        model_args = ModelConfig(model_name_or_path=model_dir, use_peft=True, lora_r=16, lora_alpha=32,
                                 lora_dropout=0.0, lora_target_modules="all-linear", dtype=dtype)
        self.setup = prepare_sft(data_args, training_args, model_args, callbacks=[self.clock])
        self.examples = len(self.setup.dataset)  # one epoch: every example once
        lengths = self.setup.sequences.lengths
        if share_prefix:
            rows = [row_pairs(p) for p in self.setup.trainer.train_dataset["position_ids"]]
            self.tokens, self.pairs = sum(n for n, _ in rows), sum(p for _, p in rows)
        else:
            self.tokens, self.pairs = sum(lengths), sum(benchlib.causal_pairs(n) for n in lengths)
        self.info = {"examples": self.examples, "rows_per_step": rows_per_step, "share_prefix": share_prefix,
                     "mean_tokens_per_example": round(sum(lengths) / self.examples, 1), "tokens_per_epoch": self.tokens,
                     "attention_path": getattr(self.setup.trainer, "attention_path", "model")}

    def flops(self, config) -> int:
        return train_flops(config, self.tokens, self.pairs, self.tokens, all_weights=False)

    def run(self) -> tuple[int, float, float]:
        self.clock.t = []
        self.setup.trainer.train()
        return self.examples, self.clock.t[-1] - self.clock.t[0], self.clock.c1 - self.clock.c0


class P1Loop:
    """Panickssery et al.'s loop: batch 1, all parameters, AdamW, loss on the last token (full logits)."""

    def __init__(self, model_dir: str, data: tuple, n_articles: int, max_length: int):
        import torch
        from transformers import AutoModelForCausalLM

        from selfrec_ft.data.corpus import load_corpus
        from selfrec_ft.models.loading import load_tokenizer
        from selfrec_ft.pairs.build import build_pairwise_dataset

        corpus, self_source, others, _ = data
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        tok = load_tokenizer(model_dir)
        ds, _ = build_pairwise_dataset(load_corpus(corpus), self_source, others, n_articles=n_articles,
                                       tokenizer=tok, max_length=max_length - 2)  # as the recipe shortens
        self.seqs = []
        for row in ds:  # P1 trained on "[/INST] " + label: drop the closing " </s>"
            ids = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                          return_dict=True)["input_ids"]
            end = len(ids) - 1 - ids[::-1].index(tok.convert_tokens_to_ids(row["label"]))
            self.seqs.append(torch.tensor([ids[: end + 1]], device=self.device))
        self.tokens = sum(s.shape[1] for s in self.seqs)
        self.pairs = sum(benchlib.causal_pairs(s.shape[1]) for s in self.seqs)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(self.device)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=5e-5)

    def flops(self, config) -> int:
        return train_flops(config, self.tokens, self.pairs, self.tokens, all_weights=True)

    def run(self) -> tuple[int, float, float]:
        import torch

        times = [time.perf_counter()]
        c0 = time.process_time()
        for ids in self.seqs:
            logits = self.model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(logits[:, -2], ids[:, -1])  # the last token only
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if self.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())
        return len(times) - 1, times[-1] - times[0], time.process_time() - c0


def measure(args, model_dir: str, data: tuple, dtype: str, names: tuple, scaling: list[int], tmp: Path) -> dict:
    """The methods ``names`` trained side by side (rotated rounds) with weights in ``dtype``."""
    import torch
    from transformers import AutoConfig

    wall = {name: 0.0 for name in names}
    cpu = {name: 0.0 for name in names}
    counted = {name: 0 for name in names}
    n_articles = args.examples // BATCH  # 8 examples (2 orders x 4 others) per article
    runners = {"recipe": RecipeRunner(model_dir, data, n_articles, tmp / "out", args.max_length, True, dtype)}
    if "p1" in names:
        runners["p1"] = P1Loop(model_dir, data, n_articles, args.max_length)
    if "recipe_unshared" in names:
        runners["recipe_unshared"] = RecipeRunner(model_dir, data, n_articles, tmp / "out_unshared",
                                                  args.max_length, False, dtype)
    config = AutoConfig.from_pretrained(model_dir)
    for r in range(args.rounds):  # rotate the order so that other jobs on the machine slow all alike
        for name in names[r % len(names):] + names[:r % len(names)]:
            n, sec, csec = runners[name].run()
            counted[name] += n
            wall[name] += sec
            cpu[name] += csec
    flops = {name: runners[name].flops(config) * args.rounds for name in names}
    tokens = {name: runners[name].tokens for name in names}
    info = runners["recipe"].info
    info_unshared = runners["recipe_unshared"].info if "recipe_unshared" in runners else None
    del runners
    scaling_rows = []
    for n in scaling:
        runner = RecipeRunner(model_dir, data, n, tmp / f"scale{n}", args.max_length, True, dtype)
        ex, sec, csec = runner.run()
        scaling_rows.append({"articles": n, "examples": ex, "unique_tokens": runner.tokens,
                             "recipe_s": round(sec, 3), "recipe_cpu_s": round(csec, 3),
                             "us_per_unique_token": round(1e6 * sec / runner.tokens, 1),
                             "cpu_us_per_unique_token": round(1e6 * csec / runner.tokens, 1)})
        del runner
    sgemm = benchlib.sgemm_gflops(config, rows=2048, dtype=getattr(torch, dtype))
    rate = {name: counted[name] / wall[name] for name in names}
    crate = {name: counted[name] / cpu[name] for name in names}
    unshared = "recipe_unshared" in names
    p1 = "p1" in names
    token_ratio = tokens["p1"] / tokens["recipe"] if p1 else None
    speedup = rate["recipe"] / rate["p1"] if p1 else None

    def ratio(a, b, digits=2):
        return round(a / b, digits) if a is not None and b else None

    result = {
        "dtype": dtype,
        "examples": info["examples"],
        "rounds": args.rounds,
        "measured_examples": {name: counted[name] for name in names},
        "recipe_examples_per_s": round(rate["recipe"], 3),
        "recipe_unshared_examples_per_s": round(rate["recipe_unshared"], 3) if unshared else None,
        "p1_loop_examples_per_s": round(rate["p1"], 3) if p1 else None,
        "speedup": round(speedup, 2) if p1 else None,
        "speedup_unshared": ratio(rate.get("recipe_unshared"), rate.get("p1")),
        "speedup_vs_unshared": ratio(rate["recipe"], rate.get("recipe_unshared")),
        "token_ratio": round(token_ratio, 3) if p1 else None,
        "token_ratio_vs_unshared": ratio(tokens.get("recipe_unshared"), tokens["recipe"], 3),
        "ceiling_fraction": ratio(speedup, token_ratio, 3),
        "flop_ratio": ratio(flops.get("p1"), flops["recipe"], 3),
        "tokens": {name: tokens[name] for name in names},
        "sgemm_gflops": round(sgemm["wall"], 1),
        "gflops": {name: round(flops[name] / wall[name] / 1e9, 1) for name in names},
        "cpu": {"speedup": ratio(crate["recipe"], crate.get("p1")),
                "speedup_unshared": ratio(crate.get("recipe_unshared"), crate.get("p1")),
                "speedup_vs_unshared": ratio(crate["recipe"], crate.get("recipe_unshared")),
                "ceiling_fraction": ratio(ratio(crate["recipe"], crate.get("p1"), 6), token_ratio, 3),
                "seconds": {name: round(cpu[name], 3) for name in names},
                "sgemm_gflops": round(sgemm["cpu"], 1),
                "gflops": {name: round(flops[name] / cpu[name] / 1e9, 1) for name in names}},
        "scaling": scaling_rows,
        "recipe": {"lora": "r16 all-linear", "activation_checkpointing": False, **info},
        "recipe_unshared": {"sampler": "group_by_length", **info_unshared} if unshared else None,
        "p1_loop": {"batch": 1, "params": "all", "optimizer": "torch AdamW", "loss": "last token",
                    "dtype": "float32"} if p1 else None,
        "targets": TARGETS,
    }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=24, help="training examples per method (multiple of 8)")
    parser.add_argument("--max-length", type=int, default=2048, help="SFT max_length (articles shortened to fit)")
    parser.add_argument("--model-dir", help="a prebuilt `small` model (default: built in a temporary directory)")
    parser.add_argument("--data", metavar="DIR", help="an XSUM corpus directory (default: found beside the repo)")
    parser.add_argument("--threads", type=int, default=benchlib.DEFAULT_THREADS, help=benchlib.THREADS_HELP)
    parser.add_argument("--rounds", type=int, default=2, help="rotated rounds of the three methods (default 2)")
    parser.add_argument("--scaling", default="3,6,12", help="article counts of the scaling row ('' to skip)")
    parser.add_argument("--no-unshared", action="store_true",
                        help="skip recipe_unshared (the slowest method; its figures are then absent)")
    parser.add_argument("--no-p1", action="store_true",
                        help="skip the P1 loop (all parameters, AdamW: minutes a step on a real model's CPU run)")
    parser.add_argument("--dtypes", default="float32",
                        help="weight dtypes of the recipe runs, one after another (e.g. float32,bfloat16: adds "
                        "bf16_speedup; the P1 loop stays float32)")
    parser.add_argument("--json", metavar="OUT", help="also write the result to OUT")
    args = parser.parse_args(argv)
    if args.examples < BATCH or args.examples % BATCH:
        parser.error(f"--examples must be a positive multiple of {BATCH}")

    threads = benchlib.set_threads(args.threads)
    start = benchlib.machine()
    import torch

    from selfrec_ft.models.tiny import make_tiny_model

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    names = ("recipe",) + (() if args.no_unshared else ("recipe_unshared",)) + (() if args.no_p1 else ("p1",))
    scaling = [int(x) for x in args.scaling.split(",") if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or str(make_tiny_model(Path(tmp) / "small", seed=0, size="small"))
        data = _corpus_args(Path(tmp), max([args.examples // BATCH, *scaling]), args.data)
        runs = {dtype: measure(args, model_dir, data, dtype, names, scaling, Path(tmp) / dtype) for dtype in dtypes}
    common = {"data": data[3], "model": args.model_dir or "small", "device": "cuda" if torch.cuda.is_available() else "cpu",
              "threads": threads, "machine": start, "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    if len(runs) == 1:
        (result,) = runs.values()
        result.update(common)
    else:
        result = {**common, "dtypes": runs}
        if {"float32", "bfloat16"} <= set(runs):
            result["bf16_speedup"] = {f"{n}_examples_per_s": round(runs["bfloat16"][f"{n}_examples_per_s"]
                                                                   / runs["float32"][f"{n}_examples_per_s"], 2)
                                      for n in ("recipe", "recipe_unshared", "p1_loop")
                                      if runs["float32"].get(f"{n}_examples_per_s")}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
