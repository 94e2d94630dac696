"""The capability canary: did fine-tuning damage the model's other abilities?

A LoRA that teaches "answer 1 or 2" can wreck what the model could do before; a shift in preference
then means nothing. Per checkpoint (the evaluation hook, :mod:`selfrec_ft.training.hook`, and
``selfrec eval-checkpoints --canary``) and per domain the canary measures, on held-out articles:

* ``lm_loss``: the mean per-token negative log-likelihood (nats) of the reference (``human``)
  summaries as the model's answer to the generation prompt (the preset's ``generate-<kind>``
  template), on at most ``articles`` articles. Scored through the one scoring engine as the
  familiarity task's span log-likelihoods (:func:`selfrec_ft.scoring.items.familiarity_group`);
  pooled over tokens, with a 95% CI that resamples articles.
* ``rouge1`` / ``rouge2`` / ``rougeL``: the mean F1 of the model's own greedy summaries
  (:func:`selfrec_ft.generation.generate_summaries`) of the first ``generate`` of those articles
  against the references (the ``rouge-score`` package, Porter stemming; Lin 2004). A summary that is
  empty after cleaning scores 0 (``empty`` counts them): a model that no longer writes anything has
  lost the ability the canary watches.

:func:`canary_flags` compares each later evaluation with the first one (the baseline, step 0) and
flags an LM loss more than :data:`LOSS_RISE` (relative) above the baseline's, or a ROUGE-L more than
:data:`ROUGE_DROP` (relative) below it. Thresholds are heuristics for "the model got worse at
summarising", not a test: the flags go into the report's notes (see docs/STATISTICS.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfrec_ft import markdown as md

logger = logging.getLogger(__name__)

REFERENCE = "human"
"""The corpus source whose summaries are the references."""
CANARY_SOURCE = "canary"
"""The source name of the model's greedy summaries in the canary's generation files."""
CANARY_DIR = "canary"
"""Where the hook keeps its greedy summaries: ``output_dir/canary/step-<N>-<domain>.jsonl``."""
DEFAULT_ARTICLES = 16
DEFAULT_GENERATE = 4
DEFAULT_MAX_NEW_TOKENS = 100
LOSS_RISE = 0.20
"""An LM loss more than 20% above the baseline's is flagged."""
ROUGE_DROP = 0.25
"""A ROUGE-L F1 more than 25% below the baseline's is flagged."""
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
METRICS = ("lm_loss", *ROUGE_KEYS)
RESAMPLES = 1000


@dataclass
class CanaryTask:
    """One domain's canary: ``loss_ids`` (articles whose reference is scored) and ``generate_ids``
    (the first of them, summarised greedily) of ``corpus``, with the ``kind`` (``short`` /
    ``highlights``) that picks the generation template of ``preset``."""

    domain: str
    kind: str
    corpus: Any
    reference: str
    loss_ids: list[str]
    generate_ids: list[str]
    preset: str
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS


