"""Saliency: which pixels a (pruned) model's decision rests on, and how pruning moved them.

``base`` holds the ``AttributionMethod`` class, the registry and the rule for a map that is
"≈ 0"; each method lives in its own module (imported here so that it registers): ``gradient``,
``gradcam`` (any conv layer), ``token_gradcam`` (vision transformers), ``integrated``
(Integrated Gradients) and ``occlusion``; ``tokens`` finds a vision transformer's patch
tokens; ``compare`` measures how two maps agree; ``explain`` runs one image through a dense
and a pruned model; ``agreement`` averages the agreement over many images, against sparsity.
"""

# Importing a method's module registers it; the page lists methods in this order (simplest first).
from explorer.inside.saliency import gradient  # noqa: F401

# isort: split
from explorer.inside.saliency import gradcam  # noqa: F401

# isort: split
from explorer.inside.saliency import token_gradcam  # noqa: F401

# isort: split
from explorer.inside.saliency import integrated  # noqa: F401

# isort: split
from explorer.inside.saliency import occlusion  # noqa: F401

# isort: split
from explorer.inside.saliency.agreement import (
    AgreementCurve,
    AgreementPoint,
    SampleAgreement,
    agreement_curve,
    agreement_per_sample,
    top_k_overlap,
)
from explorer.inside.saliency.base import (
    ATTRIBUTIONS,
    NEGLIGIBLE_SHARE,
    Attribution,
    AttributionMethod,
    attributions_for,
    get_attribution,
    is_negligible,
    register_attribution,
)
from explorer.inside.saliency.compare import compare_maps, rank_correlation
from explorer.inside.saliency.explain import PairExplanation, Prediction, explain_pair, predict_one
from explorer.inside.saliency.gradcam import conv_layers
from explorer.inside.saliency.integrated import dark_baseline, integrated_gradients
from explorer.inside.saliency.occlusion import window_for

__all__ = [
    "ATTRIBUTIONS",
    "NEGLIGIBLE_SHARE",
    "AgreementCurve",
    "AgreementPoint",
    "Attribution",
    "AttributionMethod",
    "PairExplanation",
    "Prediction",
    "SampleAgreement",
    "agreement_curve",
    "agreement_per_sample",
    "attributions_for",
    "compare_maps",
    "conv_layers",
    "dark_baseline",
    "explain_pair",
    "get_attribution",
    "integrated_gradients",
    "is_negligible",
    "predict_one",
    "rank_correlation",
    "register_attribution",
    "top_k_overlap",
    "window_for",
]
