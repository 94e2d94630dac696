"""A resumable evaluation run: score the four tasks on held-out articles into a directory.

``OUT/examples.jsonl`` gets one row per scored prompt (docs/ARCHITECTURE.md, "Scoring rows"),
appended chunk by chunk with :class:`~selfrec_ft.jsonl.JsonlAppender`; a killed run rerun with the
same arguments skips the rows already written (by their unique key) and scores the rest, so the
file ends with exactly the rows of an uninterrupted run. ``OUT/eval_config.json`` records the
settings that change the numbers; a rerun with different ones is refused. At the end
``OUT/report.json`` and ``OUT/report.md`` are written atomically from all rows of the file.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfrec_ft.data.corpus import Corpus, load_corpus
from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import JsonlAppender, atomic_write_json, atomic_write_text, read_jsonl_rows
from selfrec_ft.prompts.templates import DEFAULT_PRESET
from selfrec_ft.scoring.engine import DEFAULT_BATCH_SIZE, distributed_state, score_requests
from selfrec_ft.scoring.items import FAMILIARITY, TASKS, ScoringItem, build_items, result_row, row_key

from selfrec_ft.defaults import EXAMPLES_FILE, REPORT_JSON, REPORT_MD  # noqa: E402
CONFIG_FILE = "eval_config.json"
DEFAULT_TASKS = TASKS
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


def _model_name(model_or_path, absolute: bool = False) -> str:
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        return os.path.abspath(path) if absolute and os.path.exists(path) else path
    cfg = getattr(model_or_path, "config", None)
    return str(getattr(cfg, "_name_or_path", "") or type(model_or_path).__name__)


def context_length(model_or_path, base_model: str | None = None) -> int | None:
    """The model's context length (``max_position_embeddings``) from its config, if it has one."""
    config = getattr(model_or_path, "config", None)
    if config is None and isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoConfig

        from selfrec_ft.models.loading import adapter_base, is_adapter_dir

        src = os.fspath(model_or_path)
        if is_adapter_dir(src):
            src = base_model or adapter_base(src)
        try:
            config = AutoConfig.from_pretrained(src)
        except (OSError, ValueError):
            return None
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    n = getattr(config, "max_position_embeddings", None)
    return n if isinstance(n, int) and 0 < n < 10_000_000 else None


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """Refuse to resume into a directory scored with different settings."""
    import json

    if not path.exists():
        atomic_write_json(path, config)
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON ({exc.msg})", path, exc.lineno) from None
    changed = [k for k in config if k in old and old[k] != config[k]]
    if changed:
        k = changed[0]
        raise UserError(f"this directory holds an evaluation with {k}={old[k]!r}, not {config[k]!r}; "
                        "use another --out (or delete the directory) to start a new one", path)


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


