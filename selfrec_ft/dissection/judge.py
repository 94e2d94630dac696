"""Judge labels through the scoring engine, and ``self`` as a feature for base vs fine-tuned judges.

* :func:`judge_preferences`: a model's P(response 1 preferred) for ``{"article", "response_1",
  "response_2"}`` pairs, read from the ``pairwise-preference`` template in both orders through
  :func:`~selfrec_ft.scoring.engine.score_requests` (PROTOCOL.md §2-3)::

      P(response 1 preferred) = ½ [ p̂_fwd("1") + p̂_bwd("2") ]

  *forward* shows response 1 first, *backward* shows it second. For an ``inverted`` template
  ("which is worse?") the options are swapped. All prompts with the same article form one engine
  group (the prefix is computed once) and, when too long, get the same shortened article.
* :func:`label_preference`: the label is 1 if P > ½, 0 if P < ½. A pair with |P − ½| ≤
  :data:`TIE_TOLERANCE` is a **tie** and is dropped (the tolerance absorbs float32 rounding, so two
  identical responses are a tie); a pair whose option mass is zero or not finite in either order is
  **invalid** and dropped. Both are counted.
* :func:`self_preference_comparisons`: one comparison per (article, other source) with the self
  summary put in position 1 or 2 by a coin seeded from ``(seed, article id, other source)``, so the
  ``self`` feature is ±1 and identifiable without an intercept; the other features are the
  deterministic P2 comparison features (:func:`selfrec_ft.attributes.measures.comparison_features`).
* :func:`run_judge_dissection`: label the same comparisons with each judge (e.g. the base evaluator
  and a fine-tuned adapter), fit P2's regression per judge (``OUT/<name>/``), and compare the judges
  in ``OUT/comparison.json``, ``comparison.md`` and ``comparison.png``.
* :func:`label_comparisons_file`: fill in ``preferred`` for the lines of a comparisons file that lack
  it (``selfrec dissect --comparisons FILE --judge MODEL``).
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfrec_ft.data.corpus import Corpus, load_corpus
from selfrec_ft.dissection.fit import DEFAULT_PRIOR_SCALE
from selfrec_ft.dissection.properties import FEATURES, SELF, SHORT_LABELS
from selfrec_ft.dissection.run import read_comparisons, run_dissection
from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import atomic_write_json, atomic_write_text, iter_jsonl
from selfrec_ft.prompts.templates import DEFAULT_PRESET, load_preset
from selfrec_ft.scoring.engine import DEFAULT_BATCH_SIZE, ScoreRequest, score_requests
from selfrec_ft.scoring.items import render_group

TEMPLATE = "pairwise-preference"
TIE_TOLERANCE = 1e-6
"""|P − ½| at most this is a tie: the engine's numbers agree with a lone forward pass only within
float32 rounding, so two identical responses give ½ ± ~1e-7 rather than exactly ½."""
TEXT_KEYS = ("article", "response_1", "response_2")
COMPARISONS_FILE = "comparisons.jsonl"
DROPPED_FILE = "dropped.jsonl"
COMPARISON_JSON, COMPARISON_MD, COMPARISON_PNG = "comparison.json", "comparison.md", "comparison.png"


# ----------------------------------------------------------------------------- judging pairs


@dataclass(frozen=True)
class PairJudgement:
    """One pair as judged: ``prob`` = P(response 1 preferred) (NaN when invalid); ``p_fwd`` /
    ``p_bwd`` the normalised option probabilities of the two orders (None when that order's option
    mass is zero or not finite); ``mass_*`` the raw option masses; ``shortened``: the article was cut."""

    prob: float
    p_fwd: dict[str, float] | None
    p_bwd: dict[str, float] | None
    mass_fwd: float | None
    mass_bwd: float | None
    shortened: bool

    @property
    def valid(self) -> bool:
        return math.isfinite(self.prob)


def preference_template(preset: str = DEFAULT_PRESET, template: str = TEMPLATE):
    """The pairwise preference template (two options, article and two summaries)."""
    p = load_preset(preset)
    tmpl = p.task(template)
    if tmpl.measures != TEMPLATE:
        raise UserError(f"template {tmpl.name!r} measures {tmpl.measures!r}, not {TEMPLATE!r}", p.source)
    if len(tmpl.options) != 2:
        raise UserError(f"template {tmpl.name!r} needs exactly two options, has {list(tmpl.options)}", p.source)
    unknown = tmpl.fields - {"article", "summary1", "summary2"}
    if unknown:
        raise UserError(f"template {tmpl.name!r} needs {', '.join(sorted(unknown))}, which a judge pair does "
                        "not have (only article, summary1, summary2)", p.source)
    return tmpl


def _check_pair(i: int, pair: Mapping[str, Any]) -> None:
    for key in TEXT_KEYS:
        if not isinstance(pair.get(key), str):
            raise UserError(f"pair {i}: {key!r} must be a string")


def judge_pairs(
    model, tokenizer, pairs: Sequence[Mapping[str, Any]], preset: str = DEFAULT_PRESET,
    template: str = TEMPLATE, batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None,
    max_batch_tokens: int | None = None, progress: bool = True, desc: str = "judging",
) -> list[PairJudgement]:
    """Score every pair in both orders with the one engine; see the module docstring."""
    tmpl = preference_template(preset, template)
    opt1, opt2 = tmpl.options
    if tmpl.inverted:  # "which is worse?": answering position 2 prefers position 1
        opt1, opt2 = opt2, opt1
    by_article: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        _check_pair(i, pair)
        by_article.setdefault(pair["article"], []).append(i)

    requests: list[ScoreRequest] = []
    slot: dict[tuple[int, str], int] = {}  # (pair, order) -> request index
    shortened = [False] * len(pairs)
    for g, (article, idx) in enumerate(by_article.items()):
        values, keys = [], []
        for i in idx:
            r1, r2 = pairs[i]["response_1"], pairs[i]["response_2"]
            for order, (s1, s2) in (("fwd", (r1, r2)), ("bwd", (r2, r1))):
                v = {"article": article, "summary1": s1, "summary2": s2}
                values.append({k: x for k, x in v.items() if k in tmpl.fields})
                keys.append((i, order))
        for key, rp in zip(keys, render_group(tokenizer, tmpl, values, max_length)):
            slot[key] = len(requests)
            requests.append(ScoreRequest(rp.input_ids, rp.option_ids, group=("judge", tmpl.name, g)))
            shortened[key[0]] |= rp.shortened
    results = score_requests(model, requests, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                             progress=progress, desc=desc) if requests else []

    out = []
    for i in range(len(pairs)):
        fwd, bwd = results[slot[i, "fwd"]], results[slot[i, "bwd"]]
        prob = float("nan")
        if fwd.p_hat is not None and bwd.p_hat is not None:
            prob = 0.5 * (fwd.p_hat[opt1] + bwd.p_hat[opt2])
        out.append(PairJudgement(prob, fwd.p_hat, bwd.p_hat, fwd.option_mass, bwd.option_mass, shortened[i]))
    return out


def judge_preferences(
    model, tokenizer, pairs: Sequence[Mapping[str, Any]], preset: str = DEFAULT_PRESET,
    batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None, **kwargs,
) -> list[float]:
    """P(response 1 preferred) per pair, ½[p̂_fwd("1") + p̂_bwd("2")]; NaN for an invalid pair.
    ``kwargs`` go to :func:`judge_pairs` (``template``, ``max_batch_tokens``, ``progress``)."""
    return [j.prob for j in judge_pairs(model, tokenizer, pairs, preset=preset, batch_size=batch_size,
                                        max_length=max_length, **kwargs)]


def label_preference(prob: float) -> int | None:
    """1 if response 1 is preferred, 0 if response 2, None for a tie or an invalid (NaN) pair."""
    if not math.isfinite(prob) or abs(prob - 0.5) <= TIE_TOLERANCE:
        return None
    return int(prob > 0.5)


def drop_reason(prob: float) -> str | None:
    """``"invalid"``, ``"tie"`` or None (labelled)."""
    if not math.isfinite(prob):
        return "invalid"
    return "tie" if label_preference(prob) is None else None


def _judgement_fields(j: PairJudgement) -> dict[str, Any]:
    return {"judge_prob": j.prob if j.valid else None, "judge_option_mass": [j.mass_fwd, j.mass_bwd],
            "shortened": j.shortened}


# ----------------------------------------------------------------------------- comparisons


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


# ----------------------------------------------------------------------------- loading judges


def _load(judge, dtype: str, device: str | None):
    """``(model, tokenizer, label)`` from a path or an already loaded ``(model, tokenizer)``."""
    if isinstance(judge, (str, os.PathLike)):
        from selfrec_ft.models.loading import load_model

        model, tok = load_model(judge, dtype=dtype, device=device)
        return model, tok, os.path.abspath(os.fspath(judge)) if os.path.exists(judge) else os.fspath(judge)
    model, tok = judge
    return model, tok, str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


def _judge_with(judge, pairs: Sequence[Mapping[str, Any]], *, dtype: str, device: str | None,
                max_length: int | None, **opts) -> tuple[list[PairJudgement], str]:
    """Load ``judge``, judge ``pairs``, and let the model go before returning (so the next judge
    never shares the GPU with it). ``max_length`` None: the model's context length."""
    import torch

    from selfrec_ft.scoring.evaluate import context_length

    model, tok, label = _load(judge, dtype, device)
    try:
        if max_length is None:
            max_length = context_length(model)
        js = judge_pairs(model, tok, pairs, max_length=max_length, **opts)
    finally:
        del model, tok
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return js, label


