"""Loading a model from every kind of source: round trips against the original model, the trust
gates (nothing runs without the operator's opt-in), and a ``LoadError`` with a useful line for
every bad file, fuzzed with hypothesis."""

from __future__ import annotations

import copy
import json
import pickle
import socket
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file
from torch import nn

from explorer.engine.subject import MODEL_KINDS, ModelSource, file_digest
from explorer.loading.errors import LoadError
from explorer.loading.models import (
    LOADERS,
    TracedModule,
    apply_weights,
    load_model,
    load_weights,
)
from explorer.loading.store import Store
from explorer.zoo.models import lenet5, weights_path
from tests.unit.conftest import seeded

#: Sources name plain paths in these tests; no store is involved unless a test makes one.
LOCAL = Path


def source(text: str, **args) -> ModelSource:
    return ModelSource.parse(text, args or None)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _pickle_payload_class(marker: Path) -> type:
    """A class whose unpickling would create ``marker`` (the classic pickle exploit)."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return Payload


# --- files built once per module ----------------------------------------------------------------


@pytest.fixture(scope="module")
def net() -> nn.Module:
    """The original every round trip is compared with: LeNet-5 with a fixed random init."""
    return seeded(lenet5, seed=3)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory, net, batch) -> dict[str, Path]:
    """``net`` saved in every format, in a fresh folder."""
    folder = tmp_path_factory.mktemp("model_files")
    paths = {name: folder / name for name in ("w.pt", "w.safetensors", "w.pth")}
    torch.save(net.state_dict(), paths["w.pt"])
    save_file(net.state_dict(), str(paths["w.safetensors"]))
    torch.save({"epoch": 3, "model_state_dict": net.state_dict()}, paths["w.pth"])

    dynamic = torch.export.export(
        net, (batch[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    paths["dynamic.pt2"] = folder / "dynamic.pt2"
    torch.export.save(dynamic, str(paths["dynamic.pt2"]))
    paths["static.pt2"] = folder / "static.pt2"  # torch.export's default: the example's batch
    torch.export.save(torch.export.export(net, (batch[:1],)), str(paths["static.pt2"]))

    # The TorchScript-based exporter (dynamo=False): it is fast (~0.3 s) and writes operators
    # onnx2torch converts. torch 2.14's default dynamo exporter takes ~8 s and writes opset 20
    # with Reshape(allowzero=1); the lowering path for such files is tested on a small
    # hand-built graph below.
    paths["m.onnx"] = folder / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (batch[:1],), str(paths["m.onnx"]), dynamo=False)

    paths["m.ts"] = folder / "m.ts"
    torch.jit.save(torch.jit.script(net), str(paths["m.ts"]))
    paths["whole.pt"] = folder / "whole.pt"
    torch.save(net, paths["whole.pt"])
    return paths


# --- round trips --------------------------------------------------------------------------------

#: (test id, source text or None for the zoo with the file as weights, file, trust flags)
ROUND_TRIPS = [
    ("state_dict .pt", "lenet5", "w.pt", {}),
    ("safetensors", "lenet5", "w.safetensors", {}),
    ("wrapped state_dict .pth", "lenet5", "w.pth", {}),
    ("export, dynamic batch", "{}", "dynamic.pt2", {"trust_code": True}),
    ("export, fixed batch", "{}", "static.pt2", {"trust_code": True}),
    ("onnx", "{}", "m.onnx", {}),
    ("torchscript", "{}", "m.ts", {"trust_code": True}),
    ("pickle", "pickle:{}", "whole.pt", {"trust_pickle": True}),
]


@pytest.mark.parametrize(
    ("text", "name", "trust"), [r[1:] for r in ROUND_TRIPS], ids=[r[0] for r in ROUND_TRIPS]
)
def test_every_kind_round_trips_to_the_original_outputs(files, net, batch, text, name, trust):
    path = files[name]
    is_weights = "{}" not in text
    loaded = load_model(
        source(text if is_weights else text.format(path)),
        path if is_weights else None,
        resolve=LOCAL,
        **trust,
    )
    # ONNX too matches to 1e-5: onnx2torch maps Conv/Gemm/MaxPool onto the same torch kernels
    torch.testing.assert_close(outputs(loaded.model, batch), outputs(net, batch), atol=1e-5, rtol=0)
    assert not loaded.model.training
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())
    assert loaded.num_classes == 10
    assert loaded.weights == (file_digest(path) if is_weights else None)
    if loaded.source.kind in ("zoo", "export", "onnx"):
        assert loaded.input_shape == (1, 28, 28)
    assert loaded.supports_hooks == (loaded.source.kind not in ("export", "torchscript"))


def test_every_model_kind_has_a_loader():
    assert set(LOADERS) == set(MODEL_KINDS)


def test_an_export_program_takes_eval_train_and_deepcopy(files, net, batch):
    """``ExportedProgram.module()`` raises on .eval()/.train(); the loaded model does not, and a
    deep copy (how pruned copies are made) keeps working, fixed batch included."""
    loaded = load_model(source(str(files["static.pt2"])), trust_code=True, resolve=LOCAL)
    assert isinstance(loaded.model, TracedModule) and loaded.model.batch == 1
    assert any("fixed batch of 1" in note for note in loaded.notes)
    twin = copy.deepcopy(loaded.model).train().eval()
    torch.testing.assert_close(outputs(twin, batch), outputs(net, batch), atol=1e-5, rtol=0)


def test_export_program_takes_a_weights_file_with_the_original_names(files, batch):
    other = seeded(lenet5, seed=11)
    path = files["w.pt"].parent / "other.pt"
    torch.save(other.state_dict(), path)
    loaded = load_model(source(str(files["dynamic.pt2"])), path, trust_code=True, resolve=LOCAL)
    torch.testing.assert_close(
        outputs(loaded.model, batch), outputs(other, batch), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "optimizer": {}},
        lambda sd: {"model": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # nn.DataParallel
    ],
    ids=["bare", "state_dict key", "model key", "DataParallel prefix"],
)
def test_load_weights_unwraps_common_checkpoint_layouts(tmp_path, net, wrap):
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(net.state_dict()), path)
    state = load_weights(path)
    assert list(state) == list(net.state_dict())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_a_bundled_model_with_other_weights_gets_those_weights():
    init = weights_path("lenet5", "init")
    loaded = load_model(ModelSource("zoo", "lenet5"), init, resolve=LOCAL)
    expected = torch.load(init, map_location="cpu", weights_only=True)
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert loaded.weights == file_digest(init)
    committed = load_model(ModelSource("zoo", "lenet5"), resolve=LOCAL)
    assert committed.weights is None
    assert not torch.equal(committed.model.state_dict()["conv1.weight"], got["conv1.weight"])


def test_a_file_in_the_store_loads_by_reference(tmp_path, files, net, batch):
    store = Store(tmp_path / "store")
    ref = store.put(files["m.onnx"].read_bytes(), ".onnx")
    loaded = load_model(ModelSource.parse(ref), resolve=store.path)
    torch.testing.assert_close(outputs(loaded.model, batch), outputs(net, batch), atol=1e-5, rtol=0)


# --- python files -------------------------------------------------------------------------------

MODEL_PY = """
from pathlib import Path

