"""What a training run writes next to its adapter: the resolved config and the data manifest.

* ``resolved_config.yaml``: every field of the four argument dataclasses after parsing and
  ``demo://`` resolution, one section each (``data``, ``training``, ``model``, ``eval_hook``).
* ``training_manifest.json``: what was trained on — rows, articles (and their ids), counts per label,
  per other source and per (source, label), shortened articles, seeds, sha256 of the input files and
  of the training rows, the tokens the loss is on, library versions, and (when done) the run's
  global step and metrics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CONFIG_FILE = "resolved_config.yaml"
from selfrec_ft.defaults import MANIFEST_FILE  # noqa: E402
from selfrec_ft.files import sha256_file  # noqa: E402,F401  (callers use mf.sha256_file)
LIBRARIES = ("selfrec_ft", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
             "tokenizers")




def sha256_rows(dataset, columns=("prompt", "completion")) -> str:
    """Content hash of the training rows (order matters), independent of how they are stored."""
    h = hashlib.sha256()
    for row in dataset.select_columns(list(columns)):
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _plain(value: Any) -> Any:
    """JSON/YAML-safe copy (enums, paths, dtypes and other objects become strings)."""
    return json.loads(json.dumps(value, default=lambda o: getattr(o, "value", None) or str(o)))


def resolved_config(data_args, training_args, model_args, hook_args=None) -> dict[str, Any]:
    config = {
        "data": dataclasses.asdict(data_args),
        "training": training_args.to_dict(),
        "model": dataclasses.asdict(model_args),
    }
    if hook_args is not None:
        config["eval_hook"] = dataclasses.asdict(hook_args)
    return _plain(config)


def write_resolved_config(output_dir: str | os.PathLike, data_args, training_args, model_args,
                          hook_args=None) -> Path:
    import yaml

    from selfrec_ft.jsonl import atomic_write_text

    path = Path(output_dir) / CONFIG_FILE
    text = yaml.safe_dump(resolved_config(data_args, training_args, model_args, hook_args),
                          sort_keys=False, allow_unicode=True)
    atomic_write_text(path, "# Fully resolved arguments of this training run (selfrec_ft.training.sft).\n" + text)
    return path


def count_table(dataset) -> dict[str, dict[str, int]]:
    """``{other_source: {label: n}}`` of the training rows."""
    table: dict[str, Counter] = {}
    for src, lab in zip(dataset["other_source"], dataset["label"]):
        table.setdefault(src, Counter())[lab] += 1
    return {src: dict(sorted(c.items())) for src, c in table.items()}


def read_manifest(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(output_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
