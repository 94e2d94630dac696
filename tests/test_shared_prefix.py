"""share_prefix: one row per article, same loss and gradients as the examples one per row."""

from __future__ import annotations

import json

import pytest
import torch

from selfrec_ft.training.shared_prefix import (
    IGNORE,
    SharedPrefixCollator,
    pack_rows,
    shared_prefix_mask,
    verify_packed_completion_mask,
)


def test_pack_rows_shares_the_common_prefix_and_splits_long_groups():
    a = [5, 6, 7, 8, 1, 9]
    b = [5, 6, 7, 2, 3, 1, 9]
    la = [IGNORE] * 4 + [1, 9]
    lb = [IGNORE] * 5 + [1, 9]
    (row,) = pack_rows([a, b], [la, lb], max_length=None)
    assert row["input_ids"] == [5, 6, 7] + [8, 1, 9] + [2, 3, 1, 9]
    assert row["labels"] == [IGNORE] * 3 + la[3:] + lb[3:]
    assert row["position_ids"] == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6]
    assert row["n_examples"] == 2
    # too long for one row: two rows, each with the prefix
    rows = pack_rows([a, b], [la, lb], max_length=7)
    assert [r["input_ids"] for r in rows] == [a, [5, 6, 7, 2, 3, 1, 9]]
    assert [r["n_examples"] for r in rows] == [1, 1]
    # the prefix stops a token before the first label, even if the sequences agree further
    c, lc = [5, 6, 1, 9], [IGNORE, IGNORE, 1, 9]
    d, ld = [5, 6, 1, 8], [IGNORE, IGNORE, 1, 8]
    (row,) = pack_rows([c, d], [lc, ld], max_length=None)
    assert row["position_ids"] == [0, 1, 2, 3, 1, 2, 3]
    assert row["input_ids"][:1] == [5]


def test_mask_lets_each_branch_see_the_prefix_and_itself_only():
    pos = [0, 1, 2, 3, 4, 3, 4, 5, 3]  # prefix 3, branches of 2, 3 and 1 tokens
    branch_of = [None, None, None, 0, 0, 1, 1, 1, 2]
    m = shared_prefix_mask([pos, [0, 1]], length=len(pos))
    assert m.shape == (2, 1, 9, 9)
    for q in range(9):
        for k in range(9):
            want = k <= q and (k < 3 or branch_of[k] == branch_of[q])
            assert bool(m[0, 0, q, k]) == want, (q, k)
    # a short (padded) row: causal over its tokens, padding queries see only key 0
    assert m[1, 0, :2, :2].tolist() == [[True, False], [True, True]]
    assert m[1, 0, 2:, 0].all() and not m[1, 0, 2:, 1:].any() and not m[1, 0, :2, 2:].any()


def test_packed_mask_check_rejects_labels_on_the_prefix():
    row = {"input_ids": [[5, 6, 8, 1, 2, 1]], "labels": [[5, IGNORE, IGNORE, 1, IGNORE, 1]],
           "position_ids": [[0, 1, 2, 3, 2, 3]]}
    with pytest.raises(RuntimeError, match="prefix"):
        verify_packed_completion_mask(row, [[1], [1]])
    row["labels"] = [[IGNORE, IGNORE, IGNORE, 1, IGNORE, 1]]
    verify_packed_completion_mask(row, [[1], [1]])
    with pytest.raises(RuntimeError, match="differ"):
        verify_packed_completion_mask(row, [[1], [2]])


@pytest.fixture(scope="module")
def multi_source_corpus(tmp_path_factory):
    """A synthetic corpus with three extra "other" sources, so one article has 8 training examples."""
    from selfrec_ft.data.corpus import Corpus, write_corpus
    from selfrec_ft.data.synth import synth_corpus

    c = synth_corpus("short", 6, seed=5)
    human = c.summaries["human"]
    extra = {
        "upper": {k: v.upper() for k, v in human.items()},
        "reversed": {k: " ".join(reversed(v.split())) for k, v in human.items()},
        "short": {k: " ".join(v.split()[:5]) + "." for k, v in human.items()},
    }
    return write_corpus(Corpus(articles=c.articles, summaries={**c.summaries, **extra}),
                        tmp_path_factory.mktemp("multi") / "corpus")


def _setup(model_dir, corpus, out, share, attn="sdpa", **training):
    from trl import ModelConfig, SFTConfig

    from selfrec_ft.training.args import SelfRecDataArguments
    from selfrec_ft.training.sft import prepare_sft

    data_args = SelfRecDataArguments(corpus=str(corpus), self_source="lead", n_articles=3, share_prefix=share)
    training_args = SFTConfig(output_dir=str(out), use_cpu=True, bf16=False, max_length=2048, report_to="none",
                              per_device_train_batch_size=training.pop("batch", 8), save_strategy="no",
                              disable_tqdm=True, seed=0, **{"activation_checkpointing": False, **training})
    model_args = ModelConfig(model_name_or_path=str(model_dir), dtype="float32", attn_implementation=attn)
    return prepare_sft(data_args, training_args, model_args)


