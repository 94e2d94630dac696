"""The training report: recognition and preference before, during and after fine-tuning.

Built from the evaluation hook's records (``selfrec_hook.jsonl``, :mod:`selfrec_ft.training.hook`): the first
record is the baseline (step 0, before any update), every later record but the end-of-training one is
a checkpoint (saves, and the evaluation of the checkpoint a run resumed from: event ``resume``), the
last one is the final model. Writes ``report.json``, ``report.md`` and
``recognition_preference_by_step.png`` into the run's output directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfrec_ft import markdown as md
from selfrec_ft.files import save_figure
from selfrec_ft.defaults import DOMAIN_KEYS as DOMAINS
from selfrec_ft.defaults import HOOK_FILE, REPORT_JSON, REPORT_MD
from selfrec_ft.jsonl import atomic_write_json, atomic_write_text, read_jsonl_rows
from selfrec_ft.analysis.style_ceiling import render_section as render_style_section
from selfrec_ft.analysis.style_ceiling import training_section as style_section
from selfrec_ft.analysis.style_ceiling import verdict
from selfrec_ft.training.canary import canary_report, plot_canary, render_canary_markdown

PLOT_FILE = "recognition_preference_by_step.png"
STAGE_NOTE = ("Pairwise scores on held-out articles, both orders, normalised over the options; 0.5 is "
              "chance; 95% CIs resample articles.")


def _domains(rec: dict[str, Any]) -> dict[str, Any]:
    """The record's domains; a question-following block gets its verdict from the current rules
    (:func:`selfrec_ft.scoring.controls_preference.record_verdict`, given the domain's preference block
    for a record older than the hook's ``better_ci95``)."""
    from selfrec_ft.scoring.controls_preference import record_verdict

    out = {d: dict(rec[d]) for d in DOMAINS if d in rec}
    for d, r in out.items():
        if isinstance(r.get("question_following"), dict):
            qf = dict(r["question_following"])
            qf["verdict"], qf["answer_copying"] = record_verdict(qf, r.get("preference"))
            r["question_following"] = qf
    return out


def read_hook_records(output_dir: str | Path) -> list[dict[str, Any]]:
    """The hook's evaluations in step order (the last record of a step wins)."""
    by_step = {int(r["step"]): r for r in read_jsonl_rows(Path(output_dir) / HOOK_FILE)}
    return [by_step[s] for s in sorted(by_step)]


def build_training_report(output_dir: str | Path) -> dict[str, Any] | None:
    records = read_hook_records(output_dir)
    if not records:
        return None
    first, last = records[0], records[-1]
    report = {
        "baseline": {"step": first["step"], **_domains(first)},
        "final": {"step": last["step"], **_domains(last)},
        # every evaluation after the baseline but the end's: checkpoint saves, and the evaluation of the
        # checkpoint a run resumed from when its save-time evaluation was lost to the interruption
        "checkpoints": [{"step": r["step"], **_domains(r)} for r in records[1:] if r.get("event") != "end"],
        "evaluations": len(records),
    }
    canary = canary_report(records)
    if canary:
        report["canary"] = canary
        report.setdefault("notes", []).extend(canary["flags"])
    ceiling = style_section(output_dir, report)
    if ceiling:
        report["style_ceiling"] = ceiling
        if verdict(ceiling):
            report.setdefault("notes", []).append(verdict(ceiling))
    return report


def _fmt(m: dict[str, Any] | None) -> str:
    return md.estimate(m, biased=" (position-biased)")


def stage_rows(report: dict[str, Any]) -> list[list[str]]:
    """``[stage, step, domain, recognition, preference, n pairs]`` per stage (baseline, every
    checkpoint, final) and domain, formatted."""
    stages = [("baseline", report["baseline"])] + [("checkpoint", c) for c in report["checkpoints"]]
    stages.append(("final", report["final"]))
    gap = has_question_following(report)
    rows = []
    for stage, rec in stages:
        for d in DOMAINS:
            if d in rec:
                r = rec[d]
                n = (r.get("recognition") or {}).get("n")
                rows.append([stage, str(rec["step"]), d.replace("_", "-"), _fmt(r.get("recognition")),
                             _fmt(r.get("preference")), md.DASH if n is None else str(n)]
                            + ([md.estimate(r.get("question_following"))] if gap else []))
    return rows


def has_question_following(report: dict[str, Any]) -> bool:
    """Whether the hook logged the question-following gap (better − worse) in any evaluation."""
    recs = [report["baseline"], report["final"], *report["checkpoints"]]
    return any("question_following" in (rec.get(d) or {}) for rec in recs for d in DOMAINS)


GAP_HEADER = ["better − worse gap"]
GAP_NOTE = ('better − worse gap: P(self picked) asked "which is better?" minus asked "which is worse?"; '
            "≈ 0 (interval includes 0) means the judge points at its own summary whatever it is asked.")


def render_training_markdown(report: dict[str, Any]) -> str:
    lines = ["# Self-recognition fine-tuning: recognition and preference by training step", "", STAGE_NOTE, ""]
    gap = has_question_following(report)
    lines += md.table(["stage", "step", "domain", "recognition", "preference", "n pairs"] + (GAP_HEADER if gap else []),
                      stage_rows(report))
    lines += ["", GAP_NOTE] if gap else []
    lines += final_verdicts(report) + quality_table(report) + controls_table(report)
    lines += render_canary_markdown(report.get("canary"))
    lines += render_style_section(report.get("style_ceiling"))
    return "\n".join(lines) + "\n"


def quality_table(report: dict[str, Any]) -> list[str]:
    """Harmful vs justified self-preference (and the DBG gap) of the baseline and the final model."""
    rows, reference = [], None
    for stage in ("baseline", "final"):
        for d in DOMAINS:
            qa = (report[stage].get(d) or {}).get("quality_preference")
            if qa:
                reference = qa["reference"]
                rows.append([stage, d.replace("_", "-"), *(f"{md.estimate(qa[k])} (n {qa[k]['n']})"
                                                           for k in ("justified", "harmful", "dbg"))])
    if not rows:
        return []
    return ["", f"Quality-aware self-preference ({reference}): P(self picked) where the self summary is better "
                "(justified) / worse (harmful); DBG gap = self-preference minus the quality reference's.", ""] + \
        md.table(["stage", "domain", "justified", "harmful", "DBG gap"], rows)


CONTROLS_NOTE = ("Is it self-recognition? Hit: share of its own summaries the judge claims when asked \"did you "
                 "write this?\" (p̂(Yes) > ½); false alarm: share of the other sources' summaries it claims; "
                 "d′ = Φ⁻¹(H) − Φ⁻¹(F) (log-linear corrected). Threshold-free: P1's individual ratio "
                 "p̂(Yes|self) / (p̂(Yes|self) + p̂(Yes|other)) and the AUROC of p̂(Yes) (self vs other; 0.5 = "
                 "chance). Perturbed: the same held-out pairs with both summaries perturbed (hook_perturb). "
                 "95% CIs resample articles.")


def controls_table(report: dict[str, Any]) -> list[str]:
    """Hit vs false-alarm rate (individual task) and the perturbed conditions of the baseline and the
    final model, per domain: one row per condition (``none`` = the plain pairs)."""
    rows = []
    for stage in ("baseline", "final"):
        for d in DOMAINS:
            r = report[stage].get(d) or {}
            conditions = [("none", r)] + [(f"{k} (seed {p.get('seed', 0)})", p)
                                          for k, p in (r.get("perturbed") or {}).items()]
            if len(conditions) == 1 and "hit_rate" not in r:
                continue
            for name, c in conditions:
                ratio = c.get("individual_ratio") or {}
                rows.append([stage, d.replace("_", "-"), name, _fmt(c.get("recognition")), _fmt(c.get("preference")),
                             md.estimate(c.get("hit_rate")), md.estimate(c.get("false_alarm_rate")),
                             md.estimate(c.get("d_prime"), "+.2f"), md.estimate(ratio),
                             md.num(ratio.get("auroc"))])
    if not rows:
        return []
    return ["", CONTROLS_NOTE, ""] + md.table(
        ["stage", "domain", "condition", "recognition", "preference", "hit rate", "false-alarm rate", "d′",
         "individual ratio", "AUROC"], rows)


def final_verdicts(report: dict[str, Any]) -> list[str]:
    """The question-following verdict of the final evaluation per domain (answer-copying said plainly)."""
    out = []
    for d in DOMAINS:
        qf = (report["final"].get(d) or {}).get("question_following") or {}
        if qf.get("verdict"):
            out.append(f"* final, {d.replace('_', '-')}: {'**answer-copying** — ' if qf.get('answer_copying') else ''}"
                       f"{qf['verdict']}")
    return ["", "Question-following of the final model:", "", *out] if out else []


def render_training_console(report: dict[str, Any], output_dir: str | Path) -> str:
    """The result table as aligned text for the console, then the paths of report.md and the plot."""
    header = ["stage", "step", "domain", "recognition [95% CI]", "preference [95% CI]", "n pairs"]
    rows = [header + (GAP_HEADER if has_question_following(report) else [])] + stage_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {1, 5}  # numbers
    lines = ["recognition and preference of the self summary on held-out articles (0.5 = chance):"]
    for r in rows:
        lines.append("  " + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                      for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    lines += [f"note: {n}" for n in report.get("notes") or []]
    out = Path(output_dir)
    lines.append(f"report: {out / REPORT_MD}")
    if report.get("plot"):
        lines.append(f"plot:   {out / report['plot']}")
    return "\n".join(lines)


def plot_by_step(output_dir: str | Path, path: str | Path | None = None) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_hook_records(output_dir)
    if not records:
        return None
    doms = [d for d in DOMAINS if any(d in r for r in records)]
    canary = canary_report(records)
    fig, axes = plt.subplots(1, len(doms) + bool(canary), figsize=(5.5 * (len(doms) + bool(canary)), 4),
                             squeeze=False, sharey=True)
    if canary:
        plot_canary(axes[0][-1], canary)
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
    return save_figure(fig, out)


def write_training_report(output_dir: str | Path) -> dict[str, Any] | None:
    """Write report.json, report.md and the PNG from the hook records; returns the report."""
    report = build_training_report(output_dir)
    if report is None:
        return None
    out = Path(output_dir)
    plot = plot_by_step(out)
    report["plot"] = plot.name if plot else None
    atomic_write_json(out / REPORT_JSON, report)
    atomic_write_text(out / REPORT_MD, render_training_markdown(report))
    return report
