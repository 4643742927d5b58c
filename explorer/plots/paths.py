"""Figures of decision paths: the units that carry one decision, and which the plan cut.

Data in (``explorer.inside.decision_paths`` results), ``go.Figure`` out; nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.inside.decision_paths import (
    HEADS_SUFFIX,
    DecisionPath,
    PathComparison,
    is_heads_column,
)
from explorer.plots.common import CHANGED_COLOR, DENSE_COLOR, PLAN_COLOR, compact_layout

EDGE_COLOR = "#d0d0d0"
ENDPOINT_COLOR = "#7f7f7f"
NOTE_COLOR = "#444444"
#: Marker size of a column's largest path unit (smaller ones scale down to ``MIN_NODE``).
MAX_NODE = 17
MIN_NODE = 7
#: Pixels per unit rank in each panel, and what the titles and the gap between panels take.
ROW_PX = 22
FRAME_PX = 150
#: The narrowest plot the figure is laid out for (a 1280-px laptop's page with the sidebar
#: open), and what one character of a 10-px tick label takes: ticks that would not fit side by
#: side there are written vertically instead of being rotated into each other.
LAYOUT_WIDTH_PX = 760
CHAR_PX = 6.5
#: Above the panels: the legend's rows (entries per row at ``LAYOUT_WIDTH_PX``, px per row);
#: below them: the ticks, the bracket under a group of columns and the group's name.
LEGEND_PER_ROW, LEGEND_ROW_PX = 4, 22
TICK_PX, GROUP_PX = 18, 18

#: How each kind of node is drawn, and its legend entry.
NODE_STYLES = {
    "kept": ({"color": DENSE_COLOR, "symbol": "circle"}, "on the dense path, kept"),
    "cut": ({"color": CHANGED_COLOR, "symbol": "x"}, "on the dense path, removed by the plan"),
    "new": ({"color": PLAN_COLOR, "symbol": "diamond"}, "new on the pruned path"),
    "bias": ({"color": CHANGED_COLOR, "symbol": "x-open"}, "removed, passes its bias only"),
}


def column_label(name: str) -> str:
    """The default label of a column: its layer, or "<attention> heads"."""
    return f"{name.removesuffix(HEADS_SUFFIX)} heads" if is_heads_column(name) else name


@dataclass(frozen=True)
class ColumnTicks:
    """How the columns are named under the panels.

    Attributes:
        ticks: one label per column; short ("qkv", "heads", "fc1") where ``groups`` name
            the module they sit in, so that group and tick give the full name back.
        groups: (module name, first column, last column) of each run of columns written under
            one bracket, e.g. ("block1.attn", 2, 4); empty when the ticks are full names.
        vertical: the ticks are written vertically (too many columns to fit side by side).
    """

    ticks: list[str]
    groups: list[tuple[str, int, int]]
    vertical: bool


def _split(name: str) -> tuple[str, str]:
    """(parent module, short name) of a column: "block1.attn.qkv" -> ("block1.attn", "qkv"),
    "block1.attn:heads" -> ("block1.attn", "heads"), "block2.shortcut.0" -> ("block2",
    "shortcut.0") (an index alone says nothing), "fc1" -> ("", "fc1")."""
    if is_heads_column(name):
        return name.removesuffix(HEADS_SUFFIX), "heads"
    parts = name.split(".")
    keep = 2 if len(parts) > 2 and parts[-1].isdigit() else 1
    return ".".join(parts[:-keep]), ".".join(parts[-keep:])


def column_ticks(names: Sequence[str], labels: Mapping[str, str] | None = None) -> ColumnTicks:
    """Tick labels for path columns that stay whole and apart at ``LAYOUT_WIDTH_PX``: each
    column's short name under a bracket naming its module (a run of columns with the same
    parent), or, where even those would not fit, the full names written vertically. A column
    in ``labels`` gets that label, alone. Ticks "input" and the class at the ends are the
    caller's (each counts as one column here: ``names`` are the columns between them)."""
    labels = labels or {}
    split = [("", labels[n]) if n in labels else _split(n) for n in names]
    groups: list[tuple[str, int, int]] = []
    for i, (parent, _) in enumerate(split, start=1):  # column 0 is the input
        if parent and groups and groups[-1][0] == parent and groups[-1][2] == i - 1:
            groups[-1] = (parent, groups[-1][1], i)
        elif parent:
            groups.append((parent, i, i))
    column_px = LAYOUT_WIDTH_PX / (len(names) + 2)
    ticks = [short for _, short in split]
    fits = all(len(t) * CHAR_PX + 6 <= column_px for t in ticks) and all(
        len(name) * CHAR_PX + 6 <= (last - first + 1) * column_px for name, first, last in groups
    )
    if fits:
        return ColumnTicks(ticks, groups, vertical=False)
    full = [labels.get(n, column_label(n)) for n in names]
    return ColumnTicks(full, [], vertical=True)


