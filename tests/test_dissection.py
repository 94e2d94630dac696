"""Preference dissection: P2's properties and weights, the Bayesian logistic fit, the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.integrate import trapezoid
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from scipy.stats import spearmanr

from selfrec_ft.cli import main
from selfrec_ft.dissection.fit import accuracy, fit_map, fit_nuts, p2_folds
from selfrec_ft.dissection.properties import (
    FEATURES,
    PROPERTIES,
    SELF,
    group_name,
    load_fitted_params,
    preference_scores,
    scenario_groups,
)
from selfrec_ft.dissection.run import PLOT_NAME, read_comparisons, run_dissection
from selfrec_ft.errors import UserError

P2_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "preference_dissection"
if not P2_DIR.is_dir():
    P2_DIR = Path("/work/shared/data/preference_dissection")
WEIGHTS_DIR = P2_DIR / "fitted_paras_comparison"
needs_p2 = pytest.mark.skipif(not WEIGHTS_DIR.is_dir(), reason="P2 fixture data not present")


def draw_comparisons(rng, n, k, p_nonzero=0.3):
    """Each feature non-zero in ~p_nonzero of pairs, +1 and -1 equally likely."""
    return (rng.random((n, k)) < p_nonzero) * rng.choice([-1.0, 1.0], size=(n, k))


# ---------------------------------------------------------------- properties and P2's weight files


@needs_p2
def test_property_names_are_p2s_feature_order():
    keys = list(yaml.safe_load((P2_DIR / "prompts" / "all_characteristics.yaml").read_text()))
    assert list(PROPERTIES) == keys and len(PROPERTIES) == 29
    assert FEATURES == PROPERTIES + (SELF,) and SELF == "self"


@needs_p2
def test_loader_reproduces_p2_published_degrees_of_preference():
    params = load_fitted_params(WEIGHTS_DIR)
    assert len(params) == 16
    assert "Creative Writing" in params and "w_constraints" in params
    scen = scenario_groups(params)
    assert len(scen) == 11
    assert all(len(params[g]) == 33 and params[g]["human"].shape == (29,) for g in params)

    def mean_score(judge, k):
        return float(np.mean([preference_scores(params[g][judge])[k] for g in scen]))

    # Values stated in the fixture README (the paper's numbers), averaged over the 11 scenarios.
    sev, mod = PROPERTIES.index("no severe errors"), PROPERTIES.index("no moderate errors")
    assert (sev, mod) == (22, 21)
    assert mean_score("human", sev) == pytest.approx(62.86, abs=0.006)
    assert mean_score("gpt-4-1106-preview", sev) == pytest.approx(76.19, abs=0.006)
    assert mean_score("qwen-72b-chat", sev) == pytest.approx(65.27, abs=0.006)
    assert mean_score("human", mod) == pytest.approx(52.45, abs=0.006)
    assert mean_score("gpt-4-1106-preview", mod) == pytest.approx(58.00, abs=0.006)


def test_group_name_and_bad_weight_file(tmp_path):
    assert group_name("x/model_Creative Writing_fitted_paras.jsonl") == "Creative Writing"
    bad = tmp_path / "model_G_fitted_paras.jsonl"
    bad.write_text('{"model_name": "a", "parameters": [0.1]}\n')
    with pytest.raises(UserError) as ei:
        load_fitted_params(tmp_path)
    assert ei.value.line == 1 and ei.value.file.endswith("model_G_fitted_paras.jsonl")


# ---------------------------------------------------------------- (a) recovery of P2's human weights


@needs_p2
def test_fit_recovers_p2_human_weights():
    w_true = load_fitted_params(WEIGHTS_DIR)["Knowledge-aware"]["human"]
    rng = np.random.default_rng(0)
    X = draw_comparisons(rng, 20_000, 29)
    y = (rng.random(len(X)) < expit(X @ w_true)).astype(int)
    f = fit_map(X, y)
    true = 100 * expit(w_true)
    lo, hi = f.score_ci95.T
    assert spearmanr(f.scores, true).statistic >= 0.9
    assert np.max(np.abs(f.scores - true)) <= 3.0
    assert np.mean((lo <= true) & (true <= hi)) >= 0.8
    assert np.all(lo < f.scores) and np.all(f.scores < hi)


# ---------------------------------------------------------------- (c) MAP and interval, independently


def _nlp(w, X, y, b):
    """Negative log posterior written out directly: Bernoulli log-likelihood and Laplace log-prior."""
    p = 1.0 / (1.0 + np.exp(-(X @ w)))
    return -np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)) + np.sum(np.abs(w)) / b


def test_map_matches_direct_minimisation_on_tiny_problem():
    rng = np.random.default_rng(1)
    X = draw_comparisons(rng, 60, 3, p_nonzero=0.5)
    y = (rng.random(60) < expit(X @ np.array([0.8, -0.4, 0.0]))).astype(float)
    w = fit_map(X, y, prior_scale=0.1).weights
    direct = minimize(_nlp, np.full(3, 0.01), args=(X, y, 0.1), method="Nelder-Mead",
                      options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20_000})
    assert _nlp(w, X, y, 0.1) <= direct.fun + 1e-9
    np.testing.assert_allclose(w, direct.x, atol=1e-4)


def test_map_matches_sklearn_l1_logistic_regression():
    # sklearn minimises C * sum(logloss) + |w|_1; ours sum(logloss) + |w|_1 / b. Multiplying ours by
    # b gives sklearn's with C = b: a Laplace(0, b) prior is an L1 penalty of weight 1/b.
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    k, b = 8, 0.05
    X = draw_comparisons(rng, 1500, k)
    w_true = np.array([0.6, -0.3, 0.2, 0.0, 0.0, 0.05, -0.02, 0.4])
    y = (rng.random(len(X)) < expit(X @ w_true)).astype(int)
    sk = LogisticRegression(l1_ratio=1.0, C=b, fit_intercept=False, solver="liblinear", tol=1e-10,
                            max_iter=100_000).fit(X, y)
    ours = fit_map(X, y, prior_scale=b).weights
    np.testing.assert_allclose(ours, sk.coef_[0], atol=2e-4)
    assert np.any(ours == 0) and set(np.flatnonzero(ours == 0)) == set(np.flatnonzero(np.abs(sk.coef_[0]) < 1e-6))


def test_laplace_interval_matches_exact_posterior_in_one_dimension():
    rng = np.random.default_rng(3)
    x = rng.choice([-1.0, 1.0], size=3000)[:, None]
    y = (rng.random(3000) < expit(0.3 * x[:, 0])).astype(float)
    f = fit_map(x, y, prior_scale=0.1)
    grid = np.linspace(-1, 1.5, 50_001)
    agree = (y[:, None] == 1) == (x > 0)  # the response the feature favours was preferred
    s, m = int(agree.sum()), len(y)
    logpost = s * log_expit(grid) + (m - s) * log_expit(-grid) - np.abs(grid) / 0.1
    dens = np.exp(logpost - logpost.max())
    dens /= trapezoid(dens, grid)
    mode = grid[np.argmax(dens)]
    sd = np.sqrt(trapezoid(dens * (grid - trapezoid(dens * grid, grid)) ** 2, grid))
    assert f.weights[0] == pytest.approx(mode, abs=1e-4)
    assert f.sd[0] == pytest.approx(sd, rel=0.03)


def test_accuracy_counts_ties_as_half():
    X = np.array([[1.0, 0], [0, 0], [-1, 1], [0, -1]])
    y = np.array([1, 0, 0, 1])
    w = np.array([0.5, 0.5])  # z = 0.5, 0, 0, -0.5
    assert accuracy(X, y, w) == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)


def test_p2_fold_split_matches_p2_code():
    n, folds = 103, 10
    np.random.seed(0)
    idxs = np.arange(n)
    np.random.shuffle(idxs)
    for i, train in enumerate(p2_folds(n, folds, seed=0)):
        split = int(i / folds * n)
        expected = np.concatenate([idxs[:split], idxs[split + int(n / folds):]])
        np.testing.assert_array_equal(train, expected)


def test_nuts_mode_without_numpyro_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "numpyro", None)  # makes `import numpyro` fail
    with pytest.raises(UserError, match=r"pip install selfrec_ft\[bayes\]"):
        fit_nuts(np.ones((4, 1)), np.array([1, 0, 1, 1]))
    f = tmp_path / "c.jsonl"
    f.write_text('{"features": {"relevant": 1}, "preferred": 1}\n')
    assert main(["dissect", "--comparisons", str(f), "--out", str(tmp_path / "o"), "--method", "nuts"]) == 2


# ---------------------------------------------------------------- (b) input errors


GOOD = '{"features": {"relevant": 1, "lengthy": -1}, "preferred": 1}'


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"features": {"relevnt": 1}, "preferred": 1}', 'unknown property "relevnt" (did you mean "relevant"?)'),
        ('{"features": {"relevant": 2}, "preferred": 1}', "must be -1, 0 or 1"),
        ('{"features": {"relevant": "1"}, "preferred": 1}', "must be -1, 0 or 1"),
        ('{"features": {"relevant": true}, "preferred": 1}', "must be -1, 0 or 1"),
        ('{"features": {"relevant": 1}, "preferred": 1', "malformed JSON"),
        ('{"features": {"relevant": 1}}', 'missing field "preferred"'),
        ('{"features": {"relevant": 1}, "preferred": 2}', '"preferred" must be 1'),
        ('{"features": {"relevant": 1}, "preferred": "A"}', '"preferred" must be 1'),
        ('{"features": [1, 0], "preferred": 1}', 'field "features" must be dict'),
        ('{"preferred": 1}', 'missing field "features"'),
    ],
)
def test_bad_input_line_is_a_user_error_with_line_number(tmp_path, capsys, line, message):
    f = tmp_path / "comparisons.jsonl"
    f.write_text(GOOD + "\n" + line + "\n" + GOOD + "\n")
    with pytest.raises(UserError) as ei:
        read_comparisons(f)
    assert ei.value.line == 2 and ei.value.file == str(f)
    assert message in ei.value.message
    capsys.readouterr()
    assert main(["dissect", "--comparisons", str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {f}:2: ")
    assert not (tmp_path / "out").exists()


def test_empty_or_featureless_file_is_a_user_error(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("\n")
    with pytest.raises(UserError, match="no comparisons"):
        run_dissection(f, tmp_path / "o")
    f.write_text('{"features": {}, "preferred": 1}\n{"features": {"self": 0}, "preferred": 0}\n')
    with pytest.raises(UserError, match="nothing to fit"):
        run_dissection(f, tmp_path / "o")


# ---------------------------------------------------------------- (d) the self feature, end to end


def test_self_feature_is_recovered_end_to_end(tmp_path, capsys):
    names = [SELF, "relevant", "lengthy", "no severe errors"]
    w_true = np.array([0.5, 0.3, 0.15, -0.2])
    rng = np.random.default_rng(4)
    n = 6000
    X = draw_comparisons(rng, n, len(names))
    y = (rng.random(n) < expit(X @ w_true)).astype(int)
    path = tmp_path / "comparisons.jsonl"
    with open(path, "w") as fh:
        for x, label in zip(X, y):
            # zeros left out on purpose: a missing property counts as 0
            feats = {nm: int(v) for nm, v in zip(names, x) if v != 0}
            fh.write(json.dumps({"features": feats, "preferred": int(label)}) + "\n")

    out = tmp_path / "out"
    assert main(["dissect", "--comparisons", str(path), "--out", str(out)]) == 0
    assert "4 properties fitted" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == n
    assert set(report["properties"]) == set(names)
    assert sorted(report["absent"]) == sorted(set(FEATURES) - set(names))
    for name, wt in zip(names, w_true):
        p = report["properties"][name]
        assert abs(p["score"] - 100 * expit(wt)) < 3, name
        assert p["score"] == pytest.approx(100 * expit(p["weight"]))
        assert p["n_nonzero"] == int(np.count_nonzero(X[:, names.index(name)]))
    lo, hi = report["properties"][SELF]["ci95"]
    assert 50 < lo <= 100 * expit(w_true[0]) <= hi

    # accuracy against a plain loop over the rows (all-zero rows are ties at p = 1/2)
    w = np.array([report["properties"][nm]["weight"] for nm in names])
    right = 0.0
    for x, label in zip(X, y):
        z = sum(a * b for a, b in zip(x, w))
        right += 0.5 if z == 0 else float((z > 0) == (label == 1))
    assert np.any(np.all(X == 0, axis=1))
    assert report["accuracy"] == pytest.approx(right / n)

    md = (out / "report.md").read_text()
    assert "| self |" in md and f"{report['properties'][SELF]['score']:.2f}" in md
    import matplotlib.image

    img = matplotlib.image.imread(out / PLOT_NAME)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


# ---------------------------------------------------------------- (e) the default: NUTS posterior mean


def _rw_metropolis(X, y, b, n_chains=64, n_steps=8_000, burn=2_000, step=0.07, seed=123):
    """An independent sampler: plain random-walk Metropolis, vectorised over chains, on the log
    posterior written out directly (Bernoulli log-likelihood + Laplace(0, b) log prior).
    Returns the posterior mean of the weights and thinned draws."""
    rng = np.random.default_rng(seed)
    k = X.shape[1]

    def logpost(W):  # W: (k, chains)
        Z = X @ W
        return (y[:, None] * Z - np.logaddexp(0.0, Z)).sum(axis=0) - np.abs(W).sum(axis=0) / b

    W = rng.normal(0.0, 0.05, size=(k, n_chains))
    lp = logpost(W)
    total, count, draws = np.zeros(k), 0, []
    for t in range(n_steps):
        prop = W + step * rng.normal(size=W.shape)
        lp_prop = logpost(prop)
        accept = np.log(rng.random(n_chains)) < lp_prop - lp
        W = np.where(accept, prop, W)
        lp = np.where(accept, lp_prop, lp)
        if t >= burn:
            total += W.sum(axis=1)
            count += n_chains
            if t % 5 == 0:
                draws.append(W.T.copy())
    return total / count, np.concatenate(draws)


NUTS_NAMES = [SELF, "relevant", "lengthy"]


@pytest.fixture(scope="module")
def small_problem():
    """300 comparisons on 3 features, and the independent sampler's posterior (computed once)."""
    rng = np.random.default_rng(12)
    X = draw_comparisons(rng, 300, 3, p_nonzero=0.5)
    y = (rng.random(300) < expit(X @ np.array([0.6, -0.3, 0.05]))).astype(float)
    mean_w, draws = _rw_metropolis(X, y, 0.1)
    return X, y, mean_w, draws


