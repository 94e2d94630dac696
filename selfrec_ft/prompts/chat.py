"""The one chat-template rendering path: scoring prompts, training rows and generation prompts.

Every conversation the library renders goes through :func:`chat_text` (or, for the rows TRL
tokenizes itself, :meth:`ChatFormat.messages`), so a model sees the same context when it is
scored, trained and asked to generate.

:func:`chat_format` decides once per tokenizer (and chat template) how its template is used:

* **system role** — a probe conversation (system, user, assistant) is rendered with and without the
  assistant's answer. A template that raises on the system message (Gemma: "System role not
  supported"; Mistral-7B-Instruct-v0.1) or leaves it out of either rendering (Mistral-7B-Instruct-v0.3
  puts it into the *last* user turn only, so a conversation with the answer loses it) gets
  ``system = "folded"``: the system text is put before the first user turn's text, separated by a
  blank line, in every rendering. Otherwise ``"native"``. The decision is logged once, and
  :meth:`ChatFormat.record` is what the training manifest and the evaluation report store.
* **end of turn** — the special tokens the template writes after an assistant answer
  (``</s>``, ``<|eot_id|>``, ``<|im_end|>``, ``<end_of_turn>``): they end the training completion
  and stop generation, together with the model's ``eos_token_id`` list.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

from selfrec_ft.errors import UserError

logger = logging.getLogger(__name__)

SYSTEM_PROBE = "Probe system text."
USER_PROBE = "Probe user text."
ANSWER_PROBE = "Probe answer text."
NATIVE, FOLDED = "native", "folded"
FOLD_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class ChatFormat:
    """How one tokenizer's chat template is used (see the module docstring)."""

    tokenizer_name: str
    system: str                      # "native" | "folded"
    reason: str = ""                 # why the system turn is folded ("" when native)
    end_of_turn: tuple[int, ...] = ()  # special token ids after an assistant answer
    end_of_turn_tokens: tuple[str, ...] = ()

    @property
    def folds_system(self) -> bool:
        return self.system == FOLDED

    def messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """``messages`` as this template renders them: with a folded system role, a leading system
        message becomes the start of the first user message (or a user message of its own)."""
        if not self.folds_system or not messages or messages[0]["role"] != "system":
            return list(messages)
        system, rest = messages[0]["content"], list(messages[1:])
        if rest and rest[0]["role"] == "user":
            return [{"role": "user", "content": system + FOLD_SEPARATOR + rest[0]["content"]}] + rest[1:]
        return [{"role": "user", "content": system}] + rest

    def note(self) -> str:
        """One line for logs and reports: what happens to system prompts."""
        if self.folds_system:
            return (f"system prompts folded into the first user turn: {self.reason}")
        return "system prompts rendered as the template's system turn"

    def record(self) -> dict:
        """What the training manifest and the evaluation report store."""
        return {"system_role": self.system, "reason": self.reason or None,
                "end_of_turn": list(self.end_of_turn_tokens)}


_FORMATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def _decide(tokenizer) -> ChatFormat:
    name = _name(tokenizer)
    user = {"role": "user", "content": USER_PROBE}
    answer = {"role": "assistant", "content": ANSWER_PROBE}
    probe = [{"role": "system", "content": SYSTEM_PROBE}, user]
    system, reason = NATIVE, ""
    try:
        prompt, full = _render(tokenizer, probe, True), _render(tokenizer, probe + [answer], False)
    except Exception as exc:  # noqa: BLE001 (jinja2's TemplateError from raise_exception, or any error of the template)
        system, reason = FOLDED, f"the chat template rejects a system message ({_first_line(exc)})"
    else:
        if SYSTEM_PROBE not in prompt:
            system, reason = FOLDED, "the chat template leaves the system message out of the prompt"
        elif SYSTEM_PROBE not in full:
            system, reason = FOLDED, ("the chat template leaves the system message out of a conversation "
                                      "that holds the assistant's answer")
    try:
        full = _render(tokenizer, [user, answer], False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"tokenizer {name!r}: the chat template cannot render a user turn and an assistant "
                        f"answer ({_first_line(exc)})") from None
    at = full.rfind(ANSWER_PROBE)
    tail = full[at + len(ANSWER_PROBE):] if at >= 0 else ""
    specials = _special_ids(tokenizer)
    ids = [t for t in tokenizer(tail, add_special_tokens=False)["input_ids"] if t in specials] if tail else []
    fmt = ChatFormat(name, system, reason, tuple(ids), tuple(tokenizer.convert_ids_to_tokens(ids)))
    if fmt.folds_system:
        logger.warning("tokenizer %r: %s", name, fmt.note())
    return fmt


def chat_format(tokenizer) -> ChatFormat:
    """The tokenizer's :class:`ChatFormat`, decided on first use and kept for the tokenizer's life
    (decided again if its chat template is replaced)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise UserError(f"tokenizer {_name(tokenizer)!r} has no chat template")
    try:
        known = _FORMATS.get(tokenizer)
    except TypeError:  # not weak-referenceable: decide every time
        return _decide(tokenizer)
    if known is None or known[0] != template:
        known = (template, _decide(tokenizer))
        _FORMATS[tokenizer] = known
    return known[1]


def chat_messages(tokenizer, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` as ``tokenizer``'s template takes them (the system turn folded where needed):
    what conversational training rows hold."""
    return chat_format(tokenizer).messages(messages)


def chat_text(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """Render ``messages`` with the tokenizer's chat template, the system turn folded for templates
    that reject or drop it (:func:`chat_format`)."""
    return _render(tokenizer, chat_messages(tokenizer, messages), add_generation_prompt)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of already-rendered chat text (the template carries its own special tokens)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]
