"""A trained model carries its prompt protocol (issue 22): the SFT run records it in
training_manifest.json, and `selfrec eval` / `steer` on the model (or one of its checkpoints) use it
without a flag, say where it came from, warn in one line when an explicit preset differs, and every
report states its protocol; `selfrec report` says so when two evaluations used different ones."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from selfrec_ft.cli import main
from selfrec_ft.errors import UserError
from selfrec_ft.prompts import protocol as pr

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PRESETS = Path(pr.__file__).parent / "presets"


@pytest.fixture(scope="module")
def compact_run(tiny_model_dir, short_corpus_dir, tmp_path_factory):
    """A tiny LoRA run trained with the `compact` preset (2 steps, a checkpoint at step 2)."""
    from trl import ModelConfig, SFTConfig

    from selfrec_ft.training.args import SelfRecDataArguments
    from selfrec_ft.training.sft import run_sft

    out = tmp_path_factory.mktemp("compact") / "run"
    data = SelfRecDataArguments(corpus=str(short_corpus_dir), self_source="lead", others="human", n_articles=4,
                                prompt_preset="compact")
    training = SFTConfig(output_dir=str(out), use_cpu=True, bf16=False, max_length=1024, per_device_train_batch_size=4,
                         learning_rate=1e-2, max_steps=2, logging_steps=1, save_strategy="steps", save_steps=2,
                         report_to="none", seed=0, disable_tqdm=True, dataloader_num_workers=0)
    model = ModelConfig(model_name_or_path=str(tiny_model_dir), use_peft=True, lora_r=4, lora_alpha=8,
                        lora_dropout=0.0)
    run_sft(data, training, model)
    return out


def _eval(model, corpus, out, *extra) -> int:
    return main(["eval", "--model", str(model), "--corpus", str(corpus), "--self-source", "lead", "--tasks",
                 "pairwise-recognition", "--limit", "3", "--no-progress", "--n-resamples", "20", "--out", str(out),
                 *extra])


def _probs(out: Path) -> list:
    rows = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
    return [(r["article_id"], r["other_source"], r["order"], r["probs"]) for r in rows]


def test_the_manifest_records_the_protocol(compact_run):
    man = json.loads((compact_run / "training_manifest.json").read_text())
    proto = man["protocol"]
    assert proto["preset"] == "compact" and proto["template"] == "pairwise-recognition"
    assert proto["templates_sha256"] == pr.templates_sha256("compact") != pr.templates_sha256("panickssery2024")
    assert "preset_file" not in proto  # a packaged preset is named, not copied
    assert not (compact_run / pr.PRESET_COPY).exists()


def test_eval_follows_the_manifest_and_warns_on_another_preset(compact_run, short_corpus_dir, tmp_path, capsys):
    manifest = compact_run / "training_manifest.json"
    assert _eval(compact_run, short_corpus_dir, tmp_path / "a") == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"prompts: preset compact, from {manifest}"
    assert not any(line.startswith("warning") for line in err)

    assert _eval(compact_run, short_corpus_dir, tmp_path / "b", "--prompt-preset", "compact") == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "prompts: preset compact, from --prompt-preset" and not any("warning" in e for e in err)
    assert _probs(tmp_path / "a") == _probs(tmp_path / "b")  # the same numbers as the explicit preset

    assert _eval(compact_run, short_corpus_dir, tmp_path / "c", "--prompt-preset", "panickssery2024") == 0
    warnings = [e for e in capsys.readouterr().err.splitlines() if e.startswith("warning")]
    assert len(warnings) == 1 and "panickssery2024 differs" in warnings[0] and "compact" in warnings[0]
    assert _probs(tmp_path / "c") != _probs(tmp_path / "a")  # another prompt, other numbers

    reports = {k: json.loads((tmp_path / k / "report.json").read_text()) for k in "abc"}
    assert reports["a"]["protocol"] == {"preset": "compact", "templates_sha256": pr.templates_sha256("compact"),
                                        "source": str(manifest)}
    assert reports["b"]["protocol"]["source"] == "--prompt-preset" and "trained" not in reports["b"]["protocol"]
    assert reports["c"]["protocol"]["preset"] == "panickssery2024"
    assert reports["c"]["protocol"]["trained"] == {"preset": "compact", "manifest": str(manifest),
                                                   "templates_sha256": pr.templates_sha256("compact")}
    md_a, md_c = ((tmp_path / k / "report.md").read_text() for k in "ac")
    assert md_a.splitlines()[2].startswith("Protocol: preset `compact`, templates sha256 ")  # under the title
    assert "trained with preset `compact`" in md_c

    # selfrec report over evaluations with different protocols says so before the numbers
    assert main(["report", str(tmp_path / "a" / "examples.jsonl"), str(tmp_path / "c" / "examples.jsonl"),
                 "--n-resamples", "20"]) in (0, 2)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("note: these inputs were scored under different prompt protocols")
    assert "preset compact" in out[0] and "preset panickssery2024" in out[0]
    assert pr.protocols_differ_note([tmp_path / "a" / "examples.jsonl", tmp_path / "b" / "examples.jsonl"]) is None


def test_a_checkpoint_uses_its_runs_protocol(compact_run, short_corpus_dir, tmp_path, capsys):
    assert (compact_run / "checkpoint-2").is_dir()
    assert _eval(compact_run / "checkpoint-2", short_corpus_dir, tmp_path / "ck") == 0
    assert capsys.readouterr().err.splitlines()[0] == \
        f"prompts: preset compact, from {compact_run / 'training_manifest.json'}"
    assert json.loads((tmp_path / "ck" / "report.json").read_text())["protocol"]["preset"] == "compact"


def test_a_model_without_manifest_keeps_the_default_silently(tiny_model_dir, short_corpus_dir, tmp_path, capsys):
    assert _eval(tiny_model_dir, short_corpus_dir, tmp_path / "base") == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"loading {tiny_model_dir} ..." and not any(e.startswith(("prompts:", "warning")) for e in err)
    rep = json.loads((tmp_path / "base" / "report.json").read_text())
    assert rep["protocol"]["preset"] == "panickssery2024" and rep["protocol"]["source"] == "default"


def test_steer_fit_and_sweep_follow_the_manifest(compact_run, short_corpus_dir, tmp_path, capsys):
    d = tmp_path / "dirs"
    assert main(["steer", "fit", "--model", str(compact_run), "--corpus", str(short_corpus_dir), "--self-source",
                 "lead", "--layers", "0", "--out", str(d), "--no-progress"]) == 0
    line = f"prompts: preset compact, from {compact_run / 'training_manifest.json'}"
    assert capsys.readouterr().err.splitlines()[0] == line
    assert json.loads((d / "directions.json").read_text())["preset"] == "compact"
    assert main(["steer", "sweep", "--directions", str(d), "--model", str(compact_run), "--corpus",
                 str(short_corpus_dir), "--self-source", "lead", "--mode", "scale", "--values", "1", "--limit", "2",
                 "--no-progress", "--n-resamples", "20", "--out", str(tmp_path / "s"),
                 "--prompt-preset", "panickssery2024"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "prompts: preset panickssery2024, from --prompt-preset"
    assert sum(e.startswith("warning: --prompt-preset panickssery2024 differs") for e in err) == 1
    reports = list((tmp_path / "s").rglob("report.json"))
    assert reports and all(json.loads(p.read_text())["protocol"]["trained"]["preset"] == "compact" for p in reports)


def test_a_preset_file_travels_with_the_run(tmp_path):
    src = tmp_path / "mine.yaml"
    shutil.copy(PRESETS / "compact.yaml", src)
    record = pr.training_protocol(str(src), "pairwise-recognition")
    assert record["preset_file"] == pr.PRESET_COPY and record["preset_text"] == src.read_text()
    # the hash is the templates', not the file's name or place
    assert record["templates_sha256"] == pr.templates_sha256("compact")
    run = tmp_path / "run"
    run.mkdir()
    manifest = {"prompt_preset": str(src), "protocol": record}
    (run / "training_manifest.json").write_text(json.dumps(manifest))
    pr.copy_preset_file(run, manifest)
    assert hashlib.sha256((run / pr.PRESET_COPY).read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    src.unlink()  # the user's file is gone: the run's copy still gives the protocol
    found = pr.resolve_protocol(run / "checkpoint-5", None)
    assert found.origin == "manifest" and found.preset == str(run / pr.PRESET_COPY)
    assert found.line == f"prompts: preset compact, from {run / 'training_manifest.json'}"
    # a manifest naming a file that is gone, with no copy: one line, not a silent default
    (run / pr.PRESET_COPY).unlink()
    with pytest.raises(UserError, match="which is gone"):
        pr.resolve_protocol(run, None)


def test_variant_templates_change_the_hash():
    assert pr.templates_sha256("panickssery2024") != pr.templates_sha256(
        "panickssery2024", {"pairwise-preference": "pairwise-preference-worse"})