def test_default_fit_is_the_nuts_posterior_mean_matching_an_independent_sampler(small_problem):
    from selfrec_ft.dissection.fit import NUTS_DEFAULT, fit

    X, y, mean_w, draws = small_problem
    f = fit(X, y)  # the default method
    assert f.method == "nuts" and f.settings["num_chains"] == NUTS_DEFAULT.num_chains
    ref_scores = 100 * expit(mean_w)
    np.testing.assert_allclose(f.scores, ref_scores, atol=0.5)
    ref_ci = 100 * expit(np.percentile(draws, [2.5, 97.5], axis=0).T)
    np.testing.assert_allclose(f.score_ci95, ref_ci, atol=1.5)
    assert f.diagnostics["r_hat_max"] < 1.05 and f.diagnostics["ess_min"] > 200
    # with this sharp prior the posterior mode is not the posterior mean (the point of issue 13)
    m = fit(X, y, method="map")
    assert m.method == "map" and m.settings is None
    np.testing.assert_array_equal(m.weights, fit_map(X, y).weights)
    assert np.max(np.abs(m.scores - ref_scores)) > 0.5


def test_run_dissection_reports_the_posterior_mean_by_default(tmp_path, small_problem):
    X, y, mean_w, _ = small_problem
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"features": {nm: int(v) for nm, v in zip(NUTS_NAMES, x) if v},
                                        "preferred": int(label)}) + "\n" for x, label in zip(X, y)))
    rep = run_dissection(path, tmp_path / "out")
    assert rep["method"] == "nuts" and rep["settings"]["folds"] == 1 and rep["diagnostics"]["r_hat_max"] < 1.05
    for j, name in enumerate(NUTS_NAMES):
        assert rep["properties"][name]["score"] == pytest.approx(100 * expit(mean_w[j]), abs=0.5)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "posterior mean and 95% credible interval (NUTS" in md and "R-hat" in md


