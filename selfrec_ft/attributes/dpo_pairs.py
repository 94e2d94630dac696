"""DPO preference pairs that inject or remove one attribute while matching the others.

For each article the evaluator has several candidate summaries. For a target property and a
direction (``inject``: the chosen summary has *more* of it; ``remove``: *less*), every ordered pair
(chosen c, rejected r) of distinct candidates is **usable** when

* P2's comparison feature of the target for (c, r) is +1 (inject) or -1 (remove), i.e. the gap is
  beyond the measure's tie tolerance (``lengthy``: P2's thresholded word-count rule), and
* the oriented target gap ``g = s * (v_c - v_r)`` (s = +1 inject, -1 remove; values oriented so
  that higher = more of the property) is at least ``min_gap``.

Among usable pairs the one with the lowest **cost** is chosen::

    cost = sqrt( sum_k w_k * ((x_k(c) - x_k(r)) / sd_k)^2 )  -  gap_weight * g / sd_target

over the control measures k (by default every other deterministic measure), where ``sd_k`` is the
standard deviation of measure k over all candidates of all articles (1 where it is 0), ``w_k`` is
4 for ``lengthy`` and 1 for the others unless ``weights`` says otherwise. The first term is a
weighted standardised distance (matching, length above all); the second rewards a larger target
gap. Ties go to the larger gap, then the lower candidate indices. With ``pairs_per_article`` K > 1
the K lowest-cost pairs are taken greedily with no candidate used twice in one article.

Articles with fewer than two candidates, or without a usable pair, are skipped and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from selfrec_ft.attributes.measures import LENGTHY, MEASURES
from selfrec_ft.attributes.registry import Property, compare_scores, deterministic_properties, get_property
from selfrec_ft.errors import UserError

Direction = Literal["inject", "remove"]
Messages = list[dict[str, str]]

DEFAULT_LENGTH_WEIGHT = 4.0
DEFAULT_GAP_WEIGHT = 0.25


@dataclass
class DPOSelection:
    """The selected pairs as a TRL conversational preference dataset, and the matching report
    (a JSON-ready dict for ``matching.json``)."""

    dataset: Any  # datasets.Dataset
    report: dict


def diff_column(prop: Property) -> str:
    """Metadata column with the chosen - rejected difference of a control property."""
    return f"diff_{prop.slug}"


def _messages(prompt: Callable[[str], Messages] | Mapping[str, Messages], article_id: str) -> Messages:
    if callable(prompt):
        msgs = prompt(article_id)
    else:
        if article_id not in prompt:
            raise UserError(f"no prompt messages for article {article_id!r}")
        msgs = prompt[article_id]
    if not isinstance(msgs, (list, tuple)) or not msgs:
        raise UserError(f"prompt for article {article_id!r} must be a non-empty list of messages")
    out = []
    for m in msgs:
        if (
            not isinstance(m, Mapping)
            or set(m) != {"role", "content"}
            or not all(isinstance(m[k], str) for k in ("role", "content"))
        ):
            raise UserError(
                f"prompt for article {article_id!r}: each message must be {{'role': str, 'content': str}}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _values(
    candidates: Mapping[str, Sequence[str]],
    props: list[Property],
    scores: Mapping[str, Sequence[Mapping[str, float]]] | None,
    progress: bool,
) -> dict[str, np.ndarray]:
    """Per article, an array (n_candidates, n_props) of property values."""
    out = {}
    for aid, texts in tqdm(candidates.items(), desc="measuring candidates", unit="article",
                           disable=not progress):
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise UserError(f"candidates of article {aid!r} must be a list of strings")
        given = None if scores is None else scores.get(aid)
        if given is not None and len(given) != len(texts):
            raise UserError(f"scores of article {aid!r}: {len(given)} entries for {len(texts)} candidates")
        arr = np.empty((len(texts), len(props)), dtype=float)
        for i, text in enumerate(texts):
            for k, p in enumerate(props):
                if given is not None and p.name in given[i]:
                    arr[i, k] = float(given[i][p.name])
                elif p.name in MEASURES:
                    arr[i, k] = MEASURES[p.name](text)
                else:
                    raise UserError(
                        f"property {p.name!r} needs a judge: pass its scores for article {aid!r}"
                    )
        if not np.all(np.isfinite(arr)):
            raise UserError(f"non-finite property value among the candidates of article {aid!r}")
        out[aid] = arr
    return out


def _smd(chosen: np.ndarray, rejected: np.ndarray) -> float | None:
    """Standardised mean difference, (mean_c - mean_r) / sqrt((var_c + var_r) / 2), sample
    variances; 0 when both groups are constant and equal; None when undefined."""
    if len(chosen) < 2:
        return None
    diff = float(chosen.mean() - rejected.mean())
    pooled = math.sqrt((chosen.var(ddof=1) + rejected.var(ddof=1)) / 2.0)
    if pooled == 0.0:
        return 0.0 if diff == 0.0 else None
    return diff / pooled


def select_dpo_pairs(
    candidates: Mapping[str, Sequence[str]],
    target: str,
    direction: Direction,
    prompt: Callable[[str], Messages] | Mapping[str, Messages],
    *,
    pairs_per_article: int = 1,
    controls: Sequence[str] | None = None,
    weights: Mapping[str, float] | None = None,
    gap_weight: float = DEFAULT_GAP_WEIGHT,
    min_gap: float = 0.0,
    scores: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
    progress: bool = True,
) -> DPOSelection:
    """Choose DPO (chosen, rejected) pairs per article; see the module docstring for the objective.

    ``candidates``: article id -> the evaluator's candidate summaries (in a fixed order).
    ``target``: P2 name or slug of the property to inject or remove. ``prompt``: a function of the
    article id, or a mapping, giving the generation prompt messages. ``controls``: properties to
    match (default: every deterministic property other than the target). ``weights``: per control
    (name or slug) weight. ``scores``: optional precomputed values, article id -> one
    ``{P2 name: value}`` per candidate, used instead of (or, for judge properties, in the absence
    of) a deterministic measure.

    Returns the dataset (columns ``prompt``, ``chosen``, ``rejected``, ``article_id``,
    ``chosen_index``, ``rejected_index``, ``target_chosen``, ``target_rejected``, ``target_gap``
    and one ``diff_<slug>`` per control) and the matching report.
    """
    if direction not in ("inject", "remove"):
        raise UserError(f"direction must be 'inject' or 'remove', not {direction!r}")
    if not isinstance(pairs_per_article, int) or pairs_per_article < 1:
        raise UserError(f"pairs_per_article must be a positive integer, not {pairs_per_article!r}")
    if not (math.isfinite(gap_weight) and gap_weight >= 0):
        raise UserError(f"gap_weight must be a finite number >= 0, not {gap_weight!r}")
    if not (math.isfinite(min_gap) and min_gap >= 0):
        raise UserError(f"min_gap must be a finite number >= 0, not {min_gap!r}")
    tprop = get_property(target)
    if controls is None:
        cprops = [p for p in deterministic_properties() if p.name != tprop.name]
    else:
        cprops = []
        for c in controls:
            p = get_property(c)
            if p.name == tprop.name:
                raise UserError(f"the target {p.name!r} cannot also be a control")
            if p not in cprops:
                cprops.append(p)
    w = {p.name: (DEFAULT_LENGTH_WEIGHT if p.name == LENGTHY else 1.0) for p in cprops}
    for key, value in (weights or {}).items():
        p = get_property(key)
        if p.name not in w:
            raise UserError(f"weight given for {p.name!r}, which is not a control")
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"weight of {p.name!r} must be a finite number >= 0, not {value!r}")
        w[p.name] = float(value)
    sign = 1.0 if direction == "inject" else -1.0
    want = 1 if direction == "inject" else -1
    orient = 1.0 if tprop.higher_is_better else -1.0

    props = [tprop] + cprops
    values = _values(candidates, props, scores, progress)
    pooled = np.concatenate([np.empty((0, len(props)))] + list(values.values()), axis=0)
    sd = pooled.std(axis=0) if len(pooled) else np.ones(len(props))
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    cw = np.array([w[p.name] for p in cprops], dtype=float)

    rows: list[dict] = []
    pair_values: list[tuple[np.ndarray, np.ndarray]] = []  # control values (chosen, rejected)
    skipped = {"too_few_candidates": [], "no_usable_pair": []}
    for aid, arr in values.items():
        n = len(arr)
        if n < 2:
            skipped["too_few_candidates"].append(aid)
            continue
        options = []
        for i in range(n):
            for j in range(n):
                if i == j or compare_scores(tprop.name, arr[i, 0], arr[j, 0]) != want:
                    continue
                gap = sign * orient * (arr[i, 0] - arr[j, 0])
                if gap < min_gap:
                    continue
                dist = math.sqrt(float(np.sum(cw * ((arr[i, 1:] - arr[j, 1:]) / sd[1:]) ** 2)))
                options.append((dist - gap_weight * gap / sd[0], -gap, i, j))
        if not options:
            skipped["no_usable_pair"].append(aid)
            continue
        options.sort()
        used: set[int] = set()
        picked = []
        for _, neg_gap, i, j in options:
            if i in used or j in used:
                continue
            used.update((i, j))
            picked.append((i, j, -neg_gap))
            if len(picked) == pairs_per_article:
                break
        msgs = _messages(prompt, aid)
        texts = candidates[aid]
        for i, j, gap in picked:
            row = {
                "prompt": msgs,
                "chosen": [{"role": "assistant", "content": texts[i]}],
                "rejected": [{"role": "assistant", "content": texts[j]}],
                "article_id": str(aid),
                "chosen_index": i,
                "rejected_index": j,
                "target_chosen": float(arr[i, 0]),
                "target_rejected": float(arr[j, 0]),
                "target_gap": float(gap),
            }
            for k, p in enumerate(cprops, start=1):
                row[diff_column(p)] = float(arr[i, k] - arr[j, k])
            rows.append(row)
            pair_values.append((arr[i, 1:], arr[j, 1:]))

    report = _report(tprop, direction, cprops, rows, pair_values, skipped, len(values),
                     pairs_per_article, w, gap_weight, min_gap, sd, props)
    return DPOSelection(_dataset(rows, cprops), report)


def _dataset(rows: list[dict], cprops: list[Property]):
    from datasets import Dataset, Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    features = Features(
        {
            "prompt": List(message),
            "chosen": List(message),
            "rejected": List(message),
            "article_id": Value("string"),
            "chosen_index": Value("int64"),
            "rejected_index": Value("int64"),
            "target_chosen": Value("float64"),
            "target_rejected": Value("float64"),
            "target_gap": Value("float64"),
            **{diff_column(p): Value("float64") for p in cprops},
        }
    )
    if not rows:
        return Dataset.from_dict({name: [] for name in features}, features=features)
    return Dataset.from_list(rows, features=features)


def _report(tprop, direction, cprops, rows, pair_values, skipped, n_articles, k, weights, gap_weight,
            min_gap, sd, props) -> dict:
    gaps = np.array([r["target_gap"] for r in rows], dtype=float)
    chosen = np.array([c for c, _ in pair_values], dtype=float).reshape(len(rows), len(cprops))
    rejected = np.array([r for _, r in pair_values], dtype=float).reshape(len(rows), len(cprops))
    matching = {}
    for idx, p in enumerate(cprops):
        c, r_ = chosen[:, idx], rejected[:, idx]
        comps = [compare_scores(p.name, a, b) for a, b in zip(c, r_)]
        matching[p.name] = {
            "slug": p.slug,
            "mean_chosen": float(c.mean()) if len(c) else None,
            "mean_rejected": float(r_.mean()) if len(r_) else None,
            "mean_diff": float((c - r_).mean()) if len(c) else None,
            "mean_abs_diff": float(np.abs(c - r_).mean()) if len(c) else None,
            "smd": _smd(c, r_),
            "comparison_counts": {str(v): comps.count(v) for v in (-1, 0, 1)},
            "tied_share": comps.count(0) / len(comps) if comps else None,
        }
    n_skipped = sum(len(v) for v in skipped.values())
    return {
        "target": tprop.name,
        "target_slug": tprop.slug,
        "direction": direction,
        "pairs_per_article": k,
        "n_articles": n_articles,
        "n_articles_used": len({r["article_id"] for r in rows}),
        "n_pairs": len(rows),
        "n_skipped": n_skipped,
        "skipped": {reason: len(ids) for reason, ids in skipped.items()},
        "skipped_article_ids": {reason: [str(a) for a in ids] for reason, ids in skipped.items()},
        "target_gap": {
            "mean": float(gaps.mean()) if len(gaps) else None,
            "min": float(gaps.min()) if len(gaps) else None,
            "max": float(gaps.max()) if len(gaps) else None,
            "mean_standardised": float(gaps.mean() / sd[0]) if len(gaps) else None,
        },
        "matching": matching,
        "objective": {
            "cost": "sqrt(sum_k w_k * (d_k / sd_k)^2) - gap_weight * gap / sd_target; "
                    "usable pairs: target comparison feature in the intended direction and gap >= min_gap",
            "weights": {name: float(v) for name, v in weights.items()},
            "gap_weight": float(gap_weight),
            "min_gap": float(min_gap),
            "scales_sd": {p.name: float(s) for p, s in zip(props, sd)},
        },
    }
