"""Sweep configs: read and check a sweep YAML, expand its grid into runs with stable ids.

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
``n_articles``, seed, then any other knob of the run) and the directory ``SWEEP_DIR/runs/<run_id>``.
Unknown keys and bad values raise :class:`~selfrec_ft.errors.UserError` naming the file and line: every
knob value (and every key of the base config) is checked against the recipe parser's type for that
field (an integer, a number, true/false, one of its choices). An empty grid (``grid: {}``) adds no
runs: with no ``runs`` either it is the "no runs" error, never one run of the base config.
The names of the sweep directory's files are here too; :mod:`selfrec_ft.sweep.runner` runs a sweep.
"""

from __future__ import annotations

import itertools
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfrec_ft import files
from selfrec_ft.cmdline import config_value_problem
from selfrec_ft.defaults import DEFAULT_HOOK_TASKS, GENERATION_TEMPLATES, LABEL_STRATEGIES, TASKS
from selfrec_ft.errors import UserError

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

TOP_KEYS = ("base", "output_dir", "grid", "runs", "eval", "launcher", "slurm")
BASE_KEYS = ("config", "overrides")
EVAL_KEYS = ("in_domain", "out_of_domain", "in_domain_kind", "out_of_domain_kind", "limit", "tasks",
             "familiarity", "checkpoints", "batch_size", "dtype", "device", "hook", "seed", "n_resamples",
             "worse_question")
SLURM_KEYS = ("job_name", "partition", "account", "qos", "time", "gpus", "cpus_per_task", "mem",
              "max_parallel", "setup", "sbatch", "command")
PLACEHOLDERS = ("config", "output_dir", "run_id", "sweep_dir")
ID_PREFIX = {"max_steps": "steps", "lora_r": "r", "lora_alpha": "alpha", "learning_rate": "lr",
             "label_seed": "ls", "num_train_epochs": "ep", "question": "q"}
MANAGED_KEYS = ("output_dir",)


# ----------------------------------------------------------------------------- YAML with line numbers


def load_yaml(path: Path, what: str) -> tuple[Any, dict[tuple, int]]:
    """``(data, lines)``: the YAML document and the 1-based line of every key path in it (read as
    UTF-8 by :func:`selfrec_ft.files.load_yaml`: a bad byte is an error at its line)."""
    return files.load_yaml(path, what)


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
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_HOOK_TASKS))
    familiarity: bool = False
    checkpoints: bool = False
    batch_size: int | None = None
    dtype: str | None = None
    device: str | None = None
    hook: bool = False
    seed: int = 0
    n_resamples: int = 2000
    worse_question: bool = True


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


def _check_knobs(knobs: Mapping[str, Any], known: Mapping[str, Any], path: Path, lines: dict, prefix: tuple,
                 what: str, allow_run_id: bool = False, axis: bool = False) -> None:
    """Keys must be SFT config fields; the common knobs' values are checked here (with ``axis``,
    each element of a list value is one alternative), the rest when the run's config is parsed."""
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
            if key == "labels" and v not in LABEL_STRATEGIES:
                bad = f"labels must be one of {', '.join(LABEL_STRATEGIES)}"
            elif key == "flip_fraction" and not (v is None or _is_num(v) and 0 <= v <= 1):
                bad = "flip_fraction must be a number in [0, 1] (or null)"
            elif key in ("n_articles", "lora_r") and not (_is_int(v) and v >= 1):
                bad = f"{key} must be an integer of at least 1"
            elif key in ("seed", "label_seed", "max_steps") and not _is_int(v):
                bad = f"{key} must be an integer"
            if bad:
                raise UserError(f"{bad}, got {v!r}", path, where)
            problem = config_value_problem(known[key], v)
            if problem:
                raise UserError(f"{key} {problem}", path, where)


def _expand_grid(grid: Any, path: Path, lines: dict, known: Mapping[str, Any]) -> list[tuple[dict, int | None]]:
    """Grid points ``(knobs, line)``: the cartesian product of a mapping of lists of alternatives (a
    scalar is one alternative; a list-valued field such as ``others`` needs a list of lists), or of
    each mapping of a list of them."""
    products = grid if isinstance(grid, list) else [grid]
    points = []
    for i, prod in enumerate(products):
        prefix = ("grid", i) if isinstance(grid, list) else ("grid",)
        _check_knobs(prod, known, path, lines, prefix, "grid", axis=True)
        if not prod:
            if isinstance(grid, list):
                raise UserError(f"grid[{i}] is empty: give knobs with lists of values (e.g. flip_fraction: "
                                "[0, 0.5, 1])", path, lines.get(prefix))
            return []  # `grid: {}` is no grid (not one run of the base config)
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
    data, lines = load_yaml(path, "sweep config")
    if data is None:
        data = {}
    _check_keys(data, TOP_KEYS, path, lines, (), "the sweep config")
    parser = sft_parser()
    known = {a.dest: a for a in parser._actions if a.dest != "help"}
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
    base_cfg, base_lines = load_yaml(base_path, "base SFT config")
    base_cfg = base_cfg or {}
    if not isinstance(base_cfg, dict):
        raise UserError("an SFT config must be a YAML mapping", base_path)
    for key in base_cfg:
        if key not in known:
            raise UserError(f'unknown key "{key}" (not a SelfRecDataArguments, SFTConfig, ModelConfig or '
                            'EvalHookArguments field)', base_path, base_lines.get((key,)))
        problem = config_value_problem(known[key], base_cfg[key])
        if problem:
            raise UserError(f"{key} {problem}", base_path, base_lines.get((key,)))
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
        empty = " (the grid is empty)" if data.get("grid") is not None else ""
        raise UserError(f"no runs{empty}: give a grid (a product of knob values, e.g. flip_fraction: [0, 0.5, 1]) "
                        "and/or a runs list", path, lines.get(("grid",)))

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
    from selfrec_ft.training.args import split_list

    ev = EvalConfig()
    for key, value in raw.items():
        where = lines.get(("eval", key))
        if key in ("familiarity", "checkpoints", "hook", "worse_question"):
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
