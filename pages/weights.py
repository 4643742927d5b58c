"""Weights: one layer's masked weights, its importance scores against the threshold, and the
sparsity of every layer, all live under a global slider."""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer.app import ui
from explorer.engine.cost import model_cost
from explorer.engine.importance import CRITERIA
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import METHODS
from explorer.inside.weight_views import score_histogram, unit_of_layer, weight_grid, why_no_unit
from explorer.plots.weights import (
    SMALL_UNIT,
    ranked_scores_figure,
    score_histogram_figure,
    sparsity_overview_figure,
    weight_heatmap_figure,
)

CHART = {"displayModeBar": False}
LAYOUT_NOTE = {
    "matrix": "Rows are {row}s, columns {col}s.",
    "kernels": "One row of {kh}×{kw} kernels per filter, one column per input channel.",
    "filters": "Each tile is one {kh}×{kw} filter (this layer reads a single input channel).",
    "kernel max": "Too many {kh}×{kw} kernels to draw them all: each cell is one kernel "
    "(filter × input channel), shown by its largest-magnitude weight.",
}


def controls_ui(bench: ui.Workbench, plan: PruningPlan) -> tuple[str, bool]:
    """The global slider (writes the shared plan), the layer and the score scale."""
    cols = st.columns([4, 3, 2], vertical_alignment="bottom")
    with cols[0]:
        ui.global_amount_ui(
            "weights_amount",
            "Same plan as on the Prune page: drag and watch weights turn grey as they go.",
        )
    with cols[1]:
        layer = ui.layer_picker_ui(
            bench,
            "weights_layer",
            "A prunable Linear or Conv2d layer, in the order the input reaches it.",
        )
    log = cols[2].toggle(
        "Log scale",
        key="weights_log",
        help="Scores often span orders of magnitude: a log axis shows the "
        "small ones, where the threshold usually sits.",
    )
    if plan.overrides or plan.dense_units:
        st.caption(
            f"{len(plan.overrides)} layer(s) have their own amount and "
            f"{len(plan.dense_units)} are locked dense (set on **Prune**): the slider "
            "moves the others."
        )
    return layer, log


def heatmap_ui(bench: ui.Workbench, state: ui.PrunedState, layer: str) -> None:
    """The layer's weights as the plan leaves them: grey = pruned, colour = sign and size."""
    param = f"{layer}.weight"
    weight = state.parameters.get(param, bench.pruner.structure.parameters[param])
    mask = state.masks.get(param)
    grid = weight_grid(weight, mask)
    pruned = 0 if mask is None else int((mask == 0).sum())
    total = weight.numel()
    st.markdown(f"#### {layer} · {pruned:,} of {total:,} weights pruned ({pruned / total:.1%})")
    st.plotly_chart(weight_heatmap_figure(grid), config=CHART, key="weights_heatmap")
    kh, kw = grid.weight_shape[2:] if len(grid.weight_shape) == 4 else (1, 1)
    note = LAYOUT_NOTE[grid.layout].format(row=grid.row_unit, col=grid.col_unit, kh=kh, kw=kw)
    if grid.pooled:
        fr, fc = grid.pool
        rows, cols = grid.values.shape
        note += (
            f" **Pooled {fr}×{fc}** ({grid.unpooled[0]}×{grid.unpooled[1]} → {rows}×{cols} "
            "cells, so the page stays light): each cell shows the largest-magnitude weight "
            "of its block, and is grey only if every weight in it is pruned."
        )
    st.caption(
        "Red positive, blue negative, white near zero; **dark grey: pruned by the plan** "
        "(grey means pruned in every chart of this page). " + note
    )


def scores_ui(bench: ui.Workbench, state: ui.PrunedState, layer: str, log: bool) -> None:
    """The importance scores of the unit that prunes ``layer``, split at the threshold."""
    plan = state.plan
    method = METHODS[plan.method]
    criterion = CRITERIA[plan.criterion].title.lower()
    unit = unit_of_layer(bench.pruner, plan.method, layer)
    st.markdown(f"#### Importance scores · {criterion}")
    if unit is None:
        st.info(
            f"No scores to show: {why_no_unit(bench.pruner, plan.method, layer)}. "
            f"{method.title} leaves this layer alone; pick another layer or method."
        )
        return
    scores, threshold = bench.pruner.unit_scores(plan, unit.name)
    keep = state.keeps.get(unit.name)
    keep_np = np.ones(len(scores), dtype=bool) if keep is None else keep.numpy()
    element = unit.kind
    if len(scores) <= SMALL_UNIT:
        fig = ranked_scores_figure(scores.numpy(), keep_np, threshold, element, log)
    else:
        fig = score_histogram_figure(score_histogram(scores, keep, log=log), threshold, element)
    st.plotly_chart(fig, config=CHART, key="weights_scores")
    pruned = int((~keep_np).sum())
    where = f"unit **{unit.name}**" + (
        f" (coupled: {', '.join(unit.layers)})" if len(unit.layers) > 1 else ""
    )
    text = f"{len(scores):,} {element} of {where}; the {pruned:,} lowest-scored are pruned" + (
        f", up to the threshold {threshold:.3g}." if threshold is not None else "."
    )
    if plan.scope == "global" and method.supports_global and unit.name not in plan.overrides:
        text += " In global scope the threshold is shared with the other layers" + (
            " (after dividing each layer's scores by their mean)."
            if method.normalize_globally
            else "."
        )
    if unit.name != layer:
        text += f" {layer}'s weights are masked by this unit, not scored on their own."
    st.caption(text)


def overview_ui(bench: ui.Workbench, state: ui.PrunedState, layer: str) -> None:
    cost = model_cost(bench.pruner, state)
    names = [entry.name for entry in cost.layers]
    st.markdown(f"#### Sparsity by layer · {cost.prunable_sparsity:.1%} overall")
    st.plotly_chart(
        sparsity_overview_figure(
            names,
            [entry.sparsity for entry in cost.layers],
            [name in state.plan.overrides for name in names],
            selected=layer,
        ),
        config=CHART,
        key="weights_overview",
    )
    st.caption(
        "Share of each layer's weights that are zero; outlined: the layer shown. "
        "Orange bars have their own amount (set on **Prune**)."
    )


@st.fragment
def weights_fragment() -> None:
    """Slider and figures together: dragging reruns only this fragment (guarded on its own,
    since a fragment rerun does not pass through ``main``)."""
    ui.guarded(weights_body)


def weights_body() -> None:
    ui.show_notices()
    ui.plan_summary_ui()
    bench = ui.current_workbench()
    state = ui.resolve_current()
    layer, log = controls_ui(bench, state.plan)
    left, right = st.columns([3, 2], gap="large")
    with left:
        heatmap_ui(bench, state, layer)
    with right:
        scores_ui(bench, state, layer, log)
        overview_ui(bench, state, layer)
    for warning in state.warnings:
        st.warning(warning)


def main() -> None:
    st.title("Weights")
    st.write(
        "What the plan removes, weight by weight: the layer's weights with the pruned ones "
        "greyed out, the importance scores that decided it, and how sparse each layer is."
    )
    weights_fragment()


ui.run_page(main)
