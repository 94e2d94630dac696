"""Attribute DPO (selfrec_ft.training.dpo, .shift, recipes/attribute_dpo.py) on the tiny model: TRL
wiring without a reference copy, LoRA weights that move, the reference being the adapter-free base,
an SFT adapter as the starting point, the shift statistics, and a minimal end-to-end run."""

from __future__ import annotations

import gc
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from selfrec_ft.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _configs(model_dir, out, **training):
    from trl import DPOConfig, ModelConfig

    cfg = dict(output_dir=str(out), use_cpu=True, bf16=False, activation_checkpointing=False, max_length=1024,
               per_device_train_batch_size=2, learning_rate=5e-2, lr_scheduler_type="constant", max_steps=2,
               beta=0.1, logging_steps=1, save_strategy="no", report_to="none", seed=0, disable_tqdm=True,
               dataloader_num_workers=0)
    cfg.update(training)
    return DPOConfig(**cfg), ModelConfig(model_name_or_path=str(model_dir), use_peft=True, lora_r=4, lora_alpha=8,
                                         lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"])


def _pairs(tokenizer, corpus_dir, n=4):
    """A DPO selection on the corpus's first n articles: candidates of clearly different length."""
    from selfrec_ft.attributes.dpo_pairs import select_dpo_pairs
    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.training.dpo_generation import generation_messages

    corpus = load_corpus(corpus_dir)
    ids = [a.id for a in corpus.articles[:n]]
    candidates = {a: ["Officials said it rained.",
                      "Officials said it rained all day across the region, and the council met to plan repairs "
                      "for the roads, the bridge and the old market before the weekend."] for a in ids}
    messages = generation_messages(tokenizer, corpus, ids, "short", "panickssery2024", None, 40)
    return select_dpo_pairs(candidates, "lengthy", "inject", messages, progress=False), messages


def _new_models(before_ids):
    """Models created since ``before_ids`` was taken, counting a model's own sub-models (LlamaModel
    inside LlamaForCausalLM) as part of it."""
    from transformers import PreTrainedModel

    gc.collect()
    found = [o for o in gc.get_objects() if isinstance(o, PreTrainedModel) and id(o) not in before_ids]
    inner = {id(s) for o in found for s in o.modules() if s is not o}
    return [o for o in found if id(o) not in inner]


class _Snapshot:
    def __new__(cls):
        from transformers import TrainerCallback

        class Snapshot(TrainerCallback):
            def __init__(self):
                self.before, self.after, self.frozen = {}, {}, {}

            def on_train_begin(self, args, state, control, model=None, **kw):
                for n, p in model.named_parameters():
                    (self.before if p.requires_grad else self.frozen)[n] = p.detach().clone()

            def on_train_end(self, args, state, control, model=None, **kw):
                params = dict(model.named_parameters())
                self.after = {n: params[n].detach().clone() for n in list(self.before) + list(self.frozen)}

        return Snapshot()


def test_trainer_has_no_reference_copy_and_trains_lora(tiny_model_dir, short_corpus_dir, tmp_path):
    from transformers import AutoModelForCausalLM, PreTrainedModel

    from selfrec_ft.training.dpo_model import build_dpo_trainer, check_dpo_sequences, load_policy

    gc.collect()
    existing = {id(o) for o in gc.get_objects() if isinstance(o, PreTrainedModel)}
    training_args, model_args = _configs(tiny_model_dir, tmp_path / "o")
    model, tok, mode = load_policy(model_args, training_args)
    selection, messages = _pairs(tok, short_corpus_dir)
    # TRL's conversational preference columns, one pair per article, chosen = the longer candidate
    assert {"prompt", "chosen", "rejected"} <= set(selection.dataset.column_names)
    row = selection.dataset[0]
    assert row["prompt"] == messages[row["article_id"]]
    assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    assert len(row["chosen"][0]["content"]) > len(row["rejected"][0]["content"])

    snap = _Snapshot()
    trainer = build_dpo_trainer(model, tok, selection.dataset, training_args, model_args, [snap])
    assert mode == "lora" and trainer.ref_model is None
    new = _new_models(existing)
    assert len(new) == 1  # the policy is the only model in memory: no reference copy was loaded
    prepared = trainer.train_dataset
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(prepared.column_names)
    facts = check_dpo_sequences(prepared, training_args.max_length, {tok.eos_token_id})
    assert facts.ends_with_eos == 1.0  # the chat template closes every completion with EOS: the length signal
    assert all(c > r for c, r in zip(facts.chosen_tokens, facts.rejected_tokens))
    with pytest.raises(UserError, match="longer than max_length"):
        check_dpo_sequences(prepared, min(facts.lengths) - 1, {tok.eos_token_id})

    trainer.train()
    assert snap.before and all("lora_" in n for n in snap.before)
    assert any(not torch.equal(snap.before[n], snap.after[n]) for n in snap.before if "lora_B" in n)
    assert all(torch.equal(snap.frozen[n], snap.after[n]) for n in snap.frozen)

    # the reference log-probs TRL uses are those of the untouched base model, computed independently
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    n_base = sum(p.numel() for p in base.parameters())
    assert sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" not in n) == n_base
    batch = trainer.data_collator([prepared[i] for i in range(2)])
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    with torch.no_grad():
        logp = torch.log_softmax(base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    ids, mask = batch["input_ids"], batch["completion_mask"]
    expected = [sum(logp[i, t - 1, ids[i, t]].item() for t in range(1, ids.shape[1]) if mask[i, t])
                for i in range(ids.shape[0])]
    got = torch.cat([ref_chosen, ref_rejected]).tolist()
    assert got == pytest.approx(expected, abs=1e-3)
    # ... while the trained policy (adapter on) gives other numbers
    trainer.model.eval()
    with torch.no_grad():
        tuned = trainer.model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(tuned, base(input_ids=ids, attention_mask=batch["attention_mask"]).logits)
    del trainer, model, base


def test_sft_adapter_is_trained_further_against_a_frozen_copy(tiny_model_dir, short_corpus_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, PreTrainedModel

    from selfrec_ft.training.dpo_model import build_dpo_trainer, load_policy

    sft = tmp_path / "sft"
    torch.manual_seed(0)
    m = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                       LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False))
    m.save_pretrained(sft)
    (sft / "adapter_config.json").write_text(json.dumps(
        {**json.loads((sft / "adapter_config.json").read_text()), "base_model_name_or_path": str(tiny_model_dir)}))
    del m
    gc.collect()
    existing = {id(o) for o in gc.get_objects() if isinstance(o, PreTrainedModel)}

    training_args, model_args = _configs("", tmp_path / "o")
    model_args.model_name_or_path = None  # taken from the adapter
    model, tok, mode = load_policy(model_args, training_args, sft_adapter=str(sft))
    assert model_args.model_name_or_path == str(Path(tiny_model_dir).resolve())
    selection, _ = _pairs(tok, short_corpus_dir, n=2)
    trainer = build_dpo_trainer(model, tok, selection.dataset, training_args, model_args)
    assert trainer.ref_model is None and len(_new_models(existing)) == 1
    params = dict(trainer.model.named_parameters())
    trained = [n for n in params if ".default." in n]
    assert trained and all(params[n].requires_grad for n in trained)
    # TRL's reference is a frozen "ref" copy of the SFT adapter
    for n in trained:
        ref = params[n.replace(".default.", ".ref.")]
        assert not ref.requires_grad and torch.equal(ref, params[n])
    del trainer, model


def test_attribute_shift_against_plain_computation():
    from selfrec_ft.training.shift import attribute_shift, relative_change

    rng = np.random.default_rng(1)
    ids = [f"a{i}" for i in range(30)]
    before = {a: float(x) for a, x in zip(ids, rng.integers(8, 20, size=30))}
    after = {a: before[a] * 1.5 + float(rng.integers(0, 4)) for a in ids}
    after["extra"] = 1000.0  # an article only measured after is left out
    s = attribute_shift(before, after, n_resamples=500, seed=0)
    mb = statistics.fmean(before.values())
    ma = statistics.fmean(after[a] for a in ids)
    assert s["n_articles"] == 30
    assert s["before"]["mean"] == pytest.approx(mb) and s["after"]["mean"] == pytest.approx(ma)
    assert s["difference"]["mean"] == pytest.approx(statistics.fmean(after[a] - before[a] for a in ids))
    assert s["relative_change"] == pytest.approx((ma - mb) / mb)
    lo, hi = s["relative_change_ci95"]
    assert 0 < lo < s["relative_change"] < hi  # a clear increase: the interval excludes zero
    assert s["difference"]["ci95"][0] > 0
    assert relative_change(0.0, 3.0) is None and relative_change(None, 1.0) is None
    flat = attribute_shift({"a": 2.0, "b": 2.0}, {"a": 3.0, "b": 3.0}, n_resamples=200)
    assert flat["relative_change"] == 0.5 and flat["relative_change_ci95"] == [0.5, 0.5]


def test_judgement_shift_pairs_before_and_after():
    from selfrec_ft.training.shift import judgement_shift

    def rows(self_source, pref_self, others):
        out = []
        for other in others:
            p = pref_self[other]
            for art in ("x", "y"):
                for order, self_opt in (("forward", "1"), ("backward", "2")):
                    probs = {self_opt: p, ("2" if self_opt == "1" else "1"): 1 - p}
                    for task in ("pairwise-recognition", "pairwise-preference"):
                        out.append({"task": task, "article_id": art, "self_source": self_source, "other_source": other,
                                    "order": order, "self_option": self_opt, "probs": probs, "option_mass": 1.0})
        return out

    b = rows("self-before-dpo", {"human": 0.6, "lead": 0.4}, ["human", "lead"])
    a = rows("self-after-dpo", {"human": 0.8, "lead": 0.5, "self-before-dpo": 0.7},
             ["human", "lead", "self-before-dpo"])
    s = judgement_shift(b, a, ["human", "lead"], "self-before-dpo", n_resamples=200)
    pref = s["preference"]
    assert pref["before"]["mean"] == pytest.approx(0.5) and pref["after"]["mean"] == pytest.approx(0.65)
    assert pref["before"]["n"] == pref["after"]["n"] == 4  # the pre-DPO self is not pooled with the others
    assert pref["change"]["mean"] == pytest.approx(((0.8 - 0.6) + (0.5 - 0.4)) / 2)
    assert pref["by_source"]["lead"]["after"]["mean"] == pytest.approx(0.5)
    assert pref["vs_self_before_dpo"]["mean"] == pytest.approx(0.7)


def test_bad_arguments_are_one_line_errors(tmp_path):
    import runpy

    from selfrec_ft.training.dpo import resolve_attribute

    with pytest.raises(UserError, match="needs a judge"):
        resolve_attribute("friendly")
    assert resolve_attribute("28").name == "lengthy"
    bad = tmp_path / "bad.yaml"
    bad.write_text("attribute: lengthy\nlearnin_rate: 1.0\n")
    main = runpy.run_path(str(REPO / "recipes" / "attribute_dpo.py"))["main"]
    assert main(["--config", str(bad)]) == 2
    assert main(["--direction", "sideways"]) == 2


def test_demo_config_parses():
    from trl import DPOConfig, ModelConfig, TrlParser

    from selfrec_ft.training.args import AttributeDPOArguments, EvalHookArguments, parse_args_and_config_strict

    parser = TrlParser((AttributeDPOArguments, DPOConfig, ModelConfig, EvalHookArguments))
    dpo, training, model, _ = parse_args_and_config_strict(
        parser, ["--direction", "remove", "--output_dir", "/tmp/x"], REPO / "recipes" / "demo" / "attribute_dpo.yaml")
    assert dpo.attribute == "lengthy" and dpo.direction == "remove" and training.output_dir == "/tmp/x"
    assert model.use_peft and training.bf16 is False and dpo.corpus.startswith("demo://")


def test_minimal_run_writes_the_shift(tiny_model_dir, short_corpus_dir, tmp_path):
    from transformers import AutoTokenizer

    from selfrec_ft.attributes.measures import word_count
    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus
    from selfrec_ft.jsonl import read_jsonl_rows
    from selfrec_ft.training.args import AttributeDPOArguments, EvalHookArguments
    from selfrec_ft.training.dpo import run_attribute_dpo
    from selfrec_ft.training.hook import read_hook_records

    ood = write_corpus(synth_corpus("highlights", 3, seed=5), tmp_path / "hl")
    out = tmp_path / "run"
    # `lead` plays the corpus's own summaries of the evaluator: left out of the others, scored by the hook
    dpo_args = dict(corpus=str(short_corpus_dir), out_of_domain=str(ood), self_source="lead", n_articles=5,
                    num_candidates=8, max_new_tokens=10, eval_limit=3, bootstrap_resamples=200,
                    generation_batch_size=32)
    # the random tiny model never ends a summary: every candidate runs into max_new_tokens and is dropped
    with pytest.raises(UserError, match="no usable DPO pair") as err:
        run_attribute_dpo(AttributeDPOArguments(**dpo_args), *_configs(tiny_model_dir, out), teardown=False)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    cands = read_jsonl_rows(out / "candidates" / "candidates.jsonl")
    cut = sum(len(tok(r["summary"], add_special_tokens=False)["input_ids"]) >= 10 for r in cands)
    assert len(cands) == 5 * 8 and cut > 0
    assert json.loads((out / "matching.json").read_text())["candidates"]["truncated_dropped"] == cut
    assert f"; {cut} of the sampled candidates reached max_new_tokens 10 and were dropped" in str(err.value)

    dpo_args["drop_truncated"] = False  # same candidates (reused), all kept
    training_args, model_args = _configs(tiny_model_dir, out, max_steps=1, per_device_train_batch_size=4)
    hook_args = EvalHookArguments(hook_in_domain=str(short_corpus_dir), hook_limit=2)
    result = run_attribute_dpo(AttributeDPOArguments(**dpo_args), training_args, model_args, hook_args,
                               teardown=False)
    assert [r["step"] for r in read_hook_records(out)] == [0, 1]
    shift = json.loads((out / "shift.json").read_text())
    assert shift == json.loads(json.dumps(result.shift))
    assert {"attribute", "direction", "attribute_before", "attribute_after", "relative_change", "preference",
            "recognition", "attribute_by_domain"} <= set(shift)
    for key in ("attribute_before", "attribute_after"):
        assert set(shift[key]) == {"mean", "ci95", "n"} and shift[key]["n"] == 3
    for m in ("preference", "recognition"):
        for d in ("in_domain", "out_of_domain"):
            assert {"before", "after", "change", "vs_self_before_dpo"} <= set(shift[m][d])
            assert shift[m][d]["before"]["n"] == 3  # 3 articles x the other source human
    assert shift["attribute"] == "lengthy" and shift["direction"] == "inject"

    # the attribute numbers, recomputed from the summaries the run wrote
    rows = read_jsonl_rows(out / "summaries" / "in_domain.jsonl")
    fails = read_jsonl_rows(out / "summaries" / "in_domain.failures.jsonl")
    words = {}
    for src in ("self-before-dpo", "self-after-dpo"):
        got = {r["id"]: word_count(r["summary"]) for r in rows if r["source"] == src}
        got.update({r["id"]: 0.0 for r in fails if r["source"] == src and r["id"] not in got})
        words[src] = got
    assert len(words["self-before-dpo"]) == len(words["self-after-dpo"]) == 3
    mb, ma = (statistics.fmean(words[s].values()) for s in ("self-before-dpo", "self-after-dpo"))
    assert shift["attribute_before"]["mean"] == pytest.approx(mb)
    assert shift["attribute_after"]["mean"] == pytest.approx(ma)
    assert shift["relative_change"] == pytest.approx(ma / mb - 1)
    # after: judged against the others and against its own pre-DPO summaries
    after = read_jsonl_rows(out / "eval" / "after" / "in_domain" / "examples.jsonl")
    assert {r["other_source"] for r in after} == {"human", "self-before-dpo"}
    assert {r["self_source"] for r in after} == {"self-after-dpo"}
    matching = json.loads((out / "matching.json").read_text())
    assert matching["n_pairs"] == len(read_jsonl_rows(out / "pairs.jsonl")) > 0
    assert (out / "adapter_model.safetensors").is_file() and (out / "resolved_config.yaml").is_file()
    assert json.loads((out / "training_manifest.json").read_text())["status"] == "done"

    # a rerun reuses everything (no training, no generation) and reports the same shift
    again = run_attribute_dpo(AttributeDPOArguments(**dpo_args), *_configs(tiny_model_dir, out, max_steps=1,
                                                                            per_device_train_batch_size=4),
                              teardown=False)
    assert not again.trained_now
    assert again.shift["attribute_by_domain"] == result.shift["attribute_by_domain"]
    assert again.shift["preference"] == result.shift["preference"]
    # ... but refuses other training settings in the same directory
    with pytest.raises(UserError, match="other training settings"):
        run_attribute_dpo(AttributeDPOArguments(**dpo_args), *_configs(tiny_model_dir, out, max_steps=1,
                                                                        per_device_train_batch_size=4,
                                                                        learning_rate=1e-3), teardown=False)
