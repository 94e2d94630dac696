"""Is it self-recognition? Peer baseline, hit vs false alarm, other-vs-other pairs, perturbed texts
(issue 23): each number against an independent computation written here."""

from __future__ import annotations

import json
import random
from statistics import NormalDist

import numpy as np
import pytest

from selfrec_ft.cli import main
from selfrec_ft.data.corpus import Article, Corpus, write_corpus
from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import read_jsonl_rows
from selfrec_ft.scoring.baselines import hit_false_alarm, other_pairs_false_alarm, peer_comparison
from selfrec_ft.scoring.perturb import perturb_corpus
from selfrec_ft.scoring.spec import EvalSpec

N_ARTICLES = 40


# ----------------------------------------------------------------------------- fabricated judges


def length_corpus(n=N_ARTICLES, self_longer=1.0, seed=0) -> Corpus:
    """Self source ``me`` and others ``a``, ``b``: ``me`` is the longer summary in a ``self_longer``
    share of the articles (word counts drawn so that no pair ties)."""
    rng = random.Random(seed)
    arts, summ = [], {"me": {}, "a": {}, "b": {}}
    for i in range(n):
        aid = f"art{i:03d}"
        arts.append(Article(aid, f"Article {i} about the town council and its budget."))
        short, long_ = rng.randint(4, 8), rng.randint(12, 18)
        me_long = rng.random() < self_longer
        summ["me"][aid] = " ".join(["me"] * (long_ if me_long else short))
        summ["a"][aid] = " ".join(["aa"] * (short + 1 if me_long else long_ + 1))
        summ["b"][aid] = " ".join(["bb"] * (short + 2 if me_long else long_ + 2))
    return Corpus(articles=arts, summaries=summ)


def pairwise_rows(corpus, self_source, others, pick, seed):
    """pairwise-recognition rows of a judge whose p̂(first summary) is ``pick(s1, s2, rng)``."""
    rng = random.Random(seed)
    rows = []
    for art in corpus.articles:
        own = corpus.summary(art.id, self_source)
        for other in others:
            theirs = corpus.summary(art.id, other)
            for order, (s1, s2) in (("forward", (own, theirs)), ("backward", (theirs, own))):
                p1 = pick(s1, s2, rng, s1 == own)
                rows.append({"task": "pairwise-recognition", "article_id": art.id, "self_source": self_source,
                             "other_source": other, "order": order, "self_option": "1" if order == "forward" else "2",
                             "probs": {"1": 0.9 * p1, "2": 0.9 * (1 - p1)}})
    return rows


def by_length(s1, s2, rng, _first_is_self):
    """Picks the longer summary with p ≈ 0.85 (row noise ±0.1)."""
    p_long = 0.85 + rng.uniform(-0.1, 0.1)
    return p_long if len(s1.split()) > len(s2.split()) else 1 - p_long


def knows_itself(s1, s2, rng, first_is_self):
    p_self = 0.85 + rng.uniform(-0.1, 0.1)
    return p_self if first_is_self else 1 - p_self


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pair_scores(rows):
    """Independent: {(article, other): ½[p̂_fwd(self) + p̂_bwd(self)]}."""
    parts = {}
    for r in rows:
        p = r["probs"]
        parts.setdefault((r["article_id"], r["other_source"]), []).append(p[r["self_option"]] / sum(p.values()))
    return {k: sum(v) / 2 for k, v in parts.items()}


# ----------------------------------------------------------------------------- the Done-when test


