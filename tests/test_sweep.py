"""Sweep runner and eval-checkpoints: grid expansion, skipping, failures, resume, SLURM, a real tiny sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selfrec_ft.errors import UserError
from selfrec_ft.sweep import runner
from selfrec_ft.sweep.config import load_sweep_config
from selfrec_ft.sweep.runner import run_sweep

REPO = Path(__file__).resolve().parents[1]


def write_yaml(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def base_config(tmp_path: Path, model="unused-model-dir", corpus="unused-corpus", **extra) -> Path:
    cfg = {"corpus": str(corpus), "self_source": "lead", "others": "human", "n_articles": 4, "labels": "self",
           "model_name_or_path": str(model), "use_peft": True, "lora_r": 4, "lora_alpha": 8,
           "lora_target_modules": "all-linear", "output_dir": "ignored", "use_cpu": True, "bf16": False, "activation_checkpointing": False,
           "max_length": 1024, "per_device_train_batch_size": 4, "learning_rate": 1e-2, "seed": 0,
           "report_to": "none", "disable_tqdm": True, "hook_in_domain": str(corpus), "hook_out_of_domain": "ood",
           **extra}
    return write_yaml(tmp_path / "base.yaml", cfg)


def sweep_yaml(tmp_path: Path, **sections) -> Path:
    cfg = {"base": {"config": str(base_config(tmp_path)), "overrides": {"max_steps": 2}},
           "output_dir": str(tmp_path / "sweep"), **sections}
    return write_yaml(tmp_path / "sweep.yaml", cfg)


# ----------------------------------------------------------------------------- config and run ids


def test_grid_product_and_run_list_give_stable_unique_ids(tmp_path):
    cfg = sweep_yaml(tmp_path, grid={"flip_fraction": [0, 0.5], "seed": [0, 1]},
                     runs=[{"labels": "length"}, {"labels": "always_1", "max_steps": 3, "lora_r": 2}])
    sweep = load_sweep_config(cfg)
    ids = [r.run_id for r in sweep.runs]
    assert ids == ["flip0_self_n4_s0", "flip0_self_n4_s1", "flip0.5_self_n4_s0", "flip0.5_self_n4_s1",
                   "length_n4_s0", "always_1_n4_s0_r2_steps3"]
    assert len(set(ids)) == len(ids)
    by_id = {r.run_id: r for r in sweep.runs}
    c = by_id["flip0.5_self_n4_s1"].config
    assert (c["flip_fraction"], c["seed"], c["label_seed"], c["max_steps"]) == (0.5, 1, 1, 2)
    assert c["hook_in_domain"] is None and c["hook_out_of_domain"] is None  # eval.hook defaults to off
    assert by_id["always_1_n4_s0_r2_steps3"].config["max_steps"] == 3
    assert by_id["length_n4_s0"].params == {"labels": "length", "n_articles": 4, "seed": 0}
    assert by_id["flip0_self_n4_s0"].params["flip_fraction"] == 0

    # the same points in another order (and as a list of products) get the same ids
    cfg2 = sweep_yaml(tmp_path, grid=[{"seed": [1, 0], "flip_fraction": [0.5]}, {"flip_fraction": [0], "seed": [1, 0]}],
                      runs=[{"lora_r": 2, "max_steps": 3, "labels": "always_1"}, {"labels": "length"}])
    assert sorted(r.run_id for r in load_sweep_config(cfg2).runs) == sorted(ids)


def test_duplicate_points_and_flip_without_self_labels_are_refused(tmp_path):
    cfg = sweep_yaml(tmp_path, grid={"flip_fraction": [0.5]}, runs=[{"flip_fraction": 0.5}])
    with pytest.raises(UserError, match="flip0.5_self_n4_s0"):
        load_sweep_config(cfg)
    ok = sweep_yaml(tmp_path, grid={"flip_fraction": [0.5]}, runs=[{"flip_fraction": 0.5, "run_id": "again"}])
    assert [r.run_id for r in load_sweep_config(ok).runs] == ["flip0.5_self_n4_s0", "again"]
    bad = sweep_yaml(tmp_path, grid={"labels": ["self", "length"], "flip_fraction": [0.5]})
    with pytest.raises(UserError, match="needs labels: self"):
        load_sweep_config(bad)


@pytest.mark.parametrize("text, line, word", [
    ("base: BASE\noutput_dir: x\nrunz: []\n", 3, '"runz"'),
    ("base: BASE\noutput_dir: x\nruns:\n  - labels: self\neval:\n  limt: 3\n", 6, '"limt"'),
    ("base: BASE\noutput_dir: x\ngrid:\n  flip_fraction: [0]\n  learnin_rate: [0.1]\n", 5, '"learnin_rate"'),
    ("base: BASE\noutput_dir: x\nruns:\n  - labels: selfish\n", 4, "labels must be one of"),
    ("base: BASE\noutput_dir: x\nruns:\n  - output_dir: y\n", 4, "set by the sweep"),
    ("base: BASE\noutput_dir: x\nruns: [{labels: self}]\nlauncher: run {cfg}\n", 4, "unknown placeholder"),
])
def test_bad_sweep_config_is_one_line_with_file_and_line(tmp_path, text, line, word):
    base = base_config(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("BASE", str(base)))
    with pytest.raises(UserError) as err:
        load_sweep_config(path)
    assert err.value.file == str(path) and err.value.line == line and word in err.value.message


def test_unknown_key_in_base_sft_config_and_recipe_exit_status(tmp_path, capsys):
    base = base_config(tmp_path, learnin_rate=0.1)
    cfg = write_yaml(tmp_path / "s.yaml", {"base": str(base), "output_dir": str(tmp_path / "o"),
                                           "runs": [{"labels": "self"}]})
    with pytest.raises(UserError) as err:
        load_sweep_config(cfg)
    assert err.value.file == str(base) and "learnin_rate" in err.value.message
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        import sweep_recognition
    finally:
        sys.path.pop(0)
    assert sweep_recognition.main(["--config", str(cfg)]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith(f"error: {base}:") and "learnin_rate" in err_lines[0]


# ----------------------------------------------------------------------------- skipping, failures, resume

FAKE_LAUNCHER = """
import json, sys, pathlib
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
out = pathlib.Path(args["--output_dir"])
with open(sys.argv[0] + ".calls", "a") as fh:
    fh.write(out.name + "\\n")
