"""Sweep analysis: does preference follow recognition across fine-tuned runs?

Reads ``SWEEP_DIR/runs.json`` (docs/ARCHITECTURE.md, "Sweep directory") and each run's
``examples.jsonl`` per evaluation domain (``in_domain``, ``out_of_domain``). It computes:

* per run and domain: mean pairwise recognition and preference (PROTOCOL.md §3, via
  :mod:`selfrec_ft.scoring.metrics`) with article-clustered bootstrap CIs (none from fewer than 5
  articles), and the familiarity covariate when ``familiarity`` rows are present: per article, the
  evaluator's mean log-likelihood of the self summary minus the mean over the other sources'
  summaries, averaged over articles;
* across done runs, per domain (:mod:`selfrec_ft.sweep.inference`): Pearson r, Kendall τ and the
  least-squares slope of preference on recognition, and the partial correlation given familiarity
  (at least 5 runs), each with two kinds of inference reported separately: an **article-level**
  interval from one joint bootstrap per domain (articles resampled jointly across the runs: article
  sampling noise only) and a **run-level** test and interval with the run as the unit (permutation
  test over runs, Fisher-z interval). ``supported`` is true only when both agree, and ``verdict``
  says so in words;
* treatment vs controls (:mod:`selfrec_ft.sweep.baselines`): every run's shift in recognition and
  preference from the baseline scored on the same articles (paired on articles), and per group the
  mean shifts and preference shift per unit of recognition shift;
* dose response: recognition and preference against ``params.flip_fraction``;
* per-checkpoint recognition and preference of runs that list ``checkpoints``;
* with worse-question rows (issue 23), the question-following series (per pair: P(self picked) under
  "better" minus under "worse", :mod:`selfrec_ft.scoring.controls_preference`) per run, and its
  relation to recognition across runs (``correlation_question_following``) beside the raw one: a
  preference shift that is answer-copying moves the raw preference with recognition but not the gap.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from selfrec_ft import stats
from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import atomic_write_json, atomic_write_text
from selfrec_ft.defaults import WORSE_QUESTION_TASK
from selfrec_ft.scoring.controls_preference import gap_values
from selfrec_ft.scoring.metrics import POSITION_BIAS_THRESHOLD, accuracy_values, pairwise_scores, position_table
from selfrec_ft.scoring.report import read_selfrec_file
from selfrec_ft.sweep.baselines import treatment_vs_control
from selfrec_ft.sweep.inference import MIN_RUNS_CORRELATION, MIN_RUNS_PARTIAL, JointBootstrap, correlation  # noqa: F401

TASKS = ("recognition", "preference")
SERIES = ("recognition", "preference", "familiarity", "question_following")
TREATMENT_LABELS = ("self", "other", "flip")
CONTROL_LABELS = ("always_1", "random", "length", "vowelcount", "readability")
BASELINE_LABELS = ("none", "baseline")
DOMAIN_ORDER = ("in_domain", "out_of_domain")


# ----------------------------------------------------------------------------- runs.json


def load_runs(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The validated ``runs`` list of ``SWEEP_DIR/runs.json``."""
    path = Path(sweep_dir) / "runs.json"
    if not path.is_file():
        raise UserError("runs.json not found (is this a sweep directory?)", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON ({exc.msg})", path, exc.lineno) from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list):
        raise UserError('expected an object with a "runs" list', path)
    seen = set()
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("run_id"), str):
            raise UserError(f'runs[{i}] must be an object with a string "run_id"', path)
        if run["run_id"] in seen:
            raise UserError(f'duplicate run_id "{run["run_id"]}"', path)
        seen.add(run["run_id"])
        for key in ("params", "eval"):
            if run.get(key) is not None and not isinstance(run[key], dict):
                raise UserError(f'run "{run["run_id"]}": "{key}" must be an object', path)
        if not isinstance(run.get("checkpoints") or [], list):
            raise UserError(f'run "{run["run_id"]}": "checkpoints" must be a list', path)
        evals = [("eval", run.get("eval"))]
        for ck in run.get("checkpoints") or []:
            if not isinstance(ck, dict) or not isinstance(ck.get("eval") or {}, dict) or not (
                    ck.get("step") is None or _is_number(ck["step"])):
                raise UserError(f'run "{run["run_id"]}": each checkpoint must be an object with a '
                                'numeric "step" and an "eval" object', path)
            evals.append((f'checkpoint {ck.get("step")} eval', ck.get("eval")))
        for what, ev in evals:
            for dom, p in (ev or {}).items():
                if p is not None and not isinstance(p, str):
                    raise UserError(f'run "{run["run_id"]}": {what} "{dom}" must be a path', path)
    return runs


