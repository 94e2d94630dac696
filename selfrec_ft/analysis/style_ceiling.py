"""The style-classifier ceiling: how well surface style alone tells the self source from the others.

A judge that "recognises" its own summaries may only be spotting a salient style that anyone could
see (Erlikhman et al. 2026 report a simple style classifier at 86% on their corpus). For each other
source this module trains a plain text classifier — scikit-learn TF-IDF word 1-2-grams and
character 2-4-grams (``char_wb``) feeding a logistic regression — on the **training articles** (the
first ``train_articles`` of the corpus: the articles the judge was fine-tuned on) to tell the self
source's summaries (label 1) from that source's (label 0). On **held-out articles** (those after
them, at most ``limit``) it answers the judge's pairwise recognition question: of the two summaries
of an article, the one with the larger decision value is called the self summary (a tie counts
½). The pairwise accuracy is the mean over pairs, pooled over the other sources, with a 95% CI that
resamples articles (:func:`selfrec_ft.stats.cluster_bootstrap_mean`). A judge whose recognition is
at or below this ceiling shows no more than surface style; see docs/STATISTICS.md.

Beside it, the **length rule**: the one-feature baseline "the self summary is the longer one (in
words)" — or the shorter one, whichever the training articles' pairs favour, pooled over the others —
scored on the same held-out pairs (a tie counts ½). A judge fine-tuned on a corpus where the own
summary is nearly always the longer one may have learnt no more than that rule.

``selfrec analyze style-ceiling`` writes ``style_ceiling.json`` and ``style_ceiling.md``; given a
report (``selfrec eval``'s report.json, or a training report.json: its final in-domain evaluation),
the judge's recognition stands beside the ceiling. Given the judge's rows (``selfrec eval``'s
examples.jsonl), its recognition is also **split by length** (:func:`judge_by_length`): on the pairs
where the length rule points at its own summary and on the rest. A judge that only learnt the rule
is right on the first and wrong on the second; one that recognises its text is right on both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfrec_ft import markdown as md
from selfrec_ft.errors import UserError

JSON_FILE = "style_ceiling.json"
MD_FILE = "style_ceiling.md"
MIN_TRAIN = 2
"""Training articles with both summaries needed per other source (one example of each class is the least
a classifier can learn from)."""


def make_classifier(seed: int = 0):
    """TF-IDF word 1-2-grams and character 2-4-grams, then logistic regression (scikit-learn)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True))
    return make_pipeline(features, LogisticRegression(max_iter=2000, random_state=seed))


def _pairs(corpus, self_source: str, other: str, articles) -> list[tuple[str, str, str]]:
    """``(article_id, self text, other text)`` of the articles that have both summaries."""
    out = []
    for a in articles:
        s, o = corpus.summary(a.id, self_source), corpus.summary(a.id, other)
        if s and s.strip() and o and o.strip():
            out.append((a.id, s, o))
    return out


def pairwise_correct(d_self: Sequence[float], d_other: Sequence[float]) -> list[float]:
    """1 where the self summary has the larger decision value, 0 where the other has, ½ on a tie."""
    return [1.0 if a > b else 0.0 if a < b else 0.5 for a, b in zip(d_self, d_other)]


def n_words(text: str) -> int:
    return len(text.split())


def length_rule(train: Sequence[tuple[str, str, str]], held: Sequence[tuple[str, str, str]]
                ) -> tuple[str, float, list[float]]:
    """``(rule, share, correct)``: ``rule`` "longer" when the self summary has more words than the other in
    at least half of the ``train`` pairs (``share``), else "shorter"; ``correct`` per ``held`` pair: 1 where
    the rule picks the self summary, 0 where it picks the other, ½ on equal word counts."""
    share = sum(n_words(s) > n_words(o) for _, s, o in train) / len(train)
    rule = "longer" if share >= 0.5 else "shorter"
    sign = 1 if rule == "longer" else -1
    return rule, float(share), [1.0 if d > 0 else 0.0 if d < 0 else 0.5
                                for d in (sign * (n_words(s) - n_words(o)) for _, s, o in held)]


