"""Prompt presets as data, rendered through the tokenizer's chat template.

A preset is a YAML file (packaged under ``presets/`` or given by path) with ``name``,
``assistant_prefix`` (optional ``train_assistant_prefix``) and ``tasks``: one template per task or
variant, each with ``system``, ``user`` (``str.format`` placeholders), ``options`` and ``measures``.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from selfrec_ft.defaults import CONTROL_TASKS, DEFAULT_PRESET, INDIVIDUAL_TASKS, PAIRWISE_TASKS  # noqa: F401
from selfrec_ft.errors import UserError
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


def _parse_preset(data: Any, source: str) -> PromptPreset:
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise UserError('a preset must be a mapping with a "tasks" mapping', source)
    prefix = str(data.get("assistant_prefix", "") or "")
    train_prefix = str(data.get("train_assistant_prefix", prefix) or "")
    tasks = {}
    for name, spec in data["tasks"].items():
        if not isinstance(spec, dict) or "user" not in spec:
            raise UserError(f'template "{name}" needs at least a "user" text', source)
        unknown = set(spec) - {"system", "user", "options", "measures", "inverted"}
        if unknown:
            raise UserError(f'template "{name}" has unknown key(s) {", ".join(sorted(unknown))}', source)
        options = tuple(str(o) for o in spec.get("options", []) or [])
        if options and len(set(options)) != len(options):
            raise UserError(f'template "{name}" repeats an option', source)
        tasks[name] = TaskTemplate(
            name=name,
            system=str(spec.get("system", "") or ""),
            user=str(spec["user"]),
            options=options,
            measures=str(spec.get("measures", name)),
            inverted=bool(spec.get("inverted", False)),
            assistant_prefix=prefix,
            train_assistant_prefix=train_prefix,
        )
    return PromptPreset(name=str(data.get("name", Path(source).stem)), tasks=tasks,
                        description=str(data.get("description", "")), source=source)


@lru_cache(maxsize=32)
def load_preset(name_or_path: str | os.PathLike = DEFAULT_PRESET) -> PromptPreset:
    """A packaged preset by name (``panickssery2024``) or a user's YAML template file by path."""
    ref = os.fspath(name_or_path)
    if ref.endswith((".yaml", ".yml")) or os.sep in ref:
        path = Path(ref)
        if not path.is_file():
            raise UserError("prompt preset file not found", path)
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        res = resources.files("selfrec_ft.prompts") / "presets" / f"{ref}.yaml"
        if not res.is_file():
            raise UserError(f"unknown prompt preset {ref!r}; available: {', '.join(available_presets())}")
        text, source = res.read_text(encoding="utf-8"), ref
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"invalid YAML ({getattr(exc, 'problem', exc)})", source,
                        mark.line + 1 if mark else None) from None
    return _parse_preset(data, source)


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
