"""The small number formatters every markdown table and console summary uses.

One copy, so that a mean, an interval or a percentage reads the same in report.md, shift.md,
comparison.md, eval_checkpoints.md and on the console. A missing or non-finite number is an en
dash; a value that rounds to zero never prints as ``-0.000``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

DASH = "–"


def num(x: float | None, spec: str = ".3f") -> str:
    """``x`` formatted with ``spec`` (e.g. ``".3f"``, ``"+.2f"``); ``–`` for None / NaN / inf."""
    if x is None or not math.isfinite(x):
        return DASH
    text = format(x, spec)
    if text.lstrip("+-").strip("0.") == "" and text[:1] == "-":  # -0.000 -> 0.000 (+0.000 with a "+" spec)
        text = format(0.0, spec)
    return text


def ci(bounds: Sequence[float] | None, spec: str = ".3f") -> str:
    """``[lo, hi]``, or ``–`` when there is no interval."""
    if not bounds:
        return DASH
    return f"[{num(bounds[0], spec)}, {num(bounds[1], spec)}]"


def estimate(block: Mapping[str, Any] | None, spec: str = ".3f", *, key: str = "mean",
             biased: str | None = None) -> str:
    """``mean [lo, hi]`` of a ``{"mean", "ci95", ...}`` block (``key`` picks another value such as
    ``delta``); ``biased`` is appended when the block is marked ``position_biased``."""
    if not block or block.get(key) is None:
        return DASH
    bounds = block.get("ci95")
    text = num(block[key], spec) + (f" {ci(bounds, spec)}" if bounds else "")
    return text + (biased if biased and block.get("position_biased") else "")


def pct(x: float | None) -> str:
    """A relative change as a signed percentage with one decimal, ``+12.5%``."""
    return DASH if x is None or not math.isfinite(x) else f"{100 * x:+.1f}%"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> list[str]:
    """The lines of a markdown table; ``align`` holds ``---`` / ``---:`` per column (default ``---``)."""
    marks = list(align) if align else ["---"] * len(header)
    return (["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])
