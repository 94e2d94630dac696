"""What an evaluation measures: :class:`EvalSpec` (frozen, torch-free).

A spec names the corpus, the evaluator's own source and the sources it is compared with, the tasks,
the held-out articles (those after the first ``skip_first``, at most ``limit``), the prompt preset
and variant templates (``protocol``: where the preset came from, e.g. the model's training manifest,
:func:`~selfrec_ft.prompts.protocol.resolve_protocol`; the report states it), the domain label
written into the rows (it also picks the familiarity prompt), the bootstrap of the report, and an
optional perturbation of the summaries (``perturb``, seeded by ``perturb_seed``). It never says *with what* model: that is a
:class:`~selfrec_ft.scoring.scorer.Scorer`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from selfrec_ft.data.corpus import Corpus, load_corpus
from selfrec_ft.defaults import (
    DEFAULT_PRESET,
    DEFAULT_TASKS,
    FAMILIARITY,
    GENERATION_TEMPLATES,
    PERTURBATIONS,
    TASKS,
)
from selfrec_ft.errors import UserError
from selfrec_ft.prompts.protocol import Protocol


def _names(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """``"a, b"``, ``["a", "b,c"]`` -> ``("a", "b", "c")``; None stays None."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    return tuple(p.strip() for item in items for p in str(item).split(",") if p.strip())


def _templates(value: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
    pairs = value.items() if isinstance(value, Mapping) else (value or ())
    out = {}
    for pair in pairs:
        task, name = pair
        out[str(task)] = str(name)
    return tuple(sorted(out.items()))


def _int(name: str, value: Any, low: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise UserError(f"{name} must be at least {low}, got {value}")


@dataclass(frozen=True)
class EvalSpec:
    """What to measure; see the module docstring. Lists become tuples, comma strings are split,
    ``templates`` ({task: variant template}) is stored as a sorted tuple of pairs. Bad values raise
    :class:`~selfrec_ft.errors.UserError`."""

    corpus: Corpus | str | os.PathLike
    self_source: str
    others: tuple[str, ...] | None = None
    tasks: tuple[str, ...] = DEFAULT_TASKS
    skip_first: int = 0
    limit: int | None = None
    preset: str = DEFAULT_PRESET
    templates: tuple[tuple[str, str], ...] = ()
    domain: str | None = None
    seed: int = 0
    n_resamples: int = 2000
    protocol: Protocol | None = None
    worse_question: bool = False  # also ask the preference pairs "which is worse?" (WORSE_QUESTION_TASK rows)
    perturb: str | None = None  # a PERTURBATIONS name: summaries perturbed when the corpus loads
    perturb_seed: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "others", _names(self.others))
        set_(self, "tasks", _names(self.tasks) or ())
        set_(self, "templates", _templates(self.templates))
        if not isinstance(self.corpus, Corpus):
            set_(self, "corpus", os.fspath(self.corpus))
        if not self.self_source:
            raise UserError("no self source: name the evaluator's own summaries (a source of the corpus)")
        if not self.tasks:
            raise UserError("nothing to score: no task given")
        unknown = [t for t in self.tasks if t not in (*TASKS, FAMILIARITY)]
        if unknown:
            raise UserError(f"unknown task(s) {', '.join(unknown)}; use {', '.join((*TASKS, FAMILIARITY))}")
        if len(set(self.tasks)) != len(self.tasks):
            raise UserError(f"a task is listed twice: {', '.join(self.tasks)}")
        _int("skip_first", self.skip_first, 0)
        if self.limit is not None:
            _int("limit", self.limit, 1)
        _int("seed", self.seed, None)
        _int("n_resamples", self.n_resamples, 1)
        _int("perturb_seed", self.perturb_seed, None)
        if self.perturb is not None and self.perturb not in PERTURBATIONS:
            raise UserError(f"unknown perturbation {self.perturb!r}; use one of {', '.join(PERTURBATIONS)}")
        if FAMILIARITY in self.tasks and self.domain not in GENERATION_TEMPLATES:
            raise UserError(f"familiarity needs a domain ({' or '.join(GENERATION_TEMPLATES)}) to pick the "
                            f"generation prompt, got {self.domain!r}")

    def replace(self, **changes: Any) -> "EvalSpec":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def scored_tasks(self) -> tuple[str, ...]:
        """The option-probability tasks (familiarity left out)."""
        return tuple(t for t in self.tasks if t != FAMILIARITY)

    @property
    def familiarity(self) -> bool:
        return FAMILIARITY in self.tasks

    @property
    def template_map(self) -> dict[str, str]:
        return dict(self.templates)

    def load_corpus(self) -> Corpus:
        """The corpus (loaded from its directory unless the spec holds a loaded one); with
        ``perturb``, a copy whose self and other summaries are perturbed (scoring/perturb.py)."""
        corpus = self.corpus if isinstance(self.corpus, Corpus) else load_corpus(self.corpus)
        if self.perturb is None:
            return corpus
        from selfrec_ft.scoring.perturb import perturb_corpus

        corpus.require_sources([self.self_source, *(self.others or ())])
        shown = [self.self_source, *(self.others or [s for s in corpus.sources() if s != self.self_source])]
        return perturb_corpus(corpus, self.perturb, self.perturb_seed, shown)
