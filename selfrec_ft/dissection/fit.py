"""Bayesian logistic regression of "response 1 preferred" on comparison features (P2's model).

Model: ``P(y=1 | x) = sigmoid(x @ w)`` with no intercept and an independent Laplace(0, b) prior on
every weight (P2: b = 0.1). The preference score of a property is ``100 * sigmoid(w_k)``: the
probability that response 1 is preferred when it is better on that property alone.

* :func:`fit_nuts` (default, ``method="nuts"``): the **posterior mean** of each weight and a 95%
  equal-tailed **credible interval**, from numpyro's NUTS sampler on all the data — what P2
  reports (P2 averages posterior means over folds, see ``nuts-p2``). Default settings
  (:data:`NUTS_DEFAULT`): 2 chains × 1000 draws after 500 warm-up steps, key ``seed``. The
  Monte-Carlo error of a posterior mean is then about sd/45 (≈0.05 score points for a typical
  posterior sd of 0.1 in weight), the tests run in seconds on 2 CPU cores, and a 29-property fit
  of a few thousand comparisons takes tens of seconds — the trade-off: 4 × 2000 draws would cut
  the Monte-Carlo error by 2 at 4 times the time. R-hat and the effective sample size of every
  weight are reported (numpyro's diagnostics).
* ``method="nuts-p2"``: P2's exact procedure (:data:`NUTS_P2`): 500 warm-up and 2000 draws in
  each of 4 chains, key 0, on each of 10 training folds (the data shuffled with NumPy seed 0, each
  fold leaving out one tenth), posterior means averaged over the folds; the interval from the
  pooled draws.
* :func:`fit_map` (``method="map"``): the posterior mode plus a Laplace approximation. Fast, but
  with P2's sharp prior the mode puts many weights at exactly 0 (score 50.00) where the posterior
  mean is not 0, and the Gaussian interval misplaces the ends of a skewed posterior. The mode
  minimises ``sum(log(1 + exp(z)) - y z) + |w|_1 / b`` with ``z = X w``; it is found exactly by
  L-BFGS-B on the smooth split ``w = u - v`` with ``u, v >= 0`` (the L1 term becomes linear). The
  Gaussian uses the Hessian of the negative log posterior at the mode: the likelihood part
  ``X' diag(p(1-p)) X`` plus the prior's curvature. The log of a Laplace density is linear on each
  side of 0, so a weight whose mode is non-zero gets no prior curvature; a weight held at exactly
  0 by the prior's kink gets ``1 / (2 b^2)``, the precision of a Gaussian with the prior's
  variance ``2 b^2``.

Why numpyro: it is the sampler P2's own code used (so ``nuts-p2`` is P2's procedure, not an
imitation), it is maintained, and it installs from wheels with no compiler (numpyro 0.22 + jax /
jaxlib 0.10.2: ~90 MB of downloads, ~390 MB installed, almost all jaxlib). PyMC would add
PyTensor's C compilation step; CmdStanPy needs a C++ toolchain and downloads CmdStan at install
time (fails offline); emcee is small but its ensemble sampler is not NUTS and mixes poorly in 29
dimensions with a kinked prior.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from scipy.stats import norm

from selfrec_ft.errors import UserError

from selfrec_ft.defaults import DEFAULT_DISSECTION_METHOD as DEFAULT_METHOD
from selfrec_ft.defaults import DEFAULT_PRIOR_SCALE  # noqa: F401 (re-exported)
from selfrec_ft.defaults import DISSECTION_METHODS as METHODS

_Z95 = float(norm.ppf(0.975))


@dataclass(frozen=True)
class NutsSettings:
    """How the NUTS methods sample: per fold, ``num_chains`` chains of ``num_warmup`` warm-up steps
    and ``num_samples`` draws, PRNG key ``seed``; ``folds`` > 1 averages fold posterior means."""

    num_warmup: int = 500
    num_samples: int = 1000
    num_chains: int = 2
    folds: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_warmup", "num_samples", "num_chains", "folds"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (0 if name == "num_warmup" else 1):
                raise UserError(f"NUTS setting {name} must be a positive integer, got {getattr(self, name)!r}")


NUTS_DEFAULT = NutsSettings()
"""``method="nuts"``: fast enough for CI, Monte-Carlo error far below the posterior sd."""
NUTS_P2 = NutsSettings(num_warmup=500, num_samples=2000, num_chains=4, folds=10, seed=0)
"""``method="nuts-p2"``: P2's exact settings."""


