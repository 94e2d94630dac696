"""Load models: an evaluator for scoring/generation, or the model a trainer fine-tunes.

The one place that turns a dtype string into a torch dtype (:func:`resolve_dtype`), names a model's
dtype (:func:`dtype_name`) and finds a context length (:func:`context_length`).

* :func:`load_model` / :func:`load_tokenizer`: a base model directory, a LoRA adapter directory or a
  trainer checkpoint, in eval mode. A directory holding ``adapter_config.json`` is a PEFT adapter:
  its base model is loaded first (from ``base_model`` if given, else from the adapter's
  ``base_model_name_or_path``) and the tokenizer comes from the adapter directory when it has one
  (the SFT recipe saves it there).
* :func:`load_model_for_training`: the model SFT and DPO train (alignment-handbook's ``get_model``):
  dtype, attention implementation, revision, ``trust_remote_code``, the QLoRA quantisation config
  and, for a quantised model, one whole copy per process on that process's device.

Weights load with safetensors; ``trust_remote_code`` stays off unless the caller turns it on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from selfrec_ft.errors import UserError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "auto": "auto"}


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(path: str | os.PathLike) -> str:
    cfg = Path(path) / "adapter_config.json"
    try:
        base = json.loads(cfg.read_text())["base_model_name_or_path"]
    except (json.JSONDecodeError, KeyError):
        raise UserError('adapter config has no "base_model_name_or_path"', cfg) from None
    return base


def absolute_if_local(path: str) -> str:
    """An existing local path made absolute (so records and resumes do not depend on the working
    directory); anything else (a hub id) unchanged."""
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else path


def check_model_path(path: str | os.PathLike) -> None:
    """A local path that does not exist is a user error (``owner/name`` may be a hub id)."""
    if not Path(path).exists() and os.fspath(path).count("/") != 1:
        raise UserError("model path not found", path)


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


# ----------------------------------------------------------------------------- dtypes and configs


def resolve_dtype(dtype):
    """``"bfloat16"`` / ``"bf16"`` / a ``torch.dtype`` / ``"auto"`` -> what ``from_pretrained`` takes
    (None -> float32). An unknown name is a :class:`UserError`."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(DTYPES))}")
    name = DTYPES[dtype]
    return "auto" if name == "auto" else getattr(torch, name)


def dtype_name(model_or_dtype) -> str:
    """``"float32"``, ``"bfloat16"``, ... of a model (its floating-point weights) or a torch dtype."""
    import torch

    dtype = model_or_dtype
    if not isinstance(dtype, torch.dtype):
        dtype = getattr(model_or_dtype, "dtype", None)
        if not isinstance(dtype, torch.dtype):
            dtype = next((p.dtype for p in model_or_dtype.parameters() if p.is_floating_point()), torch.float32)
    return str(dtype).removeprefix("torch.")


def context_length(model_or_path, base_model: str | None = None) -> int | None:
    """The model's context length (``max_position_embeddings``) from its config, if it has one; for
    a path only the config is read (no weights)."""
    config = getattr(model_or_path, "config", None)
    if config is None and isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoConfig

        src = os.fspath(model_or_path)
        if is_adapter_dir(src):
            src = base_model or adapter_base(src)
        try:
            config = AutoConfig.from_pretrained(src)
        except (OSError, ValueError):
            return None
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    n = getattr(config, "max_position_embeddings", None)
    return n if isinstance(n, int) and 0 < n < 10_000_000 else None


# ----------------------------------------------------------------------------- evaluators


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = Path(path)
    src = path if _has_tokenizer(path) or not is_adapter_dir(path) else Path(adapter_base(path))
    tok = AutoTokenizer.from_pretrained(str(src), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:  # Llama-2 ships without one; <unk> is the usual choice
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def load_model(
    path: str | os.PathLike,
    dtype: str | None = "float32",
    device: str | None = None,
    base_model: str | None = None,
    trust_remote_code: bool = False,
    merge_adapter: bool = False,
):
    """Return ``(model, tokenizer)`` in eval mode on ``device`` (default: cuda if available)."""
    import torch
    from transformers import AutoModelForCausalLM

    check_model_path(path)
    path = Path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = dict(dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True)
    if is_adapter_dir(path):
        from peft import PeftModel

        base = base_model or adapter_base(path)
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        model = PeftModel.from_pretrained(model, str(path))
        if merge_adapter:
            model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model.to(device)
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------- training


def kbit_device_map(training_args) -> dict[str, Any]:
    """One whole quantized model per process, on this process's device (TRL 1.x dropped
    ``get_kbit_device_map``; with DDP, TRL itself would load with ``device_map=None``)."""
    device = training_args.device
    return {"": "cpu"} if device.type == "cpu" else {"": str(device)}


def training_model_kwargs(model_args, training_args) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments of the model to train (``model_init_kwargs`` of the
    training config win), with the dtype resolved and the quantisation config of QLoRA."""
    from trl import get_quantization_config

    trust = bool(getattr(training_args, "trust_remote_code", False) or getattr(model_args, "trust_remote_code", False))
    kwargs = dict(revision=model_args.model_revision, trust_remote_code=trust,
                  attn_implementation=model_args.attn_implementation, dtype=model_args.dtype, use_safetensors=True)
    kwargs.update(getattr(training_args, "model_init_kwargs", None) or {})
    kwargs["dtype"] = resolve_dtype(kwargs.get("dtype"))
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = kbit_device_map(training_args)
    return {k: v for k, v in kwargs.items() if v is not None}


def load_model_for_training(model_args, training_args):
    """The model ``model_args.model_name_or_path`` for a TRL trainer (SFT or DPO): full precision,
    or 4/8-bit for QLoRA (``load_in_4bit`` / ``load_in_8bit``) on this process's device. Not moved
    otherwise: the trainer places it."""
    from transformers import AutoModelForCausalLM

    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is not set")
    check_model_path(model_args.model_name_or_path)
    return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path,
                                                **training_model_kwargs(model_args, training_args))
