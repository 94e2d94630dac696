"""Keep a fine-tuned evaluator's training articles out of its evaluation.

A model directory written by the SFT or DPO recipe (or a ``checkpoint-N`` inside one) carries a
``training_manifest.json`` with the ids of the articles it was trained on and the sha256 of the
corpus files it read. :func:`resolve_heldout` turns that into the evaluation's ``skip_first``:

* no ``--skip-first`` given and the corpus's ``articles.jsonl`` is the file the model trained on
  (same sha256): skip every article up to the last training article (``n_articles``);
* whatever ``skip_first`` is used, an article the model trained on among those to be scored is an
  error unless the caller allows it (``--allow-train-articles``): a memorised article inflates
  recognition.

A model without a manifest (a base model, a hub id) is evaluated as asked (``skip_first`` default 0).
Torch-free: reads JSON and hashes files only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from selfrec_ft.defaults import ARTICLES_FILE
from selfrec_ft.errors import UserError
from selfrec_ft.prompts.protocol import find_manifest, read_manifest_file  # noqa: F401  (find_manifest re-exported)


@dataclass(frozen=True)
class Heldout:
    """The ``skip_first`` to evaluate with and one line saying where it came from (None: as given)."""

    skip_first: int
    note: str | None = None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_heldout(model: str | os.PathLike, corpus_dir: str | os.PathLike, article_ids: list[str],
                    skip_first: int | None, allow_train_articles: bool = False,
                    limit: int | None = None) -> Heldout:
    """See the module docstring. ``article_ids`` are the corpus's ids in file order."""
    manifest_path = find_manifest(model)
    if manifest_path is None:
        return Heldout(0 if skip_first is None else skip_first)
    manifest = read_manifest_file(manifest_path)
    trained = {str(a) for a in manifest.get("train_article_ids") or []}
    note = None
    if skip_first is None:
        skip_first = 0
        articles = Path(corpus_dir) / ARTICLES_FILE
        same_corpus = articles.is_file() and _sha256(articles) in set((manifest.get("corpus_files") or {}).values())
        positions = [i for i, aid in enumerate(article_ids) if aid in trained]
        if same_corpus and positions:
            skip_first = max(positions) + 1
            note = (f"--skip-first {skip_first}: the model's training manifest ({manifest_path}) says it trained "
                    f"on the first {skip_first} articles of this corpus")
    heldout = article_ids[skip_first:]
    if limit is not None:
        heldout = heldout[:limit]
    seen = [aid for aid in heldout if aid in trained]
    if seen and not allow_train_articles:
        raise UserError(
            f"{len(seen)} of the {len(heldout)} articles to score (e.g. {seen[0]!r}) are training articles of "
            f"this model ({manifest_path}); raise --skip-first past them or pass --allow-train-articles", corpus_dir)
    if seen:
        note = f"scoring {len(seen)} training articles of this model (--allow-train-articles)"
    return Heldout(skip_first, note)
