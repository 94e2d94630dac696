"""The model side of attribute DPO: the policy, TRL's ``DPOTrainer`` without a reference copy, the
checks on the prepared rows, and a finished run's adapter.

* :func:`load_policy`: the pre-DPO evaluator (base, 4/8-bit base, or base + trainable SFT adapter),
  loaded with :func:`selfrec_ft.models.loading.load_model_for_training` — the one instance of the run;
* :func:`build_dpo_trainer`: ``ref_model=None``: TRL computes the reference log-probs with the adapter
  disabled (the base), or, starting from an SFT adapter, with a frozen copy of it (its ``ref``
  adapter); no second model is loaded;
* :func:`check_dpo_sequences`: refuse rows TRL would truncate;
* :func:`training_fingerprint`: what makes two trainings the same (resume / reuse).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfrec_ft.errors import UserError

logger = logging.getLogger(__name__)

TRL_COLUMNS = ("prompt", "chosen", "rejected")


def load_policy(model_args, training_args, sft_adapter: str | None = None):
    """The pre-DPO evaluator and its tokenizer, on this process's device; returns ``(model,
    tokenizer, mode)`` with mode ``lora`` or ``qlora``."""
    from selfrec_ft.models.loading import absolute_if_local, adapter_base, check_model_dir, is_adapter_dir
    from selfrec_ft.models.loading import load_model_for_training, load_tokenizer
    from selfrec_ft.training.lifecycle import training_mode

    if sft_adapter is not None:
        if not is_adapter_dir(sft_adapter):
            raise UserError("not a LoRA adapter directory (no adapter_config.json)", sft_adapter)
        check_model_dir(sft_adapter)
        if not model_args.model_name_or_path:
            model_args.model_name_or_path = adapter_base(sft_adapter)
    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is not set")
    model_args.model_name_or_path = absolute_if_local(model_args.model_name_or_path)
    if sft_adapter is not None:
        base = absolute_if_local(adapter_base(sft_adapter))
        if base != model_args.model_name_or_path:
            logger.warning("sft_adapter %s was trained on %s; loading it on %s", sft_adapter, base,
                           model_args.model_name_or_path)
    elif not model_args.use_peft:
        raise UserError("attribute DPO trains a LoRA adapter (the base with the adapter disabled is the reference, "
                        "so no second model is loaded): set use_peft: true, or give sft_adapter")
    if sft_adapter is None:
        mode = training_mode(model_args)
    else:  # the SFT adapter is trained further, on a quantized base if asked
        mode = "qlora" if (model_args.load_in_4bit or model_args.load_in_8bit) else "lora"
    model = load_model_for_training(model_args, training_args)
    if mode != "qlora":  # generation and scoring run before the trainer would place it
        model.to(training_args.device)
    tokenizer = load_tokenizer(sft_adapter or model_args.model_name_or_path,
                               trust_remote_code=training_args.trust_remote_code)
    if sft_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, sft_adapter, is_trainable=True)
    model.eval()
    return model, tokenizer, mode


@dataclass
class SequenceFacts:
    """Token lengths of the prepared DPO rows (as TRL tokenized them)."""

    lengths: list[int]  # prompt + longer completion per row
    chosen_tokens: list[int]
    rejected_tokens: list[int]
    ends_with_eos: float  # share of completions that end with EOS


def check_dpo_sequences(prepared, max_length: int | None, eos_ids: set[int]) -> SequenceFacts:
    """Refuse rows TRL would truncate (the end of a completion, EOS included, carries the length
    signal); report how many completions end with EOS."""
    lengths, ch, rj, eos = [], [], [], 0
    for p, c, r in zip(prepared["prompt_ids"], prepared["chosen_ids"], prepared["rejected_ids"]):
        lengths.append(len(p) + max(len(c), len(r)))
        ch.append(len(c))
        rj.append(len(r))
        eos += bool(c and c[-1] in eos_ids) + bool(r and r[-1] in eos_ids)
    if max_length is not None:
        too_long = [n for n in lengths if n > max_length]
        if too_long:
            raise UserError(f"{len(too_long)} of {len(lengths)} DPO pairs are longer than max_length={max_length} "
                            f"tokens (longest {max(too_long)}); TRL would cut their completions. Raise max_length or "
                            "lower generation_max_length (articles are shortened to fit)")
    return SequenceFacts(lengths, ch, rj, eos / (2 * len(lengths)) if lengths else 0.0)


def build_dpo_trainer(model, tokenizer, dataset, training_args, model_args, callbacks=()):
    """TRL ``DPOTrainer`` on the pairs' ``prompt``/``chosen``/``rejected`` columns with no reference
    model: a new LoRA adapter from ``model_args`` on a plain model, or the given adapter of a PEFT
    model trained further. Raises if TRL kept a reference model anyway."""
    from accelerate.utils import is_peft_model
    from trl import DPOTrainer, get_peft_config

    if getattr(training_args, "sync_ref_model", False):
        raise UserError("sync_ref_model needs a separate reference model; attribute DPO uses the adapter-disabled "
                        "base as the reference: set sync_ref_model: false")
    peft_config = None if is_peft_model(model) else get_peft_config(model_args)
    if peft_config is None and not is_peft_model(model):
        raise UserError("attribute DPO trains a LoRA adapter: set use_peft: true")
    trainer = DPOTrainer(model=model, ref_model=None, args=training_args,
                         train_dataset=dataset.select_columns(list(TRL_COLUMNS)), processing_class=tokenizer,
                         peft_config=peft_config, callbacks=list(callbacks))
    if trainer.ref_model is not None:
        raise RuntimeError("DPOTrainer loaded a separate reference model; expected the PEFT-disabled base")
    return trainer


def check_layout(training_args) -> None:
    if getattr(training_args, "fsdp", None) or getattr(training_args, "deepspeed", None):
        raise UserError("attribute DPO generates and scores with the trained model in-process, which needs whole "
                        "(unsharded) weights: use one process or DDP, not FSDP/DeepSpeed")


def attach_trained_adapter(model, out: Path):
    """The policy with the finished run's adapter (instead of training again)."""
    from accelerate.utils import is_peft_model
    from peft import PeftModel

    if is_peft_model(model):  # started from an SFT adapter: the saved adapter replaces it
        model.load_adapter(str(out), adapter_name="dpo")
        model.set_adapter("dpo")
    else:
        model = PeftModel.from_pretrained(model, str(out))
    model.eval()
    return model


def training_fingerprint(pairs_sha: str, dpo_args, training_args, model_args) -> dict[str, Any]:
    """What makes two trainings the same: the pairs and the settings that change the adapter."""
    keys_t = ("learning_rate", "beta", "loss_type", "max_steps", "num_train_epochs", "per_device_train_batch_size",
              "gradient_accumulation_steps", "seed", "lr_scheduler_type", "warmup_steps", "weight_decay",
              "max_length", "optim", "label_smoothing")
    keys_m = ("model_name_or_path", "use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
              "load_in_4bit", "load_in_8bit", "use_rslora", "use_dora")
    return json.loads(json.dumps({
        "training_data_sha256": pairs_sha,
        "sft_adapter": dpo_args.sft_adapter,
        "training": {k: getattr(training_args, k, None) for k in keys_t},
        "model": {k: getattr(model_args, k, None) for k in keys_m},
    }, default=str))
