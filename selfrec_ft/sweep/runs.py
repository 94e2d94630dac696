"""A sweep's run state on disk: ``SWEEP_DIR/runs.json``, each run's ``sweep_config.yaml`` and
``done`` marker (docs/ARCHITECTURE.md, "Sweep directory")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from selfrec_ft.jsonl import atomic_write_json, atomic_write_text
from selfrec_ft.sweep.config import DONE_FILE, MANAGED_KEYS, RUN_CONFIG, RUNS_FILE, RunSpec, SweepConfig, load_yaml
from selfrec_ft.sweep.processes import is_main_process


def run_done(run_dir: Path) -> bool:
    """A ``done`` marker, or a manifest with status done next to the final adapter/model."""
    from selfrec_ft.sweep.checkpoints import has_weights
    from selfrec_ft.training.manifest import read_manifest

    if (run_dir / DONE_FILE).is_file():
        return True
    manifest = read_manifest(run_dir)
    return bool(manifest and manifest.get("status") == "done" and has_weights(run_dir))


def _normalise(config: Mapping[str, Any]) -> dict[str, Any]:
    import yaml

    out = yaml.safe_load(yaml.safe_dump(dict(config))) or {}
    for key in MANAGED_KEYS:
        out.pop(key, None)
    return out


def config_change(run_dir: Path, spec: RunSpec) -> str | None:
    """How the run's written ``sweep_config.yaml`` differs from ``spec`` (``key: old -> new``, first
    difference; keys the sweep manages are ignored), or None when equal or not written."""
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        return None
    old, _ = load_yaml(path, "run config")
    old, new = _normalise(old or {}), _normalise(spec.config)
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
    return None


def write_run_config(spec: RunSpec, run_dir: Path, sweep: SweepConfig) -> Path:
    """The run's flat SFT config, ``output_dir`` set to ``run_dir`` (usable as the recipe's --config)."""
    import yaml

    path = run_dir / RUN_CONFIG
    config = {**spec.config, "output_dir": str(run_dir.resolve())}
    knobs = ", ".join(f"{k}={v!r}" for k, v in spec.knobs.items()) or "none"
    header = (f"# Sweep run {spec.run_id}: {sweep.base_path} + overrides + knobs ({knobs}).\n"
              f"# Written by selfrec_ft.sweep.runs from {sweep.path}; train it alone with\n"
              f"#   python recipes/selfrec_sft.py --config {path}\n")
    atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


class RunsFile:
    """``SWEEP_DIR/runs.json``, rewritten atomically (by the main process) after every change."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = sweep_dir
        self.entries: dict[str, dict[str, Any]] = {}

    def add(self, entry: dict[str, Any], first: bool = False) -> dict[str, Any]:
        if first:
            self.entries = {entry["run_id"]: entry, **self.entries}
        else:
            self.entries[entry["run_id"]] = entry
        return entry

    def rel(self, path: str | os.PathLike) -> str:
        return os.path.relpath(Path(path).resolve(), self.sweep_dir.resolve())

    def save(self) -> None:
        if is_main_process():
            atomic_write_json(self.sweep_dir / RUNS_FILE, {"runs": list(self.entries.values())})
