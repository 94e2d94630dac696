"""PNG plots of a sweep analysis (matplotlib, Agg; no pyplot global state).

All functions take the dict from :func:`selfrec_ft.sweep.analysis.analyse_sweep` (so a plot can
be redrawn from ``analysis.json`` alone) and return the path written, or None if there is nothing
to draw.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from selfrec_ft import stats
from selfrec_ft.files import save_figure

TASKS = ("recognition", "preference")


def _figure(n_panels: int, rows: int = 1, height: float = 4.2) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(4.8 * n_panels, height * rows), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(rows, n_panels, squeeze=False))
    return fig, axes


def _colours(strategies) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {s: cmap(i % 10) for i, s in enumerate(sorted(set(strategies)))}


def _err(block: Mapping[str, Any]) -> tuple[float, float]:
    m, ci = block["mean"], block.get("ci95")
    return (0.0, 0.0) if not ci else (m - ci[0], ci[1] - m)


def _domains(analysis: Mapping[str, Any]) -> list[str]:
    seen = [d for r in analysis["runs"] for d in r["domains"]]
    order = [d for d in analysis.get("correlation", {}) if d in seen]
    return order + [d for d in dict.fromkeys(seen) if d not in order]


def plot_recognition_vs_preference(analysis: Mapping[str, Any], path: str | os.PathLike) -> str | None:
    """Per run: mean recognition (x) vs preference (y) with 95% CIs, one colour per label strategy,
    one panel per domain, and the least-squares line across runs."""
    domains = [d for d in _domains(analysis) if any(
        d in r["domains"] and all((r["domains"][d].get(t) or {}).get("mean") is not None for t in TASKS)
        for r in analysis["runs"])]
    if not domains:
        return None
    colours = _colours(r["label_strategy"] for r in analysis["runs"])
    fig, axes = _figure(len(domains))
    for ax, dom in zip(axes[0], domains):
        xs, ys, used = [], [], set()
        for r in analysis["runs"]:
            d = r["domains"].get(dom)
            if not d or any((d.get(t) or {}).get("mean") is None for t in TASKS):
                continue
            rec, pref = d["recognition"], d["preference"]
            s = r["label_strategy"]
            ax.errorbar(rec["mean"], pref["mean"], xerr=np.array([_err(rec)]).T,
                        yerr=np.array([_err(pref)]).T, fmt="o", color=colours[s], capsize=3,
                        label=None if s in used else s)
            used.add(s)
            xs.append(rec["mean"])
            ys.append(pref["mean"])
        slope = stats.safe_slope(xs, ys)
        if np.isfinite(slope):
            grid = np.linspace(min(xs), max(xs), 20)
            ax.plot(grid, np.mean(ys) + slope * (grid - np.mean(xs)), "k--", lw=1,
                    label=f"fit (slope {slope:.2f})")
        c = analysis.get("correlation", {}).get(dom, {})
        r_val = (c.get("pearson") or {}).get("r")
        p_run = ((c.get("pearson") or {}).get("run_level") or {}).get("p_value")
        title = dom + (f"  (r = {r_val:.2f}" if r_val is not None else "")
        if r_val is not None:
            title += (f", run-level p = {p_run:.2g}" if p_run is not None else "") + (
                ": supported)" if c.get("supported") else ": not supported)")
        ax.set_title(title, fontsize=9)
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.axvline(0.5, color="grey", lw=0.5)
        ax.set_xlabel("recognition (pairwise)")
        ax.set_ylabel("preference (pairwise)")
        ax.legend(fontsize=7)
    return str(save_figure(fig, path))


def plot_dose_response(analysis: Mapping[str, Any], path: str | os.PathLike) -> str | None:
    """Recognition and preference (95% CI) against ``params.flip_fraction``, one panel per domain."""
    dose = analysis.get("dose_response") or {}
    if not dose:
        return None
    by_id = {r["run_id"]: r for r in analysis["runs"]}
    fig, axes = _figure(len(dose))
    for ax, (dom, d) in zip(axes[0], dose.items()):
        pts = sorted(d["points"], key=lambda p: p["flip_fraction"])
        for task, marker in zip(TASKS, ("o-", "s-")):
            blocks = [by_id[p["run_id"]]["domains"][dom][task] for p in pts]
            ax.errorbar([p["flip_fraction"] for p in pts], [b["mean"] for b in blocks],
                        yerr=np.array([_err(b) for b in blocks]).T, fmt=marker, capsize=3, label=task)
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_title(dom)
        ax.set_xlabel("flip fraction (share of wrong labels)")
        ax.set_ylabel("mean pairwise score")
        ax.legend(fontsize=8)
    return str(save_figure(fig, path))


def plot_checkpoints(analysis: Mapping[str, Any], path: str | os.PathLike) -> str | None:
    """Recognition (top) and preference (bottom) per checkpoint step, one line per run, one column
    per domain."""
    runs = [r for r in analysis["runs"] if r.get("checkpoints")]
    domains = list(dict.fromkeys(d for r in runs for c in r["checkpoints"] for d in c["domains"]))
    if not domains:
        return None
    colours = _colours(r["run_id"] for r in runs)
    fig, axes = _figure(len(domains), rows=2, height=3.4)
    for col, dom in enumerate(domains):
        for row, task in enumerate(TASKS):
            ax = axes[row, col]
            for r in runs:
                pts = [(c["step"], c["domains"][dom][task]) for c in r["checkpoints"]
                       if c["step"] is not None and dom in c["domains"]
                       and (c["domains"][dom].get(task) or {}).get("mean") is not None]
                if not pts:
                    continue
                ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts],
                            yerr=np.array([_err(p[1]) for p in pts]).T, fmt="o-", ms=3, capsize=2,
                            color=colours[r["run_id"]], label=f'{r["run_id"]} ({r["label_strategy"]})')
            ax.axhline(0.5, color="grey", lw=0.5)
            ax.set_title(f"{dom}: {task}")
            ax.set_xlabel("training step")
            ax.set_ylabel(task)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return str(save_figure(fig, path))


def write_plots(analysis: Mapping[str, Any], out_dir: str | os.PathLike) -> list[str]:
    """Write every plot that has data into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for fn, name in ((plot_recognition_vs_preference, "recognition_vs_preference.png"),
                     (plot_dose_response, "dose_response.png"),
                     (plot_checkpoints, "checkpoints.png")):
        p = fn(analysis, out_dir / name)
        if p:
            written.append(p)
    return written
