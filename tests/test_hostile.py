"""Hostile-but-realistic input, part A of issue 15 (part B and the smaller cases of item 14 are in
test_hostile_training.py): every case through the real ``selfrec`` command line, with the exit status and the one ``error:`` line asserted (never a traceback), and for the
cases that used to give a silently wrong number, that number checked against an independent
computation. Inputs are built here; nothing is read from the shared data."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selfrec_ft.cli import main
from selfrec_ft.data.corpus import write_corpus
from selfrec_ft.data.synth import synth_corpus
from selfrec_ft.jsonl import JsonlAppender, read_jsonl_rows

REPO = Path(__file__).resolve().parents[1]
PACKAGED_PRESET = REPO / "selfrec_ft" / "prompts" / "presets" / "panickssery2024.yaml"
DEMO_SFT = REPO / "recipes" / "demo" / "selfrec_sft.yaml"


def cli(capsys, *argv):
    """``selfrec ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(err: str) -> str:
    """The single ``error:`` line of ``err`` (progress bars may share stderr; a traceback may not)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def make_corpus(path: Path, n: int = 8, seed: int = 1) -> Path:
    return write_corpus(synth_corpus("short", n, seed=seed), path)


def preset_data() -> dict:
    return yaml.safe_load(PACKAGED_PRESET.read_text(encoding="utf-8"))


def write_preset(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def ab_preset(path: Path, options=("A", "B")) -> Path:
    data = preset_data()
    data["name"] = "ab"
    for task in ("pairwise-recognition", "pairwise-preference"):
        if options is None:
            data["tasks"][task].pop("options")
        else:
            data["tasks"][task]["options"] = list(options)
    return write_preset(path, data)


def yaml_line(path: Path, needle: str) -> int:
    """1-based line of the first line of ``path`` containing ``needle``."""
    return next(i for i, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in ln)


# ----------------------------------------------------------------------------- 1. data loss


def test_generate_keeps_a_hand_edited_last_line_without_newline(tmp_path, tiny_model_dir, capsys):
    """The issue's repro: `head -c -1 summaries.jsonl > c/summaries.jsonl`, then generate."""
    corpus = make_corpus(tmp_path / "c", n=5)
    original = (corpus / "summaries.jsonl").read_bytes()
    (corpus / "summaries.jsonl").write_bytes(original[:-1])
    rc, out, err = cli(capsys, "generate", "--model", tiny_model_dir, "--corpus", corpus, "--source", "tiny",
                       "--max-new-tokens", "3")
    assert rc == 0, err
    data = (corpus / "summaries.jsonl").read_bytes()
    assert data.startswith(original)  # every original line kept, the last one given its newline
    rows = [json.loads(ln) for ln in data.decode().splitlines()]
    assert sum(r["source"] == "lead" for r in rows) == 5 and sum(r["source"] == "human" for r in rows) == 5
    assert sorted(r["id"] for r in rows if r["source"] == "tiny") == sorted(r["id"] for r in rows if r["source"] == "lead")


def test_generate_resumes_an_output_whose_last_row_lacks_its_newline(tmp_path, tiny_model_dir, capsys):
    corpus = make_corpus(tmp_path / "c", n=4)
    out = tmp_path / "own.jsonl"
    assert cli(capsys, "generate", "--model", tiny_model_dir, "--corpus", corpus, "--source", "tiny",
               "--max-new-tokens", "3", "--limit", "2", "--out", out)[0] == 0
    first = out.read_bytes()
    out.write_bytes(first.rstrip(b"\n"))
    rc, stdout, err = cli(capsys, "generate", "--model", tiny_model_dir, "--corpus", corpus, "--source", "tiny",
                          "--max-new-tokens", "3", "--out", out)
    assert rc == 0, err
    assert "(2 already present)" in stdout
    data = out.read_bytes()
    assert data.startswith(first)
    ids = [json.loads(ln)["id"] for ln in data.decode().splitlines()]
    assert len(ids) == 4 and len(set(ids)) == 4


