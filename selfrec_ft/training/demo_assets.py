"""``demo://`` references: a tiny model and synthetic corpora built on first use into a cache.

A config may name ``model_name_or_path: demo://tiny`` (or ``demo://small``) and ``corpus:
demo://short`` (or ``demo://highlights``); :func:`resolve_demo_refs` replaces them by directories it
builds once (deterministic, no network) under the demo cache: ``demo_cache`` if given, else
``$SELFREC_DEMO_CACHE``, else ``~/.cache/selfrec_ft/demo``. Builds go to a temporary directory that
is renamed into place, so concurrent processes never see half-written assets; in a distributed run
the main process builds first.

A demo corpus holds ``DEMO_CORPUS_ARTICLES`` synthetic articles with sources ``human`` and ``lead``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from selfrec_ft.errors import UserError

SCHEME = "demo://"
DEMO_MODELS = ("tiny", "small", "evaluator", "other")
DEMO_CORPORA = ("short", "highlights", "in_domain", "out_of_domain")
# generated corpora: synthetic domain + the demo models' own summaries (selfrec_ft.training.demo)
GENERATED_CORPORA = {"in_domain": "short", "out_of_domain": "highlights"}
DEMO_CORPUS_ARTICLES = 64
DEMO_SEED = 0
_DONE = ".complete"


def is_demo_ref(value) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


def demo_cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("SELFREC_DEMO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "selfrec_ft" / "demo"


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Build into a temporary sibling and rename it to ``target`` (kept if another process won)."""
    if (target / _DONE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        (tmp / _DONE).write_text("ok\n")
        if target.exists() and not (target / _DONE).is_file():
            shutil.rmtree(target, ignore_errors=True)  # an interrupted older build
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _DONE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def demo_model(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Directory of the demo model ``name`` (``tiny`` or ``small``), built if missing."""
    from selfrec_ft.models.tiny import make_tiny_model

    if name not in DEMO_MODELS:
        raise UserError(f"unknown demo model {SCHEME}{name}; use one of "
                        + ", ".join(SCHEME + m for m in DEMO_MODELS))
    if name in ("evaluator", "other"):  # tiny models trained briefly as summarisers
        from selfrec_ft.training.demo import ASSETS_VERSION, build_pretrained_model

        return _build_once(demo_cache_dir(cache) / "models" / f"{name}-{ASSETS_VERSION}",
                           lambda d: build_pretrained_model(name, d))
    return _build_once(demo_cache_dir(cache) / "models" / name,
                       lambda d: make_tiny_model(d, seed=DEMO_SEED, size=name))


def demo_corpus(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Directory of the synthetic corpus ``name`` (``short`` or ``highlights``), written if missing."""
    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus

    if name not in DEMO_CORPORA:
        raise UserError(f"unknown demo corpus {SCHEME}{name}; use one of "
                        + ", ".join(SCHEME + c for c in DEMO_CORPORA))
    if name in GENERATED_CORPORA:
        from selfrec_ft.training.demo import ASSETS_VERSION, DEMO_OTHER, DEMO_SELF, build_generated_corpus

        models = {DEMO_SELF: demo_model("evaluator", cache), DEMO_OTHER: demo_model("other", cache)}
        return _build_once(demo_cache_dir(cache) / "corpora" / f"{name}-{ASSETS_VERSION}",
                           lambda d: build_generated_corpus(GENERATED_CORPORA[name], d, models))
    return _build_once(demo_cache_dir(cache) / "corpora" / name,
                       lambda d: write_corpus(synth_corpus(name, DEMO_CORPUS_ARTICLES, seed=DEMO_SEED), d))


def resolve_demo_refs(data_args, model_args, hook_args=None, cache: str | os.PathLike | None = None,
                      main_process_first=contextlib.nullcontext) -> dict[str, dict[str, str]]:
    """Replace ``demo://`` values in the argument objects by built directories (in place).

    Returns ``{field: {"ref": "demo://...", "path": "/abs/dir"}}`` for the manifest. Pass the
    training arguments' ``main_process_first`` so that only one process builds.
    """
    targets = [(model_args, "model_name_or_path", demo_model), (data_args, "corpus", demo_corpus)]
    if hook_args is not None:
        targets += [(hook_args, "hook_in_domain", demo_corpus), (hook_args, "hook_out_of_domain", demo_corpus)]
    todo = [(obj, name, fn) for obj, name, fn in targets if is_demo_ref(getattr(obj, name, None))]
    resolved: dict[str, dict[str, str]] = {}
    if not todo:
        return resolved
    cache = cache if cache is not None else getattr(data_args, "demo_cache", None)
    with main_process_first():
        for obj, name, fn in todo:
            ref = getattr(obj, name)
            path = fn(ref[len(SCHEME):], cache)
            setattr(obj, name, str(path.resolve()))
            resolved[name] = {"ref": ref, "path": str(path.resolve())}
    return resolved