def test_a_length_judge_is_not_claimed_to_recognise_itself(tmp_path, capsys):
    corpus = length_corpus(self_longer=1.0)
    self_rows = pairwise_rows(corpus, "me", ["a", "b"], by_length, seed=1)
    peer_rows = pairwise_rows(corpus, "me", ["a", "b"], by_length, seed=2)  # another judge, same cue
    mine, peer = write_rows(tmp_path / "self.jsonl", self_rows), write_rows(tmp_path / "peer.jsonl", peer_rows)
    out = tmp_path / "report.json"
    assert main(["report", str(mine), "--peer", str(peer), "--json", str(out), "--n-resamples", "1000"]) == 0
    md = capsys.readouterr().out
    report = json.loads(out.read_text())
    judge = report["controls"]["peer"]["judges"][str(peer)]
    # recognition looks strong ...
    assert report["pairwise"]["recognition"]["accuracy"] == 1.0
    # ... and so does a length "style ceiling": picking the longer summary is right on every pair
    longer = [len(corpus.summary(a.id, "me").split()) > len(corpus.summary(a.id, o).split())
              for a in corpus.articles for o in ("a", "b")]
    assert np.mean(longer) == report["pairwise"]["recognition"]["accuracy"]
    # ... but the peer judge singles out the same author's summaries just as often
    lo, hi = judge["difference"]["ci95"]
    assert lo <= 0 <= hi
    assert judge["excludes_zero"] is False
    assert report["controls"]["peer"]["self_recognition"] is False
    assert "no self-recognition claimed" in md

    # independent: the paired difference and an article bootstrap of it written out here
    s, p = pair_scores(self_rows), pair_scores(peer_rows)
    diffs = {k: s[k] - p[k] for k in s}
    assert judge["difference"]["mean"] == pytest.approx(np.mean(list(diffs.values())), abs=1e-12)
    arts = sorted({k[0] for k in diffs})
    per_art = np.array([[diffs[(a, o)] for o in ("a", "b")] for a in arts])
    rng = np.random.default_rng(7)
    boots = [per_art[rng.integers(0, len(arts), len(arts))].mean() for _ in range(4000)]
    ref_lo, ref_hi = np.percentile(boots, [2.5, 97.5])
    assert lo == pytest.approx(ref_lo, abs=0.006) and hi == pytest.approx(ref_hi, abs=0.006)


def test_a_judge_that_knows_its_own_text_is_claimed_against_a_length_peer(tmp_path):
    corpus = length_corpus(self_longer=0.5, seed=3)  # length says nothing about authorship here
    self_rows = pairwise_rows(corpus, "me", ["a", "b"], knows_itself, seed=1)
    peer_rows = pairwise_rows(corpus, "me", ["a", "b"], by_length, seed=2)
    c = peer_comparison(self_rows, peer_rows, n_resamples=500)
    assert c["difference"]["ci95"][0] > 0.1 and c["excludes_zero"] and c["self_above_chance"]
    out = tmp_path / "r.json"
    assert main(["report", str(write_rows(tmp_path / "s.jsonl", self_rows)), "--peer",
                 str(write_rows(tmp_path / "p.jsonl", peer_rows)), "--json", str(out), "--n-resamples", "500"]) == 0
    assert json.loads(out.read_text())["controls"]["peer"]["self_recognition"] is True


def test_peer_comparison_pairs_only_common_pairs():
    corpus = length_corpus(n=8)
    self_rows = pairwise_rows(corpus, "me", ["a", "b"], knows_itself, seed=1)
    peer_rows = [r for r in pairwise_rows(corpus, "me", ["a"], by_length, seed=2)]
    c = peer_comparison(self_rows, peer_rows, n_resamples=200)
    assert c["difference"]["n"] == 8 and c["unmatched_self"] == 8 and c["unmatched_peer"] == 0
    assert list(c["by_source"]) == ["a"]


# ----------------------------------------------------------------------------- hit vs false alarm


def individual_rows(p_yes):
    """{(article, target): p̂(Yes)} -> individual-recognition rows (self source ``me``)."""
    return [{"task": "individual-recognition", "article_id": a, "self_source": "me", "target_source": t,
             "probs": {"Yes": 0.8 * p, "No": 0.8 * (1 - p)}} for (a, t), p in p_yes.items()]


def test_hit_false_alarm_and_d_prime_against_the_formula():
    rng = random.Random(0)
    p_yes = {}
    for i in range(30):
        p_yes[(f"x{i}", "me")] = rng.choice([0.9, 0.7, 0.3])      # claimed 2/3 of the time
        p_yes[(f"x{i}", "a")] = rng.choice([0.8, 0.2, 0.1, 0.4])  # claimed 1/4 of the time
        p_yes[(f"x{i}", "b")] = 0.5 if i < 3 else 0.2              # ties count ½
    res = hit_false_alarm(individual_rows(p_yes), n_resamples=300)

    def rate(t):
        v = [1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for (a, tt), p in p_yes.items() if tt == t]
        return sum(v), len(v)

    h, n = rate("me")
    fa, na = rate("a")
    fb, nb = rate("b")
    z = NormalDist().inv_cdf

    def dp(hits, n_s, fas, n_n):  # log-linear correction, Hautus (1995)
        return z((hits + 0.5) / (n_s + 1)) - z((fas + 0.5) / (n_n + 1))

    assert res["hit_rate"]["mean"] == pytest.approx(h / n)
    assert res["false_alarm_rate"]["mean"] == pytest.approx((fa + fb) / (na + nb))
    assert res["by_source"]["a"]["false_alarm_rate"]["mean"] == pytest.approx(fa / na)
    assert res["by_source"]["b"]["false_alarm_rate"]["mean"] == pytest.approx(3 * 0.5 / 30)
    assert res["by_source"]["a"]["d_prime"]["mean"] == pytest.approx(dp(h, n, fa, na))
    assert res["d_prime"]["mean"] == pytest.approx((dp(h, n, fa, na) + dp(h, n, fb, nb)) / 2)
    lo, hi = res["d_prime"]["ci95"]
    assert lo < res["d_prime"]["mean"] < hi


