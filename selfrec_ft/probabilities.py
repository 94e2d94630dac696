"""When a row's option probabilities are probabilities: the one check, below scoring and data import.

:mod:`selfrec_ft.scoring.metrics` counts a row this check rejects as invalid; the P1 file reader
(:mod:`selfrec_ft.data.p1_results`) refuses such a file. Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

PROB_TOLERANCE = 1e-6
"""Rounding allowed above 1 for a probability and for the sum of a row's option probabilities."""


def as_float(x: Any) -> float:
    """``x`` as a float when it is a number (not a bool), else NaN."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    return float(x)


def probs_problem(probs: Mapping[str, Any]) -> str | None:
    """Why raw option probabilities cannot be used, or None: ``"no options"``, ``"non-finite
    probability"``, ``"negative probability"``, ``"probability above 1"``, ``"probabilities sum
    above 1"`` (the last two up to :data:`PROB_TOLERANCE`) or ``"zero option mass"``."""
    raw = [as_float(p) for p in probs.values()]
    if not raw:
        return "no options"
    if any(not math.isfinite(p) for p in raw):
        return "non-finite probability"
    if any(p < 0 for p in raw):
        return "negative probability"
    if any(p > 1 + PROB_TOLERANCE for p in raw):
        return "probability above 1"
    mass = sum(raw)
    if mass > 1 + PROB_TOLERANCE:
        return "probabilities sum above 1"
    if not mass > 0:
        return "zero option mass"
    return None
