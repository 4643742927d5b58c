"""How two attribution maps of the same image agree (dense vs pruned model).

The agreement metrics of one image: a difference map and three numbers (Pearson and Spearman
correlation, top-``fraction`` overlap); ``agreement`` averages them over many images. All of
them are about *where* a model looks, not about how large its gradients are (pruning often
shrinks or inflates them all together):

- The **difference** compares each map's *share* of its own total per pixel (``shares``: each
  map divided by its sum, so both sum to 1). Scaling each map to its own maximum instead
  (``scaled``, what the map panels show) does not compare like with like: a flatter pruned
  map would rise against the dense one on every pixel but the peak.
- The **rank correlation** ranks only the pixels where either map is nonzero
  (``RANKED_PIXELS``). Integrated Gradients from the ink-free image, Grad-CAM after its ReLU
  and occlusion give exactly 0 on much of the image; ranked along, those shared zeros would
  tie in both maps and push the correlation towards +1 even for opposite strokes.

A map that is "≈ 0" (``Attribution.negligible``) is not compared at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Share of pixels that count as a map's "most important" ones for the overlap.
TOP_FRACTION = 0.1
#: The pixels the rank correlation ranks, in the words the app and the CLI use for them.
RANKED_PIXELS = "the pixels where either map is nonzero"


def scaled(attribution: np.ndarray) -> np.ndarray:
    """``attribution`` (H, W) divided by its largest |value|, so in [-1, 1]; zeros stay zeros."""
    values = np.nan_to_num(np.asarray(attribution, dtype=np.float64))
    peak = float(np.abs(values).max()) if values.size else 0.0
    return values / peak if peak > 0 else values


def shares(attribution: np.ndarray) -> np.ndarray:
    """``attribution`` (H, W) divided by the sum of its |values|: each pixel's share of the
    map's total, summing to 1 (in absolute value); an all-zero map stays all zeros."""
    values = np.nan_to_num(np.asarray(attribution, dtype=np.float64))
    total = float(np.abs(values).sum())
    return values / total if total > 0 else values


def difference_map(dense_map: np.ndarray, pruned_map: np.ndarray) -> np.ndarray:
    """float64 (H, W) ``shares(pruned) - shares(dense)``, in [-1, 1]: > 0 where the pruned
    model puts a larger share of its attribution on a pixel than the dense one did. It sums
    to 0 for non-negative maps: reliance that moved somewhere left somewhere else."""
    return shares(pruned_map) - shares(dense_map)


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
    """Spearman rank correlation of two maps of one shape over ``RANKED_PIXELS`` (the pixels
    where either is nonzero; Pearson of their average ranks there), in [-1, 1]: 1 = those
    pixels in the same order of importance; nan when fewer than two such pixels or either map is
    flat on them. Unlike Pearson's, it does not care how peaked the maps are, only about
    their order. Pixels both maps give exactly 0 are left out: ties in both, they would
    count as agreement (see the module doc)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps must have one shape, got {a.shape} and {b.shape}")
    either = (a != 0) | (b != 0)
    if either.sum() < 2:
        return float("nan")
    return correlation(average_ranks(a[either]), average_ranks(b[either]))


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
    if not np.isfinite(rank_correlation(dense_map, pruned_map)):
        return f"a map is flat over {RANKED_PIXELS}, so they have no order to compare"
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
        ``difference``: float64 (H, W), ``difference_map``: ``shares(pruned) -
            shares(dense)`` in [-1, 1], > 0 where the pruned model puts a larger share of
            its attribution on a pixel than the dense one did; all zeros when a map is
            negligible.
        ``correlation``: Pearson correlation of the two maps in [-1, 1] (1 = same pattern up
            to scale); nan when a map is negligible or flat.
        ``rank_correlation``: ``rank_correlation``, Spearman's over ``RANKED_PIXELS``, in
            [-1, 1] (1 = those pixels in the same order of importance); nan when a map is
            negligible or flat (there).
        ``top_iou``: intersection over union of the two maps' top-``fraction`` pixels in
            [0, 1]; nan when a map is negligible or flat.
        ``top_fraction``: the ``fraction`` used.
        ``reason``: why (some of) the numbers are nan, "" when none is.
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
        "difference": difference_map(dense_map, pruned_map),
        "correlation": correlation(dense_map, pruned_map),
        "rank_correlation": rank_correlation(dense_map, pruned_map),
        "top_iou": top_overlap(dense_map, pruned_map, fraction),
        "top_fraction": fraction,
        "reason": reason,
    }
