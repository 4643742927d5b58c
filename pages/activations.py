"""Activations: one eval image through the dense and the pruned model, layer by layer, and
per-unit statistics of a layer over the whole eval split."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st
import torch

from explorer.app import ui
from explorer.engine.plan import PruningPlan
from explorer.inside.activations import (
    compare_sample,
    pruned_outputs,
)
from explorer.plots.activations import (
    divergence_figure,
    feature_maps_figure,
    prediction_figure,
    sample_image_figure,
    token_map_figure,
    unit_stats_figure,
    unit_strip_figure,
)

CHART = {"displayModeBar": False}


def choice_ui(bench: ui.Workbench, changed: Callable[[], list[int]]) -> tuple[int, str]:
    """The sample (by index, class, or among the changed predictions) and the layer."""
    left, right = st.columns([3, 2], gap="large")
    with left:
        index = ui.sample_picker_ui(bench.eval_set, changed=changed, key="act_sample")
    with right:
        layer = ui.layer_picker_ui(
            bench,
            "act_layer",
            "Whose output to show: a prunable Linear or Conv2d layer, in the order the input "
            "reaches it.",
        )
    return index, layer


def predictions_ui(bench: ui.Workbench, index: int, comparison: object) -> None:
    data = bench.eval_set
    label = int(data.labels[index])
    dense_p = comparison.dense_probabilities.numpy()
    pruned_p = comparison.pruned_probabilities.numpy()
    cols = st.columns([1, 1, 3], vertical_alignment="center")
    with cols[0]:
        st.plotly_chart(sample_image_figure(data.pixels(index)), config=CHART, key="act_image")
        st.caption(f"Eval sample {index}, label **{data.classes[label]}**")
    d, p = int(dense_p.argmax()), int(pruned_p.argmax())
    with cols[1]:
        st.metric(
            "Dense model",
            data.classes[d],
            f"{dense_p[d]:.1%} confident",
            delta_color="off",
            delta_arrow="off",
            help="Top-1 class of the unpruned model and its softmax probability.",
        )
        st.metric(
            "Pruned model",
            data.classes[p],
            f"{pruned_p[p]:.1%}" + (" · changed" if p != d else " · same"),
            delta_color="red" if p != d else "off",
            delta_arrow="off",
            help="Top-1 class under the current plan (masked weights) and its probability.",
        )
    with cols[2]:
        st.plotly_chart(
            prediction_figure(data.classes, dense_p, pruned_p, label), config=CHART, key="act_probs"
        )


def activation_map_ui(
    bench: ui.Workbench, state: ui.PrunedState, layer: str, index: int, comparison: object
) -> None:
    dense = comparison.dense[layer].numpy()
    pruned = comparison.pruned[layer].numpy()
    units = dense.shape[0] if dense.ndim != 2 else dense.shape[1]
    removed = pruned_outputs(state.masks, layer, units)
    kind = bench.pruner.structure.layer_by_name[layer].kind
    st.markdown(f"#### {layer} output · sample {index} · dense vs pruned")
    if dense.ndim == 3:
        fig = feature_maps_figure(dense, pruned, removed)
        what = (
            f"{units} channels of {dense.shape[1]}×{dense.shape[2]}, one tile each; "
            "dark outline: a channel the plan removed."
        )
    elif dense.ndim == 2:
        names = ["CLS"] + [f"patch {t}" for t in range(1, dense.shape[0])]
        fig = token_map_figure(dense, pruned, removed, names)
        what = (
            f"{dense.shape[0]} tokens × {units} channels; grey band: channels the plan "
            "removed (their weight rows are all zero)."
        )
    else:
        fig = unit_strip_figure(dense, pruned, removed, "channel" if kind == "Conv2d" else "unit")
        what = f"{units} units; dark outline: a unit the plan removed."
    st.plotly_chart(fig, config=CHART, key="act_map")
    st.caption(
        f"Raw output of {layer} (before any activation function); red positive, blue "
        f"negative, one colour scale for both. {what} A removed unit still passes its "
        "bias, so it may not be zero."
    )


def divergence_ui(layers: list[str], comparison: object, layer: str) -> None:
    change = comparison.divergence()
    st.plotly_chart(
        divergence_figure(layers, [change[n] for n in layers], layer),
        config=CHART,
        key="act_divergence",
    )
    st.caption(
        "How far each layer's output moved for this image: ||pruned − dense|| / "
        "||dense||. Errors grow as they flow towards the output."
    )


def stats_ui(bench: ui.Workbench, state: ui.PrunedState, layer: str) -> None:
    st.markdown(f"#### {layer} over the eval split · per unit")
    with st.spinner("Measuring every unit on the eval images (once per plan)…"):
        dense_all = ui.eval_unit_stats(ui.current_model(), PruningPlan().to_json(indent=None))
        pruned_all = ui.eval_unit_stats(ui.current_model(), state.plan.to_json(indent=None))
    dense, pruned = dense_all[layer], pruned_all[layer]
    removed = pruned_outputs(state.masks, layer, len(dense.mean))
    kind = bench.pruner.structure.layer_by_name[layer].kind
    unit = "channel" if kind == "Conv2d" else "unit"
    after_relu = dense.measured_at != layer
    cols = st.columns(4)
    cols[0].metric(
        f"Removed {unit}s",
        f"{int(removed.sum())}",
        f"of {len(removed)}",
        delta_color="off",
        delta_arrow="off",
        help=f"Output {unit}s whose weight rows the plan zeroed entirely.",
    )
    cols[1].metric(
        "Dead · dense",
        f"{int(dense.dead.sum())}",
        help="Units never above 0 on any eval image: a following ReLU always outputs 0 for them.",
    )
    cols[2].metric(
        "Dead · pruned",
        f"{int(pruned.dead.sum())}",
        f"{int((pruned.dead & ~removed).sum())} not removed",
        delta_color="off",
        delta_arrow="off",
        help="Never above 0 under the plan; those the plan did not remove died "
        "because their inputs were pruned.",
    )
    cols[3].metric(
        "Zeros · pruned",
        f"{pruned.zero_fraction.mean():.1%}",
        **ui.metric_change(
            (pruned.zero_fraction.mean() - dense.zero_fraction.mean()) * 100, ".1f", " pts", "off"
        ),
        help="Share of this layer's measured values that are exactly 0, and the change "
        "from the dense model in percentage points.",
    )
    st.plotly_chart(unit_stats_figure(dense, pruned, removed, unit), config=CHART, key="act_stats")
    measured = (
        f"after **{dense.measured_at}** (the ReLU that follows it), so zero means "
        "cut off by the ReLU"
        if after_relu
        else "on its **raw output** (no ReLU module follows it), so exact zeros are rare "
        "and mostly come from removed units without a bias"
    )
    st.caption(
        f"Measured on {on_images(dense.samples, len(bench.eval_set))}, {measured}; conv "
        "channels are "
        "averaged over positions and ViT units over tokens. Grey bands: units the plan "
        "removed. Cached per plan."
    )


def on_images(measured: int, total: int) -> str:
    if measured == total:
        return f"all {total:,} eval images"
    return (
        f"{measured:,} of the {total:,} eval images (every class in proportion: on this "
        "slow model, all of them would take minutes)"
    )


def main() -> None:
    st.title("Activations")
    st.write(
        "Follow one image through the dense and the pruned network: what each layer "
        "outputs, where the two start to differ, and which units the plan silenced."
    )
    ui.plan_summary_ui()
    bench = ui.current_workbench()
    state = ui.resolve_current()
    index, layer = choice_ui(bench, lambda: bench.changed_samples(state))
    layers = [entry.name for entry in bench.pruner.structure.layers]
    x = bench.eval_set.images[index : index + 1]
    with bench.borrowed_model() as model:
        comparison = compare_sample(model, x, state.parameters, layers)
    predictions_ui(bench, index, comparison)
    left, right = st.columns([3, 2], gap="large")
    with left:
        activation_map_ui(bench, state, layer, index, comparison)
    with right:
        st.markdown("#### Change by layer")
        divergence_ui(layers, comparison, layer)
    stats_ui(bench, state, layer)
    for warning in state.warnings:
        st.warning(warning)
    if not torch.isfinite(comparison.pruned_logits).all():
        st.error("The pruned model produces NaN or infinite outputs for this image.")


ui.run_page(main)