def canary_task(corpus, domain: str, kind: str, *, skip_first: int, preset: str, reference: str = REFERENCE,
                articles: int = DEFAULT_ARTICLES, generate: int = DEFAULT_GENERATE,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> CanaryTask | None:
    """The canary of one held-out domain (articles after the first ``skip_first`` that have a
    reference), or None (with a warning) when the corpus has no ``reference`` summaries there."""
    from selfrec_ft.errors import UserError
    from selfrec_ft.generation.clean import DOMAINS

    if kind not in DOMAINS:
        raise UserError(f"the canary needs the {domain.replace('_', '-')} corpus kind ({' or '.join(DOMAINS)}), "
                        f"got {kind!r}", corpus.path)
    ids = [a.id for a in corpus.heldout_articles(skip_first) if (corpus.summary(a.id, reference) or "").strip()]
    ids = ids[:articles]
    if not ids:
        logger.warning("canary: the %s corpus has no %r summaries of held-out articles; no canary there",
                       domain, reference)
        return None
    return CanaryTask(domain=domain, kind=kind, corpus=corpus, reference=reference, loss_ids=ids,
                      generate_ids=ids[:generate], preset=preset, max_new_tokens=max_new_tokens)


def loss_requests(tokenizer, task: CanaryTask, max_length: int | None) -> list:
    """One engine request per article: the reference as the answer to the generation prompt."""
    from selfrec_ft.prompts.templates import load_preset
    from selfrec_ft.scoring.items import familiarity_group

    tmpl = load_preset(task.preset).task(f"generate-{task.kind}")
    out = []
    for aid in task.loss_ids:
        (req, _), = familiarity_group(tokenizer, tmpl, task.corpus.article(aid).text,
                                      [task.corpus.summary(aid, task.reference)], max_length, group=aid)
        out.append(req)
    return out


def lm_loss(results: Sequence[Any], article_ids: Sequence[str], seed: int = 0,
            n_resamples: int = RESAMPLES) -> dict[str, Any]:
    """Pooled per-token NLL of engine results (one per article) with an article-resampling CI."""
    import numpy as np

    from selfrec_ft import stats

    per_token = np.repeat([-r.mean_logprob for r in results], [r.n_span_tokens for r in results])
    clusters = np.repeat(list(article_ids), [r.n_span_tokens for r in results])
    mean, (lo, hi) = stats.cluster_bootstrap_mean(per_token, clusters, n_resamples=n_resamples, seed=seed)
    return {"mean": mean, "ci95": [lo, hi], "n": len(results), "tokens": int(per_token.size)}


def rouge_scores(predictions: Mapping[str, str], references: Mapping[str, str], article_ids: Sequence[str],
                 seed: int = 0, n_resamples: int = RESAMPLES) -> dict[str, dict[str, Any]]:
    """Mean ROUGE-1/2/L F1 of ``predictions`` against ``references`` over ``article_ids`` (a missing or
    empty prediction scores 0), each with a CI that resamples articles."""
    from rouge_score import rouge_scorer

    from selfrec_ft import stats

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    values: dict[str, list[float]] = {k: [] for k in ROUGE_KEYS}
    empty = 0
    for aid in article_ids:
        pred = (predictions.get(aid) or "").strip()
        empty += not pred
        scores = scorer.score(references[aid], pred) if pred else {}
        for k in ROUGE_KEYS:
            values[k].append(scores[k].fmeasure if pred else 0.0)
    out = {}
    for k in ROUGE_KEYS:
        mean, (lo, hi) = stats.cluster_bootstrap_mean(values[k], list(article_ids), n_resamples=n_resamples,
                                                      seed=seed)
        out[k] = {"mean": mean, "ci95": [lo, hi], "n": len(article_ids), "empty": empty}
    return out


def greedy_summaries(model, tokenizer, task: CanaryTask, out_path: str | os.PathLike, batch_size: int = 8
                     ) -> dict[str, str]:
    """The model's greedy summaries of ``task.generate_ids`` (written to / resumed from ``out_path``)."""
    from selfrec_ft.generation import generate_summaries
    from selfrec_ft.jsonl import read_jsonl_rows

    was_training = model.training
    model.eval()
    try:
        generate_summaries((model, tokenizer), task.corpus, CANARY_SOURCE, prompt_preset=task.preset,
                           domain=task.kind, max_new_tokens=task.max_new_tokens, batch_size=batch_size,
                           article_ids=task.generate_ids, out=out_path, progress=False)
    finally:
        model.train(was_training)
    return {str(r["id"]): r["summary"] for r in read_jsonl_rows(out_path) if r.get("source") == CANARY_SOURCE}


class Canary:
    """The canaries of a model's domains: requests rendered once (``max_length``: the prompt budget),
    :meth:`evaluate` -> ``{domain: {lm_loss, rouge1, rouge2, rougeL}}``."""

    def __init__(self, tokenizer, tasks: Sequence[CanaryTask], max_length: int | None = None, seed: int = 0):
        self.tasks = [t for t in tasks if t is not None]
        self.tokenizer, self.seed = tokenizer, seed
        self.requests = [loss_requests(tokenizer, t, max_length) for t in self.tasks]

    def evaluate(self, scorer, out_dir: str | os.PathLike, tag: str, generate: bool = True
                 ) -> dict[str, dict[str, Any]]:
        """Score with ``scorer`` (its model); greedy summaries go to ``out_dir/<tag>-<domain>.jsonl``
        (only where ``generate``: under several processes only the main one generates)."""
        out = {}
        for task, reqs in zip(self.tasks, self.requests):
            res: dict[str, Any] = {"lm_loss": lm_loss(scorer.score(reqs), task.loss_ids, self.seed)}
            if generate and task.generate_ids:
                preds = greedy_summaries(scorer.model, self.tokenizer, task, Path(out_dir) / f"{tag}-{task.domain}.jsonl",
                                         batch_size=scorer.batch_size)
                refs = {a: task.corpus.summary(a, task.reference) for a in task.generate_ids}
                res.update(rouge_scores(preds, refs, task.generate_ids, self.seed))
            out[task.domain] = res
        return out


def flat_metrics(canary: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{"selfrec/canary/<domain>/<metric>": mean}`` for ``trainer.log``."""
    return {f"selfrec/canary/{d}/{m}": v["mean"] for d, ms in canary.items() for m, v in ms.items()
            if isinstance(v, Mapping) and v.get("mean") is not None}


# ----------------------------------------------------------------------------- flags and report


def _change(base: Mapping | None, cur: Mapping | None) -> float | None:
    if not base or not cur or base.get("mean") is None or cur.get("mean") is None or not base["mean"]:
        return None
    return cur["mean"] / base["mean"] - 1


def canary_flags(series: Sequence[Mapping[str, Any]]) -> list[str]:
    """Notes on the evaluations after the first (``{"step", "canary": {domain: metrics}}``) whose LM
    loss rose more than :data:`LOSS_RISE` or whose ROUGE-L fell more than :data:`ROUGE_DROP` (relative
    to the first evaluation's): one note per domain and metric, naming the first flagged evaluation
    and, when later ones are flagged too, the last of them and how many."""
    if not series:
        return []
    base = series[0]["canary"]
    flagged: dict[tuple[str, str], list[tuple[str, float, float]]] = {}
    for rec in series[1:]:
        for dom, cur in rec["canary"].items():
            where = rec.get("label") or f"step {rec['step']}"
            b = base.get(dom) or {}
            rise = _change(b.get("lm_loss"), cur.get("lm_loss"))
            if rise is not None and rise > LOSS_RISE:
                flagged.setdefault((dom, "lm_loss"), []).append((where, rise, cur["lm_loss"]["mean"]))
            drop = _change(b.get("rougeL"), cur.get("rougeL"))
            if drop is not None and -drop > ROUGE_DROP:
                flagged.setdefault((dom, "rougeL"), []).append((where, drop, cur["rougeL"]["mean"]))
    notes = []
    for (dom, metric), hits in flagged.items():
        (where, change, value), b = hits[0], base[dom][metric]["mean"]
        what, verb, limit = (("LM loss on the reference summaries", "rose", f"above +{LOSS_RISE:.0%}")
                             if metric == "lm_loss" else
                             ("ROUGE-L of its greedy summaries", "fell", f"below -{ROUGE_DROP:.0%}"))
        later = ""
        if len(hits) > 1:
            w, c, v = hits[-1]
            later = f"; flagged at {len(hits)} evaluations, the last {w} ({v:.3f}, {md.pct(c)})"
        notes.append(f"capability canary ({where}, {dom.replace('_', '-')}): {what} {verb} {md.pct(change)} "
                     f"({b:.3f} -> {value:.3f}; flagged {limit}{later}): fine-tuning may have damaged the model")
    return notes


def canary_report(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The report's ``canary`` section from hook records with a ``canary`` entry: ``{by_step: [...],
    thresholds, flags}``; None when no record has one."""
    series = [{"step": r["step"], "event": r.get("event"), "canary": r["canary"]} for r in records if r.get("canary")]
    if not series:
        return None
    return {"by_step": series, "thresholds": {"lm_loss_rise": LOSS_RISE, "rougeL_drop": ROUGE_DROP},
            "flags": canary_flags(series)}


def canary_cells(metrics: Mapping[str, Any] | None) -> list[str]:
    """``[LM loss, ROUGE-1, ROUGE-2, ROUGE-L]`` of one domain's canary, formatted."""
    m = metrics or {}
    return [md.estimate(m.get("lm_loss"))] + [md.estimate(m.get(k)) for k in ROUGE_KEYS]


CANARY_HEADER = ["LM loss (ref.) [95% CI]", "ROUGE-1", "ROUGE-2", "ROUGE-L"]
CANARY_NOTE = ("Capability canary: mean per-token NLL (nats) of the reference summaries given the generation "
               "prompt, and ROUGE F1 of the model's own greedy summaries against them, on held-out articles; "
               f"95% CIs resample articles. Flagged: loss > +{LOSS_RISE:.0%} or ROUGE-L < -{ROUGE_DROP:.0%} "
               "relative to the first evaluation.")


def render_canary_markdown(section: Mapping[str, Any] | None) -> list[str]:
    """The report's canary table and its flags (empty when there is no canary)."""
    if not section:
        return []
    rows = [[str(r["step"]), d.replace("_", "-"), *canary_cells(m)] for r in section["by_step"]
            for d, m in r["canary"].items()]
    lines = ["", "## Capability canary", "", CANARY_NOTE, ""] + md.table(["step", "domain", *CANARY_HEADER], rows)
    lines += [""] + ([f"- **{n}**" for n in section["flags"]] or ["- no canary flag: no loss rise or ROUGE-L drop "
                                                                   "beyond the thresholds."])
    return lines


def plot_canary(ax, section: Mapping[str, Any]) -> None:
    """ROUGE-L (left axis, 0-1) and LM loss (right axis) by step, per domain."""
    twin = ax.twinx()
    styles = {"in_domain": "-", "out_of_domain": "--"}
    for dom in dict.fromkeys(d for r in section["by_step"] for d in r["canary"]):
        for axis, metric, colour in ((ax, "rougeL", "tab:green"), (twin, "lm_loss", "tab:red")):
            pts = [(r["step"], r["canary"][dom][metric]) for r in section["by_step"]
                   if (r["canary"].get(dom) or {}).get(metric)]
            if pts:
                axis.plot([s for s, _ in pts], [m["mean"] for _, m in pts], marker="o", color=colour,
                          ls=styles.get(dom, ":"), label=f"{metric} {dom.replace('_', '-')}")
    ax.set_title("capability canary")
    ax.set_xlabel("training step")
    ax.tick_params(labelleft=True)  # the row shares the 0-1 axis; ROUGE reads on it
    ax.set_ylabel("ROUGE-L F1 of greedy summaries")
    twin.set_ylabel("LM loss on references (nats/token)")
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    if lines:
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize="small")


# ----------------------------------------------------------------------------- eval-checkpoints --canary


@dataclass
class CanarySettings:
    """``selfrec eval-checkpoints --canary``: what each (model, domain) canary scores."""

    articles: int = DEFAULT_ARTICLES
    generate: int = DEFAULT_GENERATE
    reference: str = REFERENCE
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS


CANARY_JSON = "canary.json"


def job_canary(job, settings) -> dict[str, Any] | None:
    """The canary of one eval-checkpoints job (:class:`selfrec_ft.sweep.checkpoints.EvalJob`) in its
    evaluation directory (``canary.json``; greedy summaries in ``canary-<domain>.jsonl``): read back
    when present for the same settings, else computed with the job's model. None when the corpus has
    no reference summaries of the held-out articles."""
    from dataclasses import asdict

    from selfrec_ft.defaults import DEFAULT_BATCH_SIZE
    from selfrec_ft.errors import UserError
    from selfrec_ft.jsonl import atomic_write_json
    from selfrec_ft.scoring.scorer import Scorer

    target, cs = job.reuse_of or job, settings.canary
    kind = job.spec.domain
    if kind is None:
        raise UserError(f"--canary needs the {job.domain.replace('_', '-')} corpus kind (short or highlights): it "
                        f"cannot be guessed from the directory name; set --{job.domain.replace('_', '-')}-kind",
                        job.corpus.path)
    task = canary_task(job.corpus, job.domain, kind, skip_first=job.skip_first, preset=job.spec.preset,
                       reference=cs.reference, articles=cs.articles, generate=cs.generate,
                       max_new_tokens=cs.max_new_tokens)
    if task is None:
        return None
    key = {**asdict(cs), "kind": kind, "model": target.model, "articles_scored": task.loss_ids}
    path = target.out_dir / CANARY_JSON
    if path.is_file():
        import json

        try:
            done = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            done = {}
        if done.get("settings") == key:
            return done["canary"]
    scorer = Scorer(target.model, dtype=target.dtype, device=settings.device,
                    batch_size=settings.batch_size or DEFAULT_BATCH_SIZE, max_length=target.max_length)
    try:
        metrics = Canary(scorer.tokenizer, [task], max_length=scorer.max_length, seed=settings.seed).evaluate(
            scorer, target.out_dir, "canary")[job.domain]
    finally:
        scorer.close()
    atomic_write_json(path, {"settings": key, "canary": metrics})
    return metrics


def add_checkpoint_flags(rows: Sequence[dict[str, Any]]) -> None:
    """Set ``row["canary_flags"]`` on the eval-checkpoints rows with a canary: each run's checkpoints
    and final model against the base model in the same domain (else the run's first evaluation)."""
    base = {r["domain"]: r for r in rows if r.get("run") == "base" and r.get("canary")}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("canary") and r.get("run") != "base":
            runs.setdefault((r["run"], r["domain"]), []).append(r)
    for (run, dom), members in runs.items():
        members.sort(key=lambda r: (r["checkpoint"] == "final", r["step"] if r["step"] is not None else -1))
        first = base.get(dom) or members[0]
        series = [{"step": first["step"], "canary": {dom: first["canary"]}}]
        for r in members:
            if r is first:
                continue
            series.append({"step": r["step"], "label": f"{run} {r['checkpoint']}", "canary": {dom: r["canary"]}})
            r["canary_flags"] = canary_flags(series[:1] + series[-1:])


def render_checkpoint_canary(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The eval-checkpoints canary table and its flags (empty without a canary)."""
    with_canary = [r for r in rows if r.get("canary")]
    if not with_canary:
        return []
    cells = [[r["run"], r["checkpoint"], md.DASH if r["step"] is None else str(r["step"]),
              r["domain"].replace("_", "-"), *canary_cells(r["canary"])] for r in with_canary]
    flags = [n for r in with_canary for n in r.get("canary_flags") or []]
    lines = ["", "## Capability canary", "", CANARY_NOTE.replace("the first evaluation", "the base model"), ""]
    lines += md.table(["run", "checkpoint", "step", "domain", *CANARY_HEADER], cells) + [""]
    return lines + ([f"- **{n}**" for n in flags] or ["- no canary flag."])
