"""Saliency: which pixels the dense and the pruned model rely on for one image, side by side."""

from __future__ import annotations

import streamlit as st

from explorer import ui
from explorer.saliency import (
    predict_one,
)

AMOUNT_KEY = "sal_amount"
HOW_TO_READ = """
- Both maps explain **the same class** of **the same image**; only the model differs.
- Each map is **scaled to its own maximum** (1 = the pixel the model relies on most), so the
  comparison is about *where* a model looks, not about how large its gradients are.
- **Pruned − dense**: red where the pruned model relies on a pixel more than the dense one did,
  blue where less. A pruned model that still predicts correctly while looking elsewhere is
  right for different reasons.
- **Correlation** compares the two maps pixel by pixel (1 = the same pattern). The **top-10%
  overlap** is the intersection over union of each map's most important tenth of the pixels.
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
    if not any(state.pruned.values()):
        st.info(
            "This plan prunes nothing, so both maps come from the same weights. Move the "
            "sparsity slider to see what pruning changes."
        )
    for warning in state.warnings:
        st.warning(warning)


def main() -> None:
    st.title("Saliency")
    st.write(
        "Which pixels does the decision rest on, before and after pruning? The same "
        "attribution of the same image, for the dense and the pruned model."
    )
    saliency_fragment()
    with st.expander("How to read these maps"):
        st.markdown(HOW_TO_READ)


ui.run_page(main)