if "length" in out.name:
    print("pretend training blew up")
    raise SystemExit(3)
out.mkdir(parents=True, exist_ok=True)
(out / "adapter_config.json").write_text("{}")
(out / "adapter_model.safetensors").write_text("")
(out / "training_manifest.json").write_text(json.dumps({"status": "done", "global_step": 2}))
"""


def test_command_launcher_skips_finished_runs_and_records_failures(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_LAUNCHER)
    cfg = sweep_yaml(tmp_path, grid={"flip_fraction": [0, 1]}, runs=[{"labels": "length"}],
                     launcher=f"python {script} --config {{config}} --output_dir {{output_dir}}")
    calls = Path(str(script) + ".calls")

    first = run_sweep(cfg, evaluate=False, progress=False)
    runs = {r["run_id"]: r for r in json.loads((tmp_path / "sweep" / "runs.json").read_text())["runs"]}
    assert set(first.trained) == {"flip0_self_n4_s0", "flip1_self_n4_s0"} and first.failed == ["length_n4_s0"]
    assert runs["length_n4_s0"]["status"] == "failed"
    assert "status 3" in runs["length_n4_s0"]["error"] and "pretend training blew up" in runs["length_n4_s0"]["error"]
    assert runs["flip1_self_n4_s0"]["status"] == "done" and runs["flip1_self_n4_s0"]["global_step"] == 2
    assert (tmp_path / "sweep" / "runs" / "flip1_self_n4_s0" / "done").is_file()
    launched_cfg = yaml.safe_load((tmp_path / "sweep" / "runs" / "flip1_self_n4_s0" / "sweep_config.yaml").read_text())
    assert launched_cfg["flip_fraction"] == 1 and launched_cfg["output_dir"].endswith("runs/flip1_self_n4_s0")

    second = run_sweep(cfg, evaluate=False, progress=False)  # finished runs skipped, the failed one retried
    assert sorted(second.skipped) == ["flip0_self_n4_s0", "flip1_self_n4_s0"] and second.trained == []
    assert calls.read_text().split() == ["flip0_self_n4_s0", "flip1_self_n4_s0", "length_n4_s0", "length_n4_s0"]

    failing = sweep_yaml(tmp_path, runs=[{"labels": "self"}], launcher="python -c 'raise SystemExit(3)' {config}")
    result = run_sweep(failing, tmp_path / "sweep2", evaluate=False, progress=False)
    assert result.failed == ["self_n4_s0"] and "status 3" in result.runs[0]["error"]


def test_killed_sweep_resumes_with_only_the_unfinished_runs(tmp_path, monkeypatch):
    calls = []

    def fake_train(config_path, output_dir, kill_at=None):
        calls.append(Path(output_dir).name)
        if kill_at is not None and len(calls) == kill_at:
            raise KeyboardInterrupt
        return {"global_step": 2}

    cfg = sweep_yaml(tmp_path, grid={"flip_fraction": [0, 0.5, 1]})
    monkeypatch.setattr(runner, "train_inprocess", lambda c, o: fake_train(c, o, kill_at=3))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, evaluate=False, progress=False)
    status = {r["run_id"]: r["status"] for r in json.loads((tmp_path / "sweep" / "runs.json").read_text())["runs"]}
    assert status == {"flip0_self_n4_s0": "done", "flip0.5_self_n4_s0": "done", "flip1_self_n4_s0": "interrupted"}

    calls.clear()
    monkeypatch.setattr(runner, "train_inprocess", fake_train)
    resumed = run_sweep(cfg, evaluate=False, progress=False)
    assert calls == ["flip1_self_n4_s0"] and resumed.trained == ["flip1_self_n4_s0"]

    calls.clear()
    fresh = run_sweep(cfg, tmp_path / "uninterrupted", evaluate=False, progress=False)
    assert len(calls) == 3
    assert [(r["run_id"], r["status"], r["params"]) for r in resumed.runs] == \
        [(r["run_id"], r["status"], r["params"]) for r in fresh.runs]

    # a finished run whose config changed is refused rather than silently kept
    changed = sweep_yaml(tmp_path, grid={"flip_fraction": [0, 0.5, 1]}, eval={"hook": True})
    with pytest.raises(UserError, match="config changed"):
        run_sweep(changed, evaluate=False, progress=False)


def test_slurm_array_script(tmp_path):
    cfg = sweep_yaml(tmp_path, grid={"flip_fraction": [0, 1]}, runs=[{"labels": "always_1"}],
                     slurm={"partition": "gpu", "gpus": 1, "time": "02:00:00", "max_parallel": 2,
                            "setup": ["export SELFREC_SWEEP_TEST=1"], "sbatch": ["--exclusive"],
                            "command": "echo {run_id} {config} {output_dir}"})
    result = run_sweep(cfg, prepare_only=True, progress=False)
    script = result.slurm_script.read_text()
    sweep_dir = (tmp_path / "sweep").resolve()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:1",
                 "#SBATCH --time=02:00:00", "#SBATCH --exclusive", "export SELFREC_SWEEP_TEST=1",
                 f"cd {Path.cwd().resolve()}"):
        assert line in script.splitlines()
    assert os.access(result.slurm_script, os.X_OK)
    assert not (sweep_dir / "runs" / "flip0_self_n4_s0" / "done").exists()  # nothing was trained
    # run one array task (index 2) as SLURM would: the command gets that run's config and directory
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2"}
    out = subprocess.run(["bash", str(result.slurm_script)], env=env, capture_output=True, text=True, cwd=tmp_path)
    rid = "always_1_n4_s0"
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [rid, f"{sweep_dir}/runs/{rid}/sweep_config.yaml", f"{sweep_dir}/runs/{rid}"]
    assert yaml.safe_load((sweep_dir / "runs" / rid / "sweep_config.yaml").read_text())["labels"] == "always_1"
    # the task's training finished (manifest done, adapter saved): a resubmitted task exits without running,
    # and the sweep, rerun without training, takes the run as done
    run_dir = sweep_dir / "runs" / rid
    (run_dir / "adapter_config.json").write_text("{}")
    (run_dir / "adapter_model.safetensors").write_text("")
    (run_dir / "training_manifest.json").write_text(json.dumps({"status": "done", "global_step": 5}, indent=2))
    out = subprocess.run(["bash", str(result.slurm_script)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "is finished" in out.stdout
    after = run_sweep(cfg, train=False, evaluate=False, progress=False)
    assert {r["run_id"]: r["status"] for r in after.runs} == {
        "flip0_self_n4_s0": "pending", "flip1_self_n4_s0": "pending", rid: "done"}
    assert after.runs[2]["global_step"] == 5 and (run_dir / "done").is_file()
    # the default command is the SFT recipe
    default = sweep_yaml(tmp_path, runs=[{"labels": "self"}], slurm={})
    text = run_sweep(default, tmp_path / "s3", prepare_only=True, progress=False).slurm_script.read_text()
    assert 'recipes/selfrec_sft.py --config "$CONFIG" --output_dir "$RUN_DIR"' in text


# ----------------------------------------------------------------------------- a real tiny sweep


def _pair_means(path: Path) -> dict[str, float]:
    """Mean pairwise score per task straight from examples.jsonl: per pair
    ½[p̂_fwd(self_option) + p̂_bwd(self_option)], p̂ normalised over "1"/"2"."""
    per_pair: dict[tuple, list[float]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if not r["task"].startswith("pairwise-"):
            continue
        p = r["probs"]
        per_pair.setdefault((r["task"], r["article_id"], r["other_source"]), []).append(
            p[r["self_option"]] / (p["1"] + p["2"]))
    out: dict[str, list[float]] = {}
    for (task, _, _), vals in per_pair.items():
        assert len(vals) == 2
        out.setdefault(task.removeprefix("pairwise-"), []).append(sum(vals) / 2)
    return {k: sum(v) / len(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, tiny_model_dir, short_corpus_dir):
    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus

    tmp = tmp_path_factory.mktemp("real-sweep")
    ood = write_corpus(synth_corpus("highlights", 6, seed=5), tmp / "highlights")
    base = base_config(tmp, model=tiny_model_dir, corpus=short_corpus_dir, save_strategy="steps", save_steps=1,
                       logging_steps=1)
    cfg = write_yaml(tmp / "sweep.yaml", {
        "base": {"config": str(base), "overrides": {"max_steps": 2}}, "output_dir": str(tmp / "sweep"),
        "runs": [{"flip_fraction": 0}, {"labels": "always_1"}],
        "eval": {"in_domain": str(short_corpus_dir), "out_of_domain": str(ood), "limit": 3, "checkpoints": True,
                 "batch_size": 16, "n_resamples": 200}})
    return cfg, tmp / "sweep", run_sweep(cfg, progress=False)


def test_real_sweep_trains_evaluates_and_analyses(real_sweep, monkeypatch):
    from accelerate.state import AcceleratorState, PartialState

    cfg, sweep_dir, result = real_sweep
    assert result.failed == [] and sorted(result.trained) == ["always_1_n4_s0", "flip0_self_n4_s0"]
    assert not AcceleratorState._shared_state and PartialState._shared_state  # no accelerator state left over
    runs = json.loads((sweep_dir / "runs.json").read_text())["runs"]
    by_id = {r["run_id"]: r for r in runs}
    assert list(by_id) == ["baseline", "flip0_self_n4_s0", "always_1_n4_s0"]
    base = by_id["baseline"]
    assert base["params"] == {"labels": "baseline", "n_articles": 4} and base["status"] == "done"
    for r in runs:
        assert set(r["eval"]) == {"in_domain", "out_of_domain"}
        for p in r["eval"].values():
            assert not Path(p).is_absolute() and (sweep_dir / p).is_file() and p.endswith("examples.jsonl")
    for rid in ("flip0_self_n4_s0", "always_1_n4_s0"):
        run = by_id[rid]
        assert run["status"] == "done" and run["global_step"] == 2
        assert [c["step"] for c in run["checkpoints"]] == [0, 1, 2]
        assert run["checkpoints"][0]["eval"] == base["eval"]  # step 0 is the untrained model
        assert run["checkpoints"][2]["eval"] == run["eval"]  # checkpoint-2 holds the final weights
        assert run["checkpoints"][1]["eval"]["in_domain"] != run["eval"]["in_domain"]
        rows = [json.loads(x) for x in (sweep_dir / run["eval"]["in_domain"]).read_text().splitlines()]
        heldout = {r["article_id"] for r in rows}
        manifest = json.loads((sweep_dir / "runs" / rid / "training_manifest.json").read_text())
        assert len(heldout) == 3 and not heldout & set(manifest["train_article_ids"])

    table = json.loads((sweep_dir / "eval_checkpoints.json").read_text())
    assert len(table) == 2 + 2 * 3 * 2  # base + (checkpoint-1, checkpoint-2, final) per run, both domains
    for row in table:
        expect = _pair_means(Path(row["examples"]))
        for task in ("recognition", "preference"):
            assert row[task]["mean"] == pytest.approx(expect[task], abs=1e-9)
            assert row[task]["n"] == 3
    analysis = json.loads((sweep_dir / "analysis.json").read_text())
    assert analysis["correlation"]["in_domain"]["n_runs"] == 3
    assert {r["run_id"]: r["label_strategy"] for r in analysis["runs"]} == {
        "baseline": "baseline", "flip0_self_n4_s0": "self", "always_1_n4_s0": "always_1"}
    assert (sweep_dir / "report.md").is_file()

    # rerun: nothing trained, nothing scored again
    mtimes = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("examples.jsonl")}
    monkeypatch.setattr(runner, "train_inprocess", lambda *a: pytest.fail("a finished run was trained again"))
    again = run_sweep(cfg, progress=False)
    assert again.trained == [] and sorted(again.skipped) == ["always_1_n4_s0", "flip0_self_n4_s0"]
    assert all(row["cached"] for row in json.loads((sweep_dir / "eval_checkpoints.json").read_text())
               if "same_as" not in row)
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("examples.jsonl")} == mtimes
    assert [r["run_id"] for r in again.runs] == list(by_id)


def test_eval_checkpoints_cli_reads_back_finished_evaluations(real_sweep, tmp_path, capsys):
    from selfrec_ft.cli import main

    cfg, sweep_dir, _ = real_sweep
    sweep = load_sweep_config(cfg)
    run_dir = sweep_dir / "runs" / "flip0_self_n4_s0"
    rc = main(["eval-checkpoints", str(run_dir), "--out-of-domain", sweep.eval.out_of_domain, "--limit", "3",
               "--no-base", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "eval_checkpoints.json").read_text())
    assert [(r["checkpoint"], r["domain"]) for r in rows] == [
        (c, d) for c in ("checkpoint-1", "checkpoint-2", "final") for d in ("in_domain", "out_of_domain")]
    assert all(r["cached"] for r in rows if "same_as" not in r)
    assert "| flip0_self_n4_s0 | final | 2 | in-domain |" in (tmp_path / "eval_checkpoints.md").read_text()
    capsys.readouterr()
    # the training corpus as out-of-domain would score trained articles: refused in one line
    rc = main(["eval-checkpoints", str(run_dir), "--out-of-domain", sweep.eval.in_domain, "--no-progress",
               "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "trained on" in err[0]
