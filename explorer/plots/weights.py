"""Figures of the Weights page: a layer's weight heatmap, its score distribution, sparsity."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import plotly.graph_objects as go

from explorer.inside.weight_views import ScoreHistogram, WeightGrid
from explorer.plots.common import DENSE_COLOR, PLAN_COLOR, PRUNED_COLOR, compact_layout
from explorer.plots.prune import layer_bars_height, layer_sparsity_figure

WEIGHT_SCALE = "RdBu_r"  # diverging, centred at 0: blue negative, red positive
SMALL_UNIT = 128  # up to this many elements, scores are drawn one bar each, ranked


def _tick_positions(count: int, pitch: int, most: int = 16) -> tuple[list[float], list[str]]:
    """Tick values at the centre of every k-th tile so that at most ``most`` are labelled."""
    step = max(1, -(-count // most))
    values = [i * pitch + (pitch - 2) / 2 for i in range(0, count, step)]
    return values, [str(i) for i in range(0, count, step)]


def weight_heatmap_figure(grid: WeightGrid, height: int | None = None) -> go.Figure:
    """The masked weights as a heatmap, pruned entries as a grey trace named ``"pruned"``.

    Args:
        grid: from ``explorer.inside.weight_views.weight_grid``: values (H, W), pruned (H, W),
        owners.
        height: figure height in px; by default from the image's aspect (260-640 px).
    """
    values = np.where(grid.pruned, np.nan, grid.values).astype(np.float32)
    pruned = np.where(grid.pruned, 1.0, np.nan).astype(np.float32)
    finite = np.abs(grid.values[np.isfinite(grid.values)])
    zmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    rows, cols = grid.values.shape
    fr, fc = grid.pool
    tiled = grid.layout in ("kernels", "filters")
    if tiled:
        x, y = np.arange(cols), np.arange(rows)
    else:  # real unit indices on the axes (the first of each pooled block)
        x, y = np.arange(cols) * fc, np.arange(rows) * fr
    if grid.layout == "filters":
        where = "filter %{customdata[0]}"
    elif tiled:
        where = f"{grid.row_unit} %{{customdata[0]}}, {grid.col_unit} %{{customdata[1]}}"
    elif grid.pooled:
        where = (
            f"{fr}×{fc} block from {grid.row_unit} %{{y}}, {grid.col_unit} %{{x}}"
            "<br>largest |w| in the block"
        )
    elif grid.layout == "kernel max":
        where = (
            f"{grid.row_unit} %{{y}}, {grid.col_unit} %{{x}}<br>largest |w| of the "
            f"{grid.weight_shape[2]}×{grid.weight_shape[3]} kernel"
        )
    else:
        where = f"{grid.row_unit} %{{y}}, {grid.col_unit} %{{x}}"
    # Gaps never hover; 0 there rather than -1 keeps the base64 free of "/" (which plotly's
    # JSON escapes to six characters).
    owner = np.clip(grid.owner, 0, None)
    custom = owner.astype(np.uint8 if owner.max() < 256 else np.uint16) if tiled else None
    fig = go.Figure()
    fig.add_trace(
        go.Heatmap(
            z=values,
            x=x,
            y=y,
            customdata=custom,
            name="weights",
            colorscale=WEIGHT_SCALE,
            zmid=0.0,
            zmin=-zmax,
            zmax=zmax,
            hoverongaps=False,
            colorbar={
                "title": {"text": "weight", "side": "top"},
                "thickness": 10,
                "len": 0.6,
                "orientation": "h",
                "y": -0.02,
                "yanchor": "top",
            },
            hovertemplate=where + "<br>w = %{z:.4g}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Heatmap(
            z=pruned,
            x=x,
            y=y,
            customdata=custom,
            name="pruned",
            showscale=False,
            colorscale=[[0, PRUNED_COLOR], [1, PRUNED_COLOR]],
            zmin=0,
            zmax=1,
            hoverongaps=False,
            hovertemplate=where + "<br>pruned (zero)<extra></extra>",
        )
    )
    fig.update_yaxes(
        autorange="reversed", title=f"{grid.row_unit}s", showgrid=False, zeroline=False
    )
    fig.update_xaxes(title=f"{grid.col_unit}s", showgrid=False, zeroline=False, side="top")
    if grid.layout == "kernels":
        out, inp = grid.weight_shape[:2]
        fig.update_yaxes(
            tickmode="array",
            ticks="",
            **dict(zip(("tickvals", "ticktext"), _tick_positions(out, grid.tile[0]), strict=True)),
        )
        fig.update_xaxes(
            tickmode="array",
            ticks="",
            **dict(zip(("tickvals", "ticktext"), _tick_positions(inp, grid.tile[1]), strict=True)),
        )
    if grid.layout == "filters":
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    if tiled:
        fig.update_yaxes(scaleanchor="x", constrain="domain")
        fig.update_xaxes(constrain="domain")
    fig.update_layout(plot_bgcolor="white")
    if height is None:
        height = int(np.clip(rows / max(cols, 1) * 560, 220, 600)) + 60  # + the colour bar
    return compact_layout(fig, height)


LEGEND_ABOVE = {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0}


def _mark_threshold(add_line: Callable[..., object], at: float, value: float, where: str) -> None:
    """The plan's threshold as a dashed line (``fig.add_vline`` or ``fig.add_hline``) at ``at``."""
    add_line(
        at,
        line_dash="dash",
        line_color=PLAN_COLOR,
        annotation_text=f"threshold {value:.3g}",
        annotation_position=where,
        annotation_font_color=PLAN_COLOR,
    )


