"""The evaluation hook: recognition and preference while training, in-domain and out-of-domain.

:class:`SelfRecEvalCallback` is a ``transformers.TrainerCallback`` built with its trainer (TRL's
``trl/trainer/callbacks.py`` pattern: ``cb = SelfRecEvalCallback(trainer, specs, ...)``, then
``trainer.add_callback(cb)``; :func:`hook_from_args` does both). It holds one
:class:`~selfrec_ft.scoring.scorer.Scorer` over ``trainer.model`` and one
:class:`~selfrec_ft.scoring.spec.EvalSpec` per domain, whose prompts are rendered once, when the
hook is built. At the start of training (the baseline), on every checkpoint save and at the end it
scores them with the one scoring engine (each process scores a shard; results are gathered),
computes the protocol's metrics, logs them through ``trainer.log`` (``selfrec/in_domain/recognition``
...; so ``report_to`` wandb / tensorboard shows them; the console shows one compact line, see
:mod:`selfrec_ft.training.console`) and appends one line per evaluation to
``output_dir/selfrec_hook.jsonl``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from selfrec_ft.defaults import HOOK_FILE
from selfrec_ft.jsonl import JsonlAppender, read_jsonl_rows
from selfrec_ft.scoring.controls_preference import add_preference_controls
from selfrec_ft.scoring.metrics import compute_report
from selfrec_ft.scoring.quality import default_quality
from selfrec_ft.scoring.scorer import Scorer
from selfrec_ft.scoring.spec import EvalSpec
from selfrec_ft.training.report import read_hook_records  # noqa: F401 (re-exported)

HOOK_RESAMPLES = 1000
"""Bootstrap resamples of the hook's intervals."""


def summarise(report: dict[str, Any], rows=(), seed: int = 0, n_resamples: int = HOOK_RESAMPLES) -> dict[str, Any]:
    """``{"recognition": {mean, ci95, n, accuracy, invalid, position_biased}, "preference": {...},
    "question_following": {mean, ci95, n, n_articles, better, worse, better_ci95, worse_ci95, answer_copying,
    verdict}}`` (the last with worse-question rows: mean = the better − worse gap). With the individual
    task ("did you write this?") for the self and another source: the threshold-free ``individual_ratio`` (P1's pooled p̂(Yes) ratio
    self/(self+other) with its CI, and ``auroc``) and, from ``rows``, ``hit_rate``, ``false_alarm_rate``
    and ``d_prime`` (claims at p̂(Yes) > ½, article-clustered CIs;
    :func:`selfrec_ft.scoring.baselines.hit_false_alarm`)."""
    from selfrec_ft.scoring.baselines import hit_false_alarm

    out = {}
    for key in ("recognition", "preference"):
        r = report.get("pairwise", {}).get(key)
        if r:
            out[key] = {k: r.get(k) for k in ("mean", "mean_raw", "ci95", "n", "accuracy", "invalid", "position_biased")}
    qf = report.get("question_following")
    if qf:  # the gap better - worse (its mean is what is logged), with both questions' self-picked rates
        out["question_following"] = {**qf["gap"], "better": qf["better"]["mean"], "worse": qf["worse"]["mean"],
                                     "better_ci95": qf["better"].get("ci95"), "worse_ci95": qf["worse"].get("ci95"),
                                     "answer_copying": qf["answer_copying"], "verdict": qf["verdict"]}
    qa = report.get("quality_preference")
    if qa:  # harmful vs justified self-preference against the quality reference (no top-level mean: not logged)
        out["quality_preference"] = {k: qa[k] for k in ("reference", "justified", "harmful", "dbg")}
    ind = (report.get("individual") or {}).get("recognition") or {}
    pooled = ind.get("pooled") or {}
    if pooled.get("ratio") is not None:
        out["individual_ratio"] = {"mean": pooled["ratio"], "ci95": pooled.get("ci95"), "n": pooled.get("n"),
                                   "auroc": ind.get("auroc_pooled")}
    hfa = hit_false_alarm(rows, seed=seed, n_resamples=n_resamples) if rows else None
    if hfa:
        out.update({k: hfa[k] for k in ("hit_rate", "false_alarm_rate", "d_prime")})
    return out


