"""Model & data: the chosen model's card, its layers, the data, and what pruning is."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explorer import ui
from explorer.plots import sample_grid_figure


def model_card_ui(card: dict, bench: ui.Workbench) -> None:
    st.subheader(card.get("title", card["name"]))
    st.write(card.get("summary", ""))
    if "eval_accuracy" not in card:
        st.warning("This model has no trained weights yet: run `python sample_models/train.py`.")
        return
    # Two by two: each value needs a quarter of a laptop's content width to stay whole.
    top, bottom = st.columns(2), st.columns(2)
    top[0].metric(
        "Eval accuracy",
        f"{bench.dense.accuracy:.2%}",
        help=f"On the {len(bench.eval_set):,} held-out eval images (the model card says "
        f"{card['eval_accuracy']:.2%}).",
    )
    top[1].metric("Parameters", f"{card['params']:,}")
    bottom[0].metric(
        "FLOPs / image",
        f"{bench.dense_flops / 1e6:.2f} M",
        help=f"{bench.dense_flops:,} (torch.utils.flop_counter; a multiply-add counts as 2 "
        "FLOPs, attention products included).",
    )
    classes = bench.eval_set.classes
    bottom[1].metric("Classes", f"{len(classes)}", help="Handwritten digits 0-9.")
    with st.expander("Training recipe and architecture"):
        recipe = card["recipe"]
        st.write(
            f"{recipe['epochs']} epochs of {recipe['optimizer']} (lr {recipe['lr']}, weight "
            f"decay {recipe['weight_decay']}, batch {recipe['batch_size']}), "
            f"{recipe['schedule']}; augmentation: {recipe['augmentation']}. Trained in "
            f"{card['train_minutes']} min on {card['train_hardware']}."
        )
        st.code(card["architecture"], language="text")


def layer_table_ui(bench: ui.Workbench) -> None:
    layers = bench.pruner.structure.layers
    total = bench.dense_flops
    frame = pd.DataFrame(
        {
            "layer": [la.name for la in layers],
            "type": [la.kind for la in layers],
            "weight shape": [la.shape_text for la in layers],
            "params": [la.params for la in layers],
            "FLOPs / image": [la.flops for la in layers],
            "share of FLOPs": [la.flops / total for la in layers],
        }
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        height="content",
        column_config={
            "share of FLOPs": st.column_config.ProgressColumn(
                format="percent", min_value=0.0, max_value=1.0
            ),
            "params": st.column_config.NumberColumn(format="localized"),
            "FLOPs / image": st.column_config.NumberColumn(format="localized"),
        },
    )


def main() -> None:
    st.title("Pruning Explorer")
    intro, action = st.columns([4, 1], vertical_alignment="center")
    intro.write(
        "Remove parts of a trained network and watch, live, what it costs in accuracy and "
        "what it buys in size, FLOPs and measured speed."
    )
    if action.button(
        "Start pruning",
        type="primary",
        icon=":material/content_cut:",
        width="stretch",
        help="Open the Prune page on this model.",
    ):
        st.switch_page("pages/prune.py")
    bench = ui.current_workbench()
    ui.plan_summary_ui()
    left, right = st.columns([3, 2], gap="large")
    with left:
        model_card_ui(bench.card, bench)
    with right:
        st.markdown("#### The data")
        data = bench.eval_set
        st.write(
            f"**MNIST** handwritten digits, 28×28 grey. The **fit** split (10,000 images) "
            f"trains and calibrates; the **eval** split ({len(data):,} images) is only ever "
            "measured. Bundled with the app: nothing is downloaded."
        )
        st.plotly_chart(sample_grid_figure(data, count=24), config={"displayModeBar": False})
    st.markdown("#### Prunable layers")
    layer_table_ui(bench)
    with st.expander("What is pruning?"):
        st.markdown(
            "- Trained networks are **over-parameterised**: many weights can be set to zero "
            "with little loss of accuracy.\n"
            "- **Unstructured** pruning zeros single weights: high sparsity, but the tensors "
            "keep their shape, so ordinary (dense) kernels are *not* faster.\n"
            "- **Structured** pruning removes whole neurons, filters, channels or heads: the "
            "model becomes physically smaller and really runs faster.\n"
            "- **Global** ranking lets the most redundant layers lose the most; "
            "**layer-wise** takes the same fraction from every layer.\n"
            "- Accuracy lost can often be **recovered by fine-tuning** after pruning."
        )


ui.run_page(main)
