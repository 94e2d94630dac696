"""Recognition, preference and individual-setting metrics from scoring rows (PROTOCOL.md §3).

Everything is recomputed from each row's raw option probabilities ``probs``; no stored score is
trusted. ``probs`` are softmax probabilities over the whole vocabulary, so a row is invalid —
excluded, and counted — when its option mass is non-finite or not positive, or a probability is
non-finite, negative or above 1, or the probabilities sum to more than 1 (both up to
:data:`PROB_TOLERANCE`): such numbers are not probabilities (logits, percentages, a corrupted file),
and normalising them would give a plausible-looking but meaningless score. :func:`probs_problem`
says what is wrong with a row; the report counts out-of-range rows in a note. Intervals are article-clustered bootstraps
(:mod:`selfrec_ft.stats`); a mean over fewer than :data:`~selfrec_ft.stats.MIN_CLUSTERS_CI` (5)
articles gets ``ci95: null`` and a ``ci_note`` saying why. Accuracy counts a score within
:data:`TIE_TOLERANCE` of 0.5 as half right (identical distributions in both orders give exactly ½
only up to rounding).

Row schema: docs/ARCHITECTURE.md, "Scoring rows". One extension: an individual row may carry
``"probs": null`` and a precomputed ``"value"`` (with ``"value_origin"``); this is how P1's
individual-recognition files, which keep only a scalar, are read. Such values are used as v as-is
and the report says so in ``notes``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from selfrec_ft.probabilities import PROB_TOLERANCE, probs_problem  # noqa: F401  (re-exported)
from selfrec_ft.stats import (
    MIN_CLUSTERS_CI,
    cluster_bootstrap_interval,
    cluster_bootstrap_mean,
    finite_or_none,
    json_safe,
    n_clusters,
    safe_kendall,
    too_few_clusters_note,
)

PAIRWISE_TASKS = {"recognition": "pairwise-recognition", "preference": "pairwise-preference"}
INDIVIDUAL_TASKS = {"recognition": "individual-recognition", "score": "individual-score"}
ORDERS = ("forward", "backward")
POSITION_BIAS_THRESHOLD = 0.8
"""A task is flagged ``position_biased`` when always-1 or always-2 reaches this fraction."""
TIE_TOLERANCE = 1e-9
"""A score with |score − 0.5| ≤ this is a tie: it counts ½ in accuracy."""


# ----------------------------------------------------------------------------- single rows


def _num(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    return float(x)


def out_of_range(probs: Mapping[str, Any] | None) -> bool:
    """True for probabilities above 1 or summing above 1 (not a softmax over the vocabulary)."""
    return bool(probs) and probs_problem(probs) in ("probability above 1", "probabilities sum above 1")


def normalise(probs: Mapping[str, Any]) -> tuple[dict[str, float], float]:
    """``(p_hat, mass)``: p̂(o) = p(o) / Σ p(o'), and the option mass Σ p(o').

    For an invalid row (:func:`probs_problem`: mass non-finite or ≤ 0, a p non-finite, negative or
    above 1, or Σp above 1) every p̂ is NaN; test with :func:`is_valid`.
    """
    raw = {str(o): _num(p) for o, p in probs.items()}
    mass = float(sum(raw.values())) if raw else math.nan
    if probs_problem(probs) is not None:
        return {o: math.nan for o in raw}, mass
    return {o: p / mass for o, p in raw.items()}, mass


def is_valid(p_hat: Mapping[str, float]) -> bool:
    """True when a :func:`normalise` result is usable (non-empty, all finite)."""
    return bool(p_hat) and all(math.isfinite(v) for v in p_hat.values())


def answer(probs: Mapping[str, Any] | None) -> str | None:
    """The argmax option of raw ``probs``; ``None`` for an invalid row or a tie for the maximum."""
    if not probs:
        return None
    p_hat, _ = normalise(probs)
    if not is_valid(p_hat):
        return None
    best = max(p_hat.values())
    winners = [o for o, p in p_hat.items() if p == best]
    return winners[0] if len(winners) == 1 else None


def _task_name(task: str, table: Mapping[str, str]) -> str:
    if task in table:
        return table[task]
    if task in table.values():
        return task
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(table) + sorted(table.values())}")


# ----------------------------------------------------------------------------- pairwise


def pairwise_scores(rows: Iterable[Mapping[str, Any]], task: str) -> list[dict[str, Any]]:
    """One dict per (article, other source) for a pairwise task (``"recognition"``/``"preference"``
    or the full task name).

    ``score`` = ½[p̂_fwd(self_option_fwd) + p̂_bwd(self_option_bwd)], ``score_raw`` the same with raw
    p. A pair missing an order or with an invalid row has ``valid=False`` and ``score=None``; its
    ``reason`` says why. ``fwd_answer``/``bwd_answer`` are the argmax options (None on a tie).
    ``option_mass`` is the mean option mass of the pair's rows with a finite mass.
    """
    full = _task_name(task, PAIRWISE_TASKS)
    groups: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("task") != full:
            continue
        key = (r.get("domain"), r.get("self_source"), str(r["article_id"]), r["other_source"])
        order = r["order"]
        if order not in ORDERS:
            raise ValueError(f"row {key}: order must be one of {ORDERS}, got {order!r}")
        g = groups.setdefault(key, {})
        if order in g:
            raise ValueError(f"duplicate {full} row for {key} order {order}")
        g[order] = r

    out = []
    for (domain, self_source, article_id, other), g in groups.items():
        d: dict[str, Any] = {
            "article_id": article_id,
            "other_source": other,
            "self_source": self_source,
            "domain": domain,
            "score": None,
            "score_raw": None,
            "valid": False,
            "fwd_answer": None,
            "bwd_answer": None,
            "fwd_self_option": None,
            "bwd_self_option": None,
            "option_mass": None,
            "options": None,
            "invalid_rows": 0,
            "reason": None,
        }
        parts, masses, reasons = {}, [], []
        for order, tag in zip(ORDERS, ("fwd", "bwd")):
            r = g.get(order)
            if r is None:
                reasons.append(f"missing {order} order")
                continue
            p_hat, mass = normalise(r["probs"])
            if d["options"] is None:
                d["options"] = [str(o) for o in (r.get("options") or r["probs"])]
            so = str(r["self_option"])
            d[f"{tag}_self_option"] = so
            d[f"{tag}_answer"] = answer(r["probs"])
            if math.isfinite(mass):
                masses.append(mass)
            if not is_valid(p_hat):
                d["invalid_rows"] += 1
                reasons.append(f"{order} row: {probs_problem(r['probs']) or 'invalid option mass'}")
            elif so not in p_hat:
                reasons.append(f"{order} self_option {so!r} is not an option")
            else:
                parts[tag] = (p_hat[so], _num(r["probs"][so]))
        d["option_mass"] = float(np.mean(masses)) if masses else None
        if len(parts) == 2:
            d["valid"] = True
            d["score"] = 0.5 * (parts["fwd"][0] + parts["bwd"][0])
            d["score_raw"] = 0.5 * (parts["fwd"][1] + parts["bwd"][1])
        else:
            d["reason"] = "; ".join(reasons)
        out.append(d)
    return out


def _cluster(s: Mapping[str, Any]) -> tuple:
    return (s.get("domain"), s["article_id"])


def accuracy_values(scores: Sequence[float]) -> np.ndarray:
    """Per-pair accuracy: 1 when score > 0.5, ½ when |score − 0.5| ≤ :data:`TIE_TOLERANCE`, else 0."""
    s = np.asarray(scores, dtype=float)
    return np.where(np.abs(s - 0.5) <= TIE_TOLERANCE, 0.5, np.where(s > 0.5, 1.0, 0.0))


def _mean_block(values, clusters, seed, n_resamples, key="mean") -> dict[str, Any]:
    """Mean and clustered-bootstrap CI; with fewer than 5 articles the CI is None and ``ci_note``
    says so."""
    if len(values) == 0:
        return {key: None, "ci95": None}
    m, (lo, hi) = cluster_bootstrap_mean(values, clusters, n_resamples=n_resamples, seed=seed)
    k = n_clusters(clusters)
    if k < MIN_CLUSTERS_CI:
        return {key: m, "ci95": None, "ci_note": too_few_clusters_note(k)}
    return {key: m, "ci95": [lo, hi]}


def _pairwise_block(valid: list[Mapping[str, Any]], seed: int, n_resamples: int) -> dict[str, Any]:
    scores = [s["score"] for s in valid]
    clusters = [_cluster(s) for s in valid]
    block = _mean_block(scores, clusters, seed, n_resamples)
    block["mean_raw"] = float(np.mean([s["score_raw"] for s in valid])) if valid else None
    acc = _mean_block(accuracy_values(scores), clusters, seed, n_resamples, key="accuracy")
    block["accuracy"] = acc["accuracy"]
    block["accuracy_ci95"] = acc["ci95"]
    block["n"] = len(valid)
    block["n_articles"] = n_clusters(clusters)
    return block


def position_table(scores: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Fractions of valid pairs by their two argmax answers (PROTOCOL.md §3 position-bias table).

    consistent_self: both answers pick the self option; consistent_other: both pick the other
    option; always_1 / always_2: both answers are the first / second option (``"1"`` / ``"2"``;
    for other options, their order in the row's ``options`` or ``probs``). A tied argmax is in none
    of them.
    """
    valid = [s for s in scores if s["valid"]]
    if not valid:
        return {k: None for k in ("consistent_self", "consistent_other", "always_1", "always_2")}
    counts = dict.fromkeys(("consistent_self", "consistent_other", "always_1", "always_2"), 0)
    for s in valid:
        fa, ba = s["fwd_answer"], s["bwd_answer"]
        if fa is None or ba is None:
            continue
        if fa == s["fwd_self_option"] and ba == s["bwd_self_option"]:
            counts["consistent_self"] += 1
        if fa != s["fwd_self_option"] and ba != s["bwd_self_option"]:
            counts["consistent_other"] += 1
        first, second = (s.get("options") or ["1", "2"])[:2]
        if fa == first and ba == first:
            counts["always_1"] += 1
        if fa == second and ba == second:
            counts["always_2"] += 1
    return {k: v / len(valid) for k, v in counts.items()}


