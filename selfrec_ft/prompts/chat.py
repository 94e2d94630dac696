"""Chat-template rendering shared by prompt templates and answer slots (no other project import).

:mod:`selfrec_ft.prompts.templates` renders prompts and :mod:`selfrec_ft.prompts.answer_slots`
finds the answer token; both render through these two functions, so neither imports the other's
helpers back.
"""

from __future__ import annotations

from selfrec_ft.errors import UserError


def chat_text(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """Render ``messages`` with the tokenizer's chat template (a system turn is folded into the user
    turn for templates that reject the system role)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception:
        if messages and messages[0]["role"] == "system" and len(messages) > 1:
            merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
            return tokenizer.apply_chat_template(merged + messages[2:], tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
        raise


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of already-rendered chat text (the template carries its own special tokens)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]
