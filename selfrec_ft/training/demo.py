"""The CPU demo's evaluator, "other" model and corpora with their own summaries.

The demo is the toolkit's main job in miniature. On first use (then cached, see
:mod:`selfrec_ft.training.demo_assets`) it:

1. builds two different tiny Llama models and briefly trains each as a summariser on synthetic
   articles (:mod:`selfrec_ft.training.pretrain`): the **evaluator** learns the reference (``human``)
   style, the **other** model the ``lead`` style, so their summaries read as word-like text and
   differ the way two real models' do;
2. writes two synthetic corpora, ``short`` (in-domain, XSUM-like) and ``highlights``
   (out-of-domain, CNN-like), and has each model generate its own summaries for both
   (:mod:`selfrec_ft.generation`), as sources ``demo-evaluator`` and ``demo-other``.

The recipe then builds recognition pairs on the in-domain training articles and fine-tunes the
evaluator, with the evaluation hook measuring recognition and preference on held-out in-domain
articles and on the out-of-domain corpus.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ASSETS_VERSION = "v3"  # part of the cache directory names: bump it when the recipe of an asset changes
DEMO_SELF = "demo-evaluator"
DEMO_OTHER = "demo-other"
SEED = 0
PRETRAIN = {  # model name -> (tiny-model seed, summary source it imitates)
    "evaluator": (0, "human"),
    "other": (1, "lead"),
}
PRETRAIN_ARTICLES = 300
PRETRAIN_STEPS = 200
PRETRAIN_BATCH = 8
PRETRAIN_LR = 5e-3
MODEL_SIZE = "demo"  # 2 layers, hidden 128: writes fluent summaries of its style after ~200 steps
CORPUS_ARTICLES = {"short": 320, "highlights": 48}  # short: 256 to train on, the rest held out
MAX_NEW_TOKENS = {"short": 40, "highlights": 64}
SAMPLING_RETRIES = 3


def build_pretrained_model(name: str, out_dir: str | os.PathLike, steps: int = PRETRAIN_STEPS) -> Path:
    """Tiny model ``name`` (``evaluator`` or ``other``) trained briefly as a summariser into ``out_dir``."""
    from selfrec_ft.data.synth import synth_corpus
    from selfrec_ft.models.tiny import make_tiny_model
    from selfrec_ft.training.pretrain import pretrain_summariser

    seed, source = PRETRAIN[name]
    out = Path(out_dir)
    base = make_tiny_model(out / "_random", seed=seed, size=MODEL_SIZE)
    corpora = {"short": synth_corpus("short", PRETRAIN_ARTICLES, seed=100 + seed),
               "highlights": synth_corpus("highlights", PRETRAIN_ARTICLES, seed=200 + seed)}
    pretrain_summariser(base, corpora, source, out, max_steps=steps, learning_rate=PRETRAIN_LR,
                        batch_size=PRETRAIN_BATCH, seed=seed)
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(out / "_trainer", ignore_errors=True)
    return out


def build_generated_corpus(domain: str, out_dir: str | os.PathLike, models: dict[str, str | os.PathLike]) -> Path:
    """Synthetic ``domain`` corpus plus each model's own summaries (greedy) as extra sources.

    ``models`` maps a source name to a model directory.
    """
    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus
    from selfrec_ft.generation import generate_summaries

    out = write_corpus(synth_corpus(domain, CORPUS_ARTICLES[domain], seed=10 + SEED), out_dir)
    for source, model_dir in models.items():
        result = generate_summaries(str(model_dir), out, source, domain=domain, max_new_tokens=MAX_NEW_TOKENS[domain],
                                    batch_size=32, progress=False)
        # A tiny model sometimes ends its answer at once (greedy). Generation is resumable, so a few
        # seeded sampling passes fill in only the summaries that are still missing; any left missing
        # are skipped by the pairs and the scoring (and counted there).
        for attempt in range(SAMPLING_RETRIES):
            if not result.failures:
                break
            result = generate_summaries(str(model_dir), out, source, domain=domain,
                                        max_new_tokens=MAX_NEW_TOKENS[domain], batch_size=32, progress=False,
                                        sample=True, temperature=1.0, seed=SEED + attempt)
    return out
