"""An exported file says what it expects and returns (preprocessing, classes, output kind),
inside the file where the format has room and in the JSON beside it; its default name says
model, plan and format."""

from __future__ import annotations

import json

import onnxruntime
import pytest

from explorer.engine.plan import PruningPlan
from explorer.engine.subject import Subject
from explorer.engine.workbench import open_workbench
from explorer.keep.export import (
    PREPROCESSING_KEY,
    ExportError,
    export,
    export_file_name,
    model_stem,
    plan_tag,
    read_preprocessing,
)
from tests.unit.test_cli import run


@pytest.fixture(scope="module")
def bench():
    return open_workbench("lenet5")


@pytest.mark.parametrize("fmt", ["onnx", "pt2", "torchscript"])
def test_the_file_and_its_sidecar_carry_the_datasets_preprocessing(bench, tmp_path, fmt):
    plan = PruningPlan(method="filters", amount=0.5)
    path = tmp_path / export_file_name("lenet5", plan, fmt)
    result = export(bench, plan, fmt, path)
    data = bench.eval_set
    info = result.preprocessing
    channels = data.input_shape[0]
    # the oracle: the dataset the explorer measured the model on
    assert info["input"]["shape"] == ["batch", *data.input_shape]
    means = data.mean if isinstance(data.mean, tuple | list) else (data.mean,) * channels
    assert info["input"]["mean"] == pytest.approx([float(m) for m in means])
    assert "minus mean, divided by std, per channel" in info["input"]["steps"]
    assert info["classes"] == list(data.classes)
    assert info["output"]["kind"] == "logits" and info["output"]["shape"] == ["batch", 10]
    assert json.loads((tmp_path / (path.name + ".json")).read_text()) == info
    assert result.sidecar.endswith(".json") and result.sidecar not in result.files
    assert info["summary"] in result.note
    # inside the file itself: the sidecar removed, it is still read back
    (tmp_path / (path.name + ".json")).unlink()
    assert read_preprocessing(path) == info


def test_onnxruntime_reads_the_preprocessing_from_the_model_metadata(bench, tmp_path):
    path = tmp_path / "m.onnx"
    export(bench, PruningPlan(amount=0.3), "onnx", path)
    meta = onnxruntime.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    assert json.loads(meta[PREPROCESSING_KEY])["input"]["channels"] == 1


def test_a_plan_file_has_no_preprocessing_and_a_bare_file_says_so(bench, tmp_path):
    result = export(bench, PruningPlan(amount=0.3), "plan", tmp_path / "p.json")
    assert result.preprocessing is None and result.sidecar == ""
    bare = tmp_path / "other.onnx"
    bare.write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="carries no preprocessing"):
        read_preprocessing(bare)


def test_file_names_say_model_plan_and_format():
    assert plan_tag(PruningPlan(method="filters", amount=0.3)) == "filters30"
    assert plan_tag(PruningPlan(amount=0.125)) == "unstructured12.5"
    assert plan_tag(PruningPlan(method="nm", amount=1.0)) == "nm2of4"
    assert plan_tag(PruningPlan(amount=0.5, criterion="random")) == "unstructured50-random"
    plan = PruningPlan(method="filters", amount=0.3)
    assert export_file_name("resnet18", plan, "onnx") == "resnet18_filters30.onnx"
    assert export_file_name("lenet5", plan, "tp-ratios") == "lenet5_filters30_tp_ratios.json"
    assert model_stem(Subject.bundled("lenet5")) == "lenet5"
    assert model_stem(None) == "model"


def test_the_cli_export_writes_the_default_name_in_the_current_folder(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = ["export", "lenet5", "--method", "filters", "--amount", "0.3", "--format", "onnx"]
    code, out, err = run(capsys, *argv, "--no-latency")
    assert code == 0, err
    assert (tmp_path / "lenet5_filters30.onnx").is_file()
    assert "wrote the preprocessing it expects: " in out
    assert (tmp_path / "lenet5_filters30.onnx.json").is_file()