def _loss_and_grads(trainer, inputs):
    model = trainer.model
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_rows_give_the_loss_and_gradients_of_separate_rows(tiny_model_dir, multi_source_corpus, tmp_path,
                                                                  attn):
    shared = _setup(tiny_model_dir, multi_source_corpus, tmp_path / "shared", True, attn)
    plain = _setup(tiny_model_dir, multi_source_corpus, tmp_path / "plain", False, attn)
    packed, rows = shared.trainer.train_dataset, plain.trainer.train_dataset
    assert len(packed) == 3 and sum(packed["n_examples"]) == len(rows) == 3 * 2 * 4
    assert shared.shared_prefix["tokens"] < 0.6 * shared.shared_prefix["tokens_unshared"]
    assert shared.shared_prefix["tokens_unshared"] == sum(len(r) for r in rows["input_ids"])

    for art in packed["article_id"][:2]:
        s_feats = [{k: packed[i][k] for k in ("input_ids", "labels", "position_ids")}
                   for i in range(len(packed)) if packed[i]["article_id"] == art]
        p_feats = [{k: rows[i][k] for k in ("input_ids", "labels")}
                   for i in range(len(rows)) if rows[i]["article_id"] == art]
        assert len(p_feats) == 8
        s_loss, s_grads = _loss_and_grads(shared.trainer, SharedPrefixCollator(0)(s_feats))
        p_loss, p_grads = _loss_and_grads(plain.trainer, plain.trainer.data_collator(p_feats))
        assert torch.allclose(s_loss, p_loss, atol=1e-5, rtol=1e-5), (s_loss, p_loss)
        assert s_grads.keys() == p_grads.keys() and len(s_grads) > 10
        worst = max((s_grads[n] - p_grads[n]).abs().max().item() for n in s_grads)
        scale = max(p_grads[n].abs().max().item() for n in p_grads)
        assert worst <= 1e-4 * max(scale, 1.0), (worst, scale)


def test_shared_prefix_run_trains_every_example_and_counts_real_tokens(tiny_model_dir, multi_source_corpus,
                                                                       tmp_path):
    from trl import ModelConfig, SFTConfig

    from selfrec_ft.training.args import SelfRecDataArguments
    from selfrec_ft.training.sft import run_sft

    out = tmp_path / "run"
    result = run_sft(
        SelfRecDataArguments(corpus=str(multi_source_corpus), self_source="lead", n_articles=3, share_prefix=True),
        SFTConfig(output_dir=str(out), use_cpu=True, bf16=False, max_length=2048, report_to="none",
                  per_device_train_batch_size=1, num_train_epochs=1, logging_steps=1, save_strategy="no",
                  disable_tqdm=True, seed=0, activation_checkpointing=False),
        ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"), teardown=False)
    assert result.global_step == 3  # one row (article) per step
    man = json.loads((out / "training_manifest.json").read_text())
    assert man["share_prefix"]["rows"] == 3 and man["share_prefix"]["examples"] == man["rows"] == 24
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h["num_tokens"] for h in state["log_history"] if "num_tokens" in h]
    assert logged[-1] == man["share_prefix"]["tokens"]


