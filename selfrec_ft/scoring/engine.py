"""The one scoring engine: option probabilities and span log-likelihoods, batched, prefix-shared.

A request is a prompt (token ids ending right before the answer token) with the option tokens to
read there, and/or a ``span`` continuation whose mean token log-likelihood given the prompt is
wanted. Every result equals scoring the prompt alone with one plain forward pass (within float32
rounding); only the amount of work differs.

**Fast path** (Llama-like models, plain or with LoRA adapters; see
:func:`~selfrec_ft.scoring.packed_attention.supports_packed_attention`):

* Requests with the same ``group`` (one task and article) share a long token prefix: the system
  prompt, the instructions and the article. :mod:`~selfrec_ft.scoring.packing` lays every group out as
  its longest common prefix once, followed by each request's remainder, and packs groups and single
  requests back to back into rows of at most ``max_batch_tokens`` tokens (default
  :data:`DEFAULT_ROW_TOKENS`) and ``batch_size`` requests, **without padding**. Position ids restart
  at the prefix length for every remainder.
* The model's attention runs through :mod:`~selfrec_ft.scoring.packed_attention` (registered with
  transformers' attention interface, switched on for the call and restored after): each remainder
  attends to its group's prefix and causally to itself (on CPU by cascade: one attention of all
  remainders against the shared prefix keys, merged by log-sum-exp with each remainder's causal
  part), so every token sees exactly the keys and positions it would see alone. A group too large
  for one row keeps its prefix's keys and values for the rows that follow; nothing else is cached
  or copied.
* Logits are computed only where they are read (``logits_to_keep`` with the read positions).

**Plain path** (other models: other attention kinds, sliding windows, prompt-learning adapters, or
``prefix_reuse=False``): left-padded batches sorted by length, ``position_ids = cumsum(mask) - 1``,
logits of the last ``span + 1`` positions. Softmax/log-softmax is taken in float32 over the full
vocabulary in both paths.

Under ``accelerate launch`` each process scores a round-robin shard of the units and the results
are gathered (``accelerate.utils.gather_object``), so every process returns all results in order.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from selfrec_ft.defaults import DEFAULT_BATCH_SIZE  # noqa: F401
from selfrec_ft.scoring.packed_attention import (
    LAYOUT_KWARG,
    PackedLayout,
    PrefixStore,
    packed_attention_enabled,
    supports_packed_attention,
)
from selfrec_ft.scoring.packing import (  # noqa: F401  (common_prefix_len, Unit: re-exported)
    RowPlan,
    Span,
    Unit,
    common_prefix_len,
    full_ids,
    pack_rows,
    plain_batches,
    plan_units,
)
from selfrec_ft.scoring.requests import ScoreRequest, ScoreResult, as_request  # noqa: F401  (re-exported)

DEFAULT_ROW_TOKENS = 2048
"""Tokens per packed row when ``max_batch_tokens`` is not given."""
ATTENTION_MODE: str | None = None
"""Packed attention's mode (``"cascade"`` / ``"mask"``); None: cascade on CPU, mask elsewhere."""


# ----------------------------------------------------------------------------- model plumbing


def _unwrap(model):
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(model, DistributedDataParallel) or type(model).__name__ == "FullyShardedDataParallel":
        model = model.module
    return model


def _is_prompt_learning(model) -> bool:
    cfg = getattr(model, "active_peft_config", None)
    return bool(getattr(cfg, "is_prompt_learning", False))


def _input_device(model) -> torch.device:
    emb = model.get_input_embeddings()
    return emb.weight.device if emb is not None else next(model.parameters()).device


def supports_prefix_cache(model) -> bool:
    """Whether ``model`` takes the fast path (shared prefixes in packed rows)."""
    return supports_packed_attention(model)


def pad_id(model) -> int:
    """The model's pad token id (0 when it has none)."""
    pid = getattr(model.config, "pad_token_id", None)
    if isinstance(pid, (list, tuple)):
        pid = pid[0] if pid else None
    return int(pid) if pid is not None and pid >= 0 else 0



# ----------------------------------------------------------------------------- reading


