"""The ``selfrec`` front door: registering the commands imports nothing heavy; ``selfrec train|dpo|sweep``,
the recipes and ``python -m selfrec_ft`` reach the same entry points with the same argv; a bad
config is one ``error:`` line and exit status 2 on every path. (Speed is measured by
benchmarks/bench_startup.py, not asserted here.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfrec_ft.cli import COMMAND_MODULES, main

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "numpy", "scipy", "sklearn",
         "matplotlib", "tqdm")

def heavy_imports_of(code: str) -> list[str]:
    """The heavy top-level packages a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    return sorted(loaded & set(HEAVY))


def test_the_probe_sees_a_heavy_import():
    assert heavy_imports_of("import tqdm") == ["tqdm"]


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_registering_a_command_imports_nothing_heavy(module):
    code = ("import argparse, importlib\n"
            f"importlib.import_module('selfrec_ft.cli.{module}').register("
            "argparse.ArgumentParser().add_subparsers())")
    assert heavy_imports_of(code) == []


def test_building_the_full_parser_imports_nothing_heavy():
    assert heavy_imports_of("from selfrec_ft.cli import build_parser\nbuild_parser()") == []


def test_scoring_does_not_wait_for_scikit_learn():
    """selfrec eval imports the scoring path before it scores; scikit-learn (and the pandas it pulls
    in, ~1.4 s) is needed only for the report's AUROC, after scoring."""
    loaded = heavy_imports_of("import selfrec_ft.scoring.evaluate, selfrec_ft.scoring.scorer, selfrec_ft.scoring.report")
    assert "torch" in loaded and "sklearn" not in loaded


# ----------------------------------------------------------------------------- one door, three names


@pytest.mark.parametrize("command, module", [("train", "sft"), ("dpo", "dpo")])
def test_train_and_dpo_hand_their_argv_to_the_recipe_unchanged(command, module, monkeypatch):
    import importlib

    script = importlib.import_module(f"selfrec_ft.scripts.{module}")
    seen = []
    monkeypatch.setattr(script, "train", lambda argv, prog: seen.append((argv, prog)) or 7)
    argv = ["--config=x.yaml", "--max_steps", "4", "-h", "--output_dir", "/tmp/o"]
    assert main([command, *argv]) == 7
    assert seen == [(argv, f"selfrec {command}")]


@pytest.mark.parametrize("command, field", [("train", "--n_articles"), ("dpo", "--attribute"),
                                            ("sweep", "--prepare_only")])
def test_help_of_train_dpo_sweep_is_the_recipe_help(command, field, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: selfrec {command} ") and field in out
    if command == "train":  # the whole TrlParser: every SFTConfig and ModelConfig field too
        assert "--per_device_train_batch_size" in out and "--lora_r" in out and "--hook_in_domain" in out


def test_python_dash_m_selfrec_ft_train_help():
    out = subprocess.run([sys.executable, "-m", "selfrec_ft", "train", "--help"], capture_output=True, text=True,
                         timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: selfrec train ") and "--share_prefix" in out.stdout


# ----------------------------------------------------------------------------- bad input


def bad_sft_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("corpus: demo://in_domain\nlearnin_rate: 0.1\n")
    return path


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    (["train", "--config", "BAD"], ["bad.yaml:2:", "learnin_rate"]),
    (["dpo", "--config", "BAD"], ["bad.yaml:2:", "learnin_rate"]),
    (["sweep", "--config", "BAD"], ["bad.yaml:1:", '"corpus"']),
    (["train", "--config", "MISSING"], ["missing.yaml", "not found"]),
])
def test_bad_config_through_selfrec_is_one_error_line(argv, words, tmp_path, capsys):
    argv = [str(bad_sft_config(tmp_path)) if a == "BAD" else str(tmp_path / "missing.yaml") if a == "MISSING" else a
            for a in argv]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert all(w in line for w in words), line


def test_unknown_flag_is_one_error_line(capsys):
    assert main(["train", "--config", str(REPO / "recipes" / "demo" / "selfrec_sft.yaml"), "--max_stepz", "3"]) == 2
    assert "--max_stepz" in one_error_line(capsys.readouterr().err)


def test_bad_config_through_the_recipe_script_is_one_error_line(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "recipes" / "selfrec_sft.py"), "--config",
                          str(bad_sft_config(tmp_path))], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2
    assert "learnin_rate" in one_error_line(out.stderr)


# ----------------------------------------------------------------------------- the demo config


def test_without_config_the_demo_config_of_the_repository_is_used():
    from selfrec_ft.scripts.configs import default_config

    demo = REPO / "recipes" / "demo" / "selfrec_sft.yaml"
    assert default_config([], "selfrec_sft.yaml") == demo
    assert default_config(["--output_dir", "x", "--max_steps", "4"], "selfrec_sft.yaml") == demo
    assert default_config(["--config", "c.yaml"], "selfrec_sft.yaml") is None
    assert default_config(["--config=c.yaml"], "selfrec_sft.yaml") is None
    assert default_config(["--help"], "selfrec_sft.yaml") is None


def test_the_demo_config_is_found_from_any_working_directory(tmp_path):
    code = "from selfrec_ft.scripts.configs import demo_config; print(demo_config('attribute_dpo.yaml'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == REPO / "recipes" / "demo" / "attribute_dpo.yaml"


def test_a_missing_demo_config_is_one_error_line(tmp_path, monkeypatch, capsys):
    from selfrec_ft.scripts import configs

    monkeypatch.setattr(configs, "DEMO_DIR", tmp_path / "nowhere")
    assert main(["train", "--output_dir", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "recipes/demo/selfrec_sft.yaml" in line and "--config" in line
    assert main(["sweep"]) == 2
    assert "recipes/demo/sweep.yaml" in one_error_line(capsys.readouterr().err)


def test_the_demo_sweep_finds_its_base_config_from_any_working_directory(tmp_path, monkeypatch):
    from selfrec_ft.scripts.configs import demo_config
    from selfrec_ft.sweep.config import load_sweep_config

    monkeypatch.chdir(tmp_path)
    sweep = load_sweep_config(demo_config("sweep.yaml"), tmp_path / "sweep")
    assert sweep.base_path.resolve() == REPO / "recipes" / "demo" / "selfrec_sft.yaml" and sweep.runs
