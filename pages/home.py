"""Model & data: the chosen model's card, its layers, the data, and what pruning is."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st
import torchvision

from explorer.app import ui
from explorer.engine.limits import max_upload_mb, upload_limit_text
from explorer.engine.subject import DataSpec, ModelSource, Subject
from explorer.loading.options import allow
from explorer.loading.store import default_store
from explorer.plots import sample_grid_figure

# --- bring your own: upload a model, its weights and data; check; adopt -----------------------
# Uploads go into the content-addressed store; the subject names them by hash, so a link to it
# works while this server holds them.

SOURCES = {
    "torchvision": "torchvision architecture + weights",
    "timm": "timm architecture + weights",
    "file": "a model file (.pt2, .onnx, TorchScript .ts)",
    "python": "my own class (.py) + weights",
    "bundled": "a bundled architecture + other weights",
}
CANDIDATE_KEY = "byo_candidate"


STORED_KEY = "byo_stored"


def _stored(upload: object, suffix: str | None = None) -> str:
    """Keep an uploaded file in the store; its reference (``store:<sha256><suffix>``).

    Hashed and written once per upload (every rerun of the page would otherwise hash it again,
    up to the upload limit each time)."""
    suffix = suffix if suffix is not None else Path(upload.name).suffix.lower()
    known = st.session_state.setdefault(STORED_KEY, {})
    if (upload.file_id, suffix) not in known:
        known[(upload.file_id, suffix)] = default_store().put(upload.getvalue(), suffix)
        ui.remember_upload(known[(upload.file_id, suffix)], upload.name)  # shown, never a key
    return known[(upload.file_id, suffix)]


def upload_limit_mb() -> int:
    """The largest upload, MB: ours (``PRUNING_EXPLORER_MAX_UPLOAD_MB``), or Streamlit's
    ``server.maxUploadSize`` where that is lower (its server refuses more). The page and every
    uploader say this one number."""
    return min(max_upload_mb(), int(st.get_option("server.maxUploadSize")))


def _upload(label: str, types: list[str], key: str, help: str | None = None) -> object | None:
    return st.file_uploader(
        label, type=types, key=key, help=help, max_upload_size=upload_limit_mb()
    )


def model_source_ui() -> tuple[ModelSource | None, str | None]:
    """The model source and weights (``sha256:``) the user gave, or None while incomplete."""
    settings = ui.app_settings()
    kind = st.radio(
        "Model",
        list(SOURCES),
        format_func=SOURCES.get,
        key="byo_kind",
        help="Weights are read with torch.load(weights_only=True) or safetensors: no code in "
        "them runs. A whole pickled model is refused: save its state_dict instead.",
    )
    weights_help = "A state_dict: torch.save(model.state_dict(), 'weights.pt') or .safetensors."
    source, weights = None, None
    if kind == "torchvision":
        names = torchvision.models.list_models(module=torchvision.models)
        arch = st.selectbox(
            "Architecture",
            names,
            index=names.index("resnet18"),
            key="byo_arch",
            help="Built by torchvision with no weights downloaded; the class count is read "
            "from your weights file.",
        )
        source = ModelSource("torchvision", arch)
        upload = _upload("Weights", ["pt", "pth", "safetensors"], "byo_tv_weights", weights_help)
        weights = default_store().digest(_stored(upload)) if upload else None
    elif kind == "timm":
        if importlib.util.find_spec("timm") is None:
            st.info(
                "timm is not installed here: it is an optional extra. Install it with "
                "`pip install -e '.[timm]'` and restart the app."
            )
            return None, None
        cols = st.columns(2)
        name = cols[0].text_input(
            "Architecture",
            "resnet18",
            key="byo_timm_name",
            help="A name of timm.list_models(), e.g. resnet18 or efficientnet_b0. Built by timm "
            "with pretrained=False: nothing is downloaded; the class count is read from your "
            "weights file.",
        )
        args = cols[1].text_input(
            "Arguments (JSON)",
            "{}",
            key="byo_timm_args",
            help='timm.create_model arguments, e.g. {"img_size": 32} for a ViT on small images',
        )
        upload = _upload("Weights", ["pt", "pth", "safetensors"], "byo_timm_weights", weights_help)
        name = name.strip().removeprefix("timm:")
        if name:
            source = ModelSource.parse(f"timm:{name}", args)
        weights = default_store().digest(_stored(upload)) if upload else None
    elif kind == "file":
        # ONNX is a graph (data); a .pt2 or TorchScript file can run code when loaded.
        types = ["onnx"] + (["pt2", "ts", "torchscript"] if settings.uploads_trusted else [])
        upload = _upload(
            "Model file",
            types,
            "byo_file",
            "ONNX (converted with onnx2torch)"
            + (
                ", torch.export program (.pt2) or TorchScript"
                if settings.uploads_trusted
                else "; .pt2 and TorchScript files can run code when loaded: to accept "
                f"them, {allow('trust_code', 'app')}"
            )
            + ": each carries its weights.",
        )
        source = ModelSource.parse(_stored(upload)) if upload else None
    elif kind == "python":
        if not settings.uploads_trusted:
            st.info(
                "Running an uploaded .py file would run its code on this server, so it is "
                f"off: {allow('trust_code', 'app')} (`streamlit run app.py -- --trust-code`, or "
                "PRUNING_EXPLORER_TRUST_CODE=1) on a machine they trust, or start it on its "
                "own file: `streamlit run app.py -- --model path/model.py:Net --weights w.pt`."
            )
            return None, None
        cols = st.columns(2)
        with cols[0]:
            code = _upload("Model code (.py)", ["py"], "byo_py")
        name = cols[1].text_input("Class name", key="byo_class", placeholder="Net")
        args = st.text_input(
            "Constructor arguments (JSON)", "{}", key="byo_args", help='e.g. {"num_classes": 10}'
        )
        upload = _upload("Weights", ["pt", "pth", "safetensors"], "byo_py_weights", weights_help)
        if code and name.strip():
            source = ModelSource.parse(f"{_stored(code, '.py')}:{name.strip()}", args)
        weights = default_store().digest(_stored(upload)) if upload else None
    else:
        arch = st.selectbox("Architecture", ui.bundled_names(), key="byo_bundled")
        source = ModelSource("zoo", arch)
        upload = _upload("Weights", ["pt", "pth", "safetensors"], "byo_zoo_weights", weights_help)
        weights = default_store().digest(_stored(upload)) if upload else None
    return source, weights


#: Where each preprocessing setting comes from, as the Preprocessing choices say it.
#: Short enough for a half of the panel at 1280 px; each help says what "the model's" falls
#: back to when the model declares nothing.
MODEL_CHOICE, IMAGES_CHOICE = "the model's", "the images' own"
SIZE_CHOICES = {"model": MODEL_CHOICE, "images": IMAGES_CHOICE, "custom": "custom"}
CHANNEL_CHOICES = {"model": MODEL_CHOICE, "images": IMAGES_CHOICE, 1: "1 (grey)", 3: "3 (RGB)"}
NORMALISATION_CHOICES = {"model": MODEL_CHOICE, "images": IMAGES_CHOICE, "custom": "custom"}


def _choice(column: object, label: str, choices: dict, key: str, help: str) -> object:
    """One preprocessing setting: where it comes from, shown in words."""
    return column.selectbox(label, list(choices), key=key, format_func=choices.get, help=help)


def data_spec_ui() -> DataSpec | None:
    """The dataset and its preprocessing, or None while no file is given."""
    kind = st.radio(
        "Data",
        ["mnist", "upload"],
        format_func={"mnist": "bundled MNIST", "upload": "my images (.npz or .zip)"}.get,
        horizontal=True,
        key="byo_data_kind",
        help="An .npz with `images` (N×H×W[×C], uint8) and `labels`; or a .zip of an "
        "ImageFolder tree (one folder per class). Split once, by class, into a fit part "
        "(calibration, fine-tuning) and a held-out eval part (every number shown).",
    )
    source = "mnist"
    if kind == "upload":
        upload = _upload("Dataset", ["npz", "zip"], "byo_data")
        if upload is None:
            return None
        source = _stored(upload)
    with st.expander("Preprocessing", expanded=kind == "upload"):
        cols = st.columns(2)  # two a row: each choice stays whole in half of the page
        size_from = _choice(
            cols[0],
            "Size",
            SIZE_CHOICES,
            "byo_size_from",
            "What the images are resized to. **The model's**: the size a torchvision or "
            "timm model declares (e.g. 224×224); a model that declares none sees the images as "
            "they are. **The images' own**: never resized, whatever the model declares (they "
            "must then all have one size). **Custom**: a square of the side you give.",
        )
        side = 0
        if size_from == "custom":
            side = cols[0].number_input("Side (px)", 1, 1024, 32, key="byo_size")
        channels = _choice(
            cols[1],
            "Channels",
            CHANNEL_CHOICES,
            "byo_channels",
            "Grey images are repeated to 3 channels, colour ones averaged to 1. **The "
            "model's**: what the model's first layer takes (a 3-value mean means RGB); **the "
            "images' own**: as they are.",
        )
        cols = st.columns(2)
        normalisation = _choice(
            cols[0],
            "Mean and std",
            NORMALISATION_CHOICES,
            "byo_normalisation",
            "Each channel becomes (pixel / 255 − mean) / std. **The model's**: what a "
            "torchvision or timm model declares (ImageNet's mean and std), else the images' "
            "own. **The images' own**: the fit images' statistics, whatever the model "
            "declares. **Custom**: the numbers you give.",
        )
        fraction = cols[1].slider("Held out for eval", 0.1, 0.9, 0.3, 0.05, key="byo_eval")
        mean = std = ""
        if normalisation == "custom":
            cols = st.columns(2)
            mean = cols[0].text_input("Mean", "", key="byo_mean", placeholder="0.5 or 0.49,0.48")
            std = cols[1].text_input("Std", "", key="byo_std", placeholder="0.5 or 0.25,0.25")
    chosen = {"size": size_from, "channels": channels, "normalisation": normalisation}
    own = [name for name, choice in chosen.items() if choice == "images"]
    try:
        return DataSpec(
            source=source,
            size=(int(side), int(side)) if side else None,
            channels=channels if isinstance(channels, int) else None,
            mean=[float(v) for v in mean.split(",")] if mean.strip() else None,
            std=[float(v) for v in std.split(",")] if std.strip() else None,
            eval_fraction=float(fraction),
            from_images=tuple(own),
        )
    except ValueError as err:  # "0.5,," or a negative std: said here, the model stays
        st.error(f"Preprocessing: {_bad_number(err)}")
        return None


def _bad_number(err: ValueError) -> str:
    text = str(err)
    if text.startswith("could not convert string to float"):
        return "mean and std take numbers separated by commas, e.g. 0.5 or 0.49,0.48,0.45"
    return text


def candidate_ui(subject: Subject) -> None:
    """What was understood about a subject, and the button that makes it current."""
    try:
        bench = ui.get_workbench(subject.to_json())
    except (ValueError, OSError) as err:
        current = ui.shown_label(ui.current_subject())
        st.error(ui.named(f"Not usable: {err}. The current model stays {current}."))
        return
    layers = bench.pruner.structure.layers
    st.success(f"Understood: {type(bench.model).__name__}, {len(layers)} prunable layers.")
    cols = st.columns(4)
    warnings = st.empty()  # under the row, full width: a model at chance is said loudly
    with cols[0]:
        refine = ui.dense_accuracy_ui(bench, warnings=warnings)
    cols[1].metric("Input", "×".join(map(str, bench.eval_set.input_shape)), help="C×H×W")
    cols[2].metric("Classes", f"{len(bench.eval_set.classes)}")
    cols[3].metric("Eval images", f"{len(bench.eval_set):,}")
    st.caption(
        "Classes: "
        + ", ".join(bench.eval_set.classes[:20])
        + ("…" if len(bench.eval_set.classes) > 20 else "")
    )
    for note in bench.notes:
        st.caption(ui.named(note))
    if st.button("Use this model", type="primary", key="byo_use") and ui.set_subject(subject):
        st.session_state.pop(CANDIDATE_KEY, None)
        st.rerun()
    refine()


def bring_your_own_ui() -> None:
    """Upload a model (and weights) and data; check; adopt."""
    st.caption(
        f"Files up to {upload_limit_text(upload_limit_mb())} each. Nothing you upload is run "
        "unless the operator allowed it (--trust-code): weights load with weights_only=True, "
        "ONNX files are graphs."
    )
    left, right = st.columns(2, gap="large")
    try:
        with left:
            source, weights = model_source_ui()
        with right:
            data = data_spec_ui()
    except ValueError as err:  # a bad setting or file: say which, keep the current model
        st.error(ui.named(f"Not usable: {err}"))
        return
    ready = source is not None and data is not None
    if st.button("Check", disabled=not ready, key="byo_check", help="Load and evaluate it."):
        st.session_state[CANDIDATE_KEY] = Subject(source, weights, data)
    candidate = st.session_state.get(CANDIDATE_KEY)
    if candidate is not None:
        with st.spinner("Loading and evaluating…"):
            candidate_ui(candidate)


# --- the page --------------------------------------------------------------------------------


def model_card_ui(card: dict, bench: ui.Workbench) -> Callable[[], None]:
    """The model's card; returns ``refine`` for its (possibly still previewed) accuracy."""
    bundled = bench.subject.is_bundled
    # a user model's card is titled by its label: the names its files were uploaded as
    st.subheader(card.get("title", card["name"]) if bundled else ui.shown_label(bench.subject))
    st.write(ui.named(card.get("summary", "")))
    if bundled and "eval_accuracy" not in card:
        st.warning("This model has no trained weights yet: run `python sample_models/train.py`.")
    # Two by two: each value needs a quarter of a laptop's content width to stay whole.
    top, bottom = st.columns(2), st.columns(2)
    warnings = st.empty()  # under the metrics, full width: a model at chance is said loudly
    with top[0]:
        refine = ui.dense_accuracy_ui(bench, warnings=warnings)
    params = sum(p.numel() for p in bench.model.parameters())
    top[1].metric("Parameters", f"{params:,}")
    bottom[0].metric(
        "FLOPs / image",
        _flops_text(bench.dense_flops),
        help=f"{bench.dense_flops:,} (torch.utils.flop_counter; a multiply-add counts as 2 "
        "FLOPs, attention products included).",
    )
    classes = bench.eval_set.classes
    bottom[1].metric(
        "Classes",
        f"{len(classes)}",
        help="Handwritten digits 0-9." if bundled else ", ".join(classes[:50]),
    )
    if bundled and "recipe" in card:
        with st.expander("Training recipe and architecture"):
            recipe = card["recipe"]
            st.write(
                f"{recipe['epochs']} epochs of {recipe['optimizer']} (lr {recipe['lr']}, "
                f"weight decay {recipe['weight_decay']}, batch {recipe['batch_size']}), "
                f"{recipe['schedule']}; augmentation: {recipe['augmentation']}. Trained in "
                f"{card['train_minutes']} min on {card['train_hardware']}."
            )
            st.code(card["architecture"], language="text")
    elif not bundled:
        with st.expander("Where it comes from"):
            subject = bench.subject
            st.markdown(
                ui.named(
                    f"- **Model:** `{subject.model}`\n"
                    f"- **Weights:** {f'`{subject.weights}`' if subject.weights else 'its own'}\n"
                    f"- **Data:** `{subject.data.source}`"
                )
            )
            for note in bench.notes:
                st.caption(ui.named(note))
    return refine


