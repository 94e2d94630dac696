"""The GPU check's CPU-sized dry run: every part runs end to end and its figures are consistent."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=540, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu_check: ok")
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["dry_run"] and result["targets_met"] is None
    parts = result["parts"]
    assert sorted(parts) == ["a", "b", "c"] and not any("error" in p for p in parts.values())

    # (a) the main job ran end to end with LoRA and QLoRA and wrote its report
    for mode in ("lora", "qlora"):
        run = parts["a"][mode]
        assert run["exit"] == 0 and run["report_written"] and run["status"] == "done" and run["mode"] == mode
        report = json.loads((Path(run["output_dir"]) / "report.json").read_text())
        assert report["final"]["step"] == run["global_step"] >= 1

    # (b) scoring: the engine gives the P1 loop's numbers (float32 on the CPU) on probabilities far from 0
    b = parts["b"]
    assert b["prompts"] >= 8 and b["top_prob_mean"] > 0.05
    assert b["max_abs_diff"] <= 1e-4 and b["max_abs_diff_batched"] <= 1e-4 and b["max_abs_logprob_diff"] <= 1e-3
    assert b["token_ratio"] > 1.2 and set(b["seconds"]) == {"p1_loop", "batched", "engine"}

    # (c) SFT steps: a shared row holds an article's 8 examples in fewer tokens than 8 rows
    c = parts["c"]
    for mode in ("lora", "qlora"):
        shared, unshared = c[f"{mode}_shared"], c[f"{mode}_unshared"]
        assert shared["attention_path"] == "packed" and unshared["attention_path"] == "model"
        assert shared["examples_per_step"] == unshared["examples_per_step"] == 8
        assert shared["tokens_per_step"] < 0.8 * unshared["tokens_per_step"]
        assert all(x["step_s"] > 0 and x["tokens_per_s"] > 0 for x in (shared, unshared))
        assert c[f"{mode}_shared_vs_unshared"] == pytest.approx(shared["examples_per_s"] / unshared["examples_per_s"],
                                                                rel=0.02)
