"""The style-classifier ceiling (selfrec_ft.analysis.style_ceiling, `selfrec analyze style-ceiling`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selfrec_ft.analysis.style_ceiling import style_ceiling
from selfrec_ft.cli import main
from selfrec_ft.data.corpus import write_corpus
from selfrec_ft.data.synth import synth_corpus


@pytest.fixture(scope="module")
def corpus():
    c = synth_corpus("short", 40, seed=5)
    c.add_summaries("me", {a: "Briefly, " + t for a, t in c.summaries["human"].items()})  # a visible style
    c.add_summaries("copy", dict(c.summaries["human"]))  # the same texts as human: nothing to tell apart
    return c


def test_pairwise_accuracy_matches_a_classifier_built_in_the_test(corpus):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    got = style_ceiling(corpus, "human", ["lead"], train_articles=25, n_resamples=300)
    train, test = corpus.articles[:25], corpus.articles[25:]
    s = corpus.summaries
    clf = make_pipeline(make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)),
                        LogisticRegression(max_iter=2000, random_state=0))
    clf.fit([s["human"][a.id] for a in train] + [s["lead"][a.id] for a in train], [1] * 25 + [0] * 25)
    d_h = clf.decision_function([s["human"][a.id] for a in test])
    d_l = clf.decision_function([s["lead"][a.id] for a in test])
    expected = np.mean(np.where(d_h > d_l, 1.0, np.where(d_h < d_l, 0.0, 0.5)))
    acc = got["pairwise_accuracy"]
    assert acc["mean"] == pytest.approx(expected) and acc["n"] == 15 and acc["articles"] == 15
    assert acc["ci95"][0] <= acc["mean"] <= acc["ci95"][1]
    assert got["by_other"]["lead"]["train_pairs"] == 25
    text_acc = (np.sum(d_h > 0) + np.sum(d_l <= 0)) / 30
    assert got["by_other"]["lead"]["text_accuracy"] == pytest.approx(text_acc)


def test_a_visible_style_is_found_and_identical_texts_are_chance(corpus):
    got = style_ceiling(corpus, "me", ["human", "copy"], train_articles=30, n_resamples=300)
    # "Briefly, " + the reference vs the reference: always told apart
    assert got["by_other"]["human"]["pairwise_accuracy"]["mean"] == 1.0
    tie = style_ceiling(corpus, "copy", ["human"], train_articles=30, n_resamples=300)
    assert tie["pairwise_accuracy"]["mean"] == 0.5 and tie["pairwise_accuracy"]["ci95"] == [0.5, 0.5]
    # pooled over the others: the mean over all pairs, each article a cluster of two pairs
    assert got["pairwise_accuracy"]["n"] == 20 and got["pairwise_accuracy"]["articles"] == 10


def test_cli_writes_json_and_markdown_with_the_judge_beside_it(corpus, tmp_path, capsys):
    cdir = write_corpus(corpus, tmp_path / "c")
    report = tmp_path / "eval" / "report.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"pairwise": {"recognition": {"mean": 0.62, "ci95": [0.55, 0.69], "n": 10}}}))
    rc = main(["analyze", "style-ceiling", "--corpus", str(cdir), "--self-source", "me", "--others", "human",
               "--train-articles", "30", "--report", str(report), "--n-resamples", "200"])
    assert rc == 0
    out = json.loads((tmp_path / "eval" / "style_ceiling.json").read_text())
    assert out["judge"]["mean"] == 0.62 and out["judge_above_ceiling"] is False
    md = (tmp_path / "eval" / "style_ceiling.md").read_text()
    assert "| human | 1.000 [1.000, 1.000]" in md and "| judge (pairwise.recognition) | 0.620 [0.550, 0.690] | 10 |" in md
    assert "no evidence of recognition beyond style" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--self-source", "me", "--train-articles", "3"], "needs --corpus"),
    (["--self-source", "nobody", "--train-articles", "3"], "nobody"),
    (["--self-source", "me", "--train-articles", "40"], "--train-articles must be between 1 and 39"),
])
def test_bad_input_is_one_line(corpus, tmp_path, capsys, argv, message):
    cdir = write_corpus(corpus, tmp_path / "c")
    if "--self-source" in argv and "needs --corpus" not in message:
        argv = ["--corpus", str(cdir), *argv]
    assert main(["analyze", "style-ceiling", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_sweep_analysis_refuses_style_ceiling_flags(tmp_path, capsys):
    assert main(["analyze", str(tmp_path), "--corpus", "x"]) == 2
    assert "belong to `selfrec analyze style-ceiling`" in capsys.readouterr().err


def test_a_judge_that_picks_by_length_is_not_above_the_ceiling():
    """Self summaries are the references padded with common words (no marker phrase): a judge that
    picks the longer summary recognises them perfectly, and so does the style classifier, so the
    judge's recognition is no evidence beyond style."""
    from selfrec_ft import stats
    from selfrec_ft.analysis.style_ceiling import verdict, with_judge

    c = synth_corpus("short", 60, seed=7)
    words = c.summaries["lead"]
    c.add_summaries("me", {a: t + " " + " ".join(words[a].split()[:6]) for a, t in c.summaries["human"].items()})
    held = [a.id for a in c.articles[40:]]
    picks = [1.0 if len(c.summaries["me"][a]) > len(c.summaries["human"][a]) else 0.0 for a in held]
    mean, (lo, hi) = stats.cluster_bootstrap_mean(picks, held, n_resamples=300)
    assert mean == 1.0  # the length judge
    got = with_judge(style_ceiling(c, "me", ["human"], train_articles=40, n_resamples=300),
                     {"mean": mean, "ci95": [lo, hi], "n": len(held)})
    assert got["pairwise_accuracy"]["mean"] == 1.0 and got["judge_above_ceiling"] is False
    assert "no evidence of recognition beyond style" in verdict(got)


