"""Preference controls (issue 23): question-following and quality-aware self-preference.

**Question-following.** The preference pairs are asked "which summary is better?" (task
``pairwise-preference``) and "which summary is worse?" (:data:`WORSE_QUESTION_TASK` rows, the
preset's inverted template). Per pair (article, other source), both orders averaged as for the
preference score:

* ``better`` = P(self picked | better) = the usual self-preference score;
* ``worse``  = P(self picked | worse) = 1 − (the worse rows' self-preference score);
* ``gap``    = better − worse, mean over the pairs scored under both questions, with an
  article-clustered bootstrap interval (:func:`selfrec_ft.stats.cluster_bootstrap_mean` on the
  per-pair differences: a paired interval).

A judge that points at its own summary whatever it is asked picks it under both questions (gap ≈
0); a judge that prefers it names the other one as worse (gap = 2·better − 1 when it follows the
question fully). When the gap's interval includes 0 the report says the self-preference is not shown
to follow the question (answer-copying when the judge picks its own summary above chance).

**Quality-aware preference.** Given a quality per summary (:mod:`selfrec_ft.scoring.quality`), the
"better" pairs split into those where the self summary is better (``justified``: mean P(self picked)
there) and worse (``harmful``: how often the judge prefers its own worse summary); ties (|Δquality| ≤
:data:`QUALITY_TIE`) count in neither. ``dbg`` is the DBG-style gap (Chen et al. 2025): the judge's
self-preference minus the quality reference's, mean over pairs of P(self picked) − gold, gold = 1
when the self summary is better, 0 when worse, ½ on a tie. Every block carries an article-clustered
interval (none from fewer than 5 articles, as elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from selfrec_ft import markdown as md
from selfrec_ft.defaults import WORSE_QUESTION_TASK
from selfrec_ft.errors import UserError
from selfrec_ft.prompts.templates import TaskTemplate, load_preset
from selfrec_ft.scoring.metrics import pairwise_scores
from selfrec_ft.scoring.quality import QualityReference
from selfrec_ft.stats import mean_block

PREFERENCE_TASK = "pairwise-preference"
SHARE_MIN_EXCESS = 0.02
"""The following share is reported only when self is picked above 0.5 + this under "better"."""
QUALITY_TIE = 1e-9
"""Two summaries whose qualities differ by at most this are tied."""
NEGLIGIBLE_GAP = 0.01
"""A better − worse gap whose interval lies within ±this (one point of P(self picked)) is called
negligible when no self-preference is shown: a judge that always answers "1" has a gap of ~1e-6 whose
interval can still exclude 0."""


def _key(s: Mapping[str, Any]) -> tuple:
    return (s.get("domain"), s.get("self_source"), str(s["article_id"]), s["other_source"])


def _cluster(s: Mapping[str, Any]) -> tuple:
    return (s.get("domain"), str(s["article_id"]))




def preference_scores(rows: Sequence[Mapping[str, Any]], worse: bool = False) -> dict[tuple, dict[str, Any]]:
    """Valid pair scores (:func:`~selfrec_ft.scoring.metrics.pairwise_scores`) of the "better"
    question, or with ``worse`` of the worse question's rows, by (domain, self, article, other)."""
    task = WORSE_QUESTION_TASK if worse else PREFERENCE_TASK
    picked = [dict(r, task=PREFERENCE_TASK) for r in rows if r.get("task") == task]
    return {_key(s): s for s in pairwise_scores(picked, PREFERENCE_TASK) if s["valid"]}


# ------------------------------------------------------------------------------ question-following


def worse_template(preset: str) -> TaskTemplate:
    """The preset's "which summary is worse?" template (named :data:`WORSE_QUESTION_TASK`, inverted,
    measuring pairwise-preference): the question-following control's second question."""
    p = load_preset(preset)
    try:
        tmpl = p.task(WORSE_QUESTION_TASK)
    except UserError:
        raise UserError(f"preset {p.name!r} has no {WORSE_QUESTION_TASK!r} template (the \"which summary is "
                        "worse?\" question); add one or turn the question off (--no-worse-question, "
                        "hook_worse_question: false)", p.source) from None
    if tmpl.measures != "pairwise-preference" or not tmpl.inverted or not tmpl.options:
        raise UserError(f"template {WORSE_QUESTION_TASK!r} must measure pairwise-preference, be inverted "
                        "(inverted: true) and have options", p.source)
    return tmpl


