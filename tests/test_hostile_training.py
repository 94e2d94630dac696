"""Hostile-but-realistic input, part B of issue 15: the recipes (train, dpo, sweep), model
directories, outputs of eval / dissect / SFT / DPO, a resumed run's report, and the fuzz table
(benchmarks/fuzz_hostile.py). Every case through the real entry point, with the exit status and the
one ``error:`` line asserted (never a traceback). Inputs are built here."""

from __future__ import annotations

import errno
import importlib.util
import os
import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from selfrec_ft.cli import main
from selfrec_ft.data.corpus import write_corpus
from selfrec_ft.data.synth import synth_corpus

REPO = Path(__file__).resolve().parents[1]
FUZZ = REPO / "benchmarks" / "fuzz_hostile.py"
TOKENIZER_FILES = "tokenizer.json, tokenizer.model, spiece.model, vocab.json, vocab.txt"


def cli(capsys, *argv):
    """``selfrec ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def train_flags(model, corpus, out) -> list:
    return ["--model_name_or_path", model, "--corpus", corpus, "--self_source", "lead", "--others", "human",
            "--n_articles", "2", "--output_dir", out, "--max_steps", "1", "--hook_in_domain", "",
            "--hook_out_of_domain", ""]


def dpo_flags(model, corpus, out) -> list:
    return ["--model_name_or_path", model, "--corpus", corpus, "--others", "human", "--n_articles", "2",
            "--use_peft", "true", "--output_dir", out, "--max_steps", "1", "--out_of_domain", "",
            "--hook_in_domain", "", "--hook_out_of_domain", "", "--num_candidates", "2", "--eval_limit", "2"]


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(synth_corpus("short", 8, seed=1), tmp_path / "c")


# ----------------------------------------------------------------------------- 6. training values


@pytest.mark.parametrize("recipe", ["train", "dpo"])
@pytest.mark.parametrize("flag, value, message", [
    ("max_steps", "0", "must be at least 1 (or -1: train for num_train_epochs), got 0"),
    ("max_steps", "-3", "must be at least 1 (or -1: train for num_train_epochs), got -3"),
    ("per_device_train_batch_size", "0", "must be at least 1, got 0"),
])
def test_training_lengths_and_batch_sizes_training_would_misuse(tmp_path, capsys, recipe, flag, value, message):
    """-3 trained the whole demo and 0 saved a "finished" model after one step: now one line, before
    anything is built or written (the demo config supplies everything else)."""
    out = tmp_path / "out"
    rc, _, err = cli(capsys, recipe, "--output_dir", out, f"--{flag}", value)
    assert rc == 2 and one_error(err) == f"error: --{flag} {message}"
    assert not out.exists()


@pytest.mark.parametrize("recipe, text, message", [
    ("train", "max_steps: 0\n", "max_steps must be at least 1 (or -1: train for num_train_epochs), got 0"),
    ("train", "per_device_train_batch_size: eight\n", "per_device_train_batch_size must be an integer, got 'eight'"),
    ("train", "learning_rate: [1, 2]\n", "learning_rate must be a number, not a list"),
    ("train", "use_peft: maybe\n", "use_peft must be true or false, got 'maybe'"),
    ("train", "flip_fraction: 1.5\n", "flip_fraction must be between 0 and 1, got 1.5"),
    ("dpo", "num_candidates: many\n", "num_candidates must be an integer, got 'many'"),
    ("dpo", "num_candidates: 1\n", "num_candidates must be at least 2, got 1"),
    ("dpo", "max_steps: -3\n", "max_steps must be at least 1 (or -1: train for num_train_epochs), got -3"),
])
def test_wrong_values_in_a_recipe_yaml_name_the_file_and_line(tmp_path, capsys, recipe, text, message):
    config = tmp_path / "recipe.yaml"
    config.write_text(f"use_cpu: true\nbf16: false\noutput_dir: {tmp_path / 'out'}\n{text}")
    rc, _, err = cli(capsys, recipe, "--config", config)
    assert rc == 2 and one_error(err) == f"error: {config}:4: {message}"


# ----------------------------------------------------------------------------- 8, 12. model directories


def _model_variant(tiny_model_dir, root: Path, name: str) -> Path:
    d = root / name
    if name == "missing":
        return d
    if name == "empty":
        d.mkdir()
        return d
    if name == "a-file":
        d.write_text("x")
        return d
    shutil.copytree(tiny_model_dir, d)
    if name == "no-tokenizer":
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (d / f).unlink()
    elif name == "bad-config":
        (d / "config.json").write_text('{"model_type": "llama",\n')
    elif name == "only-bin":
        (d / "model.safetensors").rename(d / "pytorch_model.bin")
    return d


MODEL_PROBLEMS = {
    "missing": "model path not found",
    "empty": "the model directory is empty (expected config.json, model.safetensors and the tokenizer)",
    "a-file": "not a model directory (a file; expected a directory with config.json, model.safetensors and the "
              "tokenizer)",
    "no-tokenizer": f"no tokenizer files in the model directory (expected one of {TOKENIZER_FILES}; save them there "
                    "with tokenizer.save_pretrained)",
    "only-bin": "the model has only pytorch_model.bin: convert it to safetensors once (pickle weights are not "
                "loaded: they can run code): python -c \"from transformers import AutoModelForCausalLM as M; "
                "M.from_pretrained('{d}', use_safetensors=False).save_pretrained('{d}')\"",
}


@pytest.mark.parametrize("command", ["eval", "train", "dpo"])
@pytest.mark.parametrize("problem", [*MODEL_PROBLEMS, "bad-config"])
def test_model_directories_say_what_is_missing(tmp_path, tiny_model_dir, corpus, capsys, command, problem):
    d = _model_variant(tiny_model_dir, tmp_path, problem)
    out = tmp_path / "out"
    argv = {"eval": ["eval", "--model", d, "--corpus", corpus, "--self-source", "lead", "--out", out],
            "train": ["train", *train_flags(d, corpus, out)],
            "dpo": ["dpo", *dpo_flags(d, corpus, out)]}[command]
    rc, _, err = cli(capsys, *argv)
    line = one_error(err)
    if problem == "bad-config":
        expected = f"error: {d / 'config.json'}:2: model config is not valid JSON (Expecting property name enclosed " \
                   "in double quotes)"
    else:
        expected = f"error: {d}: " + MODEL_PROBLEMS[problem].format(d=d)
    assert rc == 2 and line == expected
    assert not out.exists()  # nothing left behind


@pytest.mark.parametrize("command", ["eval", "train"])
def test_a_mistyped_relative_model_path_is_one_line(tmp_path, corpus, capsys, monkeypatch, command):
    """``runs/modle`` looks like a hub id (owner/name): offline (as here) or unknown, it is one line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = {"eval": ["eval", "--model", "runs/modle", "--corpus", corpus, "--self-source", "lead", "--out", "e"],
            "train": ["train", *train_flags("runs/modle", corpus, tmp_path / "t")]}[command]
    rc, _, err = cli(capsys, *argv)
    assert rc == 2
    assert one_error(err).startswith("error: runs/modle: no such local directory, and the hub cannot provide it "
                                     "as a model id (")


