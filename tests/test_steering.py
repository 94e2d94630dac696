"""Steering hooks inside the scoring engine: summary token spans, interventions (add / scale) and
activation recording, against references computed one prompt at a time with a plain forward."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch

from selfrec_ft.scoring.engine import ScoreRequest, score_requests
from selfrec_ft.scoring.packing import full_ids
from selfrec_ft.steering.hooks import Intervention, Recorder, decoder_layers

TOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(sharp_tiny_model):
    return sharp_tiny_model


def top2(model, seq: list[int]) -> dict[str, int]:
    """The two most likely next tokens (options whose probabilities are far from zero)."""
    with torch.no_grad():
        top = torch.topk(model(input_ids=torch.tensor([seq])).logits[0, -1], 2).indices.tolist()
    return {"x": top[0], "y": top[1]}


def make_requests(model, seed: int, n_groups: int = 4, n_plain: int = 3, inside_prefix: bool = False):
    """Groups of prompts sharing a random prefix, each with a "self" and an "other" summary span (in
    the part of its own, or — ``inside_prefix`` — starting inside the group's common prefix), plus
    ungrouped prompts and one request without summaries (a span-only request)."""
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    reqs = []
    for g in range(n_groups):
        prefix = [1] + [rng.randrange(3, vocab) for _ in range(rng.randint(8, 40))]
        for _ in range(rng.randint(2, 5)):
            tail = [rng.randrange(3, vocab) for _ in range(rng.randint(16, 30))]
            seq = prefix + tail
            a = len(prefix) - 5 if inside_prefix else len(prefix) + rng.randint(0, 3)
            b = a + rng.randint(3, 6)
            c = b + rng.randint(0, 2)
            d = min(c + rng.randint(2, 5), len(seq) - 1)
            spans = {"self": (a, b), "other": (c, d)} if rng.random() < 0.5 else {"other": (a, b), "self": (c, d)}
            reqs.append(ScoreRequest(seq, top2(model, seq), ("g", seed, g), summary_spans=spans))
    for _ in range(n_plain):
        seq = [1] + [rng.randrange(3, vocab) for _ in range(rng.randint(15, 50))]
        reqs.append(ScoreRequest(seq, top2(model, seq), None, summary_spans={"self": (2, 6), "other": (7, 12)}))
    reqs.append(ScoreRequest([1, 7, 8, 9], {}, None, span_ids=[10, 11]))
    rng.shuffle(reqs)
    return reqs


def steer_alone(model, r: ScoreRequest, layer: int, mode: str, vec: torch.Tensor, target: str = "other",
                lam: float = 1.0) -> dict[str, float]:
    """Reference: the prompt alone in one plain forward, the layer's output changed by a hook written
    here (float64 arithmetic) at the positions the request's summary spans name."""
    seq = full_ids(r)

    def hook(module, args, out):
        h = out.clone()
        if r.option_ids and r.summary_spans:
            if mode == "add" and target in r.summary_spans:
                a, b = r.summary_spans[target]
                h[0, a:b] = (h[0, a:b].double() + vec.double()).to(h.dtype)
            elif mode == "scale":
                s = min(a for a, _ in r.summary_spans.values())
                u = vec.double()
                x = h[0, s:].double()
                h[0, s:] = (x + (lam - 1.0) * (x @ u)[:, None] * u[None, :]).to(h.dtype)
        return h

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0]
    finally:
        handle.remove()
    if not r.option_ids:
        return {}
    p = torch.softmax(logits[len(r.prompt_ids) - 1].double(), dim=-1)
    return {o: float(p[t]) for o, t in r.option_ids.items()}


def unit(model, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(model.config.hidden_size, generator=g), dim=0)


def max_gap(a, b) -> float:
    return max((abs(x.probs[o] - y.probs[o]) for x, y in zip(a, b) if x.probs for o in x.probs), default=0.0)


# ----------------------------------------------------------------------------- null interventions


@pytest.mark.parametrize("prefix_reuse", [True, False])
@pytest.mark.parametrize("batch_size,budget", [(3, 70), (16, None)])
def test_alpha_zero_and_lambda_one_equal_unsteered(model, prefix_reuse, batch_size, budget):
    reqs = make_requests(model, seed=1) + make_requests(model, seed=2, inside_prefix=True)
    plain = score_requests(model, reqs, batch_size=batch_size, max_batch_tokens=budget, prefix_reuse=prefix_reuse,
                           progress=False)
    for hooks in (Intervention("add", {0: torch.zeros(model.config.hidden_size)}, target="other"),
                  Intervention("add", {1: 0.0 * unit(model, 3)}, target="self"),
                  Intervention("scale", {0: unit(model, 4)}, lam=1.0),
                  Intervention("scale", {1: unit(model, 5)}, lam=1.0)):
        steered = score_requests(model, reqs, batch_size=batch_size, max_batch_tokens=budget,
                                 prefix_reuse=prefix_reuse, progress=False, layer_hooks=hooks)
        assert max_gap(steered, plain) <= TOL
        assert all(s.mean_logprob == p.mean_logprob or abs(s.mean_logprob - p.mean_logprob) <= TOL
                   for s, p in zip(steered, plain) if p.mean_logprob is not None)
    # hooks are removed after the call
    assert all(not layer._forward_hooks for layer in decoder_layers(model))


