"""Reports from scoring rows: loading ``examples.jsonl`` or P1's released files, markdown tables.

P1's files are read by :func:`selfrec_ft.data.p1_results.read_p1_file` (in ``data/``, below this
module); the rules it applies are described here.

Two input formats:

* ``selfrec``: the toolkit's ``examples.jsonl`` rows (docs/ARCHITECTURE.md, "Scoring rows").
* ``p1``: the per-example Llama-2 result files released with Panickssery et al. 2024
  (``shared/data/selfrec/paper_raw/``), as JSON lines or as the original JSON list. The kind of
  each object is detected from its fields:

  * pairwise (``*_detection_output`` / ``*_comparison_output``): ``model`` is the **other** source,
    ``forward_*`` shows the evaluator's own summary in position 1; the raw {"1","2"} probabilities
    become four rows (recognition/preference × forward/backward);
  * individual score (``scores``): the raw P of "1".."5";
  * individual recognition (``recognition_score``): only a scalar was released, so it is used as
    v directly (``probs`` null, ``value_origin`` = ``p1:recognition_score``); its normalisation is
    undocumented upstream and the report says so.

  In the individual files ``model`` names the evaluator. A fine-tuned evaluator is named
  ``{ds}_{variant}_ft_{base}`` (``xsum_500_ft_llama``, ``cnn_length_ft_gpt35``): its own summaries
  are those of its base model, so it is read with self source ``llama`` (renamed, see below) or
  ``gpt35``, and the report notes the variant. Those files score every article, the fine-tuned
  model's training articles included: ``skip_first=N`` leaves out the first N articles in the
  file's own order (P1's article order; P1 trained on the first 2, 10 or 500). P1's
  ``ground_truth`` field is never read (it is 0 for every row of the fine-tuned files).

  P1's files hold softmax probabilities (every one of the six released files: each p in [0, 1],
  Σp ≤ 0.99999): a probability outside [0, 1], option probabilities summing above 1, or a
  ``recognition_score`` outside [0, 1] is an **error** at its file and line — such a file is not P1's
  probabilities (logits? percentages?), and every number computed from it would be off. In the
  ``selfrec`` format the same rows are **invalid rows**, counted and left out like rows without
  option mass (the rule of :mod:`selfrec_ft.scoring.metrics`, which the training hook and sweeps
  apply too), and the report says how many there were.

  The stored scalars ``detection_score``, ``self_preference`` and ``score`` are never read: the
  authors computed them inconsistently (PROTOCOL.md §3). P1's pairwise GPT-3.5/GPT-4 files hold
  only argmax answers and those scalars, no per-order probabilities, so they are refused with one
  line saying so. P1's evaluator ``llama`` is renamed ``llama2-7b-chat`` to match the shared corpus;
  the domain is the parent directory's name when it is ``xsum`` or ``cnn``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfrec_ft.data.p1_results import option_probs, read_p1_file, str_field
from selfrec_ft.defaults import WORSE_QUESTION_TASK
from selfrec_ft.errors import UserError
from selfrec_ft.files import read_text
from selfrec_ft.scoring.controls_preference import add_preference_controls, render_controls
from selfrec_ft.jsonl import iter_jsonl
from selfrec_ft.scoring.metrics import (
    INDIVIDUAL_TASKS,
    ORDERS,
    PAIRWISE_TASKS,
    compute_report,
)

from selfrec_ft.defaults import REPORT_FORMATS as FORMATS  # noqa: E402
MIN_CLUSTERS_CI_TEXT = "< 5 articles"

# ----------------------------------------------------------------------------- reading


_P1_HINT = {"forward_detection_output", "scores", "recognition_score", "key"}


def read_selfrec_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Validated scoring rows from an ``examples.jsonl`` (familiarity rows are kept)."""
    path = Path(path)
    rows = []
    for line, obj in iter_jsonl(path):
        task = obj.get("task")
        if task is None and _P1_HINT & set(obj):
            raise UserError('missing field "task" (this looks like a P1 file: use --format p1)',
                            path, line)
        if not isinstance(task, str):
            raise UserError('missing or invalid field "task"', path, line)
        row = dict(obj, _file=str(path), _line=line)
        row["article_id"] = str_field(obj, "article_id", path, line)
        str_field(obj, "self_source", path, line)
        if task in PAIRWISE_TASKS.values() or task == WORSE_QUESTION_TASK:
            str_field(obj, "other_source", path, line)
            if obj.get("order") not in ORDERS:
                raise UserError(f'field "order" must be one of {list(ORDERS)}', path, line)
            row["self_option"] = str_field(obj, "self_option", path, line)
            row["probs"] = option_probs(obj.get("probs"), None, "probs", path, line)
            if len(row["probs"]) != 2:
                raise UserError(f'"probs" of a pairwise row must have two options, got {list(row["probs"])}',
                                path, line)
            if row["self_option"] not in row["probs"]:
                raise UserError(f'"self_option" {row["self_option"]!r} is not an option', path, line)
        elif task in INDIVIDUAL_TASKS.values():
            str_field(obj, "target_source", path, line)
            options = ("Yes", "No")
            if obj.get("probs") is None and "value" in obj:
                v = obj["value"]
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise UserError('"value" must be a number', path, line)
            elif task == "individual-score":
                row["probs"] = option_probs(obj.get("probs"), None, "probs", path, line)
                if len(row["probs"]) < 2 or not all(o.strip().isdigit() for o in row["probs"]):
                    raise UserError(f'"probs" of an individual-score row must have integer ratings as options, '
                                    f'got {list(row["probs"])}', path, line)
            else:
                row["probs"] = option_probs(obj.get("probs"), options, "probs", path, line)
        elif task == "familiarity":
            str_field(obj, "target_source", path, line)
            v = obj.get("mean_logprob")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError('field "mean_logprob" must be a number', path, line)
        else:
            raise UserError(f'unknown task "{task}"', path, line)
        rows.append(row)
    return rows


