"""Pairwise "which one is yours?" datasets in TRL's conversational prompt-completion format.

For each of the first N articles and each other source there are two rows: *forward* (the self
summary in position 1) and *backward* (position 2) — ``2 × |others| × N`` rows. ``prompt`` holds the
system and user messages, ``completion`` one assistant message with the answer (after the preset's
training assistant prefix). Metadata columns: ``article_id``, ``other_source``, ``self_position``,
``label``. Evaluation uses only the held-out articles after the first N (:func:`heldout_article_ids`).

With a tokenizer the prompt messages are those its chat template takes
(:func:`~selfrec_ft.prompts.chat.chat_messages`): for a template that rejects or drops a system role
(Gemma, Mistral) the system text is folded into the user message, exactly as scoring and generation
render it, and :attr:`PairsStats.chat` records the decision. Without one the rows keep the preset's
system message (a model-independent file, e.g. ``selfrec pairs`` without ``--tokenizer``).

The completion is the template's option for the labelled position
(:meth:`~selfrec_ft.prompts.templates.TaskTemplate.answer_option`: a preset whose options are
``A``/``B`` trains on ``A``/``B``, the tokens evaluation and the training hook read); ``label`` holds
that option. The preset is checked as every command checks it when it loads; with a tokenizer the
options are also checked to be single tokens exactly as scoring checks them
(:func:`~selfrec_ft.prompts.templates.check_options`), otherwise ``PairsStats.options_checked`` is
False and only eval (or SFT, which has the tokenizer) will catch a multi-token option.

Under ``length``/``vowelcount``/``readability`` a pair whose two summaries tie on the property has no
label; with ``label_ties="drop"`` (default) its rows are left out and counted in
:attr:`PairsStats.ties_dropped` (``position1`` labels them "1", see :mod:`selfrec_ft.pairs.labels`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from selfrec_ft.data.corpus import ARTICLES_FILE, Corpus
from selfrec_ft.errors import UserError
from selfrec_ft.pairs.labels import (
    CONTROL_QUESTIONS,
    DEFAULT_LABEL_TIES,
    LABEL_TIES,
    MEASURED_STRATEGIES,
    STRATEGIES,
    assign_labels,
)
from selfrec_ft.prompts.chat import chat_format
from selfrec_ft.prompts.templates import DEFAULT_PRESET, check_options, fit_messages, load_preset


@dataclass
class PairsStats:
    """Counts of one build. ``rows`` are the rows kept (after dropping ties). ``label_ties`` is the
    tie policy; ``ties`` the rows tied on the label strategy's property (0 for strategies without
    one); ``ties_dropped`` how many of them were left out (all of them under ``drop``, none under
    ``position1``)."""

    rows: int = 0
    articles: int = 0
    shortened: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    skipped_missing: int = 0
    label_ties: str = DEFAULT_LABEL_TIES
    ties: int = 0
    ties_dropped: int = 0
    options: list[str] = field(default_factory=list)
    options_checked: bool = False
    chat: dict | None = None  # the tokenizer's chat format (ChatFormat.record()); None without a tokenizer

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def default_others(corpus: Corpus, self_source: str) -> list[str]:
    return [s for s in corpus.sources() if s != self_source]


def pair_rows(corpus: Corpus, self_source: str, others: list[str], article_ids: list[str]) -> tuple[list[dict], int]:
    """Both orders of every (article, other source) pair; pairs with a missing summary are skipped."""
    rows, skipped = [], 0
    for aid in article_ids:
        own = corpus.summary(aid, self_source)
        for other in others:
            theirs = corpus.summary(aid, other)
            if own is None or theirs is None:
                skipped += 1
                continue
            for pos in (1, 2):
                s1, s2 = (own, theirs) if pos == 1 else (theirs, own)
                rows.append({"article_id": aid, "other_source": other, "self_position": pos,
                             "summary1": s1, "summary2": s2, "source1": self_source if pos == 1 else other,
                             "source2": other if pos == 1 else self_source})
    return rows, skipped


def build_pairwise_dataset(
    corpus: Corpus,
    self_source: str,
    others: list[str] | None = None,
    n_articles: int = 10,
    labels: str = "self",
    flip_fraction: float | None = None,
    seed: int = 0,
    preset: str = DEFAULT_PRESET,
    question: str = "recognition",
    tokenizer=None,
    max_length: int | None = None,
    label_ties: str = DEFAULT_LABEL_TIES,
):
    """The training pairs as a ``datasets.Dataset`` plus :class:`PairsStats`.

    ``label_ties``: ``drop`` (default) leaves out the rows of pairs tied on a control strategy's
    property (counted in ``stats.ties_dropped``); ``position1`` labels them "1".

    ``question`` is ``recognition`` (the recognition prompt, whatever the labels) or ``own`` (a
    control strategy asks its own question: which is longer / has more vowels / is more readable).
    With a ``tokenizer`` the options are checked to be single tokens (as scoring checks them) and the
    prompts are folded as its chat template needs (see the module docstring); with ``max_length``
    too the article is shortened to fit (never a summary).
    """
    import datasets

    if labels not in STRATEGIES and labels != "flip":
        raise UserError(f"unknown label strategy {labels!r}; use one of {', '.join(STRATEGIES)}")
    if not corpus.articles:
        where = corpus.path / ARTICLES_FILE if corpus.path is not None else None
        raise UserError("the corpus is empty: it has no articles to build pairs from", where)
    if n_articles < 1 or n_articles > len(corpus.articles):
        raise UserError(f"n_articles must be between 1 and {len(corpus.articles)} (the corpus's articles), "
                        f"got {n_articles}")
    corpus.require_sources([self_source])
    others = list(others) if others else default_others(corpus, self_source)
    corpus.require_sources(others)
    if self_source in others:
        raise UserError(f"the self source {self_source!r} cannot also be an other source")
    if label_ties not in LABEL_TIES:
        raise UserError(f"label_ties must be one of {', '.join(LABEL_TIES)}, got {label_ties!r}")
    if question not in ("recognition", "own"):
        raise UserError(f"question must be 'recognition' or 'own', got {question!r}")
    template_name = CONTROL_QUESTIONS.get(labels, "pairwise-recognition") if question == "own" else "pairwise-recognition"
    template = load_preset(preset).task(template_name)
    fmt = None
    if tokenizer is not None:
        fmt = chat_format(tokenizer)
        check_options(tokenizer, template)

    ids = [a.id for a in corpus.train_articles(n_articles)]
    rows, skipped = pair_rows(corpus, self_source, others, ids)
    try:
        label_list = assign_labels(rows, "self" if labels == "flip" else labels, flip_fraction, seed,
                                   ties=label_ties)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    stats = PairsStats(articles=len(ids), skipped_missing=skipped, label_ties=label_ties,
                       options=list(template.options), options_checked=tokenizer is not None,
                       chat=fmt.record() if fmt is not None else None)
    if labels in MEASURED_STRATEGIES and flip_fraction is None:
        tied = [lab is None for lab in label_list]
        if label_ties == "position1":  # recompute which rows tied: they were labelled 1
            tied = [lab is None for lab in assign_labels(rows, labels, ties="drop")]
        stats.ties = sum(tied)
    stats.ties_dropped = sum(lab is None for lab in label_list)
    kept = [(row, label) for row, label in zip(rows, label_list) if label is not None]
    records = {k: [] for k in ("prompt", "completion", "article_id", "other_source", "self_position", "label")}
    for row, label in kept:
        values = {"article": corpus.article(row["article_id"]).text, "summary1": row["summary1"],
                  "summary2": row["summary2"], "source1": row["source1"], "source2": row["source2"]}
        values = {k: v for k, v in values.items() if k in template.fields}
        messages, shortened = fit_messages(tokenizer, template, max_length, **values)
        stats.shortened += shortened
        records["prompt"].append(fmt.messages(messages) if fmt is not None else messages)
        answer = template.answer_option(label)
        records["completion"].append([{"role": "assistant", "content": template.train_assistant_prefix + answer}])
        records["article_id"].append(row["article_id"])
        records["other_source"].append(row["other_source"])
        records["self_position"].append(row["self_position"])
        records["label"].append(answer)
    stats.rows = len(kept)
    stats.labels = dict(sorted(Counter(records["label"]).items()))
    stats.by_source = dict(Counter(records["other_source"]))
    return datasets.Dataset.from_dict(records), stats


def heldout_article_ids(corpus: Corpus, n_articles: int, limit: int | None = None) -> list[str]:
    """Ids of the evaluation articles: those after the first ``n_articles`` training articles."""
    return [a.id for a in corpus.heldout_articles(n_articles, limit)]