def _result(r: ScoreRequest, logits: torch.Tensor) -> ScoreResult:
    """A result from ``logits[k, V]``: the answer position, then one per span token but the last."""
    n_span = len(r.span_ids or ())
    res = ScoreResult(n_span_tokens=n_span)
    if r.option_ids:
        p = torch.softmax(logits[0].float(), dim=-1)
        probs = {o: float(p[t]) for o, t in r.option_ids.items()}
        mass = float(sum(probs.values()))
        res.probs, res.option_mass = probs, mass
        if math.isfinite(mass) and mass > 0:
            res.p_hat = {o: v / mass for o, v in probs.items()}
    if n_span:
        lp = torch.log_softmax(logits[:n_span].float(), dim=-1)
        target = torch.tensor(r.span_ids, device=lp.device).unsqueeze(-1)
        res.mean_logprob = float(lp.gather(-1, target).mean())
    return res


def _keep(rows: Sequence[ScoreRequest]) -> int:
    return 1 + max(len(r.span_ids or ()) for r in rows)


# ----------------------------------------------------------------------------- forward passes


def _call(model, keep, **inputs):
    """``model(**inputs)`` computing logits only for ``keep`` (the last ``keep`` positions, or a
    tensor of positions); models whose forward has no ``logits_to_keep`` compute all and are sliced."""
    try:
        return model(**inputs, logits_to_keep=keep)
    except TypeError as exc:
        if "logits_to_keep" not in str(exc):
            raise
    out = model(**inputs)
    out.logits = out.logits[:, -keep:] if isinstance(keep, int) else out.logits[:, keep]
    return out


