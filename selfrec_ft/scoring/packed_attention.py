"""Packed-row attention: many sequences in one row, without padding, sharing their prefixes.

A *packed row* holds several sequences back to back. Each *family* in the row is a shared prefix
(the *root*, e.g. the system prompt, instructions and article of one task and article) followed
directly by its *children* (each request's own remainder, or each training example's branch). Every
root token attends causally to its root; every child token attends to the whole root and causally to
its own child, exactly the keys it would see if its sequence ran alone (the position ids restart at
the root's length for every child, so rotary positions agree as well). A family's root may instead
live in an earlier forward: its keys and values are then taken from a :class:`PrefixStore` (the
scoring engine stores the root of a group whose children span several rows).

The attention function is registered with transformers' ``AttentionInterface`` under :data:`NAME`
(and the matching mask function under ``AttentionMaskInterface``), so a model runs it through its
own attention modules (Llama-like models, plain or PEFT-wrapped); nothing in transformers is patched.
The layout travels with the forward call as the keyword argument ``selfrec_layout`` (a
:class:`PackedLayout`), which transformers passes unchanged to every decoder layer and attention
module; a forward without it is plain ``sdpa`` attention. Two ways to compute a family's children:

* ``cascade`` (CPU, :class:`CascadeRows`): the children's queries against the root's keys as one
  attention (one pass over the shared keys), each child causally against itself, the two merged by
  their log-sum-exp. No key is copied and no masked-out score is computed; the backward is exact,
  through the CPU flash kernel's backward.
* ``mask`` (GPUs, other devices): one ``scaled_dot_product_attention`` of the children's queries against
  ``[root keys | children keys]`` with a boolean mask (root: all; children: block-diagonal causal);
  differentiable, any device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

NAME = "selfrec_packed"
LAYOUT_KWARG = "selfrec_layout"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
"""Model types whose attention is softmax(q·kᵀ·scaling)·v over rotary-embedded keys, computed by the
attention interface with nothing else (no soft-capping, sinks, biases or sliding windows)."""


@dataclass(frozen=True)
class Family:
    """A root span ``[start, root_end)`` of a row followed by children ending at ``bounds`` (each child
    is ``[previous bound, bound)``, the first starts at ``root_end``). ``external`` names a root held in
    a :class:`PrefixStore` instead (then ``start == root_end``: the row holds the children only);
    ``capture`` names the store entry the root's keys and values are written to."""

    start: int
    root_end: int
    bounds: tuple[int, ...] = ()
    external: Any = None
    capture: Any = None

    @property
    def end(self) -> int:
        return self.bounds[-1] if self.bounds else self.root_end