def test_converting_a_pytorch_bin_model_as_the_error_says_makes_it_load(tmp_path, tiny_model_dir, corpus, capsys):
    """The conversion the error prints works (run here as its Python, with pickle allowed)."""
    import torch
    from transformers import AutoModelForCausalLM

    d = _model_variant(tiny_model_dir, tmp_path, "only-bin")
    state = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    torch.save(state, d / "pytorch_model.bin")  # a real pickle checkpoint
    rc, _, err = cli(capsys, "eval", "--model", d, "--corpus", corpus, "--self-source", "lead", "--out",
                     tmp_path / "e", "--limit", "1")
    command = re.search(r'python -c "(.*)"$', one_error(err)).group(1)
    exec(command, {})  # noqa: S102  (the printed command, verbatim)
    assert (d / "model.safetensors").is_file()
    rc, _, err = cli(capsys, "eval", "--model", d, "--corpus", corpus, "--self-source", "lead", "--out",
                     tmp_path / "e", "--limit", "1", "--no-progress")
    assert rc == 0, err


def test_a_pickle_adapter_is_refused_with_how_to_convert(tmp_path, tiny_model_dir, corpus, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x02")
    rc, _, err = cli(capsys, "eval", "--model", adapter, "--corpus", corpus, "--self-source", "lead", "--out",
                     tmp_path / "e")
    assert rc == 2 and one_error(err).startswith(f"error: {adapter}: the adapter has only adapter_model.bin")


# ----------------------------------------------------------------------------- 11. outputs


def _output_argv(command: str, tmp_path: Path, model, corpus, out) -> list:
    cmp_file = tmp_path / "cmp.jsonl"
    cmp_file.write_text(json.dumps({"features": {"lengthy": 1}, "preferred": 1}) + "\n")
    return {"eval": ["eval", "--model", model, "--corpus", corpus, "--self-source", "lead", "--out", out],
            "dissect": ["dissect", "--comparisons", cmp_file, "--method", "map", "--out", out],
            "train": ["train", *train_flags(model, corpus, out)],
            "dpo": ["dpo", *dpo_flags(model, corpus, out)]}[command]


@pytest.mark.parametrize("command", ["eval", "dissect", "train", "dpo"])
def test_unwritable_outputs_are_one_line(tmp_path, tiny_model_dir, corpus, capsys, monkeypatch, command):
    """A file where the output directory belongs, a file in its path, and a read-only file system (raised
    where the first file would be created: root ignores modes; the real mount is in the fuzz table)."""
    import selfrec_ft.files as files

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    rc, _, err = cli(capsys, *_output_argv(command, tmp_path, tiny_model_dir, corpus, a_file))
    assert rc == 2 and one_error(err) == f"error: {a_file}: cannot write: it is a file, expected a directory"
    rc, _, err = cli(capsys, *_output_argv(command, tmp_path, tiny_model_dir, corpus, a_file / "out"))
    assert rc == 2 and one_error(err) == f"error: {a_file / 'out'}: cannot write: {a_file} is a file, expected a directory"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    out = tmp_path / "ro"
    rc, _, err = cli(capsys, *_output_argv(command, tmp_path, tiny_model_dir, corpus, out))
    assert rc == 2 and one_error(err) == f"error: {out}: cannot write: read-only file system"


# ----------------------------------------------------------------------------- 2. a resumed run's report


def test_a_resumed_run_reports_every_checkpoint(tiny_model_dir, tmp_path):
    """Killed right after checkpoint-2 was saved, before the hook evaluated it: the resumed run
    evaluates checkpoint-2 when it starts, and the report, its markdown and the plot list it."""
    from transformers import TrainerCallback
    from trl import ModelConfig, SFTConfig

    from selfrec_ft.training.args import EvalHookArguments, SelfRecDataArguments
    from selfrec_ft.training.sft import run_sft

    corpus = write_corpus(synth_corpus("short", 10, seed=2), tmp_path / "c")
    out = tmp_path / "run"

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                raise RuntimeError("simulated kill")

    def args():
        cfg = SFTConfig(output_dir=str(out), use_cpu=True, bf16=False, max_length=1024, per_device_train_batch_size=2,
                        learning_rate=1e-2, max_steps=4, logging_steps=1, save_strategy="steps", save_steps=2,
                        report_to="none", seed=0, disable_tqdm=True, dataloader_num_workers=0)
        data = SelfRecDataArguments(corpus=str(corpus), self_source="lead", others="human", n_articles=4)
        model = ModelConfig(model_name_or_path=str(tiny_model_dir), use_peft=True, lora_r=4, lora_alpha=8)
        hook = EvalHookArguments(hook_in_domain=str(corpus), hook_limit=2, hook_batch_size=8)
        return data, cfg, model, hook

    data, cfg, model, hook = args()
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_sft(data, cfg, model, callbacks=[KillAfterSave()], hook_args=hook)
    rows = [json.loads(ln) for ln in (out / "selfrec_hook.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0] and (out / "checkpoint-2").is_dir()

    data, cfg, model, hook = args()
    run_sft(data, cfg, model, hook_args=hook)
    rows = [json.loads(ln) for ln in (out / "selfrec_hook.jsonl").read_text().splitlines()]
    assert [(r["step"], r["event"]) for r in rows] == [(0, "start"), (2, "resume"), (4, "save")]
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"]["step"] == 0 and report["final"]["step"] == 4
    assert [c["step"] for c in report["checkpoints"]] == [2, 4]
    md = (out / "report.md").read_text()
    assert "| checkpoint | 2 |" in md and "| checkpoint | 4 |" in md
    assert (out / report["plot"]).is_file()
    # the manifest says what train_loss covers, and it is the mean of the losses logged after the resume
    manifest = json.loads((out / "training_manifest.json").read_text())
    assert manifest["train_metrics_steps"] == ("steps 3-4 (resumed from checkpoint-2; steps 1-2 were trained by an "
                                               "earlier call)")
    logged = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"]
              if "loss" in h and h["step"] in (3, 4)]
    assert len(logged) == 2
    assert manifest["train_metrics"]["train_loss"] == pytest.approx(sum(logged) / 2, abs=1e-3)


def test_an_older_hook_file_with_a_start_row_at_a_checkpoint_reports_it(tmp_path):
    from selfrec_ft.training.report import build_training_report

    rec = {"in_domain": {"recognition": {"mean": 0.5}}}
    rows = [{"step": 0, "event": "start"}, {"step": 5, "event": "start"}, {"step": 10, "event": "save"},
            {"step": 12, "event": "end"}]
    (tmp_path / "selfrec_hook.jsonl").write_text("".join(json.dumps({**r, **rec}) + "\n" for r in rows))
    report = build_training_report(tmp_path)
    assert [c["step"] for c in report["checkpoints"]] == [5, 10]
    assert report["baseline"]["step"] == 0 and report["final"]["step"] == 12


# ----------------------------------------------------------------------------- 13. documented commands


def test_single_process_commands_in_the_docs_do_not_go_through_accelerate_launch():
    """`accelerate launch` of one process turns our exit 2 into a CalledProcessError traceback (exit
    1): the documented one-process commands are `python recipes/X.py` / `selfrec X`, and every
    `accelerate launch` shown starts several processes (--config_file) -- except the project's main
    job, `accelerate launch recipes/selfrec_sft.py` (the CPU demo, whose config is shipped and tested),
    under which the README says what a config mistake prints."""
    docs = [REPO / "README.md", REPO / "recipes" / "README.md", *(REPO / "recipes").glob("*.py"),
            *(REPO / "recipes" / "demo").glob("*.yaml")]
    for path in docs:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"accelerate launch\b([^\n`]*)", text):
            cmd = m.group(1)
            if cmd.split("#")[0].split() in (["recipes/selfrec_sft.py"],
                                              ["recipes/selfrec_sft.py", "--output_dir", "outputs/demo"]):
                continue  # the main job: the demo config, no user config to get wrong
            if "recipes/" in cmd or "-m selfrec_ft" in cmd:
                assert "--config_file" in cmd, f"{path.name}: accelerate launch{cmd}"


# ----------------------------------------------------------------------------- 14. smaller ones (from part A)


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "m"], "error: the following arguments are required: --corpus, --source "
                                   "(see: selfrec generate --help)"),
    (["pairs", "--corpus", "c", "--self-source", "s", "--n-articles", "0", "--out", "o"],
     "error: argument --n-articles: must be at least 1, got 0 (see: selfrec pairs --help)"),
    (["report"], "error: the following arguments are required: INPUT (see: selfrec report --help)"),
    (["eval", "--model", "m", "--bogus"], "error: the following arguments are required: --corpus, --self-source, "
                                          "--out (see: selfrec eval --help)"),
    (["sweep", "--bogus"], "error: unrecognized arguments: --bogus (see: selfrec sweep --help)"),
    (["corpus", "check"], "error: the following arguments are required: dir (see: selfrec corpus check --help)"),
    (["corpus", "check", "a", "b"], "error: unrecognized arguments: b (see: selfrec corpus check --help)"),
    (["genrate"], "error: argument COMMAND: invalid choice: 'genrate'"),
    ([], "error: the following arguments are required: COMMAND (see: selfrec --help)"),
])
def test_argument_errors_are_one_line_with_a_help_hint(capsys, argv, message):
    rc, out, err = cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(message), err