import torch
from torch import nn

from blocks import ConvBlock  # a sibling file: works like running the file as a script

Path(__file__).with_name("imported.marker").write_text("ran")


class Net(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = ConvBlock()
        self.head = nn.Linear(4 * 4 * 4, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class NeedsArgs(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.head = nn.Linear(3, num_classes)
"""

BLOCKS_PY = """
from torch import nn


class ConvBlock(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
"""


class ReferenceNet(nn.Module):
    """The same architecture as MODEL_PY's Net, written independently (the oracle)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4)
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def write_model_py(folder: Path, text: str = MODEL_PY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "blocks.py").write_text(textwrap.dedent(BLOCKS_PY))
    path = folder / "model.py"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_trusted_python_file_builds_its_class_with_the_given_weights(tmp_path, batch):
    path = write_model_py(tmp_path / "user")
    reference = seeded(ReferenceNet, seed=5)
    weights = tmp_path / "net.safetensors"
    save_file(reference.state_dict(), str(weights))
    path_before, modules_before = list(sys.path), set(sys.modules)

    loaded = load_model(source(f"{path}:Net"), weights, trust_code=True, resolve=LOCAL)

    torch.testing.assert_close(
        outputs(loaded.model, batch), outputs(reference, batch), atol=1e-6, rtol=0
    )
    assert (path.parent / "imported.marker").exists()  # it really was imported
    assert sys.path == path_before  # its folder was on sys.path during the import only
    new = set(sys.modules) - modules_before
    assert "model" not in new and "blocks" not in new  # nothing under a common name
    assert all(name.startswith("_explorer_user_") for name in new)
    assert loaded.num_classes == 10 and loaded.weights == file_digest(weights)


def test_two_python_files_with_the_same_name_do_not_collide(tmp_path):
    first = write_model_py(tmp_path / "a")
    second = write_model_py(tmp_path / "b", MODEL_PY.replace("4 * 4 * 4, num_classes", "64, 7"))
    a = load_model(source(f"{first}:Net"), trust_code=True, resolve=LOCAL)
    b = load_model(source(f"{second}:Net"), trust_code=True, resolve=LOCAL)
    assert (a.num_classes, b.num_classes) == (10, 7)
    assert any("Random initialisation" in note for note in a.notes)


def test_a_python_file_is_not_imported_without_trust(tmp_path):
    path = write_model_py(tmp_path / "user")
    modules_before = set(sys.modules)
    with pytest.raises(LoadError, match=r"runs its code.*--trust-code"):
        load_model(source(f"{path}:Net"), resolve=LOCAL)
    assert not (path.parent / "imported.marker").exists()
    assert set(sys.modules) == modules_before


def test_a_missing_class_lists_the_classes_the_file_defines(tmp_path):
    path = write_model_py(tmp_path / "user")
    with pytest.raises(LoadError, match=r"no class Resnet: it defines Net, NeedsArgs"):
        load_model(source(f"{path}:Resnet"), trust_code=True, resolve=LOCAL)


def test_constructor_arguments_come_from_the_source(tmp_path):
    path = write_model_py(tmp_path / "user")
    with pytest.raises(LoadError, match=r"NeedsArgs\(\) failed.*--model-args"):
        load_model(source(f"{path}:NeedsArgs"), trust_code=True, resolve=LOCAL)
    loaded = load_model(source(f"{path}:NeedsArgs", num_classes=3), trust_code=True, resolve=LOCAL)
    assert loaded.num_classes == 3


def test_a_syntax_error_names_the_line_and_runs_nothing(tmp_path):
    broken = MODEL_PY.replace("class NeedsArgs(nn.Module):", "class NeedsArgs(nn.Module)")
    path = write_model_py(tmp_path / "user", broken)
    line = textwrap.dedent(broken).splitlines().index("class NeedsArgs(nn.Module)") + 1
    with pytest.raises(LoadError, match=rf"model.py line {line}: .*nothing was run"):
        load_model(source(f"{path}:Net"), trust_code=True, resolve=LOCAL)
    assert not (path.parent / "imported.marker").exists()


def test_an_import_error_in_the_file_says_which_module(tmp_path):
    path = write_model_py(tmp_path / "user", "import not_a_real_module_xyz\n" + MODEL_PY)
    with pytest.raises(LoadError, match=r"could not be imported.*not_a_real_module_xyz"):
        load_model(source(f"{path}:Net"), trust_code=True, resolve=LOCAL)


# --- torchvision --------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Any download or connection fails the test; TORCH_HOME is an empty folder to check."""
    import torch.hub
    import torchvision.models._api as tv_api

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download or connect")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_torchvision_reads_the_class_count_from_the_weights(tmp_path, no_network):
    import torchvision

    original = seeded(lambda: torchvision.models.resnet18(num_classes=10), seed=2)
    weights = tmp_path / "resnet18_10.pt"
    torch.save(original.state_dict(), weights)

    loaded = load_model(source("torchvision:resnet18"), weights, resolve=LOCAL)

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(outputs(loaded.model, x), outputs(original, x), atol=1e-5, rtol=0)
    assert loaded.num_classes == 10 and loaded.input_shape == (3, 224, 224)
    assert loaded.preprocessing == {
        "size": (224, 224),
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    assert list(no_network.iterdir()) == []  # nothing cached, nothing downloaded


def test_torchvision_class_count_disagreeing_with_the_arguments_is_refused(tmp_path, no_network):
    import torchvision

    weights = tmp_path / "w.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    with pytest.raises(LoadError, match=r"num_classes=5 but fc.weight .* has 10 rows"):
        load_model(source("torchvision:resnet18", num_classes=5), weights, resolve=LOCAL)


def test_torchvision_without_weights_is_random_and_says_so(no_network):
    loaded = load_model(source("torchvision:squeezenet1_0", num_classes=4), resolve=LOCAL)
    assert outputs(loaded.model, torch.zeros(1, 3, 64, 64)).shape == (1, 4)
    assert any("Random initialisation" in note and "4 classes" in note for note in loaded.notes)
    with pytest.raises(LoadError, match="never downloaded"):
        load_model(source("torchvision:resnet18", weights="DEFAULT"), resolve=LOCAL)


def test_an_unknown_torchvision_architecture_suggests_close_names():
    with pytest.raises(LoadError, match=r"no model 'resnet19'.*resnet18.*list_models"):
        load_model(source("torchvision:resnet19"), resolve=LOCAL)
    with pytest.raises(LoadError, match="not a classification model"):
        load_model(source("torchvision:fasterrcnn_resnet50_fpn"), resolve=LOCAL)


# --- bad files ----------------------------------------------------------------------------------

#: file name -> how the loader is called on a broken copy of it
BROKEN = {
    "w.pt": lambda p: load_model(ModelSource("zoo", "lenet5"), p, resolve=LOCAL),
    "w.safetensors": lambda p: load_model(ModelSource("zoo", "lenet5"), p, resolve=LOCAL),
    "dynamic.pt2": lambda p: load_model(source(str(p)), trust_code=True, resolve=LOCAL),
    "m.onnx": lambda p: load_model(source(str(p)), resolve=LOCAL),
    "m.ts": lambda p: load_model(source(str(p)), trust_code=True, resolve=LOCAL),
    "whole.pt": lambda p: load_model(source(f"pickle:{p}"), trust_pickle=True, resolve=LOCAL),
}


@pytest.mark.parametrize("name", list(BROKEN))
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_file_of_each_format_is_one_clear_line(tmp_path, files, name, damage):
    data = files[name].read_bytes()
    broken = tmp_path / name
    broken.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07not it" * 50)
    with pytest.raises(LoadError) as caught:
        BROKEN[name](broken)
    message = str(caught.value)
    assert name in message and "\n" not in message
    assert "not a valid" in message


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.write_bytes(b"x" * 100), "over the limit"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "does not exist"),
    ],
    ids=["too big", "empty", "directory", "missing"],
)
@pytest.mark.parametrize("role", ["model", "weights"])
def test_files_are_checked_before_they_are_read(tmp_path, make, expected, role):
    path = tmp_path / "m.onnx"
    make(path)
    with pytest.raises(LoadError, match=expected):
        if role == "model":
            load_model(source(str(path)), resolve=LOCAL, max_bytes=50)
        else:
            load_model(ModelSource("zoo", "lenet5"), path, resolve=LOCAL, max_bytes=50)


def test_a_state_dict_that_does_not_fit_names_keys_and_shapes(tmp_path):
    other = lenet5(num_classes=3).state_dict()
    other["extra.weight"] = torch.zeros(2)
    del other["conv1.bias"]
    path = tmp_path / "w.pt"
    torch.save(other, path)
    with pytest.raises(LoadError) as caught:
        load_model(ModelSource("zoo", "lenet5"), path, resolve=LOCAL)
    message = str(caught.value)
    assert "missing conv1.bias" in message and "unexpected extra.weight" in message
    assert (
        "fc3.weight: file 3x84, model 10x84" in message and "fc3.bias: file 3, model 10" in message
    )


def test_apply_weights_lists_at_most_five_keys():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(8)])
    with pytest.raises(LoadError, match=r"missing 0.weight, 0.bias, 1.weight, 1.bias, 2.weight "):
        apply_weights(model, {}, "w.pt")
    with pytest.raises(LoadError, match="and 11 more"):
        apply_weights(model, {}, "w.pt")


