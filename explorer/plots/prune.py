"""Figures of the Prune page: the accuracy-vs-sparsity curve and per-layer sparsity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from explorer.plots.common import (
    PLAN_COLOR,
    PRUNED_COLOR,
    SERIES_COLORS,
    add_dense_line,
    compact_layout,
    preferred_series_color,
)


@dataclass(frozen=True)
class CurveSeries:
    """One accuracy-vs-sparsity sweep: its label and points (fractions in [0, 1]), and its
    colour (default: the one its label hashes to, ``preferred_series_color``)."""

    label: str
    sparsity: Sequence[float]
    accuracy: Sequence[float]
    color: str | None = None

    @property
    def line_color(self) -> str:
        """The colour it is drawn in: its own, else the one of its label (never its position,
        so a sweep keeps its colour when another plan becomes the current one)."""
        return self.color or SERIES_COLORS[preferred_series_color(self.label)]


def curve_figure(
    series: Sequence[CurveSeries], current: tuple[float, float], dense_accuracy: float
) -> go.Figure:
    """Accuracy (y) against sparsity of the prunable weights (x), one line per sweep in its own
    colour (``CurveSeries.line_color``; the first is the current plan's, drawn thickest), the
    current plan marked with a star."""
    fig = go.Figure()
    add_dense_line(fig, dense_accuracy)
    for i, curve in enumerate(series):
        fig.add_trace(
            go.Scatter(
                x=[s * 100 for s in curve.sparsity],
                y=[a * 100 for a in curve.accuracy],
                mode="lines+markers",
                name=curve.label,
                line={
                    "color": curve.line_color,
                    "width": 3 if i == 0 else 1.5,
                },
                marker={"size": 6 if i == 0 else 4},
                hovertemplate=f"{curve.label}<br>sparsity %{{x:.1f}}%<br>accuracy %{{y:.2f}}%"
                "<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[current[0] * 100],
            y=[current[1] * 100],
            mode="markers",
            name="this plan",
            marker={"size": 14, "color": PLAN_COLOR, "symbol": "star"},
            hovertemplate="this plan<br>sparsity %{x:.1f}%<br>accuracy %{y:.2f}%<extra></extra>",
        )
    )
    fig.update_xaxes(title="sparsity of prunable weights (%)", range=[-2, 102])
    fig.update_yaxes(title="eval accuracy (%)")
    # Legend below the plot: labels are long, and several sweeps must not cover the lines.
    fig.update_layout(legend={"orientation": "h", "y": -0.25, "yanchor": "top"})
    fig = compact_layout(fig, 360 + 22 * len(series))
    fig.update_layout(margin={"b": 10 + 22 * len(series)})
    return fig


def layer_sparsity_figure(
    layers: Sequence[str], sparsity: Sequence[float], own_setting: Sequence[bool]
) -> go.Figure:
    """One horizontal bar per layer, in graph order from the top: the fraction of its weights
    that are zero (horizontal, so that a ResNet's 21 layer names stay readable)."""
    colors = [PLAN_COLOR if own else PRUNED_COLOR for own in own_setting]
    fig = go.Figure(
        go.Bar(
            y=list(layers),
            x=[s * 100 for s in sparsity],
            orientation="h",
            marker_color=colors,
            hovertemplate="%{y}: %{x:.1f}% zero<extra></extra>",
        )
    )
    fig.update_xaxes(title="weights pruned (%)", range=[0, 100])
    fig.update_yaxes(autorange="reversed", automargin=True)
    return compact_layout(fig, layer_bars_height(len(layers)))


def layer_bars_height(count: int) -> int:
    """Figure height for ``count`` horizontal bars: every name gets a readable row."""
    return max(200, 60 + 18 * count)