def test_appender_drops_only_a_tail_that_does_not_parse(tmp_path):
    whole = json.dumps({"id": "a", "summary": "x"}).encode()
    cases = {
        "complete": (whole + b"\n" + whole, 2),  # hand-edited: kept, given its newline
        "cut": (whole + b"\n" + whole[:-3], 1),  # cut short by a kill: dropped
        "cut-in-a-character": (whole + b"\n" + '{"id": "b", "summary": "é'.encode()[:-1], 1),
        "bom-single-line": (b"\xef\xbb\xbf" + whole, 1),
        "not-an-object": (whole + b"\n" + b"[1, 2]", 1),
    }
    for name, (data, n) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(data)
        assert len(read_jsonl_rows(path)) == n, name  # what a resuming job sees ...
        with JsonlAppender(path) as app:
            app.append([{"id": "new"}])
        rows = read_jsonl_rows(path)
        assert len(rows) == n + 1 and rows[-1] == {"id": "new"}, name  # ... is what stays
        assert path.read_bytes().endswith(b"\n")


def test_rows_with_unicode_line_separators_survive_a_resume(tmp_path):
    path = tmp_path / "rows.jsonl"
    row = {"id": "a", "summary": "one\u2028two\x85three"}  # json.dumps(ensure_ascii=False) keeps them raw
    with JsonlAppender(path) as app:
        app.append([row, {"id": "b"}])
    assert read_jsonl_rows(path) == [row, {"id": "b"}]


# ----------------------------------------------------------------------------- 3. preset options


def test_pairs_train_on_the_presets_options(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", n=4)
    preset = ab_preset(tmp_path / "ab.yaml")
    out = tmp_path / "pairs.jsonl"
    rc, stdout, err = cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "3",
                          "--prompt-preset", preset, "--out", out)
    assert rc == 0, err
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(rows) == 3 * 1 * 2
    for r in rows:  # label "self": the option of the self summary's position, A = Summary1, B = Summary2
        expected = "A" if r["self_position"] == 1 else "B"
        assert r["completion"] == [{"role": "assistant", "content": expected}]
        assert r["label"] == expected
    assert '"A": 3, "B": 3' in stdout
    assert "not checked to be single tokens (no --tokenizer)" in stdout


def test_pairs_with_a_tokenizer_says_the_options_were_checked(tmp_path, tiny_model_dir, capsys):
    corpus = make_corpus(tmp_path / "c", n=3)
    rc, stdout, err = cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "2",
                          "--prompt-preset", ab_preset(tmp_path / "ab.yaml"), "--tokenizer", tiny_model_dir,
                          "--out", tmp_path / "p.jsonl")
    assert rc == 0, err
    assert "'A' / 'B': each one token for this tokenizer" in stdout


@pytest.mark.parametrize("options, message", [
    (None, "a pairwise template needs exactly two options (the answers for Summary1 and Summary2), got 0"),
    (["A"], "a pairwise template needs exactly two options (the answers for Summary1 and Summary2), got 1"),
    (["A", "B", "C"], "a pairwise template needs exactly two options (the answers for Summary1 and Summary2), got 3"),
    (["A", "A"], "an option is repeated"),
    (["A", " "], "an option is empty"),
])
def test_pairs_and_eval_reject_the_same_bad_options(tmp_path, tiny_model_dir, capsys, options, message):
    corpus = make_corpus(tmp_path / "c", n=4)
    preset = ab_preset(tmp_path / "bad.yaml", options)
    rc, _, err = cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "2",
                     "--prompt-preset", preset, "--out", tmp_path / "p.jsonl")
    pairs_error = one_error(err)
    assert rc == 2
    assert pairs_error.startswith(f"error: {preset}:")
    assert "preset 'ab', template 'pairwise-recognition', field 'options': " + message in pairs_error
    assert not (tmp_path / "p.jsonl").exists()
    rc, _, err = cli(capsys, "eval", "--model", tiny_model_dir, "--corpus", corpus, "--self-source", "lead",
                     "--tasks", "pairwise-recognition", "--prompt-preset", preset, "--out", tmp_path / "ev")
    assert rc == 2 and one_error(err) == pairs_error