def pairwise_summary(
    scores: Sequence[Mapping[str, Any]], seed: int = 0, n_resamples: int = 2000
) -> dict[str, Any]:
    """Summary R of one pairwise task from :func:`pairwise_scores` output (see module docs)."""
    valid = [s for s in scores if s["valid"]]
    r = _pairwise_block(valid, seed, n_resamples)
    r["invalid"] = len(scores) - len(valid)
    r["invalid_rows"] = int(sum(s["invalid_rows"] for s in scores))
    masses = [s["option_mass"] for s in valid if s["option_mass"] is not None]
    r["mean_option_mass"] = float(np.mean(masses)) if masses else None
    r["position"] = position_table(scores)
    biased = [r["position"][k] or 0.0 for k in ("always_1", "always_2")]
    r["position_biased"] = bool(valid) and max(biased) >= POSITION_BIAS_THRESHOLD
    by_source: dict[str, Any] = {}
    for src in dict.fromkeys(s["other_source"] for s in scores):
        sub = [s for s in valid if s["other_source"] == src]
        block = _pairwise_block(sub, seed, n_resamples)
        block["invalid"] = sum(1 for s in scores if s["other_source"] == src and not s["valid"])
        by_source[src] = block
    r["by_source"] = by_source
    return r


def kendall_tau(
    rec_scores: Sequence[Mapping[str, Any]], pref_scores: Sequence[Mapping[str, Any]],
    seed: int = 0, n_resamples: int = 2000,
) -> dict[str, Any]:
    """Per-pair Kendall tau-b between recognition and preference, over pairs valid in both, with
    an article-clustered bootstrap 95% interval (pairs of one article are not independent, so no
    independence p-value is reported). Fewer than 5 articles: ``ci95`` None and ``ci_note``."""

    def key(s):
        return (s.get("domain"), s.get("self_source"), s["article_id"], s["other_source"])

    pref = {key(s): s["score"] for s in pref_scores if s["valid"]}
    pairs = [(s["score"], pref[key(s)], _cluster(s)) for s in rec_scores if s["valid"] and key(s) in pref]
    if not pairs:
        return {"tau": None, "ci95": None, "n": 0, "n_articles": 0}
    x, y, clusters = zip(*pairs)
    tau = finite_or_none(safe_kendall(x, y)[0])
    k = n_clusters(clusters)
    out: dict[str, Any] = {"tau": tau, "ci95": None, "n": len(pairs), "n_articles": k}
    if k < MIN_CLUSTERS_CI:
        out["ci_note"] = too_few_clusters_note(k)
    elif tau is not None:
        ci = cluster_bootstrap_interval(lambda a, b: safe_kendall(a, b)[0], (x, y), clusters,
                                        n_resamples=n_resamples, seed=seed)
        out["ci95"] = list(ci) if ci else None
    return out