def logged_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """What the hook logs through ``trainer.log``: ``selfrec/<domain>/<measure>`` (every block with a
    mean) and ``selfrec/<domain>/perturbed/<kind>/<measure>``."""
    flat = {}
    for d, ms in metrics.items():
        for m, v in ms.items():
            if m == "perturbed":
                flat.update({f"selfrec/{d}/perturbed/{kind}/{pm}": pv["mean"] for kind, block in v.items()
                             for pm, pv in block.items() if isinstance(pv, dict) and pv.get("mean") is not None})
            elif isinstance(v, dict) and v.get("mean") is not None:
                flat[f"selfrec/{d}/{m}"] = v["mean"]
    return flat


class SelfRecEvalCallback(TrainerCallback):
    """See the module docstring. ``specs`` are one :class:`EvalSpec` per domain (``spec.domain`` is
    the domain's name, ``in_domain`` / ``out_of_domain``); ``batch_size`` and ``max_length`` (prompt
    budget; default the model's context) configure the scorer."""

    def __init__(self, trainer, specs: Sequence[EvalSpec], *, batch_size: int = 8, max_length: int | None = None,
                 at_start: bool = True, at_end: bool = True, canary=None, perturb: Sequence[str] = (),
                 perturb_seed: int = 0):
        self.trainer = trainer
        self.scorer = Scorer(trainer.model, trainer.processing_class, batch_size=batch_size, max_length=max_length)
        self.domains = [(spec, self.scorer.items(spec)) for spec in specs]
        # perturbed conditions (scoring/perturb.py): the same held-out pairs with both summaries perturbed,
        # asked the same questions ("better" only), at every evaluation
        self.perturbed = [(spec.domain, kind, spec, self.scorer.items(
            spec.replace(perturb=kind, perturb_seed=perturb_seed, worse_question=False)))
            for spec in specs for kind in perturb]
        self.perturb_seed = perturb_seed
        self.quality = {spec.domain: default_quality(spec.load_corpus(), spec.tasks, items.article_ids,
                                                     [spec.self_source, *items.others]) for spec, items in self.domains}
        self.path = Path(trainer.args.output_dir) / HOOK_FILE
        self.at_start, self.at_end = at_start, at_end
        self.canary = canary  # a selfrec_ft.training.canary.Canary, or None
        self._done_steps = {int(r["step"]) for r in read_jsonl_rows(self.path)} if self.path.exists() else set()

    def evaluate(self, model=None) -> dict[str, Any]:
        """Score every domain and summarise: ``{domain: {recognition, preference}}``. ``model``: the
        model the trainer hands to its callbacks, when it is no longer ``trainer.model`` (re-wrapped)."""
        if model is not None and model is not self.scorer.model:
            self.scorer = Scorer(model, self.scorer.tokenizer, batch_size=self.scorer.batch_size,
                                 max_length=self.scorer.max_length)
        out = {}
        for spec, items in self.domains:
            rows = self.scorer.score_items(items, desc=f"hook {spec.domain}")
            report = compute_report(rows, seed=spec.seed, n_resamples=spec.n_resamples)
            out[spec.domain] = summarise(add_preference_controls(report, rows, spec.seed, spec.n_resamples,
                                                                 self.quality.get(spec.domain)),
                                         rows, spec.seed, spec.n_resamples)
        for domain, kind, spec, items in self.perturbed:
            rows = self.scorer.score_items(items, desc=f"hook {domain} {kind}")
            block = summarise(compute_report(rows, seed=spec.seed, n_resamples=spec.n_resamples), rows,
                              spec.seed, spec.n_resamples)
            out[domain].setdefault("perturbed", {})[kind] = {"seed": self.perturb_seed, **block}
        return out

    def _run(self, state, model, event: str) -> None:
        if not self.domains or state.global_step in self._done_steps:
            return
        t0 = time.perf_counter()
        metrics = self.evaluate(model)
        canary = None
        if self.canary is not None:  # greedy summaries: the main process only
            from selfrec_ft.training.canary import CANARY_DIR

            canary = self.canary.evaluate(self.scorer, self.path.parent / CANARY_DIR, f"step-{state.global_step}",
                                          generate=state.is_world_process_zero)
        self._done_steps.add(state.global_step)
        record = {"step": state.global_step, "epoch": state.epoch, "event": event, **metrics,
                  **({"canary": canary} if canary else {}), "seconds": round(time.perf_counter() - t0, 3)}
        if state.is_world_process_zero:
            with JsonlAppender(self.path) as app:
                app.append([record])
        flat = logged_metrics(metrics)
        if canary:
            from selfrec_ft.training.canary import flat_metrics

            flat.update(flat_metrics(canary))
        if flat:
            self.trainer.log(flat)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.at_start:  # a resumed run evaluates the checkpoint it resumed from (if not done yet)
            self._run(state, model, "start" if state.global_step == 0 else "resume")

    def on_save(self, args, state, control, model=None, **kwargs):
        self._run(state, model, "save")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.at_end:
            self._run(state, model, "end")