@pytest.mark.parametrize("path", ["packed", "packed-mask", "mask"])
def test_every_attention_path_matches_separate_rows_on_a_padded_batch(tiny_model_dir, multi_source_corpus, tmp_path,
                                                                   path):
    """Two articles' rows (different lengths, so one is padded) in one batch, in training mode with
    activation checkpointing (the forward is recomputed in the backward pass): the packed-attention
    path (prefix once, branches against its keys) and the 4-D mask path give the loss and gradients of
    the 16 examples one per row (packed: by cascade on a CPU, or by one masked attention over the
    branches as on GPUs)."""
    from selfrec_ft.scoring.packed_attention import NAME, base_model

    shared = _setup(tiny_model_dir, multi_source_corpus, tmp_path / "shared", True, activation_checkpointing=True)
    plain = _setup(tiny_model_dir, multi_source_corpus, tmp_path / "plain", False, activation_checkpointing=True)
    trainer = shared.trainer
    assert trainer.attention_path == "packed" and base_model(trainer.model).config._attn_implementation == NAME
    if path == "mask":
        trainer.attention_path = "mask"
        base_model(trainer.model).set_attn_implementation("sdpa")
    elif path == "packed-mask":
        trainer.packed_mode = "mask"
    packed, rows = trainer.train_dataset, plain.trainer.train_dataset
    arts = packed["article_id"][:2]
    s_feats = [{k: packed[i][k] for k in ("input_ids", "labels", "position_ids")}
               for i in range(len(packed)) if packed[i]["article_id"] in arts]
    assert len(s_feats) == 2 and len(s_feats[0]["input_ids"]) != len(s_feats[1]["input_ids"])
    p_feats = [{k: rows[i][k] for k in ("input_ids", "labels")} for i in range(len(rows))
               if rows[i]["article_id"] in arts]
    assert len(p_feats) == 16
    for t in (trainer, plain.trainer):
        t.model.train()
        t.model.activation_checkpointing_enable()
    batch = SharedPrefixCollator(0, four_d_mask=path == "mask")(s_feats)
    assert batch["attention_mask"].dim() == (4 if path == "mask" else 2)
    s_loss, s_grads = _loss_and_grads(trainer, batch)
    p_loss, p_grads = _loss_and_grads(plain.trainer, plain.trainer.data_collator(p_feats))
    assert torch.allclose(s_loss, p_loss, atol=1e-5, rtol=1e-5), (s_loss, p_loss)
    assert s_grads.keys() == p_grads.keys() and len(s_grads) > 10
    worst = max((s_grads[n] - p_grads[n]).abs().max().item() for n in s_grads)
    scale = max(p_grads[n].abs().max().item() for n in p_grads)
    assert worst <= 1e-4 * max(scale, 1.0), (worst, scale)


def test_row_families_follow_the_position_restarts():
    from selfrec_ft.training.shared_prefix import row_families

    (fam,) = row_families([0, 1, 2, 3, 4, 3, 4, 5, 3, 0, 0], 9)  # prefix 3, branches of 2, 3 and 1 tokens
    assert (fam.start, fam.root_end, fam.bounds) == (0, 3, (5, 8, 9))
    (fam,) = row_families([0, 1, 2, 3, 0], 4)  # one plain sequence
    assert (fam.start, fam.root_end, fam.bounds) == (0, 4, ())


DDP_SCRIPT = """
import json, sys
import torch
from trl import ModelConfig, SFTConfig
from selfrec_ft.training.args import SelfRecDataArguments
from selfrec_ft.training.sft import prepare_sft
from selfrec_ft.training.teardown import end_distributed, release_training_state
corpus, model_dir, out = sys.argv[1:4]
deltas = {}
for share in (True, False):
    data_args = SelfRecDataArguments(corpus=corpus, self_source="lead", n_articles=2, share_prefix=share)
    args = SFTConfig(output_dir=f"{out}/{share}", use_cpu=True, bf16=False, max_length=2048, report_to="none",
                     per_device_train_batch_size=1 if share else 8, max_steps=1, optim="sgd", learning_rate=1.0,
                     lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, save_strategy="no",
                     disable_tqdm=True, seed=0, activation_checkpointing=False)
    setup = prepare_sft(data_args, args, ModelConfig(model_name_or_path=model_dir, dtype="float32"))
    trainer = setup.trainer
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    deltas[share] = {n: (p.detach() - before[n]) for n, p in trainer.model.named_parameters()}
    if share:
        path = trainer.attention_path
    state = trainer.accelerator.state
    n_processes, process_index = state.num_processes, state.process_index
    # the library's teardown, as sweeps use it: drop the run, then (once) the process group. A gloo
    # group left to the interpreter's exit can abort a rank ("terminate called without an active
    # exception"), the likely cause of this test's one failure in CI.
    del trainer, setup, state
    release_training_state()
if process_index == 0:
    worst = max((deltas[True][n] - deltas[False][n]).abs().max().item() for n in deltas[True])
    scale = max(d.abs().max().item() for d in deltas[False].values())
    json.dump({"n": n_processes, "worst": worst, "scale": scale, "path": path}, open(f"{out}/result.json", "w"))
end_distributed()
"""


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_process_ddp_step_equals_the_unshared_step(tiny_model_dir, multi_source_corpus, tmp_path):
    """Under 2-process DDP (CPU, gloo), one SGD step on two articles' shared-prefix rows (one per rank,
    packed attention) changes every parameter as one step on their 16 examples one per row does."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(repo / "accelerate_configs" / "multi_cpu.yaml"), str(tmp_path / "ddp.py"),
           str(multi_source_corpus), str(tiny_model_dir), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=360, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["n"] == 2 and result["path"] == "packed"
    assert result["scale"] > 1e-3  # the step changed the weights
    assert result["worst"] <= 1e-4 * max(result["scale"], 1.0), result