# ----------------------------------------------------------------------------- a comparisons file


def _validate_comparisons(path: Path, objs: list[tuple[int, dict[str, Any]]]) -> None:
    """Check ``features`` (and any ``preferred``) of every line with the dissection's own reader,
    at the line's own number, before any model runs."""
    lines: list[str] = []
    for lineno, obj in objs:
        lines += ["\n"] * (lineno - 1 - len(lines))
        lines.append(json.dumps({"features": obj["features"], "preferred": obj.get("preferred", 0)}) + "\n")
    fd, tmp = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
        read_comparisons(tmp)
    except UserError as exc:
        raise UserError(exc.message, path, exc.line) from None
    finally:
        os.unlink(tmp)


def label_comparisons_file(
    comparisons: str | os.PathLike, judge, out_dir: str | os.PathLike, *, preset: str = DEFAULT_PRESET,
    template: str = TEMPLATE, batch_size: int = DEFAULT_BATCH_SIZE, max_batch_tokens: int | None = None,
    max_length: int | None = None, dtype: str = "float32", device: str | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Write ``OUT/comparisons.jsonl``: every line of ``comparisons``, those without ``preferred``
    labelled by ``judge`` (a model path or ``(model, tokenizer)``; they must carry ``article``,
    ``response_1`` and ``response_2``) with ``judge_prob`` added. Ties and invalid pairs go to
    ``OUT/dropped.jsonl`` with a ``dropped`` reason. Returns the counts (also ``OUT/judge.json``)."""
    path = Path(comparisons)
    objs = list(iter_jsonl(path, required={"features": dict}))
    if not objs:
        raise UserError("no comparisons in the file", path)
    todo: list[int] = []  # positions in objs of the lines to judge
    for k, (lineno, obj) in enumerate(objs):
        if "preferred" in obj:
            continue
        for key in TEXT_KEYS:
            if key not in obj:
                raise UserError(f'missing field "{key}" (a line without "preferred" needs article, '
                                "response_1 and response_2 for the judge)", path, lineno)
            if not isinstance(obj[key], str):
                raise UserError(f'field "{key}" must be str, got {type(obj[key]).__name__}', path, lineno)
        todo.append(k)
    _validate_comparisons(path, objs)

    judged: dict[int, PairJudgement] = {}
    judge_name = None
    if todo:
        js, judge_name = _judge_with(judge, [objs[k][1] for k in todo], dtype=dtype, device=device,
                                     max_length=max_length, preset=preset, template=template,
                                     batch_size=batch_size, max_batch_tokens=max_batch_tokens, progress=progress)
        judged = dict(zip(todo, js))
    kept, dropped = [], []
    for k, (lineno, obj) in enumerate(objs):
        if k not in judged:
            kept.append(obj)
            continue
        j = judged[k]
        row = {**obj, **_judgement_fields(j), "line": lineno}
        reason = drop_reason(j.prob)
        if reason:
            dropped.append({**row, "dropped": reason})
        else:
            kept.append({**row, "preferred": label_preference(j.prob)})
    out = Path(out_dir)
    summary = {
        "comparisons": str(path), "judge": judge_name, "preset": preset, "template": template,
        "lines": len(objs), "labelled_in_file": len(objs) - len(todo), "judged": len(todo),
        "ties": sum(r["dropped"] == "tie" for r in dropped),
        "invalid": sum(r["dropped"] == "invalid" for r in dropped),
        "shortened": sum(j.shortened for j in judged.values()), "kept": len(kept),
        "tie_tolerance": TIE_TOLERANCE,
    }
    if not kept:
        raise UserError(f"every one of the {len(todo)} judged lines was a tie or invalid: nothing to fit", path)
    _write_jsonl(out / COMPARISONS_FILE, kept)
    _write_jsonl(out / DROPPED_FILE, dropped)
    atomic_write_json(out / "judge.json", summary)
    return summary


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


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


def run_judge_dissection(
    judges: Mapping[str, Any], corpus: Corpus | str | os.PathLike, self_source: str,
    others: Sequence[str] | None, skip_first: int, limit: int | None, out_dir: str | os.PathLike, *,
    preset: str = DEFAULT_PRESET, template: str = TEMPLATE, batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_tokens: int | None = None, max_length: int | None = None, dtype: str = "float32",
    device: str | None = None, seed: int = 0, method: str = "map", prior_scale: float = DEFAULT_PRIOR_SCALE,
    n_resamples: int = 2000, progress: bool = True, **fit_kwargs,
) -> dict[str, Any]:
    """Label the self-preference comparisons of the held-out articles (after the first
    ``skip_first``, at most ``limit``) with every judge (name -> model path, LoRA adapter directory,
    or a loaded ``(model, tokenizer)``), fit P2's regression per judge into ``OUT/<name>/``, and
    write the comparison of the judges (the first is the base) to ``OUT/comparison.json``,
    ``comparison.md`` and ``comparison.png``. Returns the comparison.json dict."""
    if not judges:
        raise UserError("no judge given")
    for name in judges:
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise UserError(f"judge name {name!r} cannot be a directory name")
    if skip_first < 0:
        raise UserError(f"--skip-first must be at least 0, got {skip_first}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if not prior_scale > 0:
        raise UserError(f"the prior scale must be positive, got {prior_scale}")
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    preference_template(preset, template)  # fail before any model loads
    article_ids = [a.id for a in corpus.heldout_articles(skip_first, limit)]
    if not article_ids:
        raise UserError(f"no articles to compare: the corpus has {len(corpus.articles)} and the first "
                        f"{skip_first} are skipped", corpus.path)
    comps = self_preference_comparisons(corpus, self_source, others, article_ids, seed=seed)
    others = [s for s in corpus.sources() if s != self_source] if others is None else list(others)
    if not comps:
        raise UserError(f"no comparisons: no article has both a {self_source!r} summary and another "
                        "source's", corpus.path)
    out = Path(out_dir)

    entries: list[dict[str, Any]] = []
    rate_series, prob_series = [], []
    for name, judge in judges.items():
        js, label = _judge_with(judge, comps, dtype=dtype, device=device, max_length=max_length, preset=preset,
                                template=template, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                progress=progress, desc=f"judging ({name})")
        kept, dropped = [], []
        for c, j in zip(comps, js):
            row = {**c, **_judgement_fields(j)}
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
        _write_jsonl(jdir / COMPARISONS_FILE, kept)
        _write_jsonl(jdir / DROPPED_FILE, dropped)
        report = run_dissection(jdir / COMPARISONS_FILE, jdir, method=method, prior_scale=prior_scale,
                                title=f"Preference dissection: judge {name}", **fit_kwargs)

        X = read_comparisons(jdir / COMPARISONS_FILE).X
        pos = np.array([r["self_position"] for r in kept])
        won = [float(r["preferred"] == (1 if r["self_position"] == 1 else 0)) for r in kept]
        valid = [(c, j) for c, j in zip(comps, js) if j.valid]
        p_self = [j.prob if c["self_position"] == 1 else 1.0 - j.prob for c, j in valid]
        rate_series.append(([r["article_id"] for r in kept], won))
        prob_series.append(([c["article_id"] for c, _ in valid], p_self))
        masses = [m for j in js for m in (j.mass_fwd, j.mass_bwd) if m is not None and math.isfinite(m)]
        props = report["properties"]
        entries.append({
            "name": name, "model": label, "dir": name,
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
        "corpus": str(corpus.path.resolve()) if corpus.path else None, "self_source": self_source,
        "others": others, "skip_first": skip_first, "limit": limit, "n_articles": len(article_ids),
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


# ----------------------------------------------------------------------------- outputs


def _f(x, fmt: str = ".3f") -> str:
    return "–" if x is None else format(x, fmt)


def _ci(ci, fmt: str = ".3f") -> str:
    return "–" if ci is None else f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def comparison_markdown(result: Mapping[str, Any]) -> str:
    """Readable tables of :func:`run_judge_dissection`'s result."""
    judges = result["judges"]
    lines = [
        f"# Self-preference dissection: self = {result['self_source']}",
        "",
        f"{result['n_articles']} held-out articles (the first {result['skip_first']} skipped), "
        f"{result['n_comparisons']} comparisons of the self summary with {', '.join(result['others'])}; the self "
        f"summary is response 1 or 2 by a seeded coin (seed {result['seed']}). Each judge answers "
        f"`{result['template']}` ({result['preset']}) in both orders; label = P(response 1) ≷ ½; "
        f"ties (|P − ½| ≤ {result['tie_tolerance']:g}) and invalid pairs are dropped."
        + (f" {result['skipped_missing']} (article, other) pairs lack a summary and are skipped."
           if result.get("skipped_missing") else ""),
        "",
        "## Self-preference and the `self` feature",
        "",
        "*self won*: share of labelled pairs whose label picks the self summary; *mean P(self)*: the "
        "protocol's preference score (mean over valid pairs); 95% CIs resample articles. *self score*: "
        "100·σ(w_self), the chance the self summary is preferred when it is equal on every measured "
        "attribute. *implied*: the fitted model's mean P(self preferred), with all features and with "
        "w_self = 0; their difference is the self-preference that only `self` explains.",
        "",
        "| judge | labelled | ties | invalid | self won | 95% CI | mean P(self) | 95% CI | self score | 95% CI "
        "| implied (all) | implied (attributes only) | from `self` |",
        "|---|---:|---:|---:|---:|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for e in judges:
        r, p, s, imp = e["self_preference_rate"], e["mean_self_probability"], e["self"], e["implied_self_preference"]
        lines.append(
            f"| {e['name']} | {e['n_labelled']} | {e['ties']} | {e['invalid']} | {_f(r['mean'])} | {_ci(r['ci95'])} "
            f"| {_f(p['mean'])} | {_ci(p['ci95'])} | {_f(s and s['score'], '.2f')} | {_ci(s and s['ci95'], '.2f')} "
            f"| {imp['full']:.3f} | {imp['attributes_only']:.3f} | {imp['from_self']:+.3f} |")
    attrs = sorted({a for e in judges for a in e["attributes"]}, key=FEATURES.index)
    if attrs:
        lines += ["", "## Attribute scores (100·σ(w), 95% CI)", "",
                  "| property | " + " | ".join(e["name"] for e in judges) + " |",
                  "|---|" + "---|" * len(judges)]
        for a in attrs:
            cells = []
            for e in judges:
                p = e["attributes"].get(a)
                cells.append("not fitted" if p is None else f"{p['score']:.2f} {_ci(p['ci95'], '.2f')}")
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
    if result["changes"]:
        lines += ["", f"## Change from {result['base']}", "",
                  "| judge | Δ self won | 95% CI | Δ mean P(self) | 95% CI | Δ self score | Δ implied from `self` "
                  "| Δ implied from attributes |",
                  "|---|---:|---|---:|---|---:|---:|---:|"]
        for c in result["changes"]:
            r, p, imp = c["self_preference_rate"] or {}, c["mean_self_probability"] or {}, c["implied_self_preference"]
            lines.append(
                f"| {c['judge']} | {_f(r.get('delta'), '+.3f')} | {_ci(r.get('ci95'))} | {_f(p.get('delta'), '+.3f')} "
                f"| {_ci(p.get('ci95'))} | {_f(c['self_score'], '+.2f')} | {imp['from_self']:+.3f} "
                f"| {imp['from_attributes']:+.3f} |")
        for c in result["changes"]:
            if c["attributes"]:
                lines += ["", f"Attribute score changes, {c['judge']} − {c['base']}: "
                          + ", ".join(f"{a} {d:+.2f}" for a, d in c["attributes"].items()) + "."]
    lines += ["", "Per judge: `<name>/report.md` (full fit), `<name>/comparisons.jsonl` (labels), "
              "`<name>/dropped.jsonl` (ties and invalid pairs)."]
    return "\n".join(lines) + "\n"


def plot_comparison(result: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Grouped horizontal bars: every fitted feature's score per judge, from 50, with 95% whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = result["judges"]
    feats = [f for f in FEATURES if any(f == SELF and e["self"] or f in e["attributes"] for e in judges)]
    # FEATURES ends with self: the last row is drawn on top
    k = len(judges)
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.45 * len(feats) * max(1, k / 2)))
    for j, e in enumerate(judges):
        scores, lo, hi, ys = [], [], [], []
        for i, f in enumerate(feats):
            p = e["self"] if f == SELF else e["attributes"].get(f)
            if p is None:
                continue
            scores.append(p["score"])
            lo.append(p["score"] - p["ci95"][0])
            hi.append(p["ci95"][1] - p["score"])
            ys.append(i - (j - (k - 1) / 2) * height)  # the first judge on top within a row
        s = np.array(scores)
        ax.barh(ys, s - 50, left=50, height=height, label=e["name"], alpha=0.85,
                xerr=np.vstack([lo, hi]), error_kw={"ecolor": "black", "capsize": 2, "lw": 1})
    ax.axvline(50, color="red", linestyle="--", lw=1)
    ax.set_yticks(np.arange(len(feats)), [SHORT_LABELS[f] for f in feats])
    ax.set_xlabel("preference score (%): response preferred when better on this feature alone")
    ax.set_title(f"Self-preference dissection (self = {result['self_source']}, n = {result['n_comparisons']})")
    ax.legend(loc="best", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
