"""Inference for relations across a sweep's runs: two sources of uncertainty, reported separately.

A sweep asks whether preference follows recognition *across runs* (fine-tuned variants). Its
numbers carry two kinds of noise:

* **article sampling**: each run's mean is measured on a finite set of articles.
  :class:`JointBootstrap` resamples articles jointly across the runs (every run's means recomputed
  on the same drawn articles) and gives the *article-level* interval of every statistic. It holds
  the runs fixed, so it says nothing about whether another set of runs would show the relation:
  on simulated sweeps where recognition and preference are unrelated across runs, its 95% interval
  for Pearson r excluded 0 in 81-87% of trials.
* **the runs themselves**: the runs are a small sample of possible interventions; the relation is a
  claim about that population, so the run is the sampling unit. :func:`run_level_pearson` treats
  the k run means as k observations:

  - a **permutation test** over runs (:func:`scipy.stats.permutation_test`, pairings: recognition
    means permuted against preference means; all k! pairings for k ≤ 7, 9999 random ones above).
    It needs no normality and is exact under exchangeability. With few runs it cannot reject: the
    smallest two-sided p-value is 2/k!, so 3 runs give at best 0.33 and 4 runs 0.083 — the test is
    honest about how little 3 or 4 runs show;
  - a **Fisher-z interval** (:meth:`scipy.stats._result_classes.PearsonRResult.confidence_interval`),
    standard error 1/√(k−3), so it widens as k shrinks ([−1, 1] for 3 runs). Each run mean's article
    noise is part of its scatter, so the interval covers it too.

  A two-level bootstrap (runs, then articles) was the alternative; with 3-8 runs a bootstrap over
  runs is unreliable (resamples with repeated runs, undefined r when a resample has one distinct
  run, intervals too narrow for small k), while the permutation test is exact and Fisher's
  interval is the textbook small-sample interval for r.

A relation is **supported** only when both agree: the run-level permutation test rejects "no
relation" at 0.05 *and* the article-level interval of Pearson r excludes 0. The partial correlation
given familiarity needs at least :data:`MIN_RUNS_PARTIAL` runs (with 4, one degree of freedom is
left). Kendall τ gets scipy's exact test on the run means and the slope an OLS t-interval (k−2
degrees of freedom).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from selfrec_ft import stats

ALPHA = 0.05
MIN_RUNS_CORRELATION = 3
MIN_RUNS_PARTIAL = 5
N_PERMUTATIONS = 9999
"""Random permutations when k! exceeds this (k ≥ 8); below, scipy enumerates all pairings."""


# ----------------------------------------------------------------------------- article level


class JointBootstrap:
    """One domain's joint bootstrap over articles: every series' resampled means on shared draws.

    ``series`` maps ``(run_id, name)`` to ``{"values": [...], "clusters": [...]}`` (observations and
    their article keys). Each resample draws articles with replacement from the union of all
    series' articles; a series' resampled mean is the ratio of its drawn value sums to its drawn
    counts (NaN when it has no observation among the drawn articles).
    """

    def __init__(self, series: Mapping[tuple[str, str], Mapping[str, Any]], n_resamples: int, seed: int):
        self.clusters = list(dict.fromkeys(c for s in series.values() for c in s["clusters"]))
        self.keys = list(series)
        self.row = {k: i for i, k in enumerate(self.keys)}
        index = {c: i for i, c in enumerate(self.clusters)}
        self.sums = np.zeros((len(self.keys), len(self.clusters)))
        self.counts = np.zeros_like(self.sums)
        for row, key in enumerate(self.keys):
            cols = [index[c] for c in series[key]["clusters"]]
            np.add.at(self.sums[row], cols, series[key]["values"])
            np.add.at(self.counts[row], cols, 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.point = self.sums.sum(axis=1) / self.counts.sum(axis=1)
        self.weights = stats.cluster_resample_weights(len(self.clusters), n_resamples, seed)
        self.boot = (stats.resampled_means(self.sums, self.counts, self.weights) if self.clusters
                     else np.zeros((len(self.keys), 0)))

    @property
    def n_resamples(self) -> int:
        return self.boot.shape[1]

    def vectors(self, run_ids: Sequence[str], name: str) -> tuple[np.ndarray, np.ndarray]:
        """Point means ``(k,)`` and resampled means ``(k, n_resamples)`` of ``name`` for the runs."""
        rows = [self.row[(r, name)] for r in run_ids]
        return self.point[rows], self.boot[rows]

    def interval(self, fn: Callable, *names_and_runs, vectorized: bool = False) -> dict[str, Any]:
        """Point value and percentile CI of ``fn(*vectors)``; ``names_and_runs`` are
        ``(run_ids, name)`` pairs. Resamples where a vector is not finite are dropped and the
        fraction kept is reported. A ``vectorized`` fn takes ``(k, n_resamples)`` arrays and
        returns one value per column (and a value for ``(k,)`` vectors)."""
        pts, boots = zip(*(self.vectors(runs, name) for runs, name in names_and_runs))
        finite = np.all([np.all(np.isfinite(b), axis=0) for b in boots], axis=0)
        if vectorized:
            samples = np.where(finite, fn(*boots), np.nan) if self.n_resamples else np.zeros(0)
        else:
            samples = np.array([fn(*(b[:, j] for b in boots)) if finite[j] else np.nan
                                for j in range(self.n_resamples)])
        return summarise_samples(fn(*pts), samples)

    def paired_delta(self, run: str, base: str, name: str) -> dict[str, Any]:
        """``run − base`` of ``name`` on the articles both were scored on, point and resamples.

        Returns ``{"value", "samples", "n_articles", "same_articles"}``: the means of both are taken
        over the common articles only (so a run identical to its baseline differs by exactly 0 in
        every resample); ``same_articles`` says whether the two article sets were equal.
        """
        r, b = self.row[(run, name)], self.row[(base, name)]
        has_r, has_b = self.counts[r] > 0, self.counts[b] > 0
        common = (has_r & has_b).astype(float)
        out = {"n_articles": int(common.sum()), "same_articles": bool(np.array_equal(has_r, has_b))}
        if not common.any():
            return {**out, "value": float("nan"), "samples": np.full(self.n_resamples, np.nan)}
        sums, counts = self.sums[[r, b]] * common, self.counts[[r, b]] * common
        point = sums.sum(axis=1) / counts.sum(axis=1)
        boot = stats.resampled_means(sums, counts, self.weights)
        return {**out, "value": float(point[0] - point[1]), "samples": boot[0] - boot[1]}


def summarise_samples(value: float, samples: np.ndarray) -> dict[str, Any]:
    """``{"value", "ci95", "ci_defined_fraction"}`` of a statistic and its bootstrap samples."""
    samples = np.asarray(samples, dtype=float)
    ci = stats.percentile_interval(samples)
    defined = float(np.mean(np.isfinite(samples))) if samples.size else 0.0
    return {"value": stats.finite_or_none(value), "ci95": list(ci) if ci else None,
            "ci_defined_fraction": defined}


def _quiet(fn):
    def wrapped(*args):
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant inputs: NaN, dropped from the interval
            return fn(*args)
    return wrapped


@_quiet
def pearson_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each column (scipy, ``axis=0``); NaN where a column is constant."""
    return sps.pearsonr(x, y, axis=0).statistic


