"""Figures of attention: each head's [CLS] map, dense above pruned, removed heads greyed.

Data in (``explorer.inside.saliency.attention`` results), ``go.Figure`` out; nothing runs a model.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.plots.common import PRUNED_COLOR, compact_layout
from explorer.plots.saliency import MAP_SCALE


def attention_heads_figure(
    dense_heads: np.ndarray, pruned_heads: np.ndarray, removed: np.ndarray, module: str
) -> go.Figure:
    """Where each head of ``module`` sends the [CLS] token: a row for the dense model and one
    for the pruned model, a column per head; each map scaled to its own maximum. A head the
    plan removed is drawn grey and labelled: its uniform attention passes nothing on.

    Args:
        dense_heads, pruned_heads: float (heads, h, w) (``attention.head_maps``).
        removed: bool (heads,), heads the plan removed.
        module: the attention module's name, for the title.
    """
    heads = len(dense_heads)
    titles = [f"head {h}" for h in range(heads)] + [
        f"head {h}" + (" · pruned" if removed[h] else "") for h in range(heads)
    ]
    fig = make_subplots(
        rows=2,
        cols=heads,
        subplot_titles=titles,
        horizontal_spacing=0.02,
        vertical_spacing=0.12,
        row_titles=["dense", "pruned"],
    )
    for row, maps in ((1, dense_heads), (2, pruned_heads)):
        for h in range(heads):
            values = np.asarray(maps[h], dtype=float)
            peak = values.max()
            shown = values / peak if peak > 0 else values
            cut = row == 2 and bool(removed[h])
            fig.add_trace(
                go.Heatmap(
                    z=np.zeros_like(shown) if cut else shown,
                    colorscale=[[0, PRUNED_COLOR], [1, PRUNED_COLOR]] if cut else MAP_SCALE,
                    zmin=0,
                    zmax=1,
                    showscale=False,
                    hovertemplate=(
                        "removed by the plan<extra></extra>"
                        if cut
                        else "patch row %{y}, column %{x}: %{z:.2f} of the head's peak"
                        "<extra></extra>"
                    ),
                ),
                row=row,
                col=h + 1,
            )
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", constrain="domain")
    for i in range(1, 2 * heads + 1):
        fig.layout[f"yaxis{'' if i == 1 else i}"].scaleanchor = f"x{'' if i == 1 else i}"
    fig = compact_layout(fig, 300, f"[CLS] attention per head of {module}")
    fig.update_layout(margin={"t": 60})
    return fig
