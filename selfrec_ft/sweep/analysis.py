"""Sweep analysis: does preference follow recognition across fine-tuned runs?

Reads ``SWEEP_DIR/runs.json`` (docs/ARCHITECTURE.md, "Sweep directory") and each run's
``examples.jsonl`` per evaluation domain (``in_domain``, ``out_of_domain``). It computes:

* per run and domain: mean pairwise recognition and preference (PROTOCOL.md §3, via
  :mod:`selfrec_ft.scoring.metrics`) with article-clustered bootstrap CIs, and the familiarity
  covariate when ``familiarity`` rows are present: per article, the evaluator's mean log-likelihood
  of the self summary minus the mean over the other sources' summaries, averaged over articles;
* across done runs, per domain: Pearson r, Kendall τ and the least-squares slope of preference on
  recognition, and the partial correlation of preference and recognition given familiarity. Their
  CIs come from one **joint** bootstrap per domain: each resample draws articles (with
  replacement) from the union of the runs' articles and recomputes every run's means on the same
  drawn articles. This captures article-sampling noise, not run-to-run training noise;
* treatment vs controls: with a baseline run (untrained evaluator), every run's shift in recognition
  and preference from the baseline (paired on articles), and per group (treatments: labels
  ``self``/``other``/``flip``; controls: ``always_1``/``random``/``length``/``vowelcount``/
  ``readability``) the mean shifts and preference shift per unit of recognition shift. If
  fine-tuning as such, rather than recognition, moved preference, controls would show preference
  shifts as large as the treatments' without the recognition shifts;
* dose response: recognition and preference against ``params.flip_fraction``;
* per-checkpoint recognition and preference of runs that list ``checkpoints``.
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
from selfrec_ft.scoring.metrics import POSITION_BIAS_THRESHOLD, pairwise_scores, position_table
from selfrec_ft.scoring.report import read_selfrec_file

TASKS = ("recognition", "preference")
SERIES = ("recognition", "preference", "familiarity")
TREATMENT_LABELS = ("self", "other", "flip")
CONTROL_LABELS = ("always_1", "random", "length", "vowelcount", "readability")
BASELINE_LABELS = ("none", "baseline")
DOMAIN_ORDER = ("in_domain", "out_of_domain")
MIN_RUNS_CORRELATION = 3
MIN_RUNS_PARTIAL = 4


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
        acc = [1.0 if v > 0.5 else 0.5 if v == 0.5 else 0.0 for v in vals]
        pos = position_table(scores)
        out["extra"][task] = {
            "invalid": len(scores) - len(valid),
            "accuracy": float(np.mean(acc)) if acc else None,
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
    return out


def summarise_series(series: Mapping[str, Any], seed: int, n_resamples: int) -> dict[str, Any]:
    """Mean, clustered-bootstrap CI and n of every series in an :func:`eval_series` result."""
    out = {}
    for name in SERIES:
        if name not in series:
            continue
        vals, cl = series[name]["values"], series[name]["clusters"]
        block: dict[str, Any] = {"mean": None, "ci95": None, "n": len(vals)}
        if vals:
            m, (lo, hi) = stats.cluster_bootstrap_mean(vals, cl, n_resamples=n_resamples, seed=seed)
            block.update(mean=m, ci95=[lo, hi])
        block.update(series.get("extra", {}).get(name, {}))
        out[name] = block
    return out


def _load_eval(path: Path, notes: list[str], what: str) -> dict[str, Any] | None:
    if not path.is_file():
        notes.append(f"{what}: eval file {path} not found; left out.")
        return None
    return eval_series(read_selfrec_file(path))


# ----------------------------------------------------------------------------- across runs


class _Joint:
    """One domain's joint bootstrap: every series' resampled means on shared article draws."""

    def __init__(self, series: dict[tuple[str, str], Mapping[str, Any]], n_resamples: int, seed: int):
        clusters = list(dict.fromkeys(c for s in series.values() for c in s["clusters"]))
        self.keys = list(series)
        index = {c: i for i, c in enumerate(clusters)}
        sums = np.zeros((len(self.keys), len(clusters)))
        counts = np.zeros_like(sums)
        for row, key in enumerate(self.keys):
            cols = [index[c] for c in series[key]["clusters"]]
            np.add.at(sums[row], cols, series[key]["values"])
            np.add.at(counts[row], cols, 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.point = sums.sum(axis=1) / counts.sum(axis=1)
        weights = stats.cluster_resample_weights(len(clusters), n_resamples, seed)
        self.boot = stats.resampled_means(sums, counts, weights) if clusters else np.zeros((len(self.keys), 0))
        self.row = {k: i for i, k in enumerate(self.keys)}

    def vectors(self, run_ids: Sequence[str], name: str):
        rows = [self.row[(r, name)] for r in run_ids]
        return self.point[rows], self.boot[rows]

    def interval(self, fn, *names_and_runs) -> dict[str, Any]:
        """Point value and percentile CI of ``fn(*vectors)`` over resamples (NaN ones dropped)."""
        pts, boots = zip(*(self.vectors(runs, name) for runs, name in names_and_runs))
        value = fn(*pts)
        samples = np.array([fn(*(b[:, j] for b in boots)) if all(np.all(np.isfinite(b[:, j])) for b in boots)
                            else np.nan for j in range(self.boot.shape[1])])
        ci = stats.percentile_interval(samples)
        defined = float(np.mean(np.isfinite(samples))) if samples.size else 0.0
        return {"value": stats.finite_or_none(value), "ci95": list(ci) if ci else None,
                "ci_defined_fraction": defined}


def _correlation(joint: _Joint, run_ids: list[str], fam_ids: list[str]) -> dict[str, Any]:
    k = len(run_ids)
    out: dict[str, Any] = {"n_runs": k, "run_ids": run_ids}
    if k < MIN_RUNS_CORRELATION:
        out.update(pearson={"r": None, "ci95": None}, kendall={"tau": None, "ci95": None},
                   slope={"value": None, "ci95": None},
                   note=f"fewer than {MIN_RUNS_CORRELATION} done runs with pairwise recognition and "
                        f"preference ({k}); correlations not computed.")
    else:
        rec, pref = (run_ids, "recognition"), (run_ids, "preference")
        p = joint.interval(stats.safe_pearson, rec, pref)
        t = joint.interval(lambda x, y: stats.safe_kendall(x, y)[0], rec, pref)
        s = joint.interval(stats.safe_slope, rec, pref)
        x, y = joint.vectors(run_ids, "recognition")[0], joint.vectors(run_ids, "preference")[0]
        out["pearson"] = {"r": p["value"], "ci95": p["ci95"], "ci_defined_fraction": p["ci_defined_fraction"]}
        out["kendall"] = {"tau": t["value"], "ci95": t["ci95"], "ci_defined_fraction": t["ci_defined_fraction"]}
        out["slope"] = {"value": s["value"], "ci95": s["ci95"], "ci_defined_fraction": s["ci_defined_fraction"],
                        "intercept": stats.finite_or_none(np.mean(y) - (s["value"] or 0) * np.mean(x))
                        if s["value"] is not None else None}
    if len(fam_ids) >= MIN_RUNS_PARTIAL:
        pc = joint.interval(stats.partial_correlation, (fam_ids, "recognition"),
                            (fam_ids, "preference"), (fam_ids, "familiarity"))
        out["partial_pearson_given_familiarity"] = {"r": pc["value"], "ci95": pc["ci95"],
                                                    "n_runs": len(fam_ids)}
    else:
        out["partial_pearson_given_familiarity"] = {
            "r": None, "ci95": None, "n_runs": len(fam_ids),
            "note": f"needs familiarity rows in at least {MIN_RUNS_PARTIAL} done runs"}
    return out


def _shift(runs_v: np.ndarray, base_v: np.ndarray) -> float:
    """Mean over runs of (run − baseline)."""
    return float(np.mean(runs_v - base_v[0]))


def _per_unit(rec_v, base_rec, pref_v, base_pref) -> float:
    """Mean preference shift divided by mean recognition shift (NaN when the latter is ~0)."""
    dr = _shift(rec_v, base_rec)
    return _shift(pref_v, base_pref) / dr if abs(dr) > 1e-9 else float("nan")


def _treatment_vs_control(joint: _Joint, runs: list[dict], run_ids: list[str]) -> dict[str, Any]:
    by_id = {r["run_id"]: r for r in runs}
    baselines = [r for r in run_ids if by_id[r]["group"] == "baseline"]
    groups = {g: [r for r in run_ids if by_id[r]["group"] == g] for g in ("treatment", "control")}
    out: dict[str, Any] = {"baseline_run": baselines[0] if baselines else None}
    if not baselines:
        out["note"] = "no baseline run: shifts cannot be computed; group mean levels are reported."
        out["groups"] = {}
        for g, ids in groups.items():
            if ids:
                out["groups"][g] = {"n_runs": len(ids), "run_ids": ids, **{
                    f"mean_{name}": joint.interval(np.mean, (ids, name)) for name in TASKS}}
        return out
    base = baselines[0]
    out["runs"] = []
    for rid in run_ids:
        if rid == base:
            continue
        entry = {"run_id": rid, "group": by_id[rid]["group"], "labels": by_id[rid]["label_strategy"]}
        for name in TASKS:
            entry[f"delta_{name}"] = joint.interval(lambda a, b: a[0] - b[0], ([rid], name), ([base], name))
        out["runs"].append(entry)
    out["groups"] = {}
    for g, ids in groups.items():
        if not ids:
            continue
        out["groups"][g] = {
            "n_runs": len(ids), "run_ids": ids,
            "mean_delta_recognition": joint.interval(_shift, (ids, "recognition"), ([base], "recognition")),
            "mean_delta_preference": joint.interval(_shift, (ids, "preference"), ([base], "preference")),
            "preference_per_recognition": joint.interval(
                _per_unit, (ids, "recognition"), ([base], "recognition"), (ids, "preference"),
                ([base], "preference")),
        }
    return out


def _dose_response(joint: _Joint, runs: list[dict], run_ids: list[str], domain: str) -> dict[str, Any] | None:
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

    correlation, tvc, dose = {}, {}, {}
    for dom in _ordered_domains(series_by_domain):
        ser = series_by_domain[dom]
        ids = [r["run_id"] for r in runs if (r["run_id"], "recognition") in ser
               and (r["run_id"], "preference") in ser]
        joint = _Joint(ser, n_resamples, seed)
        # every done run, the baseline included, is a point of the recognition-preference relation
        fam_ids = [r for r in ids if (r, "familiarity") in ser]
        correlation[dom] = _correlation(joint, ids, fam_ids)
        tvc[dom] = _treatment_vs_control(joint, runs, ids)
        d = _dose_response(joint, runs, ids, dom)
        if d is not None:
            dose[dom] = d
    if not correlation:
        notes.append("no done run has pairwise recognition and preference rows; nothing to correlate.")
    for dom in ("in_domain", "out_of_domain"):
        correlation.setdefault(dom, {"n_runs": 0, "run_ids": [], "pearson": {"r": None, "ci95": None},
                                     "kendall": {"tau": None, "ci95": None},
                                     "slope": {"value": None, "ci95": None},
                                     "note": f"no done run has {dom} evaluations."})
    analysis = {
        "runs": runs,
        "correlation": correlation,
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


def _ci(ci) -> str:
    return "–" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _table(header, rows) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def render_analysis_markdown(a: Mapping[str, Any]) -> str:
    """report.md of an :func:`analyse_sweep` result."""
    m = a["meta"]
    lines = ["# Sweep analysis", "",
             f"{m['n_runs']} runs ({m['n_done']} done); bootstrap: {m['n_resamples']} resamples of "
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
                         _f(r["params"].get("flip_fraction")), "–", "–", "–", "–", "–",
                         _f(r.get("error"))])
        for dom, d in r["domains"].items():
            rec, pref, fam = d.get("recognition", {}), d.get("preference", {}), d.get("familiarity", {})
            rows.append([r["run_id"], _f(r["status"]), r["label_strategy"],
                         _f(r["params"].get("flip_fraction")), dom,
                         f"{_f(rec.get('mean'))} {_ci(rec.get('ci95'))}",
                         f"{_f(pref.get('mean'))} {_ci(pref.get('ci95'))}",
                         _f(fam.get("mean")), _f(rec.get("n")), "–"])
    lines += ["## Runs", ""] + _table(
        ["run", "status", "labels", "flip fraction", "domain", "recognition [95% CI]",
         "preference [95% CI]", "familiarity", "n pairs", "error"], rows) + [""]
    lines += ["## Recognition vs preference across runs", "",
              "CIs: joint bootstrap over articles (every run's means recomputed on the same drawn "
              "articles); they reflect article sampling, not training noise.", ""]
    crows = []
    for dom, c in a["correlation"].items():
        pc = c.get("partial_pearson_given_familiarity") or {}
        crows.append([dom, str(c["n_runs"]), f"{_f(c['pearson']['r'])} {_ci(c['pearson']['ci95'])}",
                      f"{_f(c['kendall']['tau'])} {_ci(c['kendall']['ci95'])}",
                      f"{_f(c['slope']['value'])} {_ci(c['slope']['ci95'])}",
                      f"{_f(pc.get('r'))} {_ci(pc.get('ci95'))}", c.get("note", "")])
    lines += _table(["domain", "runs", "Pearson r", "Kendall τ", "slope (pref on rec)",
                     "partial r given familiarity", "note"], crows) + [""]
    if a.get("treatment_vs_control"):
        lines += ["## Treatment vs controls", "",
                  "Shift = run − baseline on the same articles. Treatments: labels self/other/flip; "
                  "controls: always_1/random/length/vowelcount/readability.", ""]
        for dom, t in a["treatment_vs_control"].items():
            lines += [f"### {dom} (baseline: {t.get('baseline_run') or 'none'})", ""]
            if t.get("note"):
                lines += [t["note"], ""]
            if t.get("runs"):
                lines += _table(["run", "group", "labels", "Δ recognition", "Δ preference"], [
                    [e["run_id"], e["group"], e["labels"],
                     f"{_f(e['delta_recognition']['value'])} {_ci(e['delta_recognition']['ci95'])}",
                     f"{_f(e['delta_preference']['value'])} {_ci(e['delta_preference']['ci95'])}"]
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