def test_multi_token_options_fail_pairs_with_a_tokenizer_exactly_as_eval(tmp_path, tiny_model_dir, capsys):
    corpus = make_corpus(tmp_path / "c", n=4)
    preset = ab_preset(tmp_path / "long.yaml", ("Absolutely", "Perhaps-not"))
    rc, stdout, err = cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "2",
                          "--prompt-preset", preset, "--out", tmp_path / "p.jsonl")
    assert rc == 0 and "not checked to be single tokens (no --tokenizer)" in stdout  # says what it could not check
    rc, _, err = cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "2",
                     "--prompt-preset", preset, "--tokenizer", tiny_model_dir, "--out", tmp_path / "p2.jsonl")
    pairs_error = one_error(err)
    assert rc == 2 and "is not a single distinguishing token" in pairs_error
    rc, _, err = cli(capsys, "eval", "--model", tiny_model_dir, "--corpus", corpus, "--self-source", "lead",
                     "--tasks", "pairwise-recognition", "--prompt-preset", preset, "--out", tmp_path / "ev")
    assert rc == 2 and one_error(err) == pairs_error


# ----------------------------------------------------------------------------- 4, 10. placeholders


@pytest.mark.parametrize("task, field, edit, message", [
    ("pairwise-recognition", "user", lambda t: t.replace("{summary2}", ""),
     "missing placeholder {summary2}; pairwise templates need {summary1} and {summary2}"),
    ("pairwise-preference", "user", lambda t: t.replace("{summary1}", "{sumary1}"),
     "unknown placeholder {sumary1}; pairwise templates may use {article}, {author}, {source1}, {source2}, {summary1}, "
     "{summary2}"),
    ("individual-recognition", "user", lambda t: t.replace("{summary}", "{summary1}"),
     "unknown placeholder {summary1}; individual templates may use {article}, {summary}"),
    ("individual-score", "user", lambda t: t.replace("{summary}", ""), "missing placeholder {summary}"),
    ("generate-short", "user", lambda t: t.replace("{article}", "the article"), "missing placeholder {article}"),
    ("pairwise-recognition", "user", lambda t: t + " {0}", "unknown placeholder {0}"),
    ("pairwise-recognition", "user", lambda t: t + " {}", "placeholder {}: only plain {name} placeholders"),
    ("pairwise-recognition", "user", lambda t: t.replace("{article}", "{article!r}"),
     "placeholder {article!r}: only plain {name} placeholders"),
    ("pairwise-recognition", "user", lambda t: t + ' Answer as {"choice": 1}.',
     'placeholder {"choice": 1}: only plain {name} placeholders'),
    ("pairwise-recognition", "user", lambda t: t + " Reply with { then the number.",
     "a lone '{' or '}' (expected '}' before end of string); write '{{' or '}}' for a literal brace"),
    ("pairwise-preference", "user", lambda t: t + " (or } otherwise)",
     "a lone '{' or '}' (Single '}' encountered in format string)"),
    ("pairwise-recognition", "system", lambda t: t + " The article: {article}",
     "the system text is not formatted (placeholders are filled in the user text only), so {article}"),
])
def test_template_text_mistakes_name_preset_template_field_and_line(tmp_path, capsys, task, field, edit, message):
    data = preset_data()
    data["name"] = "mine"
    data["tasks"][task][field] = edit(data["tasks"][task][field])
    preset = write_preset(tmp_path / "mine.yaml", data)
    rc, _, err = cli(capsys, "pairs", "--corpus", make_corpus(tmp_path / "c", n=3), "--self-source", "lead",
                     "--n-articles", "2", "--prompt-preset", preset, "--out", tmp_path / "p.jsonl")
    err_line = one_error(err)
    assert rc == 2
    assert f"preset 'mine', template '{task}', field '{field}': {message}" in err_line
    # the line is the field's own line in the YAML
    lines = preset.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines, 1) if ln.strip() == f"{task}:")
    expected = next(i for i, ln in enumerate(lines, 1) if i > start and ln.strip().startswith(f"{field}:"))
    assert err_line.startswith(f"error: {preset}:{expected}: ")


