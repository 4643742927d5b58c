"""Saliency: which pixels the dense and the pruned model rely on for one image, side by side."""

from __future__ import annotations

import json
import math

import numpy as np
import streamlit as st

from explorer.app import ui
from explorer.engine.evaluation import predict
from explorer.engine.inspection import attention_heads
from explorer.engine.pruning import METHODS
from explorer.inside.saliency import ATTRIBUTIONS, Prediction, attributions_for, predict_one
from explorer.inside.saliency.agreement import agreement_curve
from explorer.inside.saliency.attention import compare_attention, head_maps, removed_heads
from explorer.inside.saliency.compare import RANKED_PIXELS, scaled
from explorer.inside.saliency.tokens import token_layout
from explorer.plots.attention import attention_heads_figure
from explorer.plots.saliency import agreement_curve_figure, saliency_figure
from explorer.recovery.jobs import balanced_indices

AMOUNT_KEY = "sal_amount"
HOW_TO_READ = """
- Both maps explain **the same class** of **the same image**; only the model differs.
- Each map is drawn **scaled to its own maximum** (1 = the pixel the model relies on most),
  so the maps show *where* a model looks, not how large its gradients are.
- **Pruned − dense** compares *shares*: each map divided by its own total (so both sum to
  1), pruned minus dense, in % of the total. Red where the pruned model puts a larger share
  of its attribution on a pixel than the dense one did, blue where a smaller one. (Two maps
  scaled to their own maximum are not on one scale: a flatter pruned map would look red
  everywhere.) A pruned model that still predicts correctly while looking elsewhere is
  right for different reasons.
- **Rank correlation** (Spearman) compares the order of importance of the pixels where
  either map is nonzero (1 = the same order, −1 = the opposite). Pixels that both maps give
  exactly 0, such as the background of Integrated Gradients, are left out: they would agree
  by default. The **top-10% overlap** is the intersection over union of each map's most
  important tenth of the pixels.
- A gradient map is local and noisy: it says how the logit would react to a tiny change of a
  pixel, not how much the pixel contributed.
- **Map ≈ 0**: a map whose total, in logit units, is under 0.1% of the spread between the
  model's highest and lowest logit is drawn blank instead of scaled to 1 (which would turn a
  residue into a bright spot), and nothing is compared with it: the agreement shows *n/a*.
  Grad-CAM on LeNet-5 often comes close, because after `conv2` LeNet-5 flattens rather than
  averages, and Grad-CAM's mean gradient then cancels most of the evidence.
- For a vision transformer, Grad-CAM reads the patch tokens that the last transformer block's
  attention reads (one value per patch), not the patch embedding, which is its only
  convolution and its *first* layer.
"""


@st.fragment
def saliency_fragment() -> None:
    """Controls and the maps together: the slider, sample or method reruns only this part."""
    ui.guarded(_saliency_body)


def _saliency_body() -> None:
    ui.show_notices()
    ui.plan_summary_ui()
    bench = ui.current_workbench()
    state = ui.resolve_current()
    plan_json = state.plan.to_json(indent=None)
    data = bench.eval_set
    pruned = ui.pruned_model(ui.current_model(), plan_json)
    left, middle, right = st.columns([4, 4, 3], gap="medium")
    with left:
        index = ui.sample_picker_ui(
            data, changed=lambda: bench.changed_samples(state), key="sal_sample"
        )
    x = data.images[index : index + 1]
    label = int(data.labels[index])
    dense_pred, pruned_pred = predict_one(bench.model, x), predict_one(pruned, x)
    with middle:
        method, options = ui.attribution_method_ui(bench.model, data.input_shape, "sal")
        st.session_state[CHOSEN_KEY] = (method, options)
        target = ui.explain_target_ui(
            data.classes, dense_pred.label, label, pruned_pred.label, "sal"
        )
    with right:
        ui.global_amount_ui(
            AMOUNT_KEY,
            "The same plan as on the Prune page, where the method, criterion and per-layer "
            "settings live.",
        )
        # Counting the flips is a pass over the eval set: at once on a fast model, on
        # request (the "prediction changed" picker) on a slow one.
        flips = (
            f" · {len(bench.changed_samples(state)):,} of {len(data):,} eval predictions "
            "differ from the dense model under this plan."
            if not bench.evaluator.slow
            else ""
        )
        st.caption(f"Eval image #{index}{flips}")
    ui.saliency_pair_ui(bench, plan_json, index, target, method, options, "sal")
    if attention_heads(bench.model) and token_layout(bench.model, data.input_shape):
        attention_ui(bench, state, index, (dense_pred, pruned_pred))
    if not any(state.pruned.values()):
        st.info(
            "This plan prunes nothing, so both maps come from the same weights. Move the "
            "sparsity slider to see what pruning changes."
        )
    for warning in state.warnings:
        st.warning(warning)


