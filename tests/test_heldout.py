"""`selfrec eval` keeps a fine-tuned evaluator's training articles out of its evaluation: the default
--skip-first comes from the run's training_manifest.json when the corpus file is the one it trained
on, and scoring a training article is refused unless --allow-train-articles."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from selfrec_ft.errors import UserError
from selfrec_ft.scoring.heldout import find_manifest, resolve_heldout


def _ids(corpus_dir: Path) -> list[str]:
    return [json.loads(x)["id"] for x in (corpus_dir / "articles.jsonl").read_text().splitlines() if x.strip()]


def _run_dir(tmp_path: Path, corpus_dir: Path, n_train: int, name: str = "run") -> Path:
    """A run directory as the SFT recipe leaves it (only what the guard reads): the ids of its first
    ``n_train`` training articles and the sha256 of the corpus files, keyed by absolute path."""
    run = tmp_path / name
    run.mkdir()
    files = {str((corpus_dir / f).resolve()): hashlib.sha256((corpus_dir / f).read_bytes()).hexdigest()
             for f in ("articles.jsonl", "summaries.jsonl")}
    (run / "training_manifest.json").write_text(json.dumps(
        {"train_article_ids": _ids(corpus_dir)[:n_train], "corpus_files": files}))
    return run


def test_default_skip_first_comes_from_the_manifest(tmp_path, short_corpus_dir):
    run = _run_dir(tmp_path, short_corpus_dir, 5)
    ids = _ids(short_corpus_dir)
    held = resolve_heldout(run, short_corpus_dir, ids, None)
    assert held.skip_first == 5 and "training manifest" in held.note
    ck = run / "checkpoint-7"
    ck.mkdir()
    assert find_manifest(ck) == run / "training_manifest.json"  # a checkpoint reads its run's manifest
    assert resolve_heldout(ck, short_corpus_dir, ids, None).skip_first == 5
    assert resolve_heldout(run, short_corpus_dir, ids, 8).skip_first == 8  # explicit, past the training ones


def test_training_articles_are_refused_unless_allowed(tmp_path, short_corpus_dir):
    run = _run_dir(tmp_path, short_corpus_dir, 5)
    ids = _ids(short_corpus_dir)
    with pytest.raises(UserError, match=r"3 of the 10 articles to score .* training articles"):
        resolve_heldout(run, short_corpus_dir, ids, 2)
    held = resolve_heldout(run, short_corpus_dir, ids, 2, allow_train_articles=True)
    assert held.skip_first == 2 and "3 training articles" in held.note
    # --limit: only the articles actually scored count
    assert resolve_heldout(run, short_corpus_dir, ids, 5, limit=2).skip_first == 5


def test_another_corpus_file_is_not_skipped_by_default_but_still_guarded(tmp_path, short_corpus_dir):
    other = tmp_path / "copy"
    shutil.copytree(short_corpus_dir, other)
    with open(other / "articles.jsonl", "a") as f:  # a different file holding the same articles
        f.write(json.dumps({"id": "extra", "article": "One more article."}) + "\n")
    run = _run_dir(tmp_path, short_corpus_dir, 5)
    with pytest.raises(UserError, match="training articles of this model"):
        resolve_heldout(run, other, _ids(other), None)  # skip 0 would score the 5 training articles
    unrelated = _run_dir(tmp_path, short_corpus_dir, 0, name="run0")
    assert resolve_heldout(unrelated, other, _ids(other), None).skip_first == 0


def test_a_model_without_manifest_is_evaluated_as_asked(tmp_path, short_corpus_dir, tiny_model_dir):
    ids = _ids(short_corpus_dir)
    assert find_manifest(tiny_model_dir) is None
    assert resolve_heldout(tiny_model_dir, short_corpus_dir, ids, None).skip_first == 0
    assert resolve_heldout(tiny_model_dir, short_corpus_dir, ids, 3).skip_first == 3


def test_selfrec_eval_uses_the_manifest(tmp_path, short_corpus_dir, tiny_model_dir, capsys):
    from selfrec_ft.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _run_dir(tmp_path, short_corpus_dir, 4, name="unused")
    shutil.copy(tmp_path / "unused" / "training_manifest.json", model / "training_manifest.json")
    out = tmp_path / "eval"
    common = ["eval", "--model", str(model), "--corpus", str(short_corpus_dir), "--self-source", "lead",
              "--tasks", "pairwise-recognition", "--limit", "2", "--no-progress", "--n-resamples", "10"]
    assert main([*common, "--out", str(out)]) == 0
    assert "--skip-first 4" in capsys.readouterr().err
    rows = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
    assert sorted({r["article_id"] for r in rows}) == sorted(_ids(short_corpus_dir)[4:6])
    assert main([*common, "--skip-first", "1", "--out", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--allow-train-articles" in err[0]