def _gap_blocks(pairs: list[tuple[dict, float, float]], seed: int, n_resamples: int) -> dict[str, Any]:
    clusters = [_cluster(s) for s, _, _ in pairs]
    return {"better": mean_block([b for _, b, _ in pairs], clusters, seed, n_resamples),
            "worse": mean_block([w for _, _, w in pairs], clusters, seed, n_resamples),
            "gap": mean_block([b - w for _, b, w in pairs], clusters, seed, n_resamples)}


def following_share(better: float | None, gap: float | None) -> float | None:
    """gap / (2·better − 1): the share of the self-preference that follows the question (1 when the
    judge names the other summary as worse exactly as often as it names its own as better, 0 when it
    points at its own whatever it is asked); None unless better > 0.5 + :data:`SHARE_MIN_EXCESS`."""
    if better is None or gap is None or better <= 0.5 + SHARE_MIN_EXCESS:
        return None
    return gap / (2 * better - 1)


def question_following_verdict(block: Mapping[str, Any]) -> tuple[str, bool]:
    """``(sentence, answer_copying)`` for a question-following block. Answer-copying: the judge picks
    its own summary above chance under "better" (its interval above 0.5) and either the gap's interval
    includes 0 or its upper end is below half the gap a question-following judge would show
    (2·better − 1): less than half of the self-preference follows the question. Without a self-preference under "better" (its interval
    not above 0.5) a gap that excludes 0 is not called following or answering against the question:
    "no self-preference is shown", or, with a gap below 0 and "better" below chance, a
    self-dispreference that follows the question."""
    better, worse, gap = block["better"]["mean"], block["worse"]["mean"], block["gap"]
    ci = gap.get("ci95")
    nums = (f'self picked {md.num(better)} when asked "better", {md.num(worse)} when asked "worse"; '
            f"gap {md.estimate(gap)}")
    if ci is None:
        return f"question-following cannot be judged ({gap.get('ci_note', 'no interval')}): {nums}.", False
    better_ci = block["better"].get("ci95")
    prefers = better_ci is not None and better_ci[0] > 0.5  # self-preference shown under "better"
    if ci[0] <= 0 <= ci[1]:
        if prefers:
            return (f"the judge picks its own summary whatever it is asked ({nums}, interval includes 0): "
                    "the self-preference is answer-copying, not a preference that follows the question.", True)
        return (f"the preference does not follow the question ({nums}, interval includes 0): no "
                "self-preference is shown.", False)
    if not prefers:  # "better" shows no self-preference: the gap only says the answers shift with the question
        if ci[1] < 0 and better_ci is not None and better_ci[1] < 0.5:
            return (f"the judge disprefers its own summary, and that follows the question ({nums}, below 0): "
                    "it names its own summary as the worse one more often than as the better one.", False)
        shift = ("the gap is negligible (its interval within ±" + md.num(NEGLIGIBLE_GAP, ".2f") + ")"
                 if max(abs(ci[0]), abs(ci[1])) < NEGLIGIBLE_GAP else
                 f'the gap only says the answers shift {"with" if ci[0] > 0 else "against"} the question')
        return (f"no self-preference is shown ({nums}): its own summary is not picked above chance when asked "
                f'"better"; {shift}.', False)
    if ci[1] < 0:
        return (f"the judge answers against the question ({nums}, below 0): it names its own summary as "
                "the worse one more often than as the better one.", False)
    if ci[1] < 0.5 * (2 * better - 1):
        return (f"the self-preference is mostly answer-copying ({nums}): less than half of it follows the "
                f"question (share {md.num(following_share(better, gap['mean']))}).", True)
    return f"the self-preference follows the question ({nums}, interval above 0).", False


def record_verdict(record: Mapping[str, Any], preference: Mapping[str, Any] | None = None) -> tuple[str, bool]:
    """``(verdict, answer_copying)`` of a flattened question-following record (the evaluation hook's:
    the gap's fields with ``better``/``worse`` means and ``better_ci95``), recomputed with
    :func:`question_following_verdict`. A record written before ``better_ci95`` was kept takes the
    interval of its pairwise ``preference`` block when that block's mean and n are the record's
    ``better`` and ``n`` (the "better" question's pairs under the same bootstrap); otherwise it
    returns its stored verdict."""
    better_ci = record.get("better_ci95")
    same_pairs = isinstance(preference, Mapping) and (preference.get("mean"), preference.get("n")) == (
        record.get("better"), record.get("n"))
    if better_ci is None and same_pairs:
        better_ci = preference.get("ci95")
    if better_ci is None:
        return record.get("verdict", ""), bool(record.get("answer_copying"))
    block = {"better": {"mean": record["better"], "ci95": better_ci},
             "worse": {"mean": record["worse"], "ci95": record.get("worse_ci95")},
             "gap": {k: record.get(k) for k in ("mean", "ci95", "n", "n_articles", "ci_note") if k in record}}
    return question_following_verdict(block)


