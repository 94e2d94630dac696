"""Treatment vs controls: each run's shift from the baseline scored on the same articles.

A sweep's runner writes one untrained-model (``baseline``) entry per ``skip_first`` it evaluated,
with ``params.n_articles`` = that ``skip_first`` (docs/ARCHITECTURE.md, "Sweep directory"): a run
trained on its first N articles is evaluated on the articles after them, so its shifts must be
measured against the baseline scored on those same articles. :func:`pair_baselines` picks, for
every run, the baseline with the same ``params.n_articles``; failing that, the baseline sharing
the most articles with it, and the shift is then computed on the **intersection** of the two
article sets and says so. Shifts are always paired on articles: both means are taken over the
articles both were scored on, in the point estimate and in every joint-bootstrap resample, so a run
identical to its baseline shows a shift of exactly 0.

Groups (treatments: labels ``self``/``other``/``flip``; controls: ``always_1``/``random``/
``length``/``vowelcount``/``readability``) report the mean shift over their runs (each against
its own baseline) and preference shift per unit of recognition shift. If fine-tuning as such,
rather than recognition, moved preference, controls would show preference shifts as large as the
treatments' without the recognition shifts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from selfrec_ft.sweep.inference import JointBootstrap, summarise_samples

TASKS = ("recognition", "preference")
GROUPS = ("treatment", "control")


def pair_baselines(joint: JointBootstrap, runs_by_id: Mapping[str, Mapping[str, Any]],
                   run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """For every non-baseline run in ``run_ids``: ``{"baseline_run", "pairing", "note"?}``.

    ``pairing`` is ``same_n_articles`` (a baseline with the run's ``params.n_articles``) or
    ``most_articles_shared`` (none had it: the baseline sharing the most articles), or ``none``.
    """
    baselines = [r for r in run_ids if runs_by_id[r]["group"] == "baseline"]
    out = {}
    for rid in run_ids:
        if rid in baselines:
            continue
        n = runs_by_id[rid]["params"].get("n_articles")
        same = [b for b in baselines if runs_by_id[b]["params"].get("n_articles") == n]
        if same:
            out[rid] = {"baseline_run": same[0], "pairing": "same_n_articles"}
            continue
        shared = {b: joint.paired_delta(rid, b, "recognition")["n_articles"] for b in baselines}
        best = max(shared, key=shared.get, default=None)
        if best is None or shared[best] == 0:
            out[rid] = {"baseline_run": None, "pairing": "none",
                        "note": "no baseline shares an article with this run: no shift."}
        else:
            out[rid] = {"baseline_run": best, "pairing": "most_articles_shared",
                        "note": f"no baseline was scored on this run's articles (n_articles={n}); the shift "
                                f"is computed against {best} on the {shared[best]} articles both were scored on."}
    return out


def _delta(joint: JointBootstrap, rid: str, base: str, name: str) -> dict[str, Any]:
    d = joint.paired_delta(rid, base, name)
    return {**summarise_samples(d["value"], d["samples"]), "n_articles": d["n_articles"],
            "same_articles": d["same_articles"], "_samples": d["samples"]}


def treatment_vs_control(joint: JointBootstrap, runs: list[Mapping[str, Any]], run_ids: list[str]) -> dict[str, Any]:
    """The ``treatment_vs_control.<domain>`` block of analysis.json (see the module docstring)."""
    by_id = {r["run_id"]: r for r in runs}
    baselines = [r for r in run_ids if by_id[r]["group"] == "baseline"]
    groups = {g: [r for r in run_ids if by_id[r]["group"] == g] for g in GROUPS}
    out: dict[str, Any] = {"baseline_run": baselines[0] if len(baselines) == 1 else None,
                           "baseline_runs": baselines}
    if not baselines:
        out["note"] = "no baseline run: shifts cannot be computed; group mean levels are reported."
        out["groups"] = {}
        for g, ids in groups.items():
            if ids:
                out["groups"][g] = {"n_runs": len(ids), "run_ids": ids, **{
                    f"mean_{name}": joint.interval(np.mean, (ids, name)) for name in TASKS}}
        return out
    pairing = pair_baselines(joint, by_id, run_ids)
    out["runs"], samples = [], {}
    for rid, pb in pairing.items():
        entry = {"run_id": rid, "group": by_id[rid]["group"], "labels": by_id[rid]["label_strategy"], **pb}
        if pb["baseline_run"] is None:
            for name in TASKS:
                entry[f"delta_{name}"] = {"value": None, "ci95": None}
        else:
            for name in TASKS:
                d = _delta(joint, rid, pb["baseline_run"], name)
                samples[(rid, name)] = (d.pop("_samples"), d["value"])
                entry[f"delta_{name}"] = d
            if pb["pairing"] == "same_n_articles" and not entry["delta_recognition"]["same_articles"]:
                entry["note"] = (f"the run and {pb['baseline_run']} were scored on different articles; the "
                                 f"shift is computed on the {entry['delta_recognition']['n_articles']} both share.")
        out["runs"].append(entry)
    out["groups"] = {}
    for g, ids in groups.items():
        ids = [r for r in ids if (r, "recognition") in samples]
        if not ids:
            continue
        mean = {}
        for name in TASKS:
            boot = np.mean([samples[(r, name)][0] for r in ids], axis=0)
            point = float(np.mean([samples[(r, name)][1] for r in ids]))
            mean[name] = (point, boot)
        (pr, br), (pp, bp) = mean["recognition"], mean["preference"]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio_boot = np.where(np.abs(br) > 1e-9, bp / br, np.nan)
        out["groups"][g] = {
            "n_runs": len(ids), "run_ids": ids,
            "baseline_runs": sorted({pairing[r]["baseline_run"] for r in ids}),
            "mean_delta_recognition": summarise_samples(pr, br),
            "mean_delta_preference": summarise_samples(pp, bp),
            "preference_per_recognition": summarise_samples(pp / pr if abs(pr) > 1e-9 else float("nan"), ratio_boot),
        }
    return out