def test_nan_weights_name_the_parameter(tmp_path, net):
    state = copy.deepcopy(net.state_dict())
    state["conv2.weight"][0, 0, 0, 0] = float("nan")
    state["fc1.bias"][3] = float("inf")
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(LoadError, match=r"NaN or infinite values in conv2.weight, fc1.bias"):
        load_model(ModelSource("zoo", "lenet5"), path, resolve=LOCAL)


def test_a_model_file_with_nan_parameters_is_refused(tmp_path, net):
    broken = copy.deepcopy(net)
    with torch.no_grad():
        broken.fc3.weight[0, 0] = float("nan")
    path = tmp_path / "nan.ts"
    torch.jit.save(torch.jit.script(broken), str(path))
    with pytest.raises(LoadError, match=r"NaN or infinite values in fc3.weight"):
        load_model(source(str(path)), trust_code=True, resolve=LOCAL)


def test_a_model_with_nothing_to_prune_is_refused(tmp_path):
    path = tmp_path / "relu.pt"
    torch.save(nn.ReLU(), path)
    with pytest.raises(LoadError, match="no parameters or buffers"):
        load_model(source(f"pickle:{path}"), trust_pickle=True, resolve=LOCAL)


def test_an_unknown_weights_suffix_is_refused(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(b"PK not really")
    with pytest.raises(LoadError, match=r"w.npz: expected a state_dict saved as .*safetensors"):
        load_weights(path)


# --- trust gates and code that must never run ---------------------------------------------------


def test_a_pickled_module_needs_trust_pickle(files, tmp_path):
    marker = tmp_path / "unpickled.marker"
    path = tmp_path / "evil.pt"
    torch.save(_pickle_payload_class(marker)(), path)
    for model_file in (files["whole.pt"], path):
        trust = r"only for files you trust: run with --trust-pickle.*--weights"
        with pytest.raises(LoadError, match=trust):
            load_model(source(f"pickle:{model_file}"), resolve=LOCAL)
    assert not marker.exists()


def test_a_pickled_module_given_as_weights_is_explained(files):
    with pytest.raises(LoadError, match=r"holds a pickled model.*not a state_dict.*state_dict\(\)"):
        load_weights(files["whole.pt"])


@pytest.mark.parametrize("layout", ["torch.save", "plain pickle"])
def test_a_weights_file_with_a_code_payload_is_refused_and_nothing_runs(tmp_path, layout):
    marker = tmp_path / "payload.marker"
    payload = {"fc.weight": torch.zeros(2, 2), "x": _pickle_payload_class(marker)()}
    path = tmp_path / "w.pt"
    if layout == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(LoadError):
        load_weights(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["dynamic.pt2", "m.ts"])
def test_export_and_torchscript_need_trust_code(files, name):
    with pytest.raises(LoadError, match="--trust-code"):
        load_model(source(str(files[name])), resolve=LOCAL)
    assert load_model(source(str(files[name])), resolve=LOCAL, trust_code=True).num_classes == 10


def evil_pt2(valid: Path, target: Path, marker: Path) -> None:
    """A copy of ``valid`` whose first tensor size is a shape expression that creates
    ``marker``: torch.export.load hands it to sympy.sympify, which evaluates it."""
    with zipfile.ZipFile(valid) as archive:
        entries = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    name = next(n for n in entries if n.endswith("models/model.json"))
    program = json.loads(entries[name])
    sizes = next(iter(program["graph_module"]["graph"]["tensor_values"].values()))["sizes"]
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    sizes[0] = {"as_expr": {"expr_str": code, "hint": {"as_int": sizes[0].get("as_int", 1)}}}
    entries[name] = json.dumps(program).encode()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)