def label_strategy(params: Mapping[str, Any]) -> str:
    """The run's label strategy: ``params.labels``, ``flip`` for a flip_fraction run without one,
    ``baseline`` for an untrained evaluator (``baseline: true``, ``n_train: 0`` or labels none)."""
    labels = params.get("labels")
    if params.get("baseline") is True or params.get("n_train") == 0:
        return "baseline"
    if labels is None:
        return "flip" if _is_number(params.get("flip_fraction")) else "baseline"
    labels = str(labels)
    return "baseline" if labels in BASELINE_LABELS else labels


def run_group(strategy: str) -> str:
    if strategy == "baseline":
        return "baseline"
    if strategy in TREATMENT_LABELS:
        return "treatment"
    if strategy in CONTROL_LABELS:
        return "control"
    return "unclassified"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _resolve(sweep_dir: Path, p: str) -> Path:
    path = Path(p)
    path = path if path.is_absolute() else sweep_dir / path
    return path / "examples.jsonl" if path.is_dir() else path


def _ordered_domains(keys) -> list[str]:
    keys = list(dict.fromkeys(keys))
    return [d for d in DOMAIN_ORDER if d in keys] + sorted(d for d in keys if d not in DOMAIN_ORDER)


# ----------------------------------------------------------------------------- one eval file


