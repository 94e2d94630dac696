"""Perturbed texts: remove surface cues from the summaries a judge sees (``selfrec eval --perturb``).

Word-shuffled texts (Erlikhman et al. 2026) and surface perturbations (Mahbub & Feng 2025) separate
recognition from lexical or stylistic cues: a judge that still picks its own summary after its words
are shuffled does not read their order. Every perturbation applies to the *summaries* (never the
article) of every source the evaluation shows, so both summaries of a pair are perturbed alike:

* ``word-shuffle``: the whitespace-separated words in a random order;
* ``sentence-shuffle``: the sentences (split after ``.``, ``!``, ``?`` or at line breaks) in a
  random order;
* ``truncate-to-equal-length``: every summary of an article cut to the word count of that article's
  shortest summary among the evaluated sources (length cues gone);
* ``lowercase-strip-punct``: lower case, punctuation removed, whitespace collapsed.

Shuffles are seeded per (seed, article, source) with :class:`random.Random` over a SHA-256 digest,
so a summary's perturbation does not depend on which other articles or sources are evaluated.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Sequence

from selfrec_ft.data.corpus import Corpus
from selfrec_ft.defaults import PERTURBATIONS
from selfrec_ft.errors import UserError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_PUNCT = str.maketrans("", "", string.punctuation + "“”‘’–—…")


def _rng(seed: int, article_id: str, source: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{article_id}\0{source}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def shuffle_words(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def shuffle_sentences(text: str, rng: random.Random) -> str:
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip()) if p.strip()]
    rng.shuffle(parts)
    return " ".join(parts)


def lowercase_strip_punct(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def truncate_words(text: str, n_words: int) -> str:
    return " ".join(text.split()[:n_words])


def perturb_corpus(corpus: Corpus, kind: str, seed: int = 0, sources: Sequence[str] | None = None) -> Corpus:
    """A copy of ``corpus`` whose summaries of ``sources`` (default: all) are perturbed by ``kind``;
    articles and other sources unchanged, ``path`` kept (the origin)."""
    if kind not in PERTURBATIONS:
        raise UserError(f"unknown perturbation {kind!r}; use one of {', '.join(PERTURBATIONS)}")
    sources = list(corpus.sources() if sources is None else sources)
    out = Corpus(articles=list(corpus.articles), summaries={s: dict(v) for s, v in corpus.summaries.items()},
                 path=corpus.path)
    for article in corpus.articles:
        aid = article.id
        texts = {s: corpus.summary(aid, s) for s in sources if corpus.summary(aid, s) is not None}
        shortest = min((len(t.split()) for t in texts.values()), default=0)
        for src, text in texts.items():
            if kind == "word-shuffle":
                new = shuffle_words(text, _rng(seed, aid, src))
            elif kind == "sentence-shuffle":
                new = shuffle_sentences(text, _rng(seed, aid, src))
            elif kind == "truncate-to-equal-length":
                new = truncate_words(text, max(shortest, 1))
            else:
                new = lowercase_strip_punct(text)
            out.summaries[src][aid] = new
    return out
