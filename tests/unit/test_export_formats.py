"""Every export format, round-tripped: what a file loads back computes what the pruned model does.

Oracles: the masked model (``Pruner.pruned_model``) and the compacted one (``compact``) on random
inputs of batch sizes the export never saw; ``Pruner.resolve(plan).masks`` for the snippet;
the plan's per-group fractions and Torch-Pruning itself for ``tp-ratios``; onnxruntime for ONNX.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from explorer.engine.compaction import can_compact, compact
from explorer.engine.cost import model_cost
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.engine.structure import unpack_multihead_attention
from explorer.engine.workbench import Workbench
from explorer.keep.export import (
    FORMATS,
    ExportError,
    ExportResult,
    OnnxRunner,
    export,
    formats_for,
    load_export,
    masked_state_dict,
)
from explorer.zoo.models import load_model
from tests.unit.conftest import (
    INPUT_SHAPE,
    assert_unchanged,
    randomize_batchnorm,
    seeded,
    snapshot,
)

MODEL_FORMATS = ("zeros", "torch-prune", "pt2", "onnx", "torchscript", "snippet")
#: Formats that hold the deployable model: compacted for a structured plan.
PROGRAM_FORMATS = ("pt2", "onnx", "torchscript")
PLANS = {
    "unstructured": PruningPlan(amount=0.5),
    "filters": PruningPlan(method="filters", amount=0.3),
}
MODELS = ("lenet5", "resnet_mini", "resnet18")
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def _resnet18() -> nn.Module:
    model = seeded(lambda: torchvision.models.resnet18(weights=None, num_classes=10))
    return randomize_batchnorm(model)


@pytest.fixture(scope="module")
def sources(eval_set, calibration) -> Callable[[str], Workbench | Pruner]:
    """Bundled models as workbenches (their subject names them in the snippet), the torchvision
    model as a bare Pruner at 3x32x32; each built once."""
    built: dict[str, Workbench | Pruner] = {}

    def get(name: str) -> Workbench | Pruner:
        if name not in built:
            if name == "resnet18":
                built[name] = Pruner(_resnet18(), (3, 32, 32))
            else:
                built[name] = Workbench(name, load_model(name), eval_set, calibration)
        return built[name]

    return get


def _pruner(source: Workbench | Pruner) -> Pruner:
    return source.pruner if isinstance(source, Workbench) else source


def _inputs(pruner: Pruner, batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *pruner.structure.input_shape, generator=generator)


def _masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ``*_mask`` buffers torch.nn.utils.prune put on ``model``, by parameter name."""
    return {n[: -len("_mask")]: b for n, b in model.named_buffers() if n.endswith("_mask")}