@_quiet
def kendall_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall tau-b of each column (scipy, ``axis=0``); NaN where a column is constant."""
    return sps.kendalltau(x, y, axis=0).statistic


@_quiet
def slope_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of y on x per column, r · sd(y) / sd(x) (the identity
    :func:`scipy.stats.linregress` satisfies); NaN where x is constant."""
    return pearson_columns(x, y) * np.std(y, axis=0) / np.std(x, axis=0)


# ----------------------------------------------------------------------------- run level


def _pearson_rows(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of every row of ``a`` with ``y`` (scipy, along the last axis)."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sps.pearsonr(a, np.broadcast_to(y, a.shape), axis=-1).statistic


def min_permutation_p(k: int) -> float:
    """The smallest two-sided p-value a permutation test over k runs can give: 2/k!."""
    return 2.0 / math.factorial(k) if k < 20 else 0.0


def run_level_pearson(x: Sequence[float], y: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Run-level inference for Pearson r of the run means x, y (see the module docstring).

    ``{"ci95": [lo, hi] | None, "p_value": p | None, "method": str, "n_runs": k}``; p and the
    interval are None when r is undefined (a constant input) or there are fewer than 3 runs.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    k = len(x)
    method = ("permutation test over runs (scipy.stats.permutation_test, pairings, two-sided"
              + (", exact" if math.factorial(min(k, 20)) <= N_PERMUTATIONS else f", {N_PERMUTATIONS} permutations")
              + "); 95% CI: Fisher z on the run means (scipy.stats.pearsonr(...).confidence_interval)")
    out: dict[str, Any] = {"ci95": None, "p_value": None, "method": method, "n_runs": k}
    if k < MIN_RUNS_CORRELATION or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    res = sps.permutation_test((x,), lambda a, axis=-1: _pearson_rows(a, y), permutation_type="pairings",
                               vectorized=True, n_resamples=N_PERMUTATIONS, alternative="two-sided",
                               rng=np.random.default_rng(seed))
    if k == MIN_RUNS_CORRELATION:  # Fisher z's standard error 1/sqrt(k-3) is infinite: no information
        lo, hi = -1.0, 1.0
    else:
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = sps.pearsonr(x, y).confidence_interval(confidence_level=1 - ALPHA)
        lo, hi = float(ci.low), float(ci.high)
    out.update(ci95=[lo, hi] if math.isfinite(lo) and math.isfinite(hi) else None, p_value=float(res.pvalue))
    return out


def run_level_kendall(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Kendall τ of the run means with scipy's test (exact for small k without ties)."""
    out: dict[str, Any] = {"p_value": None, "method": "scipy.stats.kendalltau test on the run means"}
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) >= MIN_RUNS_CORRELATION:
        out["p_value"] = stats.finite_or_none(stats.safe_kendall(x, y)[1])
    return out


def run_level_slope(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """OLS slope of preference on recognition across runs: t-interval with k−2 df and its p-value
    (:func:`scipy.stats.linregress`)."""
    out: dict[str, Any] = {"ci95": None, "p_value": None,
                           "method": "OLS on the run means (scipy.stats.linregress), t-interval with k-2 df"}
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < MIN_RUNS_CORRELATION or np.ptp(x) == 0:
        return out
    res = sps.linregress(x, y)
    half = sps.t.ppf(1 - ALPHA / 2, len(x) - 2) * res.stderr
    out.update(ci95=[stats.finite_or_none(res.slope - half), stats.finite_or_none(res.slope + half)],
               p_value=stats.finite_or_none(res.pvalue))
    if out["ci95"][0] is None:
        out["ci95"] = None
    return out


def run_level_partial(x, y, z, seed: int = 0) -> dict[str, Any]:
    """Permutation test of the partial correlation of x and y given z across runs: the residuals
    of x on z permuted against those of y on z (Kennedy's method), run as the unit."""
    out: dict[str, Any] = {"p_value": None, "method": "permutation test over runs of the residuals on "
                           "familiarity (scipy.stats.permutation_test, pairings, two-sided)"}
    rx, ry = stats.residuals(x, z), stats.residuals(y, z)
    if len(rx) < MIN_RUNS_PARTIAL or not math.isfinite(stats.partial_correlation(x, y, z)):
        return out
    res = sps.permutation_test((rx,), lambda a, axis=-1: _pearson_rows(a, ry), permutation_type="pairings",
                               vectorized=True, n_resamples=N_PERMUTATIONS, rng=np.random.default_rng(seed))
    out["p_value"] = float(res.pvalue)
    return out


# ----------------------------------------------------------------------------- the relation


def excludes_zero(ci) -> bool:
    return bool(ci) and (ci[0] > 0 or ci[1] < 0)


def is_supported(run_level: Mapping[str, Any], article_ci) -> bool:
    """True only when the run-level test rejects "no relation" at 0.05 and the article-level
    interval excludes 0."""
    p = run_level.get("p_value")
    return p is not None and p < ALPHA and excludes_zero(article_ci)


def _fmt_ci(ci) -> str:
    return "–" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _fmt_p(p) -> str:
    return "–" if p is None else f"{p:.3g}"


MEASURE_WORDS = {"preference": "preference",
                 "question_following": "question-following preference (better − worse gap)"}


def verdict(c: Mapping[str, Any]) -> str:
    """One sentence for a correlation block: the verdict first, then the two sources of evidence."""
    k = c["n_runs"]
    what = MEASURE_WORDS.get(c.get("measure", "preference"), c.get("measure", "preference"))
    pearson = c.get("pearson") or {}
    r, rl = pearson.get("r"), pearson.get("run_level") or {}
    if k < MIN_RUNS_CORRELATION or r is None:
        return (f"Not assessed: {k} run(s) with recognition and {what}"
                + (" (at least 3 are needed)." if k < MIN_RUNS_CORRELATION else "; Pearson r is undefined."))
    direction = "rises" if r > 0 else "falls"
    p = rl.get("p_value")
    evidence = (f"Pearson r = {r:.3f}; run-level permutation p = {_fmt_p(p)}, Fisher-z 95% CI "
                f"{_fmt_ci(rl.get('ci95'))}; article-level 95% CI {_fmt_ci(pearson.get('ci95'))}")
    if c.get("supported"):
        return f"Supported: {what} {direction} with recognition across the {k} runs ({evidence})."
    reasons = []
    if p is None or p >= ALPHA:
        reason = f"the run-level test does not reject 'no relation' with {k} runs"
        if min_permutation_p(k) >= ALPHA:
            reason += f" (with {k} runs no permutation p-value can fall below {min_permutation_p(k):.2g})"
        reasons.append(reason)
    if not excludes_zero(pearson.get("ci95")):
        reasons.append("the article-level interval includes 0")
    elif p is None or p >= ALPHA:
        reasons.append("the article-level interval excludes 0 but reflects article sampling only, not "
                       "the choice of runs")
    return f"Not supported: {'; '.join(reasons)} ({evidence})."


def correlation(joint: JointBootstrap, run_ids: list[str], fam_ids: list[str], seed: int = 0,
                measure: str = "preference") -> dict[str, Any]:
    """The ``correlation.<domain>`` block of analysis.json for the runs ``run_ids`` (familiarity
    for ``fam_ids``): Pearson r, Kendall τ, slope with article-level and run-level inference,
    the partial correlation given familiarity, ``supported`` and the ``verdict`` sentence.
    ``measure``: the series related to recognition (``preference``, or ``question_following``: the
    better − worse gap of :mod:`selfrec_ft.scoring.controls_preference`)."""
    k = len(run_ids)
    out: dict[str, Any] = {"n_runs": k, "run_ids": run_ids, "measure": measure}
    if k < MIN_RUNS_CORRELATION:
        out.update(pearson={"r": None, "ci95": None, "run_level": run_level_pearson([], [])},
                   kendall={"tau": None, "ci95": None}, slope={"value": None, "ci95": None},
                   note=f"fewer than {MIN_RUNS_CORRELATION} done runs with pairwise recognition and "
                        f"preference ({k}); correlations not computed.")
    else:
        rec, pref = (run_ids, "recognition"), (run_ids, measure)
        p = joint.interval(pearson_columns, rec, pref, vectorized=True)
        t = joint.interval(kendall_columns, rec, pref, vectorized=True)
        s = joint.interval(slope_columns, rec, pref, vectorized=True)
        x, y = joint.vectors(run_ids, "recognition")[0], joint.vectors(run_ids, measure)[0]
        out["pearson"] = {"r": p["value"], "ci95": p["ci95"], "ci_defined_fraction": p["ci_defined_fraction"],
                          "run_level": run_level_pearson(x, y, seed)}
        out["kendall"] = {"tau": t["value"], "ci95": t["ci95"], "ci_defined_fraction": t["ci_defined_fraction"],
                          "run_level": run_level_kendall(x, y)}
        out["slope"] = {"value": s["value"], "ci95": s["ci95"], "ci_defined_fraction": s["ci_defined_fraction"],
                        "intercept": stats.finite_or_none(np.mean(y) - (s["value"] or 0) * np.mean(x))
                        if s["value"] is not None else None, "run_level": run_level_slope(x, y)}
    out["supported"] = is_supported(out["pearson"].get("run_level") or {}, out["pearson"].get("ci95"))
    if len(fam_ids) >= MIN_RUNS_PARTIAL:
        pc = joint.interval(stats.partial_correlation, (fam_ids, "recognition"),
                            (fam_ids, measure), (fam_ids, "familiarity"))
        xs, ys, zs = (joint.vectors(fam_ids, n)[0] for n in ("recognition", measure, "familiarity"))
        out["partial_pearson_given_familiarity"] = {"r": pc["value"], "ci95": pc["ci95"], "n_runs": len(fam_ids),
                                                    "run_level": run_level_partial(xs, ys, zs, seed)}
    else:
        out["partial_pearson_given_familiarity"] = {
            "r": None, "ci95": None, "n_runs": len(fam_ids),
            "note": f"needs familiarity rows in at least {MIN_RUNS_PARTIAL} done runs ({len(fam_ids)}): "
                    f"with fewer, too few degrees of freedom are left after removing familiarity"}
    out["verdict"] = verdict(out)
    return out
