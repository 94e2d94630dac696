"""Load an evaluator: a base model directory, a LoRA adapter directory or a trainer checkpoint.

Weights load with safetensors; ``trust_remote_code`` stays off unless the caller turns it on. A
directory holding ``adapter_config.json`` is a PEFT adapter: its base model is loaded first (from
``base_model`` if given, else from the adapter's ``base_model_name_or_path``) and the tokenizer comes
from the adapter directory when it has one (the SFT recipe saves it there).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def resolve_dtype(dtype: str | None):
    import torch

    if dtype is None:
        return torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(DTYPES))}")
    name = DTYPES[dtype]
    return "auto" if name == "auto" else getattr(torch, name)


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

    path = Path(path)
    if not path.exists() and not str(path).count("/") == 1:
        raise UserError("model path not found", path)
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