def style_ceiling(corpus, self_source: str, others: Sequence[str] | None = None, *, train_articles: int,
                  limit: int | None = None, seed: int = 0, n_resamples: int = 2000) -> dict[str, Any]:
    """The ceiling of ``corpus`` (see the module docstring): ``{"pairwise_accuracy": {mean, ci95, n,
    articles}, "by_other": {source: {pairwise_accuracy, text_accuracy, train_pairs}}, ...}``."""
    from selfrec_ft import stats

    corpus.require_sources([self_source])
    others = [s for s in corpus.sources() if s != self_source] if others is None else list(others)
    if not others:
        raise UserError(f"no other source to tell {self_source!r} from", corpus.path)
    corpus.require_sources(others)
    if train_articles < 1 or train_articles >= len(corpus.articles):
        raise UserError(f"--train-articles must be between 1 and {len(corpus.articles) - 1} (the corpus has "
                        f"{len(corpus.articles)} articles), got {train_articles}", corpus.path)
    train, held = corpus.articles[:train_articles], corpus.heldout_articles(train_articles, limit)
    by_other: dict[str, Any] = {}
    values, clusters, all_train, all_held = [], [], [], []
    for other in others:
        tr, te = _pairs(corpus, self_source, other, train), _pairs(corpus, self_source, other, held)
        if len(tr) < MIN_TRAIN or not te:
            raise UserError(f"{self_source!r} vs {other!r}: {len(tr)} training and {len(te)} held-out articles "
                            f"have both summaries; need at least {MIN_TRAIN} and 1", corpus.path)
        clf = make_classifier(seed)
        clf.fit([s for _, s, _ in tr] + [o for _, _, o in tr], [1] * len(tr) + [0] * len(tr))
        d_self = clf.decision_function([s for _, s, _ in te])
        d_other = clf.decision_function([o for _, _, o in te])
        correct = pairwise_correct(d_self, d_other)
        ids = [a for a, _, _ in te]
        mean, (lo, hi) = stats.cluster_bootstrap_mean(correct, ids, n_resamples=n_resamples, seed=seed)
        text_acc = (sum(d > 0 for d in d_self) + sum(d <= 0 for d in d_other)) / (2 * len(te))
        by_other[other] = {"pairwise_accuracy": {"mean": mean, "ci95": [lo, hi], "n": len(te)},
                           "text_accuracy": float(text_acc), "train_pairs": len(tr)}
        values += correct
        clusters += ids
        all_train += tr
        all_held += [(other, s, o) for _, s, o in te]
    mean, (lo, hi) = stats.cluster_bootstrap_mean(values, clusters, n_resamples=n_resamples, seed=seed)
    rule, share, by_length = length_rule(all_train, all_held)
    l_mean, (l_lo, l_hi) = stats.cluster_bootstrap_mean(by_length, clusters, n_resamples=n_resamples, seed=seed)
    for other in others:
        mine = [c for (o, _, _), c in zip(all_held, by_length) if o == other]
        by_other[other]["length_rule_accuracy"] = sum(mine) / len(mine)
    return {"corpus": str(corpus.path) if corpus.path else None, "self_source": self_source, "others": others,
            "train_articles": train_articles, "heldout_articles": len(held), "limit": limit,
            "classifier": "tfidf word 1-2-grams + char_wb 2-4-grams -> logistic regression (scikit-learn)",
            "pairwise_accuracy": {"mean": mean, "ci95": [lo, hi], "n": len(values),
                                  "articles": stats.n_clusters(clusters)},
            "by_other": by_other,
            "length_rule": {"rule": rule, "train_share_self_longer": share,
                            "pairwise_accuracy": {"mean": l_mean, "ci95": [l_lo, l_hi], "n": len(by_length),
                                                  "articles": stats.n_clusters(clusters)}},
            "seed": seed, "n_resamples": n_resamples}


