"""Figures of dynamic pruning: accuracy against the share computed, and which units each
class keeps. Data in (``explorer.inside.dynamic`` results), ``go.Figure`` out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from explorer.inside.dynamic import DynamicPoint
from explorer.plots.common import PLAN_COLOR, PRUNED_COLOR, add_dense_line, compact_layout
from explorer.plots.prune import SERIES_COLORS, CurveSeries


def dynamic_curve_figure(
    points: Sequence[DynamicPoint],
    dense_accuracy: float,
    current: float | None = None,
    static: Sequence[CurveSeries] = (),
) -> go.Figure:
    """Accuracy (%) against the share of units computed per input (%), the dense accuracy as
    a dotted line and the current ``keep`` marked with a star.

    Args:
        points: ``dynamic_curve``'s result (any order).
        dense_accuracy: in [0, 1], on the same images.
        current: the keep share to mark (one of the points'), or None.
        static: static-pruning sweeps to compare with, dashed: each ``CurveSeries``'s
            ``sparsity`` is the share removed for every input (of the units for a structured
            method, of the weights for an unstructured one: its label should say which), drawn
            at ``1 - sparsity``; accuracies in [0, 1], on the same images if it is to compare.
    """
    ordered = sorted(points, key=lambda p: p.units_computed)
    fig = go.Figure()
    add_dense_line(fig, dense_accuracy)
    for i, series in enumerate(static):
        pairs = sorted(zip(series.sparsity, series.accuracy, strict=True), reverse=True)
        fig.add_trace(
            go.Scatter(
                x=[(1 - s) * 100 for s, _ in pairs],
                y=[a * 100 for _, a in pairs],
                mode="lines+markers",
                line={"color": SERIES_COLORS[i % len(SERIES_COLORS)], "dash": "dash"},
                marker={"size": 5},
                name=f"static: {series.label}",
                hovertemplate=f"static {series.label}: %{{x:.0f}}% kept for every input, "
                "accuracy %{y:.2f}%<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[p.units_computed * 100 for p in ordered],
            y=[p.accuracy * 100 for p in ordered],
            mode="lines+markers",
            line={"color": PRUNED_COLOR},
            name="top-k per input",
            customdata=[[p.keep * 100, p.flops_computed * 100] for p in ordered],
            hovertemplate="keep %{customdata[0]:.0f}% of each layer's units: accuracy "
            "%{y:.2f}%, %{x:.1f}% of the units, %{customdata[1]:.0f}% of the FLOPs if "
            "skipped units cost nothing<extra></extra>",
        )
    )
    chosen = [p for p in ordered if current is not None and abs(p.keep - current) < 1e-9]
    if chosen:
        fig.add_trace(
            go.Scatter(
                x=[chosen[0].units_computed * 100],
                y=[chosen[0].accuracy * 100],
                mode="markers",
                marker={"symbol": "star", "size": 16, "color": PLAN_COLOR},
                name="this setting",
                hoverinfo="skip",
            )
        )
    title = "units computed per input (%)" if not static else "share kept per input (%)"
    fig.update_xaxes(title=title, range=[0, 102])
    fig.update_yaxes(title="eval accuracy (%)")
    fig.update_layout(legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0})
    return compact_layout(fig, 340)


def class_usage_figure(usage: np.ndarray, class_names: Sequence[str], layer: str) -> go.Figure:
    """Which units each class keeps: the share of a class's inputs for which each unit of
    ``layer`` was among the kept ones (rows: classes, columns: units).

    Args:
        usage: float (K, units) in [0, 1] (``DynamicResult.usage[layer]``).
        class_names: the K class names.
        layer: the layer's name, for the axis title.
    """
    usage = np.asarray(usage, dtype=float)
    units = usage.shape[1]
    fig = go.Figure(
        go.Heatmap(
            z=usage,
            x=list(range(units)),
            y=[str(c) for c in class_names],
            zmin=0,
            zmax=1,
            colorscale="Greens",
            colorbar={"title": "kept for", "tickformat": ".0%"},
            hovertemplate="class %{y}, unit %{x}: kept for %{z:.0%} of its inputs<extra></extra>",
            xgap=1 if units <= 64 else 0,
            ygap=1,
        )
    )
    fig.update_xaxes(title=f"unit of {layer}", showgrid=False)
    fig.update_yaxes(title="true class", type="category", autorange="reversed")
    return compact_layout(fig, max(280, 90 + 26 * len(class_names)))
