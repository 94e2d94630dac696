"""The SFT runner (selfrec_ft.training.sft) and recipe on the tiny model: loss mask, training,
saving/reloading, manifest, QLoRA on CPU, resume after a kill, strict config parsing, 2-process DDP."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from selfrec_ft.errors import UserError

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "selfrec_sft.py"
DEMO_CONFIG = REPO / "recipes" / "demo" / "selfrec_sft.yaml"


def _args(model_dir, corpus_dir, out, n_articles=4, data=None, model=None, **training):
    from trl import ModelConfig, SFTConfig

    from selfrec_ft.training.args import SelfRecDataArguments

    cfg = dict(output_dir=str(out), use_cpu=True, bf16=False, activation_checkpointing=False, max_length=1024,
               per_device_train_batch_size=4, learning_rate=1e-2, lr_scheduler_type="constant", max_steps=2,
               logging_steps=1, save_strategy="no", report_to="none", seed=0, disable_tqdm=True,
               dataloader_num_workers=0)
    cfg.update(training)
    data_args = SelfRecDataArguments(corpus=str(corpus_dir), self_source="lead", others="human",
                                     n_articles=n_articles, **(data or {}))
    model_args = ModelConfig(model_name_or_path=str(model_dir), use_peft=True, lora_r=4, lora_alpha=8,
                             lora_dropout=0.0, **(model or {}))
    return data_args, SFTConfig(**cfg), model_args


def _first_ids(corpus_dir, n):
    lines = (Path(corpus_dir) / "articles.jsonl").read_text().splitlines()
    return [json.loads(x)["id"] for x in lines if x.strip()][:n]


def _recorder(kill_at=None):
    """A TrainerCallback that snapshots trainable/frozen parameters and the global steps it sees, and
    raises at step ``kill_at`` (a kill)."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self):
            self.steps, self.before, self.after, self.frozen_before, self.kill_at = [], {}, {}, {}, kill_at
            self.quantized = None

        def on_train_begin(self, args, state, control, model=None, **kw):
            for n, p in model.named_parameters():
                (self.before if p.requires_grad else self.frozen_before)[n] = p.detach().float().clone()
            self.frozen_before = dict(list(self.frozen_before.items())[:6])
            self.quantized = sorted({type(m).__name__ for m in model.modules() if "4bit" in type(m).__name__})

        def on_step_end(self, args, state, control, **kw):
            self.steps.append(state.global_step)
            if self.kill_at is not None and state.global_step == self.kill_at:
                raise RuntimeError("simulated kill")

        def on_train_end(self, args, state, control, model=None, **kw):
            params = dict(model.named_parameters())
            self.after = {n: params[n].detach().float().clone() for n in self.before}
            self.frozen_after = {n: params[n].detach().float().clone() for n in self.frozen_before}

    return Recorder()


def test_collator_trains_only_the_answer_tokens(tiny_model_dir, short_corpus_dir, tmp_path):
    from selfrec_ft.training.sft import prepare_sft

    data_args, training_args, model_args = _args(tiny_model_dir, short_corpus_dir, tmp_path / "o")
    setup = prepare_sft(data_args, training_args, model_args)
    trainer, tok = setup.trainer, setup.trainer.processing_class
    assert len(trainer.train_dataset) == 2 * 1 * 4
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    lengths = [len(r["input_ids"]) for r in rows]
    assert len(set(lengths)) > 1  # padding is exercised
    for i, row in enumerate(rows):
        labels, ids = batch["labels"][i].tolist(), batch["input_ids"][i].tolist()
        kept = [j for j, t in enumerate(labels) if t != -100]
        # the trained positions are one contiguous block at the end of the real (unpadded) tokens
        assert kept == list(range(lengths[i] - len(kept), lengths[i]))
        assert all(batch["attention_mask"][i, lengths[i]:] == 0) and all(batch["attention_mask"][i, :lengths[i]] == 1)
        # ... and they are the answer: Llama-2's template renders " {label} </s>" after [/INST]
        expected_label = "1" if row["self_position"] == 1 else "2"  # labels=self
        assert tok.convert_ids_to_tokens([labels[j] for j in kept]) == ["▁", expected_label, "▁", "</s>"]
        # everything before them is the rendered prompt, generation prompt included
        prompt_text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert tok.decode(ids[:kept[0]]) == prompt_text
        assert prompt_text.endswith("[/INST]")


