"""P1's released result files -> scoring rows (Panickssery et al. 2024), and the field checks every
row reader shares.

P1's per-example Llama-2 result files are JSON lines or one JSON list; the kind of each object is
detected from its fields (the formats and their reading rules: :mod:`selfrec_ft.scoring.report`'s
docstring, which is where the rows end up). :func:`read_p1_file` reads one file; the report
(``selfrec report --format p1``) and the P1 import (:mod:`selfrec_ft.data.p1_import`, which checks
every file it stages) both read through it. It lives in ``data/`` so that importing P1's data never
depends on the reporting layer; it imports nothing from :mod:`selfrec_ft.scoring`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from selfrec_ft.defaults import INDIVIDUAL_TASKS
from selfrec_ft.errors import UserError
from selfrec_ft.files import read_text
from selfrec_ft.jsonl import iter_jsonl
from selfrec_ft.probabilities import PROB_TOLERANCE, probs_problem

P1_SOURCE_NAMES = {"llama": "llama2-7b-chat"}
P1_EVALUATOR = "llama"
P1_DOMAINS = ("xsum", "cnn")
P1_PAIRWISE_FIELDS = {
    ("pairwise-recognition", "forward"): "forward_detection_output",
    ("pairwise-recognition", "backward"): "backward_detection_output",
    ("pairwise-preference", "forward"): "forward_comparison_output",
    ("pairwise-preference", "backward"): "backward_comparison_output",
}
SCORE_OPTIONS = ("1", "2", "3", "4", "5")
P1_FINE_TUNED = re.compile(r"^(?P<dataset>xsum|cnn)_(?P<variant>.+)_ft_(?P<base>[a-z0-9]+)$")
"""A fine-tuned evaluator in P1's individual files: ``{dataset}_{variant}_ft_{base model}``."""
P1_ARGMAX_ONLY = ("forward_detection", "backward_detection", "forward_comparison", "backward_comparison")
P1_NO_PROBS_MESSAGE = (
    "this P1 pairwise file holds no per-order option probabilities (*_detection_output, "
    "*_comparison_output): P1 released only the argmax answers and the stored detection_score / "
    "self_preference scalars for GPT-3.5 and GPT-4, and those scalars are not comparable across "
    "files (PROTOCOL.md §3), so recognition and preference cannot be recomputed from it")


