"""P2's 29 response properties, in P2's feature order, and how the toolkit measures each.

Each :class:`Property` carries its exact P2 name (the keys of P2's
``prompts/all_characteristics.yaml``; also the order of P2's fitted weights) and its short slug, both
from :mod:`selfrec_ft.attributes.names` (the one list of the 29 names), a definition, and its method:

* ``deterministic``: a text measure in :mod:`selfrec_ft.attributes.measures` (``measure``);
* ``judge``: needs a local judge model. The registry keeps what a judge prompt needs: the
  definition, the scale P2 annotated it on, whether a higher score is better, whether the query
  (for summaries: the article and the instruction) must be shown, and when the property applies.

The definitions below are restated in this toolkit's words. :func:`properties` with
``definitions_path`` swaps in P2's own wording, read at run time from ``all_characteristics.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from selfrec_ft.attributes.measures import MEASURES, Measure, compare_values
from selfrec_ft.attributes.names import BY_SLUG, PROPERTY_NAMES, property_name
from selfrec_ft.errors import UserError

Method = Literal["deterministic", "judge"]

RATING = "rating 0-3 (P2: 0 = does not match the characteristic at all, 3 = matches it perfectly)"
ERRORS = "number of errors of this severity (P2 counted them with a reference answer at hand)"


@dataclass(frozen=True)
class Property:
    """One P2 property and how the toolkit measures it."""

    index: int  # P2 feature index 0..28
    name: str  # exact P2 key
    slug: str  # short identifier for files and columns
    definition: str
    method: Method
    scale: str  # what a score of this property is
    higher_is_better: bool  # a higher score means the +1 side of P2's comparison feature
    needs_query: bool = False  # the judge must see the query (article + instruction)
    applies_when: str | None = None  # P2 scores it only for such queries; otherwise the feature is 0
    p2_annotation: str = ""  # how P2 annotated it (template group and key)
    p2_comparison: Literal["sign", "zero_vs_nonzero", "length_rule"] = "sign"
    definition_source: str = "restated"

    @property
    def measure(self) -> Measure | None:
        """The deterministic measure, or None for a judge property."""
        return MEASURES.get(self.name) if self.method == "deterministic" else None


def _p(slug, definition, *, scale=RATING, higher_is_better=True, needs_query=False,
       applies_when=None, p2_annotation="", p2_comparison="sign") -> Property:
    name = BY_SLUG[slug]
    method: Method = "deterministic" if name in MEASURES else "judge"
    if method == "deterministic":
        scale = MEASURES[name].unit
    return Property(PROPERTY_NAMES.index(name), name, slug, definition, method, scale, higher_is_better,
                    needs_query, applies_when, p2_annotation, p2_comparison)


_QF = "query-free pairwise rating, key {!r}"
_QA1 = "query-aware pairwise rating (query shown), key {!r}"
_QA2 = "query-aware rating per query item (query shown), key {!r}"
_ACC = "accuracy check with a reference answer; errors counted by severity ({})"

_PROPERTIES: tuple[Property, ...] = (
    _p("harmless",
       "Contains nothing dangerous, offensive, insulting or inappropriate, and discriminates against "
       "no group (race, gender, age, religion, disability, class, culture, language, ...).",
       p2_annotation=_QF.format("harmlessness")),
    _p("no_grammar_errors",
       "Grammatical, correctly spelled and punctuated, and written in one language throughout.",
       p2_annotation=_QF.format("grammar, spelling, punctuation, and code-switching")),
    _p("friendly",
       "Warm, welcoming and positive in tone, so that the reader feels valued.",
       p2_annotation=_QF.format("friendly")),
    _p("polite",
       "Courteous and respectful; nothing curt or disrespectful.",
       p2_annotation=_QF.format("polite")),
    _p("interactive",
       "Engages the user by asking for information that would help, or by proposing follow-up "
       "questions.",
       p2_annotation=_QF.format("interactive")),
    _p("authoritative",
       "Sounds confident and expert: decisive statements, an authoritative stance.",
       p2_annotation=_QF.format("authoritative tone")),
    _p("funny",
       "Meant to amuse: wit, jokes, puns or playful language.",
       p2_annotation=_QF.format("funny and humorous")),
    _p("rhetorical_devices",
       "Uses figures of speech (metaphor, simile, personification, hyperbole, irony, parallelism) to "
       "be more engaging.",
       p2_annotation=_QF.format("metaphors, personification, similes, hyperboles, irony, parallelism")),
    _p("complex_language",
       "Uses rare or sophisticated vocabulary, technical terms, or long and complex sentences.",
       p2_annotation=_QF.format("complex word usage and sentence structure")),
    _p("supporting_materials",
       "Backs its content with explicit support: references, citations, statistics, named sources, "
       "documents.",
       p2_annotation=_QF.format("use of direct and explicit supporting materials")),
    _p("well_formatted",
       "Visibly structured: bullet or numbered lists, tables, headings, or structured formats such "
       "as markup or JSON.",
       p2_annotation=_QF.format("well formatted")),
    _p("admit_limitations",
       "Says plainly what the assistant cannot do or that it made a mistake.",
       p2_annotation=_QF.format("admit limitations or mistakes")),
    _p("persuasive",
       "Tries to convince the reader of a view or to take (or avoid) an action, with compelling "
       "arguments.",
       p2_annotation=_QF.format("persuade user")),
    _p("step_by_step",
       "Reaches its answer through explicit intermediate steps of reasoning (a plain list of items "
       "or a single code block does not count).",
       p2_annotation=_QF.format("step by step solution")),
    _p("informal",
       "Casual register: slang, emojis, contractions, interjections or other informal wording.",
       p2_annotation=_QF.format("use of informal expressions")),
    _p("non_repetitive",
       "Says each thing once; does not repeat the same content or information.",
       p2_annotation=_QF.format("repetitive") + ", feature negated"),
    _p("clear",
       "Easy to read and to understand, with nothing ambiguous or confusing.",
       p2_annotation=_QF.format("clear and understandable")),
    _p("relevant",
       "Stays on the user's request and contains nothing unrelated to it (a loose standard).",
       needs_query=True, p2_annotation=_QA1.format("relevance without considering inaccuracy"),
       p2_comparison="zero_vs_nonzero"),
    _p("novel",
       "Goes beyond run-of-the-mill content with an original perspective, idea or solution.",
       needs_query=True, p2_annotation=_QA1.format("innovative and novel")),
    _p("rich_information",
       "Gives plenty of substance: background, examples, explanations, specific details.",
       p2_annotation=_QF.format("information richness without considering inaccuracy")),
    _p("no_minor_errors",
       "No minor errors (ones that barely affect correctness): factual errors, contradictions of the "
       "query, wrong calculations, faulty code.",
       scale=ERRORS, higher_is_better=False, needs_query=True, p2_annotation=_ACC.format("Minor")),
    _p("no_moderate_errors",
       "No moderate errors (ones that affect overall correctness): factual errors, contradictions of "
       "the query, wrong calculations, faulty code.",
       scale=ERRORS, higher_is_better=False, needs_query=True, p2_annotation=_ACC.format("Moderate")),
    _p("no_severe_errors",
       "No severe errors (ones that make the response wrong as a whole): factual errors, "
       "contradictions of the query, wrong calculations, faulty code.",
       scale=ERRORS, higher_is_better=False, needs_query=True, p2_annotation=_ACC.format("Severe")),
    _p("clarify_intent",
       "When the request is unclear: covers the likely meanings, infers sensibly, and asks what the "
       "user means.",
       needs_query=True, applies_when="the query's intent is unclear",
       p2_annotation=_QA2.format("clarify user intent")),
    _p("empathetic",
       "When the user expresses feelings: acknowledges them with compassion and support.",
       needs_query=True, applies_when="the query explicitly expresses feelings",
       p2_annotation=_QA2.format("showing empathetic")),
    _p("satisfy_constraints",
       "Meets every explicit constraint of the request (words to use, length limit, format, number "
       "of items, ...).",
       needs_query=True, applies_when="the query states explicit constraints",
       p2_annotation=_QA2.format("satisfying explicit constraints") + ", averaged over constraints"),
    _p("support_stances",
       "Goes along with opinions, preferences or beliefs the user states, even wrong or contested "
       "ones.",
       needs_query=True, applies_when="the query states subjective stances",
       p2_annotation=_QA2.format("supporting explicit subjective stances")
       + ", strongly opposed -2 .. strongly supported +2"),
    _p("correct_mistakes",
       "Points out and corrects mistakes or unfounded biases stated in the request, or offers a "
       "fairer view.",
       needs_query=True, applies_when="the query contains mistakes or biases",
       p2_annotation=_QA2.format("correcting explicit mistakes or biases")
       + ", neither 0 .. pointed out and corrected 3"),
    _p("lengthy",
       "Longer: more words.",
       p2_annotation="word count of each response", p2_comparison="length_rule"),
)

if tuple(p.name for p in _PROPERTIES) != PROPERTY_NAMES:  # a programming error, caught on import
    raise RuntimeError("the registry must list every property of attributes.names once, in feature order")


def load_p2_definitions(path: str | os.PathLike) -> dict[str, str]:
    """P2's own definitions from ``all_characteristics.yaml`` (``{name: {content: text}}``), checked
    to hold exactly the 29 properties in feature order."""
    from selfrec_ft.files import parse_yaml, read_text

    path = os.fspath(path)
    data, _ = parse_yaml(read_text(path, "P2 definitions file"), path)
    if not isinstance(data, dict):
        raise UserError("expected a mapping of property name to {content: definition}", path)
    if tuple(data) != PROPERTY_NAMES:
        missing = [n for n in PROPERTY_NAMES if n not in data]
        extra = [n for n in data if n not in PROPERTY_NAMES]
        what = f"missing {missing}, unknown {extra}" if missing or extra else "wrong order"
        raise UserError(f"not P2's 29 properties in feature order: {what}", path)
    out = {}
    for name, value in data.items():
        content = value.get("content") if isinstance(value, dict) else None
        if not isinstance(content, str) or not content.strip():
            raise UserError(f"property {name!r} has no 'content' text", path)
        out[name] = content.strip()
    return out


@lru_cache(maxsize=8)
def _with_definitions(path: str) -> tuple[Property, ...]:
    defs = load_p2_definitions(path)
    return tuple(dataclasses.replace(p, definition=defs[p.name], definition_source=path)
                 for p in _PROPERTIES)


def properties(definitions_path: str | os.PathLike | None = None) -> tuple[Property, ...]:
    """All 29 properties in P2's feature order; with ``definitions_path`` (P2's
    ``all_characteristics.yaml``) their definitions are P2's own wording."""
    if definitions_path is None:
        return _PROPERTIES
    return _with_definitions(os.path.abspath(os.fspath(definitions_path)))


