"""Corpus directories and Hugging Face datasets as ordered articles with summaries per source.

A corpus directory holds ``articles.jsonl`` (``{"id", "article"}``; file order matters: the first N
articles are training articles) and ``summaries.jsonl`` (``{"id", "source", "summary"}``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfrec_ft.errors import UserError
from selfrec_ft.files import ensure_dir
from selfrec_ft.jsonl import atomic_write_text, iter_jsonl

from selfrec_ft.defaults import ARTICLES_FILE, SUMMARIES_FILE  # noqa: F401


@dataclass(frozen=True)
class Article:
    id: str
    text: str


@dataclass
class Corpus:
    articles: list[Article]
    summaries: dict[str, dict[str, str]] = field(default_factory=dict)  # source -> id -> text
    path: Path | None = None

    def __post_init__(self) -> None:
        self._index = {a.id: i for i, a in enumerate(self.articles)}

    def sources(self) -> list[str]:
        return list(self.summaries)

    def article(self, article_id: str) -> Article:
        return self.articles[self._index[article_id]]

    def has_article(self, article_id: str) -> bool:
        return article_id in self._index

    def summary(self, article_id: str, source: str) -> str | None:
        return self.summaries.get(source, {}).get(article_id)

    def train_articles(self, n: int) -> list[Article]:
        """The first ``n`` articles in file order: the only ones a model may be trained on."""
        return self.articles[:n]

    def heldout_articles(self, n: int, limit: int | None = None) -> list[Article]:
        """Articles after the first ``n`` (never trained on), at most ``limit`` of them."""
        rest = self.articles[n:]
        return rest if limit is None else rest[:limit]

    def add_summaries(self, source: str, by_id: dict[str, str]) -> None:
        self.summaries.setdefault(source, {}).update(by_id)

    def require_sources(self, sources: list[str]) -> None:
        missing = [s for s in sources if s not in self.summaries]
        if missing:
            where = self.path / SUMMARIES_FILE if self.path else None
            raise UserError(
                f"unknown source(s) {', '.join(missing)}; the corpus has: {', '.join(self.sources()) or 'none'}",
                where,
            )


def load_corpus(path: str | os.PathLike, check_orphans: bool = True) -> Corpus:
    """Load a corpus directory, raising :class:`UserError` (file:line) for any malformed line."""
    root = Path(path)
    if not root.is_dir():
        raise UserError("corpus directory not found", root)
    art_path = root / ARTICLES_FILE
    articles: list[Article] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(art_path, {"id": (str, int), "article": str}):
        aid = str(obj["id"])
        if aid in seen:
            raise UserError(f'duplicate article id "{aid}" (first on line {seen[aid]})', art_path, lineno)
        seen[aid] = lineno
        articles.append(Article(aid, obj["article"]))
    corpus = Corpus(articles=articles, path=root)
    sum_path = root / SUMMARIES_FILE
    if not sum_path.exists():
        return corpus
    first_line: dict[tuple[str, str], int] = {}
    for lineno, obj in iter_jsonl(sum_path, {"id": (str, int), "source": str, "summary": str}):
        aid, src = str(obj["id"]), obj["source"]
        if check_orphans and aid not in seen:
            raise UserError(f'summary for unknown article id "{aid}"', sum_path, lineno)
        if (aid, src) in first_line:
            raise UserError(
                f'duplicate summary for id "{aid}" and source "{src}" (first on line {first_line[aid, src]})',
                sum_path,
                lineno,
            )
        first_line[aid, src] = lineno
        corpus.summaries.setdefault(src, {})[aid] = obj["summary"]
    return corpus


def corpus_from_hf(
    dataset: Any,
    document_column: str = "document",
    summary_column: str = "summary",
    id_column: str = "id",
    source: str = "human",
) -> Corpus:
    """A corpus from a ``datasets.Dataset`` (XSUM: document/summary/id; CNN/DailyMail:
    article/highlights/id). The reference summary becomes source ``source`` (default ``human``)."""
    missing = [c for c in (document_column, summary_column, id_column) if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"dataset has no column(s) {', '.join(missing)}; it has {', '.join(dataset.column_names)}"
        )
    articles, refs, seen = [], {}, set()
    for i, row in enumerate(dataset):
        aid = str(row[id_column])
        if aid in seen:
            raise UserError(f'duplicate id "{aid}" in dataset row {i}')
        seen.add(aid)
        articles.append(Article(aid, row[document_column]))
        refs[aid] = row[summary_column]
    return Corpus(articles=articles, summaries={source: refs})


def load_hf_corpus(name: str, config: str | None = None, split: str = "train", **columns: str) -> Corpus:
    """Load a hub dataset (needs internet) and convert it with :func:`corpus_from_hf`."""
    import datasets

    return corpus_from_hf(datasets.load_dataset(name, config, split=split), **columns)


def write_corpus(corpus: Corpus, path: str | os.PathLike) -> Path:
    import json

    root = ensure_dir(path)  # a file in the way or no permission: one line naming the path
    atomic_write_text(
        root / ARTICLES_FILE,
        "".join(json.dumps({"id": a.id, "article": a.text}, ensure_ascii=False) + "\n" for a in corpus.articles),
    )
    lines = []
    for a in corpus.articles:
        for src in corpus.sources():
            text = corpus.summary(a.id, src)
            if text is not None:
                lines.append(json.dumps({"id": a.id, "source": src, "summary": text}, ensure_ascii=False) + "\n")
    atomic_write_text(root / SUMMARIES_FILE, "".join(lines))
    corpus.path = root
    return root


@dataclass
class CorpusCheck:
    n_articles: int
    summary_counts: dict[str, int]
    missing: dict[str, list[str]]  # source -> article ids without a summary
    empty_articles: list[str]
    empty_summaries: dict[str, list[str]]

    @property
    def usable(self) -> bool:
        return self.n_articles > 0 and not self.empty_articles

    def format(self) -> str:
        out = [f"articles: {self.n_articles}"]
        if self.empty_articles:
            out.append(f"empty articles: {len(self.empty_articles)} ({', '.join(self.empty_articles[:5])})")
        out.append("summaries per source:")
        for src, n in self.summary_counts.items():
            extra = []
            if self.missing[src]:
                extra.append(f"missing {len(self.missing[src])}: {', '.join(self.missing[src][:5])}"
                             + (" ..." if len(self.missing[src]) > 5 else ""))
            if self.empty_summaries[src]:
                extra.append(f"empty {len(self.empty_summaries[src])}")
            out.append(f"  {src}: {n}" + (f" ({'; '.join(extra)})" if extra else ""))
        total_missing = sum(len(v) for v in self.missing.values())
        out.append(f"missing (article, source) combinations: {total_missing}")
        out.append("usable: " + ("yes" if self.usable else "no"))
        return "\n".join(out)


def check_corpus(corpus: Corpus) -> CorpusCheck:
    ids = [a.id for a in corpus.articles]
    counts = Counter({src: len(v) for src, v in corpus.summaries.items()})
    return CorpusCheck(
        n_articles=len(ids),
        summary_counts=dict(counts),
        missing={src: [i for i in ids if i not in by_id] for src, by_id in corpus.summaries.items()},
        empty_articles=[a.id for a in corpus.articles if not a.text.strip()],
        empty_summaries={src: [i for i, t in by_id.items() if not t.strip()] for src, by_id in corpus.summaries.items()},
    )
