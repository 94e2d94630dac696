"""bf16, the precision GPU users score and train in, run on CPU: ``selfrec eval --dtype bfloat16``
within the documented tolerance of float32 (docs/ARCHITECTURE.md, "bf16"), the engine's shared-prefix
path equal to its plain path in bf16, SFT's shared-prefix rows (packed attention and the 4-D mask)
giving the loss and gradients of one example per row under ``bf16: true`` over bf16 weights, and an
attribute-DPO run with ``bf16: true`` (kept on CPU over bf16 weights: the manifest says so).
The main job through ``accelerate launch`` in bf16 is in tests/test_chat_templates.py."""

from __future__ import annotations

import json

import pytest
import torch

BF16_PROB_TOL = 0.02  # |Δp| of an option probability, bf16 vs float32 (ARCHITECTURE.md: measured <= 0.008)


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny random model with the output rows of the answer tokens (``1``, ``2``, ``Yes``, ``No``)
    scaled by 40: option probabilities around 0.5 instead of ~1e-3 (a flat distribution would hide any
    bf16 error), not saturated at 0 or 1 either."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfrec_ft.prompts.templates import load_preset, render_prompt

    out = tmp_path_factory.mktemp("sharp") / "model"
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    preset = load_preset("panickssery2024")
    answers = set()
    for task in ("pairwise-recognition", "individual-recognition"):
        tmpl = preset.task(task)
        answers |= set(render_prompt(tok, tmpl, None, **{f: "x" for f in tmpl.fields}).option_ids.values())
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        for i in answers:
            model.lm_head.weight[i] *= 40.0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_in_bfloat16_stays_within_the_documented_tolerance(sharp_model_dir, short_corpus_dir, tmp_path):
    from selfrec_ft.cli import main

    outs = {}
    for dtype in ("float32", "bfloat16"):
        outs[dtype] = tmp_path / dtype
        rc = main(["eval", "--model", str(sharp_model_dir), "--corpus", str(short_corpus_dir), "--self-source",
                   "lead", "--skip-first", "8", "--limit", "3", "--tasks",
                   "pairwise-recognition,individual-recognition", "--dtype", dtype, "--n-resamples", "50",
                   "--out", str(outs[dtype])])
        assert rc == 0
    report = json.loads((outs["bfloat16"] / "report.json").read_text())
    assert report["meta"]["eval"]["dtype"] == "bfloat16"
    r32, r16 = _rows(outs["float32"] / "examples.jsonl"), _rows(outs["bfloat16"] / "examples.jsonl")
    assert len(r32) == len(r16) == 3 * (2 + 2)
    diffs, top = [], 0.0
    for a, b in zip(r32, r16):
        assert (a["task"], a["article_id"], a.get("order")) == (b["task"], b["article_id"], b.get("order"))
        for option, p in a["probs"].items():
            diffs.append(abs(p - b["probs"][option]))
            top = max(top, p)
    assert top > 0.2  # not a flat distribution
    assert 0 < max(diffs) <= BF16_PROB_TOL, max(diffs)  # bf16 really ran, and stayed close


