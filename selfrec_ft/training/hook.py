"""The evaluation hook: recognition and preference while training, in-domain and out-of-domain.

:class:`SelfRecEvalCallback` is a ``transformers.TrainerCallback``. At the start of training (the
baseline), on every checkpoint save and at the end it scores held-out pairs with the one scoring
engine (each process scores a shard; results are gathered), computes the protocol's metrics, logs
them into the trainer's logs (``selfrec/in_domain/recognition`` ...; so ``report_to`` wandb /
tensorboard shows them), and appends one line per evaluation to ``output_dir/selfrec_hook.jsonl``.
The prompts are rendered once, when the hook is built.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from selfrec_ft.data.corpus import Corpus, load_corpus
from selfrec_ft.jsonl import JsonlAppender, read_jsonl_rows
from selfrec_ft.prompts.templates import DEFAULT_PRESET
from selfrec_ft.scoring.engine import score_requests
from selfrec_ft.scoring.items import ScoringItems, build_items, result_row
from selfrec_ft.scoring.metrics import compute_report

from selfrec_ft.defaults import HOOK_FILE  # noqa: E402
DOMAINS = ("in_domain", "out_of_domain")
MEASURES = {"pairwise-recognition": "recognition", "pairwise-preference": "preference"}


@dataclass
class HookDomain:
    name: str
    items: ScoringItems


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """``{"recognition": {mean, ci95, n, accuracy, invalid, position_biased}, "preference": {...}}``."""
    out = {}
    for key in ("recognition", "preference"):
        r = report.get("pairwise", {}).get(key)
        if r:
            out[key] = {k: r.get(k) for k in ("mean", "mean_raw", "ci95", "n", "accuracy", "invalid", "position_biased")}
    return out


def build_hook_domains(tokenizer, self_source: str, others: Sequence[str] | None, tasks: Sequence[str],
                       in_domain: str | Corpus | None, n_train_articles: int, out_of_domain: str | Corpus | None,
                       limit: int | None = None, preset: str = DEFAULT_PRESET, max_length: int | None = None
                       ) -> list[HookDomain]:
    """Items for the held-out in-domain articles (after the training ones) and the out-of-domain corpus."""
    domains = []
    for name, corpus, skip in (("in_domain", in_domain, n_train_articles), ("out_of_domain", out_of_domain, 0)):
        if corpus is None:
            continue
        c = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
        ids = [a.id for a in c.heldout_articles(skip, limit)]
        domains.append(HookDomain(name, build_items(c, tokenizer, self_source, others, list(tasks), ids,
                                                    preset=preset, max_length=max_length, domain=name)))
    return domains


def score_domains(model, domains: Sequence[HookDomain], batch_size: int = 8, seed: int = 0,
                  n_resamples: int = 1000, progress: bool = False) -> dict[str, Any]:
    """Score every domain's items with ``model`` and summarise: ``{domain: {recognition, preference}}``."""
    out = {}
    for dom in domains:
        results = score_requests(model, [it.request for it in dom.items], batch_size=batch_size,
                                 progress=progress, desc=f"hook {dom.name}")
        rows = [result_row(it, r) for it, r in zip(dom.items, results)]
        out[dom.name] = summarise(compute_report(rows, seed=seed, n_resamples=n_resamples))
    return out


class SelfRecEvalCallback(TrainerCallback):
    """See the module docstring. ``trainer`` must be set (``callback.trainer = trainer``) for the
    metrics to reach the trainer's logs; without it they only go to the JSONL file."""

    def __init__(self, domains: Sequence[HookDomain], output_dir: str, batch_size: int = 8,
                 at_start: bool = True, at_end: bool = True, seed: int = 0, n_resamples: int = 1000):
        self.domains = list(domains)
        self.path = Path(output_dir) / HOOK_FILE
        self.batch_size = batch_size
        self.at_start, self.at_end = at_start, at_end
        self.seed, self.n_resamples = seed, n_resamples
        self.trainer = None
        self._done_steps = {int(r["step"]) for r in read_jsonl_rows(self.path)} if self.path.exists() else set()

    def _run(self, args, state, model, event: str) -> None:
        if not self.domains or model is None or state.global_step in self._done_steps:
            return
        t0 = time.perf_counter()
        metrics = score_domains(model, self.domains, self.batch_size, self.seed, self.n_resamples)
        self._done_steps.add(state.global_step)
        record = {"step": state.global_step, "epoch": state.epoch, "event": event, **metrics,
                  "seconds": round(time.perf_counter() - t0, 3)}
        if state.is_world_process_zero:
            with JsonlAppender(self.path) as app:
                app.append([record])
        flat = {f"selfrec/{d}/{m}": v["mean"] for d, ms in metrics.items() for m, v in ms.items()
                if v.get("mean") is not None}
        if self.trainer is not None and flat:
            self.trainer.log(flat)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.at_start:
            self._run(args, state, model, "start")

    def on_save(self, args, state, control, model=None, **kwargs):
        self._run(args, state, model, "save")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.at_end:
            self._run(args, state, model, "end")


def read_hook_records(output_dir: str | Path) -> list[dict[str, Any]]:
    """The hook's evaluations in step order (the last record of a step wins)."""
    by_step = {int(r["step"]): r for r in read_jsonl_rows(Path(output_dir) / HOOK_FILE)}
    return [by_step[s] for s in sorted(by_step)]


def hook_from_args(hook_args, data_args, output_dir: str, tokenizer, max_length: int | None = None
                   ) -> SelfRecEvalCallback | None:
    """The hook an SFT/DPO run asked for (``EvalHookArguments``), or None when no domain is set.

    In-domain evaluation skips the run's ``n_articles`` training articles; the out-of-domain corpus
    is used from its first article. The self source and others are the training run's unless
    ``hook_others`` says otherwise.
    """
    if hook_args is None or not (hook_args.hook_in_domain or hook_args.hook_out_of_domain):
        return None
    others = hook_args.hook_others or getattr(data_args, "others", None)
    domains = build_hook_domains(
        tokenizer, data_args.self_source, others, hook_args.hook_tasks, hook_args.hook_in_domain,
        data_args.n_articles, hook_args.hook_out_of_domain, limit=hook_args.hook_limit,
        preset=data_args.prompt_preset, max_length=max_length,
    )
    return SelfRecEvalCallback(domains, output_dir, batch_size=hook_args.hook_batch_size,
                               seed=getattr(data_args, "label_seed", 0))
