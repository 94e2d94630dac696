"""The one scoring engine: option probabilities and span log-likelihoods, batched, prefix-cached.

A request is a prompt (token ids ending right before the answer token) with the option tokens to
read there, and/or a ``span`` continuation whose mean token log-likelihood given the prompt is
wanted. Every result equals scoring the prompt alone with one plain forward pass (within float32
rounding); only the amount of work differs:

* **Shared prefixes.** Requests with the same ``group`` (one task and article) share a long token
  prefix: the system prompt, the instructions and the article. The longest common prefix of a group
  is run once (right-padded together with other groups' prefixes, no mask needed: causal attention
  never lets a real token see the padding after it); its KV cache is copied, left-padded, into a
  :class:`~transformers.DynamicCache` for every suffix batch. The suffix batch is left-padded after
  the cached prefix; the 2-D attention mask covers ``[prefix pad | prefix | suffix pad | suffix]`` and
  position ids continue from each row's own prefix length, so every real token sees exactly the
  keys and rotary positions it would see alone. Each suffix holds at least one token of the prompt,
  so no query row is ever fully masked.
* **Only read logits.** The model runs with ``logits_to_keep``: one position for option reads (all
  rows end at the answer position because of left padding), the last ``span + 1`` positions for
  span requests. Softmax/log-softmax is taken in float32 over the full vocabulary.
* Requests without a group (or groups whose prefix is empty) go through a plain left-padded batch
  with ``position_ids = cumsum(attention_mask) - 1``. Batches are sorted by length.

Under ``accelerate launch`` each process scores a round-robin shard of the groups and the results
are gathered (``accelerate.utils.gather_object``), so every process returns all results in order.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from selfrec_ft.defaults import DEFAULT_BATCH_SIZE  # noqa: F401


@dataclass
class ScoreRequest:
    """What to score. ``option_ids`` are read at the position after ``prompt_ids``; ``span_ids`` (if
    given) are scored as a continuation of the prompt. ``group`` marks prompts sharing a prefix."""

    prompt_ids: list[int]
    option_ids: dict[str, int] = field(default_factory=dict)
    group: Hashable | None = None
    span_ids: list[int] | None = None


@dataclass
class ScoreResult:
    """``probs``: raw p(o), softmax over the full vocabulary; ``p_hat``: p(o)/Σp (None when the mass
    is zero or not finite); ``option_mass``: Σp; ``mean_logprob``: mean log p of the span tokens."""

    probs: dict[str, float] | None = None
    p_hat: dict[str, float] | None = None
    option_mass: float | None = None
    mean_logprob: float | None = None
    n_span_tokens: int = 0


def as_request(r: ScoreRequest | Mapping[str, Any]) -> ScoreRequest:
    """A :class:`ScoreRequest` from itself or a mapping with the same keys (validated)."""
    if not isinstance(r, ScoreRequest):
        r = ScoreRequest(prompt_ids=list(r["prompt_ids"]), option_ids=dict(r.get("option_ids") or {}),
                         group=r.get("group"), span_ids=None if r.get("span_ids") is None else list(r["span_ids"]))
    if not r.prompt_ids:
        raise ValueError("a scoring request needs at least one prompt token")
    if not r.option_ids and not r.span_ids:
        raise ValueError("a scoring request needs option_ids or a non-empty span_ids")
    return r


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
    """Prefix reuse needs a decoder-only model whose cache layers all use full attention."""
    from transformers import DynamicCache

    config = model.config
    if getattr(config, "is_encoder_decoder", False) or _is_prompt_learning(model):
        return False
    try:
        cache = DynamicCache(config=config)
    except Exception:  # exotic configs: fall back to plain batches
        return False
    if not cache.layers:
        return False
    flags = zip(cache.is_sliding, cache.is_linear, cache.is_dummy)
    return all(not any(f) for f in flags) and all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers)


def _pad_id(model) -> int:
    pid = getattr(model.config, "pad_token_id", None)
    if isinstance(pid, (list, tuple)):
        pid = pid[0] if pid else None
    return int(pid) if pid is not None and pid >= 0 else 0


# ----------------------------------------------------------------------------- planning


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        for s in seqs[1:]:
            if s[i] != t:
                return i
    return n


@dataclass
class _Unit:
    """Requests scored together: a group with a cached prefix of ``prefix_len`` tokens, or one or
    more requests scored plainly (``prefix_len == 0``)."""

    indices: list[int]
    prefix_len: int = 0

    def cost(self, reqs: Sequence[ScoreRequest]) -> int:
        return sum(len(reqs[i].prompt_ids) + len(reqs[i].span_ids or ()) for i in self.indices)


def plan_units(reqs: Sequence[ScoreRequest], prefix_reuse: bool = True, min_prefix: int = 1) -> list[_Unit]:
    """Cached groups (≥ 2 requests with a common prefix of at least ``min_prefix`` tokens that leaves
    every prompt at least one token) and one plain unit per other request."""
    by_group: dict[Hashable, list[int]] = {}
    units: list[_Unit] = []
    for i, r in enumerate(reqs):
        if r.group is None or not prefix_reuse:
            units.append(_Unit([i]))
        else:
            by_group.setdefault(r.group, []).append(i)
    for idx in by_group.values():
        prompts = [reqs[i].prompt_ids for i in idx]
        p = min(common_prefix_len(prompts), min(len(s) for s in prompts) - 1)
        if len(idx) >= 2 and p >= min_prefix:
            units.append(_Unit(idx, p))
        else:
            units.extend(_Unit([i]) for i in idx)
    return units


MAX_PAD_FRACTION = 0.25
"""A batch (sorted longest first) is closed early when adding a row would make more than this
fraction of its token slots padding: padding costs as much as real tokens."""


def _batches(order: list[int], length_of, batch_size: int, max_batch_tokens: int | None) -> list[list[int]]:
    """Consecutive batches of ``order`` (sorted longest first) with at most ``batch_size`` rows, at
    most ``max_batch_tokens`` padded tokens (rows × longest; a single over-long row is its own
    batch) and at most :data:`MAX_PAD_FRACTION` padding."""
    out, cur, longest, total = [], [], 0, 0
    for i in order:
        n = length_of(i)
        new_longest = max(longest, n)
        slots = new_longest * (len(cur) + 1)
        if cur and (len(cur) >= batch_size or (max_batch_tokens and slots > max_batch_tokens)
                    or slots - (total + n) > MAX_PAD_FRACTION * slots):
            out.append(cur)
            cur, new_longest, total = [], n, 0
        cur.append(i)
        longest, total = new_longest, total + n
    if cur:
        out.append(cur)
    return out


# ----------------------------------------------------------------------------- reading


def _read(logits: torch.Tensor, rows: Sequence[ScoreRequest]) -> list[ScoreResult]:
    """Results from ``logits[b, k, V]`` holding the last ``k`` positions of left-padded rows."""
    k = logits.shape[1]
    out = []
    for b, r in enumerate(rows):
        n_span = len(r.span_ids or ())
        res = ScoreResult(n_span_tokens=n_span)
        answer_pos = k - 1 - n_span  # the position right after the prompt
        if r.option_ids:
            p = torch.softmax(logits[b, answer_pos].float(), dim=-1)
            probs = {o: float(p[t]) for o, t in r.option_ids.items()}
            mass = float(sum(probs.values()))
            res.probs, res.option_mass = probs, mass
            if math.isfinite(mass) and mass > 0:
                res.p_hat = {o: v / mass for o, v in probs.items()}
        if n_span:
            lp = torch.log_softmax(logits[b, answer_pos:k - 1].float(), dim=-1)
            target = torch.tensor(r.span_ids, device=lp.device).unsqueeze(-1)
            res.mean_logprob = float(lp.gather(-1, target).mean())
        out.append(res)
    return out


def _keep(rows: Sequence[ScoreRequest]) -> int:
    return 1 + max(len(r.span_ids or ()) for r in rows)


# ----------------------------------------------------------------------------- forward passes


def _call(model, keep: int, **inputs):
    """``model(**inputs)`` computing logits for the last ``keep`` positions only (models whose
    forward has no ``logits_to_keep`` compute them all and are sliced)."""
    try:
        return model(**inputs, logits_to_keep=keep)
    except TypeError as exc:
        if "logits_to_keep" not in str(exc):
            raise
    out = model(**inputs)
    out.logits = out.logits[:, -keep:]
    return out


def _forward_plain(model, rows: Sequence[ScoreRequest], device, pad_id: int) -> list[ScoreResult]:
    seqs = [r.prompt_ids + (r.span_ids or []) for r in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[b, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
    out = _call(model, _keep(rows), input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    return _read(out.logits, rows)


def _prefix_caches(model, prefixes: list[list[int]], device, pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run the prefixes (right-padded) and return per layer ``(keys, values)`` laid out as
    ``[prefix, position, heads, dim]`` (contiguous) for fast row gathers."""
    width = max(len(p) for p in prefixes)
    ids = torch.full((len(prefixes), width), pad_id, dtype=torch.long)
    for b, p in enumerate(prefixes):
        ids[b, : len(p)] = torch.tensor(p, dtype=torch.long)  # right padding: causal attention suffices
    cache = _call(model, 1, input_ids=ids.to(device), use_cache=True).past_key_values
    caches = []
    for layer in cache.layers:  # re-layout one layer at a time, freeing the original as we go
        caches.append((layer.keys.transpose(1, 2).contiguous(), layer.values.transpose(1, 2).contiguous()))
        layer.keys = layer.values = None
    return caches