def _row_key(r: Mapping[str, Any]) -> tuple:
    return (r.get("domain"), r["task"], r.get("self_source"), r["article_id"],
            r.get("other_source", r.get("target_source")), r.get("order"))


def load_rows(paths: Sequence[str | os.PathLike], fmt: str = "selfrec", skip_first: int = 0) -> list[dict[str, Any]]:
    """Rows from several files in ``fmt`` (``selfrec`` or ``p1``); a duplicate row is an error.

    ``skip_first`` (P1 files only) leaves out each file's first N articles in the file's order.
    Each row keeps ``_file``/``_line`` (where it was read) for error messages.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    if not paths:
        raise UserError("no input files")
    if skip_first and fmt != "p1":
        raise UserError("--skip-first applies to --format p1 files (an examples.jsonl holds only the "
                        "articles its evaluation chose)")
    rows, seen = [], {}
    for path in paths:
        for r in (read_selfrec_file(path) if fmt == "selfrec" else read_p1_file(path, skip_first=skip_first)):
            key = _row_key(r)
            if key in seen:
                raise UserError(f"duplicate row (also at {seen[key]}): task {r['task']}, article "
                                f"{r['article_id']}, source {key[4]}" + (f", {key[5]}" if key[5] else ""),
                                r["_file"], r["_line"])
            seen[key] = f"{r['_file']}:{r['_line']}"
            rows.append(r)
    return rows


def report_paths(paths: Sequence[str | os.PathLike], fmt: str = "selfrec", seed: int = 0,
                 n_resamples: int = 2000, skip_first: int = 0) -> dict[str, Any]:
    """:func:`compute_report` of the rows in ``paths``, with the inputs recorded in ``meta``."""
    rows = load_rows(paths, fmt, skip_first=skip_first)
    report = add_preference_controls(compute_report(rows, seed=seed, n_resamples=n_resamples), rows, seed, n_resamples)
    report["meta"]["inputs"] = [os.fspath(p) for p in paths]
    report["meta"]["format"] = fmt
    if fmt == "p1":
        report["meta"]["skip_first"] = skip_first
        variants = sorted({r["p1_evaluator"] for r in rows if "p1_evaluator" in r})
        if variants:
            report["meta"]["p1_evaluators"] = variants
            selfs = sorted({r["self_source"] for r in rows if "p1_evaluator" in r})
            report["notes"].append(
                f"evaluator {', '.join(variants)}: fine-tuned from {', '.join(selfs)}, read with the base "
                f"model's summaries as its own (self source {', '.join(selfs)})"
                + (f"; the first {skip_first} articles of each file (its training articles) left out."
                   if skip_first else "; every article of the file is scored, its training articles "
                   "included: use --skip-first N to leave out the first N."))
    if not report.get("pairwise") and not report.get("individual"):
        raise UserError("no pairwise or individual scoring rows in the input", os.fspath(paths[0]))
    return report


# ----------------------------------------------------------------------------- markdown


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(ci: Sequence[float] | None, note: str | None = None) -> str:
    if ci:
        return f"[{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"– ({MIN_CLUSTERS_CI_TEXT})" if note else "–"


def _ci_of(block: Mapping[str, Any], key: str = "ci95") -> str:
    """A block's interval cell; "– (< 5 articles)" when it was left out for too few articles."""
    return _ci(block.get(key), block.get("ci_note"))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _render_body(report: Mapping[str, Any], level: int) -> list[str]:
    h = "#" * level
    lines: list[str] = []
    for note in report.get("notes", []):
        lines.append(f"> **Note:** {note}")
    if report.get("notes"):
        lines.append("")
    pw = report.get("pairwise")
    if pw:
        tasks = [t for t in PAIRWISE_TASKS if t in pw]
        lines += [f"{h} Pairwise", "",
                  "Score = ½[p̂_fwd(self) + p̂_bwd(self)], mean over pairs; 0.5 is chance. "
                  "95% CI: bootstrap over articles.", ""]
        lines += _table(
            ["task", "mean", "95% CI", "mean (raw p)", "accuracy", "n", "invalid", "option mass"],
            [[t, _f(pw[t]["mean"]), _ci_of(pw[t]), _f(pw[t]["mean_raw"]), _f(pw[t]["accuracy"]),
              _f(pw[t]["n"]), _f(pw[t]["invalid"]), _f(pw[t]["mean_option_mass"])] for t in tasks])
        lines += ["", f"{h}# Per other source", ""]
        lines += _table(
            ["task", "other source", "mean", "95% CI", "mean (raw p)", "accuracy", "n", "invalid"],
            [[t, src, _f(b["mean"]), _ci_of(b), _f(b["mean_raw"]), _f(b["accuracy"]),
              _f(b["n"]), _f(b["invalid"])]
             for t in tasks for src, b in pw[t]["by_source"].items()])
        lines += ["", f"{h}# Position bias (argmax answers of the two orders)", ""]
        lines += _table(
            ["task", "consistent self", "consistent other", "always 1", "always 2", "flagged"],
            [[t, *(_f(pw[t]["position"][k]) for k in
                   ("consistent_self", "consistent_other", "always_1", "always_2")),
              _f(pw[t]["position_biased"])] for t in tasks])
        if "kendall_tau" in pw:
            lines += ["", f"Kendall τ between per-pair recognition and preference: "
                          f"{_f(pw['kendall_tau'])} "
                          f"{_ci(pw.get('kendall_tau_ci95'), pw.get('kendall_tau_ci_note'))} "
                          f"(n = {pw.get('kendall_tau_n', '–')} pairs from "
                          f"{pw.get('kendall_tau_n_articles', '–')} articles; 95% CI: bootstrap over "
                          "articles)"]
        lines.append("")
    lines += render_controls(report, h)
    ind = report.get("individual")
    if ind:
        lines += [f"{h} Individual", "",
                  "ratio = v(self) / (v(self) + v(target)), mean over articles; 0.5 is chance. "
                  "v = p̂(Yes) for recognition, expected 1–5 rating for score.", ""]
        body = []
        for t in [t for t in INDIVIDUAL_TASKS if t in ind]:
            s = ind[t]
            for src, b in s["by_source"].items():
                body.append([t, src, _f(b["ratio"]), _ci_of(b), _f(b["n"]), _f(b["invalid"]),
                             _f(s.get("auroc", {}).get(src)) if t == "recognition" else "–"])
            p = s["pooled"]
            body.append([t, "**all others**", _f(p["ratio"]), _ci_of(p), _f(p["n"]),
                         _f(s["invalid"]), _f(s.get("auroc_pooled")) if t == "recognition" else "–"])
        lines += _table(["task", "target source", "ratio", "95% CI", "n", "invalid", "AUROC"], body)
        lines.append("")
    for dom, sub in report.get("by_domain", {}).items():
        lines += [f"{h} Domain: {dom}", ""] + _render_body(sub, level + 1)
    return lines


def render_markdown(report: Mapping[str, Any], title: str = "Self-recognition report") -> str:
    """Readable markdown tables of a :func:`compute_report` dict."""
    meta = report.get("meta", {})
    lines = [f"# {title}", ""]
    if meta:
        bits = [f"{meta.get('n_rows', 0)} rows", f"evaluator (self): {', '.join(meta.get('self_sources', []))}"]
        if meta.get("domains"):
            bits.append(f"domains: {', '.join(meta['domains'])}")
        bits.append(f"bootstrap: {meta.get('n_resamples')} resamples, seed {meta.get('seed')}")
        lines += ["; ".join(bits), ""]
    lines += _render_body(report, 2)
    return "\n".join(lines).rstrip() + "\n"
