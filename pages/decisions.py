"""Decisions: which eval inputs the plan flipped, where the models look, which units carry it."""

from __future__ import annotations

import hashlib
import html

import numpy as np
import pandas as pd
import streamlit as st

from explorer.app import ui
from explorer.inside.decision_paths import (
    HEADS_SUFFIX,
    TOP_K,
    PathComparison,
    heads_column,
    is_heads_column,
    path_layers,
    removed_units,
)
from explorer.inside.dynamic import HONEST_NOTE, DynamicPoint, static_dense_layers
from explorer.inside.flips import FLIP_KINDS, Flip, Flips, filter_flips, sort_flips
from explorer.inside.saliency import predict_one
from explorer.plots.common import prediction_color
from explorer.plots.dynamic import class_usage_figure, dynamic_curve_figure
from explorer.plots.flips import confusion_change_figure, flip_counts_figure
from explorer.plots.paths import class_unit_figure, path_graph_figure
from explorer.plots.prune import CurveSeries

CHART = {"displayModeBar": False}
AMOUNT_KEY = "dec_amount"
SAMPLE_KEY = "dec_sample"
VIEW_KEY = "dec_view"
#: Rows the flip table shows at once: enough to scroll through, few enough to draw at once.
MAX_ROWS = 300
SORT_TITLES = {
    "true_class_drop": "True-class drop",
    "dense_confidence": "Dense confidence",
    "pruned_confidence": "Pruned confidence",
    "index": "Eval index",
}
KIND_TITLES = {
    "broken": "broken (dense right, pruned wrong)",
    "fixed": "fixed (dense wrong, pruned right)",
    "changed": "changed (both wrong, differently)",
}
ANY = -1
#: What the colours of a prediction mean, wherever one is shown.
RIGHT_WRONG = "Green: the true class (right); red: another class (wrong)."
#: A unit "carries" a class when it is on the paths of at least this share of its images.
CARRIER_SHARE = 0.5

FLIP_COLUMNS = {
    "image": st.column_config.ImageColumn("Image", width=40),
    "index": st.column_config.NumberColumn(
        "#", help="Position in the eval split.", format="%d", width=50
    ),
    "kind": st.column_config.TextColumn(
        "Flip",
        width=58,
        help="broken: dense right, pruned wrong · fixed: the reverse · changed: both "
        "wrong, with different classes.",
    ),
    "true": st.column_config.TextColumn("True", width=40),
    "dense": st.column_config.TextColumn(
        "Dense says", help=f"Class and softmax confidence. {RIGHT_WRONG}", width=80
    ),
    "pruned": st.column_config.TextColumn(
        "Pruned says", help=f"Class and softmax confidence. {RIGHT_WRONG}", width=80
    ),
    "drop": st.column_config.ProgressColumn(
        "True drop",
        width=70,
        help="Dense minus pruned softmax probability of the true class (points).",
        format="%+.0f",
        min_value=-100,
        max_value=100,
    ),
}


def headline_ui(flips: Flips) -> None:
    """What the accuracy change hides: the flips behind the net number."""
    summary = flips.summary()
    cols = st.columns(4)
    cols[0].metric(
        "Pruned accuracy",
        f"{summary['pruned_accuracy']:.2%}",
        **ui.metric_change(summary["accuracy_delta"] * 100, ".2f", " pts"),
        help=f"Dense: {summary['dense_accuracy']:.2%} on the same {flips.total:,} eval images.",
    )
    cols[1].metric(
        "Predictions flipped",
        f"{summary['flipped']:,}",
        f"{summary['flip_rate']:.2%} of the eval set",
        delta_color="off",
        delta_arrow="off",
        help="Eval images whose predicted class differs between the dense and the pruned "
        "model. The accuracy change is only their net: (fixed − broken) / N.",
    )
    cols[2].metric(
        "Broken",
        f"{summary['broken']:,}",
        help="The dense model was right, the pruned one is wrong.",
    )
    cols[3].metric(
        "Fixed · changed",
        f"{summary['fixed']:,} · {summary['changed']:,}",
        help="Fixed: the dense model was wrong, the pruned one is right. Changed: both wrong, "
        "with different classes.",
    )


