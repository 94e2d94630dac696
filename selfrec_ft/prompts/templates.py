"""Prompt presets as data, rendered through the tokenizer's chat template.

A preset is a YAML file (packaged under ``presets/`` or given by path) with ``name``,
``assistant_prefix`` (optional ``train_assistant_prefix``) and ``tasks``: one template per task or
variant, each with ``system``, ``user`` (``str.format`` placeholders), ``options`` and ``measures``;
a template's own ``assistant_prefix`` / ``train_assistant_prefix`` override the preset's (the
``small-chat`` preset primes "Summary" before a pairwise answer, nothing before "Yes"/"No").

Loading checks every template once, for every command (:func:`load_preset`); a mistake is a
``UserError`` naming the preset, the template, the field and the YAML line:

* ``measures`` is a task (``pairwise-*`` including the control questions, ``individual-*``) or
  ``generate``; it fixes the placeholders of ``user`` (:data:`PLACEHOLDERS`: required and allowed)
  and the options: pairwise templates have exactly two (the first answers "Summary1", the second
  "Summary2"), individual recognition ``Yes`` and ``No``, individual score integer ratings,
  generation templates none;
* placeholders in ``user`` are plain ``{name}``; a lone ``{`` or ``}`` is an error (write ``{{`` /
  ``}}``); ``system`` is literal text (braces are fine), so a placeholder there is an error.

Whether each option is one distinguishing token depends on the tokenizer: :func:`check_options`
runs the scoring check (:func:`~selfrec_ft.prompts.answer_slots.resolve_answer_slot`) on a template.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from selfrec_ft.defaults import CONTROL_TASKS, DEFAULT_PRESET, INDIVIDUAL_TASKS, PAIRWISE_TASKS  # noqa: F401
from selfrec_ft.errors import UserError
from selfrec_ft.files import parse_yaml, read_text
from selfrec_ft.prompts.answer_slots import resolve_answer_slot
from selfrec_ft.prompts.chat import chat_text, encode  # noqa: F401  (re-exported: callers import them from here)


@dataclass(frozen=True)
class TaskTemplate:
    name: str
    system: str
    user: str
    options: tuple[str, ...] = ()
    measures: str = ""
    inverted: bool = False
    assistant_prefix: str = ""
    train_assistant_prefix: str = ""

    @property
    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.user) if f}

    @property
    def is_pairwise(self) -> bool:
        return {"summary1", "summary2"} <= self.fields

    def answer_option(self, position: int) -> str:
        """The option of a pairwise template that picks the summary shown in ``position`` (1 or 2):
        the first option answers Summary1, the second Summary2, swapped for an ``inverted``
        template ("which is worse?"). Training labels and the scored ``self_option`` both use it."""
        if position not in (1, 2) or len(self.options) != 2:
            raise ValueError(f"template {self.name!r}: answer_option needs a pairwise template and position 1 or 2")
        return self.options[(2 - position) if self.inverted else (position - 1)]

    def messages(self, **values: str) -> list[dict[str, str]]:
        missing = self.fields - values.keys()
        if missing:
            raise UserError(f"template {self.name!r} needs value(s) for {', '.join(sorted(missing))}")
        msgs = [{"role": "user", "content": self.user.format(**values)}]
        if self.system:
            msgs.insert(0, {"role": "system", "content": self.system})
        return msgs


@dataclass(frozen=True)
class PromptPreset:
    name: str
    tasks: dict[str, TaskTemplate] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    def task(self, name: str) -> TaskTemplate:
        if name not in self.tasks:
            raise UserError(
                f"preset {self.name!r} has no template {name!r}; it has: {', '.join(self.tasks)}", self.source
            )
        return self.tasks[name]


def available_presets() -> list[str]:
    folder = resources.files("selfrec_ft.prompts") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


PAIRWISE_FIELDS = ("article", "summary1", "summary2", "source1", "source2", "author")
"""``author``: the self source's name, for a peer judge asked which summary that author wrote."""
PLACEHOLDERS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # kind: (required placeholders of `user`, allowed placeholders)
    "pairwise": (frozenset({"summary1", "summary2"}), frozenset(PAIRWISE_FIELDS)),
    "individual": (frozenset({"summary"}), frozenset({"article", "summary"})),
    "generate": (frozenset({"article"}), frozenset({"article"})),
}
GENERATE = "generate"
MEASURED = PAIRWISE_TASKS + CONTROL_TASKS + INDIVIDUAL_TASKS + (GENERATE,)
"""What a template's ``measures`` may name."""
TEMPLATE_KEYS = ("system", "user", "options", "measures", "inverted", "assistant_prefix", "train_assistant_prefix")