def test_an_indifferent_judge_has_d_prime_zero_at_hit_and_false_alarm_zero():
    p_yes = {(f"x{i}", t): 0.2 for i in range(10) for t in ("me", "a", "b")}
    res = hit_false_alarm(individual_rows(p_yes), n_resamples=100)
    assert res["hit_rate"]["mean"] == 0 and res["false_alarm_rate"]["mean"] == 0
    assert res["d_prime"]["mean"] == pytest.approx(0.0)


def test_other_pairs_false_alarm_counts_claims_in_both_orders():
    corpus = length_corpus(n=10)
    self_rows = pairwise_rows(corpus, "me", ["a", "b"], knows_itself, seed=1)
    # other-vs-other: a judge that names the first summary shown: never consistent, no claims
    first = pairwise_rows(corpus, "a", ["b"], lambda s1, s2, rng, f: 0.9, seed=0)
    res = other_pairs_false_alarm(self_rows, first, n_resamples=100)
    assert res["false_alarm_rate"]["mean"] == 0 and res["hit_rate"]["mean"] == 1.0
    assert res["by_source"]["a"]["attribution"]["mean"] == pytest.approx(0.5)
    # a length judge claims exactly one of the two (b is always the longer other summary)
    longer = pairwise_rows(corpus, "a", ["b"], by_length, seed=0)
    res = other_pairs_false_alarm(self_rows, longer, n_resamples=100)
    assert res["false_alarm_rate"]["mean"] == pytest.approx(0.5)
    assert res["by_source"]["b"]["claim_rate"] == 1.0 and res["by_source"]["a"]["claim_rate"] == 0.0
    ref = np.mean([1 - s for s in pair_scores(longer).values()])
    assert res["by_source"]["b"]["attribution"]["mean"] == pytest.approx(ref)


# ----------------------------------------------------------------------------- perturbations


def test_perturbations_are_seeded_per_summary_and_do_what_they_say():
    corpus = Corpus(articles=[Article("x", "art"), Article("y", "art")],
                    summaries={"me": {"x": "The Cat sat. On the mat!", "y": "one two three four five six"},
                               "a": {"x": "A dog, barking loudly.", "y": "seven eight"},
                               "c": {"x": "never shown", "y": "never shown either"}})
    ws = perturb_corpus(corpus, "word-shuffle", seed=1, sources=["me", "a"])
    assert sorted(ws.summary("y", "me").split()) == sorted("one two three four five six".split())
    assert ws.summary("x", "c") == "never shown"
    again = perturb_corpus(Corpus(articles=corpus.articles[1:], summaries=corpus.summaries), "word-shuffle",
                           seed=1, sources=["me", "a"])
    assert again.summary("y", "me") == ws.summary("y", "me")  # independent of the other articles
    other_seeds = {perturb_corpus(corpus, "word-shuffle", seed=s, sources=["me"]).summary("y", "me")
                   for s in range(2, 8)}
    assert len(other_seeds) > 1
    ss = perturb_corpus(corpus, "sentence-shuffle", seed=0, sources=["me"])
    assert ss.summary("x", "me") in ("The Cat sat. On the mat!", "On the mat! The Cat sat.")
    assert {perturb_corpus(corpus, "sentence-shuffle", seed=s, sources=["me"]).summary("x", "me")
            for s in range(8)} == {"The Cat sat. On the mat!", "On the mat! The Cat sat."}
    tr = perturb_corpus(corpus, "truncate-to-equal-length", sources=["me", "a"])
    assert tr.summary("y", "me") == "one two" and tr.summary("y", "a") == "seven eight"
    assert tr.summary("x", "me") == "The Cat sat. On" and tr.summary("x", "a") == "A dog, barking loudly."
    lc = perturb_corpus(corpus, "lowercase-strip-punct", sources=["me", "a"])
    assert lc.summary("x", "me") == "the cat sat on the mat" and lc.summary("x", "a") == "a dog barking loudly"
    assert corpus.summary("x", "me") == "The Cat sat. On the mat!"  # the original is untouched


