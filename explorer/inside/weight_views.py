"""A layer's weights as a picture, and its importance scores split by what the plan pruned.

Plain arrays out (numpy), no plotting: ``explorer.plots.weights`` draws them.

Layouts of ``weight_grid`` (rows x columns of the image):

- ``"matrix"``: a Linear (out x in), or a 1x1 conv (filters x input channels);
- ``"kernels"``: a conv as a grid of kernels, one row of kernels per filter and one column per
  input channel, each (kh, kw) kernel a tile with 1-px gaps (NaN) between tiles;
- ``"filters"``: a conv with a single input channel (first layers, patch embeddings): its filters
  as (kh, kw) tiles in a square-ish grid;
- ``"kernel max"``: a conv too big to tile, each kernel one cell holding its largest-|w| weight.

Images larger than ``max_side`` on an axis are max-|w| pooled: each cell shows the entry of
largest magnitude in its block (sign kept), and counts as pruned only if the plan zeroed every
weight of the block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from explorer.engine.pruning import METHODS, Pruner, Unit

MAX_SIDE = 150


@dataclass(frozen=True, eq=False)
class WeightGrid:
    """One layer's (masked) weights arranged as a 2-D image.

    Attributes:
        values: float32 (H, W), the masked weights; NaN in the gaps between kernel tiles. After
            pooling, the signed entry of largest magnitude of each block.
        pruned: bool (H, W), True where the plan zeroed the weight (after pooling: every weight
            of the block); never True in a gap.
        owner: int32 (H, W, 2), which (row unit, column unit) each cell shows: (output, input)
            for a matrix, (filter, input channel) for the conv layouts; -1 in gaps. After
            pooling, the first entry of the block.
        layout: ``"matrix"``, ``"kernels"``, ``"filters"`` or ``"kernel max"``.
        pool: (rows, columns) of weights pooled into one cell; (1, 1) = not pooled.
        unpooled: (H, W) of the image before pooling.
        weight_shape: the layer's weight shape, (out, in) or (out, in, kh, kw).
        row_unit, col_unit: what a row / column of units is, e.g. ``"output"``, ``"input"``.
        tile: (kh + 1, kw + 1) pitch of a kernel tile in the image; (1, 1) for a matrix.
    """

    values: np.ndarray
    pruned: np.ndarray
    owner: np.ndarray
    layout: str
    pool: tuple[int, int]
    unpooled: tuple[int, int]
    weight_shape: tuple[int, ...]
    row_unit: str
    col_unit: str
    tile: tuple[int, int]

    @property
    def pooled(self) -> bool:
        return self.pool != (1, 1)


def _tile(blocks: np.ndarray, rows: int, cols: int, fill: float) -> np.ndarray:
    """(rows, cols, kh, kw) blocks -> (rows*(kh+1)-1, cols*(kw+1)-1) with ``fill`` in the gaps."""
    kh, kw = blocks.shape[2:]
    out = np.full((rows, kh + 1, cols, kw + 1), fill, dtype=blocks.dtype)
    out[:, :kh, :, :kw] = blocks.transpose(0, 2, 1, 3)
    image = out.reshape(rows * (kh + 1), cols * (kw + 1))
    return image[: rows * (kh + 1) - 1, : cols * (kw + 1) - 1]


def _owners(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """int32 (H, W, 2) from per-row and per-column owners."""
    grid = np.empty((len(rows), len(cols), 2), dtype=np.int32)
    grid[..., 0] = rows[:, None]
    grid[..., 1] = cols[None, :]
    return grid


def _kernel_grid(values: np.ndarray, pruned: np.ndarray) -> tuple[np.ndarray, ...]:
    """(out, in, kh, kw) -> the "kernels" layout: a row of tiles per filter."""
    out, inp, kh, kw = values.shape
    image = _tile(values, out, inp, np.nan)
    mask = _tile(pruned, out, inp, False)
    row_owner = np.repeat(np.arange(out), kh + 1)[: out * (kh + 1) - 1]
    col_owner = np.repeat(np.arange(inp), kw + 1)[: inp * (kw + 1) - 1]
    owner = _owners(row_owner, col_owner)
    owner[np.isnan(image)] = -1
    return image, mask, owner


def _filter_grid(values: np.ndarray, pruned: np.ndarray) -> tuple[np.ndarray, ...]:
    """(out, 1, kh, kw) -> the "filters" layout: filters as tiles in a square-ish grid."""
    out, _, kh, kw = values.shape
    cols = math.ceil(math.sqrt(out))
    rows = math.ceil(out / cols)
    padded = np.full((rows * cols, kh, kw), np.nan, dtype=np.float32)
    padded[:out] = values[:, 0]
    flags = np.zeros((rows * cols, kh, kw), dtype=bool)
    flags[:out] = pruned[:, 0]
    ids = np.full((rows * cols, kh, kw), -1, dtype=np.int32)
    ids[:out] = np.arange(out)[:, None, None]
    image = _tile(padded.reshape(rows, cols, kh, kw), rows, cols, np.nan)
    mask = _tile(flags.reshape(rows, cols, kh, kw), rows, cols, False)
    filters = _tile(ids.reshape(rows, cols, kh, kw), rows, cols, -1)
    owner = np.stack([filters, np.where(filters >= 0, 0, -1)], axis=-1).astype(np.int32)
    return image, mask, owner


def _signed_max_abs(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The signed entry of largest magnitude over ``axes`` (NaN entries ignored; all-NaN -> NaN)."""
    moved = np.moveaxis(values, axes, tuple(range(-len(axes), 0)))
    flat = moved.reshape(*moved.shape[: moved.ndim - len(axes)], -1)
    magnitude = np.where(np.isnan(flat), -1.0, np.abs(flat))
    best = np.take_along_axis(flat, magnitude.argmax(-1)[..., None], -1)[..., 0]
    return best.astype(np.float32)