def test_a_crafted_pt2_runs_nothing_without_trust(files, tmp_path):
    """torch.export.load is not safe on untrusted files (see explorer/loading/models.py): this
    one would create the marker on load. Without trust_code it is never opened."""
    marker = tmp_path / "sympify.marker"
    path = tmp_path / "evil.pt2"
    evil_pt2(files["dynamic.pt2"], path, marker)
    with pytest.raises(LoadError, match=r"can run code stored in the file.*--trust-code"):
        load_model(source(str(path)), resolve=LOCAL)
    assert not marker.exists()


# --- ONNX ---------------------------------------------------------------------------------------


def onnx_model(nodes, inputs, outputs_, initializers=(), opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs_, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def onnx_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model run by onnxruntime: the oracle for converted graphs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def flatten_gemm(opset: int, batch: int | str, allowzero: bool) -> onnx.ModelProto:
    """x (batch, 1, 4, 4) -> Reshape to (batch or -1, 16) -> Gemm with 3 outputs."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((3, 16)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")
    target = [batch if isinstance(batch, int) else -1, 16]
    shape = numpy_helper.from_array(np.array(target, dtype=np.int64), "shape")
    reshape_attrs = {"allowzero": 1} if allowzero else {}
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flatten", **reshape_attrs),
        helper.make_node("Gemm", ["flat", "W", "B"], ["y"], name="head.fc", transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    return onnx_model(nodes, [x], [y], [weight, bias, shape], opset)


def test_a_new_opset_onnx_file_is_lowered_for_onnx2torch(tmp_path):
    """What torch's dynamo exporter writes (opset 20, Reshape allowzero=1) still converts."""
    model = flatten_gemm(20, "N", allowzero=True)
    path = tmp_path / "new.onnx"
    onnx.save(model, str(path))
    loaded = load_model(source(str(path)), resolve=LOCAL)
    x = np.random.default_rng(1).standard_normal((5, 1, 4, 4)).astype(np.float32)
    expected = torch.from_numpy(onnx_reference(model, x))
    torch.testing.assert_close(outputs(loaded.model, torch.from_numpy(x)), expected)
    assert any("opset 20 to 17" in note for note in loaded.notes)
    assert loaded.input_shape == (1, 4, 4) and loaded.num_classes == 3


def test_an_onnx_graph_with_a_fixed_batch_takes_any_batch(tmp_path):
    model = flatten_gemm(13, 2, allowzero=False)  # Reshape to (2, 16): the batch is baked in
    path = tmp_path / "fixed.onnx"
    onnx.save(model, str(path))
    loaded = load_model(source(str(path)), resolve=LOCAL)
    x = np.random.default_rng(2).standard_normal((5, 1, 4, 4)).astype(np.float32)
    padded = np.concatenate([x, x[-1:]])  # the oracle runs pairs, as the graph demands
    expected = np.concatenate([onnx_reference(model, padded[i : i + 2]) for i in (0, 2, 4)])[:5]
    torch.testing.assert_close(
        outputs(loaded.model, torch.from_numpy(x)), torch.from_numpy(expected)
    )
    assert isinstance(loaded.model, TracedModule) and loaded.model.batch == 2


def test_an_unsupported_onnx_operator_is_named(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    model = onnx_model([helper.make_node("Gelu", ["x"], ["y"])], [x], [y], opset=20)
    path = tmp_path / "gelu.onnx"
    onnx.save(model, str(path))
    with pytest.raises(
        LoadError, match=r"gelu.onnx uses operators onnx2torch cannot convert: Gelu"
    ):
        load_model(source(str(path)), resolve=LOCAL)


def test_an_onnx_node_name_cannot_inject_code(tmp_path):
    """onnx2torch writes node names into fx's generated source; the loader renames them."""
    marker = tmp_path / "injected_marker"
    assert "." not in str(marker)  # onnx2torch turns dots into slashes; the payload has none
    touch = f'getattr(getattr(__import__("pathlib"), "Path")("{marker}"), "touch")()'
    name = f'a") if {touch} else getattr(self, "b'
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["y"], name=name),
    ]
    path = tmp_path / "names.onnx"
    onnx.save(onnx_model(nodes, [x], [y], [weight]), str(path))
    loaded = load_model(source(str(path)), resolve=LOCAL)
    data = torch.tensor([[-1.0, 2.0, -3.0]])
    torch.testing.assert_close(outputs(loaded.model, data), torch.relu(data))
    assert not marker.exists()


