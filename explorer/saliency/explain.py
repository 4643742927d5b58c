"""One image through the dense and the pruned model: predictions, two maps, their agreement."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.evaluation import predict
from explorer.saliency.base import get_attribution
from explorer.saliency.compare import compare_maps, scaled


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
        dense_map, pruned_map: float32 (H, W) raw attributions (non-negative).
        dense, pruned: each model's prediction for the image.
        comparison: ``compare_maps(dense_map, pruned_map)`` (difference, correlation, top_iou).
        seconds: wall time of the two attributions.
    """

    method: str
    target: int
    dense_map: np.ndarray
    pruned_map: np.ndarray
    dense: Prediction
    pruned: Prediction
    comparison: dict[str, Any]
    seconds: float

    @property
    def dense_scaled(self) -> np.ndarray:
        """(H, W) ``dense_map`` scaled to a maximum of 1 (what the difference is made of)."""
        return scaled(self.dense_map)

    @property
    def pruned_scaled(self) -> np.ndarray:
        """(H, W) ``pruned_map`` scaled to a maximum of 1."""
        return scaled(self.pruned_map)


def explain_pair(
    method: str, dense: nn.Module, pruned: nn.Module, x: torch.Tensor, target: int
) -> PairExplanation:
    """Attribute class ``target`` of image ``x`` (1, C, H, W) with ``method`` in both models.

    Neither model is modified (see ``AttributionMethod.attribute``).
    """
    attribution = get_attribution(method)
    start = time.perf_counter()
    dense_map = attribution.attribute(dense, x, target)
    pruned_map = attribution.attribute(pruned, x, target)
    seconds = time.perf_counter() - start
    return PairExplanation(
        method,
        int(target),
        dense_map,
        pruned_map,
        predict_one(dense, x),
        predict_one(pruned, x),
        compare_maps(dense_map, pruned_map),
        seconds,
    )