def _assert_same_masks(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Equal masks, a parameter missing on one side counting as all ones (dense)."""
    for name in set(got) | set(expected):
        a, b = got.get(name), expected.get(name)
        a = torch.ones_like(b) if a is None else a
        b = torch.ones_like(a) if b is None else b
        assert torch.equal(a.bool().cpu(), b.bool().cpu()), f"mask of {name} differs"


# --- every model format loads back to the pruned model's outputs --------------------------------


@pytest.mark.parametrize("fmt", MODEL_FORMATS)
@pytest.mark.parametrize("plan_name", sorted(PLANS))
@pytest.mark.parametrize("model_name", MODELS)
def test_a_reloaded_export_computes_what_the_pruned_model_computes(
    sources, tmp_path, model_name, plan_name, fmt
):
    source = sources(model_name)
    pruner = _pruner(source)
    plan = PLANS[plan_name]
    state = pruner.resolve(plan)
    dense_before = snapshot(pruner.model)
    path = tmp_path / f"model{FORMATS[fmt].suffix}"

    result = export(source, plan, fmt, path)

    structured = can_compact(plan.method)
    compacted = fmt in PROGRAM_FORMATS and structured
    oracle = compact(pruner, state) if compacted else pruner.pruned_model(state)
    reloaded = result.reload(copy.deepcopy(pruner.model))
    if fmt == "onnx":
        assert isinstance(reloaded, OnnxRunner)  # onnxruntime runs the file, not torch
    with torch.no_grad():
        for batch in (3, 1):  # programs were captured at batch 2: any batch must work
            x = _inputs(pruner, batch)
            assert torch.allclose(reloaded(x), oracle.eval()(x), **TOLERANCE), f"batch {batch}"

    assert result.format == fmt and Path(result.path) == path and result.files[0] == str(path)
    assert result.bytes == sum(Path(f).stat().st_size for f in result.files) > 0
    assert result.compacted is compacted
    assert result.masked is not compacted
    if compacted:
        params = list(oracle.parameters())
        assert result.params_total == sum(p.numel() for p in params)
        assert result.params_total < sum(p.numel() for p in pruner.model.parameters())
    else:
        cost = model_cost(pruner, state)
        assert (result.params_nonzero, result.params_total) == (
            cost.params_nonzero,
            cost.params_total,
        )
    assert "\n" not in result.note and result.note
    assert_unchanged(pruner.model, dense_before)  # exporting never touches the dense model


def test_zeros_load_into_a_fresh_instance_of_the_class_with_weights_only(sources, tmp_path):
    pruner = _pruner(sources("lenet5"))
    plan = PLANS["unstructured"]
    export(sources("lenet5"), plan, "zeros", tmp_path / "w.pt")
    fresh = load_model("lenet5", kind="init")  # the same class, other weights
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    x = _inputs(pruner, 4)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruner.pruned_model(plan)(x))


def test_torch_prune_holds_orig_and_mask_pairs_of_every_masked_parameter(sources, tmp_path):
    pruner = _pruner(sources("resnet_mini"))
    plan = PLANS["filters"]
    export(sources("resnet_mini"), plan, "torch-prune", tmp_path / "w.pt")
    saved = torch.load(tmp_path / "w.pt", weights_only=True)
    masks = pruner.resolve(plan).masks
    for name, mask in masks.items():
        assert torch.equal(saved[f"{name}_mask"], mask)
        assert torch.equal(saved[f"{name}_orig"], pruner.structure.parameters[name].detach())
    assert not any(key in saved for key in masks)


@pytest.mark.parametrize("model_name", ["lenet5", "resnet_mini"])
def test_masked_state_dicts_equal_the_pruners_own_models_state_dicts(sources, model_name):
    pruner = _pruner(sources(model_name))
    state = pruner.resolve(PLANS["filters"])
    dense = {t.data_ptr() for t in pruner.model.state_dict().values()}
    for style, build in [
        ("zeros", pruner.pruned_model),
        ("torch_prune", pruner.torch_pruned_model),
    ]:
        ours, theirs = masked_state_dict(pruner, state, style), build(state).state_dict()
        assert set(ours) == set(theirs)
        for key, value in theirs.items():
            assert torch.equal(ours[key], value), f"{style}: {key}"
            assert ours[key].data_ptr() not in dense  # copies: the dense model stays private


def test_plan_round_trips(sources, tmp_path):
    plan = PruningPlan(method="filters", scope="layer", amount=0.4).with_unit("conv1", 0.5)
    result = export(sources("lenet5"), plan, "plan", tmp_path / "plan.json")
    assert result.reload() == plan
    assert PruningPlan.from_json((tmp_path / "plan.json").read_text()) == plan
    assert not result.compacted and not result.masked


def test_an_export_result_is_plain_data(sources, tmp_path):
    result = export(sources("lenet5"), PLANS["unstructured"], "pt2", tmp_path / "m.pt2")
    data = json.loads(json.dumps(result.to_dict()))
    assert ExportResult(**{**data, "files": tuple(data["files"])}) == result
    # An unstructured plan's program is the masked model, and the note says what that means.
    assert result.masked and not result.compacted
    assert "masked model" in result.note and "zeros are not faster" in result.note


# --- the snippet --------------------------------------------------------------------------------

SNIPPET_PLANS = {
    # plan, model, torch functions the file must call, whether it needs saved choices
    "global-magnitude": (PruningPlan(amount=0.6), "lenet5", ["prune.global_unstructured("], False),
    "global-with-own-amount-and-dense": (
        PruningPlan(amount=0.5).with_unit("fc3", 0.2).with_dense("conv1"),
        "lenet5",
        ["prune.global_unstructured(", "prune.l1_unstructured("],
        False,
    ),
    "layer-wise": (
        PruningPlan(scope="layer", amount=0.3).with_unit("fc1", 0.9),
        "lenet5",
        ["prune.l1_unstructured("],
        False,
    ),
    "filters-global": (
        PruningPlan(method="filters", amount=0.4),
        "lenet5",
        ["ln_structured"],
        False,
    ),
    "filters-layer-l2": (
        PruningPlan(method="filters", scope="layer", amount=0.5, norm=2.0).with_unit("fc1", 0.1),
        "lenet5",
        ["prune.ln_structured(", "n=2"],
        False,
    ),
    # Input channels: conv1's group is ranked by conv2's columns (ln_structured dim=1); conv2's
    # reaches fc1 through a flatten, 25 columns a channel, which ln_structured cannot rank.
    "channels": (
        PruningPlan(method="channels", scope="layer", amount=0.5),
        "lenet5",
        ["dim=1", "repeat_interleave(25)"],
        True,
    ),
    "coupled-groups": (PruningPlan(method="filters", amount=0.3), "resnet_mini", ["ln_"], True),
    "nm": (PruningPlan(method="nm", amount=1.0), "lenet5", ["custom_from_mask"], True),
    "random": (
        PruningPlan(criterion="random", amount=0.5, seed=3),
        "lenet5",
        ["custom_from_mask"],
        True,
    ),
    "taylor-filters": (
        PruningPlan(method="filters", criterion="taylor", amount=0.3),
        "lenet5",
        ["kept.update("],
        True,
    ),
    "torchvision-filters": (PruningPlan(method="filters", amount=0.3), "resnet18", ["ln_"], True),
    "whole-blocks": (
        PruningPlan(method="blocks", amount=0.34),
        "resnet_mini",
        ["custom_from_mask"],
        True,
    ),
}


@pytest.mark.parametrize("case", sorted(SNIPPET_PLANS))
def test_the_snippet_rebuilds_the_plans_masks_exactly(sources, tmp_path, case):
    plan, model_name, calls, saved = SNIPPET_PLANS[case]
    source = sources(model_name)
    pruner = _pruner(source)
    path = tmp_path / "prune_it.py"

    result = export(source, plan, "snippet", path)

    code = path.read_text()
    compile(code, str(path), "exec")
    for call in calls:
        assert call in code
    masks_file = tmp_path / "prune_it.masks.pt"
    assert masks_file.exists() is saved
    assert ("NOTE:" in code) is saved  # the fallback is said at the top
    assert result.files == ((str(path), str(masks_file)) if saved else (str(path),))
    # A fresh copy of the original model, pruned by the file alone.
    fresh = copy.deepcopy(pruner.model)
    pruned = result.reload(fresh)
    _assert_same_masks(_masks_of(pruned), pruner.resolve(plan).masks)
    assert not _masks_of(fresh)  # reload works on its own copy


def test_the_snippet_runs_as_a_script(sources, tmp_path):
    plan = PruningPlan(method="filters", amount=0.5)
    export(sources("lenet5"), plan, "snippet", tmp_path / "prune_lenet5.py")
    run = subprocess.run(
        [sys.executable, "prune_lenet5.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "conv1.weight: " in run.stdout and "% pruned" in run.stdout


def test_a_snippet_with_nothing_to_prune_says_so(sources, tmp_path):
    result = export(sources("lenet5"), PruningPlan(amount=0.0), "snippet", tmp_path / "s.py")
    assert "The plan prunes nothing." in Path(result.path).read_text()
    assert not _masks_of(result.reload(load_model("lenet5")))


def test_where_torch_would_break_ties_otherwise_the_snippet_loads_the_explorers_choice(tmp_path):
    # Half of every weight is exactly zero (a model pruned before): a 30% plan chooses among
    # equal scores, which torch's topk orders its own way. The file must still be exact.
    model = load_model("lenet5")
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param[param.abs() < param.abs().median()] = 0.0
    pruner = Pruner(model, INPUT_SHAPE)
    plan = PruningPlan(amount=0.3)
    result = export(pruner, plan, "snippet", tmp_path / "ties.py")
    code = (tmp_path / "ties.py").read_text()
    assert "NOTE:" in code and "tied" in code
    assert "prune.global_unstructured(" not in code  # one global call, or none
    _assert_same_masks(_masks_of(result.reload(load_model("lenet5"))), pruner.resolve(plan).masks)


class _AttentionNet(nn.Module):
    """A user's model with an ``nn.MultiheadAttention``, whose loader unpacks its packed q, k, v
    into ``in_proj`` (a Linear): exports must give the user's own names back."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(28, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.squeeze(1))
        attended, _ = self.attn(tokens, tokens, tokens)
        return self.fc((tokens + attended).mean(1))


@pytest.mark.parametrize("fmt", ["zeros", "torch-prune", "snippet"])
@pytest.mark.parametrize("method", ["unstructured", "heads"])
def test_weights_and_snippets_load_into_the_users_own_attention_model(tmp_path, fmt, method):
    original = seeded(_AttentionNet)
    pruner = Pruner(unpack_multihead_attention(copy.deepcopy(original)), INPUT_SHAPE)
    plan = PruningPlan(method=method, amount=0.5)
    result = export(pruner, plan, fmt, tmp_path / f"m{FORMATS[fmt].suffix}")
    # Loaded into the user's class (in_proj_weight), not the explorer's unpacked copy.
    reloaded = result.reload(original)
    x = _inputs(pruner, 3)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), pruner.pruned_model(plan)(x), **TOLERANCE)
    if fmt == "snippet":
        masks = _masks_of(reloaded)
        assert "attn.in_proj_weight" in masks  # torch's prune on the packed parameter itself
        expected = pruner.resolve(plan).masks
        assert torch.equal(masks["attn.in_proj_weight"], expected["attn.in_proj.weight"])