def _iter_objects(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line, object)`` from a JSON-lines file or a file holding one JSON list."""
    if not path.is_file():
        raise UserError("file not found" if not path.exists() else "not a file", path)
    text = read_text(path)
    if not text.lstrip().startswith("["):
        for lineno, obj in iter_jsonl(path):
            yield lineno, obj
        return
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1

    def skip(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    counted = [0, 1]  # (position, its line): positions only grow, so each newline is counted once

    def line_of(p: int) -> int:
        if p < counted[0]:
            return text.count("\n", 0, p) + 1
        counted[:] = [p, counted[1] + text.count("\n", counted[0], p)]
        return counted[1]

    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise UserError(f"malformed JSON in the list item starting here ({exc.msg} at line "
                            f"{exc.lineno} column {exc.colno})", path, line_of(pos)) from None
        yield line_of(pos), obj
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if text[pos + 1:].strip():
                raise UserError("unexpected data after the JSON list", path, line_of(pos + 1))
            return
        raise UserError("malformed JSON list (expected ',' or ']')", path, line_of(pos))


def option_probs(obj: Any, options: Sequence[str] | None, what: str, path: Path, line: int,
           strict: bool = False) -> dict[str, float]:
    """Validate an option-probability object: exactly ``options`` (any keys when None, in the
    file's order), numbers (null means NaN). ``strict`` (P1 files): a probability outside [0, 1] or
    a sum above 1 is an error (see the module docstring); otherwise such a row is left to the
    metrics, which count it as invalid."""
    if not isinstance(obj, dict):
        raise UserError(f'"{what}" must be an object of option probabilities', path, line)
    if options is not None and set(obj) != set(options):
        raise UserError(f'"{what}" must have options {list(options)}, got {sorted(obj)}', path, line)
    out = {}
    for o in (options if options is not None else list(obj)):
        p = obj[o]
        if p is None:
            p = math.nan
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise UserError(f'"{what}"["{o}"] must be a number, got {type(p).__name__}', path, line)
        out[o] = float(p)
    if strict:
        problem = probs_problem(out)
        if problem in ("negative probability", "probability above 1", "probabilities sum above 1"):
            raise UserError(f'"{what}": {problem} ({", ".join(f"{o}: {p:g}" for o, p in out.items())}): '
                            "P1's files hold softmax probabilities; this is not one", path, line)
    return out


def str_field(obj: Mapping, field: str, path: Path, line: int) -> str:
    v = obj.get(field)
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise UserError(f'missing or invalid field "{field}" (expected a string)', path, line)
    return str(v)


def p1_evaluator(model: str) -> tuple[str, str | None]:
    """``(self source, fine-tuned variant or None)`` of an individual file's ``model`` field:
    ``xsum_500_ft_llama`` -> ``("llama2-7b-chat", "xsum_500_ft_llama")``, ``gpt4`` -> ``("gpt4", None)``."""
    m = P1_FINE_TUNED.match(model)
    base = m.group("base") if m else model
    return P1_SOURCE_NAMES.get(base, base), (model if m else None)


def _p1_rows(obj: Mapping, path: Path, line: int, domain: str | None) -> list[dict[str, Any]]:
    """Convert one P1 object into scoring rows (see the module docstring)."""
    article_id = str_field(obj, "key", path, line)
    evaluator = str(obj.get("model", P1_EVALUATOR)) if "target_model" in obj else P1_EVALUATOR
    self_source, variant = p1_evaluator(evaluator)
    base = {"article_id": article_id, "self_source": self_source, "_file": str(path), "_line": line}
    if variant is not None:
        base["p1_evaluator"] = variant
    if domain is not None:
        base["domain"] = domain
    if "target_model" not in obj and not any(f in obj for f in P1_PAIRWISE_FIELDS.values()) and any(
            f in obj for f in P1_ARGMAX_ONLY + ("detection_score", "self_preference")):
        raise UserError(P1_NO_PROBS_MESSAGE, path, line)
    if any(f in obj for f in P1_PAIRWISE_FIELDS.values()):
        other = str_field(obj, "model", path, line)
        rows = []
        for (task, order), field in P1_PAIRWISE_FIELDS.items():
            if field not in obj:
                continue
            probs = option_probs(obj[field], ("1", "2"), field, path, line, strict=True)
            rows.append({**base, "task": task, "other_source": P1_SOURCE_NAMES.get(other, other),
                         "order": order, "self_option": "1" if order == "forward" else "2",
                         "probs": probs, "option_mass": sum(probs.values())})
        return rows
    target = str_field(obj, "target_model", path, line)
    base["target_source"] = P1_SOURCE_NAMES.get(target, target)
    if "scores" in obj:
        probs = option_probs(obj["scores"], SCORE_OPTIONS, "scores", path, line, strict=True)
        return [{**base, "task": "individual-score", "probs": probs,
                 "option_mass": sum(probs.values())}]
    if "recognition_score" in obj:
        v = obj["recognition_score"]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError('"recognition_score" must be a number', path, line)
        if not 0 <= v <= 1 + PROB_TOLERANCE:
            raise UserError(f'"recognition_score" must be a probability in [0, 1], got {v:g}', path, line)
        return [{**base, "task": "individual-recognition", "probs": None, "value": float(v),
                 "value_origin": "p1:recognition_score"}]
    raise UserError("unrecognised P1 row: expected *_detection_output/*_comparison_output, "
                    "scores or recognition_score fields", path, line)


def read_p1_file(path: str | os.PathLike, domain: str | None = None, skip_first: int = 0) -> list[dict[str, Any]]:
    """Scoring rows from one of P1's released result files (JSON lines or a JSON list).

    ``domain`` defaults to the parent directory's name when it is one of P1's datasets.
    ``skip_first=N`` leaves out the rows of the first N articles in the file's order (the order in
    which article keys first appear). An individual-setting file none of whose rows shows the
    evaluator's own summary is an error (every ratio would be empty).
    """
    path = Path(path)
    if skip_first < 0:
        raise UserError(f"skip_first must be >= 0, got {skip_first}")
    if domain is None and path.parent.name in P1_DOMAINS:
        domain = path.parent.name
    rows = []
    for line, obj in _iter_objects(path):
        if not isinstance(obj, dict):
            raise UserError("expected a JSON object", path, line)
        rows.extend(_p1_rows(obj, path, line, domain))
    if skip_first:
        order = list(dict.fromkeys(r["article_id"] for r in rows))
        if skip_first >= len(order):
            raise UserError(f"--skip-first {skip_first} leaves no article (the file has {len(order)})", path)
        skipped = set(order[:skip_first])
        rows = [r for r in rows if r["article_id"] not in skipped]
    individual = [r for r in rows if r["task"] in INDIVIDUAL_TASKS]
    if individual and not any(r["target_source"] == r["self_source"] for r in individual):
        raise UserError(f"no row shows the evaluator's own summary (self source "
                        f"{individual[0]['self_source']!r}, from model {individual[0].get('p1_evaluator', individual[0]['self_source'])!r}): "
                        "every ratio would be empty", path)
    return rows
