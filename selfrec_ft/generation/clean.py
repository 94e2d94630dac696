"""Cleaning of raw generated summaries: chat preambles, labels, wrapping quotes, highlight bullets.

Chat models often wrap the summary they were asked for ("Sure! Here's a one-sentence summary of the
article:", "Summary:", quotes) and number or bullet their highlights. :func:`clean_summary` removes
that wrapping and nothing else:

* leading acknowledgements with punctuation (``Sure!``, ``Certainly,`` ...), "Here is/Here's/Here are ...summary /
  highlights / points...:" lead-ins and labels such as ``Summary:``, ``One-sentence summary:``,
  ``Highlights of the article:``, repeatedly, at the start of the text;
* quotes wrapping the whole summary (or, for highlights, a whole line): ``"..."``, ``“...”``,
  ``'...'``, ``‘...’``;
* ``short`` domain: the lines are joined with single spaces (the summary is one sentence);
* ``highlights`` domain: per line, labels as above and a leading number/bullet (``1.``, ``2)``,
  ``(3)``, ``-``, ``*``, ``•``, ``Highlight 1:``; a number or dash must be followed by a space, so
  "3.5 million" stays) are dropped and empty lines removed; lines are joined with ``\\n``.

An empty result means the generation held no summary; the caller records it as a failure.
"""

from __future__ import annotations

import re

from selfrec_ft.defaults import GENERATION_DOMAINS as DOMAINS  # noqa: E402

_ACK = re.compile(r"^(?:sure|certainly|okay|ok|of course|absolutely)[!.,:]+\s*", re.I)
_HERE = re.compile(
    r"^here(?:'s|’s|\s+is|\s+are)\b[^\n:]{0,80}?\b(?:summary|summaries|highlights?|points|article)\b"
    r"[^\n:]{0,40}:\s*",
    re.I,
)
_LABEL = re.compile(
    r"^(?:[\w-]+\s+){0,2}(?:summary|highlights?)(?:\s+of\s+(?:the|this)\s+article)?\s*:\s*", re.I
)
_BULLET = re.compile(r"^(?:highlight\s*\d*\s*[:.)-]|\(?\d{1,2}[.):](?=\s)|[-*–—](?=\s)|[•·▪◦])\s*", re.I)
_QUOTES = {'"': '"', "“": "”", "'": "'", "‘": "’"}


def _strip_preamble(text: str) -> str:
    while True:
        new = text
        for pattern in (_ACK, _HERE, _LABEL):
            new = pattern.sub("", new, count=1).lstrip()
        if new == text:
            return text
        text = new


def _strip_quotes(text: str) -> str:
    """Remove one pair of quotes wrapping the whole text (none of the same kind inside)."""
    text = text.strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]]:
        inner = text[1:-1]
        if text[0] not in inner and _QUOTES[text[0]] not in inner:
            return inner.strip()
    return text


def clean_summary(text: str, domain: str = "short") -> str:
    """The summary inside a raw generation (see the module docstring); ``""`` if there is none."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    text = _strip_quotes(_strip_preamble(text.strip()))
    lines = [ln.strip() for ln in text.splitlines()]
    if domain == "short":
        return _strip_quotes(" ".join(ln for ln in lines if ln))
    out = []
    for ln in lines:
        ln = _strip_quotes(_strip_preamble(ln))
        ln = _strip_quotes(_BULLET.sub("", ln, count=1))
        if ln:
            out.append(ln)
    return "\n".join(out)
