"""Start-up of the ``selfrec`` front door: how long a user waits before anything happens.

Every figure is the wall time of a fresh process (``subprocess``), the median of ``--repeat`` runs
(default 3), measured on this checkout (``PYTHONPATH`` is set to the repository root):

* ``help_s``: ``selfrec --help`` (every command registered, nothing run). Target <= 1.0 s.
* ``eval_help_s``: ``selfrec eval --help``.
* ``eval_start_scoring_s``: ``selfrec eval`` on a tiny model (built once, untimed, in a temp dir with
  ``selfrec make-tiny-model`` and ``selfrec synth-corpus``) from process start until its progress bar
  first renders on stderr. The bar opens right before the first forward pass, after the corpus is
  read, the prompts are rendered and the model is loaded: this is the time until scoring starts.
  Target <= 3 s (issue #16, item 5).
* ``eval_first_output_s``: until ``selfrec eval`` writes its first line (the prompt protocol it uses,
  ``prompts: preset ...``); ``eval_loading_line_s``: until the line saying what it loads
  (``loading MODEL ...``), printed before torch and transformers are imported. Target <= 3 s
  (issue #22, item 5).
* ``eval_config_written_s``: until ``OUT/eval_config.json`` exists (arguments checked, prompts
  rendered; written before the model is loaded).
* ``eval_first_row_s``: until the first scored row is in ``OUT/examples.jsonl``; ``eval_total_s``:
  until the process exits.

``*_cpu_s`` is the CPU time (user + system, every thread) the process used up to the same point: on a
loaded machine the wall times stretch while the CPU times barely move, so they show what an idle
machine would see (for a single-threaded start-up, wall ~= CPU there). ``eval_start_scoring_cpu_s``
is read from ``/proc`` when the bar appears (Linux only).

``selfrec`` is the console script next to this interpreter (``python -m selfrec_ft`` when there is
none; ``launcher`` says which). ``load_avg`` is the 1/5/15-minute load average at the start: on a
shared machine, compare figures only at similar load. With ``--imports`` every heavy package (torch,
transformers, scipy, scikit-learn, ...) that ``selfrec --help``, ``selfrec eval --help`` and the
timed ``selfrec eval`` import is listed with its cumulative import time and the selfrec_ft modules that imported it
(``python -X importtime``; the chain stops below the command module, which the CLI imports with
``importlib`` and ``-X importtime`` does not nest).

Usage: python benchmarks/bench_startup.py [--repeat N] [--json OUT] [--imports]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}


def selfrec_command() -> tuple[list[str], str]:
    script = Path(sys.executable).parent / "selfrec"
    if script.is_file():
        return [sys.executable, str(script)], "console script (PYTHONPATH: this checkout)"
    return [sys.executable, "-m", "selfrec_ft"], "python -m selfrec_ft"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(argv: list[str]) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of one run of ``argv``."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    out = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, cwd=REPO)
    seconds, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {out.stderr.decode()[-500:]}")
    return seconds, cpu


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a running process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def eval_command(model: Path, corpus: Path, out: Path) -> list[str]:
    """``eval`` and its arguments: 4 held-out articles, recognition and preference against one source."""
    return ["eval", "--model", str(model), "--corpus", str(corpus), "--self-source", "lead", "--others", "human",
            "--tasks", "pairwise-recognition,pairwise-preference", "--limit", "4", "--batch-size", "8",
            "--n-resamples", "200", "--out", str(out)]


def timed_eval(selfrec: list[str], model: Path, corpus: Path, out: Path) -> dict[str, float]:
    """Run ``selfrec eval`` once; the times (from process start) of its milestones."""
    if out.exists():
        shutil.rmtree(out)
    argv = [*selfrec, *eval_command(model, corpus, out)]
    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, cwd=REPO)
    err = bytearray()

    def read_stderr() -> None:
        while chunk := os.read(proc.stderr.fileno(), 4096):
            err.extend(chunk)
            if "eval_first_output_s" not in marks and b"\n" in err:
                marks["eval_first_output_s"] = time.perf_counter() - t0
            if "eval_loading_line_s" not in marks and b"loading " in err:
                marks["eval_loading_line_s"] = time.perf_counter() - t0
            if "eval_start_scoring_s" not in marks and b"%|" in err:  # tqdm's bar: "evaluating:   0%|"
                marks["eval_start_scoring_s"] = time.perf_counter() - t0
                cpu = process_cpu(proc.pid)
                if cpu is not None:
                    marks["eval_start_scoring_cpu_s"] = cpu

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    config, examples = out / "eval_config.json", out / "examples.jsonl"
    while proc.poll() is None:
        now = time.perf_counter() - t0
        if "eval_config_written_s" not in marks and config.exists():
            marks["eval_config_written_s"] = now
        if "eval_first_row_s" not in marks and examples.exists() and examples.stat().st_size > 0:
            marks["eval_first_row_s"] = now
        time.sleep(0.005)
    marks["eval_total_s"] = time.perf_counter() - t0
    reader.join(timeout=10)
    if proc.returncode != 0:
        raise SystemExit(f"selfrec eval failed: {err.decode(errors='replace')[-800:]}")
    return marks


HEAVY = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "numpy", "scipy", "sklearn",
         "matplotlib", "tqdm", "pandas")


def heavy_import_chains(selfrec: list[str], command: list[str]) -> list[dict]:
    """Each heavy package that ``selfrec <command>`` imports, its cumulative import time
    (``-X importtime``: nested imports included) and the chain of selfrec_ft modules that imported it."""
    out = subprocess.run([selfrec[0], "-X", "importtime", *selfrec[1:], *command], capture_output=True, text=True,
                         env=ENV, cwd=REPO)
    lines = [ln.split("|") for ln in out.stderr.splitlines() if ln.startswith("import time:")]
    rows, stack = [], []
    for _, cumulative, raw in reversed(lines[1:]):  # importtime prints children first: reversed, parents first
        name = raw[1:].rstrip()
        depth = (len(name) - len(name.lstrip())) // 2
        name = name.strip()
        stack[depth:] = [name]
        if name in HEAVY:
            chain = [m for m in reversed(stack[:depth]) if m.startswith("selfrec_ft")]
            rows.append({"package": name, "cumulative_s": round(int(cumulative) / 1e6, 3),
                         "imported_by": " <- ".join(chain) or None})
    return sorted(rows, key=lambda r: -r["cumulative_s"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median reported; default 3)")
    ap.add_argument("--json", help="also write the JSON here")
    ap.add_argument("--imports", action="store_true",
                    help="list the heavy imports of `selfrec --help`, `selfrec eval --help` and `selfrec eval`, "
                    "and who imports them")
    args = ap.parse_args()
    selfrec, launcher = selfrec_command()
    result: dict = {"launcher": launcher, "python": sys.version.split()[0], "cpus": os.cpu_count(),
                    "load_avg": [round(x, 2) for x in os.getloadavg()], "repeat": args.repeat}
    wall([*selfrec, "--help"])  # warm the file cache and the byte-code; not counted
    for key, command in (("help", ["--help"]), ("eval_help", ["eval", "--help"])):
        runs = [wall([*selfrec, *command]) for _ in range(args.repeat)]
        result[f"{key}_s"] = round(statistics.median(w for w, _ in runs), 3)
        result[f"{key}_cpu_s"] = round(statistics.median(c for _, c in runs), 3)
        result[f"{key}_runs_s"] = [round(w, 3) for w, _ in runs]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        tmp = Path(tmp)
        wall([*selfrec, "make-tiny-model", str(tmp / "model")])
        wall([*selfrec, "synth-corpus", str(tmp / "corpus"), "--n", "8"])
        runs = [timed_eval(selfrec, tmp / "model", tmp / "corpus", tmp / "out") for _ in range(args.repeat)]
        if args.imports:
            shutil.rmtree(tmp / "out")
            result["heavy_imports"] = {
                "selfrec --help": heavy_import_chains(selfrec, ["--help"]),
                "selfrec eval --help": heavy_import_chains(selfrec, ["eval", "--help"]),
                "selfrec eval (tiny model)": heavy_import_chains(
                    selfrec, eval_command(tmp / "model", tmp / "corpus", tmp / "out")),
            }
    for key in ("eval_first_output_s", "eval_loading_line_s", "eval_start_scoring_s", "eval_start_scoring_cpu_s",
                "eval_config_written_s", "eval_first_row_s", "eval_total_s"):
        values = [r[key] for r in runs if key in r]
        result[key] = round(statistics.median(values), 3) if values else None
        result[key.removesuffix("_s") + "_runs_s"] = [round(v, 3) for v in values]
    result["targets"] = {"help_s": 1.0, "eval_loading_line_s": 3.0, "eval_start_scoring_s": 3.0}
    result["meets_targets"] = {k: result[k] is not None and result[k] <= v for k, v in result["targets"].items()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
