"""`selfrec eval` / evaluate(): rows, resume after a kill, reports, CLI errors; scoring items."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import selfrec_ft.scoring.evaluate as evaluate_mod
from selfrec_ft.cli import main
from selfrec_ft.data.corpus import load_corpus
from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import read_jsonl_rows
from selfrec_ft.scoring.evaluate import evaluate
from selfrec_ft.scoring.items import build_items, row_key
from selfrec_ft.scoring.scorer import Scorer
from selfrec_ft.scoring.spec import EvalSpec

# individual-recognition needs "Yes"/"No" to be single tokens, which the tiny tokenizer lacks.
TASKS = ["pairwise-recognition", "pairwise-preference", "individual-score"]
SKIP = 2  # training articles


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_eval(model_dir, corpus_dir, out, familiarity=False, max_length=None, chunk_items=None, **kw):
    kw.setdefault("tasks", TASKS)
    if familiarity:
        kw["tasks"] = [*kw["tasks"], "familiarity"]
    spec = EvalSpec(corpus=corpus_dir, self_source="lead", skip_first=SKIP, n_resamples=200, **kw)
    with pytest.MonkeyPatch.context() as mp:
        if chunk_items is not None:
            mp.setattr(evaluate_mod, "CHUNK_ITEMS", chunk_items)
        return evaluate(Scorer(str(model_dir), max_length=max_length), spec, out, progress=False)


def rows_by_key(path: Path) -> dict[tuple, dict]:
    rows = read_jsonl_rows(path)
    keyed = {row_key(r): r for r in rows}
    assert len(keyed) == len(rows), "duplicate rows"
    return keyed


def assert_same_rows(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, ra in a.items():
        rb = b[k]
        assert {x: v for x, v in ra.items() if x not in ("probs", "option_mass", "mean_logprob")} == \
               {x: v for x, v in rb.items() if x not in ("probs", "option_mass", "mean_logprob")}
        for o, p in (ra.get("probs") or {}).items():
            assert abs(p - rb["probs"][o]) <= 1e-6
        if "mean_logprob" in ra:
            assert abs(ra["mean_logprob"] - rb["mean_logprob"]) <= 1e-5


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, short_corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-full")
    result = run_eval(tiny_model_dir, short_corpus_dir, out, familiarity=True, domain="short", chunk_items=7)
    return out, result


def test_rows_reports_and_schema(full_run, short_corpus_dir, tiny_model_dir):
    out, result = full_run
    corpus = load_corpus(short_corpus_dir)
    n_articles = len(corpus.articles) - SKIP
    rows = read_jsonl_rows(out / "examples.jsonl")
    by_task = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    # one other source (human), two orders; individual and familiarity: both sources' summaries
    assert len(by_task["pairwise-recognition"]) == len(by_task["pairwise-preference"]) == 2 * n_articles
    assert len(by_task["individual-score"]) == len(by_task["familiarity"]) == 2 * n_articles
    assert {r["article_id"] for r in rows} == {a.id for a in corpus.articles[SKIP:]}
    for r in by_task["pairwise-recognition"]:
        assert r["self_option"] == {"forward": "1", "backward": "2"}[r["order"]]
        assert r["other_source"] == "human" and r["self_source"] == "lead" and r["domain"] == "short"
        assert set(r["probs"]) == {"1", "2"}
        assert r["option_mass"] == pytest.approx(sum(r["probs"].values()))
    assert {r["target_source"] for r in by_task["individual-score"]} == {"lead", "human"}
    assert all(set(r["probs"]) == set("12345") for r in by_task["individual-score"])
    assert all(math.isfinite(r["mean_logprob"]) and r["mean_logprob"] < 0 and r["n_tokens"] > 0
               for r in by_task["familiarity"])

    report = json.loads((out / "report.json").read_text())
    assert report["pairwise"]["recognition"]["n"] == n_articles
    assert report["meta"]["eval"]["prompts"] == len(rows)
    from transformers import AutoConfig  # max_length defaults to the model's context

    assert report["meta"]["eval"]["max_length"] == AutoConfig.from_pretrained(tiny_model_dir).max_position_embeddings
    assert set(report["familiarity"]["by_source"]) == {"lead", "human"}
    md = (out / "report.md").read_text()
    assert "| recognition |" in md and "Familiarity" in md
    assert result.report["pairwise"] == report["pairwise"]
    assert result.scored == len(rows) and result.resumed == 0


def test_resume_after_partial_last_line(full_run, tiny_model_dir, short_corpus_dir, tmp_path):
    full_out, _ = full_run
    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval_config.json").write_bytes((full_out / "eval_config.json").read_bytes())
    lines = (full_out / "examples.jsonl").read_bytes().splitlines(keepends=True)
    keep = len(lines) // 3
    # a kill during a write: complete lines, then half of the next one
    (out / "examples.jsonl").write_bytes(b"".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])
    result = run_eval(tiny_model_dir, short_corpus_dir, out, familiarity=True, domain="short", chunk_items=7)
    assert result.resumed == keep and result.scored == len(lines) - keep
    assert_same_rows(rows_by_key(out / "examples.jsonl"), rows_by_key(full_out / "examples.jsonl"))
    assert (out / "report.json").exists()
    # everything done: a rerun scores nothing and rewrites the same report
    again = run_eval(tiny_model_dir, short_corpus_dir, out, familiarity=True, domain="short")
    assert again.scored == 0
    assert again.report["pairwise"] == result.report["pairwise"]


KILL_SCRIPT = """
import sys, time
import selfrec_ft.scoring.evaluate as ev
import selfrec_ft.scoring.scorer as sc
real = sc.score_requests
def slow(*a, **k):
    out = real(*a, **k)
    time.sleep(0.4)
    return out