# ----------------------------------------------------------------------------- individual


def individual_values(rows: Iterable[Mapping[str, Any]], task: str) -> list[dict[str, Any]]:
    """v per individual row: p̂("Yes") for recognition, Σ k·p̂(k) over k=1..5 for score.

    A row with ``probs`` null and a ``value`` uses that value as v (``value_origin`` says where it
    came from). Invalid rows get ``valid=False`` and ``value=None``.
    """
    full = _task_name(task, INDIVIDUAL_TASKS)
    out = []
    for r in rows:
        if r.get("task") != full:
            continue
        d = {
            "article_id": str(r["article_id"]),
            "target_source": r["target_source"],
            "self_source": r.get("self_source"),
            "domain": r.get("domain"),
            "value": None,
            "valid": False,
            "option_mass": None,
            "value_origin": "probs",
        }
        probs = r.get("probs")
        if probs is None:
            v = _num(r.get("value"))
            d["value_origin"] = r.get("value_origin", "value")
            in_range = 0 <= v <= 1 + PROB_TOLERANCE if full == "individual-recognition" else True
            if math.isfinite(v) and in_range:
                d["value"], d["valid"] = v, True
        else:
            p_hat, mass = normalise(probs)
            d["option_mass"] = mass if math.isfinite(mass) else None
            if is_valid(p_hat):
                if full == "individual-recognition":
                    v = p_hat.get("Yes", math.nan)
                else:
                    v = sum(int(k) * p for k, p in p_hat.items())
                if math.isfinite(v):
                    d["value"], d["valid"] = float(v), True
        out.append(d)
    return out


