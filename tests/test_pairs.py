import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from selfrec_ft.data.corpus import Article, Corpus, load_corpus
from selfrec_ft.errors import UserError
from selfrec_ft.pairs.build import build_pairwise_dataset, heldout_article_ids
from selfrec_ft.pairs.labels import assign_labels

SHARED_XSUM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "selfrec" / "xsum"
if not SHARED_XSUM.is_dir():  # a worktree outside the main checkout's parent
    SHARED_XSUM = Path("/work/shared/data/selfrec/xsum")


def _corpus(n=6):
    rng = random.Random(0)
    words = ["alpha", "beta", "io", "queue", "strength", "a", "eerie", "rhythm", "aeiou", "banana"]
    arts = [Article(f"a{i}", f"Article {i} text.") for i in range(n)]
    summ = {src: {a.id: " ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for a in arts}
            for src in ("me", "x", "y")}
    summ["x"]["a0"] = summ["me"]["a0"]  # an exact tie for every measure
    return Corpus(arts, summ)


def _positions(ds):
    return [(r["summary1"], r["summary2"]) for r in ds]


def _shown(row):
    user = row["prompt"][-1]["content"]
    s1 = user.split("Summary1:\n", 1)[1].split("\n\nSummary2:", 1)[0]
    s2 = user.split("Summary2:\n", 1)[1].split("\n\nCan you", 1)[0]
    return s1, s2


# Syllables of _corpus's words counted by hand ("aeiou" is no word: the documented fallback, one
# vowel group, gives 1).
HAND_SYLLABLES = {"alpha": 2, "beta": 2, "io": 2, "queue": 1, "strength": 1, "a": 1, "eerie": 2,
                  "rhythm": 2, "aeiou": 1, "banana": 3}


def _hand_flesch(s):
    words = s.split()  # one sentence, no punctuation
    return 206.835 - 1.015 * len(words) - 84.6 * sum(HAND_SYLLABLES[w] for w in words) / len(words)


INDEPENDENT_MEASURE = {"length": lambda s: len(s.split()),
                       "vowelcount": lambda s: sum(ch in "aeiouAEIOU" for ch in s),
                       "readability": _hand_flesch}


def _independent_label(strategy, s1, s2, self_pos):
    if strategy == "self":
        return self_pos
    if strategy == "other":
        return 2 if self_pos == 1 else 1
    if strategy == "always_1":
        return 1
    key = INDEPENDENT_MEASURE[strategy]
    return 2 if key(s2) > key(s1) else 1


@pytest.mark.parametrize("strategy", ["self", "other", "always_1", "length", "vowelcount", "readability"])
def test_label_strategies_match_independent_rule(strategy):
    c = _corpus()
    # position1 keeps tied pairs (labelled 1), so every pair is there
    ds, stats = build_pairwise_dataset(c, "me", ["x", "y"], n_articles=4, labels=strategy,
                                       label_ties="position1")
    assert len(ds) == stats.rows == 2 * 2 * 4
    for row in ds:
        s1, s2 = _shown(row)
        own = c.summary(row["article_id"], "me")
        assert (s1 if row["self_position"] == 1 else s2) == own
        assert int(row["label"]) == _independent_label(strategy, s1, s2, row["self_position"])
        assert row["completion"] == [{"role": "assistant", "content": row["label"]}]
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]


def test_tie_goes_to_position_1():
    ds, stats = build_pairwise_dataset(_corpus(), "me", ["x"], n_articles=1, labels="length",
                                       label_ties="position1")
    assert [r["label"] for r in ds] == ["1", "1"]  # a0's summaries are identical
    assert (stats.ties, stats.ties_dropped, stats.label_ties) == (2, 0, "position1")


@pytest.mark.parametrize("strategy", ["length", "vowelcount", "readability"])
def test_tied_pairs_are_dropped_and_counted_by_default(strategy):
    c = _corpus(12)
    for i in range(1, 12, 3):  # more ties: same word count / vowels / reading ease, other words
        c.summaries["y"][f"a{i}"] = c.summaries["me"][f"a{i}"][::-1] if strategy == "vowelcount" else c.summaries["me"][f"a{i}"]
    ds, stats = build_pairwise_dataset(c, "me", ["x", "y"], n_articles=12, labels=strategy)
    measure = INDEPENDENT_MEASURE[strategy]
    tied = {(a.id, o) for a in c.articles for o in ("x", "y")
            if abs(measure(c.summary(a.id, "me")) - measure(c.summary(a.id, o))) <= 1e-9}
    assert len(tied) >= 2
    assert stats.label_ties == "drop"
    assert stats.ties == stats.ties_dropped == 2 * len(tied)
    assert stats.rows == len(ds) == 2 * 2 * 12 - 2 * len(tied)
    assert not tied & {(r["article_id"], r["other_source"]) for r in ds}
    for row in ds:  # the rest labelled as before, both orders kept: still balanced
        s1, s2 = _shown(row)
        assert int(row["label"]) == _independent_label(strategy, s1, s2, row["self_position"])
    assert sum(r["self_position"] == 1 for r in ds) == len(ds) // 2
    # strategies without a property never tie
    _, st = build_pairwise_dataset(c, "me", ["x", "y"], n_articles=12, labels="always_1")
    assert (st.ties, st.ties_dropped, st.rows) == (0, 0, 2 * 2 * 12)
    with pytest.raises(UserError, match="label_ties"):
        build_pairwise_dataset(c, "me", ["x"], 2, labels="length", label_ties="coin")


