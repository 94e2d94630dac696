"""Evaluate a sweep's runs: every done run's final model (and checkpoints with
``eval.checkpoints``) and the untrained base model (the ``baseline`` entry) in both domains, through
:mod:`selfrec_ft.sweep.checkpoints`; runs.json is updated after each evaluation."""

from __future__ import annotations

from typing import Any

from selfrec_ft.errors import UserError
from selfrec_ft.sweep.config import BASELINE_DIR, BASELINE_ID, RUNS_SUBDIR, SweepConfig
from selfrec_ft.sweep.processes import log, one_line
from selfrec_ft.sweep.runs import RunsFile


def evaluate_runs(sweep: SweepConfig, runs_file: RunsFile, progress: bool = True) -> list[dict[str, Any]]:
    """Evaluate every done run (final model; checkpoints with ``eval.checkpoints``, also those of
    failed runs) and the base model (the ``baseline`` entry); update runs.json after each."""
    from selfrec_ft.sweep.checkpoints import BASE, FINAL, EvalSettings, plan_evaluations, read_run_dir, run_evaluations
    from selfrec_ft.training.manifest import MANIFEST_FILE

    ev = sweep.eval
    settings = EvalSettings(
        in_domain=ev.in_domain, out_of_domain=ev.out_of_domain, in_domain_kind=ev.in_domain_kind,
        out_of_domain_kind=ev.out_of_domain_kind, tasks=list(ev.tasks), limit=ev.limit, batch_size=ev.batch_size,
        familiarity=ev.familiarity, dtype=ev.dtype, device=ev.device, seed=ev.seed, n_resamples=ev.n_resamples,
        progress=progress, demo_cache=sweep.runs[0].config.get("demo_cache"), worse_question=ev.worse_question,
    )
    infos = []
    for spec in sweep.runs:
        entry = runs_file.entries[spec.run_id]
        run_dir = sweep.sweep_dir / RUNS_SUBDIR / spec.run_id
        usable = entry["status"] == "done" or (ev.checkpoints and (run_dir / MANIFEST_FILE).is_file())
        if not usable:
            continue
        info = read_run_dir(run_dir, name=spec.run_id)
        if entry["status"] != "done":
            info.final = None
        if info.final is not None or (ev.checkpoints and info.checkpoints):
            infos.append(info)
    if not infos:
        log("no finished run to evaluate")
        return []
    jobs = plan_evaluations(infos, settings, sweep.sweep_dir / BASELINE_DIR, checkpoints=ev.checkpoints)
    base_names = list(dict.fromkeys(j.checkpoint for j in jobs if j.run == BASE))
    base_ids = {name: BASELINE_ID if len(base_names) == 1 else f"{BASELINE_ID}_{name}" for name in base_names}
    base_jobs = {name: next(j for j in jobs if j.run == BASE and j.checkpoint == name) for name in base_names}
    for name in reversed(base_names):
        job = base_jobs[name]
        runs_file.add({"run_id": base_ids[name], "params": {"labels": "baseline", "n_articles": job.skip_first},
                       "status": "pending", "error": None, "output_dir": None, "model": job.model,
                       "eval": {}, "checkpoints": []}, first=True)
    runs_file.save()

    def on_result(job, row) -> None:
        path = runs_file.rel(row["examples"])
        if job.run == BASE:
            entry = runs_file.entries[base_ids[job.checkpoint]]
            entry["eval"][job.domain] = path
            entry["status"] = "done" if entry.get("error") is None else entry["status"]
        else:
            entry = runs_file.entries[job.run]
            if job.checkpoint == FINAL:
                entry["eval"][job.domain] = path
            else:
                ck = next((c for c in entry["checkpoints"] if c["step"] == job.step), None)
                if ck is None:
                    ck = {"step": job.step, "checkpoint": job.checkpoint, "eval": {}}
                    entry["checkpoints"].append(ck)
                    entry["checkpoints"].sort(key=lambda c: c["step"])
                ck["eval"][job.domain] = path
        runs_file.save()

    def on_error(job, exc) -> None:
        message = one_line(exc if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}")
        log(f"evaluation of {job.run} {job.checkpoint} {job.domain} FAILED: {message}")
        if job.run == BASE:
            entry = runs_file.entries[base_ids[job.checkpoint]]
            entry.update(status="failed", error=message)
        else:
            runs_file.entries[job.run].setdefault("eval_errors", []).append(
                {"checkpoint": job.checkpoint, "domain": job.domain, "error": message})
        runs_file.save()

    rows = run_evaluations(jobs, settings, on_result=on_result, on_error=on_error)
    if ev.checkpoints:  # the untrained model is step 0 of every run measured on the same articles
        for name, job in base_jobs.items():
            base_entry = runs_file.entries[base_ids[name]]
            for info in infos:
                entry = runs_file.entries[info.name]
                if (info.base_model == job.model and info.n_articles == job.skip_first and base_entry["eval"]
                        and not any(c["step"] == 0 for c in entry["checkpoints"])):
                    entry["checkpoints"].insert(0, {"step": 0, "checkpoint": "base", "eval": dict(base_entry["eval"])})
        runs_file.save()
    return rows
