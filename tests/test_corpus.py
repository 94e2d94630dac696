import json
import subprocess
import sys
from pathlib import Path

import pytest

from selfrec_ft.data.corpus import check_corpus, corpus_from_hf, load_corpus, write_corpus
from selfrec_ft.data.synth import synth_corpus
from selfrec_ft.errors import UserError

SHARED_XSUM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "selfrec" / "xsum"


def _write(dirpath, articles, summaries):
    dirpath.mkdir(parents=True, exist_ok=True)
    (dirpath / "articles.jsonl").write_text("".join(a if isinstance(a, str) else json.dumps(a) + "\n" for a in articles))
    (dirpath / "summaries.jsonl").write_text("".join(s if isinstance(s, str) else json.dumps(s) + "\n" for s in summaries))
    return dirpath


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "selfrec_ft", *args], capture_output=True, text=True)


GOOD_A = [{"id": "a1", "article": "First article."}, {"id": "a2", "article": "Second article."}]
GOOD_S = [{"id": "a1", "source": "human", "summary": "One."}, {"id": "a2", "source": "human", "summary": "Two."},
          {"id": "a1", "source": "lead", "summary": "First article."}]


def test_load_and_check_counts(tmp_path):
    c = load_corpus(_write(tmp_path / "c", GOOD_A, GOOD_S))
    assert [a.id for a in c.articles] == ["a1", "a2"]
    assert c.summary("a1", "lead") == "First article."
    rep = check_corpus(c)
    assert rep.summary_counts == {"human": 2, "lead": 1}
    assert rep.missing == {"human": [], "lead": ["a2"]}
    assert rep.usable
    assert [a.id for a in c.train_articles(1)] == ["a1"] and [a.id for a in c.heldout_articles(1)] == ["a2"]


@pytest.mark.parametrize(
    "articles,summaries,file,line,needle",
    [
        (GOOD_A[:1] + ["{not json\n"], GOOD_S[:1], "articles.jsonl", 2, "malformed JSON"),
        (GOOD_A + [{"id": "a1", "article": "again"}], GOOD_S, "articles.jsonl", 3, 'duplicate article id "a1"'),
        (GOOD_A, GOOD_S + [{"id": "zz", "source": "human", "summary": "x"}], "summaries.jsonl", 4, "unknown article id"),
        (GOOD_A, [GOOD_S[0], {"id": "a2", "summary": "no source"}], "summaries.jsonl", 2, 'missing field "source"'),
        ([{"id": "a1"}], [], "articles.jsonl", 1, 'missing field "article"'),
        (GOOD_A, GOOD_S + [GOOD_S[0]], "summaries.jsonl", 4, "duplicate summary"),
        (GOOD_A, ['["a", "list"]\n'], "summaries.jsonl", 1, "expected a JSON object"),
    ],
)
def test_loader_errors_name_file_and_line(tmp_path, articles, summaries, file, line, needle):
    d = _write(tmp_path / "bad", articles, summaries)
    with pytest.raises(UserError) as exc:
        load_corpus(d)
    assert exc.value.file.endswith(file) and exc.value.line == line and needle in exc.value.message
    r = _cli("corpus", "check", str(d))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{file}:{line}:" in lines[0]
    assert "Traceback" not in r.stderr


def test_missing_directory_is_one_line_error(tmp_path):
    r = _cli("corpus", "check", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_hf_dataset_loader_same_path_as_hub():
    import datasets

    ds = datasets.Dataset.from_dict({"id": ["x1", "x2"], "article": ["A one.", "A two."], "highlights": ["h1", "h2"]})
    c = corpus_from_hf(ds, document_column="article", summary_column="highlights")
    assert [a.text for a in c.articles] == ["A one.", "A two."]
    assert c.summaries == {"human": {"x1": "h1", "x2": "h2"}}
    xs = datasets.Dataset.from_dict({"id": [1], "document": ["D"], "summary": ["S"]})
    assert corpus_from_hf(xs).summary("1", "human") == "S"
    with pytest.raises(UserError, match="no column"):
        corpus_from_hf(xs, document_column="article")


def test_write_roundtrip_and_synth_determinism(tmp_path):
    a, b = synth_corpus("highlights", 5, seed=7), synth_corpus("highlights", 5, seed=7)
    assert [x.text for x in a.articles] == [x.text for x in b.articles] and a.summaries == b.summaries
    assert synth_corpus("highlights", 5, seed=8).summaries != a.summaries
    back = load_corpus(write_corpus(a, tmp_path / "rt"))
    assert back.summaries == a.summaries and [x.text for x in back.articles] == [x.text for x in a.articles]
    for aid, text in a.summaries["human"].items():
        assert 3 <= len(text.splitlines()) <= 4
    short = synth_corpus("short", 20, seed=1)
    for aid, text in short.summaries["human"].items():
        assert "\n" not in text and text.count(". ") == 0
        assert short.summaries["lead"][aid] == short.article(aid).text.split(". ")[0] + "." or \
            short.article(aid).text.startswith(short.summaries["lead"][aid])


def test_synth_cli_then_check(tmp_path):
    r = _cli("synth-corpus", str(tmp_path / "s"), "--domain", "short", "--n", "4", "--seed", "2")
    assert r.returncode == 0, r.stderr
    r = _cli("corpus", "check", str(tmp_path / "s"))
    assert r.returncode == 0 and "articles: 4" in r.stdout and "human: 4" in r.stdout and "lead: 4" in r.stdout


@pytest.mark.skipif(not SHARED_XSUM.is_dir(), reason="shared XSUM corpus not present")
def test_shared_xsum_check():
    rep = check_corpus(load_corpus(SHARED_XSUM))
    assert rep.n_articles == 1000
    assert rep.summary_counts == {s: 1000 for s in ["human", "llama2-7b-chat", "gpt35", "gpt4", "claude"]}


def test_missing_relative_corpus_names_the_directory_it_was_resolved_against(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as exc:
        load_corpus("data/p1/xsum")
    assert exc.value.file == "data/p1/xsum" and exc.value.message.startswith(
        f"corpus directory not found (relative to the current directory {tmp_path}")
    assert "selfrec corpus import-p1 P1_CLONE --out data/p1" in exc.value.message
    with pytest.raises(UserError) as exc:
        load_corpus(tmp_path / "absent")
    assert exc.value.message == "corpus directory not found"


def test_write_new_corpus_writes_once_and_refuses_a_different_corpus(tmp_path):
    from selfrec_ft.data.corpus import write_new_corpus

    a = synth_corpus("short", 3, seed=0)
    assert write_new_corpus(a, tmp_path / "c") is True
    before = (tmp_path / "c" / "summaries.jsonl").read_bytes()
    assert write_new_corpus(synth_corpus("short", 3, seed=0), tmp_path / "c") is False
    with pytest.raises(UserError, match="already holds a different corpus"):
        write_new_corpus(synth_corpus("short", 3, seed=1), tmp_path / "c")
    assert (tmp_path / "c" / "summaries.jsonl").read_bytes() == before
