"""Shared fixtures: offline hub, a tiny local Llama model built once per session, synthetic corpora."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny Llama-architecture model + Llama-2-style tokenizer saved with save_pretrained."""
    from selfrec_ft.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0, size="tiny")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Single-threaded torch for a module (``pytestmark = pytest.mark.usefixtures(...)``): on a
    shared, oversubscribed CPU two OpenMP threads make small matmuls hundreds of times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sharp_tiny_model(tiny_model_dir):
    """The tiny model (float32, CPU) with a sharpened output layer, so option probabilities are far
    from uniform; one per module (tests may hook or wrap it)."""
    import torch

    from selfrec_ft.models.loading import load_model

    m, _ = load_model(tiny_model_dir, dtype="float32", device="cpu")
    with torch.no_grad():
        m.lm_head.weight.mul_(25.0)
    return m


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="session")
def short_corpus_dir(tmp_path_factory):
    """A synthetic in-domain corpus on disk (human + lead sources)."""
    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus

    return write_corpus(synth_corpus("short", 12, seed=3), tmp_path_factory.mktemp("corpus") / "short")


@pytest.fixture
def textstat_without_cmudict(monkeypatch):
    """textstat itself, with its CMUdict lookup disabled so every word uses its pyphen fallback."""
    import textstat
    from textstat.backend.counts import _count_syllables
    from textstat.backend.metrics import (
        _flesch_kincaid_grade,
        _flesch_reading_ease,
        _syllables_per_word,
    )

    monkeypatch.setattr(_count_syllables, "get_cmudict", lambda lang: None)
    for fn in (_count_syllables.count_syllables, _syllables_per_word.syllables_per_word,
               _flesch_kincaid_grade.flesch_kincaid_grade, _flesch_reading_ease.flesch_reading_ease):
        fn.cache_clear()
    textstat.set_lang("en_US")
    yield textstat
    for fn in (_count_syllables.count_syllables, _syllables_per_word.syllables_per_word,
               _flesch_kincaid_grade.flesch_kincaid_grade, _flesch_reading_ease.flesch_reading_ease):
        fn.cache_clear()


@pytest.fixture(scope="session")
def chat_shape_model(tmp_path_factory):
    """``get(shape)``: the directory of a tiny model in one of ``tests/chat_shapes.py``'s tokenizer and
    chat-template shapes (llama3, qwen2.5, mistral, gemma), built once per session on first use."""
    from chat_shapes import make_shape_model

    built = {}

    def get(name: str):
        if name not in built:
            built[name] = make_shape_model(name, tmp_path_factory.mktemp(f"shape-{name}") / "model")
        return built[name]

    return get
