"""What the scoring engine is asked and what it answers: :class:`ScoreRequest`, :class:`ScoreResult`.

Their own module, below both the engine (:mod:`~selfrec_ft.scoring.engine`) and its planner
(:mod:`~selfrec_ft.scoring.packing`), so the two never import each other. Standard library only;
:mod:`selfrec_ft.scoring.engine` re-exports both names.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ScoreRequest:
    """What to score. ``option_ids`` are read at the position after ``prompt_ids``; ``span_ids`` (if
    given) are scored as a continuation of the prompt. ``group`` marks prompts sharing a prefix.
    ``summary_spans`` (``{"self": (start, end), "other": ...}``, token positions in ``prompt_ids``)
    say where the prompt's summaries are, for layer hooks that act on them (steering)."""

    prompt_ids: list[int]
    option_ids: dict[str, int] = field(default_factory=dict)
    group: Hashable | None = None
    span_ids: list[int] | None = None
    summary_spans: dict[str, tuple[int, int]] | None = None


@dataclass
class ScoreResult:
    """``probs``: raw p(o), softmax over the full vocabulary; ``p_hat``: p(o)/Σp (None when the mass
    is zero or not finite); ``option_mass``: Σp; ``mean_logprob``: mean log p of the span tokens;
    ``recorded``: what the call's layer hooks recorded for the request (:func:`score_requests`)."""

    probs: dict[str, float] | None = None
    p_hat: dict[str, float] | None = None
    option_mass: float | None = None
    mean_logprob: float | None = None
    n_span_tokens: int = 0
    recorded: Any = None  # what layer hooks recorded for this request (e.g. activations), if anything


def as_request(r: ScoreRequest | Mapping[str, Any]) -> ScoreRequest:
    """A :class:`ScoreRequest` from itself or a mapping with the same keys (validated)."""
    if not isinstance(r, ScoreRequest):
        spans = r.get("summary_spans")
        r = ScoreRequest(prompt_ids=list(r["prompt_ids"]), option_ids=dict(r.get("option_ids") or {}),
                         group=r.get("group"), span_ids=None if r.get("span_ids") is None else list(r["span_ids"]),
                         summary_spans=None if spans is None else {k: tuple(v) for k, v in spans.items()})
    if not r.prompt_ids:
        raise ValueError("a scoring request needs at least one prompt token")
    if not r.option_ids and not r.span_ids:
        raise ValueError("a scoring request needs option_ids or a non-empty span_ids")
    for role, (a, b) in (r.summary_spans or {}).items():
        if not 0 <= a < b <= len(r.prompt_ids):
            raise ValueError(f"summary span {role!r} ({a}, {b}) is not inside the prompt's {len(r.prompt_ids)} tokens")
    return r
