"""Agreement of dense and pruned attributions over many images, against sparsity.

One image's agreement (``compare.compare_maps``) can be luck; a teacher's claim "at 80% the
model still looks at the same strokes" needs many. ``agreement_curve`` takes N images, the
dense model's map of each (computed once) and each pruned model's map of the same class, and
reports per sparsity the per-image **rank correlation** (Spearman: the same order of
importance?) and **top-k overlap** (intersection over union of the most important
``fraction`` of pixels), with their means. An image whose dense or pruned map is "≈ 0"
(``Attribution.negligible``) or flat has no pattern to compare: its values are nan, it is
counted (``AgreementPoint.excluded``), not averaged in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
from torch import nn

from explorer.inside.saliency.base import Attribution, get_attribution
from explorer.inside.saliency.compare import TOP_FRACTION, compare_maps, top_overlap
from explorer.inside.saliency.compare import rank_correlation as rank_correlation


def top_k_overlap(a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Intersection over union, in [0, 1], of the top-``fraction`` pixels of two (H, W) maps
    (each map's ``max(1, round(fraction * H * W))`` largest); nan when either map is flat.
    ``compare.top_overlap`` under the issue's name; default fraction 0.1."""
    return top_overlap(a, b, fraction)


@dataclass(frozen=True)
class SampleAgreement:
    """How one image's dense and pruned maps (same method, same class) agree.

    Attributes:
        target: the class both maps explain.
        rank_correlation: Spearman correlation in [-1, 1]; nan when not comparable.
        top_overlap: top-``fraction`` intersection over union in [0, 1]; nan likewise.
        reason: why the two are nan (a map ≈ 0 or flat); "" when they are not.
    """

    target: int
    rank_correlation: float
    top_overlap: float
    reason: str = ""

    @property
    def compared(self) -> bool:
        """Whether the two maps could be compared (both have a pattern)."""
        return math.isfinite(self.rank_correlation)


@dataclass(frozen=True)
class AgreementPoint:
    """Agreement of one pruned model with the dense one over N images.

    Attributes:
        amount: the plan's amount (the sparsity asked for), in [0, 1].
        rank_correlations, overlaps: per image, in the images' order; nan where a map is
            negligible or flat.
    """

    amount: float
    rank_correlations: tuple[float, ...]
    overlaps: tuple[float, ...]

    @property
    def compared(self) -> int:
        """Images whose two maps could be compared."""
        return sum(1 for v in self.rank_correlations if math.isfinite(v))

    @property
    def excluded(self) -> int:
        """Images left out of the means: a map ≈ 0 or flat."""
        return len(self.rank_correlations) - self.compared

    @property
    def mean_rank_correlation(self) -> float:
        """Mean over the compared images; nan when none could be compared."""
        return _mean(self.rank_correlations)

    @property
    def mean_overlap(self) -> float:
        """Mean over the compared images; nan when none could be compared."""
        return _mean(self.overlaps)


@dataclass(frozen=True)
class AgreementCurve(Sequence[AgreementPoint]):
    """Agreement against sparsity: one ``AgreementPoint`` per pruned model, by amount.

    A sequence of its points (``for point in curve``, ``curve[0]``, ``len(curve)``).

    Attributes:
        method: the attribution method's registry name.
        fraction: the top share of pixels of the overlap.
        points: by increasing amount.
    """

    method: str
    fraction: float
    points: tuple[AgreementPoint, ...]

    @overload
    def __getitem__(self, index: int) -> AgreementPoint: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[AgreementPoint]: ...

    def __getitem__(self, index: int | slice) -> AgreementPoint | Sequence[AgreementPoint]:
        return self.points[index]

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self) -> Iterator[AgreementPoint]:
        return iter(self.points)

    @property
    def amounts(self) -> tuple[float, ...]:
        return tuple(p.amount for p in self.points)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def compare_samples(
    dense_maps: Sequence[Attribution],
    pruned_maps: Sequence[Attribution],
    targets: Sequence[int],
    fraction: float = TOP_FRACTION,
) -> list[SampleAgreement]:
    """Per-image agreement of two lists of maps of the same images and classes."""
    samples = []
    for dense, pruned, target in zip(dense_maps, pruned_maps, targets, strict=True):
        comparison = compare_maps(
            dense.values, pruned.values, fraction, (dense.negligible, pruned.negligible)
        )
        samples.append(
            SampleAgreement(
                int(target),
                comparison["rank_correlation"],
                comparison["top_iou"],
                comparison["reason"],
            )
        )
    return samples


def agreement_point(
    amount: float,
    dense_maps: Sequence[Attribution],
    pruned_maps: Sequence[Attribution],
    fraction: float = TOP_FRACTION,
) -> AgreementPoint:
    """Per-image agreement of two lists of maps of the same images and classes, as the point
    of ``amount`` (in [0, 1])."""
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
    settings = explainer.resolve_options(options)
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    return [
        explainer.explain(model, images[i : i + 1], int(targets[i]), **settings)
        for i in range(len(images))
    ]


def agreement_per_sample(
    method: str,
    dense: nn.Module,
    pruned: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    fraction: float = TOP_FRACTION,
    **options: Any,
) -> list[SampleAgreement]:
    """How each image's dense and pruned maps agree.

    Args:
        method: an attribution method's registry name; options: its settings.
        dense, pruned: the two models (neither is modified).
        images: (N, C, H, W) normalised images; targets: (N,) the class each image's maps
            explain (any class index, e.g. the dense model's predictions).
        fraction: the top share of pixels for the overlap, default 0.1.

    Returns:
        one ``SampleAgreement`` per image, in order.
    """
    dense_maps = attributions(method, dense, images, targets, **options)
    pruned_maps = attributions(method, pruned, images, targets, **options)
    return compare_samples(dense_maps, pruned_maps, [int(t) for t in targets], fraction)


def agreement_curve(
    method: str,
    dense: nn.Module,
    pruned_by_amount: Mapping[float, nn.Module],
    images: torch.Tensor,
    targets: torch.Tensor,
    fraction: float = TOP_FRACTION,
    progress: Callable[[float], None] | None = None,
    **options: Any,
) -> AgreementCurve:
    """Agreement of each pruned model with ``dense`` over the same images, by amount.

    Args:
        method: an attribution method's registry name; options: its settings.
        dense: the dense model; pruned_by_amount: amount (sparsity, in [0, 1]) -> that model
            pruned (zeros in place). Neither is modified.
        images: (N, C, H, W); targets: int64 (N,), the class each image's maps explain
            (e.g. the dense model's predictions).
        fraction: the top share of pixels for the overlap (default 10%).
        progress: called with the share done, in [0, 1], after every model (dense first).

    Returns:
        ``AgreementCurve``: one point per amount, by increasing amount; the dense maps are
        computed once.
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
    return AgreementCurve(method, float(fraction), tuple(points))