def judge_by_length(rows: Sequence[Mapping[str, Any]], corpus, self_source: str, rule: str = "longer", *,
                    seed: int = 0, n_resamples: int = 2000, path: str | os.PathLike | None = None
                    ) -> dict[str, Any]:
    """The judge's per-pair recognition ½[p̂_fwd(self) + p̂_bwd(self)] (options renormalised,
    :func:`selfrec_ft.scoring.metrics.pairwise_scores`) on its valid pairs, split by whether the length
    ``rule`` ("longer"/"shorter": the self summary has more/fewer words) points at its own summary
    (``points_to_self``) or not (``not_to_self``: the other way, or equal word counts), each with a 95%
    CI resampling articles; ``share_points_to_self`` is the first stratum's share of the pairs.
    ``rows`` come from ``path`` (for error messages); their summaries are looked up in ``corpus``."""
    from selfrec_ft import stats
    from selfrec_ft.scoring.metrics import pairwise_scores

    if rule not in ("longer", "shorter"):
        raise ValueError(f"rule must be 'longer' or 'shorter', got {rule!r}")
    strata: dict[str, tuple[list[float], list[str]]] = {"points_to_self": ([], []), "not_to_self": ([], [])}
    for pair in pairwise_scores(rows, "recognition"):
        if pair["self_source"] != self_source:
            raise UserError(f"the rows' self source is {pair['self_source']!r}, not {self_source!r}", path)
        if not pair["valid"]:
            continue
        a, other = pair["article_id"], pair["other_source"]
        mine, theirs = corpus.summary(a, self_source), corpus.summary(a, other)
        if not mine or not theirs:
            raise UserError(f"article {a!r} ({self_source} vs {other}) has no such summaries in the corpus "
                            f"{corpus.path}: the rows were scored on another corpus", path)
        diff = n_words(mine) - n_words(theirs)
        key = "points_to_self" if (diff > 0 if rule == "longer" else diff < 0) else "not_to_self"
        strata[key][0].append(pair["score"])
        strata[key][1].append(a)
    total = sum(len(v) for v, _ in strata.values())
    if not total:
        raise UserError("no valid pairwise-recognition pair in the rows", path)
    out: dict[str, Any] = {"rule": rule, "share_points_to_self": len(strata["points_to_self"][0]) / total,
                           "n": total}
    for key, (values, ids) in strata.items():
        if values:
            mean, (lo, hi) = stats.cluster_bootstrap_mean(values, ids, n_resamples=n_resamples, seed=seed)
            out[key] = {"mean": mean, "ci95": [lo, hi], "n": len(values), "articles": stats.n_clusters(ids)}
        else:
            out[key] = {"mean": None, "ci95": None, "n": 0, "articles": 0}
    if path is not None:
        out["examples"] = str(path)
    return out


def _vs_chance(block: Mapping[str, Any]) -> str:
    ci = block.get("ci95")
    if not ci:
        return "no interval"
    return "above chance" if ci[0] > 0.5 else "below chance" if ci[1] < 0.5 else "at chance"


def length_split_lines(split: Mapping[str, Any]) -> list[str]:
    """The markdown lines of :func:`judge_by_length`'s result."""
    rule = split["rule"]
    rows = [[f"the {rule} one is its own ({split['share_points_to_self']:.3f} of the pairs)",
             md.estimate(split["points_to_self"]), str(split["points_to_self"]["n"])],
            [f"the {rule} one is the other's, or equal length", md.estimate(split["not_to_self"]),
             str(split["not_to_self"]["n"])]]
    lines = ["", f"The judge's recognition split by length (its own pairs; the length rule: the self summary is "
             f"the {rule} one, in words):", "", *md.table(["pairs where", "judge's recognition [95% CI]",
                                                            "n pairs"], rows)]
    hit, miss = split["points_to_self"], split["not_to_self"]
    if hit.get("ci95") and miss.get("ci95"):
        lines += ["", f"Where length points at its own summary the judge is {_vs_chance(hit)}; where it does not, "
                  f"{_vs_chance(miss)}" + (": it recognises its summary only where length gives it away."
                                           if _vs_chance(miss) != "above chance" else
                                           ": it recognises its summary without the length cue.")]
    return lines


