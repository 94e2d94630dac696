"""A steering sweep: recognition and preference at each steering value, as a sweep directory.

For every value and domain one resumable evaluation (:func:`selfrec_ft.scoring.evaluate.evaluate`,
pairwise recognition and preference, both orders) runs with the intervention attached to the scorer:

```
OUT/steer_config.json                  the setting (a rerun with another one is refused)
OUT/runs/<mode>_<value>/<domain>/      examples.jsonl, eval_config.json, report.json, report.md
OUT/steer.json                         {"kind", "mode", "layer", "target", "norm", "points": [{"value",
                                         "in_domain": {"recognition": {"mean", "ci95", ...},
                                                       "preference": {...}}, "out_of_domain": {...}}]}
OUT/runs.json                          the sweep-directory shape: `selfrec analyze OUT` correlates
                                       recognition and preference across the values like across runs
OUT/steer.md, OUT/steer_<domain>.png   the table; recognition and preference against the value
```

The point at the mode's null value (``add`` 0, ``scale`` 1) is the unsteered evaluator: runs.json
labels it ``baseline`` (``params.n_articles`` = the in-domain ``skip_first``, as every point), so the
analysis measures each value's shift against it on the same articles; the other points are labelled
``steer``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from selfrec_ft.defaults import EXAMPLES_FILE, STEER_KINDS, STEER_MODES, STEER_NULL_VALUE, STEER_TARGETS
from selfrec_ft.errors import UserError
from selfrec_ft.files import save_figure
from selfrec_ft.jsonl import atomic_write_json, atomic_write_text, record_settings
from selfrec_ft.scoring.spec import EvalSpec

CONFIG_FILE = "steer_config.json"
STEER_JSON = "steer.json"
STEER_MD = "steer.md"
RUNS_DIR = "runs"
MEASURES = ("recognition", "preference")
STEER_TASKS = ("pairwise-recognition", "pairwise-preference")


@dataclass(frozen=True)
class SteerSetting:
    """What is steered: the direction ``kind`` at ``layer``, by ``mode`` (``add`` at the ``target``
    summary's tokens, α · norm · u with the norm of ``norm_of``'s direction at that layer, default the
    kind's own; or ``scale`` by λ from the first summary on)."""

    kind: str
    mode: str
    layer: int
    target: str | None = None
    norm_of: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in STEER_KINDS:
            raise UserError(f"unknown direction kind {self.kind!r}; use {', '.join(STEER_KINDS)}")
        if self.mode not in STEER_MODES:
            raise UserError(f"unknown steering mode {self.mode!r}; use {', '.join(STEER_MODES)}")
        if self.mode == "add" and self.target not in STEER_TARGETS:
            raise UserError(f"--mode add needs --target ({' or '.join(STEER_TARGETS)})")
        if self.mode == "scale" and (self.target is not None or self.norm_of is not None):
            raise UserError("--target and --norm-of apply to --mode add only (scale acts from the first summary on)")
        if self.norm_of is not None and self.norm_of not in STEER_KINDS:
            raise UserError(f"unknown --norm-of kind {self.norm_of!r}; use {', '.join(STEER_KINDS)}")

    @property
    def null_value(self) -> float:
        return STEER_NULL_VALUE[self.mode]

    def norm(self, directions) -> float | None:
        return directions.norm(self.norm_of or self.kind, self.layer) if self.mode == "add" else None

    def intervention(self, directions, value: float):
        """The :class:`~selfrec_ft.steering.hooks.Intervention` of this setting at ``value``."""
        import torch

        from selfrec_ft.steering.hooks import Intervention

        u = torch.from_numpy(directions.unit(self.kind, self.layer).copy())
        if self.mode == "add":
            return Intervention("add", {self.layer: value * self.norm(directions) * u}, target=self.target)
        return Intervention("scale", {self.layer: u}, lam=value)


def parse_values(text: str) -> list[float]:
    """``"-1,0,0.5"`` -> ``[-1.0, 0.0, 0.5]`` (finite, no value twice)."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise UserError(f"--values: not a number: {part!r}") from None
        if not math.isfinite(v):
            raise UserError(f"--values: not a finite number: {part!r}")
        if v in out:
            raise UserError(f"--values: {part} is listed twice")
        out.append(v)
    if not out:
        raise UserError("--values: no value given")
    return out


def run_id(mode: str, value: float) -> str:
    return f"{mode}_{value:g}"


def _block(report: Mapping[str, Any], measure: str) -> dict[str, Any] | None:
    b = (report.get("pairwise") or {}).get(measure)
    if not b:
        return None
    keep = ("mean", "ci95", "ci_note", "n", "accuracy", "invalid", "position_biased")
    return {k: b[k] for k in keep if k in b}


def run_steer_sweep(scorer, directions, setting: SteerSetting, values: Sequence[float],
                    specs: Mapping[str, EvalSpec], out_dir: str | os.PathLike, *, progress: bool = True
                    ) -> dict[str, Any]:
    """Score ``specs`` (domain -> spec; their tasks are replaced by recognition and preference) at
    every value of ``setting`` into ``out_dir``; resumable (each evaluation resumes on its own).
    Returns the steer.json dict and writes every file of the module docstring."""
    from selfrec_ft.scoring.evaluate import evaluate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    values = list(values)
    settings = {
        **asdict(setting), "directions": directions.manifest.get("path"),
        "directions_sha256": directions.manifest.get("directions_sha256"), "model": scorer.source,
        "domains": {d: {"corpus": str(s.corpus) if not hasattr(s.corpus, "path") else str(s.corpus.path),
                        "self_source": s.self_source, "skip_first": s.skip_first, "limit": s.limit,
                        "preset": s.preset} for d, s in specs.items()},
    }
    record_settings(out / CONFIG_FILE, settings, held="this directory holds a steering sweep", strict=True,
                    hint="use another --out (or delete the directory) to start a new one")
    points, runs = [], []
    for value in values:
        rid = run_id(setting.mode, value)
        point: dict[str, Any] = {"value": value, "run_id": rid}
        evals = {}
        with scorer.hooked(setting.intervention(directions, value)):
            for dom, spec in specs.items():
                run_dir = out / RUNS_DIR / rid / dom
                if progress:
                    print(f"{setting.kind} {setting.mode} {value:g} at layer {setting.layer}: {dom}", flush=True)
                result = evaluate(scorer, spec.replace(tasks=STEER_TASKS, domain=dom), run_dir, progress=progress)
                point[dom] = {m: _block(result.report, m) for m in MEASURES}
                evals[dom] = os.path.relpath(run_dir / EXAMPLES_FILE, out)
        points.append(point)
        in_spec = next(iter(specs.values()))
        runs.append({"run_id": rid, "status": "done", "error": None,
                     "params": {"labels": "baseline" if value == setting.null_value else "steer",
                                "n_articles": in_spec.skip_first, "steer_kind": setting.kind,
                                "steer_mode": setting.mode, "steer_target": setting.target,
                                "steer_layer": setting.layer, "steer_value": value},
                     "output_dir": os.path.relpath(out / RUNS_DIR / rid, out), "eval": evals, "checkpoints": []})
        atomic_write_json(out / "runs.json", {"runs": runs})
    steer = {"kind": setting.kind, "mode": setting.mode, "layer": setting.layer, "target": setting.target,
             "norm_of": setting.norm_of or (setting.kind if setting.mode == "add" else None),
             "norm": setting.norm(directions), "separation": directions.separation(setting.kind, setting.layer),
             "null_value": setting.null_value, "directions": directions.manifest.get("path"),
             "model": scorer.name, "points": points}
    atomic_write_json(out / STEER_JSON, steer)
    steer["plots"] = write_plots(steer, out)
    atomic_write_json(out / STEER_JSON, steer)
    atomic_write_text(out / STEER_MD, steer_markdown(steer))
    return steer


# ----------------------------------------------------------------------------- outputs


def _value_label(steer: Mapping[str, Any]) -> str:
    if steer["mode"] == "add":
        return f"α (adds α × {steer['norm_of']} norm × u at the {steer['target']} summary)"
    return "λ (component along u scaled by λ)"


def steer_markdown(steer: Mapping[str, Any]) -> str:
    """The table of a steering sweep: recognition and preference per value and domain."""
    from selfrec_ft.markdown import estimate, num, table

    domains = [d for d in dict.fromkeys(k for p in steer["points"] for k in p if k not in ("value", "run_id"))]
    header = ["value"] + [f"{d.replace('_', '-')} {m}" for d in domains for m in MEASURES]
    rows = []
    for p in steer["points"]:
        mark = " (unsteered)" if p["value"] == steer["null_value"] else ""
        rows.append([f"{p['value']:g}{mark}"] + [estimate((p.get(d) or {}).get(m), biased=" (position-biased)")
                                                 for d in domains for m in MEASURES])
    norm = f", norm {num(steer['norm'])}" if steer.get("norm") is not None else ""
    lines = [f"# Steering: {steer['kind']} direction, {steer['mode']}, layer {steer['layer']}", "",
             f"Value: {_value_label(steer)}{norm}; held-out separation of the direction at this layer (AUROC): "
             f"{num(steer.get('separation'))}. Pairwise scores on held-out articles, both orders; 0.5 = chance; "
             "95% CIs resample articles.", ""]
    lines += table(header, rows)
    return "\n".join(lines) + "\n"


def write_plots(steer: Mapping[str, Any], out_dir: str | os.PathLike) -> list[str]:
    """``steer_<domain>.png``: recognition and preference (95% CIs) against the steering value."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = []
    domains = [d for d in dict.fromkeys(k for p in steer["points"] for k in p if k not in ("value", "run_id"))]
    for dom in domains:
        fig = Figure(figsize=(5.6, 4.2), constrained_layout=True)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        drawn = False
        for m, marker in zip(MEASURES, ("o", "s")):
            pts = sorted((p["value"], (p.get(dom) or {}).get(m)) for p in steer["points"])
            pts = [(v, b) for v, b in pts if b and b.get("mean") is not None]
            if not pts:
                continue
            xs = [v for v, _ in pts]
            ys = [b["mean"] for _, b in pts]
            err = [[b["mean"] - b["ci95"][0] if b.get("ci95") else 0 for _, b in pts],
                   [b["ci95"][1] - b["mean"] if b.get("ci95") else 0 for _, b in pts]]
            ax.errorbar(xs, ys, yerr=err, marker=marker, capsize=3, label=m)
            drawn = True
        if not drawn:
            continue
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.axvline(steer["null_value"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel(_value_label(steer))
        ax.set_ylabel("pairwise score (0.5 = chance)")
        ax.set_title(f"{steer['kind']} {steer['mode']}, layer {steer['layer']}: {dom.replace('_', '-')}")
        ax.legend()
        path = Path(out_dir) / f"steer_{dom}.png"
        out.append(str(save_figure(fig, path)))
    return out