def _node_sizes(top: Sequence[int], contributions: np.ndarray) -> list[float]:
    values = np.array([contributions[u] for u in top], dtype=float)
    peak = values.max() if len(values) and values.max() > 0 else 1.0
    return [MIN_NODE + (MAX_NODE - MIN_NODE) * float(v) / peak for v in values]


def _edges(columns: list[tuple[int, list[float]]]) -> tuple[list, list]:
    """Line segments joining every node of a column to every node of the next non-empty one
    (a column with no path unit is skipped over)."""
    filled = [(x, ys) for x, ys in columns if ys]
    xs: list[float | None] = []
    ys_out: list[float | None] = []
    for (x0, left), (x1, right) in pairwise(filled):
        for y0 in left:
            for y1 in right:
                xs += [x0, x1, None]
                ys_out += [y0, y1, None]
    return xs, ys_out


def _kind(comparison: PathComparison, layer: str, unit: int, dense_panel: bool) -> str:
    removed = bool(comparison.removed[layer][unit])
    if dense_panel:
        return "cut" if removed else "kept"
    if removed:  # a removed unit on the pruned path: its bias, alone, still pushes
        return "bias"
    return "kept" if unit in comparison.dense.layer(layer).top else "new"


def _hover(comparison: PathComparison, layer: str, unit: int, path: DecisionPath, kind: str):
    column = path.layer(layer)
    positive = np.clip(column.contributions, 0, None).sum()
    share = column.contributions[unit] / positive if positive > 0 else 0.0
    what = "head" if is_heads_column(layer) else "unit"
    notes = [
        f"<b>{column_label(layer)}</b> {what} {unit}",
        f"contribution {column.contributions[unit]:+.3g} "
        f"({share:.0%} of the column's positive total)",
        f"{comparison.weights_pruned[layer][unit]:.0%} of its weights pruned",
    ]
    group = comparison.group_of(layer, unit)
    if group is not None:
        notes.append(f"channel {group[1]} of the coupled group {group[0]}: pruned together")
    if kind == "cut":
        notes.append("<b>removed by the plan</b>")
    elif kind == "bias":
        notes.append("<b>removed by the plan</b>: only its bias is left, and it still pushes")
    elif kind == "new":
        notes.append("not on the dense path: the pruned model leans on it instead")
    return "<br>".join(notes)


def _panel(
    fig: go.Figure, row: int, path: DecisionPath, comparison: PathComparison, class_name: str
) -> None:
    """One model's path: input, the top units of each column, the target class."""
    dense_panel = row == 1
    layers = path.layers
    end = len(layers) + 1
    columns = [(0, [0.0])]
    columns += [(i, [-float(r) for r in range(len(c.top))]) for i, c in enumerate(layers, 1)]
    columns.append((end, [0.0]))
    xs, ys = _edges(columns)
    line = {"color": EDGE_COLOR, "width": 1}
    fig.add_trace(
        go.Scatter(x=xs, y=ys, mode="lines", line=line, hoverinfo="skip", showlegend=False),
        row=row,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=[0, end],
            y=[0, 0],
            mode="markers",
            marker={"color": ENDPOINT_COLOR, "size": 12, "symbol": "square"},
            hovertext=["the input image", f"the logit of class {class_name}"],
            hoverinfo="text",
            showlegend=False,
        ),
        row=row,
        col=1,
    )
    nodes: dict[str, dict[str, list]] = {kind: {} for kind in NODE_STYLES}
    for column, layer in enumerate(layers, start=1):
        sizes = _node_sizes(layer.top, layer.contributions)
        for rank, unit in enumerate(layer.top):
            kind = _kind(comparison, layer.name, unit, dense_panel)
            values = nodes[kind]
            for key, value in (
                ("x", column),
                ("y", -rank),
                ("size", sizes[rank]),
                ("text", f"h{unit}" if is_heads_column(layer.name) else str(unit)),
                ("hover", _hover(comparison, layer.name, unit, path, kind)),
            ):
                values.setdefault(key, []).append(value)
    for kind, values in nodes.items():
        if not values:
            continue
        style, label = NODE_STYLES[kind]
        fig.add_trace(
            go.Scatter(
                x=values["x"],
                y=values["y"],
                mode="markers+text",
                marker={**style, "size": values["size"], "line": {"width": 1, "color": "#fff"}},
                text=values["text"],
                textposition="middle right",
                textfont={"size": 9},
                hovertext=values["hover"],
                hoverinfo="text",
                name=label,
                legendgroup=kind,
                showlegend=dense_panel or kind in ("new", "bias"),
            ),
            row=row,
            col=1,
        )
    if dense_panel:
        _coupled(fig, comparison)