def judge_recognition(report: Mapping[str, Any], path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The judge's pairwise recognition from a ``selfrec eval`` report.json (``pairwise.recognition``)
    or a training report.json (its final in-domain evaluation), with where it came from."""
    rec = (report.get("pairwise") or {}).get("recognition")
    where = "pairwise.recognition"
    if rec is None and isinstance(report.get("final"), Mapping):
        rec, where = (report["final"].get("in_domain") or {}).get("recognition"), "final.in_domain.recognition"
    if not rec or rec.get("mean") is None:
        raise UserError("no pairwise recognition in this report (a selfrec eval or training report.json)", path)
    return {"mean": rec["mean"], "ci95": rec.get("ci95"), "n": rec.get("n"), "from": where,
            **({"report": str(path)} if path else {})}


def with_judge(result: dict[str, Any], judge: Mapping[str, Any] | None) -> dict[str, Any]:
    """``result`` with the judge's recognition and its verdict against the ceiling."""
    if judge is None:
        return result
    ceil = result["pairwise_accuracy"]
    lo_j = (judge.get("ci95") or [judge["mean"]])[0]
    hi_c = (ceil.get("ci95") or [ceil["mean"]] * 2)[1]
    result["judge"] = dict(judge)
    result["judge_above_ceiling"] = bool(lo_j > hi_c)
    return result


def verdict(result: Mapping[str, Any]) -> str | None:
    if "judge" not in result:
        return None
    if result["judge_above_ceiling"]:
        return ("The judge's recognition lies above the style classifier's ceiling (its CI's lower end above the "
                "ceiling's upper end): more than surface style.")
    return ("The judge's recognition does not exceed what a surface-style classifier reaches: it is no evidence "
            "of recognition beyond style.")


def render_markdown(result: Mapping[str, Any]) -> str:
    lines = [f"# Style-classifier ceiling: self = {result['self_source']}", "",
             f"A {result['classifier']} trained on the first {result['train_articles']} articles tells "
             f"`{result['self_source']}` from each other source; on {result['heldout_articles']} held-out articles "
             "it picks the self summary of each pair (larger decision value; a tie counts ½). 95% CIs resample "
             "articles. 0.5 = chance.", ""]
    rule = result.get("length_rule")  # absent from results written before the length rule
    rows = [[o, md.estimate(v["pairwise_accuracy"]), f"{v['text_accuracy']:.3f}",
             *([md.num(v.get("length_rule_accuracy"))] if rule else []), str(v["pairwise_accuracy"]["n"]),
             str(v["train_pairs"])] for o, v in result["by_other"].items()]
    rows.append(["**all others**", md.estimate(result["pairwise_accuracy"]), md.DASH,
                 *([md.estimate(rule["pairwise_accuracy"])] if rule else []),
                 str(result["pairwise_accuracy"]["n"]), md.DASH])
    lines += md.table(["other source", "pairwise accuracy [95% CI]", "text accuracy",
                       *(["length rule"] if rule else []), "held-out pairs", "training pairs"], rows)
    if rule:
        lines += ["", f"Length rule: the self summary is the {rule['rule']} one (in words); in the training pairs it "
                  f"is the longer one in {rule['train_share_self_longer']:.3f} of them."]
    if "judge" in result:
        j = result["judge"]
        lines += ["", *md.table(["", "pairwise recognition [95% CI]", "n pairs"],
                                [["style-classifier ceiling", md.estimate(result["pairwise_accuracy"]),
                                  str(result["pairwise_accuracy"]["n"])],
                                 *([[f"length rule ({rule['rule']})", md.estimate(rule["pairwise_accuracy"]),
                                     str(rule["pairwise_accuracy"]["n"])]] if rule else []),
                                 ["judge" + (f" ({j['from']})" if j.get("from") else ""), md.estimate(j),
                                  md.DASH if j.get("n") is None else str(j["n"])]]),
                  "", verdict(result)]
    if result.get("judge_by_length"):
        lines += length_split_lines(result["judge_by_length"])
    return "\n".join(lines) + "\n"


def write_style_ceiling(result: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    from selfrec_ft.jsonl import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    atomic_write_json(out / JSON_FILE, dict(result))
    atomic_write_text(out / MD_FILE, render_markdown(result))
    return out / JSON_FILE, out / MD_FILE


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    from selfrec_ft.files import read_text

    try:
        return json.loads(read_text(path, "report"))
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON ({exc.msg})", path, exc.lineno) from None


def training_section(output_dir: str | os.PathLike, report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The training report's ``style_ceiling`` section: ``output_dir/style_ceiling.json`` (written by the
    evaluation hook) with the final in-domain recognition beside it; None without that file."""
    path = Path(output_dir) / JSON_FILE
    if not path.is_file():
        return None
    result = read_report(path)
    rec = (report.get("final") or {}).get("in_domain", {}).get("recognition")
    judge = None
    if rec and rec.get("mean") is not None:
        judge = {"mean": rec["mean"], "ci95": rec.get("ci95"), "n": rec.get("n"), "from": "final.in_domain.recognition"}
    return with_judge(result, judge)


def render_section(section: Mapping[str, Any] | None) -> list[str]:
    """The training report's markdown section (empty without a ceiling)."""
    if not section:
        return []
    lines = render_markdown(section).splitlines()
    return ["", "## Style-classifier ceiling (in-domain)", *lines[1:]]
