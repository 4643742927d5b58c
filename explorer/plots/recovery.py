"""Figures of the Recover page: a run's loss and eval accuracy as it trains, and trajectories of
sparsity against accuracy (gradual vs one-shot, lottery tickets vs random re-initialization)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from explorer.plots.common import (
    DENSE_COLOR,
    PLAN_COLOR,
    PRUNED_COLOR,
    add_dense_line,
    compact_layout,
)
from explorer.plots.prune import SERIES_COLORS

#: Weight of the newest step in the smoothed loss (an exponential moving average).
SMOOTHING = 0.1


def smoothed(values: Sequence[float], weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average of ``values`` (bias-corrected, so the first point is exact)."""
    out, mean, norm = [], 0.0, 0.0
    for value in values:
        mean = (1 - weight) * mean + weight * value
        norm = (1 - weight) * norm + weight
        out.append(mean / norm)
    return out


def training_figure(
    losses: Sequence[float],
    evals: Sequence[tuple[int, float]],
    total_steps: int,
    reference: Sequence[tuple[str, float]] = (),
    height: int = 320,
) -> go.Figure:
    """Training loss per step (faint) and smoothed (left axis), eval accuracy at the steps it
    was measured (right axis, %), over the whole run's x range so it fills in as it goes.

    Args:
        losses: loss of each step so far, nats.
        evals: (step, accuracy in [0, 1]) pairs.
        total_steps: steps the run will take (the x axis's end).
        reference: (label, accuracy) lines on the accuracy axis, e.g. dense and before.
    """
    steps = list(range(1, len(losses) + 1))
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=list(losses),
            mode="lines",
            name="loss per step",
            line={"color": PRUNED_COLOR, "width": 1},
            opacity=0.35,
            hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=smoothed(losses),
            mode="lines",
            name="loss (smoothed)",
            line={"color": PRUNED_COLOR, "width": 2.5},
            hovertemplate="step %{x}<br>smoothed loss %{y:.4f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[step for step, _ in evals],
            y=[accuracy * 100 for _, accuracy in evals],
            mode="lines+markers",
            name="eval accuracy",
            yaxis="y2",
            line={"color": PLAN_COLOR, "width": 2.5},
            marker={"size": 7},
            hovertemplate="step %{x}<br>eval accuracy %{y:.2f}%<extra></extra>",
        )
    )
    for i, (label, accuracy) in enumerate(reference):
        fig.add_trace(
            go.Scatter(
                x=[0, max(total_steps, 1)],
                y=[accuracy * 100] * 2,
                mode="lines",
                name=label,
                yaxis="y2",
                line={"color": DENSE_COLOR if i == 0 else "#999999", "dash": "dot", "width": 1.5},
                hovertemplate=f"{label}: %{{y:.2f}}%<extra></extra>",
            )
        )
    fig.update_layout(
        xaxis={"title": "step", "range": [0, max(total_steps, 1)]},
        yaxis={"title": "training loss", "rangemode": "tozero"},
        yaxis2={
            "title": "eval accuracy (%)",
            "overlaying": "y",
            "side": "right",
            "range": [0, 101],
            "tickmode": "linear",
            "tick0": 0,
            "dtick": 20,
            "showgrid": False,
        },
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
    )
    compact_layout(fig, height)
    fig.update_layout(margin={"t": 30})
    return fig


@dataclass(frozen=True)
class Trajectory:
    """One run drawn as accuracy (fractions in [0, 1]) against ``x``, points in order.

    Attributes:
        label: the legend entry; x: the x values as drawn; accuracy: the y values;
        notes: one hover line per point (e.g. its sparsity), or empty.
    """

    label: str
    x: Sequence[float]
    accuracy: Sequence[float]
    notes: Sequence[str] = ()


def trajectory_figure(
    series: Sequence[Trajectory],
    x_title: str,
    dense_accuracy: float | None = None,
    log_x: bool = False,
    height: int = 340,
) -> go.Figure:
    """Accuracy (y, %) against ``x``, one line per run (gradual vs one-shot over training
    steps; lottery tickets vs random re-initialization over weights remaining)."""
    fig = go.Figure()
    if dense_accuracy is not None:
        add_dense_line(fig, dense_accuracy)
    for i, run in enumerate(series):
        fig.add_trace(
            go.Scatter(
                x=list(run.x),
                y=[a * 100 for a in run.accuracy],
                mode="lines+markers",
                name=run.label,
                text=list(run.notes) or None,
                line={"color": SERIES_COLORS[i % len(SERIES_COLORS)], "width": 2.5},
                marker={"size": 7},
                hovertemplate=f"{run.label}<br>{x_title}: %{{x}}<br>accuracy %{{y:.2f}}%"
                + ("<br>%{text}" if run.notes else "")
                + "<extra></extra>",
            )
        )
    fig.update_layout(
        xaxis={"title": x_title, "type": "log" if log_x else "linear"},
        yaxis={"title": "eval accuracy (%)"},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
    )
    compact_layout(fig, height)
    fig.update_layout(margin={"t": 30})
    return fig


__all__ = ["Trajectory", "smoothed", "training_figure", "trajectory_figure"]
