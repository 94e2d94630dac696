#!/usr/bin/env python
"""Training throughput: the SFT recipe's trainer vs a P1-style loop, on the same examples.

* recipe: ``selfrec_ft.training.sft.prepare_sft`` -> TRL ``SFTTrainer``, LoRA (r 16, all linear
  layers), loss on the completion tokens, as the Llama-2 LoRA recipes train: ``share_prefix`` (each
  article's 2 x |others| examples in one row, the shared prompt computed once; 8 examples per step);
* recipe_unshared: the same trainer with one example per row, batch 8 grouped by length;
* P1 loop: a hand-written loop like Panickssery et al.'s — batch 1, all parameters, AdamW, loss on the
  last token (the label after ``[/INST] ``), full logits.

Model: the ``small`` Llama-architecture model (``make_tiny_model(dir, size="small")``, ~25M
parameters), float32 on CPU (or the GPU if there is one). Data: pairs from
``../shared/data/selfrec/xsum`` (self ``llama2-7b-chat``) when that directory exists, else from a
synthetic corpus (self ``lead``). The three methods run ``--rounds`` times on the same examples (the
pairs of the first ``--examples`` / 8 articles: one epoch each), rotating which goes first; each round
is timed from its first step to its last and the rounds are pooled (setup, tokenization and model
loading are not timed).

    python benchmarks/bench_sft.py [--examples 24] [--rounds 2] [--json OUT]

Prints ``{"examples", "recipe_examples_per_s", "p1_loop_examples_per_s", "speedup", ...}``
(``speedup`` = recipe / P1 loop; ``speedup_unshared`` = recipe_unshared / P1 loop).
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

REPO = Path(__file__).resolve().parents[1]
SHARED_XSUM = REPO.parent / "shared" / "data" / "selfrec" / "xsum"
BATCH = 8


def _corpus_args(tmp: Path, examples: int):
    """(corpus dir, self source, others, n_articles) giving at least ``examples`` training rows."""
    if (SHARED_XSUM / "articles.jsonl").is_file():
        others = ["human", "gpt35", "gpt4", "claude"]
        return str(SHARED_XSUM), "llama2-7b-chat", others, -(-examples // (2 * len(others))), "xsum"
    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus

    n = -(-examples // 2)
    path = write_corpus(synth_corpus("short", n, seed=7), tmp / "corpus")
    return str(path), "lead", ["human"], n, "synthetic-short"


class RecipeRunner:
    """The recipe's trainer, built once; :meth:`run` trains ``examples`` examples and returns
    (examples, seconds) from the start of the first step to the end of the last."""

    def __init__(self, model_dir: str, data: tuple, examples: int, out: Path, max_length: int, share_prefix: bool):
        import torch
        from transformers import TrainerCallback
        from trl import ModelConfig, SFTConfig

        from selfrec_ft.training.args import SelfRecDataArguments
        from selfrec_ft.training.sft import prepare_sft

        corpus, self_source, others, n_articles, _ = data

        class Clock(TrainerCallback):
            def __init__(self):
                self.t = []

            def on_step_begin(self, args, state, control, **kw):
                if not self.t:
                    self.t.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):
                self.t.append(time.perf_counter())

        self.clock = Clock()
        cuda = torch.cuda.is_available()
        group = 2 * len(others)  # examples of one article
        rows_per_step = max(1, BATCH // group) if share_prefix else BATCH
        data_args = SelfRecDataArguments(corpus=corpus, self_source=self_source, others=others,
                                         n_articles=n_articles, share_prefix=share_prefix)
        training_args = SFTConfig(output_dir=str(out), use_cpu=not cuda, bf16=False, activation_checkpointing=False,
                                  max_length=max_length, per_device_train_batch_size=rows_per_step,
                                  num_train_epochs=1, learning_rate=1e-4, lr_scheduler_type="constant",
                                  save_strategy="no", logging_steps=10_000, report_to="none", disable_tqdm=True,
                                  seed=0, train_sampling_strategy="random" if share_prefix else "group_by_length")
        model_args = ModelConfig(model_name_or_path=model_dir, use_peft=True, lora_r=16, lora_alpha=32,
                                 lora_dropout=0.0, lora_target_modules="all-linear", dtype="float32")
        self.setup = prepare_sft(data_args, training_args, model_args, callbacks=[self.clock])
        self.examples = len(self.setup.dataset)  # one epoch: every example once
        tokens = sum(self.setup.sequences.lengths)
        self.info = {"examples": self.examples, "rows_per_step": rows_per_step, "share_prefix": share_prefix,
                     "mean_tokens_per_example": round(tokens / self.examples, 1),
                     "tokens_per_epoch": self.setup.shared_prefix["tokens"] if share_prefix else tokens}

    def run(self) -> tuple[int, float]:
        self.clock.t = []
        self.setup.trainer.train()
        return self.examples, self.clock.t[-1] - self.clock.t[0]  # all steps, data loading included


class P1Loop:
    """Panickssery et al.'s loop: batch 1, all parameters, AdamW, loss on the last token (full logits)."""

    def __init__(self, model_dir: str, data: tuple, examples: int, max_length: int):
        import torch
        from transformers import AutoModelForCausalLM

        from selfrec_ft.data.corpus import load_corpus
        from selfrec_ft.models.loading import load_tokenizer
        from selfrec_ft.pairs.build import build_pairwise_dataset

        corpus, self_source, others, n_articles, _ = data
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        tok = load_tokenizer(model_dir)
        ds, _ = build_pairwise_dataset(load_corpus(corpus), self_source, others, n_articles=n_articles,
                                       tokenizer=tok, max_length=max_length - 2)  # as the recipe shortens
        self.seqs = []
        for row in list(ds)[:examples]:  # P1 trained on "[/INST] " + label: drop the closing " </s>"
            ids = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                          return_dict=True)["input_ids"]
            end = len(ids) - 1 - ids[::-1].index(tok.convert_tokens_to_ids(row["label"]))
            self.seqs.append(torch.tensor([ids[: end + 1]], device=self.device))
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(self.device)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=5e-5)

    def run(self) -> tuple[int, float]:
        import torch

        times = [time.perf_counter()]
        for ids in self.seqs:
            logits = self.model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(logits[:, -2], ids[:, -1])  # the last token only
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if self.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())
        return len(times) - 1, times[-1] - times[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=24, help="training examples per method (multiple of 8)")
    parser.add_argument("--max-length", type=int, default=1024, help="SFT max_length (articles shortened to fit)")
    parser.add_argument("--model-dir", help="a prebuilt `small` model (default: built into the demo cache)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both methods (default 2)")
    parser.add_argument("--json", metavar="OUT", help="also write the result to OUT")
    args = parser.parse_args(argv)
    if args.examples < 2 * BATCH or args.examples % BATCH:
        parser.error(f"--examples must be a multiple of {BATCH}, at least {2 * BATCH}")

    import torch

    from selfrec_ft.training.demo_assets import demo_model

    model_dir = args.model_dir or str(demo_model("small"))
    names = ("recipe", "recipe_unshared", "p1")
    totals = {name: [0, 0.0] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        data = _corpus_args(Path(tmp), args.examples)
        runners = {"recipe": RecipeRunner(model_dir, data, args.examples, Path(tmp) / "out", args.max_length, True),
                   "recipe_unshared": RecipeRunner(model_dir, data, args.examples, Path(tmp) / "out_unshared",
                                                   args.max_length, False)}
        runners["p1"] = P1Loop(model_dir, data, runners["recipe"].examples, args.max_length)
        # rotate the order each round so that a machine shared with other jobs slows all alike
        for r in range(args.rounds):
            for name in names[r % 3:] + names[:r % 3]:
                n, sec = runners[name].run()
                totals[name][0] += n
                totals[name][1] += sec
        info = runners["recipe"].info
        info_unshared = runners["recipe_unshared"].info
    rate = {name: totals[name][0] / totals[name][1] for name in names}
    result = {
        "examples": runners["recipe"].examples,
        "rounds": args.rounds,
        "measured_examples": {"recipe": totals["recipe"][0], "recipe_unshared": totals["recipe_unshared"][0],
                              "p1_loop": totals["p1"][0]},
        "recipe_examples_per_s": round(rate["recipe"], 3),
        "recipe_unshared_examples_per_s": round(rate["recipe_unshared"], 3),
        "p1_loop_examples_per_s": round(rate["p1"], 3),
        "speedup": round(rate["recipe"] / rate["p1"], 2),
        "speedup_unshared": round(rate["recipe_unshared"] / rate["p1"], 2),
        "data": data[4],
        "model": "small",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "recipe": {"lora": "r16 all-linear", "activation_checkpointing": False, **info},
        "recipe_unshared": {"sampler": "group_by_length", **info_unshared},
        "p1_loop": {"batch": 1, "params": "all", "optimizer": "torch AdamW", "loss": "last token"},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
