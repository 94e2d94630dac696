"""``self`` as a feature: the self-preference of base vs fine-tuned judges, dissected (P2's model).

* :func:`self_preference_comparisons`: one comparison per (article, other source) with the self
  summary put in position 1 or 2 by a coin seeded from ``(seed, article id, other source)``, so the
  ``self`` feature is ±1 and identifiable without an intercept; the other features are the
  deterministic P2 comparison features (:func:`selfrec_ft.attributes.measures.comparison_features`).
* :func:`run_judge_dissection`: label the same comparisons with each judge (a
  :class:`~selfrec_ft.scoring.scorer.Scorer`, e.g. the base evaluator and a fine-tuned adapter), fit
  P2's regression per judge (``OUT/<name>/``; the comparisons go from the judge to the fit in
  memory), and compare the judges in ``OUT/comparison.json``, ``comparison.md`` and
  ``comparison.png`` (:mod:`.judge_report`).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfrec_ft.data.corpus import Corpus
from selfrec_ft.dissection.comparisons import (
    COMPARISONS_FILE,
    DROPPED_FILE,
    comparisons_from_rows,
    fit_and_write,
    write_jsonl,
)
from selfrec_ft.dissection.fit import DEFAULT_METHOD, DEFAULT_PRIOR_SCALE
from selfrec_ft.dissection.judge import (
    TEMPLATE,
    TIE_TOLERANCE,
    drop_reason,
    judge_and_release,
    judgement_fields,
    label_preference,
    preference_template,
)
from selfrec_ft.dissection.properties import FEATURES, SELF
from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import atomic_write_json, atomic_write_text
from selfrec_ft.scoring.spec import EvalSpec

COMPARISON_JSON, COMPARISON_MD, COMPARISON_PNG = "comparison.json", "comparison.md", "comparison.png"


def self_coin(seed: int, article_id: str, other: str) -> int:
    """Position (1 or 2) of the self summary: a fair coin seeded from (seed, article, other), so it
    does not depend on which other articles are in the run."""
    return 1 if random.Random(f"{seed}\x1f{article_id}\x1f{other}").random() < 0.5 else 2


def self_preference_comparisons(
    corpus: Corpus, self_source: str, others: Sequence[str] | None, article_ids: Sequence[str], seed: int = 0,
) -> list[dict[str, Any]]:
    """One comparison per article and other source (pairs with a missing or empty summary are
    skipped): ``features`` = the deterministic P2 comparison features of (response 1, response 2)
    plus ``self`` (+1 when the self summary is response 1, -1 when it is response 2), the texts, and
    ``article_id``, ``self_source``, ``other_source``, ``self_position``."""
    from selfrec_ft.attributes.measures import comparison_features

    corpus.require_sources([self_source])
    others = [s for s in corpus.sources() if s != self_source] if others is None else list(others)
    if not others:
        raise UserError(f"no other source to compare {self_source!r} with", corpus.path)
    corpus.require_sources(others)
    if self_source in others:
        raise UserError(f"the self source {self_source!r} cannot also be an other source")
    if len(set(others)) != len(others):
        raise UserError("an other source is listed twice")
    out = []
    for aid in article_ids:
        if not corpus.has_article(aid):
            raise UserError(f"unknown article id {aid!r}", corpus.path)
        own = corpus.summary(aid, self_source)
        for other in others:
            theirs = corpus.summary(aid, other)
            if not (own or "").strip() or not (theirs or "").strip():
                continue
            pos = self_coin(seed, aid, other)
            r1, r2 = (own, theirs) if pos == 1 else (theirs, own)
            features = comparison_features(r1, r2)
            features[SELF] = 1 if pos == 1 else -1
            out.append({"features": features, "article_id": aid, "self_source": self_source,
                        "other_source": other, "self_position": pos,
                        "article": corpus.article(aid).text, "response_1": r1, "response_2": r2})
    return out


# ----------------------------------------------------------------------------- base vs fine-tuned


def _weights(report: Mapping[str, Any]) -> np.ndarray:
    w = np.zeros(len(FEATURES))
    for name, p in report["properties"].items():
        w[FEATURES.index(name)] = p["weight"]
    return w


def implied_self_preference(X: np.ndarray, self_position: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """The fitted model's mean P(self summary preferred) over the comparisons, with all features
    (``full``) and with the ``self`` weight set to 0 (``attributes_only``). ``from_self`` = full −
    attributes_only: the part of the model's self-preference that only the ``self`` feature explains;
    ``from_attributes`` = attributes_only − ½."""
    from scipy.special import expit

    sign = np.where(self_position == 1, 1.0, -1.0)  # P(self) = σ(±x·w)
    w_attr = w.copy()
    w_attr[FEATURES.index(SELF)] = 0.0
    full = float(np.mean(expit(sign * (X @ w))))
    attr = float(np.mean(expit(sign * (X @ w_attr))))
    return {"full": full, "attributes_only": attr, "from_self": full - attr, "from_attributes": attr - 0.5}


def _bootstrap_blocks(per_judge: list[tuple[list[str], list[float]]], seed: int, n_resamples: int):
    """Per judge ``(mean, ci95)`` and, for every judge after the first, ``(delta, ci95)`` against the
    first, from one article-clustered resample matrix shared by all judges (paired deltas)."""
    from selfrec_ft.stats import cluster_resample_weights, percentile_interval, resampled_means

    articles = sorted({a for arts, _ in per_judge for a in arts})
    col = {a: k for k, a in enumerate(articles)}
    sums = np.zeros((len(per_judge), len(articles)))
    counts = np.zeros_like(sums)
    for j, (arts, vals) in enumerate(per_judge):
        for a, v in zip(arts, vals):
            sums[j, col[a]] += v
            counts[j, col[a]] += 1
    boot = resampled_means(sums, counts, cluster_resample_weights(len(articles), n_resamples, seed))
    means = [float(np.mean(v)) if v else None for _, v in per_judge]
    blocks = [{"mean": m, "ci95": percentile_interval(boot[j]) if m is not None else None, "n": len(per_judge[j][1])}
              for j, m in enumerate(means)]
    deltas = [None] + [
        {"delta": means[j] - means[0], "ci95": percentile_interval(boot[j] - boot[0])}
        if means[j] is not None and means[0] is not None else None
        for j in range(1, len(per_judge))
    ]
    return blocks, deltas


def _as_list(ci):
    return None if ci is None else [float(ci[0]), float(ci[1])]


def run_judge_dissection(judges: Mapping[str, Any], spec: EvalSpec, out_dir: str | os.PathLike, *,
                         method: str = DEFAULT_METHOD, prior_scale: float = DEFAULT_PRIOR_SCALE, progress: bool = True,
                         **fit_kwargs) -> dict[str, Any]:
    """Label the self-preference comparisons of ``spec``'s held-out articles (its corpus, self
    source, others, ``skip_first``, ``limit``, preset; its ``pairwise-preference`` template variant,
    if any; ``seed`` places the self summary and seeds the bootstrap of ``n_resamples``) with every
    judge (name -> :class:`~selfrec_ft.scoring.scorer.Scorer`; a model it loaded is freed before the
    next judge runs), fit P2's regression per judge into ``OUT/<name>/``, and write the comparison
    of the judges (the first is the base) to ``OUT/comparison.json``, ``comparison.md`` and
    ``comparison.png``. ``fit_kwargs`` go to the fit (``folds`` for nuts). Returns the
    comparison.json dict."""
    from selfrec_ft.dissection.judge_report import comparison_markdown, plot_comparison

    if not judges:
        raise UserError("no judge given")
    for name in judges:
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise UserError(f"judge name {name!r} cannot be a directory name")
    if not prior_scale > 0:
        raise UserError(f"the prior scale must be positive, got {prior_scale}")
    preset, template = spec.preset, spec.template_map.get(TEMPLATE, TEMPLATE)
    seed, n_resamples = spec.seed, spec.n_resamples
    corpus: Corpus = spec.load_corpus()
    preference_template(preset, template)  # fail before any model loads
    article_ids = [a.id for a in corpus.heldout_articles(spec.skip_first, spec.limit)]
    if not article_ids:
        raise UserError(f"no articles to compare: the corpus has {len(corpus.articles)} and the first "
                        f"{spec.skip_first} are skipped", corpus.path)
    comps = self_preference_comparisons(corpus, spec.self_source, spec.others, article_ids, seed=seed)
    others = [s for s in corpus.sources() if s != spec.self_source] if spec.others is None else list(spec.others)
    if not comps:
        raise UserError(f"no comparisons: no article has both a {spec.self_source!r} summary and another "
                        "source's", corpus.path)
    out = Path(out_dir)

    entries: list[dict[str, Any]] = []
    rate_series, prob_series = [], []
    for name, scorer in judges.items():
        js = judge_and_release(scorer, comps, preset=preset, template=template, progress=progress,
                               desc=f"judging ({name})")
        kept, dropped = [], []
        for c, j in zip(comps, js):
            row = {**c, **judgement_fields(j)}
            reason = drop_reason(j.prob)
            if reason:
                dropped.append({**row, "dropped": reason})
            else:
                kept.append({**row, "preferred": label_preference(j.prob)})
        n_ties = sum(r["dropped"] == "tie" for r in dropped)
        n_invalid = len(dropped) - n_ties
        if not kept:
            raise UserError(f"judge {name!r}: every one of the {len(comps)} comparisons was a tie "
                            f"({n_ties}) or invalid ({n_invalid}): nothing to fit")
        jdir = out / name
        write_jsonl(jdir / COMPARISONS_FILE, kept)
        write_jsonl(jdir / DROPPED_FILE, dropped)
        comp = comparisons_from_rows(enumerate(kept, start=1))  # in memory, as written
        report = fit_and_write(comp, jdir, f"Preference dissection: judge {name}", method=method,
                               prior_scale=prior_scale, **fit_kwargs)

        X = comp.X
        pos = np.array([r["self_position"] for r in kept])
        won = [float(r["preferred"] == (1 if r["self_position"] == 1 else 0)) for r in kept]
        valid = [(c, j) for c, j in zip(comps, js) if j.valid]
        p_self = [j.prob if c["self_position"] == 1 else 1.0 - j.prob for c, j in valid]
        rate_series.append(([r["article_id"] for r in kept], won))
        prob_series.append(([c["article_id"] for c, _ in valid], p_self))
        masses = [m for j in js for m in (j.mass_fwd, j.mass_bwd) if m is not None and math.isfinite(m)]
        props = report["properties"]
        entries.append({
            "name": name, "model": scorer.source, "dir": name,
            "n_comparisons": len(comps), "n_labelled": len(kept), "ties": n_ties, "invalid": n_invalid,
            "shortened": sum(j.shortened for j in js),
            "mean_option_mass": float(np.mean(masses)) if masses else None,
            "self": props.get(SELF),
            "attributes": {k: v for k, v in props.items() if k != SELF},
            "absent": report["absent"], "accuracy": report["accuracy"], "method": report["method"],
            "implied_self_preference": implied_self_preference(X, pos, _weights(report)),
        })

    rates, rate_d = _bootstrap_blocks(rate_series, seed, n_resamples)
    probs, prob_d = _bootstrap_blocks(prob_series, seed, n_resamples)
    for e, r, p in zip(entries, rates, probs):
        e["self_preference_rate"] = {**r, "ci95": _as_list(r["ci95"])}
        e["mean_self_probability"] = {**p, "ci95": _as_list(p["ci95"])}
    base = entries[0]
    changes = []
    for k, e in enumerate(entries[1:], start=1):
        shared = sorted(set(base["attributes"]) & set(e["attributes"]), key=FEATURES.index)
        changes.append({
            "judge": e["name"], "base": base["name"],
            "self_score": _delta(e["self"], base["self"], "score"),
            "self_weight": _delta(e["self"], base["self"], "weight"),
            "self_preference_rate": {**rate_d[k], "ci95": _as_list(rate_d[k]["ci95"])} if rate_d[k] else None,
            "mean_self_probability": {**prob_d[k], "ci95": _as_list(prob_d[k]["ci95"])} if prob_d[k] else None,
            "implied_self_preference": {key: e["implied_self_preference"][key] - base["implied_self_preference"][key]
                                        for key in base["implied_self_preference"]},
            "attributes": {a: e["attributes"][a]["score"] - base["attributes"][a]["score"] for a in shared},
        })
    result = {
        "corpus": str(corpus.path.resolve()) if corpus.path else None, "self_source": spec.self_source,
        "others": others, "skip_first": spec.skip_first, "limit": spec.limit, "n_articles": len(article_ids),
        "n_comparisons": len(comps), "skipped_missing": len(article_ids) * len(others) - len(comps),
        "seed": seed, "preset": preset, "template": template,
        "method": method, "prior_scale": prior_scale, "tie_tolerance": TIE_TOLERANCE,
        "n_resamples": n_resamples, "base": base["name"], "judges": entries, "changes": changes,
    }
    atomic_write_json(out / COMPARISON_JSON, result)
    atomic_write_text(out / COMPARISON_MD, comparison_markdown(result))
    plot_comparison(result, out / COMPARISON_PNG)
    return result


def _delta(new: Mapping[str, Any] | None, old: Mapping[str, Any] | None, key: str) -> float | None:
    return None if new is None or old is None else float(new[key] - old[key])
