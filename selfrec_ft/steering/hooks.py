"""Forward hooks on decoder layers that act on, or read, chosen tokens of each scoring request.

Both kinds run inside the one scoring engine (:func:`selfrec_ft.scoring.engine.score_requests`,
``layer_hooks=``), on its packed rows (shared prefixes, several requests per row) and its plain
padded batches alike, with PEFT adapters and under ``accelerate``. The engine tells the hooks before
every forward which requests own which tokens at which positions (``set_rows``: per batch row a list
of :class:`~selfrec_ft.scoring.packing.Span`), so a hook turns "tokens ``[a, b)`` of request ``i``"
into row indices without knowing how the row was packed. "The residual stream at layer ``L``" is the
output of decoder layer ``L`` (0-based): transformers' ``hidden_states[L + 1]``, except that for the
last layer transformers reports it after the final norm and the hooks see it before.

* :class:`Intervention` changes the output of chosen layers at each request's chosen tokens:
  ``add`` a vector at the tokens of one summary (``target``: ``self`` / ``other``), or ``scale`` the
  component along a unit direction by λ from the first summary's first token to the end. The engine
  keeps every intervened token out of shared prefixes (``shared_limit``), and the hook refuses a
  shared span it would touch. ``add`` with a zero vector and ``scale`` with λ = 1 leave every number
  unchanged.
* :class:`Recorder` sums the layers' outputs over regions of each request (``self`` / ``other``
  summary tokens, the ``answer`` position) and hands back per-request means (``ScoreResult.recorded``).

Hooks are registered when the engine enters :meth:`LayerHooks.attach` and removed when it leaves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from selfrec_ft.errors import UserError
from selfrec_ft.scoring.packed_attention import base_model
from selfrec_ft.scoring.packing import Span, full_ids

ROLES = ("self", "other")
ANSWER = "answer"


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM (inside PEFT / DDP wrappers): the ``ModuleList`` named
    ``layers`` (or ``h``, ``blocks``) with ``config.num_hidden_layers`` entries."""
    base = base_model(model)
    n = getattr(base.config, "num_hidden_layers", None)
    for name, module in base.named_modules():
        if (isinstance(module, torch.nn.ModuleList) and len(module) == n
                and name.rsplit(".", 1)[-1] in ("layers", "h", "blocks")):
            return module
    raise ValueError(f"cannot find the decoder layers of {type(base).__name__}")


def num_layers(model) -> int:
    return len(decoder_layers(model))


