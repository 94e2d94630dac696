"""Hostile-input fuzz (issue 15): a table of hostile-but-realistic cases against every ``selfrec``
command and the three recipes, each run as its own process, each outcome classified:

* clean error: exit status 2, exactly one ``error:`` line on stderr (naming what the case expects),
  no ``Traceback``;
* traceback: a ``Traceback`` or any other failing exit status (a crash that is not one line);
* silently wrong: exit status 0 where an error was due;
* other: a clean-looking failure whose line misses what the case expects, or a case that hung.

Every case is a user mistake, so every case must be a clean error. The inputs (a tiny model and its
broken copies, corpora, presets, recipe/sweep YAMLs, comparison files) are built once into a
temporary workspace. Most cases run in a process forked from one that imported the heavy stack
(torch, transformers, TRL) once, exactly as ``selfrec ARGV`` / ``python recipes/X.py ARGV`` would
run in a fresh interpreter (the entry point is called; an uncaught exception prints its traceback
and exits 1); a few run as real subprocesses (``python recipes/*.py``, ``python -m selfrec_ft``,
a read-only file system through ``unshare -rm`` when available). About 2-4 minutes on 2 cores.

    python benchmarks/fuzz_hostile.py [--only SUBSTRING] [--keep DIR] [--verbose]

The last line is ``N cases: A clean errors, B tracebacks, C silently wrong`` (``, D other`` when
there are any); the exit status is 0 only when every case was a clean error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASE_TIMEOUT_S = 300


@dataclass(frozen=True)
class Case:
    """``kind``: ``cli`` (``selfrec ARGV``), ``sft`` / ``dpo`` / ``sweep`` (``python recipes/X.py
    ARGV``), ``proc`` (a real subprocess: ``argv`` is the command) or ``rofs`` (``selfrec ARGV`` with
    ``{ro}`` on a read-only file system). ``expect``: text the error line must contain."""

    name: str
    kind: str
    argv: tuple[str, ...]
    expect: str = ""


RECIPES = {"sft": REPO / "recipes" / "selfrec_sft.py", "dpo": REPO / "recipes" / "attribute_dpo.py",
           "sweep": REPO / "recipes" / "sweep_recognition.py"}


# ----------------------------------------------------------------------------- workspace


def build_workspace(w: Path) -> None:
    """Every input the cases name, under ``w`` (runs in a child process: torch computes here)."""
    import yaml

    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus
    from selfrec_ft.models.tiny import make_tiny_model

    m = make_tiny_model(w / "m", seed=0, size="tiny")
    write_corpus(synth_corpus("short", 12, seed=1), w / "c")
    write_corpus(synth_corpus("highlights", 6, seed=2), w / "ood")

    def model_variant(name, edit):
        d = w / name
        shutil.copytree(m, d)
        edit(d)

    model_variant("m_notok", lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")])
    model_variant("m_badcfg", lambda d: (d / "config.json").write_text('{"model_type": "llama",'))
    model_variant("m_notype", lambda d: (d / "config.json").write_text('{"hidden_size": 8}'))
    model_variant("m_bin", lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"))
    model_variant("m_noweights", lambda d: (d / "model.safetensors").unlink())
    (w / "m_empty").mkdir()
    (w / "ad_bin").mkdir()
    (w / "ad_bin" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(m)}))
    (w / "ad_bin" / "adapter_model.bin").write_bytes(b"\x80\x02")
    (w / "ad_badcfg").mkdir()
    (w / "ad_badcfg" / "adapter_config.json").write_text("{")
    (w / "afile").write_text("x")
    (w / "adir").mkdir()

    def corpus_variant(name, edit):
        d = w / name
        shutil.copytree(w / "c", d)
        edit(d)

    corpus_variant("c_empty", lambda d: [(d / f).write_text("") for f in ("articles.jsonl", "summaries.jsonl")])
    corpus_variant("c_utf8", lambda d: (d / "summaries.jsonl").write_bytes(
        (d / "summaries.jsonl").read_bytes().replace(b'"summary": "', b'"summary": "\xe9', 1)))
    corpus_variant("c_badjson", lambda d: (d / "articles.jsonl").write_text(
        (d / "articles.jsonl").read_text() + '{"id": "x", "article": \n'))
    corpus_variant("c_noart", lambda d: (d / "articles.jsonl").unlink())
    corpus_variant("c_utf16", lambda d: (d / "articles.jsonl").write_bytes(
        (d / "articles.jsonl").read_text().encode("utf-16")))
    corpus_variant("c_nofield", lambda d: (d / "summaries.jsonl").write_text('{"id": "a0", "source": "lead"}\n'))
    corpus_variant("c_dup", lambda d: (d / "articles.jsonl").write_text(
        (d / "articles.jsonl").read_text().splitlines()[0] + "\n" + (d / "articles.jsonl").read_text()))

    preset = yaml.safe_load((REPO / "selfrec_ft" / "prompts" / "presets" / "panickssery2024.yaml").read_text())

    def preset_variant(name, edit):
        data = json.loads(json.dumps(preset))
        edit(data)
        (w / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    rec = "pairwise-recognition"
    preset_variant("p_nosum2", lambda d: d["tasks"][rec].update(user=d["tasks"][rec]["user"].replace("{summary2}", "")))
    preset_variant("p_unknown", lambda d: d["tasks"][rec].update(user=d["tasks"][rec]["user"] + " {nonsense}"))
    preset_variant("p_brace", lambda d: d["tasks"][rec].update(user=d["tasks"][rec]["user"] + " {"))
    preset_variant("p_oneopt", lambda d: d["tasks"][rec].update(options=["1"]))
    preset_variant("p_sameopt", lambda d: d["tasks"][rec].update(options=["1", "1"]))
    (w / "p_utf8.yaml").write_bytes(b"# caf\xe9\n" + (w / "p_nosum2.yaml").read_bytes())
    (w / "p_badyaml.yaml").write_text("name: x\ntasks: [unclosed\n")
    (w / "p_list.yaml").write_text("- a\n- b\n")

    def write(name, text):
        (w / name).write_text(text)

    sft_base = (f"use_cpu: true\nbf16: false\nmodel_name_or_path: {m}\ncorpus: {w / 'c'}\nself_source: lead\n"
                f"others: human\nn_articles: 2\noutput_dir: {w / 'sft_out'}\nhook_in_domain: ''\nhook_out_of_domain: ''\n")
    write("sft_badtype.yaml", sft_base + "per_device_train_batch_size: eight\n")
    write("sft_listtype.yaml", sft_base + "learning_rate: [1, 2]\n")
    write("sft_unknown.yaml", sft_base + "lerning_rate: 0.1\n")
    write("sft_steps0.yaml", sft_base + "max_steps: 0\n")
    write("sft_badyaml.yaml", sft_base + "max_steps: [1\n")
    write("sft_notmap.yaml", "- max_steps\n")
    write("sft_boolstr.yaml", sft_base + "use_peft: maybe\n")
    write("sft_choice.yaml", sft_base + "labels: sometimes\n")
    write("sft_flip.yaml", sft_base + "flip_fraction: 1.5\n")
    (w / "sft_utf8.yaml").write_bytes(sft_base.encode() + b"# caf\xe9\n")
    dpo_base = (f"use_cpu: true\nbf16: false\nmodel_name_or_path: {m}\ncorpus: {w / 'c'}\nothers: human\n"
                f"n_articles: 2\nuse_peft: true\noutput_dir: {w / 'dpo_out'}\nout_of_domain: ''\nhook_in_domain: ''\nhook_out_of_domain: ''\n")
    write("dpo_badtype.yaml", dpo_base + "num_candidates: many\n")
    write("dpo_unknown.yaml", dpo_base + "atribute: lengthy\n")
    write("dpo_cands.yaml", dpo_base + "num_candidates: 1\n")
    write("dpo_steps.yaml", dpo_base + "max_steps: -3\n")
    write("sw_base.yaml", sft_base + "max_steps: 1\n")
    write("sw_emptygrid.yaml", f"base: {w / 'sw_base.yaml'}\noutput_dir: {w / 'sw_out'}\ngrid: {{}}\n")
    write("sw_nogrid.yaml", f"base: {w / 'sw_base.yaml'}\noutput_dir: {w / 'sw_out'}\n")
    write("sw_badtype.yaml", f"base: {w / 'sw_base.yaml'}\noutput_dir: {w / 'sw_out'}\ngrid: {{n_articles: [two]}}\n")
    write("sw_nobase.yaml", f"base: {w / 'missing.yaml'}\noutput_dir: {w / 'sw_out'}\ngrid: {{labels: [self]}}\n")
    write("sw_unknown.yaml", f"base: {w / 'sw_base.yaml'}\noutput_dir: {w / 'sw_out'}\ngrid: {{bogus: [1]}}\n")
    write("sw_badyaml.yaml", "grid: {labels: [self\n")
    write("sw_basebad.yaml", f"base: {w / 'sft_badtype.yaml'}\noutput_dir: {w / 'sw_out'}\ngrid: {{labels: [self]}}\n")

    row = {"features": {"lengthy": 1}, "preferred": 1}
    write("cmp_badjson.jsonl", json.dumps(row) + "\n{oops\n")
    write("cmp_value.jsonl", json.dumps({"features": {"lengthy": 2}, "preferred": 1}) + "\n")
    write("cmp_noprefs.jsonl", json.dumps({"features": {"lengthy": 1}}) + "\n")
    write("cmp_unknown.jsonl", json.dumps({"features": {"lenghty": 1}, "preferred": 1}) + "\n")
    (w / "cmp_utf8.jsonl").write_bytes(json.dumps(row).encode() + b"\n\xff\n")
    write("cmp_empty.jsonl", "")
    write("ex_badjson.jsonl", '{"article_id": "a0", "task":\n')
    (w / "ex_utf8.jsonl").write_bytes(b'{"id": "\xe9"}\n')
    write("ex_empty.jsonl", "")
    write("p1_prob.json", json.dumps({"a0": {"forward_detection": {"1": 5.0, "2": 0.1}}}))
    (w / "sweep_norun").mkdir()


# ----------------------------------------------------------------------------- the table


def cases(w: Path) -> list[Case]:
    m, c = str(w / "m"), str(w / "c")
    ev = ("eval", "--corpus", c, "--self-source", "lead", "--limit", "2")
    gen = ("generate", "--corpus", c, "--source", "tiny", "--max-new-tokens", "2")
    pairs = ("pairs", "--corpus", c, "--self-source", "lead", "--n-articles", "2")
    sft = ("--model_name_or_path", m, "--corpus", c, "--self_source", "lead", "--others", "human",
           "--n_articles", "2", "--output_dir", str(w / "sft_out"), "--max_steps", "1",
           "--hook_in_domain", "", "--hook_out_of_domain", "")
    dpo = ("--model_name_or_path", m, "--corpus", c, "--others", "human", "--n_articles", "2", "--use_peft", "true",
           "--output_dir", str(w / "dpo_out"), "--max_steps", "1", "--out_of_domain", "", "--hook_in_domain", "",
           "--hook_out_of_domain", "", "--num_candidates", "2", "--eval_limit", "2", "--max_new_tokens", "4")
    t: list[Case] = []

    class _Out:  # a fresh output path per case (an eval that wrongly succeeded must not steer the next)
        def __str__(self):
            return str(w / f"out{len(t)}")

    out = _Out()

    def add(name, kind, argv, expect=""):
        t.append(Case(name, kind, tuple(str(a) for a in argv), expect))

    # --- model directories (items 8, 12), for eval, generate, train, dpo, dissect and pairs --tokenizer
    models = {"m_notok": "no tokenizer files", "m_empty": "model directory is empty",
              "m_badcfg": "not valid JSON", "m_notype": 'no "model_type"', "m_bin": "only pytorch_model.bin",
              "m_noweights": "no model weights", "missing": "model path not found", "afile": "not a model directory",
              "ad_bin": "only adapter_model.bin", "ad_badcfg": "not valid JSON"}
    for name, expect in models.items():
        d = w / name
        add(f"eval model {name}", "cli", (*ev, "--model", d, "--out", out), expect)
        add(f"train model {name}", "sft", (*sft, "--model_name_or_path", d), expect)
    for name in ("m_notok", "m_bin", "missing", "m_badcfg"):
        add(f"generate model {name}", "cli", (*gen, "--model", w / name, "--out", w / "g.jsonl"), models[name])
        add(f"dpo model {name}", "dpo", (*dpo, "--model_name_or_path", w / name), models[name])
        add(f"dissect judge {name}", "cli", ("dissect", "--comparisons", w / "cmp_noprefs.jsonl", "--judge", w / name,
                                              "--out", out), models[name])
    typo = "no-such-runs-dir/model"  # owner/name form: tried as a hub id (offline, or no such repo)
    add("eval model typo'd relative path", "cli", (*ev, "--model", typo, "--out", out), "no such local directory")
    add("train model typo'd relative path", "sft", (*sft, "--model_name_or_path", typo), "no such local directory")
    add("dpo model typo'd relative path", "dpo", (*dpo, "--model_name_or_path", typo), "no such local directory")
    add("pairs tokenizer m_notok", "cli", (*pairs, "--tokenizer", w / "m_notok", "--out", w / "p.jsonl"),
        "no tokenizer")
    add("dpo sft_adapter ad_bin", "dpo", (*dpo, "--sft_adapter", w / "ad_bin"), "only adapter_model.bin")

    # --- training values (item 6) and recipe YAMLs (item 14)
    for flag, value in (("max_steps", 0), ("max_steps", -3), ("per_device_train_batch_size", 0),
                        ("gradient_accumulation_steps", 0), ("learning_rate", -1), ("n_articles", 0),
                        ("save_steps", 0), ("hook_batch_size", 0)):
        extra = ("--save_strategy", "steps") if flag == "save_steps" else ()
        add(f"train --{flag} {value}", "sft", (*sft, *extra, f"--{flag}", value), f"--{flag} must be")
    for flag, value in (("max_steps", 0), ("max_steps", -3), ("per_device_train_batch_size", 0),
                        ("num_candidates", 1), ("bootstrap_resamples", 5), ("eval_limit", 0)):
        add(f"dpo --{flag} {value}", "dpo", (*dpo, f"--{flag}", value), f"--{flag} must be")
    add("train --max_steps x", "sft", (*sft, "--max_steps", "x"), "max_steps")
    add("train --bogus flag", "sft", (*sft, "--bogus", "1"), "--bogus")
    add("train --config missing", "sft", ("--config", w / "nope.yaml"), "not found")
    add("train --config no value", "sft", ("--config",), "--config needs")
    for name, expect in (("sft_badtype", "sft_badtype.yaml:11: per_device_train_batch_size must be an integer"),
                         ("sft_listtype", "sft_listtype.yaml:11: learning_rate must be a number, not a list"),
                         ("sft_unknown", 'sft_unknown.yaml:11: unknown key "lerning_rate"'),
                         ("sft_steps0", "sft_steps0.yaml:11: max_steps must be at least 1"),
                         ("sft_badyaml", "sft_badyaml.yaml:"), ("sft_notmap", "must be a YAML mapping"),
                         ("sft_boolstr", "sft_boolstr.yaml:11: use_peft must be true or false"),
                         ("sft_choice", "sft_choice.yaml:11: labels must be one of"),
                         ("sft_flip", "sft_flip.yaml:11: flip_fraction must be between 0 and 1"),
                         ("sft_utf8", "sft_utf8.yaml:11: not valid UTF-8")):
        add(f"train --config {name}", "sft", ("--config", w / f"{name}.yaml"), expect)
    for name, expect in (("dpo_badtype", "dpo_badtype.yaml:12: num_candidates must be an integer"),
                         ("dpo_unknown", 'dpo_unknown.yaml:12: unknown key "atribute"'),
                         ("dpo_cands", "dpo_cands.yaml:12: num_candidates must be at least 2"),
                         ("dpo_steps", "dpo_steps.yaml:12: max_steps must be at least 1"),
                         ("sft_utf8", "not valid UTF-8")):
        add(f"dpo --config {name}", "dpo", ("--config", w / f"{name}.yaml"), expect)
    add("dpo --attribute typo", "dpo", (*dpo, "--attribute", "lenghty"), "did you mean 'lengthy'?")
    add("dpo --direction sideways", "dpo", (*dpo, "--direction", "sideways"), "direction")
    add("train --output_dir is a file", "sft", (*sft, "--output_dir", w / "afile"), "cannot write")
    add("train --output_dir under a file", "sft", (*sft, "--output_dir", w / "afile" / "o"), "cannot write")
    add("dpo --output_dir is a file", "dpo", (*dpo, "--output_dir", w / "afile"), "cannot write")
    add("train corpus empty", "sft", (*sft, "--corpus", w / "c_empty"), "empty")
    add("train corpus non-UTF-8", "sft", (*sft, "--corpus", w / "c_utf8"), "not valid UTF-8")
    add("train unknown self source", "sft", (*sft, "--self_source", "nobody"), "nobody")
    add("train preset missing {summary2}", "sft", (*sft, "--prompt_preset", w / "p_nosum2.yaml"), "summary2")

    # --- sweeps (items 7, 14)
    for name, expect in (("sw_emptygrid", "grid"), ("sw_nogrid", "grid"), ("sw_badtype", "must be an integer"),
                         ("sw_nobase", "not found"), ("sw_unknown", "bogus"), ("sw_badyaml", "invalid YAML"),
                         ("sw_basebad", "per_device_train_batch_size must be an integer")):
        add(f"sweep --config {name}", "sweep", ("--config", w / f"{name}.yaml", "--prepare_only"), expect)
    add("sweep --bogus", "cli", ("sweep", "--bogus"), "unrecognized arguments")
    add("analyze no runs.json", "cli", ("analyze", w / "sweep_norun"), "runs.json")

    # --- eval, generate, pairs inputs
    add("eval corpus missing", "cli", (*ev, "--model", m, "--out", out, "--corpus", w / "nope"), "not found")
    add("eval corpus without articles", "cli", (*ev, "--model", m, "--out", out, "--corpus", w / "c_noart"),
        "articles.jsonl")
    add("eval corpus non-UTF-8", "cli", (*ev, "--model", m, "--out", out, "--corpus", w / "c_utf8"),
        "not valid UTF-8")
    add("eval corpus UTF-16", "cli", (*ev, "--model", m, "--out", out, "--corpus", w / "c_utf16"), "UTF-16")
    add("eval corpus bad JSON", "cli", (*ev, "--model", m, "--out", out, "--corpus", w / "c_badjson"), "articles.jsonl:13")
    add("eval corpus missing field", "cli", (*ev, "--model", m, "--out", out, "--corpus", w / "c_nofield"), "summary")
    add("eval corpus duplicate id", "cli", (*ev, "--model", m, "--out", out, "--corpus", w / "c_dup"), "")
    add("eval unknown self source", "cli", (*ev, "--model", m, "--out", out, "--self-source", "nobody"), "nobody")
    add("eval unknown task", "cli", (*ev, "--model", m, "--out", out, "--tasks", "telepathy"), "telepathy")
    add("eval --limit 0", "cli", (*ev, "--model", m, "--out", out, "--limit", "0"), "--limit")
    add("eval --batch-size 0", "cli", (*ev, "--model", m, "--out", out, "--batch-size", "0"), "--batch-size")
    add("eval --out is a file", "cli", (*ev, "--model", m, "--out", w / "afile"), "cannot write")
    add("eval --out under a file", "cli", (*ev, "--model", m, "--out", w / "afile" / "x"), "cannot write")
    add("eval --familiarity without domain", "cli", (*ev, "--model", m, "--out", out, "--familiarity"), "--domain")
    add("eval unknown dtype", "cli", (*ev, "--model", m, "--out", out, "--dtype", "int3"), "--dtype")
    add("eval unknown preset", "cli", (*ev, "--model", m, "--out", out, "--prompt-preset", "nopreset"), "nopreset")
    for name, expect in (("p_nosum2", "summary2"), ("p_unknown", "nonsense"), ("p_brace", "{"),
                         ("p_oneopt", "option"), ("p_sameopt", "option"), ("p_utf8", "not valid UTF-8"),
                         ("p_badyaml", "invalid YAML"), ("p_list", "")):
        add(f"eval preset {name}", "cli", (*ev, "--model", m, "--out", out, "--prompt-preset", w / f"{name}.yaml"), expect)
        add(f"pairs preset {name}", "cli", (*pairs, "--prompt-preset", w / f"{name}.yaml", "--out", w / "p.jsonl"), expect)
    add("generate --max-length 5", "cli", (*gen, "--model", m, "--max-length", "5", "--out", w / "g.jsonl"),
        "max_length 5")
    add("generate --out is a directory", "cli", (*gen, "--model", m, "--out", w / "adir"), "directory")
    add("generate corpus non-UTF-8", "cli", (*gen, "--model", m, "--corpus", w / "c_utf8"), "not valid UTF-8")
    add("generate --max-new-tokens 0", "cli", (*gen, "--model", m, "--max-new-tokens", "0"), "--max-new-tokens")
    add("pairs empty corpus", "cli", (*pairs, "--corpus", w / "c_empty", "--out", w / "p.jsonl"), "corpus is empty")
    add("pairs n-articles too many", "cli", (*pairs, "--n-articles", "99", "--out", w / "p.jsonl"), "n_articles")
    add("pairs --out is a directory", "cli", (*pairs, "--out", w / "adir"), "directory")
    add("pairs unknown label strategy", "cli", (*pairs, "--labels", "whim", "--out", w / "p.jsonl"), "--labels")

    # --- report, dissect, corpus, synth-corpus, make-tiny-model, argument errors
    add("report bad JSON line", "cli", ("report", w / "ex_badjson.jsonl"), "ex_badjson.jsonl:1")
    add("report non-UTF-8", "cli", ("report", w / "ex_utf8.jsonl"), "not valid UTF-8")
    add("report missing file", "cli", ("report", w / "nope.jsonl"), "not found")
    add("report empty file", "cli", ("report", w / "ex_empty.jsonl"), "")
    add("report P1 probability 5", "cli", ("report", "--format", "p1", w / "p1_prob.json"), "")
    for name, expect in (("cmp_badjson", "cmp_badjson.jsonl:2"), ("cmp_value", "cmp_value.jsonl:1"),
                         ("cmp_noprefs", "preferred"), ("cmp_unknown", "lenghty"), ("cmp_utf8", "not valid UTF-8"),
                         ("cmp_empty", "")):
        add(f"dissect {name}", "cli", ("dissect", "--comparisons", w / f"{name}.jsonl", "--out", out, "--method", "map"),
            expect)
    add("dissect --out is a file", "cli", ("dissect", "--comparisons", w / "cmp_value.jsonl", "--out", w / "afile"),
        "cannot write")
    add("dissect neither mode", "cli", ("dissect", "--out", out), "--comparisons")
    add("dissect self-preference without judge", "cli", ("dissect", "--self-preference", "--corpus", c,
                                                         "--self-source", "lead", "--out", out), "--judge")
    add("corpus check missing", "cli", ("corpus", "check", w / "nope"), "not found")
    add("corpus check bad JSON", "cli", ("corpus", "check", w / "c_badjson"), "articles.jsonl:13")
    add("corpus check non-UTF-8", "cli", ("corpus", "check", w / "c_utf8"), "not valid UTF-8")
    add("synth-corpus --n 0", "cli", ("synth-corpus", w / "s", "--n", "0"), "--n")
    add("synth-corpus into a file", "cli", ("synth-corpus", w / "afile"), "cannot write")
    add("make-tiny-model into a file", "cli", ("make-tiny-model", w / "afile"), "cannot write")
    add("unknown command", "cli", ("genrate",), "invalid choice")
    add("no command", "cli", (), "required")
    add("eval missing required", "cli", ("eval", "--model", m), "required")

    # --- real processes: the recipes and the module entry, as a user starts them
    py = sys.executable
    add("python recipes/selfrec_sft.py bad config", "proc", (py, RECIPES["sft"], "--config", w / "sft_badtype.yaml"),
        "must be an integer")
    add("python recipes/attribute_dpo.py bad config", "proc", (py, RECIPES["dpo"], "--config", w / "dpo_unknown.yaml"),
        "atribute")
    add("python recipes/sweep_recognition.py bad config", "proc",
        (py, RECIPES["sweep"], "--config", w / "sw_emptygrid.yaml", "--prepare_only"), "grid")
    add("python -m selfrec_ft train --max_steps -3", "proc", (py, "-m", "selfrec_ft", "train", *sft, "--max_steps", "-3"),
        "--max_steps must be")

    # --- a read-only file system (unshare -rm + tmpfs; skipped where unavailable)
    for name, argv in (("eval", (*ev, "--model", m, "--out", "{ro}/e")), ("pairs", (*pairs, "--out", "{ro}/p.jsonl")),
                       ("train", ("train", *sft, "--output_dir", "{ro}/t")),
                       ("dissect", ("dissect", "--comparisons", w / "cmp_value.jsonl", "--out", "{ro}/d")),
                       ("generate", (*gen, "--model", m, "--out", "{ro}/g.jsonl"))):
        add(f"{name} on a read-only file system", "rofs", argv, "read-only file system")
    return t


# ----------------------------------------------------------------------------- running


def _entry(kind: str, argv: list[str]) -> int | str | None:
    """Run one case as its program would in a fresh interpreter (in a forked child)."""
    if kind == "cli":
        from selfrec_ft.cli import main

        return main(argv)
    import runpy

    sys.argv = [str(RECIPES[kind]), *argv]
    runpy.run_path(str(RECIPES[kind]), run_name="__main__")
    return 0


def start_forked(kind: str, argv: list[str], log: Path) -> int:
    """Fork a child that runs ``kind``'s entry point on ``argv`` (stderr into ``log``); its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(fd, 2)
    code = 1
    try:
        import torch

        torch.set_num_threads(1)  # two cases run side by side
        rc = _entry(kind, argv)
        code = 0 if rc is None else rc
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001  (what the interpreter does with an uncaught exception)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code) & 0xFF)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs tmpfs $d"],
                           capture_output=True)
    return probe.returncode == 0