@dataclass(frozen=True)
class Fit:
    """Fitted weights, in the column order of the feature matrix."""

    weights: np.ndarray  # (k,) point estimate: posterior mode (map) or P2's fold-averaged mean (nuts)
    sd: np.ndarray  # (k,) posterior standard deviation of each weight
    ci95: np.ndarray  # (k, 2) 95% interval on each weight
    method: str  # "nuts", "nuts-p2" or "map"
    prior_scale: float
    settings: dict | None = None  # NUTS settings used (asdict(NutsSettings))
    diagnostics: dict | None = field(default=None)  # NUTS: r_hat_max, ess_min over weights and folds

    @property
    def scores(self) -> np.ndarray:
        """Preference scores ``100 * sigmoid(w)``."""
        return 100.0 * expit(self.weights)

    @property
    def score_ci95(self) -> np.ndarray:
        """95% intervals on the scores (the weight interval through the monotone ``100*sigmoid``)."""
        return 100.0 * expit(self.ci95)


def _check(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, k) and y (n,); got {X.shape} and {y.shape}")
    if X.shape[0] == 0:
        raise ValueError("no observations")
    if not np.all(np.isfinite(X)) or not np.all((y == 0) | (y == 1)):
        raise ValueError("X must be finite and y must be 0/1")
    return X, y


def neg_log_posterior(w: np.ndarray, X: np.ndarray, y: np.ndarray, prior_scale: float) -> float:
    """``-log p(w | X, y)`` up to a constant: logistic loss plus ``|w|_1 / b``."""
    z = X @ w
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + np.sum(np.abs(w)) / prior_scale)


def map_weights(X, y, prior_scale: float = DEFAULT_PRIOR_SCALE) -> np.ndarray:
    """The posterior mode (exact zeros where the L1 kink holds a weight at 0)."""
    X, y = _check(X, y)
    k = X.shape[1]
    inv_b = 1.0 / prior_scale

    def fun(theta):
        w = theta[:k] - theta[k:]
        z = X @ w
        g = X.T @ (expit(z) - y)
        f = np.sum(np.logaddexp(0.0, z) - y * z) + inv_b * np.sum(theta)
        return f, np.concatenate([g + inv_b, -g + inv_b])

    res = minimize(
        fun,
        np.zeros(2 * k),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None)] * (2 * k),
        options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-10},
    )
    theta = res.x
    # With u and v both positive the objective would drop by moving both towards 0, so at the
    # optimum at most one is non-zero; numerical leftovers of size ~1e-12 are snapped to 0.
    w = theta[:k] - theta[k:]
    w[np.abs(w) < 1e-9] = 0.0
    # Convergence check on the subgradient optimality conditions of the original problem.
    g = X.T @ (expit(X @ w) - y)
    nz = w != 0
    viol = np.concatenate([np.abs(g[nz] + inv_b * np.sign(w[nz])), np.maximum(np.abs(g[~nz]) - inv_b, 0.0)])
    scale = max(1.0, float(np.abs(X).sum(axis=0).max()))
    if viol.size and viol.max() > 1e-5 * scale:
        raise RuntimeError(f"MAP fit did not converge (optimality violation {viol.max():.3g}): {res.message}")
    return w


