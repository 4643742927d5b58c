"""Figures shared by several pages."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from explorer.data import ImageDataset

PRUNED_COLOR = "#d62728"
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
    """A mosaic of ``count`` samples from ``start`` with their labels (single-channel data)."""
    rows = -(-count // columns)
    height, width = dataset.input_shape[-2:]
    gap = 4
    mosaic = np.ones((rows * (height + gap), columns * (width + gap)))
    annotations = []
    for i in range(count):
        r, c = divmod(i, columns)
        pixels = dataset.pixels(start + i)
        if pixels.ndim == 3:
            pixels = pixels.mean(-1)
        top, left = r * (height + gap), c * (width + gap)
        mosaic[top : top + height, left : left + width] = 1 - pixels  # dark ink on white
        annotations.append(
            {
                "x": left + 2,
                "y": top + 2,
                "text": dataset.classes[int(dataset.labels[start + i])],
                "showarrow": False,
                "xanchor": "left",
                "yanchor": "top",
                "font": {"size": 10, "color": PLAN_COLOR},
            }
        )
    fig = go.Figure(go.Heatmap(z=mosaic, colorscale="gray", showscale=False, hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed", visible=False, scaleanchor="x")
    fig.update_xaxes(visible=False)
    fig.update_layout(annotations=annotations)
    return compact_layout(fig, height=60 * rows + 20)
