"""A resumable evaluation run: score a :class:`~selfrec_ft.scoring.spec.EvalSpec` with a
:class:`~selfrec_ft.scoring.scorer.Scorer` into a directory.

``OUT/examples.jsonl`` gets one row per scored prompt (docs/ARCHITECTURE.md, "Scoring rows"),
appended chunk by chunk with :class:`~selfrec_ft.jsonl.JsonlAppender`; a killed run rerun with the
same arguments skips the rows already written (by their unique key) and scores the rest, so the
file ends with exactly the rows of an uninterrupted run. ``OUT/eval_config.json`` records the
settings that change the numbers; a rerun with different ones is refused. At the end
``OUT/report.json`` and ``OUT/report.md`` are written atomically from all rows of the file; both state
the prompt protocol (``protocol``: preset, templates sha256, where it came from).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfrec_ft.defaults import (  # noqa: F401
    DEFAULT_TASKS,
    EXAMPLES_FILE,
    FAMILIARITY,
    REPORT_JSON,
    REPORT_MD,
)
from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import (
    JsonlAppender,
    atomic_write_json,
    atomic_write_text,
    read_jsonl_rows,
    record_settings,
)
from selfrec_ft.scoring.engine import distributed_state
from selfrec_ft.scoring.items import ScoringItem, ScoringItems, row_key
from selfrec_ft.scoring.scorer import Scorer
from selfrec_ft.scoring.spec import EvalSpec

CONFIG_FILE = "eval_config.json"
CHUNK_ITEMS = 256
"""Rows are written after every chunk of about this many prompts (whole articles)."""


@dataclass
class EvalResult:
    """What :func:`evaluate` did: the report dict (as in report.json), its markdown, where the rows
    are, how many prompts this call scored and how many it found already written."""

    report: dict[str, Any]
    markdown: str
    out_dir: Path
    scored: int
    resumed: int

    @property
    def examples_path(self) -> Path:
        return self.out_dir / EXAMPLES_FILE


def _chunks(items: Sequence[ScoringItem], size: int) -> list[list[ScoringItem]]:
    """Consecutive chunks of at least ``size`` items (or the rest), cut only between articles so a
    chunk keeps every prompt group whole."""
    out, cur = [], []
    for it in items:
        if cur and len(cur) >= size and it.meta["article_id"] != cur[-1].meta["article_id"]:
            out.append(cur)
            cur = []
        cur.append(it)
    if cur:
        out.append(cur)
    return out


def _existing_keys(path: Path) -> set[tuple]:
    keys: set[tuple] = set()
    for n, row in enumerate(read_jsonl_rows(path), start=1):
        if not isinstance(row, dict) or "task" not in row or "article_id" not in row:
            raise UserError("not a scoring row (needs task and article_id)", path, n)
        key = row_key(row)
        if key in keys:
            raise UserError(f"duplicate scoring row {key}", path, n)
        keys.add(key)
    return keys


def familiarity_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Mean of the rows' ``mean_logprob`` per target source (familiarity rows only)."""
    by_src: dict[str, list[float]] = {}
    for r in rows:
        if r.get("task") == FAMILIARITY and isinstance(r.get("mean_logprob"), (int, float)):
            by_src.setdefault(r["target_source"], []).append(float(r["mean_logprob"]))
    if not by_src:
        return None
    return {"by_source": {s: {"mean_logprob": statistics.fmean(v), "n": len(v)} for s, v in by_src.items()}}


def _familiarity_markdown(fam: Mapping[str, Any], self_source: str) -> str:
    lines = ["## Familiarity", "",
             "Mean token log-likelihood of each source's summaries given the generation prompt.", "",
             "| source | mean log p | n |", "|---|---|---|"]
    for src, b in fam["by_source"].items():
        name = f"{src} (self)" if src == self_source else src
        lines.append(f"| {name} | {b['mean_logprob']:.3f} | {b['n']} |")
    return "\n".join(lines) + "\n"


