"""SLURM for sweeps: an sbatch array script with one task per run (written, never submitted).

Each task trains its run from ``SWEEP_DIR/runs/<run_id>/sweep_config.yaml`` with the SFT recipe (or
the sweep's ``slurm.command`` / command ``launcher``) and exits at once when the run is finished.
Afterwards ``selfrec sweep --config C --skip_training`` evaluates and analyses the finished runs.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from selfrec_ft.defaults import MANIFEST_FILE
from selfrec_ft.sweep.config import DONE_FILE, INPROCESS, RUN_CONFIG, RUNS_SUBDIR, SLURM_SCRIPT, SweepConfig

DEFAULT_SLURM_COMMAND = "python recipes/selfrec_sft.py --config {config} --output_dir {output_dir}"


def slurm_script(sweep: SweepConfig, cwd: Path | None = None) -> str:
    """An sbatch array script, one task per run (index = position in the sweep's run list)."""
    s = sweep.slurm or {}
    sweep_dir = sweep.sweep_dir.resolve()
    cwd = (cwd or Path.cwd()).resolve()
    template = s.get("command") or (sweep.launcher if sweep.launcher != INPROCESS else DEFAULT_SLURM_COMMAND)
    n = len(sweep.runs)
    array = f"0-{n - 1}" + (f"%{s['max_parallel']}" if s.get("max_parallel") else "")
    opts = [f"--job-name={s.get('job_name') or 'selfrec-sweep'}", f"--array={array}",
            f"--output={sweep_dir / 'slurm' / '%x-%A_%a.out'}"]
    for key, opt in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("time", "time"),
                     ("cpus_per_task", "cpus-per-task"), ("mem", "mem")):
        if s.get(key) is not None:
            opts.append(f"--{opt}={s[key]}")
    if s.get("gpus"):
        opts.append(f"--gres=gpu:{s['gpus']}")
    extra = s.get("sbatch") or []
    opts += [str(x) for x in (extra if isinstance(extra, list) else [extra])]
    setup = s.get("setup") or []
    setup = setup if isinstance(setup, list) else str(setup).splitlines()
    values = {"config": '"$CONFIG"', "output_dir": '"$RUN_DIR"', "run_id": '"$RUN_ID"',
              "sweep_dir": shlex.quote(str(sweep_dir))}
    command = " ".join(tok.format(**values) if "{" in tok else shlex.quote(tok) for tok in shlex.split(template))
    lines = [
        "#!/bin/bash",
        f"# SLURM array for the sweep {sweep.path}: one task per run (written by selfrec_ft.sweep.slurm; not",
        "# submitted). Submit it, then evaluate and analyse the finished runs without training:",
        f"#   sbatch {shlex.quote(str(sweep_dir / SLURM_SCRIPT))}",
        f"#   python recipes/sweep_recognition.py --config {shlex.quote(str(sweep.path))} "
        f"--output_dir {shlex.quote(str(sweep_dir))} --skip_training",
        *[f"#SBATCH {o}" for o in opts],
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(str(cwd))}",
        *[str(x) for x in setup],
        "RUN_IDS=(",
        *[f"  {shlex.quote(r.run_id)}" for r in sweep.runs],
        ")",
        'RUN_ID="${RUN_IDS[$SLURM_ARRAY_TASK_ID]}"',
        f'RUN_DIR={shlex.quote(str(sweep_dir / RUNS_SUBDIR))}/"$RUN_ID"',
        f'CONFIG="$RUN_DIR/{RUN_CONFIG}"',
        f'if [ -f "$RUN_DIR/{DONE_FILE}" ] || grep -qs \'"status": "done"\' "$RUN_DIR/{MANIFEST_FILE}"; then',
        '  echo "run $RUN_ID is finished"; exit 0',
        "fi",
        f"{command}",
        "",
    ]
    return "\n".join(lines)