def test_onnx_external_data_is_read_only_from_next_to_the_model(tmp_path, files, net, batch):
    model = onnx.load(str(files["m.onnx"]))
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    loaded = load_model(source(str(path)), resolve=LOCAL)
    torch.testing.assert_close(outputs(loaded.model, batch), outputs(net, batch), atol=1e-5, rtol=0)

    (tmp_path / "ext.data").unlink()
    with pytest.raises(LoadError, match=r"separate file 'ext\.data' that is not next to it"):
        load_model(source(str(path)), resolve=LOCAL)

    outside = onnx.load(str(files["m.onnx"]))
    sneaky = tmp_path / "inner" / "sneaky.onnx"
    sneaky.parent.mkdir()
    onnx.save(outside, str(sneaky), save_as_external_data=True, location="x.data", size_threshold=0)
    rewritten = onnx.load(str(sneaky), load_external_data=False)
    for tensor in rewritten.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../x.data"
    (tmp_path / "x.data").write_bytes((sneaky.parent / "x.data").read_bytes())
    onnx.save(rewritten, str(sneaky))
    with pytest.raises(LoadError, match=r"'\.\./x\.data' that is not next to it"):
        load_model(source(str(sneaky)), resolve=LOCAL)


# --- fuzz ---------------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FUZZED = ["w.pt", "w.safetensors", "dynamic.pt2", "m.onnx", "m.ts"]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("name", FUZZED)
@FUZZ
@given(data=st.data())
def test_fuzz_any_damaged_file_is_a_load_error(files, fuzz_dir, name, data):
    """Random bytes, or a prefix of a valid file: always a LoadError, never another exception."""
    valid = files[name].read_bytes()
    if data.draw(st.booleans(), label="random"):
        blob = data.draw(st.binary(min_size=0, max_size=4096), label="bytes")
    else:
        blob = valid[: data.draw(st.integers(0, len(valid) - 1), label="cut")]
    path = fuzz_dir / name
    path.write_bytes(blob)
    with pytest.raises(LoadError):
        BROKEN[name](path)