def test_engine_shared_prefix_path_equals_plain_path_in_bfloat16(sharp_model_dir, short_corpus_dir):
    from selfrec_ft.models.loading import load_model
    from selfrec_ft.scoring.engine import score_requests, supports_prefix_cache
    from selfrec_ft.scoring.scorer import Scorer
    from selfrec_ft.scoring.spec import EvalSpec

    model, tok = load_model(sharp_model_dir, dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16 and supports_prefix_cache(model)
    spec = EvalSpec(corpus=str(short_corpus_dir), self_source="lead", tasks=("pairwise-recognition",),
                    skip_first=8, limit=2)
    requests = [it.request for it in Scorer(model, tok).items(spec)]
    assert len({r.group for r in requests}) < len(requests)  # prompts share prefixes
    shared = score_requests(model, requests, batch_size=4, prefix_reuse=True, progress=False)
    plain = score_requests(model, requests, batch_size=4, prefix_reuse=False, progress=False)
    m32, _ = load_model(sharp_model_dir, dtype="float32", device="cpu")
    ref = score_requests(m32, requests, batch_size=4, prefix_reuse=False, progress=False)
    for s, p, r in zip(shared, plain, ref):
        for option in r.probs:
            assert abs(s.probs[option] - p.probs[option]) <= BF16_PROB_TOL
            assert abs(s.probs[option] - r.probs[option]) <= BF16_PROB_TOL


def _sft_setup(model_dir, corpus, out, share):
    from trl import ModelConfig, SFTConfig

    from selfrec_ft.training.args import SelfRecDataArguments
    from selfrec_ft.training.sft import prepare_sft

    data_args = SelfRecDataArguments(corpus=str(corpus), self_source="lead", n_articles=2, share_prefix=share)
    training_args = SFTConfig(output_dir=str(out), use_cpu=True, bf16=True, max_length=2048, report_to="none",
                              per_device_train_batch_size=8, save_strategy="no", disable_tqdm=True, seed=0)
    model_args = ModelConfig(model_name_or_path=str(model_dir), dtype="bfloat16", attn_implementation="sdpa")
    return prepare_sft(data_args, training_args, model_args)


def _loss_and_grads(trainer, inputs):
    model = trainer.model
    model.zero_grad(set_to_none=True)
    with trainer.compute_loss_context_manager():  # the trainer's autocast (bf16 on CPU)
        loss = trainer.compute_loss(model, inputs)
    loss.backward()
    return loss.detach().float(), {n: p.grad.detach().float() for n, p in model.named_parameters()
                                   if p.grad is not None}


@pytest.mark.parametrize("path", ["packed", "mask"])
def test_shared_prefix_rows_train_in_bf16_like_separate_rows(tiny_model_dir, short_corpus_dir, tmp_path, path):
    """``bf16: true`` over bfloat16 weights on CPU: the trainer keeps bf16 (autocast), and the shared
    rows (packed attention, or the model's own attention with the 4-D mask) give the loss and gradients
    of the examples one per row, to bf16 precision."""
    from selfrec_ft.scoring.packed_attention import base_model
    from selfrec_ft.training.shared_prefix import SharedPrefixCollator

    shared = _sft_setup(tiny_model_dir, short_corpus_dir, tmp_path / "shared", True)
    plain = _sft_setup(tiny_model_dir, short_corpus_dir, tmp_path / "plain", False)
    trainer = shared.trainer
    assert trainer.args.bf16 and shared.precision_note is None  # kept, not switched off
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
    assert trainer.attention_path == "packed"
    if path == "mask":
        trainer.attention_path = "mask"
        base_model(trainer.model).set_attn_implementation("sdpa")
    packed, rows = trainer.train_dataset, plain.trainer.train_dataset
    s_feats = [{k: packed[i][k] for k in ("input_ids", "labels", "position_ids")} for i in range(len(packed))]
    p_feats = [{k: rows[i][k] for k in ("input_ids", "labels")} for i in range(len(rows))]
    assert len(s_feats) == 2 and len(p_feats) == 4
    batch = SharedPrefixCollator(0, four_d_mask=path == "mask")(s_feats)
    assert batch["attention_mask"].dim() == (4 if path == "mask" else 2)
    s_loss, s_grads = _loss_and_grads(trainer, batch)
    p_loss, p_grads = _loss_and_grads(plain.trainer, plain.trainer.data_collator(p_feats))
    assert torch.isfinite(s_loss) and abs(s_loss - p_loss) <= 2e-2 * abs(p_loss), (s_loss, p_loss)
    assert s_grads.keys() == p_grads.keys() and len(s_grads) > 10
    worst = max((s_grads[n] - p_grads[n]).abs().max().item() for n in s_grads)
    scale = max(p_grads[n].abs().max().item() for n in p_grads)
    assert 0 < scale and worst <= 5e-2 * scale, (worst, scale)


def test_attribute_dpo_runs_in_bf16(tiny_model_dir, short_corpus_dir, tmp_path):
    from trl import DPOConfig, ModelConfig

    from selfrec_ft.training.args import AttributeDPOArguments
    from selfrec_ft.training.dpo import run_attribute_dpo

    out = tmp_path / "run"
    dpo_args = AttributeDPOArguments(corpus=str(short_corpus_dir), self_source="lead", n_articles=4,
                                     num_candidates=8, max_new_tokens=10, eval_limit=2, bootstrap_resamples=100,
                                     generation_batch_size=32, drop_truncated=False)
    training_args = DPOConfig(output_dir=str(out), use_cpu=True, bf16=True, activation_checkpointing=False,
                              max_length=1024, per_device_train_batch_size=4, learning_rate=5e-2, max_steps=1,
                              beta=0.1, logging_steps=1, save_strategy="no", report_to="none", seed=0,
                              disable_tqdm=True, dataloader_num_workers=0)
    model_args = ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="bfloat16", use_peft=True, lora_r=4,
                             lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"])
    result = run_attribute_dpo(dpo_args, training_args, model_args, teardown=False)
    assert result.trained_now
    manifest = json.loads((out / "training_manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["global_step"] == 1
    assert manifest["precision"]["bf16"] is True and manifest["precision"]["dtype"] == "bfloat16"
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(x)) for x in losses)
    shift = json.loads((out / "shift.json").read_text())
    assert shift["attribute_before"]["n"] == shift["attribute_after"]["n"] == 2


def test_cpu_keeps_bf16_only_over_bfloat16_weights(tmp_path):
    from trl import SFTConfig

    from selfrec_ft.training.lifecycle import cpu_precision

    over_fp32 = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True, report_to="none")
    assert "turned off" in cpu_precision(over_fp32, "float32")  # TRL's default bf16 on a float32 CPU run
    assert over_fp32.bf16 is False
    over_bf16 = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True, report_to="none")
    assert cpu_precision(over_bf16, "bfloat16") is None and over_bf16.bf16 is True
    fp16 = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, fp16=True, report_to="none")
    assert "turned off" in cpu_precision(fp16, "bfloat16") and fp16.fp16 is False


def test_bf16_scores_counts_argmax_flips():
    """benchmarks/bf16_scores.py's compare: |Δp| and the rows whose most likely option differs."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bf16_scores.py"
    spec = importlib.util.spec_from_file_location("bf16_scores", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def row(i, yes, no):
        return {"task": "individual-recognition", "article_id": str(i), "target_source": "a", "self_source": "a",
                "probs": {"Yes": yes, "No": no}}

    a = [row(0, 0.6, 0.3), row(1, 0.2, 0.7), row(2, 0.5, 0.1)]
    b = [row(0, 0.4, 0.45), row(1, 0.25, 0.7), row(2, 0.5, 0.1)]
    out = mod.compare(a, b)
    assert out["rows"] == 3 and out["argmax_flips"] == 1  # row 0: Yes -> No
    assert out["max_abs_diff_prob"] == pytest.approx(0.2)
    assert out["pair_choice_flips"] == {}