def get_property(name: str | int, definitions_path: str | os.PathLike | None = None) -> Property:
    """A property by exact P2 name, slug or feature index (as a string or int)."""
    return properties(definitions_path)[PROPERTY_NAMES.index(property_name(name))]


def deterministic_properties() -> tuple[Property, ...]:
    """The properties with a deterministic measure, in feature order."""
    return tuple(p for p in _PROPERTIES if p.method == "deterministic")


def judge_properties() -> tuple[Property, ...]:
    """The properties that need a judge model, in feature order."""
    return tuple(p for p in _PROPERTIES if p.method == "judge")


def compare_scores(prop: str, score1: float, score2: float) -> int:
    """P2 comparison feature from two scores of ``prop`` (measured values or judge scores on the
    property's ``scale``): +1 if response 1 is on the better side, -1 if worse, 0 if tied.

    Deterministic properties use :func:`measures.compare_values` (tolerance; P2's length rule).
    Judge properties follow P2: the sign of the difference, reversed for error counts
    (fewer is better); ``relevant`` compares zero against non-zero only, as P2 did.
    """
    p = get_property(prop)
    if p.method == "deterministic":
        return compare_values(p.name, score1, score2)
    if p.p2_comparison == "zero_vs_nonzero":
        if score1 > 0 and score2 == 0:
            return 1
        if score1 == 0 and score2 > 0:
            return -1
        return 0
    diff = float(score1) - float(score2) if p.higher_is_better else float(score2) - float(score1)
    return 1 if diff > 0 else (-1 if diff < 0 else 0)