def check_layers(layers: Sequence[int], n: int) -> tuple[int, ...]:
    """``layers`` as a sorted tuple, each in ``0 .. n - 1`` (a one-line error otherwise)."""
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise UserError(f"layer {bad[0]} does not exist: the model has {n} decoder layers (0..{n - 1})")
    if not layers:
        raise UserError("no layer given")
    return tuple(sorted(set(int(x) for x in layers)))


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class LayerHooks:
    """What the engine needs of layer hooks (see :func:`selfrec_ft.scoring.engine.score_requests`).

    Subclasses say which token positions of a request they use (:meth:`positions`), whether those
    must stay out of shared prefixes (``intervenes``) and what to do at a layer (:meth:`apply`)."""

    intervenes = False

    def __init__(self, layers: Sequence[int]):
        self.layers = tuple(sorted(set(int(x) for x in layers)))
        self._requests: Sequence[Any] = ()
        self._rows: list[list[Span]] = []
        self._index: dict[str, Any] = {}

    # ------------------------------------------------------------------------- per request

    def positions(self, request) -> dict[str, tuple[int, int]]:
        """Named ranges ``[start, end)`` of token positions of ``request`` the hooks use."""
        raise NotImplementedError

    def shared_limit(self, request) -> int | None:
        """The first position of ``request`` that must not sit in a prefix shared with other requests
        (None: anything may be shared). Interventions: their first intervened token."""
        if not self.intervenes:
            return None
        starts = [a for a, _ in self.positions(request).values()]
        return min(starts) if starts else None

    # ------------------------------------------------------------------------- the engine's calls

    @contextlib.contextmanager
    def attach(self, model, requests: Sequence[Any]) -> Iterator[None]:
        """Register a forward hook on each chosen decoder layer for the duration of the block."""
        layers = decoder_layers(model)
        check_layers(self.layers, len(layers))
        self.check(base_model(model))
        self.bind(requests)
        handles = [layers[i].register_forward_hook(self._hook(i)) for i in self.layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self._rows, self._index = [], {}

    def bind(self, requests: Sequence[Any]) -> None:
        """Take the call's requests (their positions are looked up once) before any forward."""
        self._requests = requests
        self._ranges = [self.positions(r) for r in requests]
        self.begin(requests)

    def set_rows(self, rows: list[list[Span]]) -> None:
        """The token map of the next forward: per batch row, which requests own which tokens."""
        self._rows = rows
        b_idx, t_idx, slots, names = [], [], [], []
        slot_of: dict[tuple[int, str], int] = {}
        for b, spans in enumerate(rows):
            for sp in spans:
                for i in sp.requests:
                    for name, (lo, hi) in self._ranges[i].items():
                        a, z = max(lo, sp.position), min(hi, sp.position + sp.end - sp.start)
                        if a >= z:
                            continue
                        if self.intervenes and len(sp.requests) > 1:
                            raise RuntimeError(f"request {i}: intervened tokens {a}..{z - 1} lie in a prefix "
                                               "shared with other requests")
                        key = (i, name)
                        if key not in slot_of:
                            slot_of[key] = len(names)
                            names.append(key)
                        n = z - a
                        b_idx.extend([b] * n)
                        t_idx.extend(range(sp.start + a - sp.position, sp.start + z - sp.position))
                        slots.extend([slot_of[key]] * n)
        self._index = {"b": torch.tensor(b_idx, dtype=torch.long), "t": torch.tensor(t_idx, dtype=torch.long),
                       "slot": torch.tensor(slots, dtype=torch.long), "names": names, "devices": {}}

    def _indices(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = self._index["devices"]
        if device not in cache:
            cache[device] = tuple(self._index[k].to(device) for k in ("b", "t", "slot"))
        return cache[device]

    def _hook(self, layer: int):
        def hook(module, args, output):
            if not self._index or not self._index["names"]:
                return None
            hidden = _hidden(output)
            b, t, slot = self._indices(hidden.device)
            new = self.apply(layer, hidden, b, t, slot)
            return None if new is None else _replace_hidden(output, new)

        return hook

    # ------------------------------------------------------------------------- subclass hooks

    def check(self, model) -> None:
        """Called with the (unwrapped) model before the hooks are registered: refuse a mismatch."""

    def begin(self, requests: Sequence[Any]) -> None:
        """Called once per engine call, before any forward."""

    def apply(self, layer: int, hidden: torch.Tensor, b: torch.Tensor, t: torch.Tensor, slot: torch.Tensor
              ) -> torch.Tensor | None:
        """The layer's new output (None: unchanged) given the selected tokens ``hidden[b, t]``."""
        raise NotImplementedError

    def take(self, index: int) -> Any:
        """What was recorded for request ``index`` (None for interventions)."""
        return None


# ----------------------------------------------------------------------------- interventions


class Intervention(LayerHooks):
    """``add``: ``hidden[tokens of the target summary] += vectors[layer]``; ``scale``: along the unit
    ``vectors[layer]``, ``h ← h + (λ − 1)(h·u)u`` at every token from the first summary's start to
    the end of the sequence. Requests without option ids (span-only requests, e.g. familiarity) are
    left alone; a request with options but no summary positions cannot be steered (error)."""

    intervenes = True

    def __init__(self, mode: str, vectors: Mapping[int, torch.Tensor], *, target: str | None = None,
                 lam: float = 1.0):
        super().__init__(vectors.keys())
        if mode not in ("add", "scale"):
            raise ValueError(f"unknown intervention mode {mode!r}")
        if mode == "add" and target not in ROLES:
            raise UserError(f"an add intervention needs a target summary ({' or '.join(ROLES)}), got {target!r}")
        self.mode, self.target, self.lam = mode, target, float(lam)
        self.vectors = {int(k): torch.as_tensor(v, dtype=torch.float32).flatten() for k, v in vectors.items()}
        self._cast: dict[tuple[int, Any, Any], torch.Tensor] = {}

    def positions(self, request) -> dict[str, tuple[int, int]]:
        if not request.option_ids:
            return {}
        spans = request.summary_spans
        if spans is None:
            raise UserError("a prompt's summary token positions are unknown (they need a fast tokenizer with "
                            "offsets and a chat template that keeps the prompt's text); it cannot be steered")
        if self.mode == "add":
            return {"target": spans[self.target]} if self.target in spans else {}
        if not spans:
            return {}
        return {"after": (min(a for a, _ in spans.values()), len(full_ids(request)))}

    def check(self, model) -> None:
        size = getattr(model.config, "hidden_size", None)
        for layer, v in self.vectors.items():
            if size is not None and v.numel() != size:
                raise UserError(f"the steering direction at layer {layer} has {v.numel()} dimensions but the model's "
                                f"residual stream has {size}: the directions were fitted on another model")

    def _vector(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        key = (layer, hidden.device, hidden.dtype)
        if key not in self._cast:
            self._cast[key] = self.vectors[layer].to(hidden.device)
        return self._cast[key]

    def apply(self, layer, hidden, b, t, slot):
        u = self._vector(layer, hidden)
        if self.mode == "add":
            delta = u.to(hidden.dtype).expand(len(t), -1)
        else:
            proj = hidden[b, t].float() @ u
            delta = (((self.lam - 1.0) * proj)[:, None] * u[None, :]).to(hidden.dtype)
        return hidden.index_put((b, t), delta, accumulate=True)


# ----------------------------------------------------------------------------- recording


class Recorder(LayerHooks):
    """Per request and layer, the mean output over each region: the ``self`` and ``other`` summary
    tokens and the ``answer`` position (the prompt's last token, where the option is read).
    ``take(i)`` gives ``{"layers": {layer: {region: float32 array}}, "n_tokens": {region: n}}``."""

    def __init__(self, layers: Sequence[int], regions: Sequence[str] = (*ROLES, ANSWER)):
        super().__init__(layers)
        self.regions = tuple(regions)
        self._sums: dict[tuple[int, str], dict[int, torch.Tensor]] = {}

    def positions(self, request) -> dict[str, tuple[int, int]]:
        out = {}
        for name in self.regions:
            if name == ANSWER:
                if request.option_ids:
                    n = len(request.prompt_ids)
                    out[name] = (n - 1, n)
            elif request.summary_spans and name in request.summary_spans:
                out[name] = tuple(request.summary_spans[name])
        return out

    def begin(self, requests):
        self._sums = {}

    def apply(self, layer, hidden, b, t, slot):
        names = self._index["names"]
        sums = torch.zeros(len(names), hidden.shape[-1], dtype=torch.float32, device=hidden.device)
        sums.index_add_(0, slot, hidden[b, t].float())
        sums = sums.cpu()
        for k, key in enumerate(names):
            acc = self._sums.setdefault(key, {})
            acc[layer] = sums[k] if layer not in acc else acc[layer] + sums[k]
        return None

    def take(self, index: int) -> dict[str, Any] | None:
        ranges = self._ranges[index]
        if not ranges:
            return None
        out: dict[str, Any] = {"layers": {layer: {} for layer in self.layers},
                               "n_tokens": {name: hi - lo for name, (lo, hi) in ranges.items()}}
        for name, (lo, hi) in ranges.items():
            acc = self._sums.pop((index, name), {})
            for layer in self.layers:
                if layer not in acc:
                    raise RuntimeError(f"request {index}: no activations recorded for {name!r} at layer {layer}")
                out["layers"][layer][name] = (acc[layer] / (hi - lo)).numpy().astype(np.float32)
        return out