# --- Torch-Pruning ratios -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_name", "plan"),
    [
        ("lenet5", PruningPlan(method="filters", amount=0.37)),
        ("resnet_mini", PruningPlan(method="filters", amount=0.37)),
        (
            "resnet_mini",
            PruningPlan(method="channels", scope="layer", amount=0.3).with_unit(
                "block1.conv2", 0.6
            ),
        ),
        ("resnet18", PruningPlan(method="filters", amount=0.33)),
    ],
)
def test_tp_ratios_are_the_plans_group_fractions_and_torch_pruning_agrees(
    sources, tmp_path, model_name, plan
):
    pruner = _pruner(sources(model_name))
    state = pruner.resolve(plan)
    result = export(sources(model_name), plan, "tp-ratios", tmp_path / "ratios.json")
    data = result.reload()
    assert data == json.loads((tmp_path / "ratios.json").read_text())
    ratios = data["pruning_ratio_dict"]
    for unit in state.units:
        fraction = state.pruned[unit.name] / unit.size
        for layer in unit.detail.producers:
            assert ratios[layer] == pytest.approx(fraction, abs=1e-12)
    # Torch-Pruning with these ratios removes as many channels per layer as compaction does.
    model = copy.deepcopy(pruner.model)
    example = torch.zeros(1, *pruner.structure.input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=0.0,
            pruning_ratio_dict={model.get_submodule(k): v for k, v in ratios.items()},
            ignored_layers=[model.get_submodule(k) for k in data["ignored_layers"]],
        ).step()
    shapes = {name: p.shape for name, p in model.named_parameters()}
    assert shapes == {name: p.shape for name, p in compact(pruner, state).named_parameters()}