@dataclass
class PrefixStore:
    """Keys and values of roots computed in one forward and attended to in later ones:
    ``entries[key][layer] = (keys, values)`` shaped ``[1, kv_heads, length, head_dim]``."""

    entries: dict[Any, dict[int, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    def drop(self, key) -> None:
        self.entries.pop(key, None)


@dataclass
class PackedLayout:
    """The families of every row of a batch (rows are right-padded to a common length; tokens after a
    row's last family are padding and get a zero attention output). ``mode`` is ``"cascade"``,
    ``"mask"`` or ``None`` (cascade where possible: CPU without gradients). ``store`` holds external
    roots and receives captured ones."""

    rows: list[list[Family]]
    store: PrefixStore | None = None
    mode: str | None = None
    spans: list | None = None  # per row, which requests each token belongs to (scoring.packing.Span)
    _masks: dict = field(default_factory=dict, repr=False)

    def child_mask(self, family: Family, root_len: int, device) -> torch.Tensor:
        """Boolean ``[children, root + children]`` mask of a family (built once per forward)."""
        key = (family, root_len, str(device))
        mask = self._masks.get(key)
        if mask is None:
            first = family.root_end
            n = family.end - first
            child = torch.zeros(n, dtype=torch.long)
            prev = first
            for c, b in enumerate(family.bounds):
                child[prev - first: b - first] = c
                prev = b
            q = torch.arange(n)
            own = (child[None, :] == child[:, None]) & (q[None, :] <= q[:, None])
            mask = torch.cat([torch.ones(n, root_len, dtype=torch.bool), own], dim=1).to(device)
            self._masks[key] = mask
        return mask


def _with_lse(q, k, v, causal: bool, scale: float):
    """Attention output ``[1, H, T, D]`` and log-sum-exp ``[1, H, T]`` (CPU flash kernel)."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)


def _with_lse_backward(grad, q, k, v, out, lse, causal: bool, scale: float):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(grad, q, k, v, out, lse, 0.0, causal,
                                                                              scale=scale)


def _group_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[1, H, T, ...]`` -> ``[1, H / groups, groups * T, ...]``: the query heads that share a
    key head (head h = kv_head * groups + j, as ``repeat_kv`` lays them out) as one longer query."""
    if groups == 1:
        return x
    return x.reshape(x.shape[0], x.shape[1] // groups, groups * x.shape[2], *x.shape[3:])


def _ungroup_heads(x: torch.Tensor, groups: int, heads: int) -> torch.Tensor:
    if groups == 1:
        return x
    return x.reshape(x.shape[0], heads, x.shape[2] // groups, *x.shape[3:])


def _expand_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def _reduce_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x.reshape(b, h // groups, groups, t, d).sum(2)


class CascadeRows(torch.autograd.Function):
    """Packed attention of every row of a batch by cascade, on the CPU (forward and exact backward).

    Each root attends causally to itself; the children of a family attend to the root as one
    attention (one pass over the shared keys; grouped-query heads folded into the queries) and each
    child causally to itself, both by the CPU flash kernel with their log-sum-exps, merged by
    log-sum-exp. Backward, through the same kernel's backward: for a merged output
    ``O = sum_a w_a O_a`` (``w_a`` part ``a``'s share of the softmax mass) the score gradient of part
    ``a`` is ``w_a P_a (dO.v - dO.O)``: the kernel's backward for part ``a`` given ``w_a dO`` as the
    output gradient and the merged ``O`` as the output. Outputs and gradients are written into whole
    tensors (no per-slice autograd nodes); tokens after a row's last family (padding) get zeros."""

    @staticmethod
    def forward(ctx, q, k, v, layout: PackedLayout, layer: int, scale: float):
        bsz, heads, length, dim = q.shape
        groups = heads // k.shape[1]
        out_bthd = q.new_zeros(bsz, length, heads, dim)
        out = out_bthd.transpose(1, 2)
        saved = []
        for b, families in enumerate(layout.rows):
            for fam in families:
                lses = {}
                if fam.external is not None:
                    rk, rv = layout.store.entries[fam.external][layer]
                else:
                    s0, s1 = fam.start, fam.root_end
                    rk, rv = k[b:b + 1, :, s0:s1], v[b:b + 1, :, s0:s1]
                    if fam.capture is not None:
                        layout.store.entries.setdefault(fam.capture, {})[layer] = (rk.clone(), rv.clone())
                    o, lses["root"] = _with_lse(q[b:b + 1, :, s0:s1], _expand_kv(rk, groups), _expand_kv(rv, groups),
                                                True, scale)
                    out[b:b + 1, :, s0:s1] = o
                if fam.bounds:
                    first, end = fam.root_end, fam.end
                    o_root, lse_root = _with_lse(_group_heads(q[b:b + 1, :, first:end], groups), rk, rv, False, scale)
                    o_root, lse_root = _ungroup_heads(o_root, groups, heads), _ungroup_heads(lse_root, groups, heads)
                    own_o, own_lse, prev = [], [], first
                    for c in fam.bounds:
                        o, lse = _with_lse(q[b:b + 1, :, prev:c], _expand_kv(k[b:b + 1, :, prev:c], groups),
                                           _expand_kv(v[b:b + 1, :, prev:c], groups), True, scale)
                        own_o.append(o)
                        own_lse.append(lse)
                        prev = c
                    o_own, lse_own = torch.cat(own_o, dim=2), torch.cat(own_lse, dim=2)
                    lse = torch.logaddexp(lse_root, lse_own)
                    out[b:b + 1, :, first:end] = (o_root * (lse_root - lse).exp().unsqueeze(-1)
                                                  + o_own * (lse_own - lse).exp().unsqueeze(-1))
                    lses["children"], lses["own"] = lse_root, lse_own
                saved.append((b, fam, lses))
        ctx.save_for_backward(q, k, v, out_bthd)
        ctx.saved, ctx.scale = saved, scale
        return out_bthd

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out_bthd = ctx.saved_tensors
        scale, heads = ctx.scale, q.shape[1]
        groups = heads // k.shape[1]
        out, g = out_bthd.transpose(1, 2), grad.transpose(1, 2)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for b, fam, lses in ctx.saved:
            if fam.external is not None:
                raise RuntimeError("packed attention has no gradient for a root computed in an earlier forward")
            s0, s1 = fam.start, fam.root_end
            rk, rv = k[b:b + 1, :, s0:s1], v[b:b + 1, :, s0:s1]
            dq_r, dk_r, dv_r = _with_lse_backward(g[b:b + 1, :, s0:s1], q[b:b + 1, :, s0:s1], _expand_kv(rk, groups),
                                                  _expand_kv(rv, groups), out[b:b + 1, :, s0:s1], lses["root"], True,
                                                  scale)
            dq[b:b + 1, :, s0:s1] += dq_r
            dk[b:b + 1, :, s0:s1] += _reduce_kv(dk_r, groups)
            dv[b:b + 1, :, s0:s1] += _reduce_kv(dv_r, groups)
            if not fam.bounds:
                continue
            first, end = fam.root_end, fam.end
            lse_root, lse_own = lses["children"], lses["own"]
            lse = torch.logaddexp(lse_root, lse_own)
            g_c = g[b:b + 1, :, first:end].float()
            g_root = (g_c * (lse_root - lse).exp().unsqueeze(-1)).to(q.dtype)
            dq_c, dk_r, dv_r = _with_lse_backward(_group_heads(g_root, groups), _group_heads(q[b:b + 1, :, first:end],
                                                                                               groups),
                                                  rk, rv, _group_heads(out[b:b + 1, :, first:end], groups),
                                                  _group_heads(lse_root, groups), False, scale)
            dq[b:b + 1, :, first:end] += _ungroup_heads(dq_c, groups, heads)
            dk[b:b + 1, :, s0:s1] += dk_r
            dv[b:b + 1, :, s0:s1] += dv_r
            g_own = (g_c * (lse_own - lse).exp().unsqueeze(-1)).to(q.dtype)
            prev = first
            for c in fam.bounds:
                a0, a1 = prev - first, c - first
                dq_i, dk_i, dv_i = _with_lse_backward(g_own[:, :, a0:a1], q[b:b + 1, :, prev:c],
                                                      _expand_kv(k[b:b + 1, :, prev:c], groups),
                                                      _expand_kv(v[b:b + 1, :, prev:c], groups),
                                                      out[b:b + 1, :, prev:c], lse_own[:, :, a0:a1], True, scale)
                dq[b:b + 1, :, prev:c] += dq_i
                dk[b:b + 1, :, prev:c] += _reduce_kv(dk_i, groups)
                dv[b:b + 1, :, prev:c] += _reduce_kv(dv_i, groups)
                prev = c
        return dq, dk, dv, None, None, None


def _family_outputs(fam: Family, q, k, v, scale: float, groups: int, layout: PackedLayout, layer: int
                    ) -> list[torch.Tensor]:
    """Attention outputs ``[1, H, len, D]`` of a family's root (if in the row) and children, by SDPA:
    the children in one masked attention over ``[root | children]`` (any device, autograd)."""
    outs = []
    gqa = {"enable_gqa": True} if groups > 1 else {}
    if fam.external is not None:
        rk, rv = layout.store.entries[fam.external][layer]
    else:
        rk, rv = k[:, :, fam.start:fam.root_end], v[:, :, fam.start:fam.root_end]
        if fam.capture is not None:
            layout.store.entries.setdefault(fam.capture, {})[layer] = (rk.clone(), rv.clone())
        outs.append(F.scaled_dot_product_attention(q[:, :, fam.start:fam.root_end], rk, rv, is_causal=True,
                                                   scale=scale, **gqa))
    if not fam.bounds:
        return outs
    first, end = fam.root_end, fam.end
    if fam.external is not None:
        keys, values = torch.cat([rk, k[:, :, first:end]], dim=2), torch.cat([rv, v[:, :, first:end]], dim=2)
    else:
        keys, values = k[:, :, fam.start:end], v[:, :, fam.start:end]
    mask = layout.child_mask(fam, rk.shape[2], q.device)
    outs.append(F.scaled_dot_product_attention(q[:, :, first:end], keys, values, attn_mask=mask, scale=scale, **gqa))
    return outs


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """The registered attention function: the packed layout if the forward carries one, else ``sdpa``."""
    layout: PackedLayout | None = kwargs.get(LAYOUT_KWARG)
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    for name in ("softcap", "sliding_window", "s_aux", "position_bias"):
        if kwargs.get(name) is not None:
            raise ValueError(f"packed attention does not support {name!r} (use the plain path)")
    if dropout:
        raise ValueError("packed attention does not support attention dropout")
    if len(layout.rows) != query.shape[0]:
        raise ValueError(f"layout has {len(layout.rows)} rows, the batch {query.shape[0]}")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    layer = getattr(module, "layer_idx", 0)
    mode = layout.mode or ("cascade" if query.device.type == "cpu" else "mask")
    if mode == "cascade":
        return CascadeRows.apply(query, key, value, layout, layer, scale), None
    length = query.shape[2]
    rows = []
    for b, families in enumerate(layout.rows):
        q, k, v = query[b:b + 1], key[b:b + 1], value[b:b + 1]
        parts = []
        for fam in families:
            parts.extend(_family_outputs(fam, q, k, v, scale, groups, layout, layer))
        used = families[-1].end if families else 0
        if used < length:
            parts.append(q.new_zeros(1, q.shape[1], length - used, q.shape[3]))
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


_registered = False


def register() -> None:
    """Register :func:`packed_attention` (and ``sdpa``'s mask builder) under :data:`NAME` (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _registered = True


def base_model(model):
    """The ``PreTrainedModel`` inside DDP / PEFT wrappers."""
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(model, DistributedDataParallel) or type(model).__name__ == "FullyShardedDataParallel":
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def supports_packed_attention(model) -> bool:
    """Whether ``model`` can run packed rows: a decoder-only model of a supported type whose attention
    goes through transformers' attention interface, every layer full attention (no sliding window),
    no attention dropout, and no prompt-learning adapter (virtual tokens would shift every position)."""
    from transformers import DynamicCache

    peft_config = getattr(model, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        return False
    base = base_model(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "attention_dropout", 0.0):
        return False
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return False
    if getattr(config, "sliding_window", None) and config.model_type == "mistral":
        return False
    can_set = getattr(type(base), "_can_set_attn_implementation", None)
    if can_set is None or not can_set():
        return False
    try:
        cache = DynamicCache(config=config)
    except Exception:  # exotic configs: plain path
        return False
    if not cache.layers:
        return False
    flags = zip(cache.is_sliding, cache.is_linear, cache.is_dummy)
    return all(not any(f) for f in flags) and all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers)


def set_packed_attention(model) -> str | None:
    """Switch ``model`` to :data:`NAME` and return the implementation it had (for :func:`restore_attention`)."""
    register()
    base = base_model(model)
    before = base.config._attn_implementation
    if before != NAME:
        base.set_attn_implementation(NAME)
    return before


def restore_attention(model, before: str | None) -> None:
    base = base_model(model)
    if before is not None and base.config._attn_implementation != before:
        base.set_attn_implementation(before)


@contextlib.contextmanager
def packed_attention_enabled(model):
    """``with packed_attention_enabled(model):`` runs the model's attention through :data:`NAME`."""
    before = set_packed_attention(model)
    try:
        yield
    finally:
        restore_attention(model, before)