def test_mask_check_rejects_labels_that_are_not_the_completion():
    from selfrec_ft.training.sft import verify_completion_mask

    ok = {"input_ids": [[5, 6, 7, 8], [5, 9, 7]], "labels": [[-100, -100, 7, 8], [-100, 9, 7]]}
    verify_completion_mask(ok, [[9, 7], [7, 8]])  # order-free: TRL may shuffle
    with pytest.raises(RuntimeError, match="differ from the completion tokens"):  # loss on the whole sequence
        verify_completion_mask({**ok, "labels": ok["input_ids"]}, [[7, 8], [9, 7]])
    with pytest.raises(RuntimeError, match="not a completion-only mask"):  # a hole in the completion
        verify_completion_mask({**ok, "labels": [[-100, -100, -100, 8], [-100, 9, -100]]}, [[8], [9]])
    with pytest.raises(RuntimeError, match="differ from the completion tokens"):  # truncated completion
        verify_completion_mask(ok, [[7, 8, 2], [9, 7]])


def test_lora_run_changes_weights_saves_and_reloads(tiny_model_dir, short_corpus_dir, tmp_path):
    from selfrec_ft.models.loading import load_model
    from selfrec_ft.training.sft import run_sft

    out = tmp_path / "lora"
    n = 4
    data_args, training_args, model_args = _args(tiny_model_dir, short_corpus_dir, out, n_articles=n, max_steps=3)
    rec = _recorder()
    result = run_sft(data_args, training_args, model_args, callbacks=[rec])
    assert result.mode == "lora" and result.global_step == 3 == rec.steps[-1]
    # every trainable (LoRA) parameter moved; frozen base weights did not
    assert rec.before and all("lora_" in name for name in rec.before)
    assert all(not torch.equal(rec.before[k], rec.after[k]) for k in rec.before)
    assert all(torch.equal(rec.frozen_before[k], rec.frozen_after[k]) for k in rec.frozen_before)

    # the saved adapter reloads and changes the logits
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer.json").is_file()
    tuned, tok = load_model(out, device="cpu")
    base, _ = load_model(tiny_model_dir, device="cpu")
    x = torch.tensor([tok("Summary1: a [/INST]")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(tuned(x).logits, base(x).logits)

    # resolved config and manifest, checked against the corpus files read independently
    cfg = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert set(cfg) == {"data", "training", "model"}
    assert cfg["data"]["self_source"] == "lead" and cfg["data"]["others"] == ["human"]
    assert cfg["training"]["max_steps"] == 3 and cfg["model"]["use_peft"] is True
    man = json.loads((out / "training_manifest.json").read_text())
    assert man["status"] == "done" and man["global_step"] == 3 and man["num_processes"] == 1
    assert man["rows"] == 2 * 1 * n and man["articles"] == n
    assert man["labels"] == {"1": n, "2": n} and man["by_source"] == {"human": 2 * n}
    assert man["by_source_and_label"] == {"human": {"1": n, "2": n}}
    assert man["train_article_ids"] == _first_ids(short_corpus_dir, n)
    for name in ("articles.jsonl", "summaries.jsonl"):
        path = str((Path(short_corpus_dir) / name).resolve())
        assert man["corpus_files"][path] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert man["completion_tokens"] == {"1": ["▁", "1", "▁", "</s>"], "2": ["▁", "2", "▁", "</s>"]}
    assert man["library_versions"]["trl"] and man["seeds"]["label_seed"] == 0


def test_qlora_trains_on_cpu(tiny_model_dir, short_corpus_dir, tmp_path):
    from safetensors.torch import load_file

    from selfrec_ft.training.sft import run_sft

    out = tmp_path / "qlora"
    data_args, training_args, model_args = _args(tiny_model_dir, short_corpus_dir, out, n_articles=2, max_steps=1,
                                                 model={"load_in_4bit": True})
    rec = _recorder()
    result = run_sft(data_args, training_args, model_args, callbacks=[rec])
    assert result.mode == "qlora" and result.global_step == 1
    assert rec.quantized == ["Linear4bit"]  # the base really is 4-bit
    assert all(not torch.equal(rec.before[k], rec.after[k]) for k in rec.before if "lora_B" in k)
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in k and w.abs().sum() > 0 for k, w in weights.items())


def test_killed_run_resumes_from_its_checkpoint(tiny_model_dir, short_corpus_dir, tmp_path):
    from selfrec_ft.training.sft import run_sft

    out = tmp_path / "resume"
    kw = dict(n_articles=2, max_steps=4, per_device_train_batch_size=2, save_strategy="steps", save_steps=2)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_sft(*_args(tiny_model_dir, short_corpus_dir, out, **kw), callbacks=[_recorder(kill_at=3)])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert json.loads((out / "training_manifest.json").read_text())["status"] == "training"

    rec = _recorder()
    result = run_sft(*_args(tiny_model_dir, short_corpus_dir, out, **kw), callbacks=[rec])
    assert Path(result.resumed_from).name == "checkpoint-2"
    assert rec.steps == [3, 4] and result.global_step == 4
    man = json.loads((out / "training_manifest.json").read_text())
    assert man["status"] == "done" and Path(man["resumed_from"]).name == "checkpoint-2"

    # resume_from_checkpoint: false starts again from step 0
    rec = _recorder()
    data_args, training_args, model_args = _args(tiny_model_dir, short_corpus_dir, out, **{**kw, "max_steps": 1})
    training_args.resume_from_checkpoint = "false"
    assert run_sft(data_args, training_args, model_args, callbacks=[rec]).resumed_from is None
    assert rec.steps == [1]


def _full_lengths(tok, ds):
    return [len(tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=True)["input_ids"])
            for r in ds]


