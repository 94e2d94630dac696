"""Judge labels through the scoring engine: a model's preference between two responses.

:func:`judge_preferences`: a judge's P(response 1 preferred) for ``{"article", "response_1",
"response_2"}`` pairs, read from the ``pairwise-preference`` template in both orders with a
:class:`~selfrec_ft.scoring.scorer.Scorer` (PROTOCOL.md §2-3)::

    P(response 1 preferred) = ½ [ p̂_fwd("1") + p̂_bwd("2") ]

*forward* shows response 1 first, *backward* shows it second. For an ``inverted`` template ("which
is worse?") the options are swapped. All prompts with the same article form one engine group (the
prefix is computed once) and, when too long for the scorer's ``max_length``, get the same
shortened article.

:func:`label_preference`: the label is 1 if P > ½, 0 if P < ½. A pair with |P − ½| ≤
:data:`TIE_TOLERANCE` is a **tie** and is dropped (the tolerance absorbs float32 rounding, so two
identical responses are a tie); a pair whose option mass is zero or not finite in either order is
**invalid** and dropped. Both are counted.

The comparisons a judge labels: :mod:`.comparisons` (a comparisons file) and
:mod:`.self_preference` (self vs other summaries, base vs fine-tuned judges).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from selfrec_ft.defaults import DEFAULT_PRESET
from selfrec_ft.errors import UserError
from selfrec_ft.prompts.templates import load_preset
from selfrec_ft.scoring.engine import ScoreRequest
from selfrec_ft.scoring.items import render_group

TEMPLATE = "pairwise-preference"
TIE_TOLERANCE = 1e-6
"""|P − ½| at most this is a tie: the engine's numbers agree with a lone forward pass only within
float32 rounding, so two identical responses give ½ ± ~1e-7 rather than exactly ½."""
TEXT_KEYS = ("article", "response_1", "response_2")


@dataclass(frozen=True)
class PairJudgement:
    """One pair as judged: ``prob`` = P(response 1 preferred) (NaN when invalid); ``p_fwd`` /
    ``p_bwd`` the normalised option probabilities of the two orders (None when that order's option
    mass is zero or not finite); ``mass_*`` the raw option masses; ``shortened``: the article was cut."""

    prob: float
    p_fwd: dict[str, float] | None
    p_bwd: dict[str, float] | None
    mass_fwd: float | None
    mass_bwd: float | None
    shortened: bool

    @property
    def valid(self) -> bool:
        return math.isfinite(self.prob)


def preference_template(preset: str = DEFAULT_PRESET, template: str = TEMPLATE):
    """The pairwise preference template (two options, article and two summaries)."""
    p = load_preset(preset)
    tmpl = p.task(template)
    if tmpl.measures != TEMPLATE:
        raise UserError(f"template {tmpl.name!r} measures {tmpl.measures!r}, not {TEMPLATE!r}", p.source)
    if len(tmpl.options) != 2:
        raise UserError(f"template {tmpl.name!r} needs exactly two options, has {list(tmpl.options)}", p.source)
    unknown = tmpl.fields - {"article", "summary1", "summary2"}
    if unknown:
        raise UserError(f"template {tmpl.name!r} needs {', '.join(sorted(unknown))}, which a judge pair does "
                        "not have (only article, summary1, summary2)", p.source)
    return tmpl


def _check_pair(i: int, pair: Mapping[str, Any]) -> None:
    for key in TEXT_KEYS:
        if not isinstance(pair.get(key), str):
            raise UserError(f"pair {i}: {key!r} must be a string")


def judge_pairs(scorer, pairs: Sequence[Mapping[str, Any]], *, preset: str = DEFAULT_PRESET,
                template: str = TEMPLATE, progress: bool = True, desc: str = "judging") -> list[PairJudgement]:
    """Score every pair in both orders with ``scorer`` (a :class:`~selfrec_ft.scoring.scorer.Scorer`:
    its batch size, token budget and ``max_length`` apply); see the module docstring."""
    tmpl = preference_template(preset, template)
    opt1, opt2 = tmpl.options
    if tmpl.inverted:  # "which is worse?": answering position 2 prefers position 1
        opt1, opt2 = opt2, opt1
    by_article: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        _check_pair(i, pair)
        by_article.setdefault(pair["article"], []).append(i)

    requests: list[ScoreRequest] = []
    slot: dict[tuple[int, str], int] = {}  # (pair, order) -> request index
    shortened = [False] * len(pairs)
    for g, (article, idx) in enumerate(by_article.items()):
        values, keys = [], []
        for i in idx:
            r1, r2 = pairs[i]["response_1"], pairs[i]["response_2"]
            for order, (s1, s2) in (("fwd", (r1, r2)), ("bwd", (r2, r1))):
                v = {"article": article, "summary1": s1, "summary2": s2}
                values.append({k: x for k, x in v.items() if k in tmpl.fields})
                keys.append((i, order))
        for key, rp in zip(keys, render_group(scorer.tokenizer, tmpl, values, scorer.max_length)):
            slot[key] = len(requests)
            requests.append(ScoreRequest(rp.input_ids, rp.option_ids, group=("judge", tmpl.name, g)))
            shortened[key[0]] |= rp.shortened
    results = scorer.score(requests, progress=progress, desc=desc)

    out = []
    for i in range(len(pairs)):
        fwd, bwd = results[slot[i, "fwd"]], results[slot[i, "bwd"]]
        prob = float("nan")
        if fwd.p_hat is not None and bwd.p_hat is not None:
            prob = 0.5 * (fwd.p_hat[opt1] + bwd.p_hat[opt2])
        out.append(PairJudgement(prob, fwd.p_hat, bwd.p_hat, fwd.option_mass, bwd.option_mass, shortened[i]))
    return out


def judge_preferences(scorer, pairs: Sequence[Mapping[str, Any]], **kwargs) -> list[float]:
    """P(response 1 preferred) per pair, ½[p̂_fwd("1") + p̂_bwd("2")]; NaN for an invalid pair.
    ``kwargs`` go to :func:`judge_pairs` (``preset``, ``template``, ``progress``)."""
    return [j.prob for j in judge_pairs(scorer, pairs, **kwargs)]


def judge_and_release(scorer, pairs: Sequence[Mapping[str, Any]], **kwargs) -> list[PairJudgement]:
    """:func:`judge_pairs`, then let a model the scorer loaded go (so the next judge never shares
    the GPU with it)."""
    try:
        return judge_pairs(scorer, pairs, **kwargs)
    finally:
        scorer.close()


def label_preference(prob: float) -> int | None:
    """1 if response 1 is preferred, 0 if response 2, None for a tie or an invalid (NaN) pair."""
    if not math.isfinite(prob) or abs(prob - 0.5) <= TIE_TOLERANCE:
        return None
    return int(prob > 0.5)


def drop_reason(prob: float) -> str | None:
    """``"invalid"``, ``"tie"`` or None (labelled)."""
    if not math.isfinite(prob):
        return "invalid"
    return "tie" if label_preference(prob) is None else None


def judgement_fields(j: PairJudgement) -> dict[str, Any]:
    return {"judge_prob": j.prob if j.valid else None, "judge_option_mass": [j.mass_fwd, j.mass_bwd],
            "shortened": j.shortened}
