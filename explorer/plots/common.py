"""Figures shared by several pages."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterable

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from PIL import Image

from explorer.zoo.mnist import ImageDataset

#: Pruned is dark grey on every page: red and blue already mean the sign of a weight or an
#: activation, and a pale grey would read as "near zero".
PRUNED_COLOR = "#595959"
#: A prediction that is the true class, and one that is not: the same two colours wherever a
#: prediction is shown (flip tables and counts, saliency titles, the confusion change), whichever
#: model made it, so that a *fixed* flip reads as "pruned right" at a glance.
RIGHT_COLOR = "#009E73"
WRONG_COLOR = "#d62728"
#: Something the plan changed for the worse (a unit it removed, an error it added).
CHANGED_COLOR = WRONG_COLOR
DENSE_COLOR = "#1f77b4"
PLAN_COLOR = "#ff7f0e"
#: Colours of overlaid series (sweeps, subjects), colour-blind safe (Okabe-Ito).
SERIES_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


def prediction_color(predicted: int | str, true: int | str) -> str:
    """``RIGHT_COLOR`` when ``predicted`` is the ``true`` class (both indices or both names),
    else ``WRONG_COLOR``."""
    return RIGHT_COLOR if predicted == true else WRONG_COLOR


def preferred_series_color(identity: str) -> int:
    """The index in ``SERIES_COLORS`` a series named ``identity`` asks for: a hash of the name,
    not its position, so a sweep keeps its colour whichever plan is current."""
    digest = hashlib.sha256(identity.encode()).digest()
    return digest[0] % len(SERIES_COLORS)


def assign_series_color(identity: str, taken: Iterable[int]) -> int:
    """A colour index for a new series: its preferred one, or the next one no series in ``taken``
    has (while any is left), so that series drawn together rarely share a colour."""
    used = set(taken)
    start = preferred_series_color(identity)
    for step in range(len(SERIES_COLORS)):
        index = (start + step) % len(SERIES_COLORS)
        if index not in used:
            return index
    return start


def compact_layout(fig: go.Figure, height: int, title: str | None = None) -> go.Figure:
    """Tight margins and a fixed height: figures sit in narrow columns."""
    fig.update_layout(
        height=height, margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10}, title=title
    )
    return fig


def add_dense_line(fig: go.Figure, accuracy: float) -> None:
    """The dense model's accuracy (in [0, 1]) as a dotted horizontal line labelled "dense",
    on a figure whose y axis is accuracy in %."""
    fig.add_hline(
        y=accuracy * 100,
        line_dash="dot",
        line_color=DENSE_COLOR,
        annotation_text="dense",
        annotation_position="bottom left",
    )


#: Largest side of a tile in the sample grid: a 224-px photo is shown at this size (the grid
#: is a glance at the data, and every pixel is sent to the browser).
GRID_TILE = 56


def sample_grid_figure(
    dataset: ImageDataset, count: int = 24, columns: int = 8, start: int = 0
) -> go.Figure:
    """A mosaic of ``count`` samples from ``start``, each with its class name *under* it (on
    the digit, a label would hide the strokes it describes). Grey images are drawn as dark
    ink on white, colour ones in their colours; large images are scaled down to tiles."""
    count = min(count, len(dataset) - start)
    rows = -(-count // columns)
    colour = dataset.input_shape[0] == 3
    source_h, source_w = dataset.input_shape[-2:]
    scale = min(1.0, GRID_TILE / max(source_h, source_w))
    height, width = max(1, round(source_h * scale)), max(1, round(source_w * scale))
    gap, label_band = max(2, width // 7), max(8, height // 2)
    pitch_x, pitch_y = width + gap, height + label_band
    mosaic = np.ones((rows * pitch_y, columns * pitch_x, 3 if colour else 1))
    annotations = []
    for i in range(count):
        r, c = divmod(i, columns)
        pixels = dataset.pixels(start + i)
        pixels = pixels if pixels.ndim == 3 else pixels[..., None]
        if not colour:
            pixels = 1 - pixels.mean(-1, keepdims=True)  # dark ink on white
        if scale < 1.0:
            tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
            tensor = F.interpolate(tensor.float(), size=(height, width), mode="area")
            pixels = tensor[0].numpy().transpose(1, 2, 0)
        top, left = r * pitch_y, c * pitch_x
        mosaic[top : top + height, left : left + width] = pixels
        annotations.append(
            {
                "x": left + width / 2,
                "y": top + height + 1,
                "text": dataset.classes[int(dataset.labels[start + i])],
                "showarrow": False,
                "xanchor": "center",
                "yanchor": "top",
                "font": {"size": 13, "color": "#31333f"},
            }
        )
    if colour:
        trace = go.Image(z=(mosaic * 255).round().astype(np.uint8), hoverinfo="skip")
    else:
        trace = go.Heatmap(z=mosaic[..., 0], colorscale="gray", showscale=False, hoverinfo="skip")
    fig = go.Figure(trace)
    fig.update_yaxes(autorange="reversed", visible=False, scaleanchor="x")
    fig.update_xaxes(visible=False)
    fig.update_layout(annotations=annotations)
    return compact_layout(fig, height=72 * rows + 20)


def image_data_uri(pixels: np.ndarray, size: int = 28) -> str:
    """A small PNG of display pixels in [0, 1] ((H, W) grey or (H, W, C) colour) as a
    ``data:`` URI, for an image column of a table; scaled to at most ``size`` pixels a side.
    Grey images are drawn as dark ink on white, like the sample grid."""
    values = np.asarray(pixels, dtype=np.float64)
    if values.ndim == 2:
        values = 1.0 - values  # ink on paper
    image = Image.fromarray((np.clip(values, 0, 1) * 255).round().astype(np.uint8))
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