def test_an_empty_corpus_says_so(tmp_path, capsys):
    corpus = tmp_path / "empty"
    corpus.mkdir()
    (corpus / "articles.jsonl").write_text("")
    rc, _, err = cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "1",
                     "--out", tmp_path / "p.jsonl")
    assert rc == 2
    assert one_error(err) == f"error: {corpus / 'articles.jsonl'}: the corpus is empty: it has no articles to build pairs from"


def test_generate_max_length_error_names_the_value_given(tmp_path, tiny_model_dir, capsys):
    corpus = write_corpus(synth_corpus("short", 2, seed=1), tmp_path / "c")
    for extra, left in ((["--max-new-tokens", "1"], 4), ([], 0)):
        rc, _, err = cli(capsys, "generate", "--model", tiny_model_dir, "--corpus", corpus, "--source", "tiny",
                         "--max-length", "5", *extra)
        line = one_error(err)
        assert rc == 2 and line.startswith(f"error: max_length 5 leaves {left} tokens for the prompt"), line
        assert "max_length=4" not in line


def test_dpo_did_you_mean_lists_a_name_once(tmp_path, capsys):
    rc, _, err = cli(capsys, "dpo", "--attribute", "lenghty", "--output_dir", tmp_path / "dpo")
    assert rc == 2
    assert one_error(err) == "error: unknown P2 property 'lenghty'; did you mean 'lengthy'?"


