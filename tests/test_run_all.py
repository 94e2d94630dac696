"""recipes/smollm2-135m-instruct/run_all.sh: its stages by name, checked without running a model."""

import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "recipes" / "smollm2-135m-instruct" / "run_all.sh"


def test_unknown_stage_is_one_error_line_and_exit_2(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "bogus"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown stage 'bogus': use core, all, controls, checks, sweep, steering, dpo or control-cnn"]


def test_every_stage_runs_alone():
    """A stage run alone (`run_all.sh controls`) sees only what the script defines at top level: every
    variable a stage function uses outside core() must be set before the functions (the controls
    stage once died on `FT: unbound variable` after an hour of training)."""
    text = SCRIPT.read_text()
    top = text[:text.index("core() {")]
    defined = set(re.findall(r"(?:^|;\s*)([A-Z_]+)=", top, re.M))
    for name, body in re.findall(r"^([a-z_]+)\(\) \{\n(.*?)^\}", text, re.M | re.S):
        local = set(re.findall(r"^\s*([A-Z_]+)=", body, re.M))
        used = set(re.findall(r"\$\{?([A-Z_]+)", body)) - local - {"STAGE"}
        if name != "core":
            assert used <= defined, f"{name}() uses {sorted(used - defined)} defined only inside another stage"
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
