"""Figures of decision paths: the units that carry one decision, and which the plan cut.

Data in (``explorer.paths`` results), ``go.Figure`` out; nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.paths import DecisionPath, PathComparison
from explorer.plots.common import CHANGED_COLOR, DENSE_COLOR, PLAN_COLOR, compact_layout

EDGE_COLOR = "#c8c8c8"
ENDPOINT_COLOR = "#7f7f7f"
#: Marker size of a unit carrying all of its layer's path contribution (smaller ones scale).
MAX_NODE = 22
MIN_NODE = 9


def _node_sizes(path_layer_top: Sequence[int], contributions: np.ndarray) -> list[float]:
    values = np.array([contributions[u] for u in path_layer_top], dtype=float)
    peak = values.max() if len(values) and values.max() > 0 else 1.0
    return [MIN_NODE + (MAX_NODE - MIN_NODE) * float(v) / peak for v in values]


def _edges(columns: list[tuple[int, list[float]]]) -> tuple[list, list]:
    """Line segments joining every node of a column to every node of the next non-empty one
    (a layer with no path unit is skipped over)."""
    filled = [(x, ys) for x, ys in columns if ys]
    xs: list[float | None] = []
    ys_out: list[float | None] = []
    for (x0, left), (x1, right) in pairwise(filled):
        for y0 in left:
            for y1 in right:
                xs += [x0, x1, None]
                ys_out += [y0, y1, None]
    return xs, ys_out


def _panel(
    fig: go.Figure,
    row: int,
    path: DecisionPath,
    comparison: PathComparison,
    class_name: str,
    dense_panel: bool,
) -> None:
    """One model's path: input, the top units of each layer, the target class."""
    layers = path.layers
    columns = [(0, [0.0])]
    columns += [
        (i, [-float(r) for r in range(len(layer.top))]) for i, layer in enumerate(layers, 1)
    ]
    columns.append((len(layers) + 1, [0.0]))
    xs, ys = _edges(columns)
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines",
            line={"color": EDGE_COLOR, "width": 1},
            hoverinfo="skip",
            showlegend=False,
        ),
        row=row,
        col=1,
    )
    end = len(layers) + 1
    fig.add_trace(
        go.Scatter(
            x=[0, end],
            y=[0, 0],
            mode="markers+text",
            marker={"color": ENDPOINT_COLOR, "size": 14, "symbol": "square"},
            text=["input", f"class {class_name}"],
            textposition=["bottom center", "bottom center"],
            hovertext=["the input image", f"the logit of class {class_name}"],
            hoverinfo="text",
            showlegend=False,
        ),
        row=row,
        col=1,
    )
    dense_top = {layer.name: set(layer.top) for layer in comparison.dense.layers}
    groups = comparison.groups
    for kind in ("kept", "cut", "new"):
        x, y, size, text, hover = [], [], [], [], []
        for column, layer in enumerate(layers, start=1):
            removed = comparison.removed[layer.name]
            shares = comparison.weights_pruned[layer.name]
            positive = np.clip(layer.contributions, 0, None).sum()
            sizes = _node_sizes(layer.top, layer.contributions)
            for rank, unit in enumerate(layer.top):
                if dense_panel:
                    this = "cut" if removed[unit] else "kept"
                else:
                    this = "kept" if unit in dense_top[layer.name] else "new"
                if this != kind:
                    continue
                group = f" (channel group {groups[layer.name]})" if layer.name in groups else ""
                share = layer.contributions[unit] / positive if positive > 0 else 0.0
                notes = [
                    f"<b>{layer.name}</b> unit {unit}{group}",
                    f"contribution {layer.contributions[unit]:+.3g} "
                    f"({share:.0%} of the layer's positive total)",
                    f"{shares[unit]:.0%} of its weights pruned",
                ]
                if this == "cut":
                    notes.append("<b>removed by the plan</b>")
                if this == "new":
                    notes.append("not on the dense path: the pruned model leans on it instead")
                x.append(column)
                y.append(-rank)
                size.append(sizes[rank])
                text.append(str(unit))
                hover.append("<br>".join(notes))
        style = {
            "kept": {"color": DENSE_COLOR, "symbol": "circle"},
            "cut": {"color": CHANGED_COLOR, "symbol": "x"},
            "new": {"color": PLAN_COLOR, "symbol": "diamond"},
        }[kind]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="markers+text",
                marker={**style, "size": size, "line": {"width": 1, "color": "#ffffff"}},
                text=text,
                textposition="middle right",
                textfont={"size": 10},
                hovertext=hover,
                hoverinfo="text",
                name={
                    "kept": "on the dense path, kept",
                    "cut": "on the dense path, removed by the plan",
                    "new": "new on the pruned path",
                }[kind],
                legendgroup=kind,
                showlegend=bool(x) and (dense_panel or kind == "new"),
            ),
            row=row,
            col=1,
        )


