"""Sweep analysis on synthetic sweeps whose per-run means are known exactly."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import stats as sps

from selfrec_ft import stats
from selfrec_ft.cli import analyze_cmd
from selfrec_ft.errors import UserError
from selfrec_ft.sweep.analysis import analyse_sweep

SELF = "me"
OTHERS = ("X", "Y")
ARTICLES = [f"a{j}" for j in range(12)]
# article effects shared by every run (mean exactly 0)
E = np.linspace(-0.05, 0.05, len(ARTICLES))
NR = 200


def pair_rows(task, score_fn, domain):
    """Rows whose pair score is exactly score_fn(article_index): p̂_fwd("1") = p̂_bwd("2") = s."""
    rows = []
    for j, a in enumerate(ARTICLES):
        for o in OTHERS:
            s = float(score_fn(j))
            for order, probs, so in (("forward", {"1": s, "2": 1 - s}, "1"),
                                     ("backward", {"1": 1 - s, "2": s}, "2")):
                rows.append({"task": f"pairwise-{task}", "article_id": a, "self_source": SELF,
                             "other_source": o, "order": order, "self_option": so, "probs": probs,
                             "domain": domain})
    return rows


def fam_rows(d, domain):
    """Familiarity rows where log p(self) − mean log p(others) = d for every article."""
    rows = []
    for a in ARTICLES:
        for src, lp in ((SELF, -1.0), ("X", -1.0 - d + 0.1), ("Y", -1.0 - d - 0.1)):
            rows.append({"task": "familiarity", "article_id": a, "self_source": SELF,
                         "target_source": src, "mean_logprob": lp, "domain": domain})
    return rows


def write_eval(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_sweep(tmp_path, specs, checkpoints=None):
    """specs: run_id -> (params, rec_fn, pref_fn, familiarity or None); same functions both domains
    (out_of_domain scores shifted by +0.01)."""
    runs = []
    for rid, (params, rec, pref, fam) in specs.items():
        ev = {}
        for dom, name, shift in (("in_domain", "xsum", 0.0), ("out_of_domain", "cnn", 0.01)):
            rows = (pair_rows("recognition", lambda j: rec(j) + shift, name)
                    + pair_rows("preference", lambda j: pref(j) + shift, name))
            if fam is not None:
                rows += fam_rows(fam, name)
            write_eval(tmp_path / rid / dom / "examples.jsonl", rows)
            ev[dom] = f"{rid}/{dom}/examples.jsonl"
        run = {"run_id": rid, "params": params, "status": "done", "error": None,
               "output_dir": rid, "eval": ev}
        if checkpoints and rid in checkpoints:
            run["checkpoints"] = []
            for step, (rfn, pfn) in checkpoints[rid].items():
                p = tmp_path / rid / f"ck{step}" / "examples.jsonl"
                write_eval(p, pair_rows("recognition", rfn, "xsum") + pair_rows("preference", pfn, "xsum"))
                run["checkpoints"].append({"step": step, "eval": {"in_domain": f"{rid}/ck{step}/examples.jsonl"}})
        runs.append(run)
    (tmp_path / "runs.json").write_text(json.dumps({"runs": runs}))
    return tmp_path


def const(v):
    return lambda j: v


def test_per_run_means_and_correlations_match_scipy(tmp_path):
    rec = [0.52, 0.61, 0.55, 0.70, 0.66]
    pref = [0.50, 0.58, 0.60, 0.64, 0.57]
    specs = {f"r{i}": ({"labels": "self", "lr": i}, const(rec[i]), const(pref[i]), None)
             for i in range(5)}
    a = analyse_sweep(make_sweep(tmp_path, specs), n_resamples=NR)
    got_rec = [r["domains"]["in_domain"]["recognition"]["mean"] for r in a["runs"]]
    got_pref = [r["domains"]["in_domain"]["preference"]["mean"] for r in a["runs"]]
    assert got_rec == pytest.approx(rec) and got_pref == pytest.approx(pref)
    assert a["runs"][0]["domains"]["in_domain"]["recognition"]["n"] == len(ARTICLES) * len(OTHERS)
    c = a["correlation"]["in_domain"]
    assert c["n_runs"] == 5
    assert c["pearson"]["r"] == pytest.approx(sps.pearsonr(rec, pref).statistic)
    assert c["kendall"]["tau"] == pytest.approx(sps.kendalltau(rec, pref).statistic)
    assert c["slope"]["value"] == pytest.approx(sps.linregress(rec, pref).slope)
    # no article variation: every resample reproduces the point estimate
    assert c["pearson"]["ci95"] == pytest.approx([c["pearson"]["r"]] * 2)
    oo = a["correlation"]["out_of_domain"]
    assert oo["slope"]["value"] == pytest.approx(sps.linregress(np.add(rec, 0.01), np.add(pref, 0.01)).slope)
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["correlation"]["in_domain"]["pearson"]["r"] == pytest.approx(c["pearson"]["r"])
    assert "Pearson r" in (tmp_path / "report.md").read_text()


def test_bootstrap_resamples_articles_jointly_across_runs(tmp_path):
    # rec_i(article j) = a_i + E_j and pref_i = 2 a_i - 0.4 + 2 E_j: on any common set of drawn
    # articles pref = 2 rec - 0.4 exactly, so slope 2 and r 1 in every joint resample.
    a_i = [0.30, 0.36, 0.41, 0.45, 0.50]
    specs = {f"r{i}": ({"labels": "self"}, (lambda j, a=a: a + E[j]), (lambda j, a=a: 2 * a - 0.4 + 2 * E[j]), None)
             for i, a in enumerate(a_i)}
    res = analyse_sweep(make_sweep(tmp_path, specs), n_resamples=NR, plots=False)
    c = res["correlation"]["in_domain"]
    assert c["slope"]["value"] == pytest.approx(2.0)
    assert c["slope"]["ci95"] == pytest.approx([2.0, 2.0], abs=1e-9)
    assert c["pearson"]["ci95"] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert c["kendall"]["ci95"] == pytest.approx([1.0, 1.0])
    run0 = res["runs"][0]["domains"]["in_domain"]["recognition"]
    assert run0["mean"] == pytest.approx(a_i[0] + E.mean())
    assert run0["ci95"][1] - run0["ci95"][0] > 0.01  # per-run CI does see the article variation
    # per-run CI against an independent article bootstrap of the per-article scores
    per_article = a_i[0] + E
    idx = np.random.default_rng(99).integers(0, len(E), size=(4000, len(E)))
    ref = np.percentile(per_article[idx].mean(axis=1), [2.5, 97.5])
    assert run0["ci95"] == pytest.approx(ref, abs=0.006)


def test_treatment_vs_control_shifts_against_baseline(tmp_path):
    specs = {
        "base": ({"labels": "none", "n_train": 0}, lambda j: 0.5 + E[j], lambda j: 0.5 + E[j], None),
        "self": ({"labels": "self"}, lambda j: 0.7 + E[j], lambda j: 0.6 + E[j], None),
        "rand": ({"labels": "random"}, lambda j: 0.5 + E[j], lambda j: 0.52 + E[j], None),
        "len": ({"labels": "length"}, lambda j: 0.55 + E[j], lambda j: 0.5 + E[j], None),
    }
    res = analyse_sweep(make_sweep(tmp_path, specs), n_resamples=NR, plots=False)
    t = res["treatment_vs_control"]["in_domain"]
    assert t["baseline_run"] == "base"
    runs = {e["run_id"]: e for e in t["runs"]}
    assert runs["self"]["delta_recognition"]["value"] == pytest.approx(0.2)
    assert runs["self"]["delta_preference"]["value"] == pytest.approx(0.1)
    # paired on articles: the shared article effect cancels in every resample
    assert runs["rand"]["delta_preference"]["ci95"] == pytest.approx([0.02, 0.02], abs=1e-9)
    g = t["groups"]
    assert g["treatment"]["mean_delta_recognition"]["value"] == pytest.approx(0.2)
    assert g["control"]["n_runs"] == 2
    assert g["control"]["mean_delta_recognition"]["value"] == pytest.approx((0.0 + 0.05) / 2)
    assert g["control"]["mean_delta_preference"]["value"] == pytest.approx((0.02 + 0.0) / 2)
    assert g["control"]["preference_per_recognition"]["value"] == pytest.approx(0.01 / 0.025)
    assert g["treatment"]["preference_per_recognition"]["value"] == pytest.approx(0.5)
    assert {r["run_id"]: r["group"] for r in res["runs"]} == {
        "base": "baseline", "self": "treatment", "rand": "control", "len": "control"}


def test_familiarity_and_partial_correlation(tmp_path):
    rec = [0.52, 0.61, 0.55, 0.70, 0.66, 0.58]
    pref = [0.50, 0.58, 0.60, 0.64, 0.57, 0.55]
    fam = [0.1, 0.4, 0.2, 0.9, 0.5, 0.3]
    specs = {f"r{i}": ({"labels": "self"}, const(rec[i]), const(pref[i]), fam[i]) for i in range(6)}
    res = analyse_sweep(make_sweep(tmp_path, specs), n_resamples=NR, plots=False)
    got = [r["domains"]["in_domain"]["familiarity"]["mean"] for r in res["runs"]]
    assert got == pytest.approx(fam)
    rxy = np.corrcoef(rec, pref)[0, 1]
    rxz = np.corrcoef(rec, fam)[0, 1]
    ryz = np.corrcoef(pref, fam)[0, 1]
    expected = (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))
    pc = res["correlation"]["in_domain"]["partial_pearson_given_familiarity"]
    assert pc["n_runs"] == 6
    assert pc["r"] == pytest.approx(expected)
    assert stats.partial_correlation(rec, pref, fam) == pytest.approx(expected)


def test_fewer_than_three_done_runs_gives_null_correlations(tmp_path):
    specs = {"a": ({"labels": "self"}, const(0.6), const(0.55), None),
             "b": ({"labels": "random"}, const(0.5), const(0.5), None)}
    make_sweep(tmp_path, specs)
    data = json.loads((tmp_path / "runs.json").read_text())
    data["runs"].append({"run_id": "c", "params": {"labels": "other"}, "status": "failed",
                         "error": "CUDA out of memory", "output_dir": "c", "eval": {}})
    (tmp_path / "runs.json").write_text(json.dumps(data))
    res = analyse_sweep(tmp_path, n_resamples=NR)
    c = res["correlation"]["in_domain"]
    assert c["n_runs"] == 2
    assert c["pearson"]["r"] is None and c["kendall"]["tau"] is None and c["slope"]["value"] is None
    assert "fewer than 3" in c["note"]
    failed = [r for r in res["runs"] if r["run_id"] == "c"][0]
    assert failed["status"] == "failed" and failed["domains"] == {}
    assert "CUDA out of memory" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "recognition_vs_preference.png").is_file()


def test_dose_response_checkpoints_and_plots(tmp_path):
    ff = [0.0, 0.25, 0.5, 1.0]
    rec = [0.75, 0.66, 0.5, 0.3]
    pref = [0.62, 0.6, 0.52, 0.45]
    specs = {f"f{i}": ({"labels": "self", "flip_fraction": ff[i]}, const(rec[i]), const(pref[i]), None)
             for i in range(4)}
    ck = {"f0": {10: (const(0.55), const(0.51)), 20: (const(0.7), const(0.6))}}
    res = analyse_sweep(make_sweep(tmp_path, specs, checkpoints=ck), n_resamples=NR)
    d = res["dose_response"]["in_domain"]
    assert [p["flip_fraction"] for p in d["points"]] == ff
    assert d["slope_recognition"]["value"] == pytest.approx(sps.linregress(ff, rec).slope)
    assert d["slope_preference"]["value"] == pytest.approx(sps.linregress(ff, pref).slope)
    run0 = res["runs"][0]
    assert [c["step"] for c in run0["checkpoints"]] == [10, 20]
    assert run0["checkpoints"][1]["domains"]["in_domain"]["recognition"]["mean"] == pytest.approx(0.7)
    assert {r["label_strategy"] for r in res["runs"]} == {"self"}
    for name in ("recognition_vs_preference.png", "dose_response.png", "checkpoints.png"):
        path = tmp_path / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert imread(path).shape[0] > 100
    assert sorted(Path(p).name for p in res["plots"]) == sorted(
        ["recognition_vs_preference.png", "dose_response.png", "checkpoints.png"])


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="selfrec")
    analyze_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_analyze_command_and_user_errors(tmp_path, capsys):
    specs = {f"r{i}": ({"labels": "self"}, const(0.5 + 0.05 * i), const(0.5 + 0.03 * i), None)
             for i in range(3)}
    make_sweep(tmp_path, specs)
    assert run_cli(["analyze", str(tmp_path), "--n-resamples", "50", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert out == (tmp_path / "report.md").read_text()
    assert not (tmp_path / "recognition_vs_preference.png").exists()
    with pytest.raises(UserError, match="runs.json not found"):
        run_cli(["analyze", str(tmp_path / "nowhere")])
    bad = tmp_path / "r1" / "in_domain" / "examples.jsonl"
    bad.write_text(bad.read_text() + "{not json\n")
    with pytest.raises(UserError) as exc:
        run_cli(["analyze", str(tmp_path), "--n-resamples", "50", "--no-plots"])
    assert exc.value.file == str(bad) and exc.value.line == len(ARTICLES) * len(OTHERS) * 4 + 1


# ----------------------------------------------------------------------------- run-level inference
# (issue 13: the article bootstrap alone over-claims relations across runs)

from selfrec_ft.sweep.inference import JointBootstrap, correlation, run_level_pearson  # noqa: E402


def simulated_series(rng, run_rec, run_pref, n_articles=100, others=2, noise=0.08):
    """Per-pair scores of a sweep: run effect + article effect (shared by all runs, correlated
    between recognition and preference) + pair noise; returns the series of JointBootstrap."""
    art_rec = rng.normal(0, 0.05, n_articles)
    art_pref = 0.7 * art_rec + rng.normal(0, 0.03, n_articles)
    clusters = [(None, f"a{j}") for j in range(n_articles) for _ in range(others)]
    series = {}
    for i, (rr, pp) in enumerate(zip(run_rec, run_pref)):
        for name, level, art in (("recognition", rr, art_rec), ("preference", pp, art_pref)):
            vals = level + np.repeat(art, others) + rng.normal(0, noise, n_articles * others)
            series[(f"r{i}", name)] = {"values": vals.tolist(), "clusters": clusters}
    return series


def supported_rate(n_sweeps, k, relation, seed):
    rng = np.random.default_rng(seed)
    hits, article_only = 0, 0
    for _ in range(n_sweeps):
        rec = 0.5 + rng.normal(0, 0.03, k)
        pref = (0.5 + 0.8 * (rec - 0.5) + rng.normal(0, 0.006, k)) if relation else 0.5 + rng.normal(0, 0.03, k)
        joint = JointBootstrap(simulated_series(rng, rec, pref), n_resamples=200, seed=int(rng.integers(1 << 30)))
        c = correlation(joint, [f"r{i}" for i in range(k)], [], seed=0)
        hits += c["supported"]
        ci = c["pearson"]["ci95"]
        article_only += ci[0] > 0 or ci[1] < 0
    return hits / n_sweeps, article_only / n_sweeps


def test_null_sweeps_are_rarely_supported_and_real_relations_are_found():
    # 60 null sweeps of 6 runs: recognition and preference unrelated across runs
    null_rate, article_rate = supported_rate(60, 6, relation=False, seed=1)
    assert null_rate <= 0.10
    assert article_rate >= 0.5  # the article-level interval alone would have over-claimed
    # a real relation across 8 runs
    power, _ = supported_rate(50, 8, relation=True, seed=2)
    assert power >= 0.80


def test_run_level_pearson_against_brute_force_permutations_and_fisher_z():
    import itertools

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=6), rng.normal(size=6)
    y = y + 0.8 * x
    rl = run_level_pearson(x, y)
    r = np.corrcoef(x, y)[0, 1]
    perm = np.array([np.corrcoef(np.array(p), y)[0, 1] for p in itertools.permutations(x)])
    p_two = min(1.0, 2 * min(np.mean(perm >= r - 1e-12), np.mean(perm <= r + 1e-12)))
    assert rl["p_value"] == pytest.approx(p_two)
    z, se = np.arctanh(r), 1 / math.sqrt(6 - 3)
    assert rl["ci95"] == pytest.approx([math.tanh(z - 1.959964 * se), math.tanh(z + 1.959964 * se)], abs=1e-5)
    assert "permutation" in rl["method"] and "Fisher" in rl["method"]
    # with 3 runs nothing can be concluded: best p is 2/3! and the interval is [-1, 1]
    rl3 = run_level_pearson([0.1, 0.2, 0.3], [0.2, 0.4, 0.61])
    assert rl3["p_value"] >= 1 / 3 and rl3["ci95"] == [-1.0, 1.0]


def test_supported_key_verdict_and_run_level_block_in_analysis_json(tmp_path):
    # 6 runs on a line (with article noise): supported; the same means for 4 runs: not supported
    rec = [0.52, 0.55, 0.58, 0.61, 0.66, 0.70]
    pref = [0.50, 0.52, 0.55, 0.56, 0.60, 0.62]
    specs = {f"r{i}": ({"labels": "self"}, (lambda j, v=rec[i]: v + E[j]), (lambda j, v=pref[i]: v + E[j]), None)
             for i in range(6)}
    a = analyse_sweep(make_sweep(tmp_path / "six", specs), n_resamples=NR, plots=False)
    c = a["correlation"]["in_domain"]
    assert c["supported"] is True
    rl = c["pearson"]["run_level"]
    assert set(rl) >= {"ci95", "p_value", "method"} and rl["p_value"] < 0.05
    assert rl == json.loads((tmp_path / "six" / "analysis.json").read_text())["correlation"]["in_domain"]["pearson"]["run_level"]
    assert c["verdict"].startswith("Supported: preference rises with recognition across the 6 runs")
    md = (tmp_path / "six" / "report.md").read_text()
    assert md.index("Supported: preference rises") < md.index("## Runs") < md.index("## Recognition vs preference")
    few = {k: v for k, v in list(specs.items())[:4]}
    b = analyse_sweep(make_sweep(tmp_path / "four", few), n_resamples=NR, plots=False)
    c4 = b["correlation"]["in_domain"]
    assert c4["supported"] is False and c4["pearson"]["ci95"][0] > 0  # article level alone would say yes
    assert c4["verdict"].startswith("Not supported") and "4 runs" in c4["verdict"]
    assert c4["pearson"]["run_level"]["p_value"] >= 2 / math.factorial(4)


def test_partial_correlation_needs_five_runs(tmp_path):
    rec = [0.52, 0.61, 0.55, 0.70]
    pref = [0.50, 0.58, 0.60, 0.64]
    fam = [0.1, 0.4, 0.2, 0.9]
    specs = {f"r{i}": ({"labels": "self"}, const(rec[i]), const(pref[i]), fam[i]) for i in range(4)}
    pc = analyse_sweep(make_sweep(tmp_path, specs), n_resamples=NR, plots=False)[
        "correlation"]["in_domain"]["partial_pearson_given_familiarity"]
    assert pc["r"] is None and pc["n_runs"] == 4 and "at least 5" in pc["note"]


# ----------------------------------------------------------------------------- paired baselines


def test_each_run_is_compared_with_the_baseline_on_its_own_articles(tmp_path):
    # two baselines, as the runner writes them for skip_first 2 and 4: one per article set
    def articles_after(n):
        return ARTICLES[n:n + 6]

    def rows_for(arts, rec_fn, pref_fn, name):
        rows = []
        for task, fn in (("recognition", rec_fn), ("preference", pref_fn)):
            for a in arts:
                j = ARTICLES.index(a)
                for o in OTHERS:
                    s = float(fn(j))
                    rows += [{"task": f"pairwise-{task}", "article_id": a, "self_source": SELF, "other_source": o,
                              "order": order, "self_option": so, "probs": probs, "domain": name}
                             for order, probs, so in (("forward", {"1": s, "2": 1 - s}, "1"),
                                                      ("backward", {"1": 1 - s, "2": s}, "2"))]
        return rows

    base2 = (lambda j: 0.45 + 0.02 * j, lambda j: 0.48 + 0.01 * j)
    base4 = (lambda j: 0.55 - 0.01 * j, lambda j: 0.52 + 0.015 * j)
    specs = {  # run_id: (params, articles, (rec_fn, pref_fn))
        "baseline_2": ({"labels": "baseline", "n_articles": 2}, articles_after(2), base2),
        "baseline_4": ({"labels": "baseline", "n_articles": 4}, articles_after(4), base4),
        "same_as_base": ({"labels": "random", "n_articles": 4}, articles_after(4), base4),
        "self_n2": ({"labels": "self", "n_articles": 2}, articles_after(2),
                    (lambda j: base2[0](j) + 0.1, lambda j: base2[1](j) + 0.03)),
        "len_n3": ({"labels": "length", "n_articles": 3}, ARTICLES[5:11],  # as if a limit differed
                   (lambda j: base4[0](j) + 0.02, lambda j: base4[1](j))),
    }
    runs = []
    for rid, (params, arts, (rf, pf)) in specs.items():
        write_eval(tmp_path / rid / "examples.jsonl", rows_for(arts, rf, pf, "xsum"))
        runs.append({"run_id": rid, "params": params, "status": "done", "error": None, "output_dir": rid,
                     "eval": {"in_domain": f"{rid}/examples.jsonl"}})
    (tmp_path / "runs.json").write_text(json.dumps({"runs": runs}))
    res = analyse_sweep(tmp_path, n_resamples=NR, plots=False)
    t = res["treatment_vs_control"]["in_domain"]
    assert t["baseline_runs"] == ["baseline_2", "baseline_4"] and t["baseline_run"] is None
    by = {e["run_id"]: e for e in t["runs"]}
    # a run identical to its own baseline: exactly 0, in the point and in every resample
    same = by["same_as_base"]
    assert same["baseline_run"] == "baseline_4" and same["pairing"] == "same_n_articles"
    for name in ("recognition", "preference"):
        assert same[f"delta_{name}"]["value"] == 0.0 and same[f"delta_{name}"]["ci95"] == [0.0, 0.0]
    # paired with the n_articles=2 baseline on its 6 articles
    own = by["self_n2"]
    assert own["baseline_run"] == "baseline_2" and own["delta_recognition"]["n_articles"] == 6
    assert own["delta_recognition"]["value"] == pytest.approx(0.1)
    assert own["delta_preference"]["value"] == pytest.approx(0.03)
    # no baseline with n_articles=3: the one sharing most articles (baseline_4: a5..a9), on those
    ln = by["len_n3"]
    assert ln["baseline_run"] == "baseline_4" and ln["pairing"] == "most_articles_shared"
    assert ln["delta_recognition"]["n_articles"] == 5 and "5 articles both were scored on" in ln["note"]
    assert ln["delta_recognition"]["value"] == pytest.approx(0.02)
    assert ln["delta_preference"]["value"] == pytest.approx(0.0, abs=1e-12)
    g = t["groups"]["control"]
    assert g["mean_delta_recognition"]["value"] == pytest.approx((0.0 + 0.02) / 2)
    assert g["baseline_runs"] == ["baseline_4"]
    md = (tmp_path / "report.md").read_text()
    assert "| same_as_base | control | random | baseline_4 | 6 |" in md
    assert "baselines: baseline_2, baseline_4" in md
