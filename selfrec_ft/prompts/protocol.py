"""The prompt protocol a model was trained under, and the one every command on it uses.

A model scored with other prompts than it was trained with measures the prompt change, not the
model (a model trained with ``compact`` reads 0.47 held-out recognition under ``panickssery2024``
and 0.98 under its own preset). So the training run's ``training_manifest.json`` records the
protocol (:func:`training_protocol`, the manifest's ``protocol`` key: preset name, the preset file's
content when it was a file, the trained template, the hash of the templates), and every command
that takes a model resolves its preset with :func:`resolve_protocol`:

* an explicit flag wins; when its templates differ from the manifest's, :attr:`Protocol.warning` is
  one line saying so, and the report records both (:func:`protocol_record`);
* else the manifest's preset: ``prompts: preset compact, from outputs/demo/training_manifest.json``;
* a model without a manifest (a base model, a hub id) keeps the command's default, silently (the
  report still states the protocol).

The manifest is the model directory's, or that of the run a ``checkpoint-N`` belongs to
(:func:`find_manifest`). A preset given as a YAML file is copied into the run directory
(:data:`PRESET_COPY`) so the protocol travels with the model. ``templates_sha256`` is the sha256 of
the preset's templates (every task's system and user text, options, assistant prefixes; the variant
templates chosen per task), independent of the preset's name or file path. Torch-free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfrec_ft.defaults import DEFAULT_PRESET, MANIFEST_FILE
from selfrec_ft.errors import UserError
from selfrec_ft.files import read_text

PRESET_COPY = "prompt_preset.yaml"
"""The copy of a preset file in the run directory (next to ``training_manifest.json``)."""


def find_manifest(model: str | os.PathLike) -> Path | None:
    """The training manifest of a model directory (an adapter or a full model written by the SFT or
    DPO recipe) or of the run a ``checkpoint-N`` belongs to; None for anything else."""
    path = Path(model).expanduser()
    for cand in (path / MANIFEST_FILE, path.parent / MANIFEST_FILE):
        if cand.is_file() and (cand.parent == path or path.name.startswith("checkpoint-")):
            return cand
    return None


def read_manifest_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"unreadable training manifest ({exc})", path) from None
    if not isinstance(data, dict):
        raise UserError("a training manifest must be a JSON object", path)
    return data


def is_preset_file(ref: str) -> bool:
    """Whether a preset reference names a YAML file (else a packaged preset), as ``load_preset`` reads it."""
    return ref.endswith((".yaml", ".yml")) or os.sep in ref


def templates_sha256(preset: str, templates: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> str:
    """sha256 of the preset's templates as rendered into prompts (see the module docstring)."""
    from selfrec_ft.prompts.templates import load_preset

    p = load_preset(preset)
    variants = dict(templates.items() if isinstance(templates, Mapping) else templates)
    blob = json.dumps({"tasks": {name: dataclasses.asdict(t) for name, t in sorted(p.tasks.items())},
                       "variants": dict(sorted(variants.items()))}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def preset_name(preset: str) -> str:
    from selfrec_ft.prompts.templates import load_preset

    return load_preset(preset).name


def training_protocol(preset: str, template: str | None = None) -> dict[str, Any]:
    """The manifest's ``protocol`` record for a run trained with ``preset`` (its trained template:
    ``template``). A preset file's text is kept, and :func:`copy_preset_file` writes it into the run."""
    record: dict[str, Any] = {"preset": preset_name(preset), "preset_ref": preset,
                              "templates_sha256": templates_sha256(preset), "template": template}
    if is_preset_file(preset):
        record.update(preset_file=PRESET_COPY, preset_text=read_text(Path(preset), "prompt preset"))
    return record


def copy_preset_file(run_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Write the run's copy of its preset file (nothing for a packaged preset)."""
    from selfrec_ft.jsonl import atomic_write_text

    proto = manifest.get("protocol") or {}
    if proto.get("preset_file") and isinstance(proto.get("preset_text"), str):
        atomic_write_text(Path(run_dir) / proto["preset_file"], proto["preset_text"])


def manifest_preset(manifest: Mapping[str, Any], manifest_path: Path) -> str | None:
    """The preset reference to score a run's models with, from its manifest (None: it names none).
    A preset file is read from the run's copy; a manifest written before the copy existed names the
    original file, which must still be there."""
    proto = manifest.get("protocol") or {}
    if proto.get("preset_file"):
        copy = manifest_path.parent / str(proto["preset_file"])
        if copy.is_file():
            return str(copy)
    ref = proto.get("preset_ref") or manifest.get("prompt_preset")
    if not ref:
        return None
    ref = str(ref)
    if is_preset_file(ref) and not Path(ref).is_file():
        raise UserError(f"the model was trained with the prompt preset file {ref}, which is gone (and the run "
                        f"has no copy, {PRESET_COPY}); pass --prompt-preset", manifest_path)
    return ref


@dataclass(frozen=True)
class Protocol:
    """Where the preset an evaluation uses came from. ``preset``: the reference to score with;
    ``origin``: ``"manifest"``, ``"flag"`` or ``"default"``; ``manifest``: the training manifest's
    path (None without one); ``trained``: the manifest's preset reference (None without one)."""

    preset: str
    origin: str = "default"
    manifest: str | None = None
    trained: str | None = None
    flag: str = "--prompt-preset"

    @property
    def differs(self) -> bool:
        """An explicit preset whose templates are not those the model was trained with."""
        return (self.trained is not None and self.origin == "flag"
                and templates_sha256(self.preset) != templates_sha256(self.trained))

    @property
    def line(self) -> str:
        """The one line every command prints: ``prompts: preset compact, from .../training_manifest.json``."""
        name = preset_name(self.preset)
        if self.origin == "manifest":
            return f"prompts: preset {name}, from {self.manifest}"
        if self.origin == "flag":
            return f"prompts: preset {name}, from {self.flag}"
        if self.manifest:
            return f"prompts: preset {name} (the default; {self.manifest} names no preset)"
        return f"prompts: preset {name} (the default; the model has no training manifest)"

    @property
    def warning(self) -> str | None:
        if not self.differs:
            return None
        return (f"warning: {self.flag} {preset_name(self.preset)} differs from the preset the model was trained with "
                f"({preset_name(self.trained)}, {self.manifest}); its numbers measure other prompts than it learned")

    @property
    def quiet(self) -> bool:
        """Nothing to say: a model without a training manifest, scored as asked (today's defaults)."""
        return self.manifest is None

    def announce(self) -> None:
        """Print :attr:`line` (and :attr:`warning`) on stderr, for a model with a training manifest."""
        import sys

        if self.quiet:
            return
        print(self.line, file=sys.stderr, flush=True)
        if self.warning:
            print(self.warning, file=sys.stderr, flush=True)


def resolve_protocol(model: str | os.PathLike | None, flag: str | None, *, default: str = DEFAULT_PRESET,
                     flag_name: str = "--prompt-preset") -> Protocol:
    """The protocol for ``model`` (see the module docstring); ``flag``: the preset given explicitly."""
    path = find_manifest(model) if model is not None else None
    trained = manifest_preset(read_manifest_file(path), path) if path is not None else None
    where = str(path) if path is not None else None
    if flag is not None:
        return Protocol(flag, "flag", where if trained else None, trained, flag_name)
    if trained is not None:
        return Protocol(trained, "manifest", where, trained, flag_name)
    return Protocol(default, "default", where, None, flag_name)


def protocol_record(preset: str, templates: Mapping[str, str] | Sequence[tuple[str, str]] = (),
                    protocol: Protocol | None = None) -> dict[str, Any]:
    """The ``protocol`` block of a report: ``{preset, templates_sha256, source}`` and, when the model
    was trained under another protocol, ``trained: {preset, templates_sha256, manifest}``."""
    record: dict[str, Any] = {"preset": preset_name(preset), "templates_sha256": templates_sha256(preset, templates)}
    if protocol is None or protocol.origin == "default":
        record["source"] = "default" if protocol is not None else "given"
    else:
        record["source"] = protocol.manifest if protocol.origin == "manifest" else protocol.flag
    if protocol is not None and protocol.differs:
        record["trained"] = {"preset": preset_name(protocol.trained), "templates_sha256": templates_sha256(protocol.trained),
                             "manifest": protocol.manifest}
    return record


def protocol_markdown(record: Mapping[str, Any]) -> str:
    """One markdown line stating a report's protocol (and the training one when it differs)."""
    text = (f"Protocol: preset `{record.get('preset')}`, templates sha256 `{str(record.get('templates_sha256'))[:12]}`"
            f" (from {record.get('source')}).")
    trained = record.get("trained")
    if trained:
        text += (f" **The model was trained with preset `{trained.get('preset')}` (templates sha256 "
                 f"`{str(trained.get('templates_sha256'))[:12]}`, {trained.get('manifest')}): these numbers measure "
                 "other prompts than it learned.**")
    return text + "\n"


def report_protocol(examples: str | os.PathLike) -> dict[str, Any] | None:
    """The protocol of the evaluation an ``examples.jsonl`` belongs to: its ``report.json``'s
    ``protocol`` block, else one computed from its ``eval_config.json`` (preset and templates);
    None when neither says (e.g. P1's files)."""
    folder = Path(examples).parent
    for name in ("report.json", "eval_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("protocol"), dict) and data["protocol"].get("templates_sha256"):
            return dict(data["protocol"])
        if name == "eval_config.json" and isinstance(data.get("preset"), str):
            try:
                return {**protocol_record(data["preset"], data.get("templates") or {}), "source": str(path)}
            except UserError:
                return {"preset": data["preset"], "templates_sha256": None, "source": str(path)}
    return None


def protocols_differ_note(paths: Sequence[str | os.PathLike]) -> str | None:
    """One line when the evaluations of ``paths`` used different protocols (printed before the
    numbers of a report pooling or comparing them), else None."""
    known = {str(p): report_protocol(p) for p in paths}
    known = {p: r for p, r in known.items() if r}
    keys = {(r.get("preset"), r.get("templates_sha256")) for r in known.values()}
    if len(keys) < 2:
        return None
    parts = [f"{p}: preset {r.get('preset')} (templates sha256 {str(r.get('templates_sha256'))[:12]})"
             for p, r in known.items()]
    return "note: these inputs were scored under different prompt protocols, so their numbers are not comparable: " \
        + "; ".join(parts)