def gap_values(rows: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[tuple]]:
    """Per-pair better − worse differences and their article clusters ``(domain, article)`` (the pairs
    scored under both questions), e.g. as a sweep series."""
    better, worse = preference_scores(rows), preference_scores(rows, worse=True)
    pairs = [(s, s["score"] - (1.0 - worse[k]["score"])) for k, s in better.items() if k in worse]
    return [g for _, g in pairs], [_cluster(s) for s, _ in pairs]


def question_following(rows: Sequence[Mapping[str, Any]], seed: int = 0, n_resamples: int = 2000
                       ) -> dict[str, Any] | None:
    """The question-following block (module docstring) from scoring rows; None without worse-question
    rows. ``{"better", "worse", "gap": {mean, ci95, n, n_articles}, "by_source": {other: {...}},
    "following_share", "answer_copying": bool, "verdict": str, "n_unmatched": pairs scored under one
    question only}``."""
    if not any(r.get("task") == WORSE_QUESTION_TASK for r in rows):
        return None
    better, worse = preference_scores(rows), preference_scores(rows, worse=True)
    pairs = [(s, s["score"], 1.0 - worse[k]["score"]) for k, s in better.items() if k in worse]
    out = _gap_blocks(pairs, seed, n_resamples)
    out["by_source"] = {src: _gap_blocks([p for p in pairs if p[0]["other_source"] == src], seed, n_resamples)
                        for src in dict.fromkeys(s["other_source"] for s, _, _ in pairs)}
    out["n_unmatched"] = len(set(better) ^ set(worse))
    out["following_share"] = following_share(out["better"]["mean"], out["gap"]["mean"])
    out["verdict"], out["answer_copying"] = question_following_verdict(out)
    return out


# ------------------------------------------------------------------------------- quality-aware


def quality_aware(rows: Sequence[Mapping[str, Any]], quality: QualityReference, seed: int = 0,
                  n_resamples: int = 2000) -> dict[str, Any] | None:
    """The quality-aware block (module docstring) of the "better" question's pairs; None when no
    valid pair has a quality for both summaries. ``{"reference", "justified", "harmful", "dbg",
    "gold_self_better", "n_self_better", "n_self_worse", "n_tied", "n_without_quality"}``."""
    scored, missing = [], 0
    for s in preference_scores(rows).values():
        qs, qo = quality.of(s["article_id"], s["self_source"]), quality.of(s["article_id"], s["other_source"])
        if qs is None or qo is None:
            missing += 1
            continue
        d = qs - qo
        gold = 0.5 if abs(d) <= QUALITY_TIE else (1.0 if d > 0 else 0.0)
        scored.append((s, gold))
    if not scored:
        return None
    better = [(s, g) for s, g in scored if g == 1.0]
    worse = [(s, g) for s, g in scored if g == 0.0]

    def block(pairs, value):
        return mean_block([value(s, g) for s, g in pairs], [_cluster(s) for s, _ in pairs], seed, n_resamples)

    return {
        "reference": quality.description,
        "justified": block(better, lambda s, g: s["score"]),
        "harmful": block(worse, lambda s, g: s["score"]),
        "dbg": block(scored, lambda s, g: s["score"] - g),
        "self_preference": block(scored, lambda s, g: s["score"]),
        "gold_self_better": block(scored, lambda s, g: g),
        "n_self_better": len(better), "n_self_worse": len(worse), "n_tied": len(scored) - len(better) - len(worse),
        "n_without_quality": missing,
    }


def quality_verdict(block: Mapping[str, Any]) -> str:
    """One sentence on whether the self-preference exceeds what quality justifies."""
    dbg = block["dbg"]
    ci = dbg.get("ci95")
    head = (f"self-preference {md.num(block['self_preference']['mean'])} against a quality reference that "
            f"favours the self summary in {md.num(block['gold_self_better']['mean'])} ({block['reference']}); "
            f"DBG gap {md.estimate(dbg)}")
    if ci is None:
        return head + f": {dbg.get('ci_note', 'no interval')}."
    if ci[0] > 0:
        return head + ": the judge prefers its own summaries more than their quality justifies (harmful bias)."
    if ci[1] < 0:
        return head + ": the judge prefers its own summaries less than their quality would justify."
    return head + ": the self-preference is not shown to exceed what quality justifies (interval includes 0)."


