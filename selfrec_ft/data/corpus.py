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
        hint = ""
        if not root.is_absolute():
            hint = f" (relative to the current directory {Path.cwd()}"
            if root.parent.name == "p1":
                hint += f"; P1's corpora: selfrec corpus import-p1 P1_CLONE --out {root.parent}"
            hint += ")"
        raise UserError("corpus directory not found" + hint, root)
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
        for column in (document_column, summary_column):
            if not isinstance(row[column], str):
                raise UserError(f'dataset row {i} (id "{aid}"): column {column} is '
                                f"{type(row[column]).__name__}, not text")
        articles.append(Article(aid, row[document_column]))
        refs[aid] = row[summary_column]
    return Corpus(articles=articles, summaries={source: refs})


SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")
"""Files ``save_to_disk`` writes at the top of a ``DatasetDict`` / ``Dataset`` directory."""
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_hf_dataset(name: str, config: str | None = None, split: str = "train") -> Any:
    """One split of a dataset: ``datasets.load_from_disk`` for a directory written by ``save_to_disk``,
    ``load_dataset(BUILDER, data_files=name)`` for a local .json/.jsonl/.parquet/.csv file, else
    ``datasets.load_dataset(name, config, split=split)`` (a hub id, needs internet, or a local
    directory of data files). A failure is one :class:`UserError` line."""
    import datasets

    path = Path(name).expanduser()
    if path.is_dir() and any((path / m).is_file() for m in SAVED_DATASET_MARKERS):
        if config:
            raise UserError("--config applies to hub datasets, not to a directory written by save_to_disk", path)
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise UserError(f'no split "{split}" in the saved dataset; it has: {", ".join(loaded)}', path)
            return loaded[split]
        saved = None if loaded.split is None else str(loaded.split)
        if saved is not None and saved != split:
            raise UserError(f'the saved dataset is split "{saved}", not "{split}"', path)
        return loaded
    try:
        if path.is_file() and path.suffix in DATA_FILE_BUILDERS:
            return datasets.load_dataset(DATA_FILE_BUILDERS[path.suffix], data_files=str(path), split=split)
        return datasets.load_dataset(name, config, split=split)
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load dataset {name!r}" + (f" (config {config!r})" if config else "")
                        + f", split {split!r}: {message}") from None


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Article ids in order from a file with one id per line, or from a corpus ``articles.jsonl``
    (or the corpus directory holding it). Blank lines are skipped; a repeated id is an error."""
    path = Path(path)
    if path.is_dir():
        path = path / ARTICLES_FILE
    if not path.is_file():
        raise UserError("id list not found", path)
    ids: list[str] = []
    first: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        head = fh.read(1)
    if head == "{":
        entries = [(lineno, str(obj["id"])) for lineno, obj in iter_jsonl(path, {"id": (str, int)})]
    else:
        with open(path, encoding="utf-8") as fh:
            entries = [(n, line.strip()) for n, line in enumerate(fh, start=1) if line.strip()]
    for lineno, aid in entries:
        if aid in first:
            raise UserError(f'duplicate id "{aid}" (first on line {first[aid]})', path, lineno)
        first[aid] = lineno
        ids.append(aid)
    if not ids:
        raise UserError("the id list is empty", path)
    return ids


def select_hf_rows(dataset: Any, id_column: str, ids: list[str] | None = None, n: int | None = None) -> Any:
    """The rows of ``dataset`` with ``ids`` in that order (a missing id is an error naming it), or its
    first ``n`` rows, or all of it."""
    if ids is not None and n is not None:
        raise UserError("give either ids or n, not both")
    if n is not None:
        if n < 1:
            raise UserError(f"n must be >= 1, got {n}")
        if n > len(dataset):
            raise UserError(f"asked for the first {n} rows but the split has {len(dataset)}")
        return dataset.select(range(n))
    if ids is None:
        return dataset
    if id_column not in dataset.column_names:
        raise UserError(f"dataset has no column {id_column}; it has {', '.join(dataset.column_names)}")
    index: dict[str, int] = {}
    repeated: set[str] = set()
    for i, value in enumerate(dataset[id_column]):
        key = str(value)
        if key in index:
            repeated.add(key)
        else:
            index[key] = i
    missing = [i for i in ids if i not in index]
    if missing:
        raise UserError(f"{len(missing)} of the {len(ids)} ids are not in the dataset's {id_column} column: "
                        + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    twice = [i for i in ids if i in repeated]
    if twice:
        raise UserError(f"{len(twice)} requested id(s) occur more than once in the dataset: "
                        + ", ".join(twice[:10]) + (" ..." if len(twice) > 10 else ""))
    return dataset.select([index[i] for i in ids])


def load_hf_corpus(name: str, config: str | None = None, split: str = "train", *,
                   ids: list[str] | None = None, n: int | None = None, **columns: str) -> Corpus:
    """:func:`load_hf_dataset`, then the rows :func:`select_hf_rows` keeps, converted with
    :func:`corpus_from_hf` (``columns``: ``document_column``, ``summary_column``, ``id_column``)."""
    dataset = load_hf_dataset(name, config, split)
    rows = select_hf_rows(dataset, columns.get("id_column", "id"), ids=ids, n=n)
    if len(rows) == 0:
        raise UserError(f"dataset {name!r}, split {split!r} has no rows")
    return corpus_from_hf(rows, **columns)


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


def same_corpus(a: Corpus, b: Corpus) -> bool:
    """Same articles in the same order and the same summaries for every (article, source)."""
    return [(x.id, x.text) for x in a.articles] == [(x.id, x.text) for x in b.articles] and a.summaries == b.summaries


def holds_corpus(path: str | os.PathLike, corpus: Corpus) -> bool:
    """``True`` when the directory ``path`` already holds exactly ``corpus``, ``False`` when it holds
    no corpus; a :class:`UserError` when it holds a different one (other articles, an edited summary,
    or sources added since, e.g. by ``selfrec generate``), which must not be overwritten."""
    root = Path(path)
    if not (root / ARTICLES_FILE).exists() and not (root / SUMMARIES_FILE).exists():
        return False
    if (root / ARTICLES_FILE).exists() and same_corpus(load_corpus(root), corpus):
        return True
    raise UserError("already holds a different corpus (other articles, summaries or sources); "
                    "nothing was overwritten: write to a new directory or remove this one", root)


def write_new_corpus(corpus: Corpus, path: str | os.PathLike) -> bool:
    """Write ``corpus`` to ``path`` (:func:`write_corpus`) unless it already holds exactly this corpus
    (:func:`holds_corpus`; a different corpus there is refused). ``True`` when written."""
    if holds_corpus(path, corpus):
        corpus.path = Path(path)
        return False
    write_corpus(corpus, path)
    return True


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
