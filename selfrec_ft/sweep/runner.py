"""Sweep runner: train a grid of self-recognition fine-tunes, evaluate them, analyse the sweep.

A sweep YAML (``recipes/demo/sweep.yaml``) names a **base** SFT config (a recipe YAML such as
``recipes/demo/selfrec_sft.yaml`` plus ``overrides``), the runs, and how to evaluate and launch them::

    base: {config: recipes/demo/selfrec_sft.yaml, overrides: {max_steps: 8}}   # or base: PATH
    output_dir: outputs/sweep                # SWEEP_DIR (--output_dir overrides)
    grid: {labels: [self], flip_fraction: [0, 0.5, 1]}   # cartesian product (or a list of products)
    runs: [{labels: length}, {labels: always_1}]          # explicit runs, added to the grid's
    eval: {in_domain: ..., out_of_domain: ..., limit: 50, checkpoints: false, familiarity: false}
    launcher: inprocess                      # or a command with {config} {output_dir} {run_id}
    slurm: {partition: gpu, gpus: 1, time: "04:00:00"}   # optional: write SWEEP_DIR/slurm_array.sh

Knobs (``grid`` / ``runs`` / ``overrides`` keys) are SFT config keys: ``n_articles``,
``flip_fraction``, ``labels``, ``max_steps``, ``lora_r``, ``seed`` (the training seed, and the label
seed unless the run sets ``label_seed``), or any other field of the recipe's four argument groups.

Each run gets a stable ``run_id`` from its knobs (``flip0.25_self_n16_s0``: flip fraction, labels,
``n_articles``, seed, then any other knob of the run) and the directory ``SWEEP_DIR/runs/<run_id>``,
where its fully resolved flat config is written first (``sweep_config.yaml``, usable as
``recipes/selfrec_sft.py --config``). A run is finished when its ``done`` marker (written
atomically by the sweep) exists, or its manifest says done and the final adapter/model is there;
finished runs are skipped on a rerun (and a finished run whose config changed is refused), failed
ones (an exception, a non-zero exit) are recorded with their error and retried on the next rerun.
Then every done run is evaluated in both domains (its final model, plus its checkpoints with
``eval.checkpoints``) by :mod:`selfrec_ft.sweep.checkpoints`, the untrained base model becomes the
``baseline`` run, ``SWEEP_DIR/runs.json`` (docs/ARCHITECTURE.md, "Sweep directory") is rewritten
atomically after every change, the evaluation table goes to ``SWEEP_DIR/eval_checkpoints.{json,md}``
and :func:`selfrec_ft.sweep.analysis.analyse_sweep` writes ``analysis.json``, ``report.md`` and PNGs.

In-process runs call :func:`selfrec_ft.training.sft.run_sft` one after another with
``teardown=False`` (a process group the sweep runs in stays up) and reset accelerate's
accelerator/gradient state after each, so no run's settings leak into the next.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import string
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import atomic_write_json, atomic_write_text

RUNS_FILE = "runs.json"
RUNS_SUBDIR = "runs"
RUN_CONFIG = "sweep_config.yaml"
DONE_FILE = "done"
LAUNCHER_LOG = "launcher.log"
ERROR_LOG = "error.log"
SLURM_SCRIPT = "slurm_array.sh"
BASELINE_DIR = "baseline"
BASELINE_ID = "baseline"
INPROCESS = "inprocess"
DEFAULT_SLURM_COMMAND = "python recipes/selfrec_sft.py --config {config} --output_dir {output_dir}"

TOP_KEYS = ("base", "output_dir", "grid", "runs", "eval", "launcher", "slurm")
BASE_KEYS = ("config", "overrides")
EVAL_KEYS = ("in_domain", "out_of_domain", "in_domain_kind", "out_of_domain_kind", "limit", "tasks",
             "familiarity", "checkpoints", "batch_size", "dtype", "device", "hook", "seed", "n_resamples")
SLURM_KEYS = ("job_name", "partition", "account", "qos", "time", "gpus", "cpus_per_task", "mem",
              "max_parallel", "setup", "sbatch", "command")
PLACEHOLDERS = ("config", "output_dir", "run_id", "sweep_dir")
ID_PREFIX = {"max_steps": "steps", "lora_r": "r", "lora_alpha": "alpha", "learning_rate": "lr",
             "label_seed": "ls", "num_train_epochs": "ep", "question": "q"}
MANAGED_KEYS = ("output_dir",)


# ----------------------------------------------------------------------------- YAML with line numbers


def _load_yaml(path: Path, what: str) -> tuple[Any, dict[tuple, int]]:
    """``(data, lines)``: the YAML document and the 1-based line of every key path in it."""
    import yaml

    if not path.is_file():
        raise UserError(f"{what} not found", path)
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = re.sub(r"\s+", " ", str(getattr(exc, "problem", None) or exc)).strip()
        raise UserError(f"invalid YAML ({problem})", path, mark.line + 1 if mark else None) from None
    lines: dict[tuple, int] = {}

    def walk(n, prefix: tuple) -> None:
        lines.setdefault(prefix, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                lines[prefix + (k.value,)] = k.start_mark.line + 1
                walk(v, prefix + (k.value,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, prefix + (i,))

    if node is not None:
        walk(node, ())
    return data, lines


# ----------------------------------------------------------------------------- config


def sft_parser():
    """The recipe's parser: ``TrlParser`` over the four SFT argument dataclasses."""
    from trl import ModelConfig, SFTConfig, TrlParser

    from selfrec_ft.training.args import EvalHookArguments, SelfRecDataArguments

    return TrlParser((SelfRecDataArguments, SFTConfig, ModelConfig, EvalHookArguments))


