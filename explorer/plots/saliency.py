"""Figures of the Saliency page: an image and its dense / pruned attribution maps, side by side."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.inside.saliency.agreement import AgreementPoint
from explorer.plots.common import compact_layout, prediction_color

MAP_SCALE = "Viridis"
DIFFERENCE_SCALE = "RdBu_r"  # red: the pruned model relies on a pixel more; blue: less
#: What the difference panel's colours are: both maps as shares of their own total (sum 1).
DIFFERENCE_TITLE = "pruned − dense<br>share of each map's total"
NOTE_WIDTH = 22  # characters per line of a note over a blank panel (a quarter of the figure)


def prediction_text(name: str, label: str, confidence: float) -> str:
    """``"Dense<br>predicts 7 (99.1%)"``; a non-finite confidence says the output is broken."""
    if not np.isfinite(confidence):
        return f"{name}<br>output not finite"
    return f"{name}<br>predicts {label} ({confidence:.1%})"


def _outline(image: np.ndarray, color: str) -> go.Contour:
    """The digit's outline (half-intensity contour), to read a map against the strokes."""
    return go.Contour(
        z=image,
        contours={"start": 0.5, "end": 0.5, "size": 1, "coloring": "none"},
        line={"color": color, "width": 1},
        showscale=False,
        hoverinfo="skip",
    )


def _note_over(fig: go.Figure, col: int, text: str) -> None:
    """``text`` in the middle of panel ``col`` (a blank map), wrapped to the panel's width."""
    axis = "" if col == 1 else str(col)
    fig.add_annotation(
        text="<br>".join(textwrap.wrap(text, NOTE_WIDTH)),
        xref=f"x{axis} domain",
        yref=f"y{axis} domain",
        x=0.5,
        y=0.5,
        showarrow=False,
        font={"size": 12, "color": "white"},
        bgcolor="rgba(0,0,0,0.35)",
    )


def saliency_figure(
    image: np.ndarray,
    dense_map: np.ndarray,
    pruned_map: np.ndarray,
    difference: np.ndarray,
    true_label: str,
    target: str,
    dense_prediction: tuple[str, float],
    pruned_prediction: tuple[str, float],
    height: int = 330,
    dense_note: str = "",
    pruned_note: str = "",
    caption: str | None = None,
) -> go.Figure:
    """Input, dense map, pruned map and their difference in one row.

    Args:
        image: display pixels in [0, 1], (H, W) grey or (H, W, 3) colour.
        dense_map, pruned_map: (H, W) attributions scaled to a maximum of 1 (non-negative).
        difference: (H, W) ``compare.difference_map`` of the raw maps: each map's share of
            its own total per pixel, pruned minus dense (not ``pruned_map - dense_map``:
            maps scaled to their own maximum are not on one scale); shown in % on a
            diverging scale centred at 0.
        true_label: the image's class name.
        target: the class name whose logit both maps explain.
        dense_prediction, pruned_prediction: (class name, softmax confidence in [0, 1]).
        height: figure height in pixels.
        dense_note, pruned_note: "" to draw the map; otherwise the map is "≈ 0" and its panel
            is drawn blank (all zeros, never stretched to a maximum of 1) under "map ≈ 0" and
            this text (e.g. "no evidence for this class at this layer"); the difference panel
            is then blank too. Default "".
        caption: the line under the figure; default "both maps explain the logit of class
            ``target``".
    """
    if dense_note:
        dense_map = np.zeros(np.shape(dense_map))
    if pruned_note:
        pruned_map = np.zeros(np.shape(pruned_map))
    if dense_note or pruned_note:
        difference = np.zeros(np.shape(difference))
    grey = image if image.ndim == 2 else image.mean(-1)
    titles = [
        f"Input<br>true class {true_label}",
        prediction_text("Dense", *dense_prediction),
        prediction_text("Pruned", *pruned_prediction),
        "Pruned − dense<br>where reliance moved",
    ]
    fig = make_subplots(rows=1, cols=4, subplot_titles=titles, horizontal_spacing=0.02)
    fig.add_trace(
        go.Heatmap(
            z=1 - grey, colorscale="gray", zmin=0, zmax=1, showscale=False, hoverinfo="skip"
        ),
        row=1,
        col=1,
    )
    hover = "x %{x}, y %{y}<br>%{z:.2f}<extra></extra>"
    for col, values in ((2, dense_map), (3, pruned_map)):
        fig.add_trace(
            go.Heatmap(z=values, coloraxis="coloraxis", hovertemplate=hover), row=1, col=col
        )
        fig.add_trace(_outline(grey, "rgba(255,255,255,0.55)"), row=1, col=col)
    fig.add_trace(
        go.Heatmap(
            z=difference,
            coloraxis="coloraxis2",
            hovertemplate="x %{x}, y %{y}<br>%{z:+.2~%} of the total<extra></extra>",
        ),
        1,
        4,
    )
    fig.add_trace(_outline(grey, "rgba(0,0,0,0.45)"), row=1, col=4)
    span = max(float(np.abs(difference).max()), 1e-6)
    bar = {"orientation": "h", "thickness": 10, "y": -0.04, "xanchor": "center", "yanchor": "top"}
    fig.update_layout(
        coloraxis={
            "colorscale": MAP_SCALE,
            "cmin": 0,
            "cmax": 1,
            "colorbar": {
                **bar,
                "len": 0.45,
                "x": 0.5,
                "title": {"text": "importance (scaled to max 1)", "side": "bottom"},
            },
        },
        coloraxis2={
            "colorscale": DIFFERENCE_SCALE,
            "cmin": -span,
            "cmax": span,
            "colorbar": {
                **bar,
                "len": 0.24,
                "x": 0.8825,
                "tickformat": ".2~%",
                "title": {"text": DIFFERENCE_TITLE, "side": "bottom"},
            },
        },
        showlegend=False,
    )
    fig.update_xaxes(visible=False, constrain="domain")
    for col in range(1, 5):
        fig.update_yaxes(
            visible=False,
            autorange="reversed",
            scaleanchor="x" if col == 1 else f"x{col}",
            constrain="domain",
            row=1,
            col=col,
        )
    # each prediction in the colour of right or wrong (the true class), whichever model made it
    for title, (predicted, _) in zip(
        fig.layout.annotations[1:3], (dense_prediction, pruned_prediction), strict=True
    ):
        title.font.color = prediction_color(predicted, true_label)
    target_note = caption or f"both maps explain the logit of class {target}"
    fig.add_annotation(
        text=target_note,
        xref="paper",
        yref="paper",
        x=0,
        y=-0.04,
        xanchor="left",
        yanchor="top",
        showarrow=False,
        font={"size": 12},
    )
    for col, note in ((2, dense_note), (3, pruned_note)):
        if note:
            _note_over(fig, col, f"map ≈ 0 ({note})")
    if dense_note or pruned_note:
        _note_over(fig, 4, "n/a: a map ≈ 0 has no pattern to compare")
    fig = compact_layout(fig, height)
    fig.update_layout(margin={"t": 56, "b": 70})
    return fig