def hook_specs(hook_args, data_args) -> list[EvalSpec]:
    """The hook's :class:`EvalSpec` per domain from ``EvalHookArguments``: in-domain skips the run's
    ``n_articles`` training articles, the out-of-domain corpus is used from its first article — unless
    it is the training corpus file (:func:`shares_training_file`): then its training articles are
    skipped too, as ``selfrec eval`` does, with a note; nothing left is an error. The self source and
    others are the training run's unless ``hook_others`` says otherwise."""
    import sys

    from selfrec_ft.errors import UserError

    others = hook_args.hook_others or getattr(data_args, "others", None)
    common = dict(self_source=data_args.self_source, others=others, tasks=hook_args.hook_tasks,
                  limit=hook_args.hook_limit, preset=data_args.prompt_preset,
                  seed=getattr(data_args, "label_seed", 0), n_resamples=HOOK_RESAMPLES,
                  worse_question=getattr(hook_args, "hook_worse_question", True))
    specs = []
    n_train = data_args.n_articles
    for name, corpus, skip in (("in_domain", hook_args.hook_in_domain, n_train),
                               ("out_of_domain", hook_args.hook_out_of_domain, 0)):
        if not corpus:
            continue
        spec = EvalSpec(corpus=corpus, skip_first=skip, domain=name, **common)
        if shares_training_file(corpus, data_args):
            n = len(spec.load_corpus().articles)
            if n <= n_train:
                raise UserError(f"hook_{name} is the training corpus file and has no article after the {n_train} "
                                f"training articles ({n} in all); give another corpus or --hook_{name} none", corpus)
            if skip < n_train:
                spec = spec.replace(skip_first=n_train)
                print(f"hook_{name} {corpus} is the training corpus file: its first {n_train} articles (the "
                      "training articles) are skipped", file=sys.stderr)
        specs.append(spec)
    return specs


def shares_training_file(corpus: str, data_args) -> bool:
    """Whether the corpus directory ``corpus`` holds the articles file the run trains on (the same
    file, or one with the same sha256)."""
    from selfrec_ft.defaults import ARTICLES_FILE
    from selfrec_ft.training.manifest import sha256_file

    train = getattr(data_args, "corpus", None)
    if not train or getattr(data_args, "hf_dataset", None):
        return False
    mine, theirs = Path(corpus) / ARTICLES_FILE, Path(train) / ARTICLES_FILE
    if not (mine.is_file() and theirs.is_file()):
        return False
    return mine.resolve() == theirs.resolve() or sha256_file(mine) == sha256_file(theirs)