@dataclass
class EvalConfig:
    """The sweep's ``eval:`` section (see :class:`selfrec_ft.sweep.checkpoints.EvalSettings`)."""

    in_domain: str | None = None
    out_of_domain: str | None = None
    in_domain_kind: str | None = None
    out_of_domain_kind: str | None = None
    limit: int | None = None
    tasks: list[str] = field(default_factory=lambda: ["pairwise-recognition", "pairwise-preference"])
    familiarity: bool = False
    checkpoints: bool = False
    batch_size: int | None = None
    dtype: str | None = None
    device: str | None = None
    hook: bool = False
    seed: int = 0
    n_resamples: int = 2000


@dataclass
class RunSpec:
    """One grid point: its id, its knobs as given, its params for runs.json and its flat SFT config."""

    run_id: str
    knobs: dict[str, Any]
    params: dict[str, Any]
    config: dict[str, Any]


@dataclass
class SweepConfig:
    path: Path
    base_path: Path
    sweep_dir: Path
    runs: list[RunSpec]
    eval: EvalConfig
    launcher: str
    slurm: dict[str, Any] | None
    lines: dict[tuple, int] = field(default_factory=dict)


def _type_error(path: Path, lines: dict, key: tuple, message: str) -> UserError:
    return UserError(message, path, lines.get(key) or lines.get(key[:-1]))


def _check_keys(mapping: Any, allowed: Sequence[str], path: Path, lines: dict, prefix: tuple, what: str) -> None:
    if not isinstance(mapping, dict):
        raise _type_error(path, lines, prefix, f"{what} must be a mapping")
    for key in mapping:
        if key not in allowed:
            raise UserError(f'unknown key "{key}" in {what} (allowed: {", ".join(allowed)})', path,
                            lines.get(prefix + (key,)))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_knobs(knobs: Mapping[str, Any], known: set[str], path: Path, lines: dict, prefix: tuple, what: str,
                 allow_run_id: bool = False, axis: bool = False) -> None:
    """Keys must be SFT config fields; the common knobs' values are checked here (with ``axis``,
    each element of a list value is one alternative), the rest when the run's config is parsed."""
    from selfrec_ft.pairs.labels import STRATEGIES

    if not isinstance(knobs, dict):
        raise _type_error(path, lines, prefix, f"{what} must be a mapping of SFT config keys to values")
    for key, value in knobs.items():
        where = lines.get(prefix + (key,))
        if key == "run_id" and allow_run_id:
            if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*", value):
                raise UserError(f"run_id must be a name of letters, digits and ._+=- , got {value!r}", path, where)
            continue
        if key in MANAGED_KEYS:
            raise UserError(f'"{key}" is set by the sweep (SWEEP_DIR/{RUNS_SUBDIR}/<run_id>); remove it from {what}',
                            path, where)
        if key not in known:
            raise UserError(f'unknown key "{key}" in {what} (not a SelfRecDataArguments, SFTConfig, ModelConfig or '
                            'EvalHookArguments field)', path, where)
        for v in (value if axis and isinstance(value, list) else [value]):
            bad = None
            if key == "labels" and v not in STRATEGIES:
                bad = f"labels must be one of {', '.join(STRATEGIES)}"
            elif key == "flip_fraction" and not (v is None or _is_num(v) and 0 <= v <= 1):
                bad = "flip_fraction must be a number in [0, 1] (or null)"
            elif key in ("n_articles", "lora_r") and not (_is_int(v) and v >= 1):
                bad = f"{key} must be an integer of at least 1"
            elif key in ("seed", "label_seed", "max_steps") and not _is_int(v):
                bad = f"{key} must be an integer"
            if bad:
                raise UserError(f"{bad}, got {v!r}", path, where)