def _prefilled_layer_class():
    from transformers.cache_utils import DynamicLayer

    class PrefilledLayer(DynamicLayer):
        """A cache layer over a preallocated ``[batch, heads, prefix + suffix, dim]`` buffer whose
        prefix part is already filled: the suffix's keys/values are written in place (no
        ``torch.cat`` of the whole cache)."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int):
            super().__init__()
            self.keys, self.values = keys, values
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True
            self.filled = filled

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.filled + key_states.shape[-2]
            if end > self.keys.shape[-2]:
                raise RuntimeError("prefilled cache buffer too small")
            self.keys[:, :, self.filled:end] = key_states
            self.values[:, :, self.filled:end] = value_states
            self.filled = end
            return self.keys[:, :, :end], self.values[:, :, :end]

        def get_seq_length(self) -> int:
            return self.filled

    return PrefilledLayer


def _forward_suffix(model, rows: Sequence[ScoreRequest], prefix_lens: Sequence[int], prefix_rows: Sequence[int],
                    caches: Sequence[tuple[torch.Tensor, torch.Tensor]], device, pad_id: int) -> list[ScoreResult]:
    """Score ``rows`` continuing from cached prefixes: row ``b`` continues prefix ``prefix_rows[b]``
    (``prefix_lens[b]`` tokens) of ``caches`` (from :func:`_prefix_caches`)."""
    from transformers.cache_utils import Cache

    bsz = len(rows)
    pmax = max(prefix_lens)
    suffixes = [(r.prompt_ids + (r.span_ids or []))[p:] for r, p in zip(rows, prefix_lens)]
    smax = max(len(s) for s in suffixes)
    ids = torch.full((bsz, smax), pad_id, dtype=torch.long)
    mask = torch.zeros((bsz, pmax + smax), dtype=torch.long)
    pos = torch.zeros((bsz, smax), dtype=torch.long)
    for b, (s, p) in enumerate(zip(suffixes, prefix_lens)):
        ids[b, smax - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[b, pmax - p: pmax] = 1
        mask[b, pmax + smax - len(s):] = 1
        pos[b, smax - len(s):] = torch.arange(p, p + len(s))
        pos[b, : smax - len(s)] = max(p - 1, 0)  # pads: any valid position; they are never read
    # Cache position j of row b holds prefix position j - (pmax - p_b); left-pad slots repeat
    # position 0 (finite values, masked out).
    lens = torch.tensor(prefix_lens)
    src_pos = (torch.arange(pmax).unsqueeze(0) - (pmax - lens).unsqueeze(1)).clamp(min=0)
    src_row = torch.tensor(prefix_rows).unsqueeze(1).expand(-1, pmax)
    dev = caches[0][0].device
    src_row, src_pos = src_row.to(dev), src_pos.to(dev)
    layer_cls = _prefilled_layer_class()
    layers = []
    for k_all, v_all in caches:
        n_heads, dim = k_all.shape[2], k_all.shape[3]
        keys = k_all.new_empty((bsz, n_heads, pmax + smax, dim))
        values = v_all.new_empty((bsz, n_heads, pmax + smax, dim))
        keys[:, :, :pmax] = k_all[src_row, src_pos].transpose(1, 2)
        values[:, :, :pmax] = v_all[src_row, src_pos].transpose(1, 2)
        layers.append(layer_cls(keys, values, pmax))
    cache = Cache(layers=layers)
    out = _call(model, _keep(rows), input_ids=ids.to(device), attention_mask=mask.to(device),
                position_ids=pos.to(device), past_key_values=cache, use_cache=True)
    return _read(out.logits, rows)


# ----------------------------------------------------------------------------- driver


def _score_units(model, reqs: Sequence[ScoreRequest], units: Sequence[_Unit], batch_size: int,
                 max_batch_tokens: int | None, bar) -> dict[int, ScoreResult]:
    device, pad_id = _input_device(model), _pad_id(model)
    results: dict[int, ScoreResult] = {}

    def full_len(i: int) -> int:
        return len(reqs[i].prompt_ids) + len(reqs[i].span_ids or ())

    plain = sorted((i for u in units if u.prefix_len == 0 for i in u.indices), key=full_len, reverse=True)
    for batch in _batches(plain, full_len, batch_size, max_batch_tokens):
        for i, res in zip(batch, _forward_plain(model, [reqs[i] for i in batch], device, pad_id)):
            results[i] = res
        bar.update(len(batch))

    groups = sorted((u for u in units if u.prefix_len > 0), key=lambda u: u.prefix_len, reverse=True)
    # A chunk is one prefix batch; its caches live while its groups' suffixes are scored.
    for chunk in _batches(list(range(len(groups))), lambda g: groups[g].prefix_len, batch_size, max_batch_tokens):
        units_c = [groups[g] for g in chunk]
        prefixes = [reqs[u.indices[0]].prompt_ids[: u.prefix_len] for u in units_c]
        caches = _prefix_caches(model, prefixes, device, pad_id)
        owner = {i: c for c, u in enumerate(units_c) for i in u.indices}
        # Sorted by total length: rows of one batch then have similar prefix and suffix lengths.
        rows = sorted(owner, key=lambda i: (full_len(i), i), reverse=True)
        for batch in _batches(rows, full_len, batch_size, max_batch_tokens):
            res = _forward_suffix(model, [reqs[i] for i in batch], [units_c[owner[i]].prefix_len for i in batch],
                                  [owner[i] for i in batch], caches, device, pad_id)
            for i, r in zip(batch, res):
                results[i] = r
            bar.update(len(batch))
        del caches
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


def release_distributed() -> None:
    """Wait for every process and destroy the process group, if one is up (call at the end of a
    multi-process script: a gloo group left to the interpreter's exit can abort a process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def score_requests(
    model,
    requests: Iterable[ScoreRequest | Mapping[str, Any]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_tokens: int | None = None,
    prefix_reuse: bool = True,
    progress: bool = True,
    desc: str = "scoring",
    distributed: bool = True,
) -> list[ScoreResult]:
    """Score ``requests`` with ``model`` (a causal LM, possibly a PEFT model); results in input order.

    ``batch_size`` bounds the rows of every forward pass and the number of prefixes cached at once;
    ``max_batch_tokens`` (optional) bounds rows × padded length. ``prefix_reuse=False`` scores every
    request in plain padded batches (same numbers, more work). With several ``accelerate`` processes
    (and ``distributed``) each scores a shard and every process returns all results.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    reqs = [as_request(r) for r in requests]
    model = _unwrap(model)
    if _is_prompt_learning(model):
        from selfrec_ft.errors import UserError

        raise UserError("prompt-learning PEFT adapters are not supported by the scoring engine (use LoRA)")
    reuse = prefix_reuse and supports_prefix_cache(model)
    units = plan_units(reqs, prefix_reuse=reuse)
    state = distributed_state() if distributed else None
    if state is not None:
        units = sorted(units, key=lambda u: u.cost(reqs), reverse=True)[state.process_index::state.num_processes]
    n_mine = sum(len(u.indices) for u in units)
    was_training = model.training
    model.eval()
    show = progress and (state is None or state.is_main_process)
    try:
        with torch.inference_mode(), tqdm(total=n_mine, desc=desc, disable=not show, unit="prompt",
                                          dynamic_ncols=True) as bar:
            mine = _score_units(model, reqs, units, batch_size, max_batch_tokens, bar)
    finally:
        model.train(was_training)
    if state is not None:
        from accelerate.utils import gather_object

        gathered = gather_object(sorted(mine.items()))
        mine = dict(gathered)
    return [mine[i] for i in range(len(reqs))]