def individual_ratios(values: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per article and target t ≠ self: ratio = v(self) / (v(self) + v(t)).

    Invalid (``ratio=None``) when either row is missing or invalid, or v(self) + v(t) = 0.
    """
    groups: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for v in values:
        key = (v["domain"], v["self_source"], v["article_id"])
        g = groups.setdefault(key, {})
        if v["target_source"] in g:
            raise ValueError(f"duplicate individual row for {key} target {v['target_source']}")
        g[v["target_source"]] = v
    out = []
    for (domain, self_source, article_id), g in groups.items():
        self_v = g.get(self_source)
        for t, tv in g.items():
            if t == self_source:
                continue
            d = {"article_id": article_id, "target_source": t, "domain": domain,
                 "self_source": self_source, "ratio": None, "valid": False,
                 "v_self": self_v["value"] if self_v else None, "v_target": tv["value"]}
            if self_v and self_v["valid"] and tv["valid"] and self_v["value"] + tv["value"] > 0:
                d["ratio"] = self_v["value"] / (self_v["value"] + tv["value"])
                d["valid"] = True
            out.append(d)
    return out


def auroc(values: Sequence[Mapping[str, Any]], target: str | None = None) -> float | None:
    """AUROC of v separating the self source's rows (positive) from ``target``'s rows (all other
    sources when None), with :func:`sklearn.metrics.roc_auc_score`; None without both classes."""
    pos = [v["value"] for v in values if v["valid"] and v["target_source"] == v["self_source"]]
    neg = [v["value"] for v in values if v["valid"] and v["target_source"] != v["self_source"]
           and (target is None or v["target_source"] == target)]
    if not pos or not neg:
        return None
    from sklearn.metrics import roc_auc_score  # here: scikit-learn (+ pandas) cost ~2 s before scoring starts

    return float(roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg))


def individual_summary(
    rows: Iterable[Mapping[str, Any]], task: str, seed: int = 0, n_resamples: int = 2000
) -> dict[str, Any]:
    """Individual-setting summary: per-target ratio with CI, pooled ratio, (recognition) AUROC."""
    full = _task_name(task, INDIVIDUAL_TASKS)
    values = individual_values(rows, full)
    ratios = individual_ratios(values)
    valid = [r for r in ratios if r["valid"]]
    by_source = {}
    for t in dict.fromkeys(r["target_source"] for r in ratios):
        sub = [r for r in valid if r["target_source"] == t]
        block = _mean_block([r["ratio"] for r in sub], [_cluster(r) for r in sub], seed,
                            n_resamples, key="ratio")
        block["n"] = len(sub)
        block["n_articles"] = n_clusters([_cluster(r) for r in sub])
        block["invalid"] = sum(1 for r in ratios if r["target_source"] == t and not r["valid"])
        block["mean_v_self"] = float(np.mean([r["v_self"] for r in sub])) if sub else None
        block["mean_v_target"] = float(np.mean([r["v_target"] for r in sub])) if sub else None
        by_source[t] = block
    pooled = _mean_block([r["ratio"] for r in valid], [_cluster(r) for r in valid], seed,
                         n_resamples, key="ratio")
    pooled["n"] = len(valid)
    pooled["n_articles"] = n_clusters([_cluster(r) for r in valid])
    masses = [v["option_mass"] for v in values if v["option_mass"] is not None]
    out: dict[str, Any] = {
        "by_source": by_source,
        "pooled": pooled,
        "invalid": len(ratios) - len(valid),
        "invalid_rows": sum(1 for v in values if not v["valid"]),
        "mean_option_mass": float(np.mean(masses)) if masses else None,
        "value_origin": sorted({v["value_origin"] for v in values}),
    }
    if full == "individual-recognition":
        out["auroc"] = {t: auroc(values, t) for t in by_source}
        out["auroc_pooled"] = auroc(values)
    return out


# ----------------------------------------------------------------------------- report


KNOWN_TASKS = set(PAIRWISE_TASKS.values()) | set(INDIVIDUAL_TASKS.values())


def _has_ci_note(obj: Any) -> bool:
    if isinstance(obj, Mapping):
        return any(k.endswith("ci_note") for k in obj) or any(_has_ci_note(v) for v in obj.values())
    return False


def _notes(report: Mapping[str, Any], self_sources: list) -> list[str]:
    notes = []
    for name, r in report.get("pairwise", {}).items():
        if isinstance(r, dict) and r.get("position_biased"):
            pos = r["position"]
            which = "first" if (pos["always_1"] or 0) >= (pos["always_2"] or 0) else "second"
            notes.append(
                f'pairwise {name}: the evaluator gives the {which} option in both orders for '
                f'{max(pos["always_1"], pos["always_2"]):.0%} of pairs; its score reflects position '
                "bias, not " + ("recognition" if name == "recognition" else "preference") + "."
            )
    for name, r in report.get("individual", {}).items():
        origins = [o for o in r.get("value_origin", []) if o != "probs"]
        if origins:
            notes.append(
                f"individual {name}: v is the stored scalar ({', '.join(origins)}), not recomputed "
                "from raw option probabilities; its normalisation is undocumented upstream."
            )
    if _has_ci_note(report):
        notes.append(f"groups with fewer than {MIN_CLUSTERS_CI} articles have no 95% CI (null): a "
                     "bootstrap over so few articles says little about the evaluator.")
    if len(self_sources) > 1:
        notes.append(f"rows come from several evaluators (self sources {self_sources}); pooled "
                     "numbers mix them.")
    return notes


def _range_note(rows: Sequence[Mapping[str, Any]]) -> str | None:
    bad = sum(1 for r in rows if out_of_range(r.get("probs")))
    if not bad:
        return None
    return (f"{bad} row(s) have option probabilities above 1 or summing above 1 (not softmax probabilities: "
            "logits, percentages or a corrupted file?); they are counted as invalid and left out.")


def compute_report(
    rows: Iterable[Mapping[str, Any]], seed: int = 0, n_resamples: int = 2000, by_domain: bool = True
) -> dict[str, Any]:
    """The report.json dict from scoring rows.

    ``{"pairwise": {"recognition": R, "preference": R, "kendall_tau": float}, "individual":
    {"recognition": {"by_source", "auroc", ...}, "score": {"by_source", ...}}, "notes": [...],
    "meta": {...}}``; sections without rows are left out. Rows from several domains add
    ``"by_domain": {domain: report}``. Rows of other tasks (e.g. ``familiarity``) are ignored.
    """
    rows = [r for r in rows if r.get("task") in KNOWN_TASKS]
    report: dict[str, Any] = {}
    pw: dict[str, Any] = {}
    scores = {}
    for name, task in PAIRWISE_TASKS.items():
        if any(r["task"] == task for r in rows):
            scores[name] = pairwise_scores(rows, task)
            pw[name] = pairwise_summary(scores[name], seed=seed, n_resamples=n_resamples)
    if len(scores) == 2:
        kt = kendall_tau(scores["recognition"], scores["preference"], seed=seed, n_resamples=n_resamples)
        pw["kendall_tau"] = kt["tau"]
        pw["kendall_tau_ci95"] = kt["ci95"]
        pw["kendall_tau_n"] = kt["n"]
        pw["kendall_tau_n_articles"] = kt["n_articles"]
        if "ci_note" in kt:
            pw["kendall_tau_ci_note"] = kt["ci_note"]
    if pw:
        report["pairwise"] = pw
    ind = {}
    for name, task in INDIVIDUAL_TASKS.items():
        if any(r["task"] == task for r in rows):
            ind[name] = individual_summary(rows, task, seed=seed, n_resamples=n_resamples)
    if ind:
        report["individual"] = ind
    self_sources = sorted({str(r.get("self_source")) for r in rows})
    domains = list(dict.fromkeys(r.get("domain") for r in rows))
    report["notes"] = _notes(report, self_sources)
    range_note = _range_note(rows)
    if range_note:
        report["notes"].append(range_note)
    report["meta"] = {
        "n_rows": len(rows),
        "rows_per_task": {t: sum(1 for r in rows if r["task"] == t) for t in sorted(KNOWN_TASKS)
                          if any(r["task"] == t for r in rows)},
        "self_sources": self_sources,
        "domains": [d for d in domains if d is not None],
        "seed": seed,
        "n_resamples": n_resamples,
        "position_bias_threshold": POSITION_BIAS_THRESHOLD,
    }
    if by_domain and len(domains) > 1:
        report["by_domain"] = {
            ("(none)" if d is None else str(d)): compute_report(
                [r for r in rows if r.get("domain") == d], seed, n_resamples, by_domain=False)
            for d in domains
        }
    return json_safe(report)
