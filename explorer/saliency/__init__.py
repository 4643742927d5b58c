"""Saliency: which pixels a (pruned) model's decision rests on, and how pruning moved them.

``base`` holds the ``AttributionMethod`` class, the registry and the rule for a map that is
"≈ 0"; each method lives in its own module (imported here so that it registers); ``tokens``
finds a vision transformer's patch tokens; ``compare`` measures how two maps agree;
``explain`` runs one image through a dense and a pruned model.
"""

# Importing a method's module registers it; the page lists methods in this order (simplest first).
from explorer.saliency import gradient  # noqa: F401

# isort: split
from explorer.saliency import gradcam  # noqa: F401

# isort: split
from explorer.saliency import token_gradcam  # noqa: F401

# isort: split
from explorer.saliency import integrated  # noqa: F401

# isort: split
from explorer.saliency import occlusion  # noqa: F401

# isort: split
from explorer.saliency.base import (
    ATTRIBUTIONS,
    NEGLIGIBLE_SHARE,
    Attribution,
    AttributionMethod,
    attributions_for,
    get_attribution,
    is_negligible,
    register_attribution,
)
from explorer.saliency.compare import compare_maps
from explorer.saliency.explain import PairExplanation, Prediction, explain_pair, predict_one

__all__ = [
    "ATTRIBUTIONS",
    "NEGLIGIBLE_SHARE",
    "Attribution",
    "AttributionMethod",
    "PairExplanation",
    "Prediction",
    "attributions_for",
    "compare_maps",
    "explain_pair",
    "get_attribution",
    "is_negligible",
    "predict_one",
    "register_attribution",
]
