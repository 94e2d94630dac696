"""Comparisons in memory: validate rows, label a comparisons file with a judge, fit and write.

* :func:`comparisons_from_rows`: the feature matrix and labels of comparison rows, each checked
  (with its file and line) as :func:`selfrec_ft.dissection.run.read_comparisons` checks a file's
  lines — no temporary file;
* :func:`label_comparisons_file`: fill in ``preferred`` for the lines of a comparisons file that lack
  it (``selfrec dissect --comparisons FILE --judge MODEL``), keeping the labelled rows in memory;
* :func:`fit_and_write`: P2's regression of in-memory comparisons into ``report.json``,
  ``report.md`` and the bar chart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from selfrec_ft.defaults import DEFAULT_PRESET
from selfrec_ft.dissection.fit import DEFAULT_METHOD, DEFAULT_PRIOR_SCALE
from selfrec_ft.dissection.judge import (
    TEMPLATE,
    TEXT_KEYS,
    TIE_TOLERANCE,
    PairJudgement,
    drop_reason,
    judge_and_release,
    judgement_fields,
    label_preference,
)
from selfrec_ft.dissection.run import (  # noqa: F401 (comparisons_from_rows re-exported)
    PLOT_NAME,
    Comparisons,
    comparisons_from_rows,
    dissect,
    plot_scores,
    report_markdown,
)
from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import atomic_write_json, atomic_write_text, iter_jsonl

COMPARISONS_FILE = "comparisons.jsonl"
DROPPED_FILE = "dropped.jsonl"
JUDGE_FILE = "judge.json"

def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def fit_and_write(comp: Comparisons, out_dir: str | os.PathLike, title: str, method: str = DEFAULT_METHOD,
                  prior_scale: float = DEFAULT_PRIOR_SCALE, **fit_kwargs) -> dict[str, Any]:
    """Fit ``comp`` and write ``report.json``, ``report.md`` and the chart into ``out_dir``."""
    if not prior_scale > 0:
        raise UserError(f"the prior scale must be positive, got {prior_scale}")
    report = dissect(comp, method=method, prior_scale=prior_scale, **fit_kwargs)
    out = Path(out_dir)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report, title))
    plot_scores(report, out / PLOT_NAME, title)
    return report


@dataclass
class Labelled:
    """What :func:`label_comparisons_file` did: the rows kept (labelled), the counts (``judge.json``)
    and the comparisons ready to fit."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def comparisons(self) -> Comparisons:
        return comparisons_from_rows(enumerate(self.rows, start=1))


def label_comparisons_file(comparisons: str | os.PathLike, scorer, out_dir: str | os.PathLike, *,
                           preset: str = DEFAULT_PRESET, template: str = TEMPLATE, progress: bool = True) -> Labelled:
    """Write ``OUT/comparisons.jsonl``: every line of ``comparisons``, those without ``preferred``
    labelled by the judge ``scorer`` (they must carry ``article``, ``response_1`` and ``response_2``)
    with ``judge_prob`` added. Ties and invalid pairs go to ``OUT/dropped.jsonl`` with a ``dropped``
    reason; the counts to ``OUT/judge.json``. Every line is checked before the model loads."""
    path = Path(comparisons)
    objs = list(iter_jsonl(path, required={"features": dict}))
    if not objs:
        raise UserError("no comparisons in the file", path)
    todo: list[int] = []  # positions in objs of the lines to judge
    for k, (lineno, obj) in enumerate(objs):
        if "preferred" in obj:
            continue
        for key in TEXT_KEYS:
            if key not in obj:
                raise UserError(f'missing field "{key}" (a line without "preferred" needs article, '
                                "response_1 and response_2 for the judge)", path, lineno)
            if not isinstance(obj[key], str):
                raise UserError(f'field "{key}" must be str, got {type(obj[key]).__name__}', path, lineno)
        todo.append(k)
    comparisons_from_rows(objs, path, require_preferred=False)  # features checked before any model runs

    judged: dict[int, PairJudgement] = {}
    if todo:
        js = judge_and_release(scorer, [objs[k][1] for k in todo], preset=preset, template=template,
                               progress=progress)
        judged = dict(zip(todo, js))
    kept, dropped = [], []
    for k, (lineno, obj) in enumerate(objs):
        if k not in judged:
            kept.append(obj)
            continue
        j = judged[k]
        row = {**obj, **judgement_fields(j), "line": lineno}
        reason = drop_reason(j.prob)
        if reason:
            dropped.append({**row, "dropped": reason})
        else:
            kept.append({**row, "preferred": label_preference(j.prob)})
    out = Path(out_dir)
    summary = {
        "comparisons": str(path), "judge": scorer.source if todo else None, "preset": preset, "template": template,
        "lines": len(objs), "labelled_in_file": len(objs) - len(todo), "judged": len(todo),
        "ties": sum(r["dropped"] == "tie" for r in dropped),
        "invalid": sum(r["dropped"] == "invalid" for r in dropped),
        "shortened": sum(j.shortened for j in judged.values()), "kept": len(kept),
        "tie_tolerance": TIE_TOLERANCE,
    }
    if not kept:
        raise UserError(f"every one of the {len(todo)} judged lines was a tie or invalid: nothing to fit", path)
    write_jsonl(out / COMPARISONS_FILE, kept)
    write_jsonl(out / DROPPED_FILE, dropped)
    atomic_write_json(out / JUDGE_FILE, summary)
    return Labelled(kept, summary)