def evaluate(
    model_or_path,
    corpus: Corpus | str | os.PathLike,
    out_dir: str | os.PathLike,
    self_source: str,
    others: Sequence[str] | None = None,
    tasks: Sequence[str] = DEFAULT_TASKS,
    skip_first: int = 0,
    limit: int | None = None,
    preset: str = DEFAULT_PRESET,
    templates: Mapping[str, str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_tokens: int | None = None,
    max_length: int | None = None,
    dtype: str = "float32",
    familiarity: bool = False,
    domain: str | None = None,
    tokenizer=None,
    device: str | None = None,
    base_model: str | None = None,
    progress: bool = True,
    chunk_items: int = CHUNK_ITEMS,
    seed: int = 0,
    n_resamples: int = 2000,
) -> EvalResult:
    """Score ``tasks`` on the articles after the first ``skip_first`` (at most ``limit``) into
    ``out_dir``; write report.json / report.md and return them as an :class:`EvalResult`.

    ``model_or_path`` is a model directory / adapter / checkpoint (loaded with ``dtype`` on
    ``device``) or an already-loaded model, in which case ``tokenizer`` is required and ``dtype`` is
    taken from the model. ``max_length`` defaults to the model's context length;
    ``batch_size`` / ``max_batch_tokens`` bound the engine's batches (memory). Resumes an
    interrupted run in ``out_dir``.
    """
    from tqdm.auto import tqdm

    if skip_first < 0:
        raise UserError(f"--skip-first must be at least 0, got {skip_first}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if not tasks and not familiarity:
        raise UserError("nothing to score: no tasks and no familiarity")
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    is_path = isinstance(model_or_path, (str, os.PathLike))
    if is_path:
        if not Path(model_or_path).exists() and os.fspath(model_or_path).count("/") != 1:  # else a hub id
            raise UserError("model path not found", model_or_path)
        if tokenizer is None:
            from selfrec_ft.models.loading import load_tokenizer

            tokenizer = load_tokenizer(model_or_path)
    else:
        if tokenizer is None:
            raise ValueError("evaluate() with a loaded model needs its tokenizer")
        model_dtype = getattr(model_or_path, "dtype", None)
        dtype = str(model_dtype).removeprefix("torch.") if model_dtype is not None else dtype
    if max_length is None:
        max_length = context_length(model_or_path, base_model)
    article_ids = [a.id for a in corpus.heldout_articles(skip_first, limit)]
    if not article_ids:
        raise UserError(f"no articles to evaluate: the corpus has {len(corpus.articles)} and the first "
                        f"{skip_first} are skipped", corpus.path)
    items = build_items(corpus, tokenizer, self_source, others, list(tasks), article_ids, preset=preset,
                        max_length=max_length, templates=templates, familiarity=familiarity, domain=domain)
    others = [s for s in corpus.sources() if s != self_source] if others is None else list(others)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = out / EXAMPLES_FILE
    _check_config(out / CONFIG_FILE, {
        "model": _model_name(model_or_path, absolute=True),
        "corpus": str(corpus.path.resolve()) if corpus.path else None,
        "self_source": self_source, "preset": preset, "templates": dict(templates or {}),
        "max_length": max_length, "dtype": dtype, "domain": domain, "skip_first": skip_first,
    })
    done = _existing_keys(examples)
    todo = [it for it in items if it.key not in done]

    state = distributed_state()
    is_main = state is None or state.is_main_process

    if todo:
        model = model_or_path
        if is_path:
            from selfrec_ft.models.loading import load_model

            model, _ = load_model(model_or_path, dtype=dtype, device=device, base_model=base_model)
        appender = JsonlAppender(examples) if is_main else None
        try:
            with tqdm(total=len(items), initial=len(items) - len(todo), desc="evaluating", unit="prompt",
                      disable=not (progress and is_main), dynamic_ncols=True) as bar:
                for chunk in _chunks(todo, chunk_items):
                    results = score_requests(model, [it.request for it in chunk], batch_size=batch_size,
                                             max_batch_tokens=max_batch_tokens, progress=False)
                    if appender is not None:
                        appender.append([result_row(it, r) for it, r in zip(chunk, results)])
                    bar.update(len(chunk))
        finally:
            if appender is not None:
                appender.close()
        if state is not None:
            state.wait_for_everyone()

    report, md = _write_report(out, examples, items, self_source, others, list(tasks), article_ids, is_main,
                               seed=seed, n_resamples=n_resamples, model=_model_name(model_or_path),
                               preset=preset, max_length=max_length, dtype=dtype, domain=domain, corpus=corpus)
    return EvalResult(report, md, out, scored=len(todo), resumed=len(items) - len(todo))


def _write_report(out: Path, examples: Path, items, self_source, others, tasks, article_ids, is_main, *,
                  seed, n_resamples, model, preset, max_length, dtype, domain, corpus) -> tuple[dict[str, Any], str]:
    from selfrec_ft.scoring.metrics import compute_report
    from selfrec_ft.scoring.report import render_markdown

    rows = read_jsonl_rows(examples)
    report = compute_report(rows, seed=seed, n_resamples=n_resamples)
    fam = familiarity_summary(rows)
    if fam:
        report["familiarity"] = fam
    report["meta"]["eval"] = {
        "model": model, "corpus": str(corpus.path) if corpus.path else None, "self_source": self_source,
        "others": others, "tasks": tasks, "articles": len(article_ids), "prompts": len(items),
        "shortened_prompts": items.shortened, "skipped_missing_summary": items.skipped_missing,
        "preset": preset, "max_length": max_length, "dtype": dtype, "domain": domain,
        "examples": str(examples),
    }
    md = render_markdown(report, title=f"Evaluation of {self_source}")
    fit = f"{items.shortened} had their article shortened to fit max_length={max_length}" if max_length \
        else "no max_length, no article shortened"
    md += (f"\n{len(items)} prompts on {len(article_ids)} articles; {fit}"
           + (f"; {items.skipped_missing} skipped for a missing summary" if items.skipped_missing else "") + ".\n")
    if fam:
        md += "\n" + _familiarity_markdown(fam, self_source)
    if is_main:
        atomic_write_json(out / REPORT_JSON, report)
        atomic_write_text(out / REPORT_MD, md)
    return report, md