# ----------------------------------------------------------------------------- real interventions


@pytest.mark.parametrize("prefix_reuse", [True, False])
@pytest.mark.parametrize("mode,layer,value", [("add", 0, 3.0), ("add", 0, -2.0), ("scale", 0, 0.0),
                                              ("scale", 0, -1.0), ("scale", 1, 2.5)])
def test_steered_scores_equal_each_prompt_steered_alone(model, prefix_reuse, mode, layer, value):
    """Packed rows, shared prefixes (summaries starting inside the group's common prefix included),
    groups split across rows and batching give each prompt's steered-alone numbers."""
    reqs = make_requests(model, seed=6) + make_requests(model, seed=7, inside_prefix=True)
    u = unit(model, 11)
    vec = value * 20.0 * u if mode == "add" else u
    hooks = Intervention(mode, {layer: vec}, target="other", lam=value)
    out = score_requests(model, reqs, batch_size=3, max_batch_tokens=80, prefix_reuse=prefix_reuse, progress=False,
                         layer_hooks=hooks)
    plain = score_requests(model, reqs, batch_size=3, progress=False)
    moved = 0.0
    for r, res, base in zip(reqs, out, plain):
        if not r.option_ids:
            continue
        ref = steer_alone(model, r, layer, mode, vec, "other", value)
        assert all(abs(res.probs[o] - ref[o]) <= 1e-5 for o in ref)
        moved = max(moved, max(abs(res.probs[o] - base.probs[o]) for o in ref))
    assert moved > 1e-3  # the intervention changes the numbers


def test_hook_touches_exactly_the_intended_positions(model):
    """Recorded: the layer's output before the intervention (a hook registered first) and the next
    layer's input after it, mapped to requests through the packed layout the next layer receives."""
    reqs = make_requests(model, seed=8) + make_requests(model, seed=9, inside_prefix=True)
    layers = decoder_layers(model)
    for mode in ("add", "scale"):
        before, after = [], []
        h0 = layers[0].register_forward_hook(lambda m, a, o: before.append(o.clone()))
        h1 = layers[1].register_forward_pre_hook(
            lambda m, a, kw: after.append((a[0] if a else kw["hidden_states"], kw["selfrec_layout"].spans[0])),
            with_kwargs=True)
        try:
            hooks = Intervention(mode, {0: 5.0 * unit(model, 12) if mode == "add" else unit(model, 12)},
                                 target="other", lam=0.0)
            score_requests(model, reqs, batch_size=4, max_batch_tokens=90, progress=False, layer_hooks=hooks)
        finally:
            h0.remove()
            h1.remove()
        touched = set()
        for orig, (new, spans) in zip(before, after):
            changed = ((new[0] - orig[0]).abs().amax(-1) > 0).nonzero().flatten().tolist()
            owner = {}
            for sp in spans:
                for t in range(sp.start, sp.end):
                    owner[t] = [(i, sp.position + t - sp.start) for i in sp.requests]
            for t in changed:
                assert len(owner[t]) == 1, "a shared prefix token was changed"
                touched.add(owner[t][0])
        expected = set()
        for i, r in enumerate(reqs):
            if not r.option_ids:
                continue
            if mode == "add":
                a, b = r.summary_spans["other"]
            else:
                a, b = min(x for x, _ in r.summary_spans.values()), len(full_ids(r))
            expected |= {(i, p) for p in range(a, b)}
        assert touched == expected


def test_an_intervention_in_a_shared_span_is_refused():
    from selfrec_ft.scoring.packing import Span

    r = ScoreRequest([1, 2, 3, 4, 5, 6], {"x": 1}, "g", summary_spans={"self": (1, 3), "other": (3, 5)})
    hooks = Intervention("add", {0: torch.ones(4)}, target="self")
    hooks.bind([r, r])
    assert hooks.shared_limit(r) == 1
    with pytest.raises(RuntimeError, match="shared"):
        hooks.set_rows([[Span(0, 4, (0, 1), 0), Span(4, 6, (0,), 4), Span(6, 8, (1,), 4)]])
    hooks.set_rows([[Span(0, 1, (0, 1), 0), Span(1, 6, (0,), 1), Span(6, 11, (1,), 1)]])  # the cut prefix is fine


def test_a_prompt_without_summary_positions_cannot_be_steered(model):
    from selfrec_ft.errors import UserError

    reqs = [ScoreRequest([1, 5, 6, 7, 8], {"x": 5, "y": 6})]
    with pytest.raises(UserError, match="summary token positions"):
        score_requests(model, reqs, progress=False,
                       layer_hooks=Intervention("scale", {0: unit(model, 1)}, lam=0.0))


# ----------------------------------------------------------------------------- recording