def path_graph_figure(
    comparison: PathComparison,
    class_names: Sequence[str] | None = None,
) -> go.Figure:
    """The decision path of one input in the dense (top) and the pruned model (bottom).

    Columns run from the input through every hidden layer to the explained class; each
    layer's column holds its path units, largest contribution on top, sized by contribution
    and labelled with their index. In the dense panel, units the plan removed are red ×; in
    the pruned panel, units that were not on the dense path are orange diamonds. Every unit
    of a column is joined to every unit of the next: a path is a set of units per layer, not a
    chain of single neurons. Above each dense column: how many of its path units the plan
    kept; above each pruned column: how many of the dense path's units are still on the path.

    Args:
        comparison: ``compare_paths``'s result.
        class_names: class names (default the indices).
    """
    target = comparison.dense.target
    name = class_names[target] if class_names is not None else str(target)
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.14,
        subplot_titles=(
            f"Dense model: path to class {name}, "
            f"{comparison.total_survival:.0%} of its units kept by the plan",
            f"Pruned model: {comparison.total_still_on_path:.0%} of the dense path's units "
            "still on its path",
        ),
    )
    _panel(fig, 1, comparison.dense, comparison, name, dense_panel=True)
    _panel(fig, 2, comparison.pruned, comparison, name, dense_panel=False)
    layers = comparison.layers
    deepest = max([len(layer.top) for layer in comparison.dense.layers] + [1])
    for column, layer in enumerate(layers, start=1):
        path = comparison.dense.layer(layer)
        kept = len(path.top) - len(comparison.cut(layer))
        still = len(set(path.top) & set(comparison.pruned.layer(layer).top))
        for row, text in ((1, f"{kept}/{len(path.top)} kept"), (2, f"{still}/{len(path.top)}")):
            fig.add_annotation(
                x=column,
                y=0.55,
                text=text,
                showarrow=False,
                font={"size": 11, "color": "#444444"},
                yanchor="bottom",
                row=row,
                col=1,
            )
    ticks = ["input", *layers, "output"]
    fig.update_xaxes(
        tickvals=list(range(len(ticks))),
        ticktext=ticks,
        range=[-0.5, len(ticks) - 0.4],
        showgrid=False,
        zeroline=False,
    )
    fig.update_xaxes(showticklabels=True, row=1, col=1)
    fig.update_yaxes(
        range=[-(deepest - 1) - 0.7, 1.3], showticklabels=False, showgrid=False, zeroline=False
    )
    fig.update_layout(
        plot_bgcolor="#ffffff",
        legend={"orientation": "h", "y": -0.08, "yanchor": "top", "x": 0},
        hoverlabel={"align": "left"},
    )
    fig = compact_layout(fig, 230 + 2 * 38 * deepest)
    fig.update_layout(margin={"t": 36})  # room for the panel titles
    return fig


def class_unit_figure(
    matrix: np.ndarray,
    class_names: Sequence[str],
    layer: str,
    removed: np.ndarray | None = None,
) -> go.Figure:
    """Class × unit map of one layer: the share of each class's inputs on whose decision path
    the unit lies; units the plan removed get a red × in a "removed" row under the classes.

    Args:
        matrix: float (K, units) in [0, 1] (``paths.class_unit_map``).
        class_names: the K class names.
        layer: the layer's name, for the title.
        removed: bool (units,), units the plan removed (None: none).
    """
    matrix = np.asarray(matrix, dtype=float)
    k, units = matrix.shape
    names = [str(c) for c in class_names]
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(range(units)),
            y=names,
            zmin=0,
            zmax=1,
            colorscale="Blues",
            colorbar={"title": "share of<br>the class", "tickformat": ".0%"},
            hovertemplate="class %{y}, unit %{x}: on the path of %{z:.0%} of its inputs"
            "<extra></extra>",
            xgap=1 if units <= 64 else 0,
            ygap=1,
        )
    )
    if removed is not None and np.any(removed):
        # a row of its own under the classes: "removed" marks the columns the plan cut
        cut = np.flatnonzero(removed)
        fig.add_trace(
            go.Scatter(
                x=cut,
                y=["removed"] * len(cut),
                mode="markers",
                marker={"symbol": "x", "color": CHANGED_COLOR, "size": 9 if units <= 64 else 6},
                name="removed by the plan",
                showlegend=False,
                hovertemplate="unit %{x}: removed by the plan<extra></extra>",
            )
        )
    fig.update_xaxes(title=f"unit of {layer}", showgrid=False)
    fig.update_yaxes(title="true class", type="category", autorange="reversed")
    return compact_layout(fig, max(280, 100 + 26 * (k + 1)))
