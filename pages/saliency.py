"""Saliency: which pixels the dense and the pruned model rely on for one image, side by side."""

from __future__ import annotations

import math

import streamlit as st
from torch import nn

from explorer import ui
from explorer.plots.saliency import saliency_figure
from explorer.saliency import (
    ATTRIBUTIONS,
    PairExplanation,
    attributions_for,
    explain_pair,
    predict_one,
)

METHOD_KEY = "sal_method"
TARGET_KEY = "sal_target"
AMOUNT_KEY = "sal_amount"
TARGETS = ("dense", "label", "pruned")
TARGET_HELP = (
    "Which class's logit both maps explain. The dense model's prediction asks 'why did it say "
    "that, and does the pruned model still look there?'; the true label or the pruned model's "
    "prediction show where the evidence for those classes lies."
)
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


def method_ui(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The attribution method, among those that apply to this model on (C, H, W) inputs."""
    names = attributions_for(model, input_shape)
    if st.session_state.get(METHOD_KEY) not in names:
        st.session_state[METHOD_KEY] = names[0]
    method = st.selectbox(
        "Attribution method",
        names,
        key=METHOD_KEY,
        format_func=lambda n: ATTRIBUTIONS[n].title,
        help=" · ".join(f"{ATTRIBUTIONS[n].title}: {ATTRIBUTIONS[n].help}" for n in names),
    )
    missing = [m for name, m in ATTRIBUTIONS.items() if name not in names]
    if missing:
        st.caption(
            "Not for this model: "
            + "; ".join(
                f"{m.title}, which needs {m.requires or 'another architecture'}" for m in missing
            )
            + "."
        )
    return method


def target_ui(classes: tuple[str, ...], dense: int, label: int, pruned: int) -> int:
    """The class to explain: the dense prediction (default), the true label or the pruned one."""
    choices = {
        "dense": ("Dense prediction", dense),
        "label": ("True label", label),
        "pruned": ("Pruned prediction", pruned),
    }
    choice = st.radio(
        "Explain class",
        TARGETS,
        key=TARGET_KEY,
        horizontal=True,
        help=TARGET_HELP,
        format_func=lambda t: f"{choices[t][0]} ({classes[choices[t][1]]})",
    )
    return choices[choice][1]


def agreement_ui(explanation: PairExplanation, classes: tuple[str, ...], label: int) -> None:
    """Predictions and the agreement numbers, in one row of metrics."""
    comparison = explanation.comparison
    cols = st.columns(4)
    for col, name, pred in (
        (cols[0], "Dense", explanation.dense),
        (cols[1], "Pruned", explanation.pruned),
    ):
        text = classes[pred.label] if pred.finite else "broken"
        col.metric(
            f"{name} predicts",
            text,
            f"{pred.confidence:.1%} confident" if pred.finite else "non-finite output",
            delta_color="off",
            delta_arrow="off",
            help=f"Top-1 class and its softmax probability; the true label is {classes[label]}.",
        )
    corr, iou = comparison["correlation"], comparison["top_iou"]
    reason = comparison["reason"]
    why = f" Undefined here: {reason}." if reason else ""
    cols[2].metric(
        "Map correlation",
        f"{corr:+.2f}" if math.isfinite(corr) else "n/a",
        help="Pearson correlation of the two maps, pixel by pixel: 1 = the same "
        "pattern, 0 = unrelated." + ("" if math.isfinite(corr) else why),
    )
    cols[3].metric(
        f"Top-{comparison['top_fraction']:.0%} overlap",
        f"{iou:.2f}" if math.isfinite(iou) else "n/a",
        help="Intersection over union of the most important tenth of each map's "
        "pixels: 1 = the same pixels, 0 = none shared." + ("" if math.isfinite(iou) else why),
    )


@st.fragment
def saliency_fragment() -> None:
    """Controls and the maps together: the slider, sample or method reruns only this part."""
    ui.guarded(_saliency_body)


def _saliency_body() -> None:
    ui.show_notices()
    ui.plan_summary_ui()
    bench = ui.current_workbench()
    state = ui.resolve_current()
    plan = state.plan
    data = bench.eval_set
    pruned = ui.pruned_model(ui.current_model(), plan.to_json(indent=None))
    left, middle, right = st.columns([4, 4, 3], gap="medium")
    with left:
        index = ui.sample_picker_ui(
            data, changed=lambda: bench.changed_samples(state), key="sal_sample"
        )
    x = data.images[index : index + 1]
    label = int(data.labels[index])
    dense_pred, pruned_pred = predict_one(bench.model, x), predict_one(pruned, x)
    with middle:
        method = method_ui(bench.model, data.input_shape)
        target = target_ui(data.classes, dense_pred.label, label, pruned_pred.label)
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
    explanation = explain_pair(method, bench.model, pruned, x, target)
    classes = data.classes
    maps = {"Dense": explanation.dense_attribution, "Pruned": explanation.pruned_attribution}
    # a map ≈ 0 is drawn blank with what that means for this method, never stretched to 1
    notes = {
        name: ATTRIBUTIONS[method].zero_means if a.negligible else "" for name, a in maps.items()
    }
    st.plotly_chart(
        saliency_figure(
            data.pixels(index),
            explanation.dense_scaled,
            explanation.pruned_scaled,
            explanation.comparison["difference"],
            classes[label],
            classes[target],
            (classes[explanation.dense.label], explanation.dense.confidence),
            (classes[explanation.pruned.label], explanation.pruned.confidence),
            dense_note=notes["Dense"],
            pruned_note=notes["Pruned"],
        ),
        config={"displayModeBar": False},
    )
    agreement_ui(explanation, classes, label)
    if explanation.comparison["reason"]:
        st.caption(f"Agreement n/a: {explanation.comparison['reason']}.")
    for name, attribution in maps.items():
        if attribution.negligible:
            st.caption(f"{name} map ≈ 0, drawn blank: {attribution.reason}.")
    if not any(state.pruned.values()):
        st.info(
            "This plan prunes nothing, so both maps come from the same weights. Move the "
            "sparsity slider to see what pruning changes."
        )
    for warning in state.warnings:
        st.warning(warning)
    detail = ATTRIBUTIONS[method].describe(bench.model, data.input_shape)
    st.caption(f"{detail} Both maps computed in {explanation.seconds * 1000:.0f} ms.".strip())


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
