"""Figures of the Saliency page: an image and its dense / pruned attribution maps, side by side."""

from __future__ import annotations

import textwrap

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.plots.common import CHANGED_COLOR, compact_layout

MAP_SCALE = "Viridis"
DIFFERENCE_SCALE = "RdBu_r"  # red: the pruned model relies on a pixel more; blue: less
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
) -> go.Figure:
    """Input, dense map, pruned map and their difference in one row.

    Args:
        image: display pixels in [0, 1], (H, W) grey or (H, W, 3) colour.
        dense_map, pruned_map: (H, W) attributions scaled to a maximum of 1 (non-negative).
        difference: (H, W) ``pruned_map - dense_map``; shown on a diverging scale centred at 0.
        true_label: the image's class name.
        target: the class name whose logit both maps explain.
        dense_prediction, pruned_prediction: (class name, softmax confidence in [0, 1]).
        height: figure height in pixels.
        dense_note, pruned_note: "" to draw the map; otherwise the map is "≈ 0" and its panel
            is drawn blank (all zeros, never stretched to a maximum of 1) under "map ≈ 0" and
            this text (e.g. "no evidence for this class at this layer"); the difference panel
            is then blank too. Default "".
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
    fig.add_trace(go.Heatmap(z=difference, coloraxis="coloraxis2", hovertemplate=hover), 1, 4)
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
                "title": {"text": "pruned − dense", "side": "bottom"},
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
    if dense_prediction[0] != pruned_prediction[0]:
        fig.layout.annotations[2].font.color = CHANGED_COLOR  # the prediction changed
    target_note = f"both maps explain the logit of class {target}"
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