def attention_ui(
    bench: ui.Workbench,
    state: ui.PrunedState,
    index: int,
    predictions: tuple[Prediction, Prediction],
) -> None:
    """A vision transformer's attention for the image: per head and rolled out, dense and
    pruned (``predictions``: each model's, for the titles), with the heads the plan removed
    marked."""
    data = bench.eval_set
    x = data.images[index : index + 1]
    pruned = ui.pruned_model(ui.current_model(), state.plan.to_json(indent=None))
    removed = removed_heads(state.keeps, bench.model)
    comparison = compare_attention(bench.model, pruned, x, removed, data.input_shape)
    st.markdown("##### Attention: where the [CLS] token looks")
    modules = comparison.dense_maps.modules
    cols = st.columns([2, 1, 1], vertical_alignment="bottom")
    module = cols[0].selectbox(
        "Attention module",
        modules,
        index=len(modules) - 1,
        key=f"sal_attention::{ui.subject_tag()}",
        format_func=lambda m: f"{m} · {int(removed[m].sum())} of {len(removed[m])} heads pruned",
        help="Each head's attention from the [CLS] token (which the classifier reads) to the "
        "patches, in this block.",
    )
    cols[1].metric(
        "Heads pruned",
        f"{sum(int(r.sum()) for r in removed.values())} of {sum(len(r) for r in removed.values())}",
        help="Over all attention modules, the heads the plan removed.",
    )
    cols[2].metric(
        "Rollout rank correlation",
        f"{comparison.rank_correlation:+.2f}"
        if math.isfinite(comparison.rank_correlation)
        else "n/a",
        help="Spearman correlation of the dense and pruned rollout maps over the patches "
        "where either map is nonzero, as for the maps above: 1 = the patches in the same "
        "order of importance; n/a when a map is flat there.",
    )
    layout = comparison.layout
    st.plotly_chart(
        attention_heads_figure(
            head_maps(comparison.dense_maps, module, layout),
            head_maps(comparison.pruned_maps, module, layout),
            removed[module],
            module,
        ),
        config={"displayModeBar": False},
        key="sal_heads",
    )
    height, width = data.input_shape[-2:]
    cell = (height // layout.grid[0], width // layout.grid[1])

    def upsampled(grid: np.ndarray) -> np.ndarray:
        return np.kron(grid, np.ones(cell))[:height, :width]

    label = int(data.labels[index])
    dense_pred, pruned_pred = predictions
    st.plotly_chart(
        saliency_figure(
            data.pixels(index),
            upsampled(scaled(comparison.dense)),
            upsampled(scaled(comparison.pruned)),
            upsampled(comparison.difference),
            data.classes[label],
            data.classes[label],
            (data.classes[dense_pred.label], dense_pred.confidence),
            (data.classes[pruned_pred.label], pruned_pred.confidence),
            caption="attention rollout to the [CLS] token",
        ),
        config={"displayModeBar": False},
        key="sal_rollout",
    )
    st.caption(
        "Rollout (Abnar & Zuidema 2020): each block's mean attention over its heads plus the "
        "residual, multiplied through every block: how much each patch reaches the [CLS] "
        "token. A pruned head's attention is uniform but passes nothing on (its values are "
        "zero), so it is left out of its block's mean."
    )


#: Plan amounts the agreement curve is measured at (the current plan's is added).
AGREEMENT_AMOUNTS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
AGREEMENT_RESULTS = "sal_agreement"
CHOSEN_KEY = "sal_chosen"


@st.fragment
def agreement_fragment() -> None:
    """Agreement over many images, against sparsity, on request."""
    ui.guarded(_agreement_body)


def _agreement_body() -> None:
    bench = ui.current_workbench()
    plan = ui.current_plan()
    data = bench.eval_set
    if METHODS[plan.method].amount_is_switch:
        st.caption(
            f"{METHODS[plan.method].title} has no amount to vary: choose another method on "
            "the Prune page to see agreement against sparsity."
        )
        return
    st.write(
        "Does the pruned model still look where the dense one did, over many images? The "
        "current method and settings, on eval images balanced over the classes, each "
        "explaining the dense model's prediction, with the current plan at other amounts."
    )
    cols = st.columns([2, 2, 3], vertical_alignment="bottom")
    count = cols[0].select_slider(
        "Images",
        [16, 32, 64, 128],
        value=32,
        key="sal_agree_n",
        help="More images: a steadier mean, a longer wait.",
    )
    names = attributions_for(bench.model, data.input_shape)
    # the method and settings chosen above (the maps' fragment keeps them here)
    method, options = st.session_state.get(CHOSEN_KEY, (names[0], {}))
    if method not in names:
        method, options = names[0], {}
    amounts = tuple(sorted({*AGREEMENT_AMOUNTS, round(plan.amount, 4)} - {0.0}))
    request = (
        ui.current_model(),
        plan.with_amount(0).to_json(indent=None),
        method,
        json.dumps(options, sort_keys=True),
        count,
        amounts,
    )
    results = st.session_state.setdefault(AGREEMENT_RESULTS, {})
    title = ATTRIBUTIONS[method].title
    if cols[1].button("Measure agreement", key="sal_agree_go", type="primary"):
        chosen = balanced_indices(data.labels, count)
        images = data.images[chosen]
        targets = predict(bench.model, images).argmax(1)
        pruned = {
            amount: ui.pruned_model(
                ui.current_model(), plan.with_amount(amount).to_json(indent=None)
            )
            for amount in amounts
        }
        bar = st.progress(
            0.0, text=f"{title} of {count} images, dense and at {len(amounts)} amounts…"
        )
        results[request] = agreement_curve(
            method,
            bench.model,
            pruned,
            images,
            targets,
            progress=lambda done: bar.progress(done, text=f"{done:.0%} done"),
            **options,
        )
        bar.empty()
    # Neither the method's name nor the plan's amount: this fragment does not rerun when the
    # method or the slider above changes, so either would go stale here; the button reads
    # both when pressed.
    cols[2].caption(
        f"Measures the attribution method and settings chosen above · {count} images · at "
        f"{', '.join(f'{a:.0%}' for a in AGREEMENT_AMOUNTS)} and the plan's sparsity"
    )
    points = results.get(request)
    if points is None:
        return
    st.plotly_chart(
        agreement_curve_figure(points, plan.amount if plan.amount > 0 else None),
        config={"displayModeBar": False},
        key="sal_agree_curve",
    )
    skipped = count - min(p.compared for p in points)
    st.caption(
        f"Lines: the means; dots: each image ({_settings_text(points.method, options)}, "
        f"{count} images). Rank correlation (over {RANKED_PIXELS}) 1 = the same order of "
        "importance; top-10% overlap 1 = the same most important pixels."
        + (
            f" Up to {skipped} image(s) per amount had a map ≈ 0 or flat and are left out."
            if skipped
            else ""
        )
    )


def _settings_text(method: str, options: dict[str, object]) -> str:
    """``"Integrated Gradients (steps 32)"``: a method's title and its settings."""
    settings = ", ".join(f"{name} {value}" for name, value in sorted(options.items()))
    return ATTRIBUTIONS[method].title + (f" ({settings})" if settings else "")


def main() -> None:
    st.title("Saliency")
    st.write(
        "Which pixels does the decision rest on, before and after pruning? The same "
        "attribution of the same image, for the dense and the pruned model."
    )
    saliency_fragment()
    with st.expander("Agreement over many images, against sparsity", expanded=False):
        agreement_fragment()
    with st.expander("How to read these maps"):
        st.markdown(HOW_TO_READ)


ui.run_page(main)