def test_literal_braces_in_system_text_and_doubled_in_user_text_are_fine(tmp_path, capsys):
    data = preset_data()
    data["tasks"]["pairwise-recognition"]["system"] += ' Answer as JSON: {"answer": 1}.'
    data["tasks"]["pairwise-recognition"]["user"] += ' Format: {{"answer": 1}}.'
    preset = write_preset(tmp_path / "braces.yaml", data)
    out = tmp_path / "p.jsonl"
    rc, _, err = cli(capsys, "pairs", "--corpus", make_corpus(tmp_path / "c", n=3), "--self-source", "lead",
                     "--n-articles", "2", "--prompt-preset", preset, "--out", out)
    assert rc == 0, err
    prompt = json.loads(out.read_text().splitlines()[0])["prompt"]
    assert prompt[0]["content"].endswith(' Answer as JSON: {"answer": 1}.')
    assert prompt[1]["content"].endswith(' Format: {"answer": 1}.')


# ----------------------------------------------------------------------------- 5. probabilities


def _pair_rows(article, fwd, bwd):
    return [{"task": "pairwise-recognition", "article_id": article, "self_source": "me", "other_source": "o",
             "order": order, "self_option": so, "probs": {"1": p[0], "2": p[1]}}
            for order, so, p in (("forward", "1", fwd), ("backward", "2", bwd))]


VALID = {f"a{i}": ((0.1 + 0.1 * i, 0.3), (0.2, 0.05 + 0.1 * i)) for i in range(1, 7)}


@pytest.mark.parametrize("bad", [(5.0, 0.001), (0.6, 0.5), (-0.1, 0.5), (1.2, 0.0)])
def test_report_counts_probabilities_outside_0_1_as_invalid(tmp_path, capsys, bad):
    rows = _pair_rows("a0", bad, (0.2, 0.7))
    for a, (f, b) in VALID.items():
        rows += _pair_rows(a, f, b)
    path = tmp_path / "examples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, stdout, err = cli(capsys, "report", path, "--json", tmp_path / "r.json", "--n-resamples", "50")
    assert rc == 0, err
    rec = json.loads((tmp_path / "r.json").read_text())["pairwise"]["recognition"]
    # independent: the valid pairs only, p̂ = p / (p1 + p2), score = ½[p̂_fwd(1) + p̂_bwd(2)]
    scores = [0.5 * (f[0] / sum(f) + b[1] / sum(b)) for f, b in VALID.values()]
    raw = [0.5 * (f[0] + b[1]) for f, b in VALID.values()]
    assert rec["n"] == 6 and rec["invalid"] == 1 and rec["invalid_rows"] == 1
    assert rec["mean"] == pytest.approx(sum(scores) / 6)
    assert rec["mean_raw"] == pytest.approx(sum(raw) / 6) and rec["mean_raw"] <= 1
    if bad[0] > 1 or sum(bad) > 1:
        assert "1 row(s) have option probabilities above 1 or summing above 1" in stdout


@pytest.mark.parametrize("obj, message", [
    ({"key": "a0", "model": "human", "forward_detection_output": {"1": 5.0, "2": 0.001}},
     '"forward_detection_output": probability above 1'),
    ({"key": "a0", "model": "human", "backward_comparison_output": {"1": 0.7, "2": 0.6}},
     '"backward_comparison_output": probabilities sum above 1'),
    ({"key": "a0", "model": "llama", "target_model": "llama", "scores": {"1": 0.5, "2": 0.5, "3": 0.5, "4": 0, "5": 0}},
     '"scores": probabilities sum above 1'),
    ({"key": "a0", "model": "llama", "target_model": "llama", "recognition_score": 3.6},
     '"recognition_score" must be a probability in [0, 1], got 3.6'),
])
def test_p1_files_with_probabilities_outside_0_1_are_an_error(tmp_path, capsys, obj, message):
    good = {"key": "a1", "model": "human", "forward_detection_output": {"1": 0.6, "2": 0.3},
            "backward_detection_output": {"1": 0.3, "2": 0.6}}
    if "target_model" in obj:
        good = {"key": "a1", "model": "llama", "target_model": "llama", "recognition_score": 0.4}
    path = tmp_path / "llama_results.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(obj) + "\n")
    rc, _, err = cli(capsys, "report", "--format", "p1", path)
    assert rc == 2
    assert one_error(err).startswith(f"error: {path}:2: {message}")


