"""Process helpers of a sweep: which process writes, waiting for the others, training one run
in this process or through a launcher command, and the teardown between and after runs.

A sweep may itself run under ``accelerate launch`` (every process trains every in-process run
together); only the main process writes runs.json, markers and reports. Memory and the process
group are released through the training package's one teardown
(:func:`selfrec_ft.training.teardown.release`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from selfrec_ft.sweep.config import sft_parser
from selfrec_ft.training.teardown import end_distributed, release_training_state  # noqa: F401 (the one teardown)


def is_main_process() -> bool:
    """Rank 0 (or no distributed launch): the process that writes runs.json, markers and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def log(msg: str) -> None:
    """A progress line on stderr, from the main process only."""
    if is_main_process():
        print(msg, file=sys.stderr, flush=True)


def barrier() -> None:
    """Wait for every process of the group the sweep runs in (nothing without one)."""
    if "torch" not in sys.modules:  # nothing imported torch: no process group can exist
        return
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def one_line(text: Any) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return re.sub(r"\s+", " ", str(text)).strip()


def parse_run_config(config_path: str | os.PathLike) -> tuple:
    """``(data_args, training_args, model_args, hook_args)`` of a run's YAML, parsed exactly as the
    recipe parses it (:func:`selfrec_ft.training.args.parse_args_and_config_strict`)."""
    from selfrec_ft.training.args import parse_args_and_config_strict

    return parse_args_and_config_strict(sft_parser(), ["--config", os.fspath(config_path)])


def train_inprocess(config_path: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Any]:
    """Train one run in this process with the library's runner; returns ``{"global_step", "train_loss"}``."""
    from selfrec_ft.training.sft import run_sft

    data_args, training_args, model_args, hook_args = parse_run_config(config_path)
    training_args.output_dir = os.fspath(output_dir)
    try:
        result = run_sft(data_args, training_args, model_args, hook_args=hook_args, teardown=False)
    finally:
        release_training_state()
    return {"global_step": result.global_step, "train_loss": result.metrics.get("train_loss")}


def command_argv(template: str, values: Mapping[str, str]) -> list[str]:
    """The launcher command of one run as argv (``python`` is this interpreter)."""
    argv = [tok.format(**values) for tok in shlex.split(template)]
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    return argv


def train_command(template: str, values: Mapping[str, str], log_path: Path) -> dict[str, Any]:
    """Run the launcher command for one run, output into ``log_path``; a non-zero exit raises."""
    argv = command_argv(template, values)
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        out.write(f"\n$ {shlex.join(argv)}\n".encode())
        out.flush()
        try:
            rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        except OSError as exc:
            raise RuntimeError(f"cannot run {argv[0]!r}: {exc.strerror}") from None
    if rc != 0:
        tail = [ln for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        last = one_line(tail[-1])[-300:] if tail else ""
        raise RuntimeError(f"launcher exited with status {rc}" + (f"; last output: {last}" if last else "")
                           + f" (log: {log_path})")
    return {}
