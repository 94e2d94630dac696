"""Scoring items for the four tasks (and familiarity): engine requests plus row metadata.

For each article (in the given order):

* pairwise tasks: for every other source, the *forward* prompt (self summary in position 1) and
  the *backward* prompt; ``self_option`` is ``"1"`` / ``"2"``, swapped for an ``inverted`` template
  ("which summary is worse?");
* individual tasks: one prompt per source's summary of the article, self included;
* ``familiarity`` (optional): the mean token log-likelihood of each source's summary given the
  domain's generation prompt (``generate-short`` / ``generate-highlights``).

Prompts of one template and article form one engine ``group`` (they share the system prompt, the
instructions and the article). With ``spans``, every pairwise and individual request carries the token spans of its
summaries by role (``summary_spans``: ``"self"`` / ``"other"`` -> ``[start, end)`` in its prompt
ids, :func:`summary_token_spans`), which steering hooks act on; ``None`` where they cannot be
located (a tokenizer without offsets, a chat template that rewrites the text). When a prompt is too
long for ``max_length`` its article is shortened, and every prompt of its group gets that same
shortened article (all sources and both orders are judged on one text); summaries are never
shortened. Shortened prompts are counted, and pairs or summaries missing from the corpus are skipped
and counted.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from selfrec_ft.data.corpus import Corpus
from selfrec_ft.defaults import FAMILIARITY, GENERATION_TEMPLATES, TASKS, WORSE_QUESTION_TASK  # noqa: E402,F401
from selfrec_ft.errors import UserError
from selfrec_ft.prompts.chat import chat_format
from selfrec_ft.prompts.templates import (
    INDIVIDUAL_TASKS,
    PAIRWISE_TASKS,
    RenderedPrompt,
    TaskTemplate,
    chat_text,
    encode,
    fit_article,
    load_preset,
    render_prompt,
)
from selfrec_ft.scoring.controls_preference import worse_template
from selfrec_ft.scoring.engine import ScoreRequest
from selfrec_ft.scoring.spec import EvalSpec

ORDERS = ("forward", "backward")


def row_key(row: Mapping[str, Any]) -> tuple:
    """The unique key of a scoring row: (task, article_id, other or target source, order)."""
    return (row["task"], str(row["article_id"]), row.get("other_source", row.get("target_source")), row.get("order"))


@dataclass
class ScoringItem:
    """One prompt to score: ``meta`` holds the row fields (docs/ARCHITECTURE.md, "Scoring rows")
    except the results, which :func:`result_row` adds."""

    meta: dict[str, Any]
    request: ScoreRequest
    shortened: bool = False

    @property
    def key(self) -> tuple:
        return row_key(self.meta)


@dataclass
class ScoringItems:
    """The items in scoring order, with how many prompts were shortened and how many were skipped
    because a summary is missing; ``article_ids`` and ``others`` are the articles and the other
    sources they were built for."""

    items: list[ScoringItem] = field(default_factory=list)
    shortened: int = 0
    skipped_missing: int = 0
    article_ids: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    chat: dict[str, Any] | None = None  # the tokenizer's chat format (prompts.chat.ChatFormat.record())

    def __iter__(self) -> Iterator[ScoringItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def resolve_templates(preset: str, tasks: Sequence[str], templates: Mapping[str, str] | None = None
                      ) -> dict[str, TaskTemplate]:
    """Template per task: the task's own template, or a variant named in ``templates`` (task →
    template name) that measures the same task."""
    p = load_preset(preset)
    chosen = dict(templates or {})
    unknown = set(chosen) - set(TASKS)
    if unknown:
        raise UserError(f"templates given for unknown task(s) {', '.join(sorted(unknown))}; tasks: {', '.join(TASKS)}")
    out = {}
    for task in tasks:
        if task not in TASKS:
            raise UserError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
        tmpl = p.task(chosen.get(task, task))
        if tmpl.measures != task:
            raise UserError(f"template {tmpl.name!r} measures {tmpl.measures!r}, not {task!r}", p.source)
        if task in INDIVIDUAL_TASKS and tmpl.inverted:
            raise UserError(f"template {tmpl.name!r}: inverted individual templates are not supported", p.source)
        if not tmpl.options:
            raise UserError(f"template {tmpl.name!r} has no options to score", p.source)
        out[task] = tmpl
    return out


def _pairwise_values(tmpl: TaskTemplate, article: str, s1: str, s2: str, src1: str, src2: str,
                     author: str = "") -> dict[str, str]:
    values = {"article": article, "summary1": s1, "summary2": s2, "source1": src1, "source2": src2,
              "author": author}
    return {k: v for k, v in values.items() if k in tmpl.fields}


def familiarity_ids(tokenizer, tmpl: TaskTemplate, article: str, summary: str) -> tuple[list[int], list[int]]:
    """``(prompt_ids, span_ids)`` for scoring ``summary`` as the assistant's answer to the
    generation prompt ``tmpl``: the prompt is the chat template with the generation prompt on, the
    span the tokens of the assistant turn up to the end of the summary text (end-of-turn tokens
    excluded)."""
    text = summary.strip()
    if not text:
        raise UserError("cannot score the familiarity of an empty summary")
    messages = tmpl.messages(article=article) if "article" in tmpl.fields else tmpl.messages()
    prompt_text = chat_text(tokenizer, messages, True)
    full_text = chat_text(tokenizer, messages + [{"role": "assistant", "content": text}], False)
    end = full_text.rfind(text)
    if end < 0 or not full_text.startswith(prompt_text):
        name = getattr(tokenizer, "name_or_path", "")
        raise UserError(f"tokenizer {name!r}: the chat template does not render the assistant summary "
                        "after the generation prompt; familiarity cannot be scored")
    prompt = encode(tokenizer, prompt_text)
    full = encode(tokenizer, full_text[: end + len(text)])
    n = 0  # tokens may merge across the boundary: the span starts where the two tokenizations part
    while n < min(len(prompt), len(full)) and prompt[n] == full[n]:
        n += 1
    if n == 0 or n == len(full):
        raise UserError(f"template {tmpl.name!r}: the summary has no tokens of its own after the prompt")
    return full[:n], full[n:]


def familiarity_group(tokenizer, tmpl: TaskTemplate, article: str, summaries: Sequence[str],
                      max_length: int | None, group: Any = None) -> list[tuple[ScoreRequest, bool]]:
    """Familiarity requests (and whether the article was shortened) for several summaries of one
    article; all get the same article, shortened so that every prompt + summary fits ``max_length``."""
    def length_of(summary: str):
        return lambda v: sum(len(x) for x in familiarity_ids(tokenizer, tmpl, v["article"], summary))

    fitted = [fit_article({"article": article}, length_of(s), max_length, tmpl.name)[0]["article"]
              for s in summaries]
    art = min(fitted, key=len) if fitted else article
    out = []
    for s in summaries:
        prompt, span = familiarity_ids(tokenizer, tmpl, art, s)
        out.append((ScoreRequest(prompt_ids=prompt, span_ids=span, group=group), art != article))
    return out


def render_group(tokenizer, tmpl: TaskTemplate, values_list: Sequence[dict[str, str]],
                 max_length: int | None) -> list[RenderedPrompt]:
    """Render the prompts of one template and article; if any is too long for ``max_length``, every
    prompt of the group gets the same shortened article: the shortest that any of them needs (so all
    sources and both orders are judged on the same text, and the prompts keep their shared prefix).
    Summaries are never shortened."""
    rendered = [render_prompt(tokenizer, tmpl, None, **v) for v in values_list]
    if max_length is None or all(len(rp.input_ids) + 1 <= max_length for rp in rendered):
        return rendered

    if "article" not in tmpl.fields:
        raise UserError(f"a {tmpl.name!r} prompt is longer than max_length={max_length} and has no article "
                        "to shorten (summaries are never shortened)")

    def length_of(v: dict[str, str]) -> int:
        return len(render_prompt(tokenizer, tmpl, None, **v).input_ids) + 1

    articles = [fit_article(dict(v), length_of, max_length, tmpl.name)[0]["article"]
                for v, rp in zip(values_list, rendered) if len(rp.input_ids) + 1 > max_length]
    article = min(articles, key=len)  # all are word prefixes of the same article
    out = []
    for v in values_list:
        rp = render_prompt(tokenizer, tmpl, None, **{**v, "article": article})
        if len(rp.input_ids) + 1 > max_length:  # tokenization not monotone: cut this one on its own
            rp = render_prompt(tokenizer, tmpl, max_length, **{**v, "article": article})
        rp.shortened = article != v["article"] or rp.shortened
        out.append(rp)
    return out


def template_field_spans(template: str, content: str, known: Mapping[str, str]) -> dict[str, tuple[int, int]] | None:
    """Character spans ``[start, end)`` in ``content`` (``template`` formatted) of the fields in
    ``known`` (their exact values). Other fields (the article, which may have been shortened) match
    any text. None when ``content`` is not the template filled in."""
    parts, fields = [], []
    for literal, name, spec, conv in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is None:
            continue
        if name in known and not spec and not conv:
            parts.append(f"({re.escape(known[name])})")
        else:
            parts.append("(.*?)")
        fields.append(name)
    m = re.fullmatch("".join(parts), content, flags=re.DOTALL)
    if m is None:
        return None
    return {name: m.span(g) for g, name in enumerate(fields, start=1) if name in known}


def token_spans(offsets: Sequence[tuple[int, int]], n_tokens: int, char_spans: Mapping[str, tuple[int, int]]
                ) -> dict[str, tuple[int, int]] | None:
    """Token spans ``[first, last + 1)`` among the first ``n_tokens`` tokens (``offsets``: each token's
    character span in the text) of every character span: the tokens that overlap it, so a piece that
    merges a summary's first or last characters with the text around it belongs to the summary. None
    when a span has no token."""
    out = {}
    for name, (c0, c1) in char_spans.items():
        hit = [t for t, (s, e) in enumerate(offsets[:n_tokens]) if e > s and e > c0 and s < c1]
        if not hit:
            return None
        out[name] = (hit[0], hit[-1] + 1)
    return out


def summary_roles(meta: Mapping[str, Any], self_source: str) -> dict[str, str]:
    """Template field -> role of the summary it shows: ``self`` or ``other`` (pairwise prompts by
    their order, individual prompts by their target source)."""
    if "order" in meta:
        fwd = meta["order"] == "forward"
        return {"summary1": "self" if fwd else "other", "summary2": "other" if fwd else "self"}
    return {"summary": "self" if meta.get("target_source") == self_source else "other"}


def summary_token_spans(tokenizer, tmpl: TaskTemplate, rp: RenderedPrompt, values: Mapping[str, str],
                        roles: Mapping[str, str]) -> dict[str, tuple[int, int]] | None:
    """``{role: (start, end)}``: where each summary of a rendered prompt lies in its token ids.

    ``values`` are the prompt's template values (summaries never shortened; the article may have
    been), ``roles`` maps the summary fields (``summary1``, ...) to role names (``self`` / ``other``). The prompt is rendered again as the answer slot rendered it (the
    conversation with the first option as the answer), tokenized with character offsets, and each
    summary's characters located in the user turn by matching the template. None when the tokenizer
    gives no offsets (a slow tokenizer), the tokens differ from the prompt's, or the chat template
    rewrote the user text so that the summaries cannot be found."""
    content = rp.messages[-1]["content"]
    summaries = {f: values[f] for f in roles if f in values}
    fields = template_field_spans(tmpl.user, content, summaries)
    if fields is None:
        return None
    conv = rp.messages + [{"role": "assistant", "content": tmpl.assistant_prefix + tmpl.options[0]}]
    text = chat_text(tokenizer, conv, False)
    base = text.find(content)
    if base < 0:  # templates that strip the turn's text
        stripped = content.strip()
        found = text.find(stripped) if stripped else -1
        if found < 0:
            return None
        base = found - (len(content) - len(content.lstrip()))
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    n = len(rp.input_ids)
    if list(enc["input_ids"][:n]) != list(rp.input_ids):
        return None
    spans = token_spans(enc["offset_mapping"], n, {roles[f]: (base + a, base + b) for f, (a, b) in fields.items()})
    return spans


def build_items(corpus: Corpus, tokenizer, spec: EvalSpec, article_ids: Sequence[str], max_length: int | None = None,
                spans: bool = False) -> ScoringItems:
    """Scoring items of ``spec`` (self source, others, tasks, preset, templates, domain) on
    ``article_ids`` of ``corpus`` (the spec's corpus, loaded), rendered with ``tokenizer`` within
    ``max_length``; see the module docstring.

    ``others`` defaults to every corpus source but the self source. ``domain`` (``short`` /
    ``highlights``) is written into every row and picks the generation template for familiarity.
    :meth:`selfrec_ft.scoring.scorer.Scorer.items` is the usual way in. With ``spans`` every request
    carries its summaries' token spans (steering needs them; locating them renders and tokenizes each
    prompt a second time, so plain scoring leaves them ``None``).
    """
    self_source, others, domain = spec.self_source, spec.others, spec.domain
    tasks, templates, preset, familiarity = spec.scored_tasks, spec.template_map, spec.preset, spec.familiarity
    corpus.require_sources([self_source])
    others = [s for s in corpus.sources() if s != self_source] if others is None else list(others)
    corpus.require_sources(others)
    if self_source in others:
        raise UserError(f"the self source {self_source!r} cannot also be an other source")
    if len(set(others)) != len(others):
        raise UserError("an other source is listed twice")
    for aid in article_ids:
        if not corpus.has_article(aid):
            raise UserError(f"unknown article id {aid!r}", corpus.path)
    tmpls = resolve_templates(preset, tasks, templates)
    if spec.worse_question and "pairwise-preference" in tmpls and not tmpls["pairwise-preference"].inverted:
        tmpls[WORSE_QUESTION_TASK] = worse_template(preset)
    gen_tmpl = None
    if familiarity:
        if domain not in GENERATION_TEMPLATES:
            raise UserError(f"familiarity needs a domain ({' or '.join(GENERATION_TEMPLATES)}), got {domain!r}")
        gen_tmpl = load_preset(preset).task(GENERATION_TEMPLATES[domain])

    out = ScoringItems(article_ids=list(article_ids), others=list(others), chat=chat_format(tokenizer).record())
    base = {"self_source": self_source}
    if domain is not None:
        base["domain"] = domain

    def add(meta: dict[str, Any], request: ScoreRequest, shortened: bool, tmpl_name: str, task: str) -> None:
        meta = {**meta, **base}
        if tmpl_name != task:
            meta["template"] = tmpl_name
        meta["shortened"] = bool(shortened)
        out.items.append(ScoringItem(meta, request, bool(shortened)))
        out.shortened += bool(shortened)

    for aid in article_ids:
        article = corpus.article(aid).text
        own = corpus.summary(aid, self_source)
        for task, tmpl in tmpls.items():
            group = (tmpl.name, aid)
            jobs = []  # (meta, values) of this group's prompts
            if task in PAIRWISE_TASKS or task == WORSE_QUESTION_TASK:
                for other in others:
                    theirs = corpus.summary(aid, other)
                    if own is None or theirs is None:
                        out.skipped_missing += 2
                        continue
                    for order in ORDERS:
                        fwd = order == "forward"
                        values = _pairwise_values(tmpl, article, own if fwd else theirs, theirs if fwd else own,
                                                  self_source if fwd else other, other if fwd else self_source,
                                                  author=self_source)
                        self_option = tmpl.answer_option(1 if fwd else 2)  # the preset's own options (A/B...)
                        jobs.append(({"task": task, "article_id": aid, "other_source": other, "order": order,
                                      "self_option": self_option}, values))
            else:
                for target in [self_source, *others]:
                    text = corpus.summary(aid, target)
                    if text is None:
                        out.skipped_missing += 1
                        continue
                    values = {k: v for k, v in {"article": article, "summary": text}.items() if k in tmpl.fields}
                    jobs.append(({"task": task, "article_id": aid, "target_source": target}, values))
            for (meta, values), rp in zip(jobs, render_group(tokenizer, tmpl, [v for _, v in jobs], max_length)):
                where = summary_token_spans(tokenizer, tmpl, rp, values, summary_roles(meta, self_source)) \
                    if spans else None
                add(meta, ScoreRequest(rp.input_ids, rp.option_ids, group, summary_spans=where), rp.shortened,
                    tmpl.name, task)
        if gen_tmpl is not None:
            targets = []
            for target in [self_source, *others]:
                text = corpus.summary(aid, target)
                if text is None or not text.strip():
                    out.skipped_missing += 1
                else:
                    targets.append((target, text))
            made = familiarity_group(tokenizer, gen_tmpl, article, [t for _, t in targets], max_length,
                                     group=(gen_tmpl.name, aid))
            for (target, _), (req, shortened) in zip(targets, made):
                meta = {"task": FAMILIARITY, "article_id": aid, "target_source": target}
                add(meta, req, shortened, FAMILIARITY, FAMILIARITY)
    return out


def result_row(item: ScoringItem, result) -> dict[str, Any]:
    """The ``examples.jsonl`` row of a scored item (meta + ``probs``/``option_mass`` or
    ``mean_logprob``/``n_tokens``)."""
    row = dict(item.meta)
    if item.meta["task"] == FAMILIARITY:
        row["mean_logprob"] = result.mean_logprob
        row["n_tokens"] = result.n_span_tokens
    else:
        row["probs"] = result.probs
        row["option_mass"] = result.option_mass
    return row
