"""A quality reference per summary, for quality-aware self-preference (issue 23, control 4).

Two kinds:

* :func:`rouge_quality` (the default): ROUGE-L F1 of every summary against the reference source's
  summary of the same article (``human`` in P1's corpora and the synthetic ones), computed with the
  ``rouge-score`` package (Porter stemmer on). The reference source itself has no quality: its
  pairs are left out (it would score 1.0 against itself);
* :func:`file_quality`: gold scores (e.g. human ratings) from a JSONL file, one line per summary:
  ``{"article_id": ..., "source": ..., KEY: number}`` (``id`` is accepted for ``article_id``).

Both give a :class:`QualityReference`: ``scores[(article_id, source)] -> float`` (higher is better)
and a one-line ``description`` the report prints.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from selfrec_ft.data.corpus import Corpus
from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import iter_jsonl

DEFAULT_REFERENCE_SOURCE = "human"


@dataclass(frozen=True)
class QualityReference:
    """Quality of each summary (higher is better); ``excluded`` are sources without a quality (the
    reference source of ROUGE-L)."""

    scores: Mapping[tuple[str, str], float]
    description: str
    excluded: frozenset[str] = field(default_factory=frozenset)

    def of(self, article_id: str, source: str) -> float | None:
        if source in self.excluded:
            return None
        return self.scores.get((str(article_id), source))


def rouge_quality(corpus: Corpus, article_ids: Iterable[str], sources: Iterable[str],
                  reference: str = DEFAULT_REFERENCE_SOURCE) -> QualityReference:
    """ROUGE-L F1 of each source's summary against ``reference``'s on ``article_ids``
    (``rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)``)."""
    from rouge_score import rouge_scorer

    corpus.require_sources([reference])
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = {}
    sources = [s for s in dict.fromkeys(sources) if s != reference]
    for aid in article_ids:
        ref = corpus.summary(aid, reference)
        if ref is None or not ref.strip():
            continue
        for src in sources:
            text = corpus.summary(aid, src)
            if text is not None:
                scores[(str(aid), src)] = float(scorer.score(ref, text)["rougeL"].fmeasure)
    return QualityReference(scores, f"ROUGE-L F1 against the {reference!r} summary", frozenset({reference}))


def default_quality(corpus: Corpus, tasks, article_ids: Iterable[str], sources: Iterable[str]
                    ) -> QualityReference | None:
    """ROUGE-L against the ``human`` summaries when preference is scored and the corpus has them, else None."""
    if "pairwise-preference" not in tasks or DEFAULT_REFERENCE_SOURCE not in corpus.sources():
        return None
    return rouge_quality(corpus, article_ids, sources)


def file_quality(path: str | os.PathLike, key: str) -> QualityReference:
    """Gold scores from a JSONL file (see the module docstring); a missing or non-numeric ``key``, a
    line without ``article_id``/``id`` or ``source``, or a summary listed twice is a one-line error."""
    if not key:
        raise UserError("--quality-key names the score field of --quality-file")
    scores: dict[tuple[str, str], float] = {}
    for line, obj in iter_jsonl(path):
        aid = obj.get("article_id", obj.get("id"))
        src = obj.get("source")
        if not isinstance(aid, (str, int)) or isinstance(aid, bool) or not isinstance(src, str) or not src:
            raise UserError('each line needs "article_id" (or "id") and "source"', path, line)
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f'field "{key}" must be a finite number, got {value!r}', path, line)
        k = (str(aid), src)
        if k in scores:
            raise UserError(f"summary of article {aid} by {src} listed twice", path, line)
        scores[k] = float(value)
    if not scores:
        raise UserError("no quality scores in the file", path)
    return QualityReference(scores, f"gold scores {key!r} from {os.fspath(path)}")