def _coupled(fig: go.Figure, comparison: PathComparison) -> None:
    """A removed channel of a coupled group on the path in several columns is one unit of
    removal: its × marks are joined by a dashed red line, labelled by group and channel."""
    index = {name: i for i, name in enumerate(comparison.layers, start=1)}
    shown = False
    for group in comparison.removed_groups:
        if len(group.layers) < 2:
            continue
        xs, ys = [], []
        for layer in group.layers:
            channels = comparison.group_channels[layer]
            top = comparison.dense.layer(layer).top
            rank = next(r for r, u in enumerate(top) if channels[u] == group.channel)
            xs.append(index[layer])
            ys.append(-rank)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": CHANGED_COLOR, "width": 1.5, "dash": "dash"},
                name="one coupled channel, removed once",
                legendgroup="coupled",
                showlegend=not shown,
                hovertext=f"{group.label}: removed once, on the path in {', '.join(group.layers)}",
                hoverinfo="text",
            ),
            row=1,
            col=1,
        )
        shown = True


def path_graph_figure(
    comparison: PathComparison,
    class_names: Sequence[str] | None = None,
    layer_labels: Mapping[str, str] | None = None,
) -> go.Figure:
    """The decision path of one input in the dense (top) and the pruned model (bottom).

    Columns run from the input through every path column (layers, attention heads) to the
    explained class; each holds its path units, largest contribution on top, sized by
    contribution and labelled with their index (``h3``: head 3). In the dense panel, units the
    plan removed are red ×; a removed channel of a coupled group that sits on the path in
    several columns (a residual stream's channel) is joined by a dashed red line: one unit of
    removal. In the pruned panel, units that were not on the dense path are orange diamonds.
    Every unit of a column is joined to every unit of the next, uniformly: a path is a set of
    units per column, not a chain of single neurons. Above each dense column: how many of its
    path units the plan kept (hover: the share of their contribution); above each pruned
    column: how many of the dense path's units are still on the path.

    The panels share their columns; the column names are written under the bottom one.

    Args:
        comparison: ``paths.compare_paths``'s result.
        class_names: class names (default the indices).
        layer_labels: column name -> tick label (default ``column_label``).
    """
    target = comparison.dense.target
    name = class_names[target] if class_names is not None else str(target)
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.12,
        subplot_titles=(
            f"Dense model → class {name}: {comparison.total_survival:.0%} of its path units "
            f"kept, carrying {comparison.total_weighted_survival:.0%} of the contribution",
            f"Pruned model: {comparison.total_still_on_path:.0%} of the dense path's units "
            "still on its path",
        ),
    )
    _panel(fig, 1, comparison.dense, comparison, name)
    _panel(fig, 2, comparison.pruned, comparison, name)
    for column, layer in enumerate(comparison.layers, start=1):
        top = comparison.dense.layer(layer).top
        kept = len(top) - len(comparison.cut(layer))
        still = len(set(top) & set(comparison.pruned.layer(layer).top))
        notes = (
            (
                f"{kept}/{len(top)}",
                f"{column_label(layer)}: {kept} of the dense path's {len(top)} units kept, "
                f"carrying {comparison.weighted_survival(layer):.0%} of their contribution",
            ),
            (
                f"{still}/{len(top)}",
                f"{column_label(layer)}: {still} of the dense path's {len(top)} units are "
                "on the pruned path too",
            ),
        )
        for row, (text, hover) in enumerate(notes, start=1):
            fig.add_annotation(
                x=column,
                y=0.45,
                text=text,
                hovertext=hover,
                showarrow=False,
                font={
                    "size": 10,
                    "color": CHANGED_COLOR if row == 1 and kept < len(top) else NOTE_COLOR,
                },
                yanchor="bottom",
                row=row,
                col=1,
            )
    columns = column_ticks(comparison.layers, layer_labels)
    ticks = ["input", *columns.ticks, f"class {name}"]
    deepest = max([len(layer.top) for layer in comparison.dense.layers] + [1])
    fig.update_xaxes(
        tickvals=list(range(len(ticks))),
        ticktext=ticks,
        tickfont={"size": 10},
        tickangle=-90 if columns.vertical else 0,
        automargin=True,  # vertical names push the margin: never cut
        range=[-0.4, len(ticks) - 0.5],
        showgrid=False,
        zeroline=False,
    )
    fig.update_yaxes(
        range=[-(deepest - 1) - 0.6, 1.2], showticklabels=False, showgrid=False, zeroline=False
    )
    fig.update_annotations(font_size=12, selector={"xref": "paper"})  # the panel titles
    _group_brackets(fig, columns.groups)
    entries = sum(1 for trace in fig.data if trace.showlegend is not False)
    legend_px = LEGEND_ROW_PX * -(-entries // LEGEND_PER_ROW)
    fig.update_layout(
        plot_bgcolor="#ffffff",
        # above the panels, in the top margin: under them are the column names, whose height
        # varies (vertical names), and a legend there would sit on them
        legend={
            "orientation": "h",
            "yref": "container",
            "y": 1,
            "yanchor": "top",
            "x": 0,
            "font": {"size": 10},
        },
        hoverlabel={"align": "left"},
    )
    below = TICK_PX + (GROUP_PX if columns.groups else 0)
    fig = compact_layout(fig, FRAME_PX + 2 * ROW_PX * (deepest + 1) + legend_px + below)
    fig.update_layout(margin={"t": 28 + legend_px, "b": 10 + below})  # legend, titles, names
    return fig


def _group_brackets(fig: go.Figure, groups: Sequence[tuple[str, int, int]]) -> None:
    """Under the ticks of each group of columns: a bracket line and the group's name."""
    for label, first, last in groups:
        fig.add_shape(
            type="line",
            xref="x2",
            yref="paper",
            ysizemode="pixel",
            yanchor=0,
            x0=first - 0.4,
            x1=last + 0.4,
            y0=-TICK_PX - 2,
            y1=-TICK_PX - 2,
            line={"color": ENDPOINT_COLOR, "width": 1},
        )
        fig.add_annotation(
            x=(first + last) / 2,
            y=0,
            xref="x2",
            yref="paper",
            yshift=-TICK_PX - 4,
            yanchor="top",
            text=label,
            showarrow=False,
            font={"size": 10, "color": NOTE_COLOR},
        )


def class_unit_figure(
    matrix: np.ndarray,
    class_names: Sequence[str],
    layer: str,
    removed: np.ndarray | None = None,
    unit_labels: Sequence[str] | None = None,
) -> go.Figure:
    """Class × unit map of one column: the share of each class's inputs on whose decision
    path the unit lies; units the plan removed get a red × in a "removed" row under the
    classes.

    Args:
        matrix: float (K, units) in [0, 1] (``paths.class_unit_map``).
        class_names: the K class names.
        layer: the column's name, for the axis title.
        removed: bool (units,), units the plan removed (None: none).
        unit_labels: a label per unit (default its index).
    """
    matrix = np.asarray(matrix, dtype=float)
    k, units = matrix.shape
    names = [str(c) for c in class_names]
    what = "head" if is_heads_column(layer) else "unit"
    x = [str(u) for u in unit_labels] if unit_labels is not None else list(range(units))
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=x,
            y=names,
            zmin=0,
            zmax=1,
            colorscale="Blues",
            colorbar={"title": "share of<br>the class", "tickformat": ".0%"},
            hovertemplate=f"class %{{y}}, {what} %{{x}}: on the path of %{{z:.0%}} of its "
            "inputs<extra></extra>",
            xgap=1 if units <= 64 else 0,
            ygap=1,
        )
    )
    if removed is not None and np.any(removed):
        # a row of its own under the classes: "removed" marks the columns the plan cut
        cut = np.flatnonzero(removed)
        fig.add_trace(
            go.Scatter(
                x=[x[u] for u in cut],
                y=["removed"] * len(cut),
                mode="markers",
                marker={"symbol": "x", "color": CHANGED_COLOR, "size": 9 if units <= 64 else 6},
                name="removed by the plan",
                showlegend=False,
                hovertemplate=f"{what} %{{x}}: removed by the plan<extra></extra>",
            )
        )
    # integer ticks: a handful of heads or neurons must not get ticks at half a unit
    axis = (
        {"type": "category"} if unit_labels is not None else {"dtick": 1 if units <= 16 else None}
    )
    fig.update_xaxes(title=f"{what} of {layer.removesuffix(HEADS_SUFFIX)}", showgrid=False, **axis)
    fig.update_yaxes(title="true class", type="category", autorange="reversed")
    return compact_layout(fig, max(280, 100 + 26 * (k + 1)))
