"""P2's 29 property names, the one place they are written, with the toolkit's short slugs.

The names are the keys of P2's ``prompts/all_characteristics.yaml`` in P2's feature order (the
order of its fitted weights). :mod:`selfrec_ft.attributes.registry` (definitions, methods),
:mod:`selfrec_ft.attributes.measures` (deterministic measures) and
:mod:`selfrec_ft.dissection.properties` (plot labels, P2's fitted weights) all take the names from
here. Standard library only.
"""

from __future__ import annotations

import difflib

from selfrec_ft.errors import UserError

PROPERTY_SLUGS: dict[str, str] = {
    # exact P2 name: slug (short identifier for files, columns and the command line), feature 0..28
    "harmless": "harmless",
    "no grammar, spelling, punctuation, and code-switching mistakes": "no_grammar_errors",
    "friendly": "friendly",
    "polite": "polite",
    "interactive": "interactive",
    "authoritative tone": "authoritative",
    "funny and humorous": "funny",
    "use metaphors, personification, similes, hyperboles, irony, parallelism": "rhetorical_devices",
    "use complex word usage and sentence structure": "complex_language",
    "use of direct and explicit supporting materials": "supporting_materials",
    "well formatted": "well_formatted",
    "admit limitations or mistakes": "admit_limitations",
    "persuade user": "persuasive",
    "provide step by step solution": "step_by_step",
    "use informal expressions": "informal",
    "non-repetitive": "non_repetitive",
    "clear and understandable": "clear",
    "relevant": "relevant",
    "innovative and novel": "novel",
    "contain rich information": "rich_information",
    "no minor errors": "no_minor_errors",
    "no moderate errors": "no_moderate_errors",
    "no severe errors": "no_severe_errors",
    "clarify user intent": "clarify_intent",
    "show empathetic": "empathetic",
    "satisfy explicit constraints": "satisfy_constraints",
    "support explicit subjective stances": "support_stances",
    "correct explicit mistakes or biases": "correct_mistakes",
    "lengthy": "lengthy",
}

PROPERTY_NAMES: tuple[str, ...] = tuple(PROPERTY_SLUGS)
"""The 29 exact P2 names in P2's feature order."""

BY_SLUG: dict[str, str] = {slug: name for name, slug in PROPERTY_SLUGS.items()}
"""Slug -> exact P2 name."""

LENGTHY = "lengthy"
"""The one property P2 compared by its own thresholded word-count rule."""


def property_name(ref: str | int) -> str:
    """The exact P2 name of ``ref``: an exact name, a slug, or a feature index (int or digits).
    Anything else raises :class:`UserError` with the closest names."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        i = int(ref)
        if 0 <= i < len(PROPERTY_NAMES):
            return PROPERTY_NAMES[i]
        raise UserError(f"property index {i} out of range 0..{len(PROPERTY_NAMES) - 1}")
    if ref in PROPERTY_SLUGS:
        return ref
    if ref in BY_SLUG:
        return BY_SLUG[ref]
    # a property is suggested once, by its slug, however many of its spellings are close
    # ("lengthy" is both a slug and a name; "use complex word usage ..." is "complex_language")
    close = difflib.get_close_matches(str(ref), list(dict.fromkeys([*BY_SLUG, *PROPERTY_NAMES])), n=6)
    slugs = list(dict.fromkeys(PROPERTY_SLUGS.get(c, c) for c in close))[:3]
    hint = f"; did you mean {', '.join(repr(c) for c in slugs)}?" if slugs else ""
    raise UserError(f"unknown P2 property {ref!r}{hint}")