def filters_ui(classes: tuple[str, ...]) -> tuple[list[str], int, int, str, str, bool]:
    """Which flips to list and in what order."""
    cols = st.columns([3.5, 2, 2, 2, 2.5], vertical_alignment="bottom")
    kinds = cols[0].pills(
        "Kinds",
        FLIP_KINDS,
        selection_mode="multi",
        default=list(FLIP_KINDS),
        key="dec_kinds",
        help=" · ".join(KIND_TITLES.values()),
    )
    options = [ANY, *range(len(classes))]
    true_class = cols[1].selectbox(
        "True class",
        options,
        key="dec_true",
        format_func=lambda c: "any" if c == ANY else classes[c],
    )
    predicted = cols[2].selectbox(
        "Predicted as",
        options,
        key="dec_pred",
        format_func=lambda c: "any" if c == ANY else classes[c],
        help="Keep the flips where this class is predicted by the model chosen beside.",
    )
    by = cols[3].selectbox(
        "Predicted by",
        ["pruned", "dense", "either"],
        key="dec_pred_by",
        disabled=predicted == ANY,
        help="Which model's prediction 'Predicted as' looks at.",
    )
    with cols[4]:
        sort = st.selectbox(
            "Sort by", list(SORT_TITLES), key="dec_sort", format_func=SORT_TITLES.__getitem__
        )
    descending = st.toggle("Largest first", True, key="dec_desc")
    return list(kinds or ()), true_class, predicted, by, sort, descending


def flip_frame(shown: list[Flip], classes: tuple[str, ...], images: list[str]) -> pd.DataFrame:
    """One row per flip, as the table shows it."""
    return pd.DataFrame(
        {
            "image": images,
            "index": [f.index for f in shown],
            "kind": [f.kind for f in shown],
            "true": [classes[f.true_class] for f in shown],
            "dense": [_said(classes, f.dense_prediction, f.dense_confidence) for f in shown],
            "pruned": [_said(classes, f.pruned_prediction, f.pruned_confidence) for f in shown],
            "drop": [f.true_class_drop * 100 for f in shown],
        }
    )


def _said(classes: tuple[str, ...], label: int, confidence: float) -> str:
    return classes[label] + (f" ({confidence:.0%})" if confidence == confidence else "")


def _said_in_colour(classes: tuple[str, ...], label: int, confidence: float, true: int) -> str:
    """A prediction as HTML, in the colour of right or wrong."""
    text = html.escape(_said(classes, label, confidence))
    return f'<span style="color:{prediction_color(label, true)}">{text}</span>'


def flip_styles(shown: list[Flip]) -> pd.DataFrame:
    """The CSS of each cell of ``flip_frame``: both predictions in the colour of right or
    wrong by the true class (a fixed flip: the dense one red, the pruned one green)."""
    styles = pd.DataFrame("", index=range(len(shown)), columns=list(FLIP_COLUMNS))
    for column, said in (("dense", "dense_prediction"), ("pruned", "pruned_prediction")):
        styles[column] = [
            f"color: {prediction_color(getattr(f, said), f.true_class)}" for f in shown
        ]
    return styles