def start_process(case: Case, w: Path, log: Path) -> subprocess.Popen:
    """A ``proc`` or ``rofs`` case as a real subprocess, stderr into ``log``."""
    if case.kind == "proc":
        cmd = list(case.argv)
    else:
        import shlex

        ro = w / f"ro-{log.stem}"
        ro.mkdir(exist_ok=True)
        argv = [a.replace("{ro}", str(ro)) for a in case.argv]
        selfrec = shlex.join([sys.executable, "-m", "selfrec_ft", *argv])
        cmd = ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(ro))} && exec {selfrec}"]
    with open(log, "w") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=_env(), cwd=w)


def classify(case: Case, rc: int, err: str) -> str:
    """``clean``, ``traceback``, ``silent`` or ``other`` (see the module docstring)."""
    if rc == 0:
        return "silent"
    if "Traceback" in err or rc != 2:
        return "other" if rc == -9 else "traceback"
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    if len(lines) != 1 or case.expect not in lines[0]:
        return "other"
    return "clean"


def summary_line(counts: Counter) -> str:
    n = sum(counts.values())
    line = (f"{n} cases: {counts['clean']} clean errors, {counts['traceback']} tracebacks, "
            f"{counts['silent']} silently wrong")
    return line + (f", {counts['other']} other" if counts["other"] else "")