def laplace_covariance(w: np.ndarray, X, y, prior_scale: float = DEFAULT_PRIOR_SCALE) -> np.ndarray:
    """Covariance of the Gaussian (Laplace) approximation at the mode ``w``; see the module doc."""
    X, y = _check(X, y)
    p = expit(X @ w)
    H = (X * (p * (1.0 - p))[:, None]).T @ X
    H[np.diag_indices_from(H)] += np.where(w == 0, 1.0 / (2.0 * prior_scale**2), 0.0)
    try:
        return np.linalg.inv(H)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(H)


def fit_map(X, y, prior_scale: float = DEFAULT_PRIOR_SCALE) -> Fit:
    """Posterior mode with a Laplace-approximation 95% interval on every weight."""
    w = map_weights(X, y, prior_scale)
    cov = laplace_covariance(w, X, y, prior_scale)
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    ci = np.stack([w - _Z95 * sd, w + _Z95 * sd], axis=1)
    return Fit(weights=w, sd=sd, ci95=ci, method="map", prior_scale=prior_scale)


def p2_folds(n: int, folds: int = 10, seed: int = 0) -> list[np.ndarray]:
    """Row indices of each training fold exactly as P2 made them: ``np.random.seed(seed)`` shuffle,
    then fold i leaves out rows ``[int(i/folds*n), int(i/folds*n) + int(n/folds))`` of the shuffle."""
    order = np.random.RandomState(seed).permutation(n)
    out = []
    for i in range(folds):
        start = int(i / folds * n)
        out.append(np.concatenate([order[:start], order[start + int(n / folds):]]))
    return out


def _use_compilation_cache(jax) -> None:
    """Keep compiled samplers on disk (JAX's persistent compilation cache), so a later fit of the
    same shape and settings skips the compile that dominates a small fit (~5 s CPU). The cache is
    ``$SELFREC_JAX_CACHE`` (empty: off) or ``~/.cache/selfrec_ft/jax``; a cache directory the
    user configured for JAX is left alone."""
    if jax.config.jax_compilation_cache_dir:
        return
    path = os.environ.get("SELFREC_JAX_CACHE", os.path.join("~", ".cache", "selfrec_ft", "jax"))
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def _import_numpyro():
    try:
        import jax
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist
        from numpyro.infer import MCMC, NUTS
    except ImportError:
        raise UserError(
            "the NUTS methods need numpyro and jax (dependencies of selfrec_ft; reinstall with "
            "pip install selfrec_ft[bayes]), or use --method map"
        ) from None
    _use_compilation_cache(jax)
    return jax, jnp, numpyro, dist, MCMC, NUTS


def nuts_samples(
    X, y, prior_scale: float = DEFAULT_PRIOR_SCALE, num_warmup: int = NUTS_DEFAULT.num_warmup,
    num_samples: int = NUTS_DEFAULT.num_samples, num_chains: int = NUTS_DEFAULT.num_chains, seed: int = 0,
) -> np.ndarray:
    """Posterior draws of the weights by numpyro's NUTS, ``(num_chains, num_samples, k)``.

    Chains run in parallel on several devices, else vectorised on one (one compiled program).
    """
    X, y = _check(X, y)
    jax, jnp, numpyro, dist, MCMC, NUTS = _import_numpyro()

    def model(X, y):
        w = numpyro.sample("alpha", dist.Laplace(jnp.zeros(X.shape[1]), prior_scale))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("obs", dist.Bernoulli(logits=jnp.dot(X, w)), obs=y)

    chain_method = "parallel" if jax.local_device_count() >= num_chains else "vectorized"
    mcmc = MCMC(NUTS(model), num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method=chain_method, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(X, dtype=jnp.float32), jnp.asarray(y, dtype=jnp.int32))
    return np.asarray(mcmc.get_samples(group_by_chain=True)["alpha"], dtype=float)