def flip_table_ui(
    bench: ui.Workbench, flips: Flips, filters: tuple[list[str], int, int, str, str, bool]
) -> int | None:
    """The filtered, sorted flips; returns the eval index of the row selected, if any."""
    classes = bench.eval_set.classes
    kinds, true_class, predicted, by, sort, descending = filters
    shown = filter_flips(
        flips.flips,
        true_class=None if true_class == ANY else true_class,
        predicted_class=None if predicted == ANY else predicted,
        predicted_by=by,
        kinds=kinds,
    )
    shown = sort_flips(shown, sort, descending)
    if not shown:
        st.info("No flip matches these filters.")
        return None
    listed = shown[:MAX_ROWS]
    images = ui.thumbnails(ui.current_model(), tuple(f.index for f in listed))
    # a new key whenever the rows change: a selection is a row position
    digest = hashlib.sha256(",".join(str(f.index) for f in listed).encode()).hexdigest()[:12]
    styles = flip_styles(listed)
    event = st.dataframe(
        flip_frame(listed, classes, images).style.apply(lambda _: styles, axis=None),
        key=f"dec_table::{digest}",
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        height=380,
        column_config=FLIP_COLUMNS,
    )
    more = f" (the first {MAX_ROWS} shown)" if len(shown) > MAX_ROWS else ""
    st.caption(
        f"{len(shown):,} of {len(flips.flips):,} flips{more}. Select a row to see why it "
        "flipped, below."
    )
    rows = event.selection.rows
    return listed[rows[0]].index if rows and rows[0] < len(listed) else None


def flips_tab(bench: ui.Workbench, flips: Flips) -> int | None:
    """The flips: table, per-class counts, confusion change; the selected eval index."""
    if not flips.flips:
        st.info(
            "No eval prediction changed under this plan: the pruned model agrees with the "
            "dense one on every eval image. Prune more to see some flip."
        )
        return None
    filters = filters_ui(bench.eval_set.classes)
    left, right = st.columns([3, 2], gap="medium")
    with left:
        chosen = flip_table_ui(bench, flips, filters)
    with right:
        counts, confusion = st.tabs(["Per class", "Confusion change"])
        with counts:
            st.plotly_chart(
                flip_counts_figure(flips.per_class, flips.classes), config=CHART, key="dec_counts"
            )
        with confusion:
            st.plotly_chart(
                confusion_change_figure(flips.confusion_change, flips.classes),
                config=CHART,
                key="dec_confusion",
            )
            st.caption(
                "Pruned minus dense confusion matrix: red = worse (a new error off the "
                "diagonal, a lost correct prediction on it), green = better."
            )
    return chosen


def sample_detail_ui(bench: ui.Workbench, state: ui.PrunedState, index: int) -> None:
    """One eval image: where both models look, and which units carry its decision."""
    data = bench.eval_set
    plan_json = state.plan.to_json(indent=None)
    subject_json = ui.current_model()
    x = data.images[index : index + 1]
    label = int(data.labels[index])
    dense = predict_one(bench.model, x)
    pruned = predict_one(ui.pruned_model(subject_json, plan_json), x)
    st.subheader(f"Eval image #{index}", anchor=False)
    said_dense = _said_in_colour(data.classes, dense.label, dense.confidence, label)
    said_pruned = _said_in_colour(data.classes, pruned.label, pruned.confidence, label)
    st.caption(
        f"True class **{html.escape(data.classes[label])}** · dense model: {said_dense} · "
        f"pruned model: {said_pruned}",
        unsafe_allow_html=True,
        help=RIGHT_WRONG,
    )
    target = ui.explain_target_ui(data.classes, dense.label, label, pruned.label, "dec")
    st.markdown("##### Where the models look")
    method, options = ui.attribution_method_ui(bench.model, data.input_shape, "dec")
    ui.saliency_pair_ui(bench, plan_json, index, target, method, options, "dec")
    st.markdown("##### Which units carry the decision")
    top_k = st.slider(
        "Units per layer on the path",
        1,
        10,
        TOP_K,
        key="dec_top_k",
        help="A decision path holds, at every hidden layer, the units with the largest "
        "positive activation × gradient for the explained class: the ones pushing towards "
        "it.",
    )
    comparison = ui.path_comparison(subject_json, plan_json, index, target, top_k)
    path_summary_ui(comparison)
    st.plotly_chart(path_graph_figure(comparison, data.classes), config=CHART, key="dec_path")
    st.caption(
        "A unit's contribution is activation × gradient of the explained class's logit, "
        "summed over its positions: its first-order share of the logit. Hover a unit for "
        f"its numbers. Both paths computed in {comparison.seconds * 1000:.0f} ms."
    )