# ----------------------------------------------------------------------------- 7, 14. sweep config


def sweep_files(tmp_path: Path, grid_text: str, base_extra: str = "") -> Path:
    base = tmp_path / "base.yaml"
    base.write_text(DEMO_SFT.read_text(encoding="utf-8") + base_extra, encoding="utf-8")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {base}\noutput_dir: {tmp_path / 'sw'}\n{grid_text}", encoding="utf-8")
    return sweep


@pytest.mark.parametrize("grid, message", [
    ("grid: {}\n", "no runs (the grid is empty): give a grid"),
    ("grid: []\n", "no runs (the grid is empty): give a grid"),
    ("grid: [{labels: [self]}, {}]\n", "grid[1] is empty"),
])
def test_an_empty_grid_is_an_error_not_one_run_of_the_base_config(tmp_path, capsys, grid, message):
    sweep = sweep_files(tmp_path, grid)
    rc, _, err = cli(capsys, "sweep", "--config", sweep, "--prepare_only")
    assert rc == 2 and one_error(err).startswith(f"error: {sweep}:3: {message}")
    assert not (tmp_path / "sw" / "runs.json").exists()


@pytest.mark.parametrize("grid, message", [
    ("grid:\n  learning_rate: [1.0e-4, abc]\n", "learning_rate must be a number, got 'abc'"),
    ("grid:\n  lora_alpha: [x]\n", "lora_alpha must be an integer, got 'x'"),
    ("grid:\n  per_device_train_batch_size: [2.5]\n", "per_device_train_batch_size must be an integer, got 2.5"),
    ("grid:\n  bf16: [maybe]\n", "bf16 must be true or false, got 'maybe'"),
    ("grid:\n  lr_scheduler_type: [cosin]\n", "lr_scheduler_type must be one of linear, cosine"),
    ("grid:\n  learning_rate: [null]\n", "learning_rate must be a number, not null"),
    ("runs:\n  - {lora_dropout: high}\n", "lora_dropout must be a number, got 'high'"),
])
def test_wrong_types_in_a_sweep_yaml_name_the_file_and_line(tmp_path, capsys, grid, message):
    sweep = sweep_files(tmp_path, grid)
    rc, _, err = cli(capsys, "sweep", "--config", sweep, "--prepare_only")
    assert rc == 2 and one_error(err).startswith(f"error: {sweep}:4: {message}")


def test_wrong_type_in_the_base_recipe_yaml_names_its_line(tmp_path, capsys):
    sweep = sweep_files(tmp_path, "grid: {labels: [self]}\n", base_extra="weight_decay: lots\n")
    base = tmp_path / "base.yaml"
    rc, _, err = cli(capsys, "sweep", "--config", sweep, "--prepare_only")
    assert rc == 2
    assert one_error(err) == f"error: {base}:{yaml_line(base, 'weight_decay:')}: weight_decay must be a number, got 'lots'"


# ----------------------------------------------------------------------------- 9. UTF-8


def _bad_byte(path: Path, line: int, text: bytes = b"\xe9") -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1][:10] + text + lines[line - 1][10:]
    path.write_bytes(b"\n".join(lines))


def test_non_utf8_corpus_files_name_file_and_line(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", n=4)
    _bad_byte(corpus / "articles.jsonl", 3)
    rc, _, err = cli(capsys, "corpus", "check", corpus)
    assert rc == 2 and one_error(err) == f"error: {corpus / 'articles.jsonl'}:3: not valid UTF-8 (byte 0xe9 at column 11)"
    corpus = make_corpus(tmp_path / "c2", n=4)
    _bad_byte(corpus / "summaries.jsonl", 2)
    rc, _, err = cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "2",
                     "--out", tmp_path / "p.jsonl")
    assert rc == 2 and one_error(err).startswith(f"error: {corpus / 'summaries.jsonl'}:2: not valid UTF-8")


