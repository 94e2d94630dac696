"""P2's 29 response properties: registry, deterministic measures, comparison features, and DPO
pair selection for injecting or removing an attribute.

``dpo_pairs`` (which imports ``datasets`` lazily) is not imported here; use
``from selfrec_ft.attributes.dpo_pairs import select_dpo_pairs``.
"""

from selfrec_ft.attributes.measures import (
    MEASURES,
    Measure,
    compare,
    compare_values,
    comparison_features,
    measure_all,
    p2_length_comparison,
    word_count,
)
from selfrec_ft.attributes.names import PROPERTY_NAMES, PROPERTY_SLUGS, property_name
from selfrec_ft.attributes.registry import (
    Property,
    compare_scores,
    deterministic_properties,
    get_property,
    judge_properties,
    load_p2_definitions,
    properties,
)

__all__ = [
    "MEASURES",
    "Measure",
    "PROPERTY_NAMES",
    "PROPERTY_SLUGS",
    "Property",
    "compare",
    "compare_scores",
    "compare_values",
    "comparison_features",
    "deterministic_properties",
    "get_property",
    "judge_properties",
    "load_p2_definitions",
    "measure_all",
    "p2_length_comparison",
    "properties",
    "property_name",
    "word_count",
]