def path_summary_ui(comparison: PathComparison) -> None:
    """The survival of the dense path, in numbers and one sentence."""
    layers = comparison.layers
    units = sum(len(comparison.dense.layer(name).top) for name in layers)
    cut = {name: comparison.cut(name) for name in layers if comparison.cut(name)}
    cols = st.columns(3)
    cols[0].metric(
        "Dense path units kept",
        f"{comparison.total_survival:.0%}",
        help=f"Of the {units} units on the dense model's path (all layers), the share the "
        "plan kept. A removed unit had all of its weights pruned.",
    )
    cols[1].metric(
        "Still on the path",
        f"{comparison.total_still_on_path:.0%}",
        help="Of the dense path's units, the share that are on the pruned model's path "
        "too: unstructured pruning removes no unit but can still move the path.",
    )
    thinned = [
        float(comparison.weights_pruned[name][list(comparison.dense.layer(name).top)].mean())
        for name in layers
        if comparison.dense.layer(name).top
    ]
    cols[2].metric(
        "Path units' weights pruned",
        f"{sum(thinned) / len(thinned):.0%}" if thinned else "n/a",
        help="The average share of each dense path unit's weights (its row or filter) that "
        "the plan zeroed, over the path's layers.",
    )
    if cut:
        parts = "; ".join(
            f"`{name}` units {', '.join(str(u) for u in units_)} "
            f"({1 - comparison.weighted_survival(name):.0%} of its path contribution)"
            for name, units_ in cut.items()
        )
        groups = comparison.removed_groups
        coupled = (
            f" With channels pruned together, that is {len(groups)} channel(s) of coupled "
            "groups, each counted once."
            if groups
            else ""
        )
        st.markdown(f"The plan cut {sum(map(len, cut.values()))} path unit(s): {parts}.{coupled}")
    elif any(comparison.weights_pruned[name].any() for name in layers):
        st.markdown(
            "The plan removed none of this path's units: it thins weights inside units "
            "rather than removing whole ones. What changed is how much each unit carries."
        )


@st.fragment
def decisions_fragment() -> None:
    """Slider, flips and the selected sample together: a change reruns only this part."""
    ui.guarded(_decisions_body)


def _decisions_body() -> None:
    ui.show_notices()
    ui.plan_summary_ui()
    bench = ui.current_workbench()
    state = ui.resolve_current()
    top, side = st.columns([4, 1], gap="medium", vertical_alignment="bottom")
    with side:
        ui.global_amount_ui(AMOUNT_KEY, "The same plan as on the Prune page.")
    with st.spinner(f"Comparing the {len(bench.eval_set):,} eval predictions…"):
        flips = ui.flips_of(ui.current_model(), state.plan.to_json(indent=None))
    with top:
        headline_ui(flips)
    for warning in state.warnings:
        st.warning(warning)
    view = st.segmented_control(
        "View", list(VIEWS), default=FLIPS_VIEW, key=VIEW_KEY, label_visibility="collapsed"
    )
    VIEWS.get(view or FLIPS_VIEW, flips_view)(bench, state, flips)


def flips_view(bench: ui.Workbench, state: ui.PrunedState, flips: Flips) -> None:
    """The flipped inputs, and the one selected: why it flipped."""
    chosen = flips_tab(bench, flips)
    if chosen is not None:
        st.session_state[SAMPLE_KEY] = chosen
    index = st.session_state.get(SAMPLE_KEY)
    if index is None and flips.flips:
        index = sort_flips(flips.flips)[0].index
    if index is not None:
        sample_detail_ui(bench, state, int(index))


