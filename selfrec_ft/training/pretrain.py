"""Brief supervised pre-training of a tiny model as a summariser (for the CPU demo).

A random tiny Llama writes token soup. The demo needs evaluators whose summaries read as word-like
text and differ in style from model to model, so each demo model is trained for a few steps with
TRL's ``SFTTrainer`` on synthetic articles, prompted with the preset's generation template and
completed with the summaries of one source (e.g. ``human`` for the evaluator, ``lead`` for the
"other" model). All parameters are trained; loss is on the summary only.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from selfrec_ft.data.corpus import Corpus
from selfrec_ft.prompts.templates import DEFAULT_PRESET, load_preset


def summarisation_dataset(corpora: dict[str, Corpus], source: str, preset: str = DEFAULT_PRESET):
    """Prompt-completion rows: domain generation prompt for each article -> its ``source`` summary."""
    import datasets

    prompts, completions = [], []
    for domain, corpus in corpora.items():
        tmpl = load_preset(preset).task(f"generate-{domain}")
        for art in corpus.articles:
            summary = corpus.summary(art.id, source)
            if summary is None:
                continue
            prompts.append(tmpl.messages(article=art.text))
            completions.append([{"role": "assistant", "content": summary}])
    return datasets.Dataset.from_dict({"prompt": prompts, "completion": completions})


def pretrain_summariser(
    model_dir: str | os.PathLike,
    corpora: dict[str, Corpus],
    source: str,
    out_dir: str | os.PathLike,
    max_steps: int = 200,
    learning_rate: float = 3e-3,
    batch_size: int = 16,
    seed: int = 0,
) -> Path:
    """Train ``model_dir`` to summarise like ``source`` (on the default preset's generation prompts)
    and save model + tokenizer to ``out_dir``."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from selfrec_ft.models.loading import load_tokenizer

    out = Path(out_dir)
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True)
    args = SFTConfig(
        output_dir=str(out / "_trainer"),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, max_steps // 20),
        weight_decay=0.0,
        logging_steps=max(1, max_steps // 5),
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,
        seed=seed,
        max_length=None,
        completion_only_loss=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        activation_checkpointing=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=summarisation_dataset(corpora, source),
                         processing_class=tokenizer)
    trainer.train()
    trainer.model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del trainer
    gc.collect()
    return out
