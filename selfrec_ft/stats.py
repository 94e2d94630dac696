"""Shared statistics helpers: article-clustered bootstrap, intervals, correlations.

Measurements made on one article are not independent (an article contributes a pair per other
source, or a row per target), so every interval here resamples **clusters** (articles) with
replacement and recomputes the statistic on all observations of the drawn clusters. A mean over
resampled clusters is a ratio of sums: sum of the drawn clusters' value sums / sum of their counts.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
from scipy import stats as sps

MIN_CLUSTERS_CI = 5
"""An interval needs at least this many clusters (articles): with fewer, a bootstrap interval says
more about the handful of articles drawn than about the evaluator, so callers report none."""


def finite_or_none(x) -> float | None:
    """``float(x)`` when finite, else ``None`` (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def cluster_sums(values: Sequence[float], clusters: Sequence[Hashable]):
    """Group ``values`` by cluster: ``(cluster_keys, sums, counts)`` in first-seen cluster order."""
    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster labels")
    index: dict[Hashable, int] = {}
    for c in clusters:
        index.setdefault(c, len(index))
    codes = np.fromiter((index[c] for c in clusters), dtype=np.int64, count=len(clusters))
    v = np.asarray(values, dtype=float)
    sums = np.bincount(codes, weights=v, minlength=len(index))
    counts = np.bincount(codes, minlength=len(index)).astype(float)
    return list(index), sums, counts


def _ratio_of_sums(sums, counts, axis=-1):
    return np.sum(sums, axis=axis) / np.sum(counts, axis=axis)


def cluster_bootstrap_mean(
    values: Sequence[float],
    clusters: Sequence[Hashable],
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, tuple[float, float]]:
    """Mean of ``values`` and a percentile bootstrap interval that resamples clusters.

    Uses :func:`scipy.stats.bootstrap` on the paired per-cluster (sum, count) arrays with the
    ratio-of-sums statistic, so a resampled mean weights each drawn cluster by its size, exactly as
    pooling its observations would. Deterministic for a ``seed``. With a single cluster or constant
    values every resample gives the point estimate and the interval is ``(mean, mean)``.
    Raises ``ValueError`` for no values or non-finite values (callers filter invalid rows first).
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("cluster_bootstrap_mean needs at least one value")
    if not np.all(np.isfinite(v)):
        raise ValueError("cluster_bootstrap_mean got non-finite values")
    mean = float(v.mean())
    _, sums, counts = cluster_sums(v, clusters)
    if len(sums) < 2 or np.ptp(v) == 0:
        return mean, (mean, mean)
    res = sps.bootstrap(
        (sums, counts),
        _ratio_of_sums,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        batch=max(1, min(n_resamples, 2_000_000 // max(1, len(sums)))),
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return mean, (float(res.confidence_interval.low), float(res.confidence_interval.high))


def n_clusters(clusters: Sequence[Hashable]) -> int:
    """Number of distinct clusters."""
    return len(set(clusters))


def too_few_clusters_note(n: int) -> str:
    """The note that stands in for an interval from fewer than :data:`MIN_CLUSTERS_CI` clusters."""
    return f"no interval: fewer than {MIN_CLUSTERS_CI} articles ({n})"


def cluster_bootstrap_interval(
    statistic,
    columns: Sequence[Sequence[float]],
    clusters: Sequence[Hashable],
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile interval of ``statistic(*columns)`` under a bootstrap that resamples clusters.

    ``columns`` are equally long observation arrays (e.g. per-pair recognition and preference);
    each resample draws clusters with replacement (as many as there are) and evaluates the
    statistic on every observation of the drawn clusters, repeated as often as its cluster was
    drawn. :func:`scipy.stats.bootstrap` draws the clusters and forms the interval; ``None`` when
    no resample gives a finite value.
    """
    cols = [np.asarray(c, dtype=float) for c in columns]
    if any(len(c) != len(clusters) for c in cols):
        raise ValueError("every column needs one value per cluster label")
    keys, codes = {}, []
    for c in clusters:
        codes.append(keys.setdefault(c, len(keys)))
    codes = np.asarray(codes, dtype=np.int64)
    order = np.argsort(codes, kind="stable")  # rows grouped by cluster, contiguous
    sizes = np.bincount(codes, minlength=len(keys))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sorted_cols = [c[order] for c in cols]

    def on_draw(drawn):
        drawn = np.asarray(drawn, dtype=np.int64)
        lengths = sizes[drawn]
        total = int(lengths.sum())
        # row positions of the drawn clusters: start of each cluster + 0..size-1
        offsets = np.repeat(starts[drawn] - np.cumsum(lengths) + lengths, lengths)
        rows = offsets + np.arange(total)
        return statistic(*(c[rows] for c in sorted_cols))

    if len(keys) < 2:
        return None
    res = sps.bootstrap((np.arange(len(keys)),), on_draw, vectorized=False, n_resamples=n_resamples,
                        confidence_level=confidence, method="percentile",
                        rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def cluster_resample_weights(n_clusters: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """``(n_resamples, n_clusters)`` draw counts: how often each cluster is drawn (with replacement,
    ``n_clusters`` draws) in each seeded resample.

    Use one matrix for several series that share clusters (e.g. every run of a sweep evaluated on
    the same articles) so that each resample draws the same articles for all of them.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_clusters, size=(n_resamples, n_clusters))
    flat = (idx + n_clusters * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n_clusters).reshape(n_resamples, n_clusters)


def resampled_means(sums: np.ndarray, counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Ratio-of-sums means for every resample.

    ``sums``/``counts`` are ``(k, n_clusters)`` (one row per series; a series with no observation
    in a cluster has count 0 there); ``weights`` is from :func:`cluster_resample_weights`.
    Returns ``(k, n_resamples)``; a series with no observation in a resample gives NaN.
    """
    sums = np.atleast_2d(np.asarray(sums, dtype=float))
    counts = np.atleast_2d(np.asarray(counts, dtype=float))
    w = np.asarray(weights, dtype=float).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums @ w) / (counts @ w)


def percentile_interval(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the finite bootstrap ``samples``; ``None`` if none is finite."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(s, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def safe_pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r via :func:`scipy.stats.pearsonr`; NaN when undefined (n < 2 or a constant input)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(sps.pearsonr(x, y).statistic)


def safe_kendall(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall tau-b and p-value via :func:`scipy.stats.kendalltau`; NaN when undefined."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    res = sps.kendalltau(x, y)
    return float(res.statistic), float(res.pvalue)


def safe_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of y on x via :func:`scipy.stats.linregress`; NaN when x is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or np.ptp(x) == 0:
        return float("nan")
    return float(sps.linregress(x, y).slope)


def residuals(y: Sequence[float], z: Sequence[float]) -> np.ndarray:
    """Residuals of the least-squares regression of ``y`` on ``z`` (with intercept)."""
    y, z = np.asarray(y, dtype=float), np.asarray(z, dtype=float)
    if np.ptp(z) == 0:
        return y - y.mean()
    fit = sps.linregress(z, y)
    return y - (fit.intercept + fit.slope * z)


def partial_correlation(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> float:
    """Pearson correlation of x and y after regressing each on the covariate z; NaN if undefined.

    Needs at least 4 observations (with 3, the two residual vectors are always collinear).
    """
    x, y, z = (np.asarray(a, dtype=float) for a in (x, y, z))
    if x.size < 4:
        return float("nan")
    rx, ry = residuals(x, z), residuals(y, z)
    scale = max(1.0, float(np.max(np.abs(x))), float(np.max(np.abs(y))))
    if np.ptp(rx) <= 1e-12 * scale or np.ptp(ry) <= 1e-12 * scale:
        return float("nan")
    return float(sps.pearsonr(rx, ry).statistic)


def json_safe(obj):
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    return obj


def mean_block(values: Sequence[float], clusters: Sequence[Hashable], seed: int = 0,
               n_resamples: int = 2000) -> dict:
    """``{"mean", "ci95", "n", "n_articles"}`` with an article-clustered bootstrap interval (None, with
    a ``ci_note``, from fewer than :data:`MIN_CLUSTERS_CI` articles; ``mean`` None without values):
    the block every control's report entry is made of."""
    k = n_clusters(clusters)
    if len(values) == 0:
        return {"mean": None, "ci95": None, "n": 0, "n_articles": 0}
    m, (lo, hi) = cluster_bootstrap_mean(values, clusters, n_resamples=n_resamples, seed=seed)
    out: dict = {"mean": m, "ci95": [lo, hi], "n": len(values), "n_articles": k}
    if k < MIN_CLUSTERS_CI:
        out["ci95"], out["ci_note"] = None, too_few_clusters_note(k)
    return out
