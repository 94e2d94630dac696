"""Read a comparisons file, fit P2's Bayesian logistic regression, write report.json, report.md and
a bar chart of preference scores.

Input (one JSON object a line)::

    {"features": {PROPERTY: -1 | 0 | 1, ...}, "preferred": 1 | 0}

``preferred`` is 1 when response 1 was preferred. Property names are P2's 29 names and ``self``
(:data:`~selfrec_ft.dissection.properties.FEATURES`); a property missing from a line counts as 0.
Only properties that are non-zero in at least one line are fitted and reported; the others are
listed under ``"absent"`` (their posterior would be the prior: a score of 50 that means "no data").
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfrec_ft.dissection.fit import DEFAULT_METHOD, DEFAULT_PRIOR_SCALE, Fit, accuracy, fit
from selfrec_ft.dissection.properties import FEATURES, SHORT_LABELS
from selfrec_ft.errors import UserError
from selfrec_ft.files import save_figure
from selfrec_ft.jsonl import atomic_write_json, atomic_write_text, iter_jsonl

PLOT_NAME = "preference_scores.png"
_INDEX = {name: i for i, name in enumerate(FEATURES)}


@dataclass(frozen=True)
class Comparisons:
    """Feature matrix ``X`` (n, len(FEATURES)) in FEATURES order and labels ``y`` (1 = response 1)."""

    X: np.ndarray
    y: np.ndarray


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def comparisons_from_rows(rows: Iterable[tuple[int | None, Mapping[str, Any]]], path: str | os.PathLike | None = None,
                          require_preferred: bool = True) -> Comparisons:
    """``X`` (features in :data:`FEATURES` order, a missing one is 0) and ``y`` of ``(line, row)``
    pairs; a bad feature name or value, or a bad/missing ``preferred`` is a :class:`UserError` at
    ``path:line``. Without ``require_preferred`` a row may lack ``preferred`` (its ``y`` is 0)."""
    xs: list[np.ndarray] = []
    labels: list[int] = []
    for lineno, obj in rows:
        if "preferred" not in obj and require_preferred:
            raise UserError('missing field "preferred"', path, lineno)
        pref = obj.get("preferred", 0)
        if not _is_number(pref) or pref not in (0, 1):
            raise UserError(f'"preferred" must be 1 (response 1) or 0 (response 2), got {pref!r}', path, lineno)
        x = np.zeros(len(FEATURES))
        for name, value in obj["features"].items():
            if name not in _INDEX:
                close = difflib.get_close_matches(name, FEATURES, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise UserError(f'unknown property "{name}"{hint}', path, lineno)
            if not _is_number(value) or value not in (-1, 0, 1):
                raise UserError(f'property "{name}" must be -1, 0 or 1, got {value!r}', path, lineno)
            x[_INDEX[name]] = value
        xs.append(x)
        labels.append(int(pref))
    if not xs:
        raise UserError("no comparisons", path)
    return Comparisons(X=np.vstack(xs), y=np.asarray(labels, dtype=int))


def read_comparisons(path: str | os.PathLike) -> Comparisons:
    """Parse and validate a comparisons file; any problem is a :class:`UserError` with file:line."""
    return comparisons_from_rows(iter_jsonl(path, required={"features": dict}), path)


def dissect(
    comp: Comparisons, method: str = DEFAULT_METHOD, prior_scale: float = DEFAULT_PRIOR_SCALE, **fit_kwargs
) -> dict[str, Any]:
    """Fit the present properties and return the report.json dict.

    ``method``: ``nuts`` (default: posterior mean and 95% credible interval), ``nuts-p2`` (P2's
    exact fold-averaged NUTS) or ``map`` (posterior mode, Laplace interval); ``fit_kwargs`` are NUTS
    settings (``folds``, ``num_warmup``, ``num_samples``, ``num_chains``, ``seed``).
    """
    present = np.flatnonzero(np.any(comp.X != 0, axis=0))
    if present.size == 0:
        raise UserError("every feature is 0 in every line: nothing to fit")
    X = comp.X[:, present]
    result: Fit = fit(X, comp.y, method=method, prior_scale=prior_scale, **fit_kwargs)
    scores, sci = result.scores, result.score_ci95
    props = {}
    for j, col in enumerate(present):
        props[FEATURES[col]] = {
            "weight": float(result.weights[j]),
            "score": float(scores[j]),
            "ci95": [float(sci[j, 0]), float(sci[j, 1])],
            "n_nonzero": int(np.count_nonzero(X[:, j])),
        }
    report = {
        "properties": props,
        "n": int(len(comp.y)),
        "accuracy": accuracy(X, comp.y, result.weights),
        "method": result.method,
        "prior_scale": prior_scale,
        "absent": [FEATURES[c] for c in range(len(FEATURES)) if c not in set(present.tolist())],
    }
    if result.settings is not None:
        report["settings"] = result.settings
        report["folds"] = result.settings["folds"]
        report["diagnostics"] = result.diagnostics
    return report


def _method_line(report: dict[str, Any]) -> str:
    st = report.get("settings") or {}
    draws = (f"{st.get('num_chains')} chains × {st.get('num_samples')} draws after {st.get('num_warmup')} "
             f"warm-up, seed {st.get('seed')}")
    if report["method"] == "map":
        return "posterior mode, Laplace-approximation interval"
    if report["method"] == "nuts-p2":
        return f"NUTS posterior mean averaged over {st.get('folds')} folds (P2's procedure: {draws}), 95% credible interval"
    folds = f", averaged over {st['folds']} folds" if st.get("folds", 1) > 1 else ""
    return f"posterior mean and 95% credible interval (NUTS, {draws}{folds})"


def report_markdown(report: dict[str, Any], title: str = "Preference dissection") -> str:
    """Readable table of ``report``, properties sorted by score (highest first)."""
    method = _method_line(report)
    lines = [
        f"# {title}",
        "",
        f"{report['n']} comparisons; in-sample accuracy {report['accuracy']:.3f}. "
        f"Bayesian logistic regression, no intercept, Laplace(0, {report['prior_scale']:g}) prior; {method}.",
        "Score = 100·σ(weight): the chance that response 1 is preferred when it is better on this "
        "property alone (50 = indifferent).",
        "",
        "| property | score | 95% CI | weight | pairs differing |",
        "|---|---:|---|---:|---:|",
    ]
    for name, p in sorted(report["properties"].items(), key=lambda kv: -kv[1]["score"]):
        lo, hi = p["ci95"]
        lines.append(f"| {name} | {p['score']:.2f} | [{lo:.2f}, {hi:.2f}] | {p['weight']:+.4f} | {p['n_nonzero']} |")
    if report["absent"]:
        lines += ["", "Not fitted (0 in every comparison): " + ", ".join(report["absent"]) + "."]
    diag = report.get("diagnostics") or {}
    if diag.get("r_hat_max") is not None:
        lines += ["", f"Sampler diagnostics: worst R-hat {diag['r_hat_max']:.3f}, smallest effective sample "
                      f"size {diag['ess_min']:.0f}."
                  + (" R-hat above 1.01: the chains disagree; rerun with more warm-up and draws."
                     if diag["r_hat_max"] > 1.01 else "")]
    return "\n".join(lines) + "\n"


def plot_scores(report: dict[str, Any], path: str | os.PathLike, title: str = "Preference dissection") -> None:
    """P2-style chart: a horizontal bar per property from 50 to its score, sorted, with 95% whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(report["properties"].items(), key=lambda kv: kv[1]["score"])
    names = [SHORT_LABELS[n] for n, _ in items]
    s = np.array([p["score"] for _, p in items])
    lo = np.array([p["ci95"][0] for _, p in items])
    hi = np.array([p["ci95"][1] for _, p in items])
    ypos = np.arange(len(items))
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.32 * len(items)))
    colors = np.where(s >= 50, "tab:blue", "tab:orange")
    ax.barh(ypos, s - 50, left=50, color=colors, alpha=0.85,
            xerr=np.vstack([s - lo, hi - s]), error_kw={"ecolor": "black", "capsize": 3, "lw": 1})
    ax.axvline(50, color="red", linestyle="--", lw=1)
    ax.set_yticks(ypos, names)
    ax.set_xlabel("preference score (%): response 1 preferred when better on this property alone")
    ax.set_title(f"{title} (n = {report['n']})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def run_dissection(
    comparisons: str | os.PathLike, out_dir: str | os.PathLike, method: str = DEFAULT_METHOD,
    prior_scale: float = DEFAULT_PRIOR_SCALE, title: str | None = None, **fit_kwargs,
) -> dict[str, Any]:
    """Read ``comparisons``, fit, and write ``report.json``, ``report.md`` and the chart to ``out_dir``."""
    if not prior_scale > 0:
        raise UserError(f"the prior scale must be positive, got {prior_scale}")
    comp = read_comparisons(comparisons)
    report = dissect(comp, method=method, prior_scale=prior_scale, **fit_kwargs)
    out = Path(out_dir)
    title = title or f"Preference dissection: {Path(comparisons).name}"
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report, title))
    plot_scores(report, out / PLOT_NAME, title)
    return report
