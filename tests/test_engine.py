"""The scoring engine gives the numbers of scoring every prompt alone with a plain forward pass."""

from __future__ import annotations

import random

import pytest
import torch

from selfrec_ft.scoring.engine import ScoreRequest, plan_units, score_requests, supports_prefix_cache

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(sharp_tiny_model):
    return sharp_tiny_model


def alone(model, seq: list[int]) -> torch.Tensor:
    """Reference: log-probabilities at every position of ``seq`` run alone (no padding, no cache)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0]
    return torch.log_softmax(logits.double(), dim=-1)


def make_requests(model, seed: int, n_groups: int = 5, n_plain: int = 4, spans: bool = False):
    """Groups of prompts sharing a random prefix (various lengths) plus ungrouped prompts; options
    are the reference's two most likely next tokens and one random token."""
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    seqs = []
    for g in range(n_groups):
        prefix = [1] + [rng.randrange(3, vocab) for _ in range(rng.randint(3, 60))]
        for _ in range(rng.randint(1, 6)):
            seqs.append((prefix + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 25))], ("g", g)))
    for _ in range(n_plain):
        seqs.append(([1] + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 70))], None))
    rng.shuffle(seqs)
    reqs = []
    for k, (seq, group) in enumerate(seqs):
        lp = alone(model, seq)[-1]
        top = torch.topk(lp, 2).indices.tolist()
        options = {"a": top[0], "b": top[1], "c": rng.randrange(3, vocab)}
        span = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 8))] if spans and k % 2 else None
        reqs.append(ScoreRequest(seq, options, group, span))
    return reqs


def reference_probs(model, r: ScoreRequest) -> dict[str, float]:
    p = alone(model, r.prompt_ids)[-1].exp()
    return {o: float(p[t]) for o, t in r.option_ids.items()}


def reference_span(model, r: ScoreRequest) -> float:
    lp = alone(model, r.prompt_ids + r.span_ids)
    n = len(r.prompt_ids)
    return sum(float(lp[n - 1 + j, t]) for j, t in enumerate(r.span_ids)) / len(r.span_ids)


def max_diff(model, reqs, results) -> float:
    return max(abs(res.probs[o] - p) for r, res in zip(reqs, results) for o, p in reference_probs(model, r).items())


def count_tokens(model, fn):
    """Run ``fn`` and count the token slots (padding included) fed through the embedding."""
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].numel()))
    try:
        out = fn()
    finally:
        handle.remove()
    return out, sum(seen)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_matches_one_at_a_time_with_groups_and_padding(model, batch_size):
    reqs = make_requests(model, seed=batch_size)
    results = score_requests(model, reqs, batch_size=batch_size, progress=False)
    assert len(results) == len(reqs)
    assert max_diff(model, reqs, results) <= TOL
    for r, res in zip(reqs, results):
        mass = sum(res.probs.values())
        assert res.option_mass == pytest.approx(mass)
        assert res.p_hat == pytest.approx({o: p / mass for o, p in res.probs.items()})
        assert res.probs["a"] > 0.05  # the sharpened model puts real mass on its top token


def test_token_budget_splits_batches_without_changing_numbers(model):
    reqs = make_requests(model, seed=4)
    calls = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    try:
        results = score_requests(model, reqs, batch_size=16, max_batch_tokens=120, progress=False)
    finally:
        handle.remove()
    assert max_diff(model, reqs, results) <= TOL
    assert all(rows == 1 or rows * width <= 120 for rows, width in calls)


def test_prefix_reuse_does_less_work_for_the_same_numbers(model):
    reqs = make_requests(model, seed=7, n_groups=4, n_plain=0)
    assert any(u.prefix_len > 0 for u in plan_units(reqs))
    cached, n_cached = count_tokens(model, lambda: score_requests(model, reqs, batch_size=4, progress=False))
    plain, n_plain = count_tokens(
        model, lambda: score_requests(model, reqs, batch_size=4, prefix_reuse=False, progress=False))
    assert n_cached < sum(len(r.prompt_ids) for r in reqs) <= n_plain
    for a, b in zip(cached, plain):
        for o in a.probs:
            assert abs(a.probs[o] - b.probs[o]) <= TOL


def test_without_groups_every_prompt_is_scored_plainly(model):
    reqs = make_requests(model, seed=3)
    for r in reqs:
        r.group = None
    assert all(u.prefix_len == 0 for u in plan_units(reqs))
    assert max_diff(model, reqs, score_requests(model, reqs, batch_size=5, progress=False)) <= TOL


def test_identical_prompts_in_a_group(model):
    seq = [1] + list(range(10, 40))
    reqs = [ScoreRequest(seq, {"x": 5, "y": 6}, "g") for _ in range(3)]
    results = score_requests(model, reqs, batch_size=2, progress=False)
    assert max_diff(model, reqs, results) <= TOL