def score_histogram_figure(
    hist: ScoreHistogram, threshold: float | None, element: str = "weights"
) -> go.Figure:
    """Stacked histogram of scores, pruned part in dark grey, a dashed line at the threshold.

    Args:
        hist: binned scores from ``explorer.inside.weight_views.score_histogram``.
        threshold: the highest pruned score (raw, not log), or None when nothing is pruned.
        element: what one score belongs to, e.g. ``"weights"`` or ``"channels"``.
    """
    centres = (hist.edges[:-1] + hist.edges[1:]) / 2
    widths = np.diff(hist.edges)
    axis = "log10(score)" if hist.log else "score"
    fig = go.Figure()
    for counts, name, color in (
        (hist.kept, "kept", DENSE_COLOR),
        (hist.pruned, "pruned", PRUNED_COLOR),
    ):
        fig.add_trace(
            go.Bar(
                x=centres,
                y=counts,
                width=widths,
                name=f"{name} {element}",
                marker_color=color,
                marker_line_width=0,
                customdata=np.stack([hist.edges[:-1], hist.edges[1:]], -1),
                hovertemplate=f"{axis} %{{customdata[0]:.3g}} to %{{customdata[1]:.3g}}<br>"
                f"%{{y:,}} {name} {element}<extra></extra>",
            )
        )
    if threshold is not None and (threshold > 0 or not hist.log):
        at = float(np.log10(threshold)) if hist.log else threshold
        _mark_threshold(fig.add_vline, at, threshold, "top right")
    fig.update_layout(barmode="stack", bargap=0, legend=LEGEND_ABOVE)
    fig.update_xaxes(title=axis)
    fig.update_yaxes(title=f"{element}")
    return compact_layout(fig, 300)


def ranked_scores_figure(
    scores: np.ndarray,
    keep: np.ndarray,
    threshold: float | None,
    element: str = "channels",
    log: bool = False,
) -> go.Figure:
    """One bar per element, sorted by score (few elements: a histogram would hide them).

    Args:
        scores: float (n,) importance scores; keep: bool (n,), False = pruned.
        threshold: highest pruned score or None; element: e.g. ``"channels"``, ``"heads"``.
        log: log-scale the score axis.
    """
    order = np.argsort(scores, kind="stable")
    singular = element[:-1] if element.endswith("s") else element
    fig = go.Figure()
    for flag, name, color in ((True, "kept", DENSE_COLOR), (False, "pruned", PRUNED_COLOR)):
        ranks = np.nonzero(keep[order] == flag)[0]
        fig.add_trace(
            go.Bar(
                x=ranks,
                y=scores[order][ranks],
                name=f"{name} {element}",
                marker_color=color,
                customdata=order[ranks],
                hovertemplate=f"{singular} %{{customdata}}<br>score %{{y:.4g}}"
                f"<extra>{name}</extra>",
            )
        )
    if threshold is not None and (threshold > 0 or not log):
        _mark_threshold(fig.add_hline, threshold, threshold, "top left")
    fig.update_layout(barmode="overlay", bargap=0.1, legend=LEGEND_ABOVE)
    fig.update_xaxes(
        title=f"{element}, ranked from least to most important",
        dtick=1 if len(scores) <= 16 else None,
    )
    fig.update_yaxes(title="score", type="log" if log else "linear")
    return compact_layout(fig, 300)


def sparsity_overview_figure(
    layers: Sequence[str],
    sparsity: Sequence[float],
    own_setting: Sequence[bool],
    selected: str | None = None,
) -> go.Figure:
    """The Prune page's per-layer sparsity bars, the ``selected`` layer outlined."""
    fig = layer_sparsity_figure(layers, sparsity, own_setting)
    widths = [3 if name == selected else 0 for name in layers]
    fig.update_traces(marker_line_color="#222", marker_line_width=widths)
    return compact_layout(fig, layer_bars_height(len(layers)))
