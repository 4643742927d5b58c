"""Figures of flips: how the confusion matrix moved and which classes lost or gained samples.

Data in (arrays from ``explorer.inside.flips``), ``go.Figure`` out; nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from explorer.plots.common import PRUNED_COLOR, RIGHT_COLOR, WRONG_COLOR, compact_layout

#: Fewer errors / more correct (the colour of a right prediction), no change (white), more
#: errors / fewer correct (the colour of a wrong one).
DIVERGING = [[0.0, RIGHT_COLOR], [0.5, "#ffffff"], [1.0, WRONG_COLOR]]
#: Stacking order and colour of each kind of flip, by what the pruned model now says: wrong
#: (broken), right (fixed), still wrong but another class (changed: grey, to tell it apart).
KIND_COLORS = {"broken": WRONG_COLOR, "fixed": RIGHT_COLOR, "changed": PRUNED_COLOR}


def confusion_change_figure(diff: np.ndarray, classes: Sequence[str]) -> go.Figure:
    """Pruned minus dense confusion matrix (rows true class, columns predicted), each cell
    annotated with its signed count, zero white.

    Red always means worse, green better (the colours of a wrong and a right prediction): off
    the diagonal a positive count is an error the pruned model adds (red), on the diagonal a
    negative count is a correct prediction it loses (red). So
    the diagonal and the off-diagonal cells are two traces with mirrored colour scales on one
    symmetric range; trace 0 holds the off-diagonal counts, trace 1 the diagonal (others nan).

    Args:
        diff: int (K, K), ``Flips.confusion_change``.
        classes: the K class names.
    """
    diff = np.asarray(diff)
    k = len(classes)
    if diff.shape != (k, k):
        raise ValueError(f"diff has shape {diff.shape}, expected ({k}, {k}) for {k} classes")
    limit = max(1, int(np.abs(diff).max()))
    diagonal = np.eye(k, dtype=bool)
    names = [str(c) for c in classes]
    fig = go.Figure()
    for on_diagonal in (False, True):
        cells = diagonal if on_diagonal else ~diagonal
        z = np.where(cells, diff, np.nan).astype(float)
        text = [
            [f"{int(v):+d}" if cells[r, c] and v else "" for c, v in enumerate(row)]
            for r, row in enumerate(diff)
        ]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=names,
                y=names,
                colorscale=DIVERGING,
                reversescale=on_diagonal,
                zmin=-limit,
                zmax=limit,
                zmid=0,
                showscale=not on_diagonal,
                colorbar={"title": "pruned − dense"},
                text=text,
                texttemplate="%{text}",
                hovertemplate="true %{y}, predicted %{x}: %{z:+d}<extra></extra>",
                hoverongaps=False,
                xgap=1,
                ygap=1,
            )
        )
    fig.update_xaxes(title="predicted class", type="category", side="top")
    fig.update_yaxes(title="true class", type="category", autorange="reversed")
    fig.update_layout(plot_bgcolor="#ffffff")
    return compact_layout(fig, max(300, 80 + 32 * k))


def flip_counts_figure(
    per_class: Mapping[str, Sequence[int]], classes: Sequence[str] | None = None
) -> go.Figure:
    """Stacked bars per true class: how many of its samples the pruned model broke (now wrong:
    red), fixed (now right: green) and, when given, changed from one wrong class to another
    (grey).

    Args:
        per_class: kind -> counts per class (K,), e.g. ``Flips.per_class``; kinds other than
            ``"broken"``, ``"fixed"``, ``"changed"`` are ignored.
        classes: the K class names (default ``"0"``, ``"1"``, ...).
    """
    kinds = [kind for kind in KIND_COLORS if kind in per_class]
    if not kinds:
        raise ValueError(f"per_class has none of {list(KIND_COLORS)}")
    k = len(per_class[kinds[0]])
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(k)]
    fig = go.Figure(
        [
            go.Bar(
                x=names,
                y=[int(v) for v in per_class[kind]],
                name=kind,
                marker_color=KIND_COLORS[kind],
                hovertemplate=f"class %{{x}}: %{{y}} {kind}<extra></extra>",
            )
            for kind in kinds
        ]
    )
    fig.update_layout(barmode="stack", legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"})
    fig.update_xaxes(title="true class", type="category")
    fig.update_yaxes(title="eval samples")
    return compact_layout(fig, 320)
