"""What every training run (SFT, attribute DPO) does around ``trainer.train()``.

* :func:`training_mode`: ``lora``, ``qlora`` or ``full`` (QLoRA needs ``use_peft``);
* :func:`resolve_resume`: the checkpoint to resume from (``resume_from_checkpoint``: unset/true ->
  the last one in ``output_dir``, false -> none, a path -> that checkpoint);
* :func:`cpu_precision`: TRL configs default to bf16 mixed precision, which on CPU is slow and
  changes the numerics: turned off there, with a note for the manifest (kept over bf16 weights);
* :func:`start_run`: ``resolved_config.yaml`` and ``training_manifest.json`` (status ``training``),
  written by the main process before training;
* :func:`train_and_finish`: train (resuming), save the adapter/model and trainer state, mark the
  manifest ``done`` with the global step and train metrics, and write the training report from the
  evaluation hook's records (:mod:`selfrec_ft.training.report`).

The teardown that follows (free the trainer, then the process group) is
:func:`selfrec_ft.training.teardown.release`.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

from selfrec_ft.errors import UserError

logger = logging.getLogger(__name__)

RESUME_OFF = {"false", "no", "none", "never", "off", "0"}
RESUME_AUTO = {"true", "yes", "auto", "last", "on", "1"}


def training_mode(model_args) -> str:
    """``qlora`` (a quantised base + LoRA), ``lora`` or ``full`` from ``model_args``."""
    if model_args.load_in_4bit or model_args.load_in_8bit:
        if not model_args.use_peft:
            raise UserError("load_in_4bit / load_in_8bit quantize the frozen base model: they need use_peft: true "
                            "(QLoRA trains a LoRA adapter on top)")
        return "qlora"
    return "lora" if model_args.use_peft else "full"


def resolve_resume(training_args) -> str | None:
    """The checkpoint to resume from: ``resume_from_checkpoint`` unset/true -> the last one in
    ``output_dir`` (if any); false/no/none -> start fresh; anything else is a checkpoint path."""
    from transformers.trainer_utils import get_last_checkpoint

    value = training_args.resume_from_checkpoint
    text = "auto" if value is None else str(value).strip().lower()
    if text in RESUME_OFF:
        return None
    if text in RESUME_AUTO:
        out = training_args.output_dir
        return get_last_checkpoint(out) if out and os.path.isdir(out) else None
    if not Path(value).is_dir():
        raise UserError("checkpoint to resume from not found", value)
    return str(value)


def cpu_precision(training_args, model_dtype: str | None = None) -> str | None:
    """Turn bf16/fp16 mixed precision off when training runs on CPU; returns the note (or None).

    ``bf16: true`` over bfloat16 weights (``model_dtype`` ``"bfloat16"``) is kept: torch runs bf16
    autocast on CPU, and it is what a GPU run with the same config computes (TRL's default ``bf16``
    over float32 weights is what turns off)."""
    if (training_args.device.type == "cpu" and training_args.bf16 and not training_args.fp16
            and str(model_dtype).removeprefix("torch.") == "bfloat16"):
        return None
    if training_args.device.type == "cpu" and (training_args.bf16 or training_args.fp16
                                               or training_args.mixed_precision not in (None, "no")):
        training_args.bf16 = training_args.fp16 = False
        training_args.mixed_precision = "no"
        note = "bf16/fp16 mixed precision turned off: training runs on CPU"
        logger.warning(note)
        return note
    return None


def check_output_dir(training_args) -> Path:
    """``output_dir`` is set and can be written (nothing is created yet): a file in the way, a
    read-only file system or no permission is one line before the model loads, not a traceback at
    the first checkpoint."""
    from selfrec_ft.files import writable_dir

    if not training_args.output_dir:
        raise UserError("output_dir is not set")
    return writable_dir(training_args.output_dir, create=False)


def resumed_step(resume: str | None) -> int:
    """The global step of the checkpoint ``resume`` (0 when not resuming)."""
    import json

    if not resume:
        return 0
    try:
        return int(json.loads((Path(resume) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError("not a trainer checkpoint (no readable trainer_state.json with a global_step)",
                        resume) from None


def start_run(out: Path, manifest: dict[str, Any], args: tuple, state) -> None:
    """Write ``resolved_config.yaml`` (``args`` = the recipe's (data or DPO, training, model, hook)
    arguments), the run's copy of a preset file (its protocol travels with it) and the manifest from
    the main process, after every process got here."""
    from selfrec_ft.jsonl import atomic_write_json
    from selfrec_ft.prompts.protocol import copy_preset_file
    from selfrec_ft.training import manifest as mf

    state.wait_for_everyone()
    if state.is_main_process:
        mf.write_resolved_config(out, *args)
        copy_preset_file(out, manifest)
        atomic_write_json(out / mf.MANIFEST_FILE, manifest)


def train_and_finish(trainer, out: Path, manifest: dict[str, Any], resume: str | None, state
                     ) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
    """Train (from ``resume`` if set), save, mark ``manifest`` done and write the training report;
    returns ``(global_step, train_metrics, report)`` (the report: on the main process, when the
    evaluation hook ran)."""
    from selfrec_ft.jsonl import atomic_write_json
    from selfrec_ft.training import manifest as mf
    from selfrec_ft.training.report import write_training_report

    from selfrec_ft.files import write_error

    first = resumed_step(resume)
    try:
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(out))
        trainer.save_state()
    except OSError as exc:  # a full or read-only disk while saving: one line; saved checkpoints stay
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        raise write_error(exc, out, "the checkpoints saved so far are kept: free space and rerun to resume") from None
    metrics, step = dict(result.metrics), int(trainer.state.global_step)
    # train_loss and the speed metrics cover the steps this call trained (transformers counts from the
    # checkpoint it resumed from); the manifest says which
    cover = f"steps {first + 1}-{step}" + (f" (resumed from {Path(resume).name}; steps 1-{first} were trained "
                                           "by an earlier call)" if first else "")
    manifest.update(status="done", finished=mf.now_iso(), global_step=step, train_metrics=metrics,
                    train_metrics_steps=cover, resumed_from=resume, output=str(out.resolve()))
    report = None
    if state.is_main_process:
        atomic_write_json(out / mf.MANIFEST_FILE, manifest)
        report = write_training_report(out)  # from the evaluation hook's records, when it ran
    state.wait_for_everyone()
    return step, metrics, report