sc.score_requests = slow
ev.CHUNK_ITEMS = 7
spec = ev.EvalSpec(corpus=sys.argv[2], self_source="lead", skip_first=2, n_resamples=200, domain="short",
                   tasks=["pairwise-recognition", "pairwise-preference", "individual-score", "familiarity"])
ev.evaluate(ev.Scorer(sys.argv[1]), spec, sys.argv[3], progress=False)
"""


def test_killed_run_resumes_to_the_rows_of_an_uninterrupted_run(full_run, tiny_model_dir, short_corpus_dir,
                                                                 tmp_path):
    full_out, _ = full_run
    out = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tiny_model_dir), str(short_corpus_dir), str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    examples = out / "examples.jsonl"
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            if examples.exists() and examples.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    written = read_jsonl_rows(examples)
    total = len(read_jsonl_rows(full_out / "examples.jsonl"))
    assert 0 < len(written) < total
    assert not (out / "report.json").exists()
    result = run_eval(tiny_model_dir, short_corpus_dir, out, familiarity=True, domain="short")
    assert result.resumed == len(written)
    assert_same_rows(rows_by_key(examples), rows_by_key(full_out / "examples.jsonl"))


def test_resume_with_other_settings_is_refused(full_run, tiny_model_dir, short_corpus_dir):
    out, _ = full_run
    with pytest.raises(UserError, match="max_length"):
        run_eval(tiny_model_dir, short_corpus_dir, out, familiarity=True, domain="short", max_length=4000)


def test_evaluate_with_a_loaded_model_and_limit(tiny_model_dir, short_corpus_dir, tmp_path):
    from selfrec_ft.models.loading import load_model

    model, tok = load_model(tiny_model_dir, device="cpu")
    spec = EvalSpec(corpus=short_corpus_dir, self_source="human", others=["lead"], tasks=["pairwise-recognition"],
                    skip_first=5, limit=3, n_resamples=100)
    result = evaluate(Scorer(model, tok), spec, tmp_path / "e", progress=False)
    rows = read_jsonl_rows(result.examples_path)
    corpus = load_corpus(short_corpus_dir)
    assert [r["article_id"] for r in rows[::2]] == [a.id for a in corpus.articles[5:8]]
    assert result.report["pairwise"]["recognition"]["n"] == 3


# ----------------------------------------------------------------------------- items


def test_items_orders_groups_inversion_and_familiarity_span(tiny_tokenizer, short_corpus_dir):
    corpus = load_corpus(short_corpus_dir)
    ids = [a.id for a in corpus.articles[:3]]
    spec = EvalSpec(corpus=corpus, self_source="lead", tasks=["pairwise-recognition", "pairwise-preference",
                                                               "familiarity"],
                    templates={"pairwise-preference": "pairwise-preference-worse"}, domain="short")
    items = build_items(corpus, tiny_tokenizer, spec, ids)
    assert len(items) == 3 * (2 * 2 + 2) and items.shortened == 0
    for it in items:
        m = it.meta
        if m["task"] == "pairwise-recognition":
            assert m["self_option"] == {"forward": "1", "backward": "2"}[m["order"]]
        elif m["task"] == "pairwise-preference":  # "which is worse?": the self-favouring answer flips
            assert m["template"] == "pairwise-preference-worse"
            assert m["self_option"] == {"forward": "2", "backward": "1"}[m["order"]]
        else:
            assert m["task"] == "familiarity"
            text = corpus.summary(m["article_id"], m["target_source"])
            assert tiny_tokenizer.decode(it.request.span_ids).strip() == text.strip()
            assert tiny_tokenizer.decode(it.request.prompt_ids).rstrip().endswith("[/INST]")
    # forward shows the self summary first
    fwd = next(it for it in items if it.meta.get("order") == "forward")
    text = tiny_tokenizer.decode(fwd.request.prompt_ids)
    own, other = corpus.summary(fwd.meta["article_id"], "lead"), corpus.summary(fwd.meta["article_id"], "human")
    assert text.index(own) < text.index(other)
    groups = {it.request.group for it in items}
    assert len(groups) == 3 * 3  # (template, article) for both tasks and familiarity


def test_shortening_counts_and_keeps_one_article_per_group(tiny_tokenizer, short_corpus_dir):
    corpus = load_corpus(short_corpus_dir)
    ids = [a.id for a in corpus.articles[:2]]
    spec = EvalSpec(corpus=corpus, self_source="lead", tasks=["pairwise-recognition"])
    full = build_items(corpus, tiny_tokenizer, spec, ids)
    longest = max(len(it.request.prompt_ids) for it in full)
    cut = build_items(corpus, tiny_tokenizer, spec, ids, max_length=longest - 20)
    assert 0 < cut.shortened <= len(cut)
    for it in cut:
        assert len(it.request.prompt_ids) + 1 <= longest - 20
        summary = corpus.summary(it.meta["article_id"], it.meta["other_source"])
        assert summary in tiny_tokenizer.decode(it.request.prompt_ids)  # summaries are never cut
    for aid in ids:  # every prompt of an article shows the same (shortened) article
        group = [it for it in cut if it.meta["article_id"] == aid]
        assert len({it.shortened for it in group}) == 1
        prefix = os.path.commonprefix([it.request.prompt_ids for it in group])
        assert len(prefix) > 0.5 * min(len(it.request.prompt_ids) for it in group)

    fam_spec = spec.replace(tasks=["familiarity"], domain="short")
    fam = build_items(corpus, tiny_tokenizer, fam_spec, ids)
    budget = max(len(it.request.prompt_ids) + len(it.request.span_ids) for it in fam) - 15
    fam_cut = build_items(corpus, tiny_tokenizer, fam_spec, ids, max_length=budget)
    assert fam_cut.shortened > 0
    for it, full_it in zip(fam_cut, fam):
        assert len(it.request.prompt_ids) + len(it.request.span_ids) <= budget
        assert it.request.span_ids == full_it.request.span_ids
    for aid in ids:
        assert len({tuple(it.request.prompt_ids) for it in fam_cut if it.meta["article_id"] == aid}) == 1


# ----------------------------------------------------------------------------- CLI


def test_cli_eval_prints_the_table(tiny_model_dir, short_corpus_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["eval", "--model", str(tiny_model_dir), "--corpus", str(short_corpus_dir), "--self-source", "lead",
               "--tasks", "pairwise-recognition", "--skip-first", "8", "--no-progress", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| recognition |" in printed
    assert (out / "report.md").read_text() == printed
    assert len(read_jsonl_rows(out / "examples.jsonl")) == 2 * 4


@pytest.mark.parametrize("extra, message", [
    (["--self-source", "nobody"], "unknown source(s) nobody"),
    (["--self-source", "lead", "--others", "human,ghost"], "unknown source(s) ghost"),
    (["--self-source", "lead", "--tasks", "pairwise-recognition,guessing"], "unknown task(s) guessing"),
    (["--self-source", "lead", "--familiarity"], "--familiarity needs --domain"),
    (["--self-source", "lead", "--skip-first", "99"], "no articles to evaluate"),
    (["--self-source", "lead", "--prompt-preset", "nope"], "unknown prompt preset"),
])
def test_cli_errors_are_one_line(tiny_model_dir, short_corpus_dir, tmp_path, capsys, extra, message):
    rc = main(["eval", "--model", str(tiny_model_dir), "--corpus", str(short_corpus_dir), *extra,
               "--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_cli_missing_model_is_one_line(short_corpus_dir, tmp_path, capsys):
    rc = main(["eval", "--model", str(tmp_path / "none"), "--corpus", str(short_corpus_dir), "--self-source",
               "lead", "--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "model path not found" in err


# ----------------------------------------------------------------------------- Scorer and EvalSpec


def test_scorer_from_a_path_and_from_a_loaded_model_give_identical_rows(tiny_model_dir, short_corpus_dir, tmp_path):
    from selfrec_ft.models.loading import load_model

    spec = EvalSpec(corpus=short_corpus_dir, self_source="lead", tasks=["pairwise-recognition", "individual-score"],
                    skip_first=6, limit=3, n_resamples=100)
    by_path = Scorer(str(tiny_model_dir), batch_size=5)
    assert by_path.owns_model and by_path._model is None  # tokenizer now, model on first use
    rows_path = by_path.score_items(by_path.items(spec))
    model, tok = load_model(tiny_model_dir, device="cpu")
    loaded = Scorer(model, tok, batch_size=5)
    assert not loaded.owns_model and loaded.dtype == by_path.dtype == "float32"
    assert loaded.max_length == by_path.max_length == model.config.max_position_embeddings
    rows_loaded = loaded.score_items(loaded.items(spec))
    assert [row_key(r) for r in rows_path] == [row_key(r) for r in rows_loaded]
    assert rows_path == rows_loaded  # same engine, same prompts, same weights: the very same numbers
    # close() frees the model a scorer loaded, only forgets one it was given
    by_path.close()
    assert by_path._model is None
    loaded.close()
    assert model.training is False and sum(p.numel() for p in model.parameters()) > 0


def test_a_finished_evaluation_is_read_back_without_loading_the_model(tiny_model_dir, short_corpus_dir, tmp_path):
    spec = EvalSpec(corpus=short_corpus_dir, self_source="lead", tasks=["pairwise-recognition"], skip_first=8,
                    n_resamples=100)
    first = evaluate(Scorer(str(tiny_model_dir)), spec, tmp_path, progress=False)
    assert first.scored == 2 * 4 and first.resumed == 0
    scorer = Scorer(str(tiny_model_dir))
    again = evaluate(scorer, spec, tmp_path, progress=False)
    assert again.scored == 0 and again.resumed == 2 * 4 and scorer._model is None
    assert again.report["pairwise"] == first.report["pairwise"]
    # the same directory with another spec (other articles) is refused
    with pytest.raises(UserError, match="skip_first"):
        evaluate(scorer, spec.replace(skip_first=7), tmp_path, progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"skip_first": -1}, "skip_first must be at least 0, got -1"),
    ({"limit": 0}, "limit must be at least 1, got 0"),
    ({"tasks": []}, "nothing to score"),
    ({"tasks": "pairwise-recognition,guessing"}, "unknown task(s) guessing"),
    ({"tasks": ["familiarity"]}, "familiarity needs a domain"),
    ({"n_resamples": 0}, "n_resamples must be at least 1"),
    ({"self_source": ""}, "no self source"),
])
def test_eval_spec_rejects_bad_values_in_one_line(kwargs, message):
    with pytest.raises(UserError) as info:
        EvalSpec(**{"corpus": "c", "self_source": "me", **kwargs})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_eval_spec_normalises_and_replaces():
    spec = EvalSpec(corpus="c", self_source="me", others="a, b", tasks=["pairwise-recognition"],
                    templates={"pairwise-preference": "worse", "individual-score": "x"})
    assert spec.others == ("a", "b") and spec.tasks == ("pairwise-recognition",)
    assert spec.templates == (("individual-score", "x"), ("pairwise-preference", "worse"))
    assert spec.template_map == {"individual-score": "x", "pairwise-preference": "worse"}
    moved = spec.replace(skip_first=3, tasks="pairwise-preference,familiarity", domain="short")
    assert moved.skip_first == 3 and moved.familiarity and moved.scored_tasks == ("pairwise-preference",)
    assert spec.skip_first == 0 and not spec.familiarity
    with pytest.raises(UserError, match="limit must be at least 1"):
        spec.replace(limit=0)
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.skip_first = 4


def test_spec_module_imports_no_torch():
    code = ("import sys; import selfrec_ft.scoring.spec; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