def max_abs_pool(
    values: np.ndarray, pruned: np.ndarray, owner: np.ndarray, factor: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool (H, W) images by ``factor`` = (fr, fc) blocks (the last ones may be partial).

    Returns values (the signed largest-|w| entry of each block, NaN if the block is all gap),
    pruned (every non-gap entry of the block pruned, and at least one) and owner (of the
    block's first entry), each of shape (ceil(H / fr), ceil(W / fc)[, 2]).
    """
    fr, fc = factor
    h, w = values.shape
    rows, cols = -(-h // fr), -(-w // fc)
    padded = np.full((rows * fr, cols * fc), np.nan, dtype=np.float32)
    padded[:h, :w] = values
    gap = np.isnan(padded)
    flags = np.zeros_like(gap)
    flags[:h, :w] = pruned
    blocks = (rows, fr, cols, fc)
    pooled = _signed_max_abs(padded.reshape(blocks), (1, 3))
    all_pruned = (flags | gap).reshape(blocks).all(axis=(1, 3)) & ~gap.reshape(blocks).all(
        axis=(1, 3)
    )
    return pooled, all_pruned, owner[::fr, ::fc]


def weight_grid(
    weight: torch.Tensor, mask: torch.Tensor | None = None, max_side: int = MAX_SIDE
) -> WeightGrid:
    """Lay out a (masked) Linear or Conv2d weight as an image of at most ``max_side`` per axis.

    Args:
        weight: (out, in) or (out, in, kh, kw), the weights *as the plan leaves them* (pruned
            entries zero).
        mask: 0/1 of the same shape, 0 = pruned by the plan; ``None`` = nothing pruned.
        max_side: the largest number of cells on either axis; larger images are pooled.
    """
    values = weight.detach().float().cpu().numpy()
    pruned = (
        np.zeros(values.shape, dtype=bool) if mask is None else (mask.detach().cpu().numpy() == 0)
    )
    if values.ndim == 4 and values.shape[2:] == (1, 1):
        values, pruned = values[:, :, 0, 0], pruned[:, :, 0, 0]
    if values.ndim == 2:
        out, inp = values.shape
        conv = weight.ndim == 4
        layout, tile = "matrix", (1, 1)
        image, flags = values.astype(np.float32), pruned
        owner = _owners(np.arange(out), np.arange(inp))
        units = ("filter", "input channel") if conv else ("output", "input")
    elif values.ndim == 4:
        out, inp, kh, kw = values.shape
        units, tile = ("filter", "input channel"), (kh + 1, kw + 1)
        if inp == 1 and math.ceil(math.sqrt(out)) * (max(kh, kw) + 1) - 1 <= max_side:
            layout = "filters"
            image, flags, owner = _filter_grid(values, pruned)
        elif out * (kh + 1) - 1 <= max_side and inp * (kw + 1) - 1 <= max_side:
            layout = "kernels"
            image, flags, owner = _kernel_grid(values, pruned)
        else:
            layout, tile = "kernel max", (1, 1)
            image = _signed_max_abs(values, (2, 3))
            flags = pruned.all(axis=(2, 3))
            owner = _owners(np.arange(out), np.arange(inp))
    else:
        raise ValueError(f"expected a 2-D or 4-D weight, got shape {tuple(weight.shape)}")
    unpooled = image.shape
    factor = (-(-unpooled[0] // max_side), -(-unpooled[1] // max_side))
    if factor != (1, 1):
        image, flags, owner = max_abs_pool(image, flags, owner, factor)
    return WeightGrid(
        image.astype(np.float32),
        flags & ~np.isnan(image),
        owner.astype(np.int32),
        layout,
        factor,
        (int(unpooled[0]), int(unpooled[1])),
        tuple(weight.shape),
        units[0],
        units[1],
        tile,
    )


# --- which unit a layer belongs to, and its scores ------------------------------------------------


def unit_of_layer(pruner: Pruner, method: str, layer: str) -> Unit | None:
    """The unit of ``method`` that prunes ``layer``'s weights, or None if no unit touches it.

    Preference: the unit named after the layer; else one where the layer is on the scored side
    (the producers for filter pruning, the consumers for input-channel pruning); else any unit
    whose layers include it (e.g. the classifier reads the channels of the layer before it).
    """
    units = [u for u in pruner.units(method) if layer in u.layers]
    if not units:
        return None
    for unit in units:
        if unit.name == layer:
            return unit
    scored = METHODS[method].scored_layers
    return next((unit for unit in units if layer in scored(unit)), units[0])


def why_no_unit(pruner: Pruner, method: str, layer: str) -> str:
    """A sentence on why ``layer`` has no unit under ``method``."""
    reason = METHODS[method].reason_unavailable(pruner.structure, layer)
    return reason or f"layer {layer!r} has nothing that {METHODS[method].title!r} prunes"


@dataclass(frozen=True, eq=False)
class ScoreHistogram:
    """Importance scores binned, split into kept and pruned elements.

    Attributes:
        edges: float64 (bins + 1,), bin edges (of log10(score) when ``log`` is True).
        kept: int64 (bins,), kept elements per bin.
        pruned: int64 (bins,), pruned elements per bin.
        log: whether the bins are over log10(score).
        left_out: elements not shown (score <= 0 on a log scale, or not finite).
    """

    edges: np.ndarray
    kept: np.ndarray
    pruned: np.ndarray
    log: bool
    left_out: int


def score_histogram(
    scores: torch.Tensor, keep: torch.Tensor | None, bins: int = 60, log: bool = False
) -> ScoreHistogram:
    """Bin ``scores`` (n,) into ``bins`` shared bins; ``keep`` (n,) bool, None = all kept."""
    values = scores.detach().double().cpu().numpy().ravel()
    kept = np.ones(values.shape, dtype=bool) if keep is None else keep.cpu().numpy().ravel()
    valid = np.isfinite(values)
    if log:
        valid &= values > 0
        values = np.where(valid, np.log10(np.where(valid, values, 1.0)), np.nan)
    shown = values[valid]
    low, high = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    kept_counts = np.histogram(values[valid & kept], edges)[0]
    pruned_counts = np.histogram(values[valid & ~kept], edges)[0]
    return ScoreHistogram(edges, kept_counts, pruned_counts, log, int((~valid).sum()))
