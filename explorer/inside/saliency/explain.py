"""One image through the dense and the pruned model: predictions, two maps, their agreement."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.engine.evaluation import predict
from explorer.inside.saliency.base import Attribution, get_attribution
from explorer.inside.saliency.compare import compare_maps, scaled


@dataclass(frozen=True, eq=False)
class Prediction:
    """What a model says about one image.

    Attributes:
        label: top-1 class index.
        confidence: softmax probability of ``label``, in [0, 1]; nan when the logits are not
            finite (a broken, over-pruned model).
        probabilities: float64 (classes,), the softmax.
    """

    label: int
    confidence: float
    probabilities: np.ndarray

    @property
    def finite(self) -> bool:
        return math.isfinite(self.confidence)


def predict_one(model: nn.Module, x: torch.Tensor) -> Prediction:
    """Top-1 class and softmax confidence of ``model`` for one image ``x`` (1, C, H, W)."""
    logits = predict(model, x)[0].double()  # (classes,), no gradients, model untouched
    probabilities = torch.softmax(logits, 0).numpy()
    label = int(logits.argmax())
    finite = bool(torch.isfinite(logits).all())
    return Prediction(label, float(probabilities[label]) if finite else math.nan, probabilities)


@dataclass(frozen=True, eq=False)
class PairExplanation:
    """The same attribution of the same image and class, for the dense and the pruned model.

    Attributes:
        method: registry name of the attribution method.
        target: the class index both maps explain.
        dense_attribution, pruned_attribution: each model's map (float32 (H, W), raw,
            non-negative) with its evidence and whether it is "≈ 0" (``negligible``).
        dense, pruned: each model's prediction for the image.
        comparison: ``compare_maps`` of the two maps (difference, correlation,
            rank_correlation, top_iou, reason); nan agreement with a reason when either map
            is negligible.
        seconds: wall time of the two attributions.
    """

    method: str
    target: int
    dense_attribution: Attribution
    pruned_attribution: Attribution
    dense: Prediction
    pruned: Prediction
    comparison: dict[str, Any]
    seconds: float

    @property
    def dense_map(self) -> np.ndarray:
        """(H, W) raw attribution of the dense model."""
        return self.dense_attribution.values

    @property
    def pruned_map(self) -> np.ndarray:
        """(H, W) raw attribution of the pruned model."""
        return self.pruned_attribution.values

    @property
    def dense_scaled(self) -> np.ndarray:
        """(H, W) ``dense_map`` scaled to a maximum of 1, what the figure shows; all zeros when
        the map is negligible (stretching a residue to 1 would invent a pattern)."""
        return _shown(self.dense_attribution)

    @property
    def pruned_scaled(self) -> np.ndarray:
        """(H, W) ``pruned_map`` scaled to a maximum of 1; all zeros when negligible."""
        return _shown(self.pruned_attribution)


def _shown(attribution: Attribution) -> np.ndarray:
    values = attribution.values
    return np.zeros(values.shape) if attribution.negligible else scaled(values)


def explain_pair(
    method: str,
    dense: nn.Module,
    pruned: nn.Module,
    x: torch.Tensor,
    target: int,
    **options: Any,
) -> PairExplanation:
    """Attribute class ``target`` of image ``x`` (1, C, H, W) with ``method`` in both models.

    Args:
        method: a registered method's name (``ATTRIBUTIONS``).
        dense, pruned: the two classifiers; neither is modified (see
            ``AttributionMethod.explain``).
        x: float tensor (1, C, H, W), the normalised image.
        target: the class both maps explain, any index of the logits (not only a
            prediction); a ValueError when out of range.
        options: the method's settings (its ``options``, e.g. ``steps=64``); the same for
            both models. None: the method's defaults.
    """
    attribution = get_attribution(method)
    settings = attribution.resolve_options(options)  # a bad setting fails before any work
    start = time.perf_counter()
    dense_attribution = attribution.explain(dense, x, target, **settings)
    pruned_attribution = attribution.explain(pruned, x, target, **settings)
    seconds = time.perf_counter() - start
    return pair_of_maps(
        method, target, dense_attribution, pruned_attribution, dense, pruned, x, seconds
    )


def pair_of_maps(
    method: str,
    target: int,
    dense_attribution: Attribution,
    pruned_attribution: Attribution,
    dense: nn.Module,
    pruned: nn.Module,
    x: torch.Tensor,
    seconds: float,
) -> PairExplanation:
    """A ``PairExplanation`` of two maps already computed (e.g. each cached on its own, so
    that the dense map serves every plan): both predictions and the comparison added."""
    comparison = compare_maps(
        dense_attribution.values,
        pruned_attribution.values,
        negligible=(dense_attribution.negligible, pruned_attribution.negligible),
    )
    return PairExplanation(
        method,
        int(target),
        dense_attribution,
        pruned_attribution,
        predict_one(dense, x),
        predict_one(pruned, x),
        comparison,
        seconds,
    )