def test_written_files_get_the_users_umask(tmp_path, capsys, tiny_model_dir):
    old = os.umask(0o027)
    try:
        out = tmp_path / "p.jsonl"
        corpus = tmp_path / "c"
        assert cli(capsys, "synth-corpus", corpus, "--n", "3")[0] == 0
        assert cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "2",
                   "--out", out)[0] == 0
        for path in (out, corpus / "articles.jsonl", corpus / "summaries.jsonl"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
        out.chmod(0o600)  # a file the user restricted keeps its mode when rewritten
        assert cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "1",
                   "--out", out)[0] == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    # the session's tiny model was built under the umask in force then (safetensors writes 0600)
    mode = 0o666 & ~old
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert stat.S_IMODE((tiny_model_dir / name).stat().st_mode) == mode, name


# ----------------------------------------------------------------------------- the fuzz table


def _fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_hostile", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_fuzz_classifies_outcomes():
    fz = _fuzz()
    case = fz.Case("x", "cli", (), expect="bad thing")
    assert fz.classify(case, 2, "progress\nerror: f:1: bad thing here\n") == "clean"
    assert fz.classify(case, 2, "error: f:1: bad thing\nTraceback (most recent call last):\n") == "traceback"
    assert fz.classify(case, 1, "Traceback (most recent call last):\n  ...\nValueError: x\n") == "traceback"
    assert fz.classify(case, 1, "error: bad thing\n") == "traceback"  # a clean line but the wrong status
    assert fz.classify(case, 0, "") == "silent"
    assert fz.classify(case, 2, "error: something else\n") == "other"
    assert fz.classify(case, 2, "error: bad thing\nerror: bad thing\n") == "other"
    from collections import Counter

    assert fz.summary_line(Counter(clean=3)) == "3 cases: 3 clean errors, 0 tracebacks, 0 silently wrong"
    assert fz.summary_line(Counter(clean=1, silent=1, other=1)) == \
        "3 cases: 1 clean errors, 0 tracebacks, 1 silently wrong, 1 other"