@FUZZ
@given(
    keys=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3, unique=True),
    position=st.integers(0, 2),
)
def test_fuzz_a_code_payload_anywhere_in_a_weights_file_never_runs(fuzz_dir, keys, position):
    marker = fuzz_dir / "payload.marker"
    marker.unlink(missing_ok=True)
    state: dict = {key: torch.zeros(1) for key in keys}
    state[f"payload{position}"] = _pickle_payload_class(marker)()
    path = fuzz_dir / "payload.pt"
    torch.save({"state_dict": state} if position == 1 else state, path)
    with pytest.raises(LoadError, match="pickled model or other Python objects"):
        load_weights(path)
    assert not marker.exists()


TINY_VIT = textwrap.dedent(
    """
    from torchvision.models import VisionTransformer

    class TinyViT(VisionTransformer):
        def __init__(self, num_classes=3):
            super().__init__(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                             hidden_dim=64, mlp_dim=128, num_classes=num_classes)
    """
)


def test_multihead_attention_is_unpacked_so_weight_pruning_reaches_q_k_v(tmp_path):
    """torchvision's ViT keeps q, k, v in nn.MultiheadAttention's packed in_proj_weight, which
    no module call reads: the loader swaps in an equal module whose projections are Linears."""
    from explorer.engine.inspection import prunable_layers
    from explorer.engine.plan import PruningPlan
    from explorer.engine.pruning import Pruner
    from explorer.engine.structure import source_names

    (tmp_path / "tiny_vit.py").write_text(TINY_VIT)
    sys.path.insert(0, str(tmp_path))
    try:
        from tiny_vit import TinyViT
    finally:
        sys.path.remove(str(tmp_path))
    original = seeded(TinyViT)
    torch.save(original.state_dict(), tmp_path / "vit.pt")
    source = ModelSource.parse(f"{tmp_path / 'tiny_vit.py'}:TinyViT")
    loaded = load_model(source, tmp_path / "vit.pt", trust_code=True)
    assert any("nn.MultiheadAttention" in note for note in loaded.notes)
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():  # the oracle: the user's own module on the same input
        assert torch.allclose(loaded.model(x), original(x), atol=1e-5)
    attention = "encoder.layers.encoder_layer_0.self_attention"
    names = [layer.name for layer in prunable_layers(loaded.model, (3, 32, 32))]
    assert f"{attention}.in_proj" in names and f"{attention}.out_proj" in names
    renamed = source_names(loaded.model)
    assert renamed[f"{attention}.in_proj.weight"] == f"{attention}.in_proj_weight"
    assert set(renamed.values()) <= set(original.state_dict())
    # pruning the packed projection: the masked model equals q, k, v zeroed by hand
    pruner = Pruner(loaded.model, (3, 32, 32))
    state = pruner.resolve(
        PruningPlan(scope="layer", unit_amounts=((f"{attention}.in_proj", 0.5),))
    )
    mask = state.masks[f"{attention}.in_proj.weight"]
    assert 0.49 < 1 - mask.mean() < 0.51
    by_hand = copy.deepcopy(original)
    with torch.no_grad():
        by_hand.get_submodule(attention).in_proj_weight.mul_(mask)
    with torch.inference_mode():
        assert torch.allclose(pruner.pruned_model(state)(x), by_hand(x), atol=1e-5)