def run_cases(table: list[Case], w: Path, verbose: bool = False, out=sys.stdout, jobs: int = 2) -> Counter:
    """Run ``table`` in workspace ``w``, ``jobs`` cases at a time (real subprocesses first: they take
    longest); prints one line per case that is not a clean error (every case with ``verbose``) and
    returns the counts."""
    counts: Counter = Counter()
    if any(c.kind == "rofs" for c in table) and not _can_mount_tmpfs():
        print("(no `unshare -rm` with tmpfs here: the read-only file system cases are skipped)", file=out)
        table = [c for c in table if c.kind != "rofs"]
    logs = w / "logs"
    logs.mkdir(exist_ok=True)

    def record(case: Case, rc: int, err: str, seconds: float) -> None:
        verdict = classify(case, rc, err)
        counts[verdict] += 1
        if verbose or verdict != "clean":
            lines = [ln for ln in err.splitlines() if ln.startswith("error:")] or err.strip().splitlines()[-1:]
            print(f"[{verdict}] {case.name} ({seconds:.1f} s): rc={rc} {lines[0][:300] if lines else ''}"
                  + (f" (expected {case.expect!r})" if verdict == "other" else ""), file=out, flush=True)

    queue = sorted(enumerate(table), key=lambda ic: ic[1].kind not in ("proc", "rofs"))
    running: dict = {}  # handle -> (case, log, start); handle: a forked pid or a Popen
    while queue or running:
        while queue and len(running) < jobs:
            i, case = queue.pop(0)
            log = logs / f"{i}.err"
            handle = (start_process(case, w, log) if case.kind in ("proc", "rofs")
                      else start_forked(case.kind, list(case.argv), log))
            running[handle] = (case, log, time.monotonic())
        for handle, (case, log, t0) in list(running.items()):
            if isinstance(handle, subprocess.Popen):  # reaped by pid: Popen reaps its own
                rc = handle.poll()
            else:
                done, status = os.waitpid(handle, os.WNOHANG)
                rc = os.waitstatus_to_exitcode(status) if done else None
            hung = rc is None and time.monotonic() - t0 > CASE_TIMEOUT_S
            if hung:
                if isinstance(handle, subprocess.Popen):
                    handle.kill()
                    handle.wait()
                else:
                    os.kill(handle, 9)
                    os.waitpid(handle, 0)
                rc = -9
            if rc is not None:
                running.pop(handle)
                record(case, rc, log.read_text(errors="replace") + ("\n(hung: killed)" if hung else ""),
                       time.monotonic() - t0)
        time.sleep(0.05)
    return counts


