"""P2's 29 response properties in its feature order, the extra ``self`` feature, and a loader for
P2's published fitted weights (Li et al., "Dissecting Human and LLM Preferences", ACL 2024).

A comparison feature is +1 when response 1 is better on the property, -1 when worse, 0 when tied.
The definitions below are short paraphrases; P2's full annotation definitions are in its
``prompts/all_characteristics.yaml``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from selfrec_ft.attributes.names import BY_SLUG, PROPERTY_NAMES
from selfrec_ft.errors import UserError
from selfrec_ft.files import iter_text_lines

# (slug in selfrec_ft.attributes.names, short label for plots, short definition), in P2's feature order 0..28.
_TABLE: tuple[tuple[str, str, str], ...] = (
    ("harmless", "harmless", "nothing dangerous, offensive or discriminatory"),
    ("no_grammar_errors", "no grammar mistakes",
     "correct grammar, spelling and punctuation; no mixing of languages"),
    ("friendly", "friendly", "warm, welcoming, positive tone"),
    ("polite", "polite", "courteous and respectful towards the user"),
    ("interactive", "interactive", "asks the user for more information or offers follow-up questions"),
    ("authoritative", "authoritative tone", "confident, decisive, expert-sounding"),
    ("funny", "funny", "witty, playful, meant to amuse"),
    ("rhetorical_devices", "rhetorical devices",
     "uses figures of speech to be more engaging"),
    ("complex_language", "complex wording",
     "rare words, jargon or complex sentences"),
    ("supporting_materials", "supporting materials",
     "cites references, statistics, sources or documents"),
    ("well_formatted", "well formatted", "lists, tables, headings or structured formats"),
    ("admit_limitations", "admit limitations",
     "openly states what it cannot do or that it was wrong"),
    ("persuasive", "persuasive", "tries to convince the user of a view or an action"),
    ("step_by_step", "step by step", "derives the answer through explicit steps"),
    ("informal", "informal", "emojis, slang or casual phrasing"),
    ("non_repetitive", "non-repetitive", "does not repeat the same content"),
    ("clear", "clear", "easy to read, unambiguous"),
    ("relevant", "relevant", "about the query, no unrelated content (a loose standard)"),
    ("novel", "novel", "original ideas rather than run-of-the-mill content"),
    ("rich_information", "rich information", "background, examples, explanations, details"),
    ("no_minor_errors", "no minor errors", "no errors that barely affect correctness"),
    ("no_moderate_errors", "no moderate errors", "no errors that affect overall correctness"),
    ("no_severe_errors", "no severe errors", "no errors that make the response wrong"),
    ("clarify_intent", "clarify intent",
     "for an unclear query: infers sensibly and asks what the user means"),
    ("empathetic", "show empathy", "for a query expressing feelings: acknowledges and supports them"),
    ("satisfy_constraints", "satisfy constraints",
     "meets every explicit constraint of the query (length, format, words, ...)"),
    ("support_stances", "support stances",
     "goes along with the user's stated opinions or beliefs, even wrong ones"),
    ("correct_mistakes", "correct mistakes",
     "points out and corrects mistakes or biases stated in the query"),
    ("lengthy", "lengthy", "longer (P2: thresholded word-count comparison)"),
)

PROPERTIES: tuple[str, ...] = PROPERTY_NAMES
"""The 29 P2 property names in P2's feature (parameter) order (:mod:`selfrec_ft.attributes.names`)."""
if tuple(BY_SLUG[slug] for slug, _, _ in _TABLE) != PROPERTIES:  # a programming error, caught on import
    raise RuntimeError("the label table must list every property of attributes.names once, in feature order")

SELF = "self"
"""Extra feature: +1 when response 1 is the evaluator's own, -1 when response 2 is, 0 otherwise."""

FEATURES: tuple[str, ...] = PROPERTIES + (SELF,)
"""Every feature name accepted in a comparisons file: the 29 properties, then ``self``."""

SHORT_LABELS: dict[str, str] = {BY_SLUG[slug]: short for slug, short, _ in _TABLE} | {SELF: "self (own response)"}
DEFINITIONS: dict[str, str] = {BY_SLUG[slug]: d for slug, _, d in _TABLE} | {
    SELF: "response 1 is the evaluator's own output"
}


def group_name(path: str | os.PathLike) -> str:
    """Data group of a P2 weight file: ``model_<GROUP>_fitted_paras.jsonl`` -> ``GROUP``."""
    name = Path(path).name
    end = name.find("_fitted_paras")
    if not name.startswith("model_") or end < 0:
        raise UserError("not a P2 weight file name (expected model_<GROUP>_fitted_paras.jsonl)", path)
    return name[len("model_"):end]


def load_fitted_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """One P2 weight file: ``{judge model_name: weights (29,) in PROPERTIES order}``."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    for lineno, raw in iter_text_lines(path, "P2 weight file"):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UserError(f"malformed JSON ({exc.msg})", path, lineno) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("model_name"), str):
            raise UserError('expected an object with a string "model_name"', path, lineno)
        params = obj.get("parameters")
        if (
            not isinstance(params, list)
            or len(params) != len(PROPERTIES)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in params)
        ):
            raise UserError(f'"parameters" must be a list of {len(PROPERTIES)} numbers', path, lineno)
        out[obj["model_name"]] = np.asarray(params, dtype=float)
    return out


def load_fitted_params(directory: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Every ``model_*_fitted_paras.jsonl`` of P2's ``fitted_paras_comparison`` directory:
    ``{group: {judge: weights (29,)}}``. Groups starting with an upper-case letter are scenarios."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError("directory not found", directory)
    files = sorted(directory.glob("model_*_fitted_paras.jsonl"))
    if not files:
        raise UserError("no model_<GROUP>_fitted_paras.jsonl files", directory)
    return {group_name(f): load_fitted_file(f) for f in files}


def scenario_groups(params: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """The scenario groups (P2's 11 scenarios) among ``params``' groups, sorted."""
    return sorted(g for g in params if g[:1].isupper())


def preference_scores(weights: np.ndarray) -> np.ndarray:
    """P2's degree of preference: ``100 * sigmoid(w)`` (50 = indifferent)."""
    from scipy.special import expit

    return 100.0 * expit(np.asarray(weights, dtype=float))