def evaluate(scorer: Scorer, spec: EvalSpec, out_dir: str | os.PathLike, *, progress: bool = True,
             quality=None) -> EvalResult:
    """Score ``spec`` with ``scorer`` into ``out_dir`` (resuming an interrupted run there), write
    report.json / report.md and return them as an :class:`EvalResult`. The model is only loaded
    (a path-built scorer) when something is left to score. ``quality`` (a
    :class:`~selfrec_ft.scoring.quality.QualityReference`) adds quality-aware preference; by default
    ROUGE-L against the corpus's ``human`` summaries when it has them."""
    from tqdm.auto import tqdm

    from selfrec_ft.files import writable_dir

    corpus = spec.load_corpus()
    items = scorer.items(spec, corpus)
    out = writable_dir(out_dir)
    examples = out / EXAMPLES_FILE
    settings = {
        "model": scorer.source,
        "corpus": str(corpus.path.resolve()) if corpus.path else None,
        "self_source": spec.self_source, "preset": spec.preset, "templates": spec.template_map,
        "max_length": scorer.max_length, "dtype": scorer.dtype, "domain": spec.domain, "skip_first": spec.skip_first,
    }
    if spec.worse_question and "pairwise-preference" in spec.tasks:  # recorded only where it adds rows
        settings["worse_question"] = True
    if spec.perturb is not None:  # only then: directories written before perturbations existed still resume
        settings["perturb"] = {"kind": spec.perturb, "seed": spec.perturb_seed}
    record_settings(out / CONFIG_FILE, settings, held="this directory holds an evaluation",
                    hint="use another --out (or delete the directory) to start a new one")
    done = _existing_keys(examples)
    todo = [it for it in items if it.key not in done]

    state = distributed_state()
    is_main = state is None or state.is_main_process
    if todo:
        appender = JsonlAppender(examples) if is_main else None
        try:
            with tqdm(total=len(items), initial=len(items) - len(todo), desc="evaluating", unit="prompt",
                      disable=not (progress and is_main), dynamic_ncols=True) as bar:
                for chunk in _chunks(todo, CHUNK_ITEMS):
                    rows = scorer.score_items(chunk)
                    if appender is not None:
                        appender.append(rows)
                    bar.update(len(chunk))
        finally:
            if appender is not None:
                appender.close()
        if state is not None:
            state.wait_for_everyone()

    report, md = _write_report(out, scorer, spec, items, corpus, is_main, quality)
    return EvalResult(report, md, out, scored=len(todo), resumed=len(items) - len(todo))


def _write_report(out: Path, scorer: Scorer, spec: EvalSpec, items: ScoringItems, corpus, is_main: bool,
                  quality=None) -> tuple[dict[str, Any], str]:
    from selfrec_ft.prompts.protocol import protocol_markdown, protocol_record
    from selfrec_ft.scoring.controls_preference import add_preference_controls
    from selfrec_ft.scoring.metrics import compute_report
    from selfrec_ft.scoring.quality import default_quality
    from selfrec_ft.scoring.report import render_markdown

    examples = out / EXAMPLES_FILE
    rows = read_jsonl_rows(examples)
    report = compute_report(rows, seed=spec.seed, n_resamples=spec.n_resamples)
    if quality is None:
        quality = default_quality(corpus, spec.tasks, items.article_ids, [spec.self_source, *items.others])
    add_preference_controls(report, rows, spec.seed, spec.n_resamples, quality)
    fam = familiarity_summary(rows)
    if fam:
        report["familiarity"] = fam
    max_length, n_articles = scorer.max_length, len(items.article_ids)
    report["meta"]["eval"] = {
        "model": scorer.name, "corpus": str(corpus.path) if corpus.path else None, "self_source": spec.self_source,
        "others": items.others, "tasks": list(spec.scored_tasks), "articles": n_articles, "prompts": len(items),
        "shortened_prompts": items.shortened, "skipped_missing_summary": items.skipped_missing,
        "preset": spec.preset, "max_length": max_length, "dtype": scorer.dtype, "domain": spec.domain,
        "examples": str(examples), "chat_template": items.chat,
    }
    if spec.perturb is not None:
        report["meta"]["eval"]["perturb"] = {"kind": spec.perturb, "seed": spec.perturb_seed}
    report["protocol"] = protocol_record(spec.preset, spec.template_map, spec.protocol)
    md = render_markdown(report, title=f"Evaluation of {spec.self_source}")
    head, sep, rest = md.partition("\n\n")  # the protocol right under the title, before the numbers
    md = head + sep + protocol_markdown(report["protocol"]) + "\n" + rest
    if spec.perturb is not None:
        md += f"\nSummaries perturbed: {spec.perturb} (seed {spec.perturb_seed}), both summaries of every pair.\n"
    fit = f"{items.shortened} had their article shortened to fit max_length={max_length}" if max_length \
        else "no max_length, no article shortened"
    md += (f"\n{len(items)} prompts on {n_articles} articles; {fit}"
           + (f"; {items.skipped_missing} skipped for a missing summary" if items.skipped_missing else "") + ".\n")
    if items.chat and items.chat.get("system_role") == "folded":
        md += (f"\nThe model's chat template has no system role: system prompts were folded into the first user "
               f"turn ({items.chat['reason']}).\n")
    if fam:
        md += "\n" + _familiarity_markdown(fam, spec.self_source)
    if is_main:
        atomic_write_json(out / REPORT_JSON, report)
        atomic_write_text(out / REPORT_MD, md)
    return report, md