def test_tp_ratios_refuse_plans_without_channels_and_say_why(sources, tmp_path):
    with pytest.raises(ExportError, match="fractions of channels"):
        export(sources("lenet5"), PLANS["unstructured"], "tp-ratios", tmp_path / "r.json")
    assert "tp-ratios" not in formats_for("unstructured")
    assert "tp-ratios" in formats_for("filters")
    assert not list(tmp_path.iterdir())


# --- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_a_compacted_file_is_smaller_than_the_dense_one(sources, tmp_path, fmt):
    source = sources("resnet_mini")
    suffix = FORMATS[fmt].suffix
    # A structured plan that prunes nothing: the dense model through the same path.
    dense = export(source, PruningPlan(method="filters", amount=0.0), fmt, tmp_path / f"d{suffix}")
    small = export(source, PruningPlan(method="filters", amount=0.5), fmt, tmp_path / f"s{suffix}")
    assert small.compacted and dense.compacted
    assert small.params_total < 0.5 * dense.params_total
    assert small.bytes < 0.6 * dense.bytes


# --- failures: one line, no file ----------------------------------------------------------------


def test_a_failing_onnx_export_leaves_no_partial_file(sources, tmp_path, monkeypatch):
    def fail(*args: object, f: str, **kwargs: object) -> None:
        Path(f).write_bytes(b"half an onnx file")  # it got going, then broke
        raise RuntimeError("Failed to convert the graph\n  a long torch explanation")

    monkeypatch.setattr(torch.onnx, "export", fail)
    target = tmp_path / "model.onnx"
    with pytest.raises(ExportError) as caught:
        export(sources("lenet5"), PLANS["filters"], "onnx", target)
    assert str(caught.value) == ("onnx export failed (RuntimeError: Failed to convert the graph)")
    assert not list(tmp_path.iterdir())  # neither the file nor a temporary one

    target.write_bytes(b"an older export")
    with pytest.raises(ExportError):
        export(sources("lenet5"), PLANS["filters"], "onnx", target)
    assert target.read_bytes() == b"an older export"  # replaced only by a complete file
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize(
    ("fmt", "where", "message"),
    [
        ("safetensors", "m.st", "unknown export format 'safetensors'"),
        ("pt2", "missing/m.pt2", "does not exist"),
        ("zeros", ".", "is a folder"),
        ("tp-ratios", "r.json", "Torch-Pruning"),
    ],
)
def test_bad_requests_are_one_line_value_errors(sources, tmp_path, fmt, where, message):
    with pytest.raises(ValueError) as caught:
        export(sources("lenet5"), PLANS["unstructured"], fmt, tmp_path / where)
    assert isinstance(caught.value, ExportError)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not list(tmp_path.iterdir())