def eval_series(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-observation values and article clusters of each series in one eval's rows.

    Returns ``{series: {"values": [...], "clusters": [...]}, "extra": {task: {...}}}``: pairwise
    scores for recognition and preference (valid pairs only), the per-article familiarity
    difference; ``extra`` keeps n invalid, accuracy and the position-bias flag.
    """
    out: dict[str, Any] = {"extra": {}}
    for task in TASKS:
        scores = pairwise_scores(rows, task)
        if not scores:
            continue
        valid = [s for s in scores if s["valid"]]
        vals = [s["score"] for s in valid]
        out[task] = {"values": vals, "clusters": [(s["domain"], s["article_id"]) for s in valid]}
        pos = position_table(scores)
        out["extra"][task] = {
            "invalid": len(scores) - len(valid),
            "accuracy": float(np.mean(accuracy_values(vals))) if vals else None,
            "position_biased": bool(valid) and max(pos["always_1"] or 0, pos["always_2"] or 0)
            >= POSITION_BIAS_THRESHOLD,
        }
    fam: dict[tuple, dict[str, float]] = {}
    self_of: dict[tuple, str] = {}
    for r in rows:
        if r.get("task") == "familiarity":
            key = (r.get("domain"), str(r["article_id"]))
            fam.setdefault(key, {})[r["target_source"]] = float(r["mean_logprob"])
            self_of[key] = r["self_source"]
    diffs, clusters = [], []
    for key, by_src in fam.items():
        own = by_src.get(self_of[key])
        others = [v for s, v in by_src.items() if s != self_of[key] and math.isfinite(v)]
        if own is not None and math.isfinite(own) and others:
            diffs.append(own - float(np.mean(others)))
            clusters.append(key)
    if fam:
        out["familiarity"] = {"values": diffs, "clusters": clusters}
    if any(r.get("task") == WORSE_QUESTION_TASK for r in rows):
        gaps, gap_clusters = gap_values(rows)
        out["question_following"] = {"values": gaps, "clusters": gap_clusters}
    return out


def summarise_series(series: Mapping[str, Any], seed: int, n_resamples: int) -> dict[str, Any]:
    """Mean, clustered-bootstrap CI and n of every series in an :func:`eval_series` result (no CI
    from fewer than 5 articles: ``ci_note`` says so)."""
    out = {}
    for name in SERIES:
        if name not in series:
            continue
        vals, cl = series[name]["values"], series[name]["clusters"]
        block: dict[str, Any] = {"mean": None, "ci95": None, "n": len(vals), "n_articles": stats.n_clusters(cl)}
        if vals:
            m, (lo, hi) = stats.cluster_bootstrap_mean(vals, cl, n_resamples=n_resamples, seed=seed)
            block.update(mean=m, ci95=[lo, hi])
            if block["n_articles"] < stats.MIN_CLUSTERS_CI:
                block.update(ci95=None, ci_note=stats.too_few_clusters_note(block["n_articles"]))
        block.update(series.get("extra", {}).get(name, {}))
        out[name] = block
    return out


def _load_eval(path: Path, notes: list[str], what: str) -> dict[str, Any] | None:
    if not path.is_file():
        notes.append(f"{what}: eval file {path} not found; left out.")
        return None
    return eval_series(read_selfrec_file(path))


# ----------------------------------------------------------------------------- across runs


def _dose_response(joint: JointBootstrap, runs: list[dict], run_ids: list[str], domain: str) -> dict[str, Any] | None:
    by_id = {r["run_id"]: r for r in runs}
    ids = [r for r in run_ids if _is_number(by_id[r]["params"].get("flip_fraction"))]
    if not ids:
        return None
    ff = np.array([float(by_id[r]["params"]["flip_fraction"]) for r in ids])
    out: dict[str, Any] = {"points": [
        {"run_id": r, "flip_fraction": float(f),
         **{name: by_id[r]["domains"][domain][name]["mean"] for name in TASKS}}
        for r, f in zip(ids, ff)]}
    for name in TASKS:
        out[f"slope_{name}"] = (joint.interval(lambda y: stats.safe_slope(ff, y), (ids, name))
                                if np.ptp(ff) > 0 else {"value": None, "ci95": None})
    return out


# ----------------------------------------------------------------------------- entry point


def analyse_sweep(sweep_dir: str | os.PathLike, seed: int = 0, n_resamples: int = 2000,
                  plots: bool = True) -> dict[str, Any]:
    """Analyse a sweep directory and write ``analysis.json``, ``report.md`` and PNG plots there."""
    sweep_dir = Path(sweep_dir)
    raw_runs = load_runs(sweep_dir)
    notes: list[str] = []
    runs, series_by_domain = [], {}
    for raw in tqdm(raw_runs, desc="loading runs", disable=None):
        params = raw.get("params") or {}
        strategy = label_strategy(params)
        run = {"run_id": raw["run_id"], "status": raw.get("status"), "error": raw.get("error"),
               "params": params, "label_strategy": strategy, "group": run_group(strategy),
               "domains": {}, "checkpoints": []}
        runs.append(run)
        final_eval = (raw.get("eval") or {}) if raw.get("status") == "done" else {}
        for dom, p in final_eval.items():
            if p is None:
                continue
            ser = _load_eval(_resolve(sweep_dir, p), notes, f'run "{raw["run_id"]}" {dom}')
            if ser is None:
                continue
            run["domains"][dom] = summarise_series(ser, seed, n_resamples)
            run["domains"][dom]["path"] = str(p)
            for name in SERIES:
                if name in ser and ser[name]["values"]:
                    series_by_domain.setdefault(dom, {})[(raw["run_id"], name)] = ser[name]
        for ck in raw.get("checkpoints") or []:  # also of failed runs: steps saved before failing
            entry = {"step": ck.get("step"), "domains": {}}
            for dom, p in (ck.get("eval") or {}).items():
                if p is None:
                    continue
                ser = _load_eval(_resolve(sweep_dir, p), notes,
                                 f'run "{raw["run_id"]}" step {ck.get("step")} {dom}')
                if ser is not None:
                    entry["domains"][dom] = summarise_series(ser, seed, n_resamples)
            run["checkpoints"].append(entry)
        run["checkpoints"].sort(key=lambda c: (c["step"] is None, c["step"]))

    correlations, tvc, dose, following = {}, {}, {}, {}
    for dom in _ordered_domains(series_by_domain):
        ser = series_by_domain[dom]
        ids = [r["run_id"] for r in runs if (r["run_id"], "recognition") in ser
               and (r["run_id"], "preference") in ser]
        joint = JointBootstrap(ser, n_resamples, seed)
        # every done run, the baseline included, is a point of the recognition-preference relation
        fam_ids = [r for r in ids if (r, "familiarity") in ser]
        correlations[dom] = correlation(joint, ids, fam_ids, seed)
        qf_ids = [r for r in ids if (r, "question_following") in ser]
        if qf_ids:  # the same relation with the question-following preference in place of the raw one
            following[dom] = correlation(joint, qf_ids, [r for r in qf_ids if (r, "familiarity") in ser], seed,
                                         measure="question_following")
        tvc[dom] = treatment_vs_control(joint, runs, ids)
        d = _dose_response(joint, runs, ids, dom)
        if d is not None:
            dose[dom] = d
    if not correlations:
        notes.append("no done run has pairwise recognition and preference rows; nothing to correlate.")
    for dom in ("in_domain", "out_of_domain"):
        correlations.setdefault(dom, {"n_runs": 0, "run_ids": [], "pearson": {"r": None, "ci95": None},
                                      "kendall": {"tau": None, "ci95": None},
                                      "slope": {"value": None, "ci95": None}, "supported": False,
                                      "verdict": f"Not assessed: no done run has {dom} evaluations.",
                                      "note": f"no done run has {dom} evaluations."})
    analysis = {
        "runs": runs,
        "correlation": correlations,
        "correlation_question_following": following,
        "treatment_vs_control": tvc,
        "dose_response": dose,
        "notes": notes,
        "meta": {"sweep_dir": str(sweep_dir), "seed": seed, "n_resamples": n_resamples,
                 "n_runs": len(runs), "n_done": sum(r["status"] == "done" for r in runs)},
    }
    analysis = stats.json_safe(analysis)
    if plots:
        from selfrec_ft.sweep.plots import write_plots

        analysis["plots"] = write_plots(analysis, sweep_dir)
    atomic_write_json(sweep_dir / "analysis.json", analysis)
    atomic_write_text(sweep_dir / "report.md", render_analysis_markdown(analysis))
    return analysis


# ----------------------------------------------------------------------------- markdown


def _f(x: Any, d: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{d}f}"
    return str(x)


def _ci(ci, note: str | None = None) -> str:
    if ci:
        return f"[{ci[0]:.3f}, {ci[1]:.3f}]"
    return "– (< 5 articles)" if note else "–"


def _p(p) -> str:
    return "–" if p is None else f"{p:.3g}"


def _table(header, rows) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def render_analysis_markdown(a: Mapping[str, Any]) -> str:
    """report.md of an :func:`analyse_sweep` result."""
    m = a["meta"]
    lines = ["# Sweep analysis", "", "## Verdict: does preference follow recognition across runs?", ""]
    for dom, c in a["correlation"].items():
        lines.append(f"* **{dom}**: {c.get('verdict') or '–'}")
    for dom, c in (a.get("correlation_question_following") or {}).items():
        lines.append(f"* **{dom}**, question-following preference (better − worse gap): {c.get('verdict') or '–'}")
    lines += ["", "A relation is called supported only when a test with the run as the unit (permutation "
              "test over runs, p < 0.05) and the article-level bootstrap interval (excludes 0) agree.", ""]
    lines += [f"{m['n_runs']} runs ({m['n_done']} done); bootstrap: {m['n_resamples']} resamples of "
             f"articles, seed {m['seed']}. Recognition / preference: mean pairwise score "
             "(½[p̂_fwd(self) + p̂_bwd(self)]), 0.5 = chance. Familiarity: mean log-likelihood of "
             "self minus others' summaries.", ""]
    for n in a.get("notes", []):
        lines.append(f"> **Note:** {n}")
    if a.get("notes"):
        lines.append("")
    rows = []
    for r in a["runs"]:
        if not r["domains"]:
            rows.append([r["run_id"], _f(r["status"]), r["label_strategy"],
                         _f(r["params"].get("flip_fraction")), "–", "–", "–", "–", "–", "–",
                         _f(r.get("error"))])
        for dom, d in r["domains"].items():
            rec, pref, fam = d.get("recognition", {}), d.get("preference", {}), d.get("familiarity", {})
            gap = d.get("question_following", {})
            rows.append([r["run_id"], _f(r["status"]), r["label_strategy"],
                         _f(r["params"].get("flip_fraction")), dom,
                         f"{_f(rec.get('mean'))} {_ci(rec.get('ci95'), rec.get('ci_note'))}",
                         f"{_f(pref.get('mean'))} {_ci(pref.get('ci95'), pref.get('ci_note'))}",
                         f"{_f(gap.get('mean'))} {_ci(gap.get('ci95'), gap.get('ci_note'))}" if gap else "–",
                         _f(fam.get("mean")), _f(rec.get("n")), "–"])
    lines += ["## Runs", ""] + _table(
        ["run", "status", "labels", "flip fraction", "domain", "recognition [95% CI]",
         "preference [95% CI]", "better − worse gap [95% CI]", "familiarity", "n pairs", "error"], rows) + [""]
    lines += ["## Recognition vs preference across runs", "",
              "Article level: joint bootstrap over articles (every run's means recomputed on the same drawn "
              "articles); it reflects article sampling, not the choice of runs. Run level: the run means "
              "as k observations (Pearson: permutation test over runs and Fisher-z interval; slope: OLS "
              "t-interval; Kendall: scipy's test).", ""]
    crows = []
    for dom, c in a["correlation"].items():
        pe, ke, sl = c["pearson"], c["kendall"], c["slope"]
        prl, krl, srl = pe.get("run_level") or {}, ke.get("run_level") or {}, sl.get("run_level") or {}
        crows.append([dom, str(c["n_runs"]), "yes" if c.get("supported") else "no", _f(pe["r"]),
                      _ci(pe["ci95"]), _ci(prl.get("ci95")), _p(prl.get("p_value")),
                      f"{_f(ke['tau'])} {_ci(ke['ci95'])} (p {_p(krl.get('p_value'))})",
                      f"{_f(sl['value'])} {_ci(sl['ci95'])}; run level {_ci(srl.get('ci95'))}"])
    lines += _table(["domain", "runs", "supported", "Pearson r", "article-level 95% CI",
                     "run-level 95% CI (Fisher z)", "run-level p (permutation)",
                     "Kendall τ [article CI] (run p)", "slope (pref on rec) [article CI]; run-level CI"],
                    crows) + [""]
    prows = []
    for dom, c in a["correlation"].items():
        pc = c.get("partial_pearson_given_familiarity") or {}
        prows.append([dom, _f(pc.get("n_runs")), _f(pc.get("r")), _ci(pc.get("ci95")),
                      _p((pc.get("run_level") or {}).get("p_value")), pc.get("note", "")])
    lines += ["Partial correlation of recognition and preference given familiarity (at least 5 runs):", ""]
    lines += _table(["domain", "runs", "partial r", "article-level 95% CI", "run-level p (permutation)",
                     "note"], prows) + [""]
    notes = [f"{dom}: {c['note']}" for dom, c in a["correlation"].items() if c.get("note")]
    lines += [f"> {n}" for n in notes] + ([""] if notes else [])
    if a.get("treatment_vs_control"):
        lines += ["## Treatment vs controls", "",
                  "Shift = run − its baseline on the articles both were scored on (the baseline with the "
                  "run's n_articles, i.e. scored on the same held-out articles). Treatments: labels "
                  "self/other/flip; controls: always_1/random/length/vowelcount/readability.", ""]
        for dom, t in a["treatment_vs_control"].items():
            lines += [f"### {dom} (baselines: {', '.join(t.get('baseline_runs') or []) or 'none'})", ""]
            if t.get("note"):
                lines += [t["note"], ""]
            if t.get("runs"):
                lines += _table(["run", "group", "labels", "baseline", "articles compared", "Δ recognition",
                                 "Δ preference", "note"], [
                    [e["run_id"], e["group"], e["labels"], _f(e.get("baseline_run")),
                     _f(e["delta_recognition"].get("n_articles")),
                     f"{_f(e['delta_recognition']['value'])} {_ci(e['delta_recognition']['ci95'])}",
                     f"{_f(e['delta_preference']['value'])} {_ci(e['delta_preference']['ci95'])}",
                     e.get("note", "")]
                    for e in t["runs"]]) + [""]
            grows = []
            for g, s in t.get("groups", {}).items():
                if "mean_delta_recognition" in s:
                    grows.append([g, str(s["n_runs"]),
                                  f"{_f(s['mean_delta_recognition']['value'])} {_ci(s['mean_delta_recognition']['ci95'])}",
                                  f"{_f(s['mean_delta_preference']['value'])} {_ci(s['mean_delta_preference']['ci95'])}",
                                  f"{_f(s['preference_per_recognition']['value'])} {_ci(s['preference_per_recognition']['ci95'])}"])
                else:
                    grows.append([g, str(s["n_runs"]),
                                  f"level {_f(s['mean_recognition']['value'])}",
                                  f"level {_f(s['mean_preference']['value'])}", "–"])
            if grows:
                lines += _table(["group", "runs", "mean Δ recognition", "mean Δ preference",
                                 "Δ pref per Δ rec"], grows) + [""]
    if a.get("dose_response"):
        lines += ["## Dose response (flip_fraction)", ""]
        for dom, d in a["dose_response"].items():
            lines += [f"### {dom}", ""] + _table(
                ["run", "flip fraction", "recognition", "preference"],
                [[p["run_id"], _f(p["flip_fraction"], 2), _f(p["recognition"]), _f(p["preference"])]
                 for p in d["points"]]) + [""]
            lines += [f"slope of recognition on flip fraction: {_f(d['slope_recognition']['value'])} "
                      f"{_ci(d['slope_recognition']['ci95'])}; of preference: "
                      f"{_f(d['slope_preference']['value'])} {_ci(d['slope_preference']['ci95'])}", ""]
    if a.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in a["plots"]] + [""]
    return "\n".join(lines).rstrip() + "\n"