def preload() -> None:
    """Import what the commands import, once, before forking (no torch computation here)."""
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from trl import DPOConfig, DPOTrainer, ModelConfig, SFTConfig, SFTTrainer, TrlParser  # noqa: F401  (lazy names)

    from selfrec_ft.cli import main  # noqa: F401
    from selfrec_ft.scripts import dpo, sft, sweep  # noqa: F401
    from selfrec_ft.training import dpo as _dpo_runner  # noqa: F401
    from selfrec_ft.training import sft as _sft_runner  # noqa: F401


def prepare(w: Path) -> None:
    """Build the workspace in a child process (so this process never runs torch before forking)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            build_workspace(w)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("building the workspace failed")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", help="run only the cases whose name contains this text (repeatable)")
    p.add_argument("--keep", help="build the workspace here and keep it (default: a temporary directory)")
    p.add_argument("--jobs", type=int, default=2, help="forked cases run side by side (default 2)")
    p.add_argument("--verbose", action="store_true", help="print every case, not only the failures")
    args = p.parse_args(argv)
    for k, v in _env().items():
        os.environ[k] = v
    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()
    w = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="selfrec-fuzz-"))
    w.mkdir(parents=True, exist_ok=True)
    try:
        if not (w / "m" / "config.json").exists():
            prepare(w)
        table = cases(w)
        if args.only:
            table = [c for c in table if any(o in c.name for o in args.only)]
        preload()
        counts = run_cases(table, w, verbose=args.verbose, jobs=args.jobs)
    finally:
        if not args.keep:
            shutil.rmtree(w, ignore_errors=True)
    kinds = Counter(c.kind for c in table)
    print(f"table: {len(table)} cases ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}); "
          f"{time.perf_counter() - t0:.0f} s")
    print(summary_line(counts))
    return 0 if counts["clean"] == sum(counts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