def agreement_curve_figure(
    curve: Sequence[AgreementPoint], current: float | None = None, height: int = 340
) -> go.Figure:
    """Mean rank correlation and mean top-k overlap of dense and pruned maps (y) against the
    plan's sparsity (x, %), each image's value as a faint dot behind its mean.

    Args:
        curve: ``agreement_curve``'s result (an ``AgreementCurve``, or any sequence of
            ``AgreementPoint``); images whose maps could not be compared (nan) are left out
            of the dots and the means, and the hover says over how many images each mean is.
        current: the current plan's amount in [0, 1], marked with a dotted line (None: no
            mark).
        height: figure height in pixels, default 340.
    """
    points = list(curve)
    share = getattr(curve, "fraction", 0.1)
    fig = go.Figure()
    series = (
        ("rank correlation", "rank_correlations", "mean_rank_correlation", "#1f77b4"),
        (f"top-{share:.0%} overlap", "overlaps", "mean_overlap", "#ff7f0e"),
    )
    lowest = 0.0
    for name, each, mean, color in series:
        dots = [(p.amount * 100, v) for p in points for v in getattr(p, each) if np.isfinite(v)]
        lowest = min([lowest, *(v for _, v in dots)])
        fig.add_trace(
            go.Scatter(
                x=[x for x, _ in dots],
                y=[y for _, y in dots],
                mode="markers",
                marker={"color": color, "size": 4, "opacity": 0.25},
                name=f"{name}, each image",
                showlegend=False,
                hovertemplate=f"{name} of one image: %{{y:.2f}}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[p.amount * 100 for p in points],
                y=[getattr(p, mean) for p in points],
                mode="lines+markers",
                line={"color": color, "width": 2.5},
                name=f"mean {name}",
                customdata=[[p.compared, len(getattr(p, each))] for p in points],
                hovertemplate=f"%{{x:.0f}}%: mean {name} %{{y:.2f}} over %{{customdata[0]}} "
                "of %{customdata[1]} images<extra></extra>",
            )
        )
    if current is not None:
        fig.add_vline(
            x=current * 100,
            line_dash="dot",
            line_color="#7f7f7f",
            annotation_text="this plan",
            annotation_position="bottom right",
        )
    # rank correlation lives in [-1, 1], the overlap in [0, 1]: show below 0 only when needed
    bottom = max(-1.05, min(-0.3, lowest - 0.05))
    fig.update_xaxes(title="sparsity of the plan (%)", range=[-2, 100])
    fig.update_yaxes(title="agreement with the dense maps", range=[bottom, 1.05])
    fig.update_layout(legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0})
    return compact_layout(fig, height)