def _forward_plain(model, rows: Sequence[ScoreRequest], device, pad: int, indices: Sequence[int] = (),
                   hooks=None) -> list[ScoreResult]:
    seqs = [full_ids(r) for r in rows]
    width = max(len(s) for s in seqs)
    if hooks is not None:  # left padding: request i's tokens end the row, at positions 0, 1, ...
        hooks.set_rows([[Span(width - len(s), width, (i,), 0)] for i, s in zip(indices, seqs)])
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[b, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = _keep(rows)
    out = _call(model, keep, input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                use_cache=False)
    # left padding: every row ends at its last span token; its reads end one position before
    return [_result(r, out.logits[b, keep - 1 - len(r.span_ids or ()):]) for b, r in enumerate(rows)]


def _forward_packed(model, row: RowPlan, store: PrefixStore, device, hooks=None) -> list[tuple[int, torch.Tensor]]:
    """The logits read for each request of one packed row. Its layout (with every token's requests
    and positions) travels to every decoder layer and attention module as ``selfrec_layout``."""
    if hooks is not None:
        hooks.set_rows([row.spans])
    ids = torch.tensor([row.ids], dtype=torch.long, device=device)
    layout = PackedLayout([row.families], store=store, mode=ATTENTION_MODE, spans=[row.spans])
    out = _call(model, torch.tensor(row.keep, device=device), input_ids=ids,
                position_ids=torch.tensor([row.positions], device=device), attention_mask=torch.ones_like(ids),
                use_cache=False, **{LAYOUT_KWARG: layout})
    logits = out.logits[0]
    return [(rd.index, logits[rd.first: rd.first + rd.count]) for rd in row.reads]


# ----------------------------------------------------------------------------- driver


def _score_plain(model, reqs: Sequence[ScoreRequest], indices: list[int], batch_size: int,
                 max_batch_tokens: int | None, bar, hooks=None) -> dict[int, ScoreResult]:
    device, pad = _input_device(model), pad_id(model)
    results: dict[int, ScoreResult] = {}

    def full_len(i: int) -> int:
        return len(full_ids(reqs[i]))

    order = sorted(indices, key=full_len, reverse=True)
    for batch in plain_batches(order, full_len, batch_size, max_batch_tokens):
        for i, res in zip(batch, _forward_plain(model, [reqs[i] for i in batch], device, pad, batch, hooks)):
            results[i] = res
        bar.update(len(batch))
    return results


def _score_packed(model, reqs: Sequence[ScoreRequest], units: Sequence[Unit], batch_size: int,
                  max_batch_tokens: int | None, bar, hooks=None) -> dict[int, ScoreResult]:
    device = _input_device(model)
    rows = pack_rows(reqs, units, max_batch_tokens or DEFAULT_ROW_TOKENS, batch_size)
    store = PrefixStore()
    results: dict[int, ScoreResult] = {}
    with packed_attention_enabled(model):
        for row in rows:
            for i, logits in _forward_packed(model, row, store, device, hooks):
                results[i] = _result(reqs[i], logits)
            for key in row.drops:
                store.drop(key)
            bar.update(row.n_requests)
    return results


def distributed_state():
    """accelerate's ``PartialState`` when several processes run (``accelerate launch`` / ``torchrun``,
    GPU or CPU), else None."""
    import os

    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not initialized and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state if state.num_processes > 1 else None


def score_requests(
    model,
    requests: Iterable[ScoreRequest | Mapping[str, Any]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_tokens: int | None = None,
    prefix_reuse: bool = True,
    progress: bool = True,
    desc: str = "scoring",
    distributed: bool = True,
    layer_hooks=None,
) -> list[ScoreResult]:
    """Score ``requests`` with ``model`` (a causal LM, possibly a PEFT model); results in input order.

    ``batch_size`` bounds the requests of every forward pass; ``max_batch_tokens`` bounds its tokens
    (a packed row's length; rows × padded length on the plain path; default on the fast path:
    :data:`DEFAULT_ROW_TOKENS`). A request longer than that runs alone. ``prefix_reuse=False`` scores
    every request in plain padded batches (same numbers, more work). With several ``accelerate`` processes
    (and ``distributed``) each scores a shard and every process returns all results.

    ``layer_hooks`` (steering: :class:`selfrec_ft.steering.hooks.LayerHooks`) act on or read the
    decoder layers' outputs at chosen tokens of each request. The engine asks it how much of each
    request may sit in a shared prefix (``shared_limit(request)``: an intervened token must belong to
    its request alone, so a group's prefix is cut before the first one), attaches it for the call
    (``attach(model, requests)``, a context manager that removes its hooks after), tells it before
    every forward which requests own which tokens at which positions (``set_rows(rows)``: per batch
    row a list of :class:`~selfrec_ft.scoring.packing.Span`; packed and plain paths alike) and puts
    what it recorded for each request into ``ScoreResult.recorded`` (``take(index)``; gathered across
    processes with the results).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    reqs = [as_request(r) for r in requests]
    model = _unwrap(model)
    fast = prefix_reuse and supports_packed_attention(model)
    if layer_hooks is not None and _is_prompt_learning(model):
        raise ValueError("layer hooks cannot act on a prompt-learning adapter's model (virtual tokens shift "
                         "every position)")
    limits = None if layer_hooks is None else [layer_hooks.shared_limit(r) for r in reqs]
    units = plan_units(reqs, prefix_reuse=fast, share_limits=limits)
    state = distributed_state() if distributed else None
    if state is not None:
        units = sorted(units, key=lambda u: u.cost(reqs), reverse=True)[state.process_index::state.num_processes]
    n_mine = sum(len(u.indices) for u in units)
    was_training = model.training
    model.eval()
    show = progress and (state is None or state.is_main_process)
    attached = layer_hooks.attach(model, reqs) if layer_hooks is not None else contextlib.nullcontext()
    try:
        with torch.inference_mode(), attached, tqdm(total=n_mine, desc=desc, disable=not show, unit="prompt",
                                                    dynamic_ncols=True) as bar:
            if fast:
                mine = _score_packed(model, reqs, units, batch_size, max_batch_tokens, bar, layer_hooks)
            else:  # virtual tokens of a prompt-learning adapter shift positions under padding: one at a time
                mine = _score_plain(model, reqs, [i for u in units for i in u.indices],
                                    1 if _is_prompt_learning(model) else batch_size, max_batch_tokens, bar,
                                    layer_hooks)
            if layer_hooks is not None:
                for i, res in mine.items():
                    res.recorded = layer_hooks.take(i)
    finally:
        model.train(was_training)
    if state is not None:
        from accelerate.utils import gather_object

        gathered = gather_object(sorted(mine.items()))
        mine = dict(gathered)
    return [mine[i] for i in range(len(reqs))]
