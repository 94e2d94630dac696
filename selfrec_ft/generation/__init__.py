"""The evaluator writes its own summaries: batched, resumable generation and output cleaning.

The names below are loaded on first use (PEP 562), so importing a submodule such as
:mod:`.clean` does not import the generation stack (tqdm, torch).
"""

import importlib

_EXPORTS = {
    "clean_summary": "selfrec_ft.generation.clean",
    "GenerationResult": "selfrec_ft.generation.generate",
    "candidate_seed": "selfrec_ft.generation.generate",
    "generate_summaries": "selfrec_ft.generation.generate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
