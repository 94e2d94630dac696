"""The training report: recognition and preference before, during and after fine-tuning.

Built from the evaluation hook's records (:data:`selfrec_ft.training.hook.HOOK_FILE`): the first
record is the baseline (step 0, before any update), records made at checkpoint saves are the
checkpoints, the last one is the final model. Writes ``report.json``, ``report.md`` and
``recognition_preference_by_step.png`` into the run's output directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfrec_ft.jsonl import atomic_write_json, atomic_write_text
from selfrec_ft.training.hook import DOMAINS, read_hook_records

PLOT_FILE = "recognition_preference_by_step.png"


def _domains(rec: dict[str, Any]) -> dict[str, Any]:
    return {d: rec[d] for d in DOMAINS if d in rec}


def build_training_report(output_dir: str | Path) -> dict[str, Any] | None:
    records = read_hook_records(output_dir)
    if not records:
        return None
    first, last = records[0], records[-1]
    return {
        "baseline": {"step": first["step"], **_domains(first)},
        "final": {"step": last["step"], **_domains(last)},
        "checkpoints": [{"step": r["step"], **_domains(r)} for r in records if r.get("event") == "save"],
        "evaluations": len(records),
    }


def _fmt(m: dict[str, Any] | None) -> str:
    if not m or m.get("mean") is None:
        return "–"
    lo, hi = m.get("ci95") or (None, None)
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
    return f"{m['mean']:.3f}{ci}" + (" (position-biased)" if m.get("position_biased") else "")


def render_training_markdown(report: dict[str, Any]) -> str:
    lines = ["# Self-recognition fine-tuning: recognition and preference by training step", "",
             "Pairwise scores on held-out articles, both orders, normalised over the options; 0.5 is "
             "chance; 95% CIs resample articles.", "",
             "| stage | step | domain | recognition | preference | n pairs |", "|---|---|---|---|---|---|"]
    stages = [("baseline", report["baseline"])] + [("checkpoint", c) for c in report["checkpoints"]]
    stages.append(("final", report["final"]))
    for stage, rec in stages:
        for d in DOMAINS:
            if d in rec:
                r = rec[d]
                n = (r.get("recognition") or {}).get("n")
                lines.append(f"| {stage} | {rec['step']} | {d.replace('_', '-')} | {_fmt(r.get('recognition'))} | "
                             f"{_fmt(r.get('preference'))} | {n if n is not None else '–'} |")
    return "\n".join(lines) + "\n"


def plot_by_step(output_dir: str | Path, path: str | Path | None = None) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_hook_records(output_dir)
    if not records:
        return None
    doms = [d for d in DOMAINS if any(d in r for r in records)]
    fig, axes = plt.subplots(1, len(doms), figsize=(5.5 * len(doms), 4), squeeze=False, sharey=True)
    for ax, d in zip(axes[0], doms):
        for measure, colour in (("recognition", "tab:blue"), ("preference", "tab:orange")):
            pts = [(r["step"], r[d][measure]) for r in records if d in r and r[d].get(measure, {}).get("mean") is not None]
            if not pts:
                continue
            steps = [s for s, _ in pts]
            means = [m["mean"] for _, m in pts]
            lo = [m["mean"] - (m.get("ci95") or [m["mean"]] * 2)[0] for _, m in pts]
            hi = [(m.get("ci95") or [m["mean"]] * 2)[1] - m["mean"] for _, m in pts]
            ax.errorbar(steps, means, yerr=[lo, hi], marker="o", capsize=3, color=colour, label=measure)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_title(d.replace("_", "-"))
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1)
        ax.legend()
    axes[0][0].set_ylabel("score on self summary (0.5 = chance)")
    fig.tight_layout()
    out = Path(path) if path else Path(output_dir) / PLOT_FILE
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_training_report(output_dir: str | Path) -> dict[str, Any] | None:
    """Write report.json, report.md and the PNG from the hook records; returns the report."""
    report = build_training_report(output_dir)
    if report is None:
        return None
    out = Path(output_dir)
    plot = plot_by_step(out)
    report["plot"] = plot.name if plot else None
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_training_markdown(report))
    return report
