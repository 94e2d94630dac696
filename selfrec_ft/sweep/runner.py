"""Run a sweep: train a grid of self-recognition fine-tunes, evaluate them, analyse the sweep.

The sweep YAML is read by :mod:`selfrec_ft.sweep.config` (format there). Every run gets the
directory ``SWEEP_DIR/runs/<run_id>``, where its fully resolved flat config is written first
(``sweep_config.yaml``, usable as ``selfrec train --config``; :mod:`selfrec_ft.sweep.runs`). A run
is finished when its ``done`` marker (written atomically by the sweep) exists, or its manifest says
done and the final adapter/model is there; finished runs are skipped on a rerun (and a finished run
whose config changed is refused), failed ones (an exception, a non-zero exit) are recorded with
their error and retried on the next rerun. Then every done run is evaluated in both domains (its
final model, plus its checkpoints with ``eval.checkpoints``) by :mod:`selfrec_ft.sweep.evaluation`,
the untrained base model becomes the ``baseline`` run, ``SWEEP_DIR/runs.json`` (docs/ARCHITECTURE.md,
"Sweep directory") is rewritten atomically after every change, the evaluation table goes to
``SWEEP_DIR/eval_checkpoints.{json,md}`` and :func:`selfrec_ft.sweep.analysis.analyse_sweep` writes
``analysis.json``, ``report.md`` and PNGs. :mod:`selfrec_ft.sweep.slurm` writes the optional SLURM
array script.

In-process runs call :func:`selfrec_ft.training.sft.run_sft` one after another with
``teardown=False`` (a process group the sweep runs in stays up) and reset accelerate's
accelerator/gradient state after each (:mod:`selfrec_ft.sweep.processes`), so no run's settings
leak into the next.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import atomic_write_json, atomic_write_text
from selfrec_ft.sweep.config import (
    DONE_FILE, ERROR_LOG, INPROCESS, LAUNCHER_LOG, RUN_CONFIG, RUNS_SUBDIR, SLURM_SCRIPT, RunSpec, SweepConfig,
    load_sweep_config,
)
from selfrec_ft.sweep.evaluation import evaluate_runs
from selfrec_ft.sweep.processes import (
    barrier, is_main_process, log, one_line, parse_run_config, release_training_state, train_command,
    train_inprocess,
)
from selfrec_ft.sweep.runs import RunsFile, config_change, run_done, write_run_config
from selfrec_ft.sweep.slurm import slurm_script


@dataclass
class SweepResult:
    sweep_dir: Path
    runs: list[dict[str, Any]]
    trained: list[str]
    skipped: list[str]
    failed: list[str]
    analysis: dict[str, Any] | None = None
    table: Path | None = None
    slurm_script: Path | None = None


def _check_eval_inputs(sweep: SweepConfig) -> None:
    """Load the evaluation corpora and check the sources now, before hours of training."""
    from selfrec_ft.sweep.checkpoints import CorpusCache
    from selfrec_ft.training.args import split_list

    corpora = CorpusCache(sweep.runs[0].config.get("demo_cache"))
    for spec in sweep.runs:
        self_source, others = spec.config.get("self_source"), split_list(spec.config.get("others"))
        for ref in (sweep.eval.in_domain, sweep.eval.out_of_domain):
            corpus = corpora.get(ref)
            if self_source:
                corpus.require_sources([self_source, *(others or [])])


def _prepare_runs(sweep: SweepConfig, runs_file: RunsFile, result: SweepResult) -> list[RunSpec]:
    """Enter every run in runs.json; finished ones are kept (their config must not have changed),
    the others get their ``sweep_config.yaml`` (re)written. Returns the runs still to train."""
    todo = []
    for spec in sweep.runs:
        run_dir = sweep.sweep_dir / RUNS_SUBDIR / spec.run_id
        entry = runs_file.add({"run_id": spec.run_id, "params": spec.params, "status": "pending", "error": None,
                               "output_dir": f"{RUNS_SUBDIR}/{spec.run_id}",
                               "config": f"{RUNS_SUBDIR}/{spec.run_id}/{RUN_CONFIG}",
                               "eval": {}, "checkpoints": []})
        if not run_done(run_dir):
            # every process writes it (atomically, the same text): no process group exists yet to wait on
            write_run_config(spec, run_dir, sweep)
            todo.append(spec)
            continue
        change = config_change(run_dir, spec)
        if change:
            raise UserError(f"run {spec.run_id} is finished but its config changed ({change}); use another "
                            f"output_dir, or delete {run_dir} to retrain it", sweep.path)
        if not (run_dir / DONE_FILE).is_file() and is_main_process():  # trained outside the sweep (SLURM)
            atomic_write_json(run_dir / DONE_FILE, {"run_id": spec.run_id, "found": "manifest"})
        entry["status"] = "done"
        result.skipped.append(spec.run_id)
    barrier()
    return todo


def _train_runs(sweep: SweepConfig, todo: Sequence[RunSpec], runs_file: RunsFile, result: SweepResult) -> None:
    """Train ``todo`` one after another; a failure is recorded and the next run goes on."""
    sweep_dir = sweep.sweep_dir
    if sweep.launcher == INPROCESS:  # every config must parse before anything trains
        for spec in todo:
            try:
                parse_run_config(sweep_dir / RUNS_SUBDIR / spec.run_id / RUN_CONFIG)
            except UserError as exc:
                raise UserError(f"run {spec.run_id}: {exc.message}", exc.file, exc.line) from None
            finally:
                release_training_state()
    for i, spec in enumerate(todo, start=1):
        entry = runs_file.entries[spec.run_id]
        run_dir = sweep_dir / RUNS_SUBDIR / spec.run_id
        tag = f"[{i}/{len(todo)}] {spec.run_id}"
        log(f"{tag}: training")
        entry["status"] = "running"
        runs_file.save()
        t0 = time.perf_counter()
        try:
            if sweep.launcher == INPROCESS:
                info = train_inprocess(run_dir / RUN_CONFIG, run_dir)
            else:
                values = {"config": str(run_dir / RUN_CONFIG), "output_dir": str(run_dir), "run_id": spec.run_id,
                          "sweep_dir": str(sweep_dir)}
                info = train_command(sweep.launcher, values, run_dir / LAUNCHER_LOG)
        except Exception as exc:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
            entry.update(status="failed", error=one_line(exc if isinstance(exc, UserError)
                                                          else f"{type(exc).__name__}: {exc}"))
            if is_main_process():
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / ERROR_LOG).write_text(traceback.format_exc(), encoding="utf-8")
            runs_file.save()
            result.failed.append(spec.run_id)
            log(f"{tag}: FAILED: {entry['error']}")
            barrier()
            continue
        except BaseException:  # killed: the run stays unfinished and is trained (resumed) on the rerun
            entry["status"] = "interrupted"
            runs_file.save()
            raise
        seconds = round(time.perf_counter() - t0, 1)
        if is_main_process():
            atomic_write_json(run_dir / DONE_FILE, {"run_id": spec.run_id, "seconds": seconds,
                                                    **{k: v for k, v in (info or {}).items() if v is not None}})
        barrier()
        entry.update(status="done", error=None)
        runs_file.save()
        result.trained.append(spec.run_id)
        log(f"{tag}: done in {seconds:.0f}s")


def run_sweep(config_path: str | os.PathLike, output_dir: str | os.PathLike | None = None, *, train: bool = True,
              evaluate: bool = True, analyse: bool = True, prepare_only: bool = False,
              progress: bool = True) -> SweepResult:
    """Run the sweep of ``config_path`` in ``output_dir`` (default: its ``output_dir``); see the module
    docstring. ``prepare_only`` writes the run configs (and the SLURM script) and stops;
    ``train=False`` evaluates and analyses the runs that are finished, training none."""
    from selfrec_ft.training.manifest import read_manifest

    sweep = load_sweep_config(config_path, output_dir)
    sweep_dir = sweep.sweep_dir
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and sweep.launcher != INPROCESS and train and not prepare_only:
        raise UserError("a command launcher starts its own processes: run the sweep itself as one process",
                        sweep.path)
    if evaluate and not prepare_only:
        _check_eval_inputs(sweep)
    runs_file = RunsFile(sweep_dir)
    result = SweepResult(sweep_dir, [], [], [], [])
    todo = _prepare_runs(sweep, runs_file, result)
    if result.skipped:
        log(f"{len(result.skipped)} run(s) finished earlier, skipped: {', '.join(result.skipped)}")
    if sweep.slurm is not None and is_main_process():
        (sweep_dir / "slurm").mkdir(parents=True, exist_ok=True)  # sbatch does not create the log directory
        result.slurm_script = sweep_dir / SLURM_SCRIPT
        atomic_write_text(result.slurm_script, slurm_script(sweep))
        result.slurm_script.chmod(0o755)
        log(f"SLURM array script: {result.slurm_script} (not submitted)")
    runs_file.save()
    if not prepare_only:
        if train:
            _train_runs(sweep, todo, runs_file, result)
        for entry in runs_file.entries.values():  # the final step of every finished run
            if entry["status"] == "done":
                step = (read_manifest(sweep_dir / entry["output_dir"]) or {}).get("global_step")
                if step is not None:
                    entry["global_step"] = step
        runs_file.save()
        if evaluate:
            rows = evaluate_runs(sweep, runs_file, progress=progress)
            if is_main_process():
                from selfrec_ft.sweep.checkpoints import write_table

                result.table = write_table(rows, sweep_dir)[0]
            if analyse and is_main_process():
                from selfrec_ft.sweep.analysis import analyse_sweep

                result.analysis = analyse_sweep(sweep_dir, seed=sweep.eval.seed, n_resamples=sweep.eval.n_resamples)
    result.runs = list(runs_file.entries.values())
    barrier()
    return result