def template_kind(measures: str) -> str:
    """``pairwise``, ``individual`` or ``generate`` for a template's ``measures``."""
    if measures in PAIRWISE_TASKS + CONTROL_TASKS:
        return "pairwise"
    if measures in INDIVIDUAL_TASKS:
        return "individual"
    if measures == GENERATE:
        return "generate"
    raise ValueError(measures)


def _placeholders(text: str) -> list[tuple[str, str | None, str | None]]:
    """``(field, conversion, format_spec)`` of every placeholder; ValueError for a lone brace."""
    return [(f, conv, spec) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]


class _Checker:
    """Checks one preset's templates; errors name the preset, the template, the field and the line."""

    def __init__(self, preset: str, source: str, lines: dict[tuple, int]):
        self.preset, self.source, self.lines = preset, source, lines

    def error(self, name: str, key: str | None, message: str) -> UserError:
        where = f"preset {self.preset!r}, template {name!r}" + (f", field {key!r}" if key else "")
        line = self.lines.get(("tasks", name, key)) if key else None
        return UserError(f"{where}: {message}", self.source, line or self.lines.get(("tasks", name)))

    def text(self, name: str, key: str, text: str, kind: str | None) -> set[str]:
        """The placeholders of ``user`` (``key``), or a check that ``system`` (literal text, braces
        included) names none."""
        if key == "system":
            named = re.search(r"\{(%s)\}" % "|".join(PAIRWISE_FIELDS + ("summary",)), text)
            if named:
                raise self.error(name, key, f"the system text is not formatted (placeholders are filled in the "
                                 f"user text only), so {named.group(0)} would reach the model as it is")
            return set()
        try:
            found = _placeholders(text)
        except ValueError as exc:
            raise self.error(name, key, f"a lone '{{' or '}}' ({exc}); write '{{{{' or '}}}}' for a literal brace"
                             ) from None
        fields = set()
        for f, conv, spec in found:
            if not f or conv or spec:
                shown = "{" + f + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                raise self.error(name, key, f"placeholder {shown}: only plain {{name}} placeholders are "
                                 "supported (write {{ or }} for a literal brace)")
            fields.add(f)
        if kind is not None:
            required, allowed = PLACEHOLDERS[kind]
            unknown = sorted(fields - allowed)
            if unknown:
                raise self.error(name, key, f"unknown placeholder {{{unknown[0]}}}; {kind} templates may use "
                                 + ", ".join("{" + a + "}" for a in sorted(allowed)))
            missing = sorted(required - fields)
            if missing:
                raise self.error(name, key, f"missing placeholder {{{missing[0]}}}; {kind} templates need "
                                 + " and ".join("{" + r + "}" for r in sorted(required)))
        return fields

    def options(self, name: str, measures: str, kind: str, options: tuple[str, ...]) -> None:
        def bad(message: str) -> UserError:
            return self.error(name, "options", message)

        if any(not o.strip() for o in options):
            raise bad("an option is empty")
        if len(set(options)) != len(options):
            raise bad("an option is repeated")
        shown = list(options)
        if kind == "generate":
            if options:
                raise bad(f"a generation template has no options, got {shown}")
        elif kind == "pairwise":
            if len(options) != 2:
                raise bad(f"a pairwise template needs exactly two options (the answers for Summary1 and "
                          f"Summary2), got {len(options)}: {shown}")
        elif measures == "individual-recognition":
            if set(options) != {"Yes", "No"}:
                raise bad(f'individual recognition reads p(Yes): its options must be "Yes" and "No", got {shown}')
        elif len(options) < 2 or not all(o.strip().isdigit() for o in options):
            raise bad(f"individual score needs at least two integer ratings as options (the score is the "
                      f"expected rating), got {shown}")


