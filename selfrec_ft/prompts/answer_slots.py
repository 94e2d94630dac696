"""Where the answer is read: the single token that distinguishes each option.

For every option the full conversation ``messages + [assistant: prefix + option]`` is rendered
through the chat template, exactly as training renders a completion. All renderings must agree up to
one token and differ in exactly that token (trailing tokens such as ``</s>`` may follow, equal for
all options). The shared part is the prompt; the differing token is the option's token. For
Llama-2 the shared part ends with a bare ``▁`` and the options are the digit tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from selfrec_ft.errors import UserError
from selfrec_ft.prompts.chat import chat_text, encode


@dataclass(frozen=True)
class AnswerSlot:
    prompt_ids: list[int]
    option_ids: dict[str, int]


def _common_prefix_len(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def resolve_answer_slot(tokenizer, messages: list[dict[str, str]], options, assistant_prefix: str = "") -> AnswerSlot:
    options = list(options)
    name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__) or type(tokenizer).__name__
    if len(options) < 2:
        raise UserError(f"an answer slot needs at least two options, got {options}")
    full = [
        encode(tokenizer, chat_text(tokenizer, messages + [{"role": "assistant", "content": assistant_prefix + o}], False))
        for o in options
    ]
    start = _common_prefix_len(full)
    tails = [s[start:] for s in full]
    suffix = _common_prefix_len([t[::-1] for t in tails])
    bad = [o for o, t in zip(options, tails) if len(t) - suffix != 1]
    if bad:
        shown = "; ".join(f"{o!r} -> {tokenizer.convert_ids_to_tokens(t[: max(len(t) - suffix, 0)])}"
                          for o, t in zip(options, tails))
        raise UserError(
            f"tokenizer {name!r}: option {bad[-1]!r} is not a single distinguishing token after the "
            f"assistant prefix (options after their shared tokens: {shown})"
        )
    for opt, tail in zip(options, tails):
        token = tokenizer.decode([tail[0]]).strip()
        if token != opt.strip():
            raise UserError(
                f"tokenizer {name!r}: option {opt!r} is not a single token after the assistant prefix "
                f"(its first token decodes as {token!r})"
            )
    return AnswerSlot(prompt_ids=full[0][:start], option_ids={o: t[0] for o, t in zip(options, tails)})
