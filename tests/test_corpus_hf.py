"""`selfrec corpus from-hf` and the Hugging Face loader behind it, on datasets the tests write locally.

A directory written by ``save_to_disk`` goes through ``datasets.load_from_disk``; a local JSON-lines
file or directory of them goes through ``datasets.load_dataset``, the call a user with internet makes
for a hub id (``EdinburghNLP/xsum``), which offline fails with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from selfrec_ft.cli import main
from selfrec_ft.data.corpus import load_corpus, load_hf_corpus, read_id_list, select_hf_rows
from selfrec_ft.errors import UserError

IDS = ["35232142", "40143035", "35951548", "36266422", "38826984"]
DOCS = [f"Article {i} text, about event {i}." for i in range(5)]
REFS = [f"Reference summary {i}." for i in range(5)]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """load_dataset writes its Arrow cache under datasets.config.HF_DATASETS_CACHE (read from the
    environment when datasets is imported): keep it in tmp."""
    import datasets

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.fixture
def saved(tmp_path):
    import datasets

    path = tmp_path / "xsum_saved"
    # ids as ints in the dataset: the corpus keeps them as strings
    datasets.Dataset.from_dict({"id": [int(i) for i in IDS], "document": DOCS, "summary": REFS}).save_to_disk(str(path))
    return path


def expected(order):
    return [(IDS[i], DOCS[i]) for i in order], {IDS[i]: REFS[i] for i in order}


def as_pairs(corpus):
    return [(a.id, a.text) for a in corpus.articles]


def test_saved_dataset_whole_first_n_and_id_order(saved):
    whole = load_hf_corpus(str(saved), split="train")
    arts, refs = expected(range(5))
    assert as_pairs(whole) == arts and whole.summaries == {"human": refs}

    first = load_hf_corpus(str(saved), split="train", n=2)
    arts, refs = expected([0, 1])
    assert as_pairs(first) == arts and first.summaries == {"human": refs}

    picked = load_hf_corpus(str(saved), split="train", ids=[IDS[3], IDS[0], IDS[4]])
    arts, refs = expected([3, 0, 4])
    assert as_pairs(picked) == arts and picked.summaries == {"human": refs}


def test_missing_ids_are_named(saved):
    with pytest.raises(UserError) as exc:
        load_hf_corpus(str(saved), split="train", ids=[IDS[1], "999", IDS[2], "777"])
    assert "2 of the 4 ids" in exc.value.message and "999, 777" in exc.value.message


def test_dataset_dict_split_and_cnn_columns(tmp_path):
    import datasets

    train = datasets.Dataset.from_dict({"id": ["c1", "c2"], "article": ["A1.", "A2."], "highlights": ["h1\nh2", "h3"]})
    test = datasets.Dataset.from_dict({"id": ["t1"], "article": ["T."], "highlights": ["t"]})
    path = tmp_path / "cnn_saved"
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(path))
    c = load_hf_corpus(str(path), split="test", document_column="article", summary_column="highlights")
    assert as_pairs(c) == [("t1", "T.")] and c.summaries == {"human": {"t1": "t"}}
    with pytest.raises(UserError, match='no split "validation".*train, test'):
        load_hf_corpus(str(path), split="validation", document_column="article", summary_column="highlights")
    with pytest.raises(UserError, match="no column.*summary"):
        load_hf_corpus(str(path), split="train", document_column="article")


def test_select_rows_rejects_an_ambiguous_id_and_too_many_rows():
    import datasets

    ds = datasets.Dataset.from_dict({"id": ["a", "b", "a"], "document": ["x", "y", "z"], "summary": ["1", "2", "3"]})
    assert select_hf_rows(ds, "id", ids=["b"])["document"] == ["y"]
    with pytest.raises(UserError, match='occur more than once.*a'):
        select_hf_rows(ds, "id", ids=["a"])
    with pytest.raises(UserError, match="first 4 rows but the split has 3"):
        select_hf_rows(ds, "id", n=4)


def test_non_text_document_is_an_error(tmp_path):
    import datasets

    path = tmp_path / "bad"
    datasets.Dataset.from_dict({"id": ["a", "b"], "document": ["x", None], "summary": ["1", "2"]}).save_to_disk(str(path))
    with pytest.raises(UserError, match='row 1 \\(id "b"\\): column document is NoneType'):
        load_hf_corpus(str(path), split="train")


def test_load_dataset_path_on_local_json(tmp_path, hf_cache):
    """A local JSON-lines file and a directory of them go through datasets.load_dataset."""
    folder = tmp_path / "json_ds"
    folder.mkdir()
    rows = [{"id": IDS[i], "document": DOCS[i], "summary": REFS[i]} for i in range(5)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for source in (folder / "train.jsonl", folder):
        c = load_hf_corpus(str(source), split="train", ids=[IDS[2], IDS[1]])
        arts, refs = expected([2, 1])
        assert as_pairs(c) == arts and c.summaries == {"human": refs}
    assert hf_cache.is_dir()  # load_dataset built it there, not in the user's cache
    with pytest.raises(UserError, match="cannot load dataset.*split 'validation'"):
        load_hf_corpus(str(folder), split="validation")


def test_read_id_list_plain_and_corpus(tmp_path, short_corpus_dir):
    plain = tmp_path / "ids.txt"
    plain.write_text("b7\n\n a1 \nc3\n")
    assert read_id_list(plain) == ["b7", "a1", "c3"]
    ids = [a.id for a in load_corpus(short_corpus_dir).articles]
    assert read_id_list(short_corpus_dir) == ids == read_id_list(short_corpus_dir / "articles.jsonl")
    plain.write_text("a\nb\na\n")
    with pytest.raises(UserError) as exc:
        read_id_list(plain)
    assert exc.value.line == 3 and 'duplicate id "a" (first on line 1)' in exc.value.message


def test_cli_from_hf_keeps_a_corpus_order_and_reruns_cleanly(tmp_path, saved, capsys):
    order_dir = tmp_path / "order"  # a corpus whose article order the new corpus must follow
    order_dir.mkdir()
    (order_dir / "articles.jsonl").write_text(
        "".join(json.dumps({"id": IDS[i], "article": "other text"}) + "\n" for i in (4, 2, 0)))
    out = tmp_path / "out"
    argv = ["corpus", "from-hf", str(saved), "--split", "train", "--document-column", "document",
            "--summary-column", "summary", "--id-column", "id", "--ids", str(order_dir / "articles.jsonl"),
            "--out", str(out)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("wrote: 3 articles") and "next: selfrec generate" in first
    c = load_corpus(out)
    arts, refs = expected([4, 2, 0])
    assert as_pairs(c) == arts and c.summaries == {"human": refs}
    before = (out / "summaries.jsonl").read_bytes()

    assert main(argv) == 0  # the same corpus again: nothing rewritten
    assert capsys.readouterr().out.startswith("unchanged (already there): 3 articles")
    assert (out / "summaries.jsonl").read_bytes() == before

    other = argv[:argv.index("--ids")] + ["--n", "2", "--out", str(out)]
    assert main(other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}: already holds a different corpus")
    assert (out / "summaries.jsonl").read_bytes() == before


def test_cli_errors_are_one_line(tmp_path, saved, capsys):
    base = ["corpus", "from-hf", str(saved), "--split", "train", "--summary-column", "summary",
            "--id-column", "id", "--out", str(tmp_path / "o")]
    assert main(base + ["--document-column", "text"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no column(s) text; it has id, document, summary" in err[0]
    ids = tmp_path / "ids.txt"
    ids.write_text("404\n")
    assert main(base + ["--document-column", "document", "--ids", str(ids)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of the 1 ids are not in the dataset's id column: 404" in err[0]
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exc:  # argparse: --n and --ids exclude each other
        main(base + ["--document-column", "document", "--ids", str(ids), "--n", "2"])
    assert exc.value.code == 2


def test_hub_dataset_offline_is_one_line_not_a_traceback(tmp_path):
    """The hub path is the plain load_dataset call; offline it fails with one line, exit 2."""
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "c"))
    r = subprocess.run([sys.executable, "-m", "selfrec_ft", "corpus", "from-hf", "EdinburghNLP/xsum", "--split",
                        "train", "--document-column", "document", "--summary-column", "summary", "--id-column",
                        "id", "--n", "10", "--out", str(tmp_path / "x")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot load dataset 'EdinburghNLP/xsum', split 'train'" in lines[0]