@pytest.mark.skipif(not SHARED_XSUM.is_dir(), reason="shared XSUM corpus not present")
@pytest.mark.parametrize("strategy, ties", [("length", 208), ("vowelcount", 86)])
def test_ties_on_p1_xsum_first_500_articles(strategy, ties):
    # issue 13's audit: on P1's first 500 XSUM articles, 208 of 4000 rows tie on word count, 86 on
    # vowel count
    _, stats = build_pairwise_dataset(load_corpus(SHARED_XSUM), "llama2-7b-chat", None, n_articles=500,
                                      labels=strategy)
    assert stats.ties == stats.ties_dropped == ties and stats.rows == 4000 - ties


def test_random_is_seeded_and_roughly_balanced():
    c = _corpus(40)
    a, _ = build_pairwise_dataset(c, "me", ["x", "y"], n_articles=40, labels="random", seed=3)
    b, _ = build_pairwise_dataset(c, "me", ["x", "y"], n_articles=40, labels="random", seed=3)
    d, _ = build_pairwise_dataset(c, "me", ["x", "y"], n_articles=40, labels="random", seed=4)
    assert a["label"] == b["label"] != d["label"]
    assert 50 < a["label"].count("1") < 110


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.75, 1.0, 0.3])
def test_flip_fraction_exact_and_balanced(fraction):
    c = _corpus(10)
    ds, _ = build_pairwise_dataset(c, "me", ["x", "y"], n_articles=10, labels="self", flip_fraction=fraction, seed=1)
    flipped = [int(r["label"]) != r["self_position"] for r in ds]
    n = len(ds)
    assert sum(flipped) == round(fraction * n)
    fwd = sum(f for f, r in zip(flipped, ds) if r["self_position"] == 1)
    bwd = sum(flipped) - fwd
    assert abs(fwd - bwd) <= 1


def test_flip_requires_self_and_valid_fraction():
    with pytest.raises(UserError):
        build_pairwise_dataset(_corpus(), "me", ["x"], 2, labels="length", flip_fraction=0.5)
    with pytest.raises(UserError):
        build_pairwise_dataset(_corpus(), "me", ["x"], 2, labels="self", flip_fraction=1.5)


def test_control_question_and_errors():
    c = _corpus()
    ds, _ = build_pairwise_dataset(c, "me", ["x"], 2, labels="length", question="own")
    assert "longer in terms of word count" in ds[0]["prompt"][-1]["content"]
    ds, _ = build_pairwise_dataset(c, "me", ["x"], 2, labels="length", question="recognition")
    assert "which summary you wrote" in ds[0]["prompt"][-1]["content"]
    with pytest.raises(UserError, match="unknown source"):
        build_pairwise_dataset(c, "me", ["nobody"], 2)
    with pytest.raises(UserError, match="n_articles"):
        build_pairwise_dataset(c, "me", ["x"], 99)
    with pytest.raises(UserError, match="unknown label strategy"):
        build_pairwise_dataset(c, "me", ["x"], 2, labels="bogus")


def test_heldout_is_disjoint():
    c = _corpus(6)
    ds, _ = build_pairwise_dataset(c, "me", ["x"], 4)
    assert set(ds["article_id"]).isdisjoint(heldout_article_ids(c, 4)) and heldout_article_ids(c, 4) == ["a4", "a5"]


def test_shortening_through_tokenizer(tiny_tokenizer):
    c = _corpus(2)
    c.articles[0] = Article("a0", " ".join(["long article text"] * 400))
    c = Corpus(c.articles, c.summaries)
    ds, stats = build_pairwise_dataset(c, "me", ["x"], 2, tokenizer=tiny_tokenizer, max_length=420)
    assert stats.shortened == 2
    for row in ds:
        s1, s2 = _shown(row)
        assert c.summary(row["article_id"], "me") in (s1, s2)


@pytest.mark.skipif(not SHARED_XSUM.is_dir(), reason="shared XSUM corpus not present")
def test_cli_on_shared_xsum(tmp_path):
    out = tmp_path / "p.jsonl"
    cmd = [sys.executable, "-m", "selfrec_ft", "pairs", "--corpus", str(SHARED_XSUM), "--self-source",
           "llama2-7b-chat", "--n-articles", "10", "--out", str(out)]
    r = subprocess.run(cmd + ["--labels", "self"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 80 and sum(r["label"] == "1" for r in rows) == 40
    corpus = load_corpus(SHARED_XSUM)
    r = subprocess.run(cmd + ["--labels", "length"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for row in map(json.loads, out.read_text().splitlines()):
        own = corpus.summary(row["article_id"], "llama2-7b-chat")
        theirs = corpus.summary(row["article_id"], row["other_source"])
        s1, s2 = (own, theirs) if row["self_position"] == 1 else (theirs, own)
        assert int(row["label"]) == (2 if len(s2.split()) > len(s1.split()) else 1)
    r = subprocess.run(cmd[:-2] + ["--others", "nobody", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ")


def test_assign_labels_tie_policies():
    rows = [{"self_position": 1, "summary1": "one two", "summary2": "three four"},      # tied words
            {"self_position": 2, "summary1": "one", "summary2": "three four five"}]
    assert assign_labels(rows, "length") == [None, 2]
    assert assign_labels(rows, "length", ties="position1") == [1, 2]
    assert assign_labels(rows, "self") == [1, 2]  # no property, no tie
    with pytest.raises(ValueError, match="label_ties"):
        assign_labels(rows, "length", ties="random")