def test_non_utf8_corpus_in_generate_fails_before_loading_a_model(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", n=4)
    _bad_byte(corpus / "summaries.jsonl", 5)
    rc, _, err = cli(capsys, "generate", "--model", tmp_path / "no-model-needed", "--corpus", corpus,
                     "--source", "tiny")
    assert rc == 2 and one_error(err).startswith(f"error: {corpus / 'summaries.jsonl'}:5: not valid UTF-8")


def test_non_utf8_preset_report_dissect_and_sweep_files(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", n=3)
    preset = write_preset(tmp_path / "p.yaml", preset_data())
    _bad_byte(preset, 12)
    rc, _, err = cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "2",
                     "--prompt-preset", preset, "--out", tmp_path / "p.jsonl")
    assert rc == 2 and one_error(err).startswith(f"error: {preset}:12: not valid UTF-8")

    rows = tmp_path / "examples.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for a, (f, b) in VALID.items() for r in _pair_rows(a, f, b)))
    _bad_byte(rows, 4)
    rc, _, err = cli(capsys, "report", rows)
    assert rc == 2 and one_error(err).startswith(f"error: {rows}:4: not valid UTF-8")

    p1 = tmp_path / "llama_results.json"  # P1's original format: one JSON list
    objs = [{"key": f"a{i}", "model": "human", "forward_detection_output": {"1": 0.6, "2": 0.3},
             "backward_detection_output": {"1": 0.3, "2": 0.6}} for i in range(3)]
    p1.write_text("[\n" + ",\n".join(json.dumps(o) for o in objs) + "\n]\n")
    _bad_byte(p1, 3)
    rc, _, err = cli(capsys, "report", "--format", "p1", p1)
    assert rc == 2 and one_error(err).startswith(f"error: {p1}:3: not valid UTF-8")

    comparisons = tmp_path / "comparisons.jsonl"
    comparisons.write_text("".join(json.dumps({"features": {"lengthy": s}, "preferred": int(s > 0)}) + "\n"
                                   for s in (1, -1, 1, -1)))
    _bad_byte(comparisons, 2)
    rc, _, err = cli(capsys, "dissect", "--comparisons", comparisons, "--out", tmp_path / "d")
    assert rc == 2 and one_error(err).startswith(f"error: {comparisons}:2: not valid UTF-8")

    sweep = sweep_files(tmp_path, "# caf\xe9\ngrid: {labels: [self]}\n")
    sweep.write_bytes(sweep.read_bytes().replace("caf\xe9".encode(), b"caf\xe9"))
    rc, _, err = cli(capsys, "sweep", "--config", sweep, "--prepare_only")
    assert rc == 2 and one_error(err) == f"error: {sweep}:3: not valid UTF-8 (byte 0xe9 at column 6)"

    sweep = sweep_files(tmp_path, "grid: {labels: [self]}\n", base_extra="# caf\xe9\n")
    base = tmp_path / "base.yaml"
    line = yaml_line(base, "# caf")
    base.write_bytes(base.read_bytes().replace("caf\xe9".encode(), b"caf\xe9"))
    rc, _, err = cli(capsys, "sweep", "--config", sweep, "--prepare_only")
    assert rc == 2 and one_error(err) == f"error: {base}:{line}: not valid UTF-8 (byte 0xe9 at column 6)"


def test_utf16_file_is_named(tmp_path, capsys):
    rows = tmp_path / "examples.jsonl"
    rows.write_bytes("".join(json.dumps(r) + "\n" for r in _pair_rows("a1", (0.6, 0.3), (0.3, 0.6))).encode("utf-16"))
    rc, _, err = cli(capsys, "report", rows)
    assert rc == 2 and "the file starts with a UTF-16 byte-order mark: save it as UTF-8" in one_error(err)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path, capsys):
    bom = b"\xef\xbb\xbf"
    corpus = make_corpus(tmp_path / "c", n=3)
    for name in ("articles.jsonl", "summaries.jsonl"):
        (corpus / name).write_bytes(bom + (corpus / name).read_bytes())
    preset = write_preset(tmp_path / "p.yaml", preset_data())
    preset.write_bytes(bom + preset.read_bytes())
    out = tmp_path / "p.jsonl"
    rc, _, err = cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "2",
                     "--prompt-preset", preset, "--out", out)
    assert rc == 0, err
    assert len(out.read_text().splitlines()) == 4

    rows = tmp_path / "examples.jsonl"
    rows.write_bytes(bom + "".join(json.dumps(r) + "\n" for a, (f, b) in VALID.items()
                                   for r in _pair_rows(a, f, b)).encode())
    rc, _, err = cli(capsys, "report", rows, "--json", tmp_path / "r.json", "--n-resamples", "20")
    assert rc == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["pairwise"]["recognition"]["n"] == 6

    sweep = sweep_files(tmp_path, "grid: {labels: [self]}\n")
    sweep.write_bytes(bom + sweep.read_bytes())
    rc, out_text, err = cli(capsys, "sweep", "--config", sweep, "--prepare_only")
    assert rc == 0, err
    assert "1 runs in" in out_text