def test_nuts_settings_p2_and_overrides():
    from selfrec_ft.dissection.fit import NUTS_P2, NutsSettings, fit, nuts_settings

    # P2's exact settings (Preference-Dissection's fitting code): 10 folds, 4 chains, 500 + 2000
    assert nuts_settings("nuts-p2") == NutsSettings(num_warmup=500, num_samples=2000, num_chains=4, folds=10, seed=0)
    assert nuts_settings("nuts-p2") == NUTS_P2
    assert nuts_settings("nuts", folds=3, num_samples=None).folds == 3
    with pytest.raises(UserError):
        nuts_settings("nuts", num_chains=0)
    with pytest.raises(UserError, match="do not apply"):
        fit(np.ones((4, 1)), np.array([1, 0, 1, 1]), method="map", folds=10)
    rng = np.random.default_rng(5)
    X = draw_comparisons(rng, 80, 2, p_nonzero=0.6)
    y = (rng.random(80) < expit(X @ np.array([0.5, 0.0]))).astype(float)
    f = fit(X, y, method="nuts-p2", folds=2, num_warmup=100, num_samples=150, num_chains=1)
    assert f.method == "nuts-p2" and f.settings["folds"] == 2 and f.settings["num_chains"] == 1
    assert np.all(f.ci95[:, 0] < f.weights) and np.all(f.weights < f.ci95[:, 1])