def test_span_mean_logprob_matches_direct_computation(model):
    reqs = make_requests(model, seed=11, spans=True)
    results = score_requests(model, reqs, batch_size=4, progress=False)
    n_spans = 0
    for r, res in zip(reqs, results):
        if r.span_ids:
            n_spans += 1
            assert res.n_span_tokens == len(r.span_ids)
            assert abs(res.mean_logprob - reference_span(model, r)) <= TOL
        else:
            assert res.mean_logprob is None
    assert n_spans >= 3
    assert max_diff(model, reqs, results) <= TOL  # option reads of span requests too


def test_span_only_request_from_a_mapping(model):
    req = {"prompt_ids": [1, 50, 60, 70], "span_ids": [80, 90, 100], "group": None}
    (res,) = score_requests(model, [req], progress=False)
    assert res.probs is None
    assert abs(res.mean_logprob - reference_span(model, ScoreRequest([1, 50, 60, 70], {}, None, [80, 90, 100]))) <= TOL


def test_lora_adapter_loaded_from_a_directory(model, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from selfrec_ft.models.loading import load_model

    base, _ = load_model(tiny_model_dir, dtype="float32", device="cpu")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "gate_proj", "up_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    adapted, _ = load_model(tmp_path / "adapter", dtype="float32", device="cpu")
    assert type(adapted).__name__.startswith("Peft")
    assert supports_prefix_cache(adapted)
    with torch.no_grad():
        adapted.get_base_model().lm_head.weight.mul_(25.0)
    reqs = make_requests(adapted, seed=5, spans=True)
    results = score_requests(adapted, reqs, batch_size=4, progress=False)
    assert max_diff(adapted, reqs, results) <= TOL
    # the adapter really changes the outputs
    changed = max(abs(a - b) for r in reqs for a, b in
                  zip(reference_probs(adapted, r).values(), reference_probs(model, r).values()))
    assert changed > 1e-2
    # the model is left in the mode it was in (the training hook scores a model in train mode)
    adapted.train()
    score_requests(adapted, reqs[:2], progress=False)
    assert adapted.training


def test_bfloat16_runs_and_stays_close(tiny_model_dir, model):
    from selfrec_ft.models.loading import load_model

    m16, _ = load_model(tiny_model_dir, dtype="bfloat16", device="cpu")
    with torch.no_grad():
        m16.lm_head.weight.mul_(25.0)
    reqs = make_requests(model, seed=2)
    results = score_requests(m16, reqs, batch_size=4, progress=False)
    for r, res in zip(reqs, results):
        ref = reference_probs(model, r)
        assert all(abs(res.probs[o] - ref[o]) < 0.1 for o in ref)


def test_bad_requests_are_rejected(model):
    with pytest.raises(ValueError):
        score_requests(model, [ScoreRequest([], {"a": 1})], progress=False)
    with pytest.raises(ValueError):
        score_requests(model, [ScoreRequest([1, 2, 3], {})], progress=False)
    assert score_requests(model, [], progress=False) == []


DIST_SCRIPT = """
import json, sys
import torch
from selfrec_ft.models.loading import load_model
from selfrec_ft.scoring.engine import ScoreRequest, distributed_state, score_requests
from selfrec_ft.training.teardown import end_distributed
model, _ = load_model(sys.argv[1], device="cpu")
reqs = [ScoreRequest(r["prompt_ids"], r["option_ids"], None if r["group"] is None else tuple(r["group"]),
                     r["span_ids"]) for r in json.load(open(sys.argv[2]))]
results = score_requests(model, reqs, batch_size=2, progress=False)
state = distributed_state()
with open(sys.argv[3] + f".{state.process_index}", "w") as fh:
    json.dump({"n": state.num_processes, "probs": [r.probs for r in results],
               "span": [r.mean_logprob for r in results]}, fh)
end_distributed()
"""


def test_several_processes_shard_and_gather(model, tiny_model_dir, tmp_path):
    """Under torchrun / accelerate launch every process gets all results, in order."""
    import json
    import os
    import subprocess
    import sys

    reqs = make_requests(model, seed=13, spans=True)
    (tmp_path / "reqs.json").write_text(json.dumps([r.__dict__ for r in reqs]))
    (tmp_path / "run.py").write_text(DIST_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29400 + os.getpid() % 500), str(tmp_path / "run.py"),
                           str(tiny_model_dir), str(tmp_path / "reqs.json"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in (0, 1)]
    assert outs[0]["n"] == 2 and outs[0] == outs[1]
    with torch.no_grad():
        model.lm_head.weight.div_(25.0)  # the launched processes use the saved (unsharpened) model
    try:
        for r, probs, span in zip(reqs, outs[0]["probs"], outs[0]["span"]):
            ref = reference_probs(model, r)
            assert all(abs(probs[o] - ref[o]) <= TOL for o in ref)
            if r.span_ids:
                assert abs(span - reference_span(model, r)) <= TOL
    finally:
        with torch.no_grad():
            model.lm_head.weight.mul_(25.0)


# ----------------------------------------------------------------------------- packed rows


@pytest.mark.parametrize("mode", ["cascade", "mask"])
def test_groups_split_across_rows_match_in_both_attention_modes(model, mode, monkeypatch):
    """A small row budget splits groups: later rows attend to the prefix kept from the first."""
    from selfrec_ft.scoring import engine
    from selfrec_ft.scoring.packing import pack_rows

    monkeypatch.setattr(engine, "ATTENTION_MODE", mode)
    reqs = make_requests(model, seed=21, n_groups=6, spans=True)
    rows = pack_rows(reqs, plan_units(reqs), 90, 16)
    assert any(f.external is not None for r in rows for f in r.families)
    assert any(len(r.families) > 1 for r in rows)  # several groups or singles share a row
    results = score_requests(model, reqs, batch_size=16, max_batch_tokens=90, progress=False)
    assert max_diff(model, reqs, results) <= TOL
    for r, res in zip(reqs, results):
        if r.span_ids:
            assert abs(res.mean_logprob - reference_span(model, r)) <= TOL


def test_decoder_layers_see_every_requests_tokens_and_positions(model):
    """The layout travels to every decoder layer: each request's tokens and positions are known there
    (the place where steering hooks act)."""
    from selfrec_ft.scoring.packing import full_ids

    reqs = make_requests(model, seed=8, n_groups=3, n_plain=2, spans=True)
    ids_seen, layouts = [], []
    emb = model.get_input_embeddings().register_forward_hook(lambda m, i, o: ids_seen.append(i[0][0].tolist()))

    def pre_hook(module, args, kwargs):
        layouts.append((kwargs["selfrec_layout"].spans[0], kwargs["position_ids"][0].tolist()))

    layer = model.model.layers[-1].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        score_requests(model, reqs, batch_size=4, max_batch_tokens=80, progress=False)
    finally:
        emb.remove()
        layer.remove()
    assert len(ids_seen) == len(layouts) >= 2
    tokens = {i: [] for i in range(len(reqs))}
    positions = {i: [] for i in range(len(reqs))}
    for ids, (spans, pos) in zip(ids_seen, layouts):
        assert spans[-1].end == len(ids) == len(pos)
        for sp in spans:
            assert pos[sp.start:sp.end] == list(range(sp.position, sp.position + sp.end - sp.start))
            for i in sp.requests:
                tokens[i].extend(ids[sp.start:sp.end])
                positions[i].extend(pos[sp.start:sp.end])
    for i, r in enumerate(reqs):
        assert tokens[i] == full_ids(r)
        assert positions[i] == list(range(len(full_ids(r))))


def _random_model(kind: str, **extra):
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
    config = getattr(transformers, f"{kind}Config")(**common, **extra)
    m = getattr(transformers, f"{kind}ForCausalLM")(config).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(25.0)
    return m


@pytest.mark.parametrize("kind,extra,fast", [
    ("Llama", {}, True),  # grouped-query attention
    ("Mistral", {"sliding_window": None}, True),
    ("Qwen2", {}, True),
    ("Mistral", {"sliding_window": 16}, False),  # a sliding window: the plain path
])
def test_other_architectures_score_alone_numbers(kind, extra, fast):
    m = _random_model(kind, **extra)
    assert supports_prefix_cache(m) is fast
    reqs = make_requests(m, seed=17, spans=True)  # prompts up to 85 tokens: longer than the window
    results = score_requests(m, reqs, batch_size=4, progress=False)
    assert max_diff(m, reqs, results) <= TOL
    assert m.config._attn_implementation != "selfrec_packed"  # switched back after scoring


def test_prompt_learning_adapter_scores_through_the_plain_path(model):
    from peft import PromptTuningConfig, get_peft_model

    base = _random_model("Llama")
    tuned = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        for p in tuned.prompt_encoder.parameters():
            p.normal_(0.0, 1.0)
    assert not supports_prefix_cache(tuned)
    reqs = make_requests(tuned, seed=19)
    results = score_requests(tuned, reqs, batch_size=4, progress=False)
    assert max_diff(tuned, reqs, results) <= TOL
    # the virtual tokens matter: the base model gives other numbers
    assert max(abs(res.probs[o] - p) for r, res in zip(reqs, results)
               for o, p in reference_probs(base, r).items()) > 1e-3
