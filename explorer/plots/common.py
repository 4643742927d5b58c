"""Figures shared by several pages."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from explorer.data import ImageDataset

#: Pruned is dark grey on every page: red and blue already mean the sign of a weight or an
#: activation, and a pale grey would read as "near zero".
PRUNED_COLOR = "#595959"
#: Something the plan changed for the worse (a flipped prediction).
CHANGED_COLOR = "#d62728"
DENSE_COLOR = "#1f77b4"
PLAN_COLOR = "#ff7f0e"


def compact_layout(fig: go.Figure, height: int, title: str | None = None) -> go.Figure:
    """Tight margins and a fixed height: figures sit in narrow columns."""
    fig.update_layout(
        height=height, margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10}, title=title
    )
    return fig


def sample_grid_figure(
    dataset: ImageDataset, count: int = 24, columns: int = 8, start: int = 0
) -> go.Figure:
    """A mosaic of ``count`` samples from ``start``, each with its class name *under* it (on
    the digit, a label would hide the strokes it describes); single-channel display."""
    rows = -(-count // columns)
    height, width = dataset.input_shape[-2:]
    gap, label_band = max(2, width // 7), max(8, height // 2)
    pitch_x, pitch_y = width + gap, height + label_band
    mosaic = np.ones((rows * pitch_y, columns * pitch_x))
    annotations = []
    for i in range(count):
        r, c = divmod(i, columns)
        pixels = dataset.pixels(start + i)
        if pixels.ndim == 3:
            pixels = pixels.mean(-1)
        top, left = r * pitch_y, c * pitch_x
        mosaic[top : top + height, left : left + width] = 1 - pixels  # dark ink on white
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
    fig = go.Figure(go.Heatmap(z=mosaic, colorscale="gray", showscale=False, hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed", visible=False, scaleanchor="x")
    fig.update_xaxes(visible=False)
    fig.update_layout(annotations=annotations)
    return compact_layout(fig, height=72 * rows + 20)