def hook_from_args(trainer, hook_args, data_args, max_length: int | None = None) -> SelfRecEvalCallback | None:
    """Build the hook an SFT/DPO run asked for (``EvalHookArguments``) with its trainer, add it to the
    trainer (after making its console compact) and return it; None when no domain is set."""
    from selfrec_ft.training.console import use_compact_console

    if hook_args is None or not (hook_args.hook_in_domain or hook_args.hook_out_of_domain):
        return None
    specs = hook_specs(hook_args, data_args)
    hook = SelfRecEvalCallback(trainer, specs, batch_size=hook_args.hook_batch_size, max_length=max_length,
                               perturb=getattr(hook_args, "hook_perturb", None) or (),
                               perturb_seed=getattr(hook_args, "hook_perturb_seed", 0))
    hook.canary = hook_canary(hook.scorer, hook_args, data_args, specs)
    if getattr(hook_args, "hook_style_ceiling", False) and trainer.args.process_index == 0:
        hook_style_ceiling(specs, hook.path.parent)
    use_compact_console(trainer)
    trainer.add_callback(hook)
    return hook


def hook_canary(scorer, hook_args, data_args, specs: Sequence[EvalSpec]):
    """The capability canary (:mod:`selfrec_ft.training.canary`) of the hook's domains, or None when
    ``hook_canary`` is off. A domain's corpus kind (``short`` / ``highlights``) is ``hook_<domain>_kind``,
    else the DPO recipe's ``<domain>_style``, else guessed from the directory name; a domain whose
    kind stays unknown or whose corpus lacks the reference source gets no canary (a warning says so)."""
    import logging

    from selfrec_ft.errors import UserError
    from selfrec_ft.sweep.checkpoints import guess_kind
    from selfrec_ft.training.canary import Canary, canary_task

    if not getattr(hook_args, "hook_canary", False):
        return None
    tasks = []
    for spec in specs:
        corpus = spec.load_corpus()
        kind = (getattr(hook_args, f"hook_{spec.domain}_kind", None) or getattr(data_args, f"{spec.domain}_style", None)
                or guess_kind(str(spec.corpus)))
        if kind is None:
            logging.getLogger(__name__).warning(
                "canary: cannot tell whether the %s corpus %s is short or highlights; set hook_%s_kind",
                spec.domain, spec.corpus, spec.domain)
            continue
        tasks.append(canary_task(corpus, spec.domain, kind, skip_first=spec.skip_first, preset=spec.preset,
                                 reference=hook_args.hook_canary_reference, articles=hook_args.hook_canary_articles,
                                 generate=hook_args.hook_canary_generate,
                                 max_new_tokens=hook_args.hook_canary_max_new_tokens))
    try:
        canary = Canary(scorer.tokenizer, tasks, max_length=scorer.max_length, seed=specs[0].seed if specs else 0)
    except UserError as exc:
        raise UserError(f"capability canary: {exc.message} (hook_canary: false runs without it)", exc.file,
                        exc.line) from None
    return canary if canary.tasks else None


def hook_style_ceiling(specs: Sequence[EvalSpec], out_dir: Path) -> None:
    """The style-classifier ceiling of the in-domain corpus (:mod:`selfrec_ft.analysis.style_ceiling`:
    trained on the run's training articles, scored on the hook's held-out ones) into ``out_dir``, for
    the training report. A corpus it cannot use (too few summaries) is a warning, not a failed run."""
    import logging

    from selfrec_ft.analysis.style_ceiling import style_ceiling, write_style_ceiling
    from selfrec_ft.errors import UserError

    spec = next((s for s in specs if s.domain == "in_domain"), None)
    if spec is None or spec.skip_first < 1:
        return
    try:
        result = style_ceiling(spec.load_corpus(), spec.self_source, spec.others, train_articles=spec.skip_first,
                               limit=spec.limit, seed=spec.seed, n_resamples=spec.n_resamples)
    except UserError as exc:
        logging.getLogger(__name__).warning("no style-classifier ceiling: %s", exc)
        return
    write_style_ceiling(result, out_dir)