def _parse_preset(data: Any, source: str, lines: dict[tuple, int] | None = None) -> PromptPreset:
    lines = lines or {}
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise UserError('a preset must be a mapping with a "tasks" mapping', source)
    preset_name = str(data.get("name", Path(source).stem))
    check = _Checker(preset_name, source, lines)
    prefix = str(data.get("assistant_prefix", "") or "")
    train_prefix = str(data.get("train_assistant_prefix", prefix) or "")
    tasks = {}
    for name, spec in data["tasks"].items():
        if not isinstance(spec, dict) or "user" not in spec:
            raise check.error(name, None, 'a template needs at least a "user" text')
        unknown = set(spec) - set(TEMPLATE_KEYS)
        if unknown:
            raise check.error(name, sorted(unknown)[0], f'unknown key(s) {", ".join(sorted(unknown))} '
                              f'(a template has {", ".join(TEMPLATE_KEYS)})')
        for key in ("system", "user", "measures", "assistant_prefix", "train_assistant_prefix"):
            if spec.get(key) is not None and not isinstance(spec[key], str):
                raise check.error(name, key, f"must be text, got {type(spec[key]).__name__}")
        raw_options = spec.get("options", []) or []
        if not isinstance(raw_options, list) or any(isinstance(o, (dict, list)) for o in raw_options):
            raise check.error(name, "options", "must be a list of option texts")
        options = tuple(str(o) for o in raw_options)
        measures = str(spec.get("measures", name))
        if measures not in MEASURED:
            raise check.error(name, "measures" if "measures" in spec else None,
                              f"measures {measures!r} is not one of {', '.join(MEASURED)}")
        kind = template_kind(measures)
        if "inverted" in spec and not isinstance(spec["inverted"], bool):
            raise check.error(name, "inverted", "must be true or false")
        if spec.get("inverted") and kind != "pairwise":
            raise check.error(name, "inverted", "only pairwise templates can be inverted")
        system = str(spec.get("system", "") or "")
        user = str(spec["user"])
        check.text(name, "system", system, None)
        check.text(name, "user", user, kind)
        check.options(name, measures, kind, options)
        if kind == "generate" and (spec.get("assistant_prefix") or spec.get("train_assistant_prefix")):
            raise check.error(name, "assistant_prefix", "a generation template takes no assistant prefix")
        task_prefix = str(spec["assistant_prefix"] or "") if "assistant_prefix" in spec else prefix
        if "train_assistant_prefix" in spec:
            task_train_prefix = str(spec["train_assistant_prefix"] or "")
        else:
            task_train_prefix = task_prefix if "assistant_prefix" in spec else train_prefix
        tasks[name] = TaskTemplate(
            name=name,
            system=system,
            user=user,
            options=options,
            measures=measures,
            inverted=bool(spec.get("inverted", False)),
            assistant_prefix=task_prefix,
            train_assistant_prefix=task_train_prefix,
        )
    return PromptPreset(name=preset_name, tasks=tasks, description=str(data.get("description", "")), source=source)


