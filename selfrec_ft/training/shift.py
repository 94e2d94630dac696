"""The shift an attribute DPO run causes: the attribute in the model's own summaries, and its
self-recognition and self-preference, before and after, with article-bootstrap intervals.

* :func:`attribute_shift`: per-article attribute values before and after (the same held-out
  articles) -> mean and CI of each, the paired difference, and the relative change
  ``mean_after / mean_before - 1`` with a paired bootstrap CI (articles resampled).
* :func:`judgement_shift`: scoring rows (``examples.jsonl``) of the pre-DPO model judging its
  pre-DPO summaries and of the post-DPO model judging its post-DPO summaries -> recognition and
  preference before and after on the same other sources, the paired per-pair change, per other
  source, and the post-DPO model's scores against its own pre-DPO summaries.
* :func:`render_shift_markdown`: ``shift.md`` from the ``shift.json`` dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from selfrec_ft import markdown as md
from selfrec_ft.stats import cluster_bootstrap_mean, finite_or_none

MEASURES = ("recognition", "preference")
DOMAIN_LABELS = {"in_domain": "in-domain", "out_of_domain": "out-of-domain"}


def mean_ci(values: Sequence[float], clusters: Sequence[Any], n_resamples: int = 2000, seed: int = 0
            ) -> dict[str, Any]:
    """``{"mean", "ci95", "n"}`` with a cluster (article) bootstrap; empty input gives Nones."""
    if len(values) == 0:
        return {"mean": None, "ci95": None, "n": 0}
    m, (lo, hi) = cluster_bootstrap_mean(values, clusters, n_resamples=n_resamples, seed=seed)
    return {"mean": m, "ci95": [lo, hi], "n": len(values)}


def relative_change(before: float | None, after: float | None) -> float | None:
    """``after / before - 1``; None when undefined (a missing or zero ``before``)."""
    if before is None or after is None or before == 0:
        return None
    return finite_or_none(after / before - 1.0)


def _relative_ci(before: np.ndarray, after: np.ndarray, n_resamples: int, seed: int) -> list[float] | None:
    """Percentile CI of mean(after)/mean(before) - 1 over articles resampled in pairs."""
    if len(before) < 2 or (np.ptp(before) == 0 and np.ptp(after) == 0):
        r = relative_change(float(before.mean()), float(after.mean())) if len(before) else None
        return None if r is None else [r, r]

    def stat(b, a, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.mean(a, axis=axis) / np.mean(b, axis=axis) - 1.0

    res = sps.bootstrap((before, after), stat, paired=True, vectorized=True, n_resamples=n_resamples,
                        confidence_level=0.95, method="percentile", rng=np.random.default_rng(seed))
    lo, hi = finite_or_none(res.confidence_interval.low), finite_or_none(res.confidence_interval.high)
    return None if lo is None or hi is None else [lo, hi]


def attribute_shift(before: Mapping[str, float], after: Mapping[str, float], n_resamples: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """Attribute values per article id before and after -> the shift on the articles in both.

    Returns ``{"before": {mean, ci95, n}, "after": {...}, "difference": {mean, ci95, n}
    (after - before, paired by article), "relative_change", "relative_change_ci95", "n_articles"}``.
    """
    ids = [a for a in before if a in after]
    b = np.array([float(before[a]) for a in ids], dtype=float)
    a = np.array([float(after[i]) for i in ids], dtype=float)
    out = {
        "before": mean_ci(b, ids, n_resamples, seed),
        "after": mean_ci(a, ids, n_resamples, seed),
        "difference": mean_ci(a - b, ids, n_resamples, seed),
        "n_articles": len(ids),
    }
    out["relative_change"] = relative_change(out["before"]["mean"], out["after"]["mean"])
    out["relative_change_ci95"] = _relative_ci(b, a, n_resamples, seed) if ids else None
    return out


# --------------------------------------------------------------------------------------------------
# recognition / preference


def _summary(scores: Sequence[Mapping[str, Any]], n_resamples: int, seed: int) -> dict[str, Any]:
    from selfrec_ft.scoring.metrics import pairwise_summary

    s = pairwise_summary(scores, seed=seed, n_resamples=n_resamples)
    return {k: s.get(k) for k in ("mean", "ci95", "n", "accuracy", "invalid", "position_biased")}


def judgement_shift(rows_before: Sequence[Mapping[str, Any]], rows_after: Sequence[Mapping[str, Any]],
                    others: Sequence[str], self_before: str | None = None, n_resamples: int = 2000,
                    seed: int = 0) -> dict[str, dict[str, Any]]:
    """Recognition and preference before and after, on the same ``others``.

    ``rows_before``: the pre-DPO model's scoring rows (self = its pre-DPO summaries);
    ``rows_after``: the post-DPO model's rows (self = its post-DPO summaries), which may also pair
    the self summary with ``self_before`` (the pre-DPO summaries). For each measure:
    ``{"before", "after"}`` pooled over ``others`` (mean, ci95, n, accuracy, invalid,
    position_biased), ``"change"``: mean and CI of the per-pair difference after - before on the
    (article, other) pairs valid in both, ``"by_source"``, and ``"vs_self_before_dpo"``.
    """
    from selfrec_ft.scoring.metrics import pairwise_scores

    others = list(others)
    out: dict[str, dict[str, Any]] = {}
    for measure in MEASURES:
        before = [s for s in pairwise_scores(rows_before, measure) if s["other_source"] in others]
        after_all = pairwise_scores(rows_after, measure)
        after = [s for s in after_all if s["other_source"] in others]
        if not before and not after:
            continue
        b_idx = {(s["article_id"], s["other_source"]): s["score"] for s in before if s["valid"]}
        pairs = [(k, s["score"] - b_idx[k]) for s in after if s["valid"]
                 for k in [(s["article_id"], s["other_source"])] if k in b_idx]
        block: dict[str, Any] = {
            "before": _summary(before, n_resamples, seed) if before else None,
            "after": _summary(after, n_resamples, seed) if after else None,
            "change": mean_ci([d for _, d in pairs], [k[0] for k, _ in pairs], n_resamples, seed),
            "by_source": {},
        }
        for src in others:
            sb = [s for s in before if s["other_source"] == src]
            sa = [s for s in after if s["other_source"] == src]
            if sb or sa:
                block["by_source"][src] = {"before": _summary(sb, n_resamples, seed) if sb else None,
                                           "after": _summary(sa, n_resamples, seed) if sa else None}
        if self_before is not None:
            vs = [s for s in after_all if s["other_source"] == self_before]
            block["vs_self_before_dpo"] = _summary(vs, n_resamples, seed) if vs else None
        out[measure] = block
    return out


# --------------------------------------------------------------------------------------------------
# markdown


def render_shift_markdown(shift: Mapping[str, Any]) -> str:
    """``shift.md``: the attribute and the judgements before and after, per domain."""
    attr, direction = shift["attribute"], shift["direction"]
    lines = [f"# Attribute DPO: {direction} `{attr}`", "",
             f"The evaluator was trained with DPO on pairs of its own sampled summaries that differ in "
             f"`{attr}` ({shift.get('attribute_unit', '')}); the chosen summary has "
             f"{'more' if direction == 'inject' else 'less'} of it. Before = the pre-DPO model and its greedy "
             "summaries, after = the DPO model and its greedy summaries, on the same held-out articles. "
             "95% CIs resample articles.", "",
             "## The attribute in the model's own summaries", "",
             "| domain | before | after | after - before | relative change | n | empty before / after |",
             "|---|---|---|---|---|---|---|"]
    for dom, a in shift.get("attribute_by_domain", {}).items():
        rc = a.get("relative_change")
        rci = a.get("relative_change_ci95")
        rel = md.pct(rc) + (f" [{md.pct(rci[0])}, {md.pct(rci[1])}]" if rci else "")
        lines.append(f"| {DOMAIN_LABELS.get(dom, dom)} | {md.estimate(a['before'], '.2f')} | "
                     f"{md.estimate(a['after'], '.2f')} | {md.estimate(a['difference'], '.2f')} | {rel} | "
                     f"{a['n_articles']} | "
                     f"{a.get('n_empty_before', '–')} / {a.get('n_empty_after', '–')} |")
    lines += ["", "An empty summary (the model ended its answer at once) counts as the empty text."]
    for measure in MEASURES:
        doms = {d: v for d, v in shift.get(measure, {}).items() if v}
        if not doms:
            continue
        lines += ["", f"## Self-{measure}", "",
                  "Pairwise, both orders, normalised over the options; 0.5 = chance. `change` is the mean "
                  "per-pair difference (after - before) on the same (article, other source) pairs.", "",
                  "| domain | before | after | change | after vs pre-DPO self | n pairs |", "|---|---|---|---|---|---|"]
        for dom, m in doms.items():
            n = (m.get("after") or m.get("before") or {}).get("n")
            biased = " (position-biased)"
            lines.append(f"| {DOMAIN_LABELS.get(dom, dom)} | {md.estimate(m.get('before'), biased=biased)} | "
                         f"{md.estimate(m.get('after'), biased=biased)} | {md.estimate(m.get('change'))} | "
                         f"{md.estimate(m.get('vs_self_before_dpo'))} | {n if n is not None else md.DASH} |")
        rows = [(dom, src, v) for dom, m in doms.items() for src, v in m.get("by_source", {}).items()]
        if rows:
            lines += ["", "| domain | other source | before | after |", "|---|---|---|---|"]
            lines += [f"| {DOMAIN_LABELS.get(d, d)} | {src} | {md.estimate(v['before'])} | {md.estimate(v['after'])} |"
                      for d, src, v in rows]
    p = shift.get("pairs")
    if p:
        lines += ["", "## Training pairs", "",
                  f"{p['n_pairs']} pairs from {p['n_articles_used']} of {p['n_articles']} training articles "
                  f"({p['skipped']} skipped); mean target gap {md.num(p['target_gap_mean'], '.2f')} "
                  "(details in matching.json)."]
    t = shift.get("training")
    if t:
        lines += ["", f"Training: {t.get('global_step')} steps"
                  + (f", train loss {md.num(t['train_loss'], '.4f')}" if t.get("train_loss") is not None else "") + "."]
    return "\n".join(lines) + "\n"
