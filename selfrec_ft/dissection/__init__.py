"""Preference dissection (P2: Li et al., "Dissecting Human and LLM Preferences", ACL 2024): regress a
judge's pairwise preferences on property comparisons to see which properties drive them.

* :mod:`.properties`: P2's 29 property names in feature order, the ``self`` feature, P2's weights.
* :mod:`.fit`: Bayesian logistic regression (default: NUTS posterior mean and credible interval, as
  P2 reports; P2's exact procedure as ``nuts-p2``; MAP + Laplace interval as ``map``).
* :mod:`.run`: comparisons file -> report.json, report.md, bar chart (``selfrec dissect``).
* :mod:`.judge`, :mod:`.comparisons`, :mod:`.self_preference`, :mod:`.judge_report`: a judge's
  labels through a :class:`~selfrec_ft.scoring.scorer.Scorer`, and base vs fine-tuned judges.

The names below are loaded on first use (PEP 562): importing one submodule does not import the
others (numpy, scipy, matplotlib).
"""

import importlib

_EXPORTS = {
    **dict.fromkeys(("Fit", "accuracy", "fit", "fit_map", "fit_nuts"), "selfrec_ft.dissection.fit"),
    **dict.fromkeys(("FEATURES", "PROPERTIES", "SELF", "load_fitted_file", "load_fitted_params",
                     "preference_scores"), "selfrec_ft.dissection.properties"),
    **dict.fromkeys(("Comparisons", "dissect", "read_comparisons", "run_dissection"), "selfrec_ft.dissection.run"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