def test_length_rule_matches_an_independent_count():
    """The length rule beside the ceiling: its direction from the training pairs, its held-out pairwise
    accuracy (ties ½) per other and pooled, counted here with a regex instead of str.split."""
    import re

    c = synth_corpus("short", 50, seed=11)
    ref, lead = c.summaries["human"], c.summaries["lead"]
    # self: the reference cut to 4 words for every third article, else padded by 3 words
    me = {a.id: (" ".join(ref[a.id].split()[:4]) if i % 3 == 0 else ref[a.id] + " and so on")
          for i, a in enumerate(c.articles)}
    c.add_summaries("me", me)
    got = style_ceiling(c, "me", ["human", "lead"], train_articles=30, n_resamples=300)

    def words(t):
        return len(re.findall(r"\S+", t))

    train, held = c.articles[:30], c.articles[30:]
    longer = np.mean([words(me[a.id]) > words(s[a.id]) for a in train for s in (ref, lead)])
    rule = got["length_rule"]
    assert rule["train_share_self_longer"] == pytest.approx(longer) and rule["rule"] == (
        "longer" if longer >= 0.5 else "shorter")
    sign = 1 if rule["rule"] == "longer" else -1
    per = {o: [np.sign(sign * (words(me[a.id]) - words(s[a.id]))) / 2 + 0.5 for a in held]
           for o, s in (("human", ref), ("lead", lead))}
    for o in per:
        assert got["by_other"][o]["length_rule_accuracy"] == pytest.approx(np.mean(per[o]))
    pooled = rule["pairwise_accuracy"]
    assert pooled["mean"] == pytest.approx(np.mean(per["human"] + per["lead"])) and pooled["n"] == 40
    assert pooled["ci95"][0] <= pooled["mean"] <= pooled["ci95"][1] and 0.3 < pooled["mean"] < 0.9
    # a self source that is always the shorter one gets the "shorter" rule and is found every time
    c.add_summaries("terse", {a.id: ref[a.id].split()[0] for a in c.articles})
    short = style_ceiling(c, "terse", ["human"], train_articles=30, n_resamples=300)["length_rule"]
    assert short["rule"] == "shorter" and short["pairwise_accuracy"]["mean"] == 1.0


def test_markdown_shows_the_length_rule_beside_the_judge(corpus):
    from selfrec_ft.analysis.style_ceiling import render_markdown, with_judge

    got = with_judge(style_ceiling(corpus, "me", ["human"], train_articles=30, n_resamples=200),
                     {"mean": 0.7, "ci95": [0.6, 0.8], "n": 10})
    md = render_markdown(got)
    rule = got["length_rule"]  # "Briefly, " + the reference: always the longer one
    assert rule["rule"] == "longer" and rule["train_share_self_longer"] == 1.0
    assert "| length rule (longer) | 1.000 [1.000, 1.000] | 10 |" in md
    assert "it is the longer one in 1.000 of them" in md