def test_long_examples_are_shortened_or_refused(tiny_model_dir, short_corpus_dir, tmp_path):
    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.models.loading import load_tokenizer
    from selfrec_ft.pairs.build import build_pairwise_dataset
    from selfrec_ft.training.sft import prepare_sft

    tok = load_tokenizer(tiny_model_dir)
    raw, _ = build_pairwise_dataset(load_corpus(short_corpus_dir), "lead", ["human"], n_articles=6)
    lengths = _full_lengths(tok, raw)
    limit = sorted(lengths)[len(lengths) // 2]  # about half the examples are too long
    n_over = sum(n > limit for n in lengths)
    assert 0 < n_over < len(lengths)

    # explicit article budget larger than max_length: refused before training, with the count
    data_args, training_args, model_args = _args(tiny_model_dir, short_corpus_dir, tmp_path / "a", n_articles=6,
                                                 data={"prompt_max_length": 4096}, max_length=limit)
    with pytest.raises(UserError, match=rf"^{n_over} of {len(lengths)} training examples are longer than "
                                        rf"max_length={limit}"):
        prepare_sft(data_args, training_args, model_args)

    # default: articles are shortened to fit max_length; nothing is truncated or dropped
    data_args, training_args, model_args = _args(tiny_model_dir, short_corpus_dir, tmp_path / "b", n_articles=6,
                                                 max_length=limit)
    setup = prepare_sft(data_args, training_args, model_args)
    assert setup.stats.shortened == n_over and len(setup.trainer.train_dataset) == len(lengths)
    assert max(_full_lengths(tok, setup.dataset)) <= limit
    assert max(len(r["input_ids"]) for r in setup.trainer.train_dataset) <= limit


def test_self_summaries_are_added_and_checked(short_corpus_dir, tmp_path):
    from selfrec_ft.training.args import SelfRecDataArguments
    from selfrec_ft.training.sft import load_training_corpus

    ids = _first_ids(short_corpus_dir, 3)
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps({"id": i, "source": "me", "summary": f"my summary {i}"}) + "\n" for i in ids))
    corpus, files = load_training_corpus(SelfRecDataArguments(corpus=str(short_corpus_dir), self_summaries=str(own)))
    assert corpus.summaries["me"] == {i: f"my summary {i}" for i in ids} and files[-1] == own
    own.write_text(json.dumps({"id": ids[0], "source": "human", "summary": "not the reference"}) + "\n")
    with pytest.raises(UserError, match=f'{own}:1: the corpus already has a different "human" summary'):
        load_training_corpus(SelfRecDataArguments(corpus=str(short_corpus_dir), self_summaries=str(own)))
    own.write_text(json.dumps({"id": "nope", "source": "me", "summary": "x"}) + "\n")
    with pytest.raises(UserError, match=f'{own}:1: summary for unknown article id "nope"'):
        load_training_corpus(SelfRecDataArguments(corpus=str(short_corpus_dir), self_summaries=str(own)))


