"""Figures of the Activations page: a sample, its predictions, layer outputs dense vs pruned,
and per-unit statistics over the eval split. Arrays in, figures out."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.inside.activations import UnitStats
from explorer.plots.common import DENSE_COLOR, PLAN_COLOR, PRUNED_COLOR, compact_layout

ACTIVATION_SCALE = "RdBu_r"  # diverging, centred at 0
PRUNED_MARK = "rgba(120, 120, 120, 0.28)"


def _symmetric_coloraxis(zmax: float) -> dict:
    """One diverging colour scale centred at 0 for dense and pruned alike."""
    return {
        "colorscale": ACTIVATION_SCALE,
        "cmid": 0,
        "cmin": -zmax,
        "cmax": zmax,
        "colorbar": {"thickness": 10, "len": 0.8},
    }


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of True in a 1-D bool array."""
    padded = np.concatenate([[False], np.asarray(flags, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _symmetric_range(*arrays: np.ndarray) -> float:
    values = [np.abs(a[np.isfinite(a)]) for a in arrays]
    top = max((float(v.max()) for v in values if v.size), default=0.0)
    return top if top > 0 else 1.0


def sample_image_figure(pixels: np.ndarray, size: int = 170) -> go.Figure:
    """One image (H, W) with values in [0, 1], ink dark on white."""
    fig = go.Figure(
        go.Heatmap(
            z=1 - pixels,
            colorscale="gray",
            zmin=0,
            zmax=1,
            showscale=False,
            hovertemplate="row %{y}, col %{x}: %{customdata:.2f}<extra></extra>",
            customdata=pixels,
        )
    )
    fig.update_yaxes(autorange="reversed", visible=False, scaleanchor="x")
    fig.update_xaxes(visible=False)
    return compact_layout(fig, size)


def prediction_figure(
    classes: Sequence[str], dense: np.ndarray, pruned: np.ndarray, label: int | None = None
) -> go.Figure:
    """Softmax probabilities (classes,) of the dense and the pruned model, grouped by class."""
    names = [f"{c}{' ✓' if i == label else ''}" for i, c in enumerate(classes)]
    fig = go.Figure()
    for probs, name, color in ((dense, "dense", DENSE_COLOR), (pruned, "pruned", PLAN_COLOR)):
        fig.add_trace(
            go.Bar(
                x=names,
                y=np.asarray(probs) * 100,
                name=name,
                marker_color=color,
                hovertemplate="class %{x}: %{y:.1f}%<extra>" + name + "</extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        bargap=0.25,
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
    )
    fig.update_yaxes(title="softmax (%)", range=[0, 100])
    fig.update_xaxes(type="category", title="class (✓ true label)")
    return compact_layout(fig, 230)


def divergence_figure(
    layers: Sequence[str], change: Sequence[float], selected: str | None = None
) -> go.Figure:
    """Per layer, how far the pruned output is from the dense one, ||p - d|| / ||d||.

    Horizontal bars, the first layer on top: layer names stay whole and readable however many
    there are (a ViT has 14), and the figure grows with them.
    """
    values = [min(c, 10.0) * 100 for c in change]
    fig = go.Figure(
        go.Bar(
            y=list(layers),
            x=values,
            orientation="h",
            marker_color=PLAN_COLOR,
            marker_line_color="#222",
            marker_line_width=[3 if n == selected else 0 for n in layers],
            hovertemplate="%{y}: %{x:.1f}% relative change<extra></extra>",
        )
    )
    fig.update_xaxes(title="change vs dense (%)", rangemode="tozero", automargin=True)
    fig.update_yaxes(autorange="reversed", automargin=True, tickfont={"size": 11})
    return compact_layout(fig, 70 + 20 * len(layers))


def _mosaic(maps: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) -> a grid of maps with 1-px NaN gaps, and the channel of each cell (0 in gaps)."""
    c, h, w = maps.shape
    rows = math.ceil(c / columns)
    image = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan, dtype=np.float32)
    owner = np.zeros(image.shape, dtype=np.uint16)
    for k in range(c):
        r, q = divmod(k, columns)
        image[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = maps[k]
        owner[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = k
    return image, owner


def feature_maps_figure(
    dense: np.ndarray, pruned: np.ndarray, pruned_units: np.ndarray, height: int | None = None
) -> go.Figure:
    """Conv outputs (C, H, W), dense and pruned side by side as grids of channel maps.

    Pruned channels (``pruned_units``, bool (C,)) are outlined in dark grey in the pruned grid. Both
    grids share one colour scale centred at 0.
    """
    c, h, w = dense.shape
    columns = math.ceil(math.sqrt(c))
    zmax = _symmetric_range(dense, pruned)
    fig = make_subplots(1, 2, subplot_titles=("dense", "pruned"), horizontal_spacing=0.04)
    for col, maps in ((1, dense), (2, pruned)):
        image, owner = _mosaic(maps, columns)
        fig.add_trace(
            go.Heatmap(
                z=image,
                customdata=owner,
                coloraxis="coloraxis",
                hoverongaps=False,
                name="dense" if col == 1 else "pruned",
                hovertemplate="channel %{customdata}<br>value %{z:.3g}<extra></extra>",
            ),
            1,
            col,
        )
    for k in np.flatnonzero(pruned_units):
        r, q = divmod(int(k), columns)
        fig.add_shape(
            type="rect",
            x0=q * (w + 1) - 0.5,
            x1=q * (w + 1) + w - 0.5,
            y0=r * (h + 1) - 0.5,
            y1=r * (h + 1) + h - 0.5,
            xref="x2",
            yref="y2",
            line={"color": PRUNED_COLOR, "width": 2},
        )
    fig.update_yaxes(autorange="reversed", visible=False, scaleanchor="x")
    fig.update_yaxes(scaleanchor="x2", row=1, col=2)
    fig.update_xaxes(visible=False)
    fig.update_layout(coloraxis=_symmetric_coloraxis(zmax), plot_bgcolor="white")
    rows = math.ceil(c / columns)
    if height is None:  # each grid is about 270 px wide in a page column: keep pixels square
        aspect = (rows * (h + 1) - 1) / (columns * (w + 1) - 1)
        height = int(np.clip(270 * aspect, 160, 560)) + 50
    fig = compact_layout(fig, height)
    fig.update_layout(margin={"t": 30})  # room for the subplot titles
    return fig


def token_map_figure(
    dense: np.ndarray,
    pruned: np.ndarray,
    pruned_units: np.ndarray,
    token_names: Sequence[str] | None = None,
) -> go.Figure:
    """Token outputs (T, F): tokens as rows, channels as columns, dense above pruned.

    Pruned channels (bool (F,)) are shaded grey over the pruned map.
    """
    tokens, features = dense.shape
    names = list(token_names) if token_names else [str(t) for t in range(tokens)]
    zmax = _symmetric_range(dense, pruned)
    fig = make_subplots(
        2, 1, subplot_titles=("dense", "pruned"), vertical_spacing=0.12, shared_xaxes=True
    )
    for row, maps in ((1, dense), (2, pruned)):
        fig.add_trace(
            go.Heatmap(
                z=maps.astype(np.float32),
                x=np.arange(features),
                y=names,
                coloraxis="coloraxis",
                hovertemplate="token %{y}, channel %{x}<br>value %{z:.3g}<extra></extra>",
            ),
            row,
            1,
        )
    for first, last in _runs(pruned_units):
        fig.add_shape(
            type="rect",
            x0=first - 0.5,
            x1=last + 0.5,
            y0=-0.5,
            y1=tokens - 0.5,
            xref="x2",
            yref="y2",
            fillcolor=PRUNED_MARK,
            line={"width": 0},
        )
    fig.update_yaxes(autorange="reversed", title="token")
    fig.update_xaxes(title="channel", row=2, col=1)
    fig.update_layout(coloraxis=_symmetric_coloraxis(zmax))
    fig = compact_layout(fig, int(np.clip(tokens * 2 * 14 + 110, 260, 560)))
    fig.update_layout(margin={"t": 30})  # room for the subplot titles
    return fig


def unit_strip_figure(
    dense: np.ndarray, pruned: np.ndarray, pruned_units: np.ndarray, unit: str = "unit"
) -> go.Figure:
    """Linear outputs (F,) as a two-row heat strip (dense, pruned); pruned units outlined.

    With at most 24 units (e.g. the logits) each cell is labelled with its value.
    """
    features = dense.shape[0]
    z = np.stack([dense, pruned]).astype(np.float32)
    zmax = _symmetric_range(z)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=np.arange(features),
            y=["dense", "pruned"],
            colorscale=ACTIVATION_SCALE,
            zmid=0,
            zmin=-zmax,
            zmax=zmax,
            xgap=1 if features <= 128 else 0,
            ygap=4,
            texttemplate="%{z:.2f}" if features <= 24 else None,
            colorbar={"thickness": 10, "len": 0.9},
            hovertemplate=f"{unit} %{{x}} (%{{y}})<br>value %{{z:.3g}}<extra></extra>",
        )
    )
    for first, last in _runs(pruned_units):
        fig.add_shape(
            type="rect",
            x0=first - 0.5,
            x1=last + 0.5,
            y0=0.5,
            y1=1.5,
            line={"color": PRUNED_COLOR, "width": 2},
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title=f"{unit}s")
    return compact_layout(fig, 200)


def unit_stats_figure(
    dense: UnitStats, pruned: UnitStats, pruned_units: np.ndarray, unit: str = "unit"
) -> go.Figure:
    """Per unit, dense vs pruned: mean value, fraction of zeros and max over the dataset.

    Units the plan pruned (bool (U,)) are shaded grey through all three panels; a unit whose
    max is <= 0 is dead (never positive).
    """
    count = len(dense.mean)
    x = np.arange(count)
    fig = make_subplots(
        3,
        1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=("mean value", "fraction of zeros", "max (dead if ≤ 0)"),
    )
    panels = (("mean", 1, ".3g"), ("zero_fraction", 2, ".1%"), ("max", 3, ".3g"))
    for stats, name, color in ((dense, "dense", DENSE_COLOR), (pruned, "pruned", PLAN_COLOR)):
        for field, row, fmt in panels:
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=getattr(stats, field).astype(np.float32),
                    name=name,
                    marker_color=color,
                    marker_line_width=0,
                    legendgroup=name,
                    showlegend=row == 1,
                    hovertemplate=f"{unit} %{{x}}: %{{y:{fmt}}}<extra>{name}</extra>",
                ),
                row,
                1,
            )
    for first, last in _runs(pruned_units):
        fig.add_vrect(
            x0=first - 0.5,
            x1=last + 0.5,
            fillcolor=PRUNED_MARK,
            line_width=0,
            layer="below",
            row="all",
            col=1,
        )
    fig.update_layout(
        barmode="group",
        bargap=0.15 if count <= 64 else 0,
        legend={"orientation": "h", "y": 1.06, "yanchor": "bottom", "x": 0},
    )
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02], row=2, col=1)
    fig.update_xaxes(title=f"{unit}s", row=3, col=1)
    fig = compact_layout(fig, 540)
    fig.update_layout(margin={"t": 60})  # room for the legend and the first subplot title
    return fig
