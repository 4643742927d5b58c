"""Agreement of dense and pruned attributions over many images, against sparsity.

One image's agreement (``compare.compare_maps``) can be luck; a teacher's claim "at 80% the
model still looks at the same strokes" needs many. ``agreement_curve`` takes N images, the
dense model's map of each (computed once) and each pruned model's map of the same class, and
reports per sparsity the per-image **rank correlation** (Spearman: the same order of
importance?) and **top-k overlap** (intersection over union of the most important
``fraction`` of pixels), with their means. An image whose dense or pruned map is "≈ 0"
(``Attribution.negligible``) has no pattern to compare: it is counted, not averaged in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.saliency.base import Attribution, get_attribution
from explorer.saliency.compare import TOP_FRACTION, compare_maps


@dataclass(frozen=True)
class AgreementPoint:
    """Agreement of one pruned model with the dense one over N images.

    Attributes:
        amount: the plan's amount (sparsity asked for), in [0, 1].
        rank_correlations, overlaps: per image, nan where a map is negligible or flat.
    """

    amount: float
    rank_correlations: tuple[float, ...]
    overlaps: tuple[float, ...]

    @property
    def compared(self) -> int:
        """Images whose two maps could be compared."""
        return sum(1 for v in self.rank_correlations if math.isfinite(v))

    @property
    def mean_rank_correlation(self) -> float:
        return _mean(self.rank_correlations)

    @property
    def mean_overlap(self) -> float:
        return _mean(self.overlaps)


def _mean(values: tuple[float, ...]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def agreement_point(
    amount: float,
    dense_maps: list[Attribution],
    pruned_maps: list[Attribution],
    fraction: float = TOP_FRACTION,
) -> AgreementPoint:
    """Per-image agreement of two lists of maps of the same images and classes."""
    ranks, overlaps = [], []
    for dense, pruned in zip(dense_maps, pruned_maps, strict=True):
        comparison = compare_maps(
            dense.values, pruned.values, fraction, (dense.negligible, pruned.negligible)
        )
        ranks.append(comparison["rank_correlation"])
        overlaps.append(comparison["top_iou"])
    return AgreementPoint(float(amount), tuple(ranks), tuple(overlaps))


def attributions(
    method: str, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, **options: Any
) -> list[Attribution]:
    """``method``'s map of every image (N, C, H, W) for its target class (N,)."""
    explainer = get_attribution(method)
    return [
        explainer.explain(model, images[i : i + 1], int(targets[i]), **options)
        for i in range(len(images))
    ]


def agreement_curve(
    method: str,
    dense: nn.Module,
    pruned_by_amount: Mapping[float, nn.Module],
    images: torch.Tensor,
    targets: torch.Tensor,
    fraction: float = TOP_FRACTION,
    progress: Callable[[float], None] | None = None,
    **options: Any,
) -> list[AgreementPoint]:
    """Agreement of each pruned model with ``dense`` over the same images, by amount.

    Args:
        method: an attribution method's registry name; options: its settings.
        dense: the dense model; pruned_by_amount: amount -> that model pruned (zeros in
            place). Neither is modified.
        images: (N, C, H, W); targets: int64 (N,), the class each image's maps explain
            (e.g. the dense model's predictions).
        fraction: the top share of pixels for the overlap (default 10%).
        progress: called with the share done, in [0, 1], after every model.
    """
    steps = 1 + len(pruned_by_amount)
    dense_maps = attributions(method, dense, images, targets, **options)
    if progress:
        progress(1 / steps)
    points = []
    for done, (amount, model) in enumerate(sorted(pruned_by_amount.items()), start=2):
        pruned_maps = attributions(method, model, images, targets, **options)
        points.append(agreement_point(amount, dense_maps, pruned_maps, fraction))
        if progress:
            progress(done / steps)
    return points
