"""The model inside one object: :class:`Scorer` (like lm-evaluation-harness's ``HFLM``).

A scorer holds a model, its tokenizer and how to run it (device, dtype, batch size, token budget,
max prompt length). Every scoring path builds one — ``selfrec eval``, the training hook,
eval-checkpoints, sweeps, the DPO shift report, the dissection judge — and scores through
:func:`~selfrec_ft.scoring.engine.score_requests`, the one function that batches and caches.

Built from a path, the tokenizer is loaded at once and the model on first use (a resumed evaluation
with nothing left to score never loads it), and :meth:`Scorer.close` frees it. Built from a loaded
model, the dtype is the model's and the caller keeps ownership: ``close`` only forgets it.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator, Sequence
from typing import Any

from selfrec_ft.defaults import DEFAULT_BATCH_SIZE
from selfrec_ft.errors import UserError
from selfrec_ft.scoring.engine import ScoreRequest, ScoreResult, score_requests
from selfrec_ft.scoring.items import ScoringItems, build_items, result_row
from selfrec_ft.scoring.spec import EvalSpec

_UNSET = object()


class Scorer:
    """``Scorer(path, dtype=..., device=..., ...)`` or ``Scorer(model, tokenizer, ...)``; see the
    module docstring. ``max_length`` (prompt + answer tokens; longer articles are shortened) defaults
    to the model's context length; ``batch_size`` / ``max_batch_tokens`` bound the engine's batches."""

    def __init__(self, model, tokenizer=None, *, dtype: str | None = "float32", device: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, max_batch_tokens: int | None = None,
                 max_length: int | None = None, base_model: str | None = None):
        from selfrec_ft.models.loading import check_model_dir, dtype_name, resolve_dtype

        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise UserError(f"max batch tokens must be at least 1, got {max_batch_tokens}")
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.layer_hooks = None  # steering / activation recording: see hooked()
        self.device, self.base_model = device, base_model
        self._max_length = _UNSET if max_length is None else max_length
        self._path: str | None = None
        if isinstance(model, (str, os.PathLike)):
            check_model_dir(model, tokenizer=tokenizer is None)
            self._path = os.fspath(model)
            resolve_dtype(dtype)  # an unknown dtype fails now, not after scoring started
            self._dtype = dtype or "float32"
            self._model = None
            if tokenizer is None:
                from selfrec_ft.models.loading import load_tokenizer

                tokenizer = load_tokenizer(self._path)
        else:
            if tokenizer is None:
                raise ValueError("a Scorer over a loaded model needs its tokenizer")
            self._model = model
            self._dtype = dtype_name(model)
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------------- the model

    @property
    def owns_model(self) -> bool:
        """Whether the scorer loaded (and frees) its model: built from a path."""
        return self._path is not None

    @property
    def model(self):
        """The model (loaded now if built from a path and not loaded yet)."""
        if self._model is None:
            if self._path is None:
                raise RuntimeError("this Scorer was closed")
            from selfrec_ft.models.loading import load_model

            self._model, _ = load_model(self._path, dtype=self._dtype, device=self.device, base_model=self.base_model)
        return self._model

    @property
    def name(self) -> str:
        """The path as given, or the loaded model's ``name_or_path``."""
        if self._path is not None:
            return self._path
        cfg = getattr(self._model, "config", None)
        return str(getattr(cfg, "_name_or_path", "") or type(self._model).__name__)

    @property
    def source(self) -> str:
        """Where the model comes from: a local path made absolute, else :attr:`name` (a hub id or the
        loaded model's name)."""
        if self._path is not None and os.path.exists(self._path):
            return os.path.abspath(self._path)
        return self.name

    @property
    def dtype(self) -> str:
        """``"float32"``, ``"bfloat16"``, ...: the dtype asked for, or the loaded model's."""
        from selfrec_ft.models.loading import DTYPES

        return DTYPES.get(self._dtype, self._dtype) if self._path is not None else self._dtype

    @property
    def max_length(self) -> int | None:
        """Token budget of a prompt + answer: as given, else the model's context length (for a path
        read from its config, without loading the weights)."""
        if self._max_length is _UNSET:
            from selfrec_ft.models.loading import context_length

            self._max_length = context_length(self._model if self._model is not None else self._path,
                                              self.base_model)
        return self._max_length

    def close(self) -> None:
        """Drop the model: freed (GPU memory included) when the scorer loaded it; forgotten when the
        caller passed it in (the caller still owns it). A path-built scorer reloads on next use."""
        owned = self.owns_model and self._model is not None
        self._model = None
        if owned:
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------------- scoring

    def items(self, spec: EvalSpec, corpus=None) -> ScoringItems:
        """The scoring items of ``spec``'s held-out articles, rendered once with this tokenizer and
        :attr:`max_length` (``corpus``: the spec's corpus already loaded); they record their
        ``article_ids`` and resolved ``others``."""
        corpus = corpus if corpus is not None else spec.load_corpus()
        article_ids = [a.id for a in corpus.heldout_articles(spec.skip_first, spec.limit)]
        if not article_ids:
            raise UserError(f"no articles to evaluate: the corpus has {len(corpus.articles)} and the first "
                            f"{spec.skip_first} are skipped", corpus.path)
        # summary token spans only for a hooked scorer (steering acts on them; they cost a second render)
        return build_items(corpus, self.tokenizer, spec, article_ids, self.max_length,
                           spans=self.layer_hooks is not None)

    @contextlib.contextmanager
    def hooked(self, layer_hooks) -> Iterator["Scorer"]:
        """``with scorer.hooked(hooks):`` every scoring call in the block runs with these layer hooks
        (:mod:`selfrec_ft.steering.hooks`: an intervention, or a recorder whose per-request data land in
        ``ScoreResult.recorded``); the scorer is unhooked again after the block."""
        before, self.layer_hooks = self.layer_hooks, layer_hooks
        try:
            yield self
        finally:
            self.layer_hooks = before

    def score(self, requests: Sequence[ScoreRequest], *, progress: bool = False, desc: str = "scoring"
              ) -> list[ScoreResult]:
        """Raw engine results of ``requests``, in order (with :attr:`layer_hooks` attached, if any)."""
        if not requests:
            return []
        return score_requests(self.model, list(requests), batch_size=self.batch_size,
                              max_batch_tokens=self.max_batch_tokens, progress=progress, desc=desc,
                              layer_hooks=self.layer_hooks)

    def score_items(self, items, *, progress: bool = False, desc: str = "scoring") -> list[dict[str, Any]]:
        """The ``examples.jsonl`` rows of ``items`` (docs/ARCHITECTURE.md, "Scoring rows"), in order."""
        items = list(items)
        results = self.score([it.request for it in items], progress=progress, desc=desc)
        return [result_row(it, r) for it, r in zip(items, results)]

    def __repr__(self) -> str:
        return f"Scorer({self.name!r}, dtype={self.dtype!r}, batch_size={self.batch_size})"