def test_recorded_means_equal_hidden_states_alone(model):
    reqs = make_requests(model, seed=10) + make_requests(model, seed=11, inside_prefix=True)
    results = score_requests(model, reqs, batch_size=3, max_batch_tokens=80, progress=False,
                             layer_hooks=Recorder([0, 1]))
    norm = model.model.norm
    for r, res in zip(reqs, results):
        model.model.norm = torch.nn.Identity()  # transformers' last hidden state is after the final norm
        try:
            with torch.no_grad():
                hs = model(input_ids=torch.tensor([full_ids(r)]), output_hidden_states=True).hidden_states
        finally:
            model.model.norm = norm
        if not r.option_ids:
            assert res.recorded is None
            continue
        n = len(r.prompt_ids)
        for layer in (0, 1):
            h = hs[layer + 1][0].double()
            got = res.recorded["layers"][layer]
            for role, (a, b) in r.summary_spans.items():
                assert torch.allclose(torch.from_numpy(got[role]).double(), h[a:b].mean(0), atol=1e-5)
                assert res.recorded["n_tokens"][role] == b - a
            assert torch.allclose(torch.from_numpy(got["answer"]).double(), h[n - 1], atol=1e-5)


# ----------------------------------------------------------------------------- adapters, processes


def test_with_a_lora_adapter(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from selfrec_ft.models.loading import load_model

    base, _ = load_model(tiny_model_dir, dtype="float32", device="cpu")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules=["q_proj", "v_proj", "o_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
        peft_model.get_base_model().lm_head.weight.mul_(25.0)
    reqs = make_requests(peft_model, seed=12, inside_prefix=True)
    plain = score_requests(peft_model, reqs, batch_size=4, progress=False)
    null = score_requests(peft_model, reqs, batch_size=4, progress=False,
                          layer_hooks=Intervention("scale", {0: unit(peft_model, 2)}, lam=1.0))
    assert max_gap(null, plain) <= TOL
    vec = 6.0 * unit(peft_model, 3)
    out = score_requests(peft_model, reqs, batch_size=4, max_batch_tokens=70, progress=False,
                         layer_hooks=Intervention("add", {0: vec}, target="self"))
    for r, res in zip(reqs, out):
        if r.option_ids:
            ref = steer_alone(peft_model, r, 0, "add", vec, "self")
            assert all(abs(res.probs[o] - ref[o]) <= 1e-5 for o in ref)
    assert max_gap(out, plain) > 1e-3


DIST_SCRIPT = """
import json, sys
import numpy as np
import torch
from selfrec_ft.models.loading import load_model
from selfrec_ft.scoring.engine import ScoreRequest, distributed_state, score_requests
from selfrec_ft.steering.hooks import Intervention, Recorder
from selfrec_ft.training.teardown import end_distributed
model, _ = load_model(sys.argv[1], device="cpu")
reqs = [ScoreRequest(r["prompt_ids"], r["option_ids"], None if r["group"] is None else tuple(r["group"]),
                     r["span_ids"], None if r["summary_spans"] is None else
                     {k: tuple(v) for k, v in r["summary_spans"].items()}) for r in json.load(open(sys.argv[2]))]
u = torch.tensor(json.load(open(sys.argv[4])))
steered = score_requests(model, reqs, batch_size=2, progress=False, layer_hooks=Intervention("add", {0: u}, target="other"))
rec = score_requests(model, reqs, batch_size=2, progress=False, layer_hooks=Recorder([1]))
state = distributed_state()
with open(sys.argv[3] + f".{state.process_index}", "w") as fh:
    json.dump({"n": state.num_processes, "probs": [r.probs for r in steered],
               "self": [None if r.recorded is None else r.recorded["layers"][1]["self"].tolist() for r in rec]}, fh)
end_distributed()
"""


def test_several_processes_steer_and_record_like_one(tiny_model_dir, tmp_path):
    from selfrec_ft.models.loading import load_model

    m, _ = load_model(tiny_model_dir, dtype="float32", device="cpu")
    reqs = make_requests(m, seed=13, inside_prefix=True)
    u = (6.0 * unit(m, 4)).tolist()
    (tmp_path / "reqs.json").write_text(json.dumps([r.__dict__ for r in reqs]))
    (tmp_path / "u.json").write_text(json.dumps(u))
    (tmp_path / "run.py").write_text(DIST_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29900 + os.getpid() % 90), str(tmp_path / "run.py"),
                           str(tiny_model_dir), str(tmp_path / "reqs.json"), str(tmp_path / "out"),
                           str(tmp_path / "u.json")], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in (0, 1)]
    assert outs[0]["n"] == 2 and outs[0] == outs[1]
    one = score_requests(m, reqs, batch_size=2, progress=False,
                         layer_hooks=Intervention("add", {0: torch.tensor(u)}, target="other"))
    rec = score_requests(m, reqs, batch_size=2, progress=False, layer_hooks=Recorder([1]))
    for r, probs, res, mine, theirs in zip(reqs, outs[0]["probs"], one, rec, outs[0]["self"]):
        if r.option_ids:
            assert all(abs(probs[o] - res.probs[o]) <= TOL for o in probs)
            assert max(abs(a - b) for a, b in zip(mine.recorded["layers"][1]["self"], theirs)) <= 1e-5
        else:
            assert theirs is None