def test_hub_dataset_arguments_reach_the_loader(monkeypatch):
    import selfrec_ft.data.corpus as corpus_mod
    from selfrec_ft.data.corpus import Article, Corpus
    from selfrec_ft.training.args import SelfRecDataArguments
    from selfrec_ft.training.sft import load_training_corpus

    calls = []

    def fake(name, config=None, split="train", **columns):
        calls.append((name, config, split, columns))
        return Corpus([Article("1", "text")], {"human": {"1": "ref"}})

    monkeypatch.setattr(corpus_mod, "load_hf_corpus", fake)
    args = SelfRecDataArguments(hf_dataset="abisee/cnn_dailymail", hf_config="3.0.0", hf_split="train[:10]",
                                document_column="article", summary_column="highlights")
    corpus, files = load_training_corpus(args)
    assert calls == [("abisee/cnn_dailymail", "3.0.0", "train[:10]",
                      {"document_column": "article", "summary_column": "highlights", "id_column": "id"})]
    assert corpus.sources() == ["human"] and files == []
    with pytest.raises(UserError, match="either corpus"):
        load_training_corpus(SelfRecDataArguments(corpus="x", hf_dataset="y"))


LLAMA2_SFT_CONFIGS = [REPO / "recipes" / "llama2-7b-chat" / f"{ds}_{mode}.yaml"
                      for ds in ("xsum", "cnn") for mode in ("lora", "qlora", "full")]


@pytest.mark.parametrize("config", LLAMA2_SFT_CONFIGS, ids=lambda p: p.name)
def test_shipped_llama2_configs_parse(config):
    from trl import ModelConfig, SFTConfig, TrlParser

    from selfrec_ft.training.args import EvalHookArguments, SelfRecDataArguments, parse_args_and_config_strict

    parser = TrlParser((SelfRecDataArguments, SFTConfig, ModelConfig, EvalHookArguments))
    # bf16 needs a GPU at parse time; everything else is checked as shipped
    data, train, model, hook = parse_args_and_config_strict(parser, ["--config", str(config), "--bf16", "false"])
    dataset = config.name.split("_")[0]
    assert data.corpus == f"data/p1/{dataset}" and data.self_source == "llama2-7b-chat"
    assert data.n_articles == 500 and data.labels == "self" and yaml.safe_load(config.read_text())["bf16"] is True
    assert hook.hook_in_domain == data.corpus and hook.hook_out_of_domain != data.corpus
    assert model.use_peft is (not config.name.endswith("_full.yaml"))
    assert model.load_in_4bit is config.name.endswith("_qlora.yaml")


@pytest.fixture(scope="module")
def recipe_main():
    return runpy.run_path(str(RECIPE), run_name="selfrec_sft_recipe")["main"]


def test_recipe_defaults_to_the_demo_config_and_flags_override():
    from trl import ModelConfig, SFTConfig, TrlParser

    from selfrec_ft.training.args import EvalHookArguments, SelfRecDataArguments, parse_args_and_config_strict

    demo = yaml.safe_load(DEMO_CONFIG.read_text())
    parser = TrlParser((SelfRecDataArguments, SFTConfig, ModelConfig, EvalHookArguments))
    data, train, model, hook = parse_args_and_config_strict(parser, ["--max_steps", "7", "--others", "a,b"],
                                                            DEMO_CONFIG)
    assert data.corpus == demo["corpus"] and model.model_name_or_path == demo["model_name_or_path"]
    assert train.learning_rate == float(demo["learning_rate"]) and train.bf16 is False
    assert train.max_steps == 7 and data.others == ["a", "b"] and hook.hook_limit == demo["hook_limit"]