def _diagnostics(draws: list[np.ndarray]) -> dict:
    """Worst split R-hat and smallest effective sample size over weights and folds (numpyro)."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    r_hat = [float(np.max(split_gelman_rubin(d))) for d in draws if d.shape[0] * d.shape[1] >= 4]
    ess = [float(np.min(effective_sample_size(d))) for d in draws if d.shape[1] >= 2]
    return {"r_hat_max": max(r_hat) if r_hat else None, "ess_min": min(ess) if ess else None}


def fit_nuts(
    X, y, prior_scale: float = DEFAULT_PRIOR_SCALE, folds: int = NUTS_DEFAULT.folds,
    num_warmup: int = NUTS_DEFAULT.num_warmup, num_samples: int = NUTS_DEFAULT.num_samples,
    num_chains: int = NUTS_DEFAULT.num_chains, seed: int = NUTS_DEFAULT.seed, method: str = "nuts",
) -> Fit:
    """Posterior means by NUTS (``folds=1``: all the data; ``folds`` > 1: P2's fold average), with
    the 2.5/97.5% quantiles of the (pooled) draws as the 95% credible interval."""
    from tqdm.auto import tqdm

    settings = NutsSettings(num_warmup, num_samples, num_chains, folds, seed)
    X, y = _check(X, y)
    _import_numpyro()  # fail early with the install hint
    idx_sets = p2_folds(len(y), folds, seed) if folds > 1 else [np.arange(len(y))]
    means, draws = [], []
    for idx in tqdm(idx_sets, desc="NUTS folds", disable=len(idx_sets) == 1):
        s = nuts_samples(X[idx], y[idx], prior_scale, num_warmup, num_samples, num_chains, seed)
        means.append(s.reshape(-1, s.shape[-1]).mean(axis=0))
        draws.append(s)
    pooled = np.concatenate([d.reshape(-1, d.shape[-1]) for d in draws])
    ci = np.percentile(pooled, [2.5, 97.5], axis=0).T
    return Fit(weights=np.mean(means, axis=0), sd=pooled.std(axis=0, ddof=1), ci95=ci, method=method,
               prior_scale=prior_scale, settings=asdict(settings), diagnostics=_diagnostics(draws))


def nuts_settings(method: str, **overrides) -> NutsSettings:
    """The settings of a NUTS method (``nuts``: :data:`NUTS_DEFAULT`, ``nuts-p2``:
    :data:`NUTS_P2`) with ``overrides`` (``folds``, ``num_samples``, ...) that are not None."""
    base = {"nuts": NUTS_DEFAULT, "nuts-p2": NUTS_P2}[method]
    unknown = set(overrides) - set(asdict(base))
    if unknown:
        raise TypeError(f"unknown NUTS settings {sorted(unknown)}")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def fit(X, y, method: str = DEFAULT_METHOD, prior_scale: float = DEFAULT_PRIOR_SCALE, **kwargs) -> Fit:
    """Dispatch: ``nuts`` (default) / ``nuts-p2`` to :func:`fit_nuts` with :func:`nuts_settings`
    (keyword overrides allowed), ``map`` to :func:`fit_map` (no overrides)."""
    if method == "map":
        if any(v is not None for v in kwargs.values()):
            raise UserError(f"NUTS settings {sorted(k for k, v in kwargs.items() if v is not None)} do not "
                            "apply to --method map")
        return fit_map(X, y, prior_scale)
    if method in ("nuts", "nuts-p2"):
        return fit_nuts(X, y, prior_scale, method=method, **asdict(nuts_settings(method, **kwargs)))
    raise UserError(f'unknown fit method "{method}" (choose {", ".join(METHODS)})')


def accuracy(X, y, weights) -> float:
    """In-sample accuracy of ``sigmoid(X w) > 1/2``; a prediction of exactly 1/2 counts as half right."""
    X, y = _check(X, y)
    z = X @ np.asarray(weights, dtype=float)
    tie = np.abs(z) <= 1e-12
    right = np.where(tie, 0.5, ((z > 0) == (y == 1)).astype(float))
    return float(right.mean())