# ----------------------------------------------------------------------------- 11. outputs


def test_outputs_where_a_directory_or_a_file_is_in_the_way(tmp_path, tiny_model_dir, capsys):
    corpus = make_corpus(tmp_path / "c", n=3)
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    pairs = ("pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "2", "--out")
    generate = ("generate", "--model", tiny_model_dir, "--corpus", corpus, "--source", "tiny", "--out")
    cases = [
        ((*pairs, a_dir), f"error: {a_dir}: cannot write: it is a directory, expected a file"),
        ((*pairs, a_file / "p.jsonl"), f"error: {a_file / 'p.jsonl'}: cannot write: {a_file} is a file, expected a directory"),
        ((*generate, a_dir), f"error: {a_dir}: is a directory, expected a file"),
        ((*generate, a_file / "s.jsonl"), f"error: {a_file / 's.jsonl'}: cannot write: {a_file} is a file, expected a directory"),
        (("synth-corpus", a_file), f"error: {a_file}: cannot write: it is a file, expected a directory"),
        (("synth-corpus", a_file / "sub"), f"error: {a_file / 'sub'}: cannot write: {a_file} is a file, expected a directory"),
        (("make-tiny-model", a_file), f"error: {a_file}: cannot write: it is a file, expected a directory"),
    ]
    (a_dir / "articles.jsonl").mkdir()  # synth-corpus into a directory whose articles.jsonl is a directory
    cases.append((("synth-corpus", a_dir), f"error: {a_dir / 'articles.jsonl'}: cannot write: it is a directory, "
                                           "expected a file"))
    for argv, expected in cases:
        rc, _, err = cli(capsys, *argv)
        assert rc == 2 and one_error(err) == expected, argv


def test_permission_denied_is_one_line(tmp_path, capsys, monkeypatch):
    """(Root ignores file modes, so the error is raised where the file would be created.)"""
    import selfrec_ft.jsonl as jsonl

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    corpus = make_corpus(tmp_path / "c", n=3)
    monkeypatch.setattr(jsonl.tempfile, "mkstemp", denied)
    out = tmp_path / "p.jsonl"
    rc, _, err = cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "2",
                     "--out", out)
    assert rc == 2 and one_error(err) == f"error: {out}: cannot write: permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", n=3)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, _, err = cli(capsys, "pairs", "--corpus", corpus, "--self-source", "lead", "--n-articles", "2",
                         "--out", ro / "p.jsonl")
        assert rc == 2 and one_error(err) == f"error: {ro / 'p.jsonl'}: cannot write: permission denied"
    finally:
        ro.chmod(0o755)


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs tmpfs $d"],
                           capture_output=True)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -rm` and tmpfs mounts")


def _in_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``script`` (sh) in a private mount namespace: tmpfs mounts vanish with it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(["unshare", "-rm", "sh", "-c", "set -u\n" + script], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@needs_tmpfs
def test_disk_full_during_generate_is_one_line_and_resumes(tmp_path, tiny_model_dir):
    make_corpus(tmp_path / "c", n=60)
    py = sys.executable
    gen = f"{py} -m selfrec_ft generate --model {tiny_model_dir} --corpus c --source tiny --max-new-tokens 20 --out fs/s.jsonl"
    proc = _in_namespace(f"""mkdir fs && mount -t tmpfs -o size=4k tmpfs fs
{gen} 2>full.err; echo "rc=$?" > full.rc
cp fs/s.jsonl partial.jsonl
mount -o remount,size=1m fs
{gen} >resumed.out 2>resumed.err; echo "rc=$?" > resumed.rc
cp fs/s.jsonl final.jsonl
""", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "full.rc").read_text().strip() == "rc=2"
    err = one_error((tmp_path / "full.err").read_text())
    assert err == ("error: fs/s.jsonl: cannot write: no space left on device (what was written so far is kept: "
                   "free space and rerun to resume)")
    partial = (tmp_path / "partial.jsonl").read_bytes()
    complete = partial[:partial.rfind(b"\n") + 1]  # a cut-short last line may follow
    kept = [json.loads(ln) for ln in complete.decode().splitlines()]
    assert 0 < len(kept) < 60
    assert (tmp_path / "resumed.rc").read_text().strip() == "rc=0", (tmp_path / "resumed.err").read_text()
    assert f"({len(kept)} already present)" in (tmp_path / "resumed.out").read_text()
    final = (tmp_path / "final.jsonl").read_bytes()
    assert final.startswith(complete)
    ids = [json.loads(ln)["id"] for ln in final.decode().splitlines()]
    assert len(ids) == 60 and len(set(ids)) == 60


@needs_tmpfs
def test_read_only_and_full_file_systems_for_every_part_a_command(tmp_path, tiny_model_dir):
    make_corpus(tmp_path / "c", n=4)
    sr = f"{sys.executable} -m selfrec_ft"
    commands = {
        "generate": f"{sr} generate --model {tiny_model_dir} --corpus c --source tiny --max-new-tokens 2 --out fs/s.jsonl",
        "pairs": f"{sr} pairs --corpus c --self-source lead --n-articles 2 --out fs/p.jsonl",
        "synth": f"{sr} synth-corpus fs/synth --n 400",
        "tiny": f"{sr} make-tiny-model fs/model",
    }
    script = "mkdir fs && mount -t tmpfs -o size=4k,ro tmpfs fs\n"
    script += "".join(f"{cmd} 2>ro-{name}.err; echo $? > ro-{name}.rc\n" for name, cmd in commands.items())
    script += "mount -o remount,rw,size=16k fs\n"
    script += "".join(f"{commands[name]} 2>full-{name}.err; echo $? > full-{name}.rc\n" for name in ("synth", "tiny"))
    proc = _in_namespace(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    where = {"generate": "fs/s.jsonl", "pairs": "fs/p.jsonl", "synth": "fs/synth", "tiny": "fs/model"}
    for name in commands:
        assert (tmp_path / f"ro-{name}.rc").read_text().strip() == "2", name
        assert one_error((tmp_path / f"ro-{name}.err").read_text()) == \
            f"error: {where[name]}: cannot write: read-only file system", name
    assert (tmp_path / "full-synth.rc").read_text().strip() == "2"
    assert one_error((tmp_path / "full-synth.err").read_text()) == (
        "error: fs/synth/articles.jsonl: cannot write: no space left on device (the file was left as it was: "
        "free space and rerun)")
    assert (tmp_path / "full-tiny.rc").read_text().strip() == "2"
    tiny = one_error((tmp_path / "full-tiny.err").read_text())
    assert tiny.startswith("error: fs/model: cannot write: ") and "No space left on device" in tiny