def test_pruned_weights_of_an_unpacked_attention_load_into_the_users_class(tmp_path):
    from explorer.engine.plan import PruningPlan
    from explorer.engine.pruning import Pruner
    from explorer.keep.export import masked_state_dict

    (tmp_path / "tiny_vit2.py").write_text(TINY_VIT)
    source = ModelSource.parse(f"{tmp_path / 'tiny_vit2.py'}:TinyViT")
    loaded = load_model(source, trust_code=True)
    pruner = Pruner(loaded.model, (3, 32, 32))
    plan = PruningPlan(amount=0.6)
    sys.path.insert(0, str(tmp_path))
    try:
        from tiny_vit2 import TinyViT
    finally:
        sys.path.remove(str(tmp_path))
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        expected = pruner.pruned_model(plan)(x)
    users = TinyViT().eval()
    users.load_state_dict(masked_state_dict(pruner, plan, "zeros"))  # strict: every name fits
    with torch.inference_mode():
        assert torch.allclose(users(x), expected, atol=1e-5)
    pairs = masked_state_dict(pruner, plan, "torch_prune")
    attention = "encoder.layers.encoder_layer_0.self_attention"
    assert (
        f"{attention}.in_proj_weight_orig" in pairs and f"{attention}.in_proj_weight_mask" in pairs
    )
    assert not any(".in_proj." in key for key in pairs)