@lru_cache(maxsize=32)
def load_preset(name_or_path: str | os.PathLike = DEFAULT_PRESET) -> PromptPreset:
    """A packaged preset by name (``panickssery2024``) or a user's YAML template file by path,
    checked (see the module docstring)."""
    ref = os.fspath(name_or_path)
    if ref.endswith((".yaml", ".yml")) or os.sep in ref:
        path = Path(ref)
        if not path.is_file():
            raise UserError("prompt preset file not found", path)
        text, source = read_text(path, "prompt preset"), str(path)
    else:
        res = resources.files("selfrec_ft.prompts") / "presets" / f"{ref}.yaml"
        if not res.is_file():
            raise UserError(f"unknown prompt preset {ref!r}; available: {', '.join(available_presets())}")
        text, source = res.read_text(encoding="utf-8"), ref
    data, lines = parse_yaml(text, source)
    return _parse_preset(data, source, lines)


def check_options(tokenizer, template: TaskTemplate) -> None:
    """Scoring's check of ``template``'s options with ``tokenizer``: each must be one distinguishing
    token after the assistant prefix (:func:`~selfrec_ft.prompts.answer_slots.resolve_answer_slot`
    on the template rendered with placeholder text); a ``UserError`` names the tokenizer."""
    messages = template.messages(**{f: "text" for f in template.fields})
    resolve_answer_slot(tokenizer, messages, template.options, template.assistant_prefix)


@dataclass
class RenderedPrompt:
    input_ids: list[int]
    option_ids: dict[str, int]
    messages: list[dict[str, str]]
    shortened: bool = False


def fit_article(values: dict[str, str], length_of, max_length: int | None, name: str) -> tuple[dict[str, str], bool]:
    """Cut the article (never a summary) word by word until ``length_of(values) <= max_length``."""
    if max_length is None or "article" not in values or length_of(values) <= max_length:
        return values, False
    words = values["article"].split(" ")
    lo, hi = 0, len(words) - 1  # largest number of kept words that fits, by bisection
    if length_of({**values, "article": ""}) > max_length:
        raise UserError(f"prompt {name!r} does not fit max_length={max_length} even with an empty article "
                        "(summaries are never shortened)")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if length_of({**values, "article": " ".join(words[:mid])}) <= max_length:
            lo = mid
        else:
            hi = mid - 1
    return {**values, "article": " ".join(words[:lo])}, True


def render_prompt(tokenizer, template: TaskTemplate, max_length: int | None = None, **values: str) -> RenderedPrompt:
    """Prompt token ids ending right before the option token, with each option's token id.

    The ids are what training renders before the label (chat template, assistant prefix and any
    token all options share, e.g. Llama-2's bare ``▁``); see :mod:`selfrec_ft.prompts.answer_slots`.
    ``max_length`` bounds the prompt plus the answer token; the article is shortened to fit.
    """
    def length_of(v: dict[str, str]) -> int:
        return len(resolve_answer_slot(tokenizer, template.messages(**v), template.options,
                                       template.assistant_prefix).prompt_ids) + 1

    values, shortened = fit_article(values, length_of, max_length, template.name)
    messages = template.messages(**values)
    slot = resolve_answer_slot(tokenizer, messages, template.options, template.assistant_prefix)
    return RenderedPrompt(slot.prompt_ids, slot.option_ids, messages, shortened)


def render_generation_prompt(tokenizer, template: TaskTemplate, max_length: int | None = None,
                             **values: str) -> tuple[list[int], bool]:
    """Token ids of a generation prompt (chat template with the generation prompt on)."""

    def length_of(v: dict[str, str]) -> int:
        return len(encode(tokenizer, chat_text(tokenizer, template.messages(**v), True)))

    values, shortened = fit_article(values, length_of, max_length, template.name)
    return encode(tokenizer, chat_text(tokenizer, template.messages(**values), True)), shortened


def fit_messages(tokenizer, template: TaskTemplate, max_length: int | None, **values: str
                 ) -> tuple[list[dict[str, str]], bool]:
    """Messages with the article shortened so the rendered prompt + answer fit ``max_length``."""
    if max_length is None or tokenizer is None:
        return template.messages(**values), False
    rp = render_prompt(tokenizer, template, max_length, **values)
    return rp.messages, rp.shortened