def test_a_spec_with_a_perturbation_loads_the_perturbed_corpus():
    corpus = length_corpus(n=3)
    spec = EvalSpec(corpus=corpus, self_source="me", others=["a"], perturb="truncate-to-equal-length")
    loaded = spec.load_corpus()
    for art in corpus.articles:
        assert len(loaded.summary(art.id, "me").split()) == len(loaded.summary(art.id, "a").split())
    assert loaded.summary("art000", "b") == corpus.summary("art000", "b")  # not shown: untouched
    with pytest.raises(UserError, match="unknown perturbation"):
        EvalSpec(corpus=corpus, self_source="me", perturb="paraphrase")


# ----------------------------------------------------------------------------- through selfrec eval


@pytest.mark.usefixtures("one_torch_thread")
def test_selfrec_eval_runs_every_control(tiny_model_dir, tmp_path, capsys):
    from selfrec_ft.data.synth import synth_corpus
    from selfrec_ft.scoring.items import build_items
    from selfrec_ft.scoring.scorer import Scorer

    c = synth_corpus("short", 7, seed=3)
    c.add_summaries("half", {a.id: " ".join(c.summary(a.id, "human").split()[:4]) for a in c.articles})
    cdir = write_corpus(c, tmp_path / "corpus")
    out = tmp_path / "ev"
    argv = ["eval", "--model", str(tiny_model_dir), "--corpus", str(cdir), "--self-source", "lead",
            "--prompt-preset", "compact", "--tasks", "pairwise-recognition,pairwise-preference", "--skip-first", "2",
            "--peer-model", str(tiny_model_dir), "--false-alarm", "--perturb", "word-shuffle",
            "--perturb-seed", "3", "--n-resamples", "100", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    md = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    ctl = report["controls"]
    assert ctl["peer"]["judges"][str(tiny_model_dir)]["difference"]["n"] == 5 * 2
    assert ctl["other_pairs"]["n_pairs"] == 5
    assert ctl["perturbed"]["word-shuffle"]["seed"] == 3
    assert ctl["perturbed"]["word-shuffle"]["recognition"]["mean"] is not None
    for heading in ("Peer baseline", "Other-vs-other pairs", "Perturbed conditions", "word-shuffle (seed 3)"):
        assert heading in md and heading in (out / "report.md").read_text()
    pert = out / "perturbed" / "word-shuffle"
    assert json.loads((pert / "eval_config.json").read_text())["perturb"] == {"kind": "word-shuffle", "seed": 3}
    assert json.loads((pert / "report.json").read_text())["meta"]["eval"]["perturb"]["kind"] == "word-shuffle"
    assert {r["self_source"] for r in read_jsonl_rows(out / "false-alarm" / "human--half" / "examples.jsonl")} \
        == {"human"}
    # the peer was asked about the author by name, the self judge about "you"
    tok = Scorer(str(tiny_model_dir)).tokenizer
    spec = EvalSpec(corpus=cdir, self_source="lead", tasks=["pairwise-recognition"], skip_first=2, limit=1,
                    preset="compact", templates={"pairwise-recognition": "pairwise-recognition-peer"})
    items = build_items(spec.load_corpus(), tok, spec, ["short-3-00002"], None)
    assert "Which summary did lead write?" in tok.decode(items[0].request.prompt_ids)
    # rerun: everything resumes, nothing is scored again, the section is written once
    assert main(argv) == 0
    assert (out / "report.md").read_text().count("## Is it self-recognition?") == 1


def test_selfrec_report_reads_other_pairs_and_refuses_peers_for_p1_files(tmp_path, capsys):
    corpus = length_corpus(n=10)
    mine = write_rows(tmp_path / "self.jsonl", pairwise_rows(corpus, "me", ["a", "b"], knows_itself, seed=1))
    others = write_rows(tmp_path / "ab.jsonl", pairwise_rows(corpus, "a", ["b"], by_length, seed=0))
    out = tmp_path / "r.json"
    assert main(["report", str(mine), "--other-pairs", str(others), "--json", str(out), "--n-resamples", "100"]) == 0
    assert "Other-vs-other pairs" in capsys.readouterr().out
    op = json.loads(out.read_text())["controls"]["other_pairs"]
    assert op["false_alarm_rate"]["mean"] == pytest.approx(0.5) and op["n_pairs"] == 10
    assert main(["report", "--format", "p1", str(mine), "--peer", str(others)]) == 2
    assert "--peer and --other-pairs read selfrec" in capsys.readouterr().err