# ---------------------------------------------------------------------------------- the report


def add_preference_controls(report: dict[str, Any], rows: Sequence[Mapping[str, Any]], seed: int = 0,
                            n_resamples: int = 2000, quality: QualityReference | None = None) -> dict[str, Any]:
    """Add ``question_following`` (with worse-question rows) and ``quality_preference`` (with a
    ``quality``) to a :func:`~selfrec_ft.scoring.metrics.compute_report` dict, per domain too, and
    their verdicts to its notes. Returns ``report``."""
    qf = question_following(rows, seed, n_resamples)
    if qf is not None:
        report["question_following"] = qf
        report.setdefault("notes", []).append("question-following: " + qf["verdict"])
    if quality is not None:
        qa = quality_aware(rows, quality, seed, n_resamples)
        if qa is not None:
            report["quality_preference"] = qa
            report.setdefault("notes", []).append("quality-aware preference: " + quality_verdict(qa))
        elif preference_scores(rows):
            report.setdefault("notes", []).append(
                f"quality-aware preference: no preference pair has a quality for both summaries ({quality.description}; "
                "pairs with the reference source itself are left out).")
    for dom, sub in (report.get("by_domain") or {}).items():
        dom_rows = [r for r in rows if (r.get("domain") is None and dom == "(none)") or str(r.get("domain")) == dom]
        sub_qf = question_following(dom_rows, seed, n_resamples)
        if sub_qf is not None:
            sub["question_following"] = sub_qf
        if quality is not None:
            sub_qa = quality_aware(dom_rows, quality, seed, n_resamples)
            if sub_qa is not None:
                sub["quality_preference"] = sub_qa
    return report


def _est(block: Mapping[str, Any] | None) -> str:
    """``mean [lo, hi]``; a mean whose interval was left out for too few articles says so."""
    text = md.estimate(block)
    return text + " (no CI: < 5 articles)" if block and block.get("ci_note") and block.get("mean") is not None else text


def render_controls(report: Mapping[str, Any], h: str) -> list[str]:
    """Markdown of the report's preference controls (heading level ``h``, e.g. ``"##"``)."""
    lines: list[str] = []
    qf = report.get("question_following")
    if qf:
        lines += [f"{h} Question-following (better vs worse)", "",
                  'P(self picked) when asked "which summary is better?" and "which summary is worse?" (both '
                  "orders averaged), on the pairs scored under both; gap = better − worse (≈ 0: the judge "
                  "points at its own summary whatever it is asked). 95% CI: bootstrap over articles.", ""]
        body = [["**all**", _est(qf["better"]), _est(qf["worse"]), _est(qf["gap"]),
                 str(qf["gap"]["n"])]]
        body += [[src, _est(b["better"]), _est(b["worse"]), _est(b["gap"]), str(b["gap"]["n"])]
                 for src, b in qf["by_source"].items()]
        lines += md.table(["other source", "self picked (better)", "self picked (worse)", "gap", "n"], body)
        lines += ["", f"**Verdict:** {qf['verdict']}", ""]
    qa = report.get("quality_preference")
    if qa:
        lines += [f"{h} Quality-aware self-preference", "",
                  f"Quality reference: {qa['reference']}. Justified: P(self picked) where the self summary "
                  "is better; harmful: where it is worse; DBG gap: self-preference minus the reference's "
                  "(gold 1 / 0 / ½). 95% CI: bootstrap over articles.", ""]
        lines += md.table(["measure", "mean [95% CI]", "n"], [
            ["justified (self better)", _est(qa["justified"]), str(qa["n_self_better"])],
            ["harmful (self worse)", _est(qa["harmful"]), str(qa["n_self_worse"])],
            ["self-preference", _est(qa["self_preference"]), str(qa["self_preference"]["n"])],
            ["reference prefers self", _est(qa["gold_self_better"]), str(qa["gold_self_better"]["n"])],
            ["DBG gap", _est(qa["dbg"]), str(qa["dbg"]["n"])]])
        lines += ["", f"{qa['n_tied']} tied pair(s) in neither split; {qa['n_without_quality']} pair(s) without a "
                      "quality for both summaries left out.", "", f"**Verdict:** {quality_verdict(qa)}", ""]
    return lines
