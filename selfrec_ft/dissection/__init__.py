"""Preference dissection (P2: Li et al., "Dissecting Human and LLM Preferences", ACL 2024): regress a
judge's pairwise preferences on property comparisons to see which properties drive them.

* :mod:`.properties`: P2's 29 property names in feature order, the ``self`` feature, P2's weights.
* :mod:`.fit`: Bayesian logistic regression (MAP + Laplace interval; optional exact NUTS mode).
* :mod:`.run`: comparisons file -> report.json, report.md, bar chart (``selfrec dissect``).
"""

from selfrec_ft.dissection.fit import Fit, accuracy, fit, fit_map, fit_nuts
from selfrec_ft.dissection.properties import (
    FEATURES,
    PROPERTIES,
    SELF,
    load_fitted_file,
    load_fitted_params,
    preference_scores,
)
from selfrec_ft.dissection.run import Comparisons, dissect, read_comparisons, run_dissection

__all__ = [
    "FEATURES", "PROPERTIES", "SELF", "Comparisons", "Fit", "accuracy", "dissect", "fit", "fit_map",
    "fit_nuts", "load_fitted_file", "load_fitted_params", "preference_scores", "read_comparisons",
    "run_dissection",
]
