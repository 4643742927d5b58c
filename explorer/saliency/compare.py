"""How two attribution maps of the same image agree (dense vs pruned model).

The agreement metrics of one image: a difference map and three numbers (Pearson and Spearman
correlation, top-``fraction`` overlap); ``agreement`` averages them over many images. Both
maps are first scaled to a maximum of 1 (``scaled``), so that the comparison is about *where*
a model looks, not about how large its gradients are (pruning often shrinks or inflates them
all together). A map that is "≈ 0" (``Attribution.negligible``) is not scaled at all: nothing
is compared with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Share of pixels that count as a map's "most important" ones for the overlap.
TOP_FRACTION = 0.1


def scaled(attribution: np.ndarray) -> np.ndarray:
    """``attribution`` (H, W) divided by its largest |value|, so in [-1, 1]; zeros stay zeros."""
    values = np.nan_to_num(np.asarray(attribution, dtype=np.float64))
    peak = float(np.abs(values).max()) if values.size else 0.0
    return values / peak if peak > 0 else values


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps' pixel values; nan when either map is flat."""
    x = np.asarray(a, dtype=np.float64).ravel() - np.mean(a)
    y = np.asarray(b, dtype=np.float64).ravel() - np.mean(b)
    norm = math.sqrt(float(x @ x) * float(y @ y))
    return float(np.clip(x @ y / norm, -1.0, 1.0)) if norm > 0 else float("nan")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """float64 ranks 1..n of ``values`` (flattened); tied values share their average rank."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(flat, kind="stable")
    ranks = np.empty(flat.size)
    ranks[order] = np.arange(1, flat.size + 1)
    # every run of equal values gets the mean of the ranks it spans
    unique, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if len(unique) < flat.size:
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (Pearson of their average ranks), in [-1, 1]:
    1 = the pixels are in the same order of importance; nan when either map is flat. Unlike
    Pearson's, it does not care how peaked the maps are, only about their order."""
    return correlation(average_ranks(a), average_ranks(b))


def top_pixels(attribution: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """bool (H, W): the ``max(1, round(fraction * H * W))`` largest pixels (ties: lower flat
    index first)."""
    flat = np.asarray(attribution, dtype=np.float64).ravel()
    count = max(1, round(fraction * flat.size))
    chosen = np.argsort(-flat, kind="stable")[:count]
    mask = np.zeros(flat.size, dtype=bool)
    mask[chosen] = True
    return mask.reshape(np.shape(attribution))


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Intersection over union of the two maps' top-``fraction`` pixels, in [0, 1]; nan when
    either map is flat (its "top" pixels would be an arbitrary choice)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    top_a, top_b = top_pixels(a, fraction), top_pixels(b, fraction)
    return float((top_a & top_b).sum() / (top_a | top_b).sum())


def undefined_reason(
    dense_map: np.ndarray, pruned_map: np.ndarray, negligible: Sequence[bool]
) -> str:
    """Why the two maps cannot be compared ("" when they can): a map ≈ 0 or flat."""
    dense_zero, pruned_zero = negligible
    if dense_zero and pruned_zero:
        return "both maps are ≈ 0, so there is no pattern to compare"
    if dense_zero or pruned_zero:
        which = "dense" if dense_zero else "pruned"
        return f"the {which} map is ≈ 0, so there is no pattern to compare"
    if np.ptp(dense_map) == 0 or np.ptp(pruned_map) == 0:
        return "a map is flat (e.g. the pruned model no longer reacts to its input)"
    return ""


def compare_maps(
    dense_map: np.ndarray,
    pruned_map: np.ndarray,
    fraction: float = TOP_FRACTION,
    negligible: Sequence[bool] = (False, False),
) -> dict[str, Any]:
    """Agreement of the dense and the pruned model's maps of one image.

    Args:
        dense_map: (H, W) attribution of the dense model.
        pruned_map: (H, W) attribution of the pruned model, same image and target class.
        fraction: share of pixels in each map's "top" set for ``top_iou``; default 0.1.
        negligible: (dense, pruned): whether each map is "≈ 0" (``Attribution.negligible``).
            A negligible map has no pattern, only a residue that scaling would stretch, so
            nothing is computed on it: default (False, False).

    Returns:
        ``difference``: float64 (H, W), ``scaled(pruned) - scaled(dense)`` in [-2, 2];
            > 0 where the pruned model relies on a pixel more than the dense one did; all
            zeros when a map is negligible.
        ``correlation``: Pearson correlation of the two maps in [-1, 1] (1 = same pattern up
            to scale); nan when a map is negligible or flat.
        ``rank_correlation``: Spearman correlation (``rank_correlation``) in [-1, 1] (1 = the
            pixels in the same order of importance); nan when a map is negligible or flat.
        ``top_iou``: intersection over union of the two maps' top-``fraction`` pixels in
            [0, 1]; nan when a map is negligible or flat.
        ``top_fraction``: the ``fraction`` used.
        ``reason``: why correlation and overlap are nan, "" when they are not.
    """
    dense_map, pruned_map = np.asarray(dense_map), np.asarray(pruned_map)
    if dense_map.shape != pruned_map.shape or dense_map.ndim != 2:
        raise ValueError(
            f"maps must be two (H, W) arrays of one shape, got {dense_map.shape} and "
            f"{pruned_map.shape}"
        )
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if len(negligible) != 2:
        raise ValueError(f"negligible must be two flags (dense, pruned), got {negligible!r}")
    reason = undefined_reason(dense_map, pruned_map, negligible)
    if any(negligible):
        return {
            "difference": np.zeros(dense_map.shape),
            "correlation": math.nan,
            "rank_correlation": math.nan,
            "top_iou": math.nan,
            "top_fraction": fraction,
            "reason": reason,
        }
    return {
        "difference": scaled(pruned_map) - scaled(dense_map),
        "correlation": correlation(dense_map, pruned_map),
        "rank_correlation": rank_correlation(dense_map, pruned_map),
        "top_iou": top_overlap(dense_map, pruned_map, fraction),
        "top_fraction": fraction,
        "reason": reason,
    }