def class_units_view(bench: ui.Workbench, state: ui.PrunedState, flips: Flips) -> None:
    """Which units lie on the decision paths of which classes, and which the plan cut."""
    structure = bench.pruner.structure
    layers = path_layers(structure, heads=True)
    labels = {
        layer.name: f"{layer.name} · {layer.kind} {layer.shape_text}" for layer in structure.layers
    }
    labels |= {heads_column(h): f"{h.name} · {h.num_heads} heads" for h in structure.heads}
    cols = st.columns([3, 2, 2], vertical_alignment="bottom")
    layer = cols[0].selectbox(
        "Layer",
        layers,
        index=len(layers) - 1,
        key=f"dec_cu_layer::{ui.subject_tag()}",
        format_func=lambda n: labels.get(n, n),
        help="A hidden layer (or an attention module's heads): its units are the columns of "
        "the map.",
    )
    model_choice = cols[1].radio(
        "Paths of the",
        ["dense model", "pruned model"],
        key="dec_cu_model",
        horizontal=True,
        help="Whose decision paths to count: the dense model's (what the plan cuts into) or "
        "the pruned model's (what it leans on instead).",
    )
    top_k = cols[2].slider("Units per path", 1, 10, TOP_K, key="dec_cu_top_k")
    plan_json = state.plan.to_json(indent=None)
    with st.spinner("Tracing the decision paths of the eval images…"):
        matrix, count = ui.class_units(
            ui.current_model(), None if model_choice == "dense model" else plan_json, layer, top_k
        )
    removed = removed_units(state, {layer: matrix.shape[1]}, structure.heads)[layer]
    classes = bench.eval_set.classes
    st.plotly_chart(
        class_unit_figure(matrix, classes, layer, removed), config=CHART, key="dec_cu_map"
    )
    what = "head" if is_heads_column(layer) else "unit"
    st.caption(
        f"Each cell: the share of a class's eval images (of {count:,}, balanced over the "
        f"classes) whose decision path in the {model_choice} has this {what} among its "
        f"{top_k} at `{layer.removesuffix(HEADS_SUFFIX)}`. Red ×: {what}s the plan removed."
    )
    carriers = [
        (classes[c], [u for u in np.flatnonzero(matrix[c] >= CARRIER_SHARE)])
        for c in range(len(classes))
    ]
    rows = [
        {
            "class": name,
            "carried by": ", ".join(str(u) for u in units) or "—",
            "cut by the plan": ", ".join(str(u) for u in units if removed[u]) or "—",
        }
        for name, units in carriers
    ]
    st.markdown(
        f"**Units on the paths of at least {CARRIER_SHARE:.0%} of a class's images**, and "
        "which of them the plan cut:"
    )
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def dynamic_view(bench: ui.Workbench, state: ui.PrunedState, flips: Flips) -> None:
    """Dynamic pruning: per input, only the most active units run."""
    structure = bench.pruner.structure
    layers = path_layers(structure)
    attention = {name for heads in structure.heads for name in (heads.qkv, heads.proj)}
    st.write(
        "Static pruning removes the same units for every input. **Dynamic** pruning keeps, "
        "for each input, only the units that matter for *it*: here, at every gated layer, "
        "the units with the largest mean positive output for this input. It gates the "
        "**dense** model: the plan above plays no part here."
    )
    cols = st.columns([3, 2], vertical_alignment="bottom")
    gated = cols[0].multiselect(
        "Gated layers",
        layers,
        default=[name for name in layers if name not in attention],
        key=f"dec_dyn_layers::{ui.subject_tag()}",
        help="The hidden layers whose units are chosen per input. Attention projections are "
        "left out by default (their units are query, key and value features, not neurons).",
    )
    keep = cols[1].slider(
        "Units kept per input (%)",
        5,
        100,
        50,
        step=5,
        key="dec_dyn_keep",
        help="At every gated layer, each input keeps this share of the units (at least one) "
        "with the largest mean positive output; the others are set to zero.",
    )
    if not gated:
        st.info("Choose at least one layer to gate.")
        return
    layers_key = tuple(name for name in layers if name in gated)
    with st.spinner("Running the eval images with per-input gates…"):
        points = ui.dynamic_points(ui.current_model(), layers_key)
        result = ui.dynamic_result(ui.current_model(), layers_key, keep / 100)
        static = ui.static_points(ui.current_model(), layers_key)
    full = next(p for p in points if p.keep == 1.0)
    if all(p.keep != result.keep for p in points):
        points.append(
            DynamicPoint(result.keep, result.accuracy, result.units_computed, result.flops_computed)
        )
    images = len(result.predictions)
    metrics = st.columns(4)
    metrics[0].metric(
        "Accuracy",
        f"{result.accuracy:.2%}",
        **ui.metric_change((result.accuracy - full.accuracy) * 100, ".2f", " pts"),
        help=f"On {images:,} eval images (balanced over the classes); the dense model gets "
        f"{full.accuracy:.2%} on them.",
    )
    metrics[1].metric(
        "Units computed",
        f"{result.units_computed:.0%}",
        help="Share of the gated layers' units each input keeps: "
        + ", ".join(f"{n} {result.kept[n]}/{result.units[n]}" for n in layers_key),
    )
    metrics[2].metric(
        "FLOPs if skipped for free",
        f"{result.flops_computed:.0%}",
        help="The model's FLOPs if a skipped unit cost nothing: each gated layer at its kept "
        "share (savings in the next layer, which reads zeros, not counted).",
    )
    metrics[3].metric(
        "Faster here",
        "no",
        help="The dense kernels compute every unit, then the gate zeroes some: same time.",
    )
    left, right = st.columns(2, gap="medium")
    with left:
        st.plotly_chart(
            dynamic_curve_figure(points, full.accuracy, result.keep, static_series(static)),
            config=CHART,
            key="dec_dyn_curve",
        )
        if isinstance(static, str):
            st.caption(f"No static line: {static}")
        else:
            dense = static_dense_layers(layers_key, structure)
            stays = "it stays" if len(dense) == 1 else "they stay"
            st.caption(
                "Dashed: the same share of units removed for **every** input (the smallest "
                "L1-norm filters / neurons of each gated layer, no fine-tuning), on the same "
                "images. Where it lies below the solid line, choosing units per input pays."
                + (
                    f" {', '.join(dense)} cannot lose output units, so {stays} "
                    "dense in it: the dashed line computes more than its share."
                    if dense
                    else ""
                )
            )
    with right:
        layer = st.selectbox(
            "Which units each class keeps, at",
            layers_key,
            index=len(layers_key) - 1,
            key=f"dec_dyn_layer::{ui.subject_tag()}",
        )
        st.plotly_chart(
            class_usage_figure(result.usage[layer], bench.eval_set.classes, layer),
            config=CHART,
            key="dec_dyn_usage",
        )
    st.info(HONEST_NOTE)


def static_series(static: list[DynamicPoint] | str) -> tuple[CurveSeries, ...]:
    """The static counterpart as a dashed line of the dynamic curve (none when it has none)."""
    if isinstance(static, str):
        return ()
    ordered = sorted(static, key=lambda p: p.units_computed)
    return (
        CurveSeries(
            "same units for every input",
            [1 - p.units_computed for p in ordered],
            [p.accuracy for p in ordered],
        ),
    )


FLIPS_VIEW = "Flipped inputs"
#: The page's views: only the chosen one is computed.
VIEWS = {
    FLIPS_VIEW: flips_view,
    "Units × classes": class_units_view,
    "Dynamic pruning": dynamic_view,
}


def main() -> None:
    st.title("Decisions")
    st.write(
        "The accuracy change is a net number. Here are the eval inputs behind it: which "
        "ones the plan flipped, where the dense and the pruned model look, and which units "
        "carried the decision that the plan cut."
    )
    decisions_fragment()


ui.run_page(main)