def test_fuzz_table_covers_every_command_and_recipe(tmp_path):
    fz = _fuzz()
    table = fz.cases(tmp_path)
    assert len(table) >= 100 and len({c.name for c in table}) == len(table)
    commands = {c.argv[0] for c in table if c.kind in ("cli", "rofs") and c.argv}
    assert {"eval", "generate", "pairs", "report", "dissect", "corpus", "synth-corpus", "make-tiny-model",
            "analyze", "sweep", "train"} <= commands
    assert {"sft", "dpo", "sweep", "proc"} <= {c.kind for c in table}


@pytest.mark.slow
def test_fuzz_subset_runs_clean(tmp_path):
    """A few rows of the table through the script itself (its workspace, fork runner, subprocesses)."""
    proc = subprocess.run([sys.executable, str(FUZZ), "--keep", str(tmp_path / "w"), "--only",
                           "eval model m_bin", "--only", "dpo --max_steps -3", "--only", "sweep --config sw_emptygrid",
                           "--only", "report bad JSON", "--only", "python recipes/selfrec_sft.py"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "5 cases: 5 clean errors, 0 tracebacks, 0 silently wrong"


def test_the_dpo_log_handler_writes_to_the_current_stderr(monkeypatch):
    """`selfrec dpo` run in-process after an earlier run's stderr was replaced and closed: its log lines
    go to the stderr of now (a handler bound to the old stream printed "--- Logging error ---")."""
    import io
    import logging
    import sys

    from selfrec_ft.scripts.dpo import CurrentStderrHandler

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler = CurrentStderrHandler()
    first.close()
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)
    handler.emit(logging.LogRecord("selfrec_ft", logging.INFO, __file__, 1, "CPU run", None, None))
    assert now.getvalue() == "CPU run\n"