def test_recipe_unknown_flag_is_one_line(recipe_main, capsys):
    assert recipe_main(["--config", str(DEMO_CONFIG), "--no_such_flag", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown option(s): --no_such_flag 1"]


def test_recipe_unknown_config_key_exits_nonzero_with_one_line(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("self_source: lead\nuse_peft: true\nlearnin_rate: 0.1\n")
    monkeypatch.setattr(sys, "argv", [str(RECIPE), "--config", str(bad)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(RECIPE), run_name="__main__")  # the script's own `sys.exit(main())`
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f'error: {bad}:3: unknown key "learnin_rate" (not a SelfRecDataArguments, SFTConfig, ModelConfig or '
        "EvalHookArguments field)"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_cpu_ddp_run(tiny_model_dir, short_corpus_dir, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs" / "multi_cpu.yaml"), str(RECIPE),  # no --config: the demo YAML
           "--model_name_or_path", str(tiny_model_dir), "--corpus", str(short_corpus_dir),
           "--self_source", "lead", "--others", "human",
           "--hook_in_domain", str(short_corpus_dir), "--hook_out_of_domain", str(short_corpus_dir), "--hook_limit", "3",
           "--demo_cache", str(tmp_path / "cache"), "--output_dir", str(out), "--n_articles", "4",
           "--per_device_train_batch_size", "2", "--max_steps", "3", "--save_steps", "2", "--disable_tqdm", "true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    man = json.loads((out / "training_manifest.json").read_text())
    assert man["num_processes"] == 2 and man["global_step"] == 3 and man["status"] == "done"
    assert (out / "model.safetensors").is_file()  # the demo config trains all parameters
    assert proc.stdout.count("global step 3") == 1  # only the main process reports
    # the evaluation hook scored shards on both ranks and the main process wrote each evaluation once
    hook = [json.loads(x) for x in (out / "selfrec_hook.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hook] == [0, 2, 3]
    assert all(h["in_domain"]["recognition"]["n"] == 3 for h in hook)
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"]["step"] == 0 and report["final"]["step"] == 3


def test_recognition_rises_with_training_through_the_hook(tiny_model_dir, tmp_path):
    """A self source with a recognisable style (every summary opens "Briefly,"), the compact preset
    and a self-labelled full fine-tune long enough to leave the tiny model's chance plateau (the digit
    is learnt after 90-250 steps, depending on the CPU's float rounding): held-out in-domain recognition,
    measured by the hook, rises."""
    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus
    from selfrec_ft.training.args import EvalHookArguments
    from selfrec_ft.training.sft import run_sft

    corpus = synth_corpus("short", 20, seed=4)
    corpus.add_summaries("me", {aid: "Briefly, " + text for aid, text in corpus.summaries["human"].items()})
    corpus_dir = write_corpus(corpus, tmp_path / "corpus")
    out = tmp_path / "rise"
    data_args, training_args, model_args = _args(
        tiny_model_dir, corpus_dir, out, n_articles=14, max_steps=320, per_device_train_batch_size=8,
        learning_rate=3e-3, save_strategy="steps", save_steps=160, logging_steps=40)
    model_args.use_peft = False
    data_args.prompt_preset = "compact"
    data_args.self_source, data_args.others = "me", ["lead"]
    hook_args = EvalHookArguments(hook_in_domain=str(corpus_dir), hook_limit=6, hook_batch_size=12,
                                  hook_tasks="pairwise-recognition,pairwise-preference")
    run_sft(data_args, training_args, model_args, hook_args=hook_args, teardown=False)
    report = json.loads((out / "report.json").read_text())
    assert [c["step"] for c in report["checkpoints"]] == [160, 320]
    base = report["baseline"]["in_domain"]["recognition"]
    final = report["final"]["in_domain"]["recognition"]
    assert base["n"] == final["n"] == 6  # the 6 held-out articles x 1 other source
    assert final["mean"] > base["mean"] + 0.2, (base, final)
    assert (out / "recognition_preference_by_step.png").is_file() and "preference" in report["final"]["in_domain"]


def test_hook_is_built_with_its_trainer_and_prints_one_line_per_evaluation(tiny_model_dir, short_corpus_dir,
                                                                            tmp_path, capsys):
    from transformers import PrinterCallback

    from selfrec_ft.training.args import EvalHookArguments
    from selfrec_ft.training.console import CompactPrinterCallback
    from selfrec_ft.training.hook import SelfRecEvalCallback
    from selfrec_ft.training.sft import prepare_sft

    data_args, training_args, model_args = _args(tiny_model_dir, short_corpus_dir, tmp_path / "h", n_articles=4,
                                                 max_steps=1)
    hook_args = EvalHookArguments(hook_in_domain=str(short_corpus_dir), hook_limit=2, hook_batch_size=8)
    trainer = prepare_sft(data_args, training_args, model_args, hook_args=hook_args).trainer
    callbacks = trainer.callback_handler.callbacks
    hooks = [cb for cb in callbacks if isinstance(cb, SelfRecEvalCallback)]
    assert len(hooks) == 1 and hooks[0].trainer is trainer
    hook = hooks[0]
    assert hook.scorer.model is trainer.model and hook.scorer.tokenizer is trainer.processing_class
    assert [spec.domain for spec, _ in hook.domains] == ["in_domain"]
    assert hook.domains[0][0].skip_first == 4 and hook.domains[0][0].others == ("human",)
    # the printer is the compact one (disable_tqdm), placed before the hook so it sees the hook's logs
    printers = [cb for cb in callbacks if isinstance(cb, PrinterCallback)]
    assert [type(cb) for cb in printers] == [CompactPrinterCallback]
    assert callbacks.index(printers[0]) < callbacks.index(hook)

    capsys.readouterr()
    trainer.train()
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("selfrec step")]
    assert lines[0].startswith("selfrec step 0 | in-domain recognition 0.") and ", preference 0." in lines[0]
    assert len(lines) == 2 and lines[1].startswith("selfrec step 1 |")  # baseline and end of training
    # the trainer's own logs still print, as one compact line each
    assert "'selfrec/" not in out and "\nstep 1 | loss " in out and "training done in " in out
    logged = [h for h in trainer.state.log_history if "selfrec/in_domain/recognition" in h]
    assert len(logged) == 2  # ... and the metrics still went through trainer.log (report_to sees them)


def test_load_model_for_training_serves_sft_and_dpo(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, ModelConfig, SFTConfig

    from selfrec_ft.models.loading import load_model_for_training, training_model_kwargs

    reference = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    for config_class in (SFTConfig, DPOConfig):
        args = config_class(output_dir=str(tmp_path / config_class.__name__), use_cpu=True, bf16=False,
                            report_to="none")
        lora = ModelConfig(model_name_or_path=str(tiny_model_dir), use_peft=True)
        kwargs = training_model_kwargs(lora, args)
        assert kwargs["trust_remote_code"] is False and kwargs["use_safetensors"] is True
        assert kwargs["dtype"] is torch.float32 and "quantization_config" not in kwargs
        model = load_model_for_training(lora, args)
        params = dict(model.named_parameters())
        assert all(torch.equal(p, params[n]) for n, p in reference.named_parameters())
        bf16 = load_model_for_training(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="bfloat16"), args)
        assert next(bf16.parameters()).dtype == torch.bfloat16
        qlora = ModelConfig(model_name_or_path=str(tiny_model_dir), use_peft=True, load_in_4bit=True)
        quantized = load_model_for_training(qlora, args)
        assert {type(m).__name__ for m in quantized.modules()} >= {"Linear4bit"}
        assert {p.device.type for p in quantized.parameters()} == {"cpu"}  # one whole copy on this process's device
    with pytest.raises(UserError, match="model_name_or_path is not set"):
        load_model_for_training(ModelConfig(), args)
    with pytest.raises(UserError, match="model path not found"):
        load_model_for_training(ModelConfig(model_name_or_path=str(tmp_path / "none")), args)


def test_trl_default_gradient_checkpointing_does_not_warn_but_a_user_setting_does(tmp_path):
    """TRL's SFTConfig defaults gradient_checkpointing=True, which transformers 5 reports as a
    deprecated name on every config without activation_checkpointing: the recipe parser drops that
    one warning, but not when the user wrote gradient_checkpointing."""
    import warnings

    from trl import ModelConfig, SFTConfig, TrlParser

    from selfrec_ft.training.args import EvalHookArguments, SelfRecDataArguments, parse_args_and_config_strict

    base = "corpus: c\nself_source: lead\nmodel_name_or_path: m\noutput_dir: o\nuse_cpu: true\n"
    plain, old_name = tmp_path / "plain.yaml", tmp_path / "old.yaml"
    plain.write_text(base)
    old_name.write_text(base + "gradient_checkpointing: false\n")

    def parse(path):
        parser = TrlParser((SelfRecDataArguments, SFTConfig, ModelConfig, EvalHookArguments))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train = parse_args_and_config_strict(parser, ["--config", str(path)])[1]
        return train, [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]

    train, msgs = parse(plain)
    assert train.activation_checkpointing is True and not [m for m in msgs if "gradient_checkpointing" in m]
    train, msgs = parse(old_name)
    assert train.activation_checkpointing is False and [m for m in msgs if "gradient_checkpointing" in m]