def _expand_grid(grid: Any, path: Path, lines: dict, known: set[str]) -> list[tuple[dict, int | None]]:
    """Grid points ``(knobs, line)``: the cartesian product of a mapping of lists of alternatives (a
    scalar is one alternative; a list-valued field such as ``others`` needs a list of lists), or of
    each mapping of a list of them."""
    products = grid if isinstance(grid, list) else [grid]
    points = []
    for i, prod in enumerate(products):
        prefix = ("grid", i) if isinstance(grid, list) else ("grid",)
        _check_knobs(prod, known, path, lines, prefix, "grid", axis=True)
        keys = list(prod)
        axes = [v if isinstance(v, list) else [v] for v in prod.values()]
        for k, axis in zip(keys, axes):
            if not axis:
                raise UserError(f'grid key "{k}" has no values', path, lines.get(prefix + (k,)))
        for combo in itertools.product(*axes):
            points.append((dict(zip(keys, combo)), lines.get(prefix)))
    return points


def format_value(v: Any) -> str:
    """A knob value as it appears in a run id: ``0.25``, ``1``, ``always_1``, ``a+b``."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return format(v, "g")
    if isinstance(v, (list, tuple)):
        return "+".join(format_value(x) for x in v)
    return re.sub(r"[^A-Za-z0-9._+=-]+", "-", str(v)).strip("-") or "none"


def make_run_id(config: Mapping[str, Any], knobs: Mapping[str, Any]) -> str:
    """``[flip<F>_]<labels>_n<n_articles>_s<seed>`` then ``<prefix><value>`` for every other knob of
    the run (sorted by key); the same knobs always give the same id."""
    parts = []
    if config.get("flip_fraction") is not None:
        parts.append("flip" + format_value(config["flip_fraction"]))
    parts += [format_value(config.get("labels")), "n" + format_value(config.get("n_articles")),
              "s" + format_value(config.get("seed"))]
    for key in sorted(knobs):
        if key in ("flip_fraction", "labels", "n_articles", "seed", "run_id"):
            continue
        parts.append(ID_PREFIX.get(key, key) + format_value(knobs[key]))
    return "_".join(parts)


def _resolve_base_path(ref: str, sweep_path: Path) -> Path:
    p = Path(ref).expanduser()
    if p.is_absolute() or p.exists():
        return p
    beside = sweep_path.parent / p
    return beside if beside.exists() else p


def load_sweep_config(path: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> SweepConfig:
    """Read and check a sweep YAML; expand its runs. Unknown keys and bad values raise
    :class:`UserError` naming the file and line."""
    path = Path(path)
    data, lines = _load_yaml(path, "sweep config")
    if data is None:
        data = {}
    _check_keys(data, TOP_KEYS, path, lines, (), "the sweep config")
    parser = sft_parser()
    known = {a.dest for a in parser._actions} - {"help"}
    defaults = {k: parser.get_default(k) for k in ("labels", "n_articles", "seed", "flip_fraction")}

    base = data.get("base")
    if isinstance(base, str):
        base_ref, overrides, ov_prefix = base, {}, ("base",)
    elif isinstance(base, dict):
        _check_keys(base, BASE_KEYS, path, lines, ("base",), "base")
        base_ref, overrides, ov_prefix = base.get("config"), base.get("overrides") or {}, ("base", "overrides")
        if not isinstance(base_ref, str):
            raise UserError("base.config must be the path of an SFT recipe YAML", path, lines.get(("base",)))
    else:
        raise UserError("base must be the path of an SFT recipe YAML (or {config: PATH, overrides: {...}})", path,
                        lines.get(("base",)))
    base_path = _resolve_base_path(base_ref, path)
    base_cfg, base_lines = _load_yaml(base_path, "base SFT config")
    base_cfg = base_cfg or {}
    if not isinstance(base_cfg, dict):
        raise UserError("an SFT config must be a YAML mapping", base_path)
    for key in base_cfg:
        if key not in known:
            raise UserError(f'unknown key "{key}" (not a SelfRecDataArguments, SFTConfig, ModelConfig or '
                            'EvalHookArguments field)', base_path, base_lines.get((key,)))
    _check_knobs(overrides, known, path, lines, ov_prefix, "base.overrides")

    points: list[tuple[dict, int | None]] = []
    if data.get("grid") is not None:
        points += _expand_grid(data["grid"], path, lines, known)
    if data.get("runs") is not None:
        if not isinstance(data["runs"], list):
            raise UserError("runs must be a list of mappings (one per run)", path, lines.get(("runs",)))
        for i, run in enumerate(data["runs"]):
            _check_knobs(run, known, path, lines, ("runs", i), f"runs[{i}]", allow_run_id=True)
            points.append((dict(run), lines.get(("runs", i))))
    if not points:
        raise UserError("no runs: give a grid (a product of knob values) and/or a runs list", path)

    ev_raw = data.get("eval") or {}
    _check_keys(ev_raw, EVAL_KEYS, path, lines, ("eval",), "eval")
    ev = _eval_config(ev_raw, {**base_cfg, **overrides}, path, lines)

    specs: list[RunSpec] = []
    seen: dict[str, int | None] = {}
    for knobs, line in points:
        config = {**base_cfg, **overrides, **{k: v for k, v in knobs.items() if k != "run_id"}}
        if "seed" in knobs and "label_seed" not in knobs:
            config["label_seed"] = knobs["seed"]
        named = {**defaults, **config}
        if named.get("flip_fraction") is not None and named.get("labels") != "self":
            raise UserError(f"a run with flip_fraction={named['flip_fraction']} has labels={named.get('labels')!r}: "
                            "flip_fraction mixes self and other labels and needs labels: self (put control runs in "
                            "`runs:` or in a separate grid)", path, line)
        if not ev.hook:
            config["hook_in_domain"] = None
            config["hook_out_of_domain"] = None
        run_id = knobs.get("run_id") or make_run_id(named, knobs)
        if run_id == BASELINE_ID or run_id in seen:
            raise UserError(f'two runs get the run_id "{run_id}" (lines {seen.get(run_id)} and {line}): '
                            "their knobs are the same; give one an explicit run_id", path, line)
        seen[run_id] = line
        params = {"labels": named.get("labels"), "n_articles": named.get("n_articles"), "seed": named.get("seed")}
        if named.get("flip_fraction") is not None:
            params["flip_fraction"] = named["flip_fraction"]
        params.update({k: v for k, v in knobs.items() if k != "run_id"})
        specs.append(RunSpec(run_id, dict(knobs), params, config))

    launcher = data.get("launcher", INPROCESS) or INPROCESS
    if not isinstance(launcher, str):
        raise UserError(f'launcher must be "{INPROCESS}" or a command template', path, lines.get(("launcher",)))
    if launcher != INPROCESS:
        _check_template(launcher, path, lines.get(("launcher",)), "launcher")
    slurm = data.get("slurm")
    if slurm is not None:
        _check_keys(slurm, SLURM_KEYS, path, lines, ("slurm",), "slurm")
        if slurm.get("command") is not None:
            _check_template(str(slurm["command"]), path, lines.get(("slurm", "command")), "slurm.command")
        for key in ("gpus", "cpus_per_task", "max_parallel"):
            if slurm.get(key) is not None and not (_is_int(slurm[key]) and slurm[key] >= 1):
                raise UserError(f"slurm.{key} must be an integer of at least 1", path, lines.get(("slurm", key)))
    out = output_dir if output_dir is not None else data.get("output_dir")
    if not out:
        raise UserError("no sweep directory: set output_dir in the sweep config or pass --output_dir", path)
    return SweepConfig(path, base_path, Path(out), specs, ev, launcher, slurm, lines)


def _check_template(template: str, path: Path, line: int | None, what: str) -> None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise UserError(f"{what}: malformed command template ({exc})", path, line) from None
    unknown = names - set(PLACEHOLDERS)
    if unknown:
        raise UserError(f"{what}: unknown placeholder(s) {', '.join('{' + n + '}' for n in sorted(unknown))}; "
                        f"use {', '.join('{' + n + '}' for n in PLACEHOLDERS)}", path, line)
    if "config" not in names:
        raise UserError(f"{what}: the command must pass the run's config, e.g. --config {{config}}", path, line)


def _eval_config(raw: Mapping[str, Any], base_cfg: Mapping[str, Any], path: Path, lines: dict) -> EvalConfig:
    from selfrec_ft.scoring.items import GENERATION_TEMPLATES, TASKS
    from selfrec_ft.training.args import split_list

    ev = EvalConfig()
    for key, value in raw.items():
        where = lines.get(("eval", key))
        if key in ("familiarity", "checkpoints", "hook"):
            if not isinstance(value, bool):
                raise UserError(f"eval.{key} must be true or false", path, where)
        elif key in ("limit", "batch_size", "n_resamples"):
            if value is not None and not (_is_int(value) and value >= 1):
                raise UserError(f"eval.{key} must be an integer of at least 1", path, where)
        elif key == "seed":
            if not _is_int(value):
                raise UserError("eval.seed must be an integer", path, where)
        elif key == "tasks":
            value = split_list(value) or []
            bad = [t for t in value if t not in TASKS]
            if bad or not value:
                raise UserError(f"eval.tasks: unknown or no task(s) {', '.join(bad)}; use {', '.join(TASKS)}", path,
                                where)
        elif key in ("in_domain_kind", "out_of_domain_kind"):
            if value is not None and value not in GENERATION_TEMPLATES:
                raise UserError(f"eval.{key} must be one of {', '.join(GENERATION_TEMPLATES)}", path, where)
        elif value is not None and not isinstance(value, str):
            raise UserError(f"eval.{key} must be a string", path, where)
        setattr(ev, key, value)
    ev.in_domain = ev.in_domain or base_cfg.get("hook_in_domain") or base_cfg.get("corpus")
    ev.out_of_domain = ev.out_of_domain or base_cfg.get("hook_out_of_domain")
    if not ev.in_domain or not ev.out_of_domain:
        missing = "in_domain" if not ev.in_domain else "out_of_domain"
        raise UserError(f"eval.{missing} is not set and the base config has no hook_{missing} to default to", path,
                        lines.get(("eval",)))
    return ev


# ----------------------------------------------------------------------------- process helpers


def is_main_process() -> bool:
    """Rank 0 (or no distributed launch): the process that writes runs.json, markers and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _one_line(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def release_training_state() -> None:
    """After an in-process run: drop accelerate's accelerator and gradient state (the next run's
    trainer builds its own) but keep ``PartialState`` (the device and any process group the sweep
    runs in), and free memory."""
    import gc

    import torch
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def end_distributed() -> None:
    """Destroy the process group a distributed in-process sweep ran in (call once, at the very end)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


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


def _command_argv(template: str, values: Mapping[str, str]) -> list[str]:
    argv = [tok.format(**values) for tok in shlex.split(template)]
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    return argv


def train_command(template: str, values: Mapping[str, str], log_path: Path) -> dict[str, Any]:
    """Run the launcher command for one run, output into ``log_path``; a non-zero exit raises."""
    argv = _command_argv(template, values)
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {shlex.join(argv)}\n".encode())
        log.flush()
        try:
            rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        except OSError as exc:
            raise RuntimeError(f"cannot run {argv[0]!r}: {exc.strerror}") from None
    if rc != 0:
        tail = [ln for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        last = _one_line(tail[-1])[-300:] if tail else ""
        raise RuntimeError(f"launcher exited with status {rc}" + (f"; last output: {last}" if last else "")
                           + f" (log: {log_path})")
    return {}


# ----------------------------------------------------------------------------- run state


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


def _changed_key(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
    return None


def write_run_config(spec: RunSpec, run_dir: Path, sweep: SweepConfig) -> Path:
    import yaml

    path = run_dir / RUN_CONFIG
    config = {**spec.config, "output_dir": str(run_dir.resolve())}
    knobs = ", ".join(f"{k}={v!r}" for k, v in spec.knobs.items()) or "none"
    header = (f"# Sweep run {spec.run_id}: {sweep.base_path} + overrides + knobs ({knobs}).\n"
              f"# Written by selfrec_ft.sweep.runner from {sweep.path}; train it alone with\n"
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


# ----------------------------------------------------------------------------- SLURM


def slurm_script(sweep: SweepConfig, cwd: Path | None = None) -> str:
    """An sbatch array script, one task per run (index = position in the sweep's run list)."""
    from selfrec_ft.training.manifest import MANIFEST_FILE

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
        f"# SLURM array for the sweep {sweep.path}: one task per run (written by selfrec_ft.sweep.runner; not",
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


# ----------------------------------------------------------------------------- the sweep


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


def _log(msg: str) -> None:
    if is_main_process():
        print(msg, file=sys.stderr, flush=True)


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
        cfg_path = run_dir / RUN_CONFIG
        if cfg_path.is_file():
            old, _ = _load_yaml(cfg_path, "run config")
            change = _changed_key(_normalise(old or {}), _normalise(spec.config))
            if change:
                raise UserError(f"run {spec.run_id} is finished but its config changed ({change}); use another "
                                f"output_dir, or delete {run_dir} to retrain it", sweep.path)
        if not (run_dir / DONE_FILE).is_file() and is_main_process():  # trained outside the sweep (SLURM)
            atomic_write_json(run_dir / DONE_FILE, {"run_id": spec.run_id, "found": "manifest"})
        entry["status"] = "done"
        result.skipped.append(spec.run_id)
    _barrier()
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
        _log(f"{tag}: training")
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
            entry.update(status="failed", error=_one_line(exc if isinstance(exc, UserError)
                                                           else f"{type(exc).__name__}: {exc}"))
            if is_main_process():
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / ERROR_LOG).write_text(traceback.format_exc(), encoding="utf-8")
            runs_file.save()
            result.failed.append(spec.run_id)
            _log(f"{tag}: FAILED: {entry['error']}")
            _barrier()
            continue
        except BaseException:  # killed: the run stays unfinished and is trained (resumed) on the rerun
            entry["status"] = "interrupted"
            runs_file.save()
            raise
        seconds = round(time.perf_counter() - t0, 1)
        if is_main_process():
            atomic_write_json(run_dir / DONE_FILE, {"run_id": spec.run_id, "seconds": seconds,
                                                    **{k: v for k, v in (info or {}).items() if v is not None}})
        _barrier()
        entry.update(status="done", error=None)
        runs_file.save()
        result.trained.append(spec.run_id)
        _log(f"{tag}: done in {seconds:.0f}s")


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
        _log(f"{len(result.skipped)} run(s) finished earlier, skipped: {', '.join(result.skipped)}")
    if sweep.slurm is not None and is_main_process():
        (sweep_dir / "slurm").mkdir(parents=True, exist_ok=True)  # sbatch does not create the log directory
        result.slurm_script = sweep_dir / SLURM_SCRIPT
        atomic_write_text(result.slurm_script, slurm_script(sweep))
        result.slurm_script.chmod(0o755)
        _log(f"SLURM array script: {result.slurm_script} (not submitted)")
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
    _barrier()
    return result


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
        progress=progress, demo_cache=sweep.runs[0].config.get("demo_cache"),
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
        _log("no finished run to evaluate")
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
        message = _one_line(exc if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}")
        _log(f"evaluation of {job.run} {job.checkpoint} {job.domain} FAILED: {message}")
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
