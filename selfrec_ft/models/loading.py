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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selfrec_ft.errors import UserError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "auto": "auto"}


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(path: str | os.PathLike) -> str:
    cfg = Path(path) / "adapter_config.json"
    base = _json_config(cfg, "adapter config").get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise UserError('adapter config has no "base_model_name_or_path"', cfg)
    return base


def absolute_if_local(path: str) -> str:
    """An existing local path made absolute (so records and resumes do not depend on the working
    directory); anything else (a hub id) unchanged."""
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else path


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
"""Files one of which a local tokenizer needs (``tokenizer_config.json`` alone is not a tokenizer)."""
NO_TOKENIZER = (f"no tokenizer files in the model directory (expected one of {', '.join(TOKENIZER_FILES)}; "
                "save them there with tokenizer.save_pretrained)")
CONVERT_HINT = ("convert it to safetensors once (pickle weights are not loaded: they can run code): python -c "
                "\"from transformers import AutoModelForCausalLM as M; M.from_pretrained('{0}', "
                "use_safetensors=False).save_pretrained('{0}')\"")


def _is_hub_id(path: str | os.PathLike) -> bool:
    text = os.fspath(path)
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).exists()


@contextmanager
def hub_errors(path: str | os.PathLike):
    """An ``OSError`` of ``from_pretrained`` for a hub id (``owner/name`` that is no local path: a
    typo'd directory, or a model the offline hub cache lacks) becomes one :class:`UserError`."""
    try:
        yield
    except OSError as exc:
        if not _is_hub_id(path):
            raise
        reason = " ".join(str(exc).split()).split(". ")[0].rstrip(".")[:200]
        raise UserError(f"no such local directory, and the hub cannot provide it as a model id ({reason})",
                        path) from None


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in TOKENIZER_FILES)


def _json_config(path: Path, what: str) -> dict:
    from selfrec_ft.files import read_text

    try:
        data = json.loads(read_text(path, what))
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} is not valid JSON ({exc.msg})", path, exc.lineno) from None
    if not isinstance(data, dict):
        raise UserError(f"{what} must be a JSON object", path)
    return data


def _check_local_dir(p: Path, path) -> None:
    if not p.exists():
        raise UserError("model path not found", path)
    if not p.is_dir():
        if p.suffix.lower() == ".gguf":
            raise UserError(f"a GGUF file, not a model directory: convert it once with selfrec model import-gguf "
                            f"{path} --out DIR, then pass DIR", path)
        raise UserError("not a model directory (a file; expected a directory with config.json, "
                        "model.safetensors and the tokenizer)", path)
    if not any(p.iterdir()):
        raise UserError("the model directory is empty (expected config.json, model.safetensors and the "
                        "tokenizer)", path)


def check_model_dir(path: str | os.PathLike, tokenizer: bool = True) -> None:
    """A local model or LoRA adapter directory holds what loading it needs, else one
    :class:`UserError` saying what is missing: the path, ``config.json`` (valid JSON with a
    ``model_type``) or ``adapter_config.json``, safetensors weights (``pytorch_model.bin`` alone: how
    to convert it) and, with ``tokenizer``, the tokenizer files (an adapter's may come from its base).
    A hub id (``owner/name`` that is not a local path) is left to the hub."""
    if _is_hub_id(path):
        return
    p = Path(path).expanduser()
    _check_local_dir(p, path)
    if is_adapter_dir(p):
        cfg = _json_config(p / "adapter_config.json", "adapter config")
        if not (p / "adapter_model.safetensors").is_file():
            if (p / "adapter_model.bin").is_file():
                raise UserError("the adapter has only adapter_model.bin (pickle weights are not loaded: they can "
                                "run code): convert it to safetensors once: load it with peft's "
                                "PeftModel.from_pretrained and save it with save_pretrained", path)
            raise UserError("the adapter directory has no adapter_model.safetensors", path)
        base = cfg.get("base_model_name_or_path")
        if tokenizer and not _has_tokenizer(p) and base and not _is_hub_id(base) and Path(base).is_dir() \
                and not _has_tokenizer(Path(base)):
            raise UserError(f"no tokenizer in the adapter directory or its base model {base} (expected one of "
                            f"{', '.join(TOKENIZER_FILES)})", path)
        return
    if not (p / "config.json").is_file():
        raise UserError("no config.json: not a model directory (a training run's output is its checkpoint-* "
                        "or the output directory itself once training finished)", path)
    if "model_type" not in _json_config(p / "config.json", "model config"):
        raise UserError('the model config has no "model_type"', p / "config.json")
    weights = [f.name for f in p.iterdir() if f.name.endswith(".safetensors") or f.name == "model.safetensors.index.json"]
    if not weights:
        if any(p.glob("pytorch_model*.bin")):
            raise UserError("the model has only pytorch_model.bin: " + CONVERT_HINT.format(p), path)
        raise UserError("no model weights (model.safetensors) in the model directory", path)
    if tokenizer and not _has_tokenizer(p):
        raise UserError(NO_TOKENIZER, path)


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

    if not _is_hub_id(path):
        _check_local_dir(Path(path).expanduser(), path)
    path = Path(path)
    src = path if _has_tokenizer(path) or not is_adapter_dir(path) else Path(adapter_base(path))
    if not _is_hub_id(src):
        if (Path(src) / "config.json").is_file():
            _json_config(Path(src) / "config.json", "model config")  # AutoTokenizer reads it too
        if not _has_tokenizer(Path(src)):
            raise UserError(NO_TOKENIZER, src)
    with hub_errors(src):
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

    check_model_dir(path)
    path = Path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = dict(dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True)
    if is_adapter_dir(path):
        from peft import PeftModel

        base = base_model or adapter_base(path)
        check_model_dir(base, tokenizer=False)
        with hub_errors(base):
            model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        model = PeftModel.from_pretrained(model, str(path))
        if merge_adapter:
            model = model.merge_and_unload()
    else:
        with hub_errors(path):
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
    check_model_dir(model_args.model_name_or_path)
    with hub_errors(model_args.model_name_or_path):
        return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path,
                                                    **training_model_kwargs(model_args, training_args))
