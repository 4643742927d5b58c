"""Figures of the Prune page: the accuracy-vs-sparsity curve and per-layer sparsity."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from explorer.plots.common import DENSE_COLOR, PLAN_COLOR, PRUNED_COLOR, compact_layout


def curve_figure(
    sparsity: Sequence[float],
    accuracy: Sequence[float],
    current: tuple[float, float],
    dense_accuracy: float,
    label: str,
) -> go.Figure:
    """Accuracy (y) against sparsity of the prunable weights (x), the current plan marked."""
    fig = go.Figure()
    fig.add_hline(
        y=dense_accuracy * 100,
        line_dash="dot",
        line_color=DENSE_COLOR,
        annotation_text="dense",
        annotation_position="bottom left",
    )
    fig.add_trace(
        go.Scatter(
            x=[s * 100 for s in sparsity],
            y=[a * 100 for a in accuracy],
            mode="lines+markers",
            name=label,
            line_color=DENSE_COLOR,
            hovertemplate="sparsity %{x:.1f}%<br>accuracy %{y:.2f}%",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[current[0] * 100],
            y=[current[1] * 100],
            mode="markers",
            name="this plan",
            marker={"size": 14, "color": PLAN_COLOR, "symbol": "star"},
            hovertemplate="this plan<br>sparsity %{x:.1f}%<br>accuracy %{y:.2f}%",
        )
    )
    fig.update_xaxes(title="sparsity of prunable weights (%)", range=[-2, 102])
    fig.update_yaxes(title="eval accuracy (%)")
    fig.update_layout(legend={"orientation": "h", "y": 1.12})
    return compact_layout(fig, 320)


def layer_sparsity_figure(
    layers: Sequence[str], sparsity: Sequence[float], own_setting: Sequence[bool]
) -> go.Figure:
    """One bar per layer: the fraction of its weights that are zero."""
    colors = [PLAN_COLOR if own else PRUNED_COLOR for own in own_setting]
    fig = go.Figure(
        go.Bar(
            x=list(layers),
            y=[s * 100 for s in sparsity],
            marker_color=colors,
            hovertemplate="%{x}: %{y:.1f}% zero<extra></extra>",
        )
    )
    fig.update_yaxes(title="weights pruned (%)", range=[0, 100])
    return compact_layout(fig, 260)