def test_a_plan_the_model_cannot_take_is_an_export_error(sources, tmp_path):
    with pytest.raises(ExportError, match="attention heads"):
        export(sources("lenet5"), PruningPlan(method="heads", amount=0.5), "pt2", tmp_path / "m")
    assert not list(tmp_path.iterdir())


def test_torchscript_of_a_model_it_can_only_trace_for_one_batch_is_refused(tmp_path):
    # vit_tiny expands its [CLS] token to len(x): a trace freezes that batch size.
    pruner = Pruner(load_model("vit_tiny"), (1, 28, 28))
    with pytest.raises(ExportError, match="use pt2"):
        export(pruner, PruningPlan(amount=0.3), "torchscript", tmp_path / "m.ts")
    assert not list(tmp_path.iterdir())


def test_torch_warnings_stay_out_of_the_users_face(sources, tmp_path, capsys):
    source = sources("lenet5")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ts = export(source, PLANS["filters"], "torchscript", tmp_path / "m.ts")
        ts.reload()
        export(source, PLANS["filters"], "onnx", tmp_path / "m.onnx")
    assert not [w for w in caught if "deprecated" in str(w.message)]
    assert capsys.readouterr().out == ""  # no exporter progress lines
    assert "deprecated" in ts.note  # said once, in the note


def test_load_export_needs_the_original_model_for_weight_files(sources, tmp_path):
    export(sources("lenet5"), PLANS["unstructured"], "zeros", tmp_path / "w.pt")
    with pytest.raises(ExportError, match="original"):
        load_export("zeros", tmp_path / "w.pt")