def _flops_text(flops: int) -> str:
    return f"{flops / 1e9:.2f} G" if flops >= 1e9 else f"{flops / 1e6:.2f} M"


def data_ui(bench: ui.Workbench) -> None:
    """What the data is and how it is split."""
    st.markdown("#### The data")
    data, card = bench.eval_set, bench.card
    if bench.subject.data.bundled:
        channels, height, width = data.input_shape
        fed = ""  # what the model sees, when its preprocessing changed the digits
        if (channels, height, width) != (1, 28, 28):
            colour = "grey" if channels == 1 else f"with {channels} channels"
            fed = f", fed to this model as {width}×{height} {colour}"
        st.write(
            f"**MNIST** handwritten digits, 28×28 grey{fed}. The **fit** split (10,000 images) "
            f"trains and calibrates; the **eval** split ({len(data):,} images) is only ever "
            "measured. Bundled with the app: nothing is downloaded."
        )
    else:
        spec = bench.subject.data
        fit = card.get("fit_samples")
        channels, height, width = data.input_shape
        st.write(
            f"**{len(data.classes)} classes**, as {channels}×{height}×{width} inputs. Split "
            f"once by class (seed {spec.seed}): the **fit** part"
            + (f" ({fit:,} images)" if fit is not None else "")
            + f" calibrates the data-driven criteria; the **eval** part ({len(data):,} "
            f"images, {spec.eval_fraction:.0%} of each class) is only ever measured."
        )
    st.plotly_chart(sample_grid_figure(data, count=24), config={"displayModeBar": False})


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
        refine = model_card_ui(bench.card, bench)
    with right:
        data_ui(bench)
    st.markdown("#### Prunable layers")
    layer_table_ui(bench)
    with st.expander("Bring your own model and data", icon=":material/upload_file:"):
        bring_your_own_ui()
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
    refine()  # a big model's dense accuracy, refined once everything else is on screen


ui.run_page(main)
