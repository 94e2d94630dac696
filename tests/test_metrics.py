"""Metrics (PROTOCOL.md §3) and the clustered bootstrap, checked against independent computations."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from selfrec_ft import stats
from selfrec_ft.scoring import metrics

SELF = "me"


def pw_row(task, article, other, order, p1, p2, domain=None, self_option=None):
    row = {
        "task": f"pairwise-{task}",
        "article_id": article,
        "self_source": SELF,
        "other_source": other,
        "order": order,
        "self_option": self_option or ("1" if order == "forward" else "2"),
        "probs": {"1": p1, "2": p2},
    }
    if domain is not None:
        row["domain"] = domain
    return row


def pair(task, article, other, fwd, bwd, domain=None):
    return [pw_row(task, article, other, "forward", *fwd, domain=domain),
            pw_row(task, article, other, "backward", *bwd, domain=domain)]


# Hand-made recognition data: (article, other, fwd (p1, p2), bwd (p1, p2)).
REC = [
    ("a1", "X", (0.6, 0.2), (0.3, 0.5)),     # consistent self
    ("a1", "Y", (0.7, 0.1), (0.6, 0.2)),     # always 1
    ("a2", "X", (0.2, 0.6), (0.5, 0.1)),     # consistent other
    ("a2", "Y", (0.1, 0.3), (0.2, 0.4)),     # always 2
    ("a3", "X", (0.4, 0.4), (0.25, 0.25)),   # exact 0.5, tied answers
    ("a3", "Y", (0.9, 0.05), (0.05, 0.9)),   # consistent self
    ("a4", "X", (0.5, 0.3), (0.4, 0.2)),     # always 1
]


def rec_rows():
    rows = []
    for a, o, f, b in REC:
        rows += pair("recognition", a, o, f, b)
    # invalid pairs: zero mass, NaN, a missing order
    rows += pair("recognition", "a5", "X", (0.0, 0.0), (0.3, 0.6))
    rows += pair("recognition", "a5", "Y", (float("nan"), 0.2), (0.3, 0.6))
    rows.append(pw_row("recognition", "a6", "X", "forward", 0.8, 0.1))
    return rows


def expected_score(f, b):
    return 0.5 * (f[0] / (f[0] + f[1]) + b[1] / (b[0] + b[1]))


def test_normalise_and_invalid_mass():
    p_hat, mass = metrics.normalise({"1": 0.3, "2": 0.1})
    assert mass == pytest.approx(0.4)
    assert p_hat == pytest.approx({"1": 0.75, "2": 0.25})
    for bad in ({"1": 0.0, "2": 0.0}, {"1": float("nan"), "2": 0.5}, {"1": None, "2": 0.5},
                {"1": float("inf"), "2": 0.1}, {"1": -0.2, "2": 0.5}, {}):
        p_hat, _ = metrics.normalise(bad)
        assert not metrics.is_valid(p_hat)
    assert metrics.answer({"1": 0.2, "2": 0.7}) == "2"
    assert metrics.answer({"1": 0.3, "2": 0.3}) is None
    assert metrics.answer({"1": 0.0, "2": 0.0}) is None


def test_pairwise_scores_against_hand_computation():
    scores = {(s["article_id"], s["other_source"]): s for s in metrics.pairwise_scores(rec_rows(), "recognition")}
    assert len(scores) == len(REC) + 3
    for a, o, f, b in REC:
        s = scores[(a, o)]
        assert s["valid"]
        assert s["score"] == pytest.approx(expected_score(f, b))
        assert s["score_raw"] == pytest.approx(0.5 * (f[0] + b[1]))
        assert s["option_mass"] == pytest.approx(0.5 * (sum(f) + sum(b)))
        fa = None if f[0] == f[1] else ("1" if f[0] > f[1] else "2")
        ba = None if b[0] == b[1] else ("1" if b[0] > b[1] else "2")
        assert (s["fwd_answer"], s["bwd_answer"]) == (fa, ba)
    for key in (("a5", "X"), ("a5", "Y"), ("a6", "X")):
        assert not scores[key]["valid"] and scores[key]["score"] is None
    assert "missing backward" in scores[("a6", "X")]["reason"]
    assert scores[("a5", "X")]["invalid_rows"] == 1
    # the full task name is accepted, and other tasks are ignored
    assert len(metrics.pairwise_scores(rec_rows(), "pairwise-recognition")) == len(scores)
    assert metrics.pairwise_scores(rec_rows(), "preference") == []


def test_self_option_is_read_from_rows():
    # "which is worse" variant: the self summary is favoured by answering the *other* position
    rows = [pw_row("preference", "a", "X", "forward", 0.2, 0.6, self_option="2"),
            pw_row("preference", "a", "X", "backward", 0.7, 0.1, self_option="1")]
    (s,) = metrics.pairwise_scores(rows, "preference")
    assert s["score"] == pytest.approx(0.5 * (0.6 / 0.8 + 0.7 / 0.8))
    assert metrics.position_table([s])["consistent_self"] == 1.0


def test_pairwise_summary_mean_accuracy_position_by_source():
    scores = metrics.pairwise_scores(rec_rows(), "recognition")
    r = metrics.pairwise_summary(scores, seed=1, n_resamples=500)
    exp = [expected_score(f, b) for _, _, f, b in REC]
    assert r["n"] == len(REC)
    assert r["invalid"] == 3
    assert r["invalid_rows"] == 2
    assert r["mean"] == pytest.approx(sum(exp) / len(exp))
    assert r["mean_raw"] == pytest.approx(np.mean([0.5 * (f[0] + b[1]) for _, _, f, b in REC]))
    acc = 0.0
    for e in exp:
        acc += 1.0 if e > 0.5 + 1e-12 else 0.5 if abs(e - 0.5) < 1e-12 else 0.0
    assert r["accuracy"] == pytest.approx(acc / len(exp))
    # 4 valid articles: fewer than 5, so no interval (issue 13); intervals from >= 5 articles are
    # checked in test_interval_needs_five_articles
    assert r["ci95"] is None and "fewer than 5 articles (4)" in r["ci_note"]
    # position table: consistent self a1X, a3Y; consistent other a2X; always 1 a1Y, a4X; always 2 a2Y
    n = len(REC)
    assert r["position"] == pytest.approx(
        {"consistent_self": 2 / n, "consistent_other": 1 / n, "always_1": 2 / n, "always_2": 1 / n})
    assert r["position_biased"] is False
    for src in ("X", "Y"):
        sub = [expected_score(f, b) for _, o, f, b in REC if o == src]
        assert r["by_source"][src]["n"] == len(sub)
        assert r["by_source"][src]["mean"] == pytest.approx(np.mean(sub))
    assert r["by_source"]["X"]["invalid"] == 2 and r["by_source"]["Y"]["invalid"] == 1
    masses = [0.5 * (sum(f) + sum(b)) for _, _, f, b in REC]
    assert r["mean_option_mass"] == pytest.approx(np.mean(masses))


def test_exact_half_counts_half_in_accuracy():
    rows = pair("recognition", "a", "X", (0.5, 0.5), (0.5, 0.5)) + pair(
        "recognition", "b", "X", (0.9, 0.1), (0.1, 0.9))
    r = metrics.pairwise_summary(metrics.pairwise_scores(rows, "recognition"), n_resamples=200)
    assert r["accuracy"] == pytest.approx(0.75)


def test_accuracy_counts_a_rounded_half_as_half():
    # identical distributions in both orders: the score is ½ in exact arithmetic, but p/(p+q) +
    # q/(p+q) is not always exactly 1 in floating point
    rng = np.random.default_rng(11)
    rows, off = [], 0
    for i in range(200):
        p, q = (float(v) for v in rng.uniform(0.01, 0.99, 2))
        off += 0.5 * (p / (p + q) + q / (p + q)) != 0.5
        rows += pair("recognition", f"a{i}", "X", (p, q), (p, q))
    assert off > 0  # float equality with 0.5 would miscount these
    r = metrics.pairwise_summary(metrics.pairwise_scores(rows, "recognition"), n_resamples=50)
    assert r["accuracy"] == 0.5
    np.testing.assert_array_equal(metrics.accuracy_values([0.5 + 1e-10, 0.5 - 1e-10, 0.5 + 2e-9, 0.4]),
                                  [0.5, 0.5, 1.0, 0.0])


def _articles_rows(n_articles, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_articles):
        for o in ("X", "Y"):
            # halved: two option probabilities of one softmax sum to at most 1 (larger rows are invalid)
            rows += pair("recognition", f"a{i}", o, rng.uniform(0.05, 0.95, 2) / 2, rng.uniform(0.05, 0.95, 2) / 2)
    return rows


def test_interval_needs_five_articles():
    from selfrec_ft.scoring.report import render_markdown

    few = metrics.compute_report(_articles_rows(4), n_resamples=100)
    rec = few["pairwise"]["recognition"]
    assert rec["mean"] is not None and rec["ci95"] is None and rec["accuracy_ci95"] is None
    assert rec["n_articles"] == 4 and "fewer than 5 articles" in rec["ci_note"]
    assert rec["by_source"]["X"]["ci95"] is None
    assert any("fewer than 5 articles" in n for n in few["notes"])
    assert "– (< 5 articles)" in render_markdown(few)
    enough = metrics.compute_report(_articles_rows(5), n_resamples=100)["pairwise"]["recognition"]
    assert enough["ci95"][0] <= enough["mean"] <= enough["ci95"][1] and "ci_note" not in enough
    # individual ratios follow the same rule
    rows = []
    for i in range(4):
        rows += ind_rows("recognition", f"a{i}", {SELF: {"Yes": 0.6, "No": 0.4}, "X": {"Yes": 0.3, "No": 0.7}})
    ind = metrics.compute_report(rows, n_resamples=50)["individual"]["recognition"]
    assert ind["by_source"]["X"]["ci95"] is None and ind["pooled"]["ci95"] is None


def test_position_biased_flag():
    rows = []
    for i in range(10):
        fwd, bwd = ((0.9, 0.1), (0.8, 0.2)) if i < 8 else ((0.9, 0.1), (0.1, 0.9))
        rows += pair("recognition", f"a{i}", "X", fwd, bwd)
    rep = metrics.compute_report(rows, n_resamples=200)
    assert rep["pairwise"]["recognition"]["position"]["always_1"] == pytest.approx(0.8)
    assert rep["pairwise"]["recognition"]["position_biased"] is True
    assert any("position" in n for n in rep["notes"])


def brute_tau(x, y):
    conc = disc = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        s = (x[i] - x[j]) * (y[i] - y[j])
        conc += s > 0
        disc += s < 0
    return (conc - disc) / (len(x) * (len(x) - 1) / 2)


def test_kendall_tau_on_pairs_valid_in_both():
    rng = np.random.default_rng(3)
    rows, rec, pref = [], {}, {}
    for i in range(12):
        # halved: two option probabilities of one softmax sum to at most 1 (larger rows are invalid)
        f, b = rng.uniform(0.05, 0.95, 2) / 2, rng.uniform(0.05, 0.95, 2) / 2
        g, c = rng.uniform(0.05, 0.95, 2) / 2, rng.uniform(0.05, 0.95, 2) / 2
        rows += pair("recognition", f"a{i}", "X", f, b) + pair("preference", f"a{i}", "X", g, c)
        rec[i], pref[i] = expected_score(f, b), expected_score(g, c)
    # a pair invalid in preference only is excluded from tau
    rows += pair("recognition", "bad", "X", (0.5, 0.2), (0.1, 0.7))
    rows += pair("preference", "bad", "X", (0.0, 0.0), (0.1, 0.7))
    rep = metrics.compute_report(rows, n_resamples=200)
    xs, ys = [rec[i] for i in range(12)], [pref[i] for i in range(12)]
    assert rep["pairwise"]["kendall_tau_n"] == 12
    assert rep["pairwise"]["kendall_tau"] == pytest.approx(brute_tau(xs, ys))
    assert "kendall_tau_pvalue" not in rep["pairwise"]  # pairs are not independent


def test_kendall_tau_interval_resamples_articles():
    from scipy.stats import kendalltau

    # 150 articles x 4 pairs; the recognition-preference relation lives at the article level, so
    # pairs of one article are strongly dependent
    rng = np.random.default_rng(8)
    n_art, per = 150, 4
    art = rng.normal(size=n_art)
    rows, xs, ys, cl = [], [], [], []
    for i in range(n_art):
        for j in range(per):
            r = 1 / (1 + np.exp(-(art[i] + 0.3 * rng.normal())))
            p = 1 / (1 + np.exp(-(0.5 * art[i] + 0.6 * rng.normal())))
            # forward-only probabilities that give exactly these scores: fwd (s, 1-s), bwd (1-s, s)
            rows += pair("recognition", f"a{i}", f"o{j}", (r, 1 - r), (1 - r, r))
            rows += pair("preference", f"a{i}", f"o{j}", (p, 1 - p), (1 - p, p))
            xs.append(r), ys.append(p), cl.append(i)
    rep = metrics.compute_report(rows, seed=0, n_resamples=1000)["pairwise"]
    xs, ys, cl = np.array(xs), np.array(ys), np.array(cl)
    assert rep["kendall_tau"] == pytest.approx(kendalltau(xs, ys).statistic)
    assert rep["kendall_tau_n_articles"] == n_art
    # independent cluster bootstrap: a plain loop over drawn articles
    boot_rng = np.random.default_rng(99)
    members = [np.flatnonzero(cl == i) for i in range(n_art)]
    taus = []
    for _ in range(1000):
        rows_b = np.concatenate([members[i] for i in boot_rng.integers(0, n_art, n_art)])
        taus.append(kendalltau(xs[rows_b], ys[rows_b]).statistic)
    ref = np.percentile(taus, [2.5, 97.5])
    lo, hi = rep["kendall_tau_ci95"]
    width = ref[1] - ref[0]
    assert abs(lo - ref[0]) < 0.15 * width and abs(hi - ref[1]) < 0.15 * width
    # a bootstrap over pairs (as if independent) would be clearly narrower
    naive = [kendalltau(xs[b], ys[b]).statistic for b in boot_rng.integers(0, len(xs), (400, len(xs)))]
    assert width > 1.4 * np.subtract(*np.percentile(naive, [97.5, 2.5]))


def ind_rows(task, article, values, domain=None):
    out = []
    for src, probs in values.items():
        r = {"task": f"individual-{task}", "article_id": article, "self_source": SELF,
             "target_source": src, "probs": probs}
        if domain:
            r["domain"] = domain
        out.append(r)
    return out


IND_REC = {
    "a1": {SELF: (0.6, 0.2), "X": (0.3, 0.3), "Y": (0.1, 0.7)},
    "a2": {SELF: (0.2, 0.2), "X": (0.8, 0.1), "Y": (0.45, 0.15)},
    "a3": {SELF: (0.9, 0.05), "X": (0.5, 0.4), "Y": (0.5, 0.4)},
    "a4": {SELF: (0.0, 0.0), "X": (0.5, 0.4), "Y": (0.3, 0.3)},   # invalid self row
}


def test_individual_recognition_ratio_and_auroc():
    rows = []
    for a, vals in IND_REC.items():
        rows += ind_rows("recognition", a, {s: {"Yes": y, "No": n} for s, (y, n) in vals.items()})
    rep = metrics.compute_report(rows, n_resamples=300)
    ind = rep["individual"]["recognition"]

    def v(yn):
        return yn[0] / (yn[0] + yn[1])

    for t in ("X", "Y"):
        ratios = [v(vals[SELF]) / (v(vals[SELF]) + v(vals[t])) for a, vals in IND_REC.items() if a != "a4"]
        assert ind["by_source"][t]["ratio"] == pytest.approx(np.mean(ratios))
        assert ind["by_source"][t]["n"] == 3
        assert ind["by_source"][t]["invalid"] == 1
        # AUROC = P(v_self > v_t) + ½ P(tie) over all valid (self, t) row pairs
        pos = [v(vals[SELF]) for a, vals in IND_REC.items() if a != "a4"]
        neg = [v(vals[t]) for vals in IND_REC.values()]
        wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
        assert ind["auroc"][t] == pytest.approx(wins / (len(pos) * len(neg)))
    assert ind["invalid_rows"] == 1
    assert "score" not in rep["individual"]
    assert "pairwise" not in rep


def test_individual_score_expected_rating_ratio():
    rng = np.random.default_rng(5)
    rows, table = [], {}
    for i in range(6):
        table[i] = {s: rng.uniform(0.01, 0.3, 5) for s in (SELF, "X")}
        rows += ind_rows("score", f"a{i}", {s: {str(k + 1): float(p[k]) for k in range(5)}
                                            for s, p in table[i].items()})
    rep = metrics.compute_report(rows, n_resamples=300)
    by = rep["individual"]["score"]["by_source"]

    def expected_rating(p):
        return sum((k + 1) * p[k] for k in range(5)) / sum(p)

    ratios = [expected_rating(t[SELF]) / (expected_rating(t[SELF]) + expected_rating(t["X"]))
              for t in table.values()]
    assert by["X"]["ratio"] == pytest.approx(np.mean(ratios))
    assert by["X"]["ci95"][0] <= by["X"]["ratio"] <= by["X"]["ci95"][1]
    assert "auroc" not in rep["individual"]["score"]


def test_precomputed_value_rows_are_used_and_noted():
    rows = []
    for a, (vs, vx) in {"a1": (0.8, 0.2), "a2": (0.4, 0.6)}.items():
        for src, val in ((SELF, vs), ("X", vx)):
            rows.append({"task": "individual-recognition", "article_id": a, "self_source": SELF,
                         "target_source": src, "probs": None, "value": val, "value_origin": "p1:x"})
    rep = metrics.compute_report(rows, n_resamples=100)
    assert rep["individual"]["recognition"]["by_source"]["X"]["ratio"] == pytest.approx((0.8 + 0.4) / 2)
    assert any("undocumented" in n for n in rep["notes"])


def test_compute_report_schema_domains_and_json_safety():
    rows = []
    for a, o, f, b in REC:
        rows += pair("recognition", a, o, f, b, domain="d1")
        rows += pair("preference", a, o, b, f, domain="d1")
        rows += pair("recognition", a, o, b, f, domain="d2")
    rows += pair("recognition", "z", "X", (0.0, 0.0), (0.0, 0.0), domain="d2")
    rows.append({"task": "familiarity", "article_id": "a1", "self_source": SELF,
                 "target_source": "X", "mean_logprob": -1.0})
    rep = metrics.compute_report(rows, seed=0, n_resamples=200)
    json.dumps(rep, allow_nan=False)
    pw = rep["pairwise"]
    assert set(pw) >= {"recognition", "preference", "kendall_tau"}
    for key in ("mean", "mean_raw", "ci95", "accuracy", "n", "invalid", "mean_option_mass",
                "position", "by_source", "position_biased"):
        assert key in pw["recognition"]
    assert pw["recognition"]["n"] == 2 * len(REC) and pw["recognition"]["invalid"] == 1
    assert set(rep["by_domain"]) == {"d1", "d2"}
    d2 = rep["by_domain"]["d2"]
    assert "preference" not in d2["pairwise"]
    assert d2["pairwise"]["recognition"]["mean"] == pytest.approx(
        np.mean([expected_score(b, f) for _, _, f, b in REC]))
    assert "individual" not in rep
    # every pair invalid: no NaN anywhere, just None
    only_bad = metrics.compute_report(pair("recognition", "z", "X", (0.0, 0.0), (0.1, 0.1)), n_resamples=50)
    json.dumps(only_bad, allow_nan=False)
    assert only_bad["pairwise"]["recognition"]["mean"] is None
    assert only_bad["pairwise"]["recognition"]["invalid"] == 1


def test_duplicate_order_is_an_error():
    rows = pair("recognition", "a", "X", (0.5, 0.2), (0.1, 0.7))
    with pytest.raises(ValueError, match="duplicate"):
        metrics.pairwise_scores(rows + rows[:1], "recognition")


# ----------------------------------------------------------------------------- bootstrap


def test_cluster_bootstrap_deterministic_and_contains_mean():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(40), 3)
    values = rng.normal(size=120) + np.repeat(rng.normal(size=40), 3)
    a = stats.cluster_bootstrap_mean(values, clusters, n_resamples=500, seed=7)
    b = stats.cluster_bootstrap_mean(values, clusters, n_resamples=500, seed=7)
    c = stats.cluster_bootstrap_mean(values, clusters, n_resamples=500, seed=8)
    assert a == b
    assert a[1] != c[1]
    assert a[0] == pytest.approx(values.mean())
    assert a[1][0] < a[0] < a[1][1]


def test_cluster_bootstrap_resamples_clusters_not_rows():
    rng = np.random.default_rng(1)
    per_cluster = rng.normal(size=60)
    k = 10
    values = np.repeat(per_cluster, k)  # each cluster holds k identical copies
    clusters = np.repeat(np.arange(60), k)
    _, (lo, hi) = stats.cluster_bootstrap_mean(values, clusters, n_resamples=2000, seed=0)
    # independent percentile bootstrap over the 60 cluster values with plain numpy
    idx = np.random.default_rng(123).integers(0, 60, size=(4000, 60))
    ref_lo, ref_hi = np.percentile(per_cluster[idx].mean(axis=1), [2.5, 97.5])
    assert (hi - lo) == pytest.approx(ref_hi - ref_lo, rel=0.15)
    # a row-level bootstrap would be about sqrt(k) narrower
    assert (hi - lo) > 2 * (ref_hi - ref_lo) / math.sqrt(k)


def test_cluster_bootstrap_weights_clusters_by_size():
    values = [1.0, 1.0, 1.0, 0.0]
    clusters = ["a", "a", "a", "b"]
    mean, (lo, hi) = stats.cluster_bootstrap_mean(values, clusters, n_resamples=300, seed=0)
    assert mean == pytest.approx(0.75)
    assert 0.0 <= lo <= mean <= hi <= 1.0


def test_cluster_bootstrap_degenerate_cases():
    assert stats.cluster_bootstrap_mean([0.2, 0.4], ["a", "a"]) == (pytest.approx(0.3), (pytest.approx(0.3), pytest.approx(0.3)))
    assert stats.cluster_bootstrap_mean([0.7] * 5, list("abcde")) == (0.7, (0.7, 0.7))
    with pytest.raises(ValueError):
        stats.cluster_bootstrap_mean([], [])
    with pytest.raises(ValueError):
        stats.cluster_bootstrap_mean([float("nan"), 1.0], ["a", "b"])