def _judge_rows(corpus, self_source, others, articles, seed=0):
    """pairwise-recognition rows (both orders) of a judge with random option probabilities."""
    rng = np.random.default_rng(seed)
    rows = []
    for a in articles:
        for other in others:
            for order in ("forward", "backward"):
                p1, p2 = rng.uniform(0.01, 0.49, size=2)
                rows.append({"task": "pairwise-recognition", "domain": "short", "article_id": a.id,
                             "self_source": self_source, "other_source": other, "order": order,
                             "self_option": "1" if order == "forward" else "2", "probs": {"1": p1, "2": p2}})
    return rows


def test_judge_split_by_length_matches_an_independent_count():
    """The judge's recognition on the pairs where the length rule points at its own summary and on the
    rest: the pair score recomputed from the raw probabilities, the words counted with a regex."""
    import re

    from selfrec_ft import stats
    from selfrec_ft.analysis.style_ceiling import judge_by_length

    c = synth_corpus("short", 30, seed=11)
    ref = c.summaries["human"]
    c.add_summaries("me", {a.id: (" ".join(ref[a.id].split()[:3]) if i % 4 == 0 else ref[a.id] + " and more")
                           for i, a in enumerate(c.articles)})
    held = c.articles[10:]
    rows = _judge_rows(c, "me", ["human", "lead"], held, seed=2)
    got = judge_by_length(rows, c, "me", "longer", n_resamples=400)

    def words(t):
        return len(re.findall(r"\S+", t))

    strata = {True: ([], []), False: ([], [])}
    for a in held:
        for other in ("human", "lead"):
            fwd, bwd = (r["probs"] for r in rows if r["article_id"] == a.id and r["other_source"] == other)
            score = (fwd["1"] / (fwd["1"] + fwd["2"]) + bwd["2"] / (bwd["1"] + bwd["2"])) / 2
            longer = words(c.summaries["me"][a.id]) > words(c.summaries[other][a.id])
            strata[longer][0].append(score)
            strata[longer][1].append(a.id)
    for key, mine in (("points_to_self", True), ("not_to_self", False)):
        values, ids = strata[mine]
        assert got[key]["n"] == len(values) > 3 and got[key]["articles"] == len(set(ids))
        assert got[key]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        lo, hi = stats.cluster_bootstrap_mean(values, ids, n_resamples=400)[1]
        assert got[key]["ci95"] == pytest.approx([lo, hi])
    assert got["share_points_to_self"] == pytest.approx(len(strata[True][0]) / 40) and got["n"] == 40
    # the "shorter" rule swaps the strata (no ties here)
    swapped = judge_by_length(rows, c, "me", "shorter", n_resamples=400)
    assert swapped["points_to_self"]["mean"] == pytest.approx(got["not_to_self"]["mean"], abs=1e-12)


def test_cli_splits_the_judge_by_length_from_the_rows_beside_the_report(corpus, tmp_path, capsys):
    cdir = write_corpus(corpus, tmp_path / "c")
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "report.json").write_text(json.dumps({"pairwise": {"recognition": {"mean": 0.6, "ci95": [0.5, 0.7],
                                                                              "n": 20}}}))
    rows = _judge_rows(corpus, "me", ["human"], corpus.articles[30:])
    (ev / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["analyze", "style-ceiling", "--corpus", str(cdir), "--self-source", "me", "--others", "human",
            "--train-articles", "30", "--report", str(ev / "report.json"), "--n-resamples", "200"]
    assert main(argv) == 0
    out = json.loads((ev / "style_ceiling.json").read_text())
    split = out["judge_by_length"]  # "Briefly, " + the reference: its own summary is always the longer one
    assert split["rule"] == "longer" and split["share_points_to_self"] == 1.0
    assert split["points_to_self"]["n"] == 10 and split["not_to_self"]["n"] == 0
    assert "| the longer one is its own (1.000 of the pairs) |" in capsys.readouterr().out
    # rows scored on another corpus: one line, exit 2
    bad = [dict(r, article_id="x" + r["article_id"]) for r in rows]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    assert main([*argv, "--examples", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "scored on another corpus" in err and len(err.strip().splitlines()) == 1 and "bad.jsonl" in err
