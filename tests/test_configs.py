"""Every YAML shipped under recipes/ parses with its recipe's parser (after torchtune's
tests/recipes/test_configs.py), found by glob so a new config is tested without touching this file.

Which recipe a config belongs to is read from its content: a top-level ``base`` key makes it a sweep
config (``selfrec sweep``); otherwise a field only :class:`AttributeDPOArguments` has (``attribute``,
``direction``, ...) makes it a DPO config (``selfrec dpo``), a field only
:class:`SelfRecDataArguments` has (``labels``, ``flip_fraction``, ``question``, ...) an SFT config
(``selfrec train``). A YAML that matches none, or both, fails.

The parse is tested, not the data: paths inside a config (``data/p1/xsum``, ...) need not
exist. The GPU configs set ``bf16: true``, which ``TrainingArguments`` refuses on a machine without
CUDA, so on such a machine ``--use_cpu true`` is the one flag added to the parse.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from selfrec_ft.training.args import AttributeDPOArguments, SelfRecDataArguments, split_list

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "recipes").rglob("*.yaml"))

_SFT_FIELDS = {f.name for f in dataclasses.fields(SelfRecDataArguments)}
_DPO_FIELDS = {f.name for f in dataclasses.fields(AttributeDPOArguments)}
SFT_ONLY = _SFT_FIELDS - _DPO_FIELDS
DPO_ONLY = _DPO_FIELDS - _SFT_FIELDS


def recipe_of(path: Path) -> str:
    """``"sweep"``, ``"dpo"`` or ``"sft"`` from the config's top-level keys (see the module docstring)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise AssertionError(f"{path}: a recipe config is a YAML mapping")
    if "base" in data:
        return "sweep"
    dpo, sft = set(data) & DPO_ONLY, set(data) & SFT_ONLY
    if dpo and sft:
        raise AssertionError(f"{path}: has DPO-only keys {sorted(dpo)} and SFT-only keys {sorted(sft)}")
    if not dpo and not sft:
        raise AssertionError(f"{path}: matches no recipe (no `base`, no DPO-only or SFT-only key)")
    return "dpo" if dpo else "sft"


def cpu_flags() -> list[str]:
    import torch

    return [] if torch.cuda.is_available() else ["--use_cpu", "true"]


def parse_recipe_config(recipe: str, path: Path) -> tuple:
    """The four argument objects of an SFT or DPO config, parsed as ``selfrec train|dpo`` parse it."""
    from selfrec_ft.scripts import dpo, sft
    from selfrec_ft.training.args import parse_args_and_config_strict

    script = {"sft": sft, "dpo": dpo}[recipe]
    return parse_args_and_config_strict(script.make_parser(), ["--config", str(path), *cpu_flags()])


def assert_every_key_arrives(path: Path, parsed: tuple) -> None:
    """Each top-level value of the YAML is the value of that field after the parse (comma strings and
    single values given for list fields become lists; ``report_to: none`` becomes ``[]``)."""
    for key, value in yaml.safe_load(path.read_text(encoding="utf-8")).items():
        owners = [obj for obj in parsed if hasattr(obj, key)]
        assert owners, f"{path}: {key} reached no argument group"
        got = getattr(owners[0], key)
        if isinstance(got, list) and isinstance(value, str):
            value = [] if value == "none" else split_list(value)
        assert got == value, f"{path}: {key} is {got!r} after the parse, {value!r} in the file"


def test_configs_are_found():
    names = {p.relative_to(REPO / "recipes").as_posix() for p in CONFIGS}
    assert {"demo/selfrec_sft.yaml", "demo/attribute_dpo.yaml", "demo/sweep.yaml",
            "llama2-7b-chat/xsum_lora.yaml", "llama2-7b-chat/dpo_lengthy_inject.yaml",
            "llama2-7b-chat/sweep.yaml"} <= names
    kinds = [recipe_of(p) for p in CONFIGS]
    assert {"sft", "dpo", "sweep"} <= set(kinds)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_shipped_config_parses_with_its_recipe(path, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # sweep configs name their base config relative to the repository root
    recipe = recipe_of(path)
    if recipe != "sweep":
        assert_every_key_arrives(path, parse_recipe_config(recipe, path))
        return
    from selfrec_ft.sweep.config import load_sweep_config
    from selfrec_ft.sweep.runs import write_run_config

    sweep = load_sweep_config(path, tmp_path / "sweep")
    assert sweep.runs and sweep.eval.in_domain and sweep.eval.out_of_domain
    assert recipe_of(sweep.base_path) == "sft"
    for spec in sweep.runs:  # every run's flat config is an SFT config the recipe accepts
        run_dir = tmp_path / "sweep" / "runs" / spec.run_id
        data_args, training_args, *_ = parse_recipe_config("sft", write_run_config(spec, run_dir, sweep))
        assert training_args.output_dir == str(run_dir.resolve())
        for key in ("labels", "flip_fraction", "n_articles"):
            if key in spec.knobs:
                assert getattr(data_args, key) == spec.knobs[key]


@pytest.mark.parametrize("text, word", [
    ("model_name_or_path: x\noutput_dir: y\n", "matches no recipe"),
    ("attribute: lengthy\nlabels: self\n", "DPO-only keys"),
    ("- a list\n", "mapping"),
])
def test_a_config_without_a_clear_recipe_fails(tmp_path, text, word):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(AssertionError, match=word):
        recipe_of(path)


def test_a_bad_key_in_a_config_is_caught_by_the_parse(tmp_path):
    from selfrec_ft.errors import UserError

    good = REPO / "recipes" / "demo" / "selfrec_sft.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text() + "learnin_rate: 0.1\n")
    assert recipe_of(bad) == "sft"
    with pytest.raises(UserError, match="learnin_rate"):
        parse_recipe_config("sft", bad)
