"""`pruning-explorer export`: one file per format, what it holds, and one-line mistakes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from explorer.cli import main as cli
from explorer.engine.compaction import compact
from explorer.engine.plan import PruningPlan
from explorer.engine.workbench import open_workbench
from explorer.keep.export import OnnxRunner
from tests.unit.test_cli import error_line, run


def test_an_onnx_export_of_a_structured_plan_holds_the_compacted_model(capsys, tmp_path):
    out = tmp_path / "small.onnx"
    argv = ["export", "lenet5", "--method", "filters", "--amount", "0.5", "--format", "onnx"]
    code, text, _ = run(capsys, *argv, "--out", str(out), "--repeats", "3", "--json")
    assert code == 0
    result = json.loads(text)
    assert result["compacted"] and not result["masked"] and result["bytes"] == out.stat().st_size
    assert result["latency"]["form"] == "compacted" and result["latency"]["ms"] > 0
    # the oracle: the compacted model the library builds for the same plan
    bench = open_workbench("lenet5")
    small = compact(bench.pruner, PruningPlan(method="filters", amount=0.5))
    assert result["params_total"] == sum(p.numel() for p in small.parameters())
    x = torch.randn(3, *bench.eval_set.input_shape)
    with torch.inference_mode():
        expected = small(x)
    assert np.allclose(OnnxRunner(out)(x).numpy(), expected.numpy(), atol=1e-4)


def test_an_unstructured_pt2_says_it_is_the_masked_model_and_not_faster(capsys, tmp_path):
    out = tmp_path / "masked.pt2"
    argv = ["export", "lenet5", "--amount", "0.5", "--format", "pt2", "--out", str(out)]
    code, text, _ = run(capsys, *argv, "--repeats", "3")
    assert code == 0
    assert "holds: the masked model" in text and "zeros are not faster" in text
    assert "same speed (same kernels)" in text  # a masked model runs the dense kernels
    assert out.exists()


def test_a_format_the_plan_cannot_take_is_one_line_before_any_model_loads(
    capsys, tmp_path, monkeypatch
):
    def must_not_load(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "open_subject", must_not_load)
    argv = ["export", "lenet5", "--amount", "0.5", "--format", "tp-ratios"]
    line = error_line(*run(capsys, *argv, "--out", str(tmp_path / "r.json")))
    assert line.startswith("error: --format tp-ratios:") and "fractions of channels" in line
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "nope", "--out", "x"], "invalid choice: 'nope'"),
        (["--format", "plan", "--out", "/no/such/dir/p.json"], "directory /no/such/dir"),
        (["--format", "zeros", "--out", ""], "--out needs a file name"),
    ],
)
def test_export_mistakes_are_one_line(capsys, extra, message):
    line = error_line(*run(capsys, "export", "lenet5", *extra))
    assert message in line


def test_the_int8_format_writes_a_program_that_computes_the_quantized_pruned_model(
    capsys, tmp_path
):
    from explorer.keep.quantize import pruned_fp32, quantize_int8

    out = tmp_path / "small_int8.pt2"
    argv = ["export", "lenet5", "--method", "filters", "--amount", "0.4", "--format", "int8"]
    code, text, _ = run(capsys, *argv, "--out", str(out), "--no-latency", "--json")
    assert code == 0
    result = json.loads(text)
    assert (
        result["format"] == "int8" and result["compacted"] and "layers left fp32" in result["note"]
    )
    # the oracle: the library's int8 variant of the same compacted model
    bench = open_workbench("lenet5")
    fp32, form = pruned_fp32(bench, PruningPlan(method="filters", amount=0.4))
    assert form == "compacted"
    expected_model = quantize_int8(fp32).model
    x = torch.randn(4, *bench.eval_set.input_shape)
    with torch.inference_mode():
        expected = expected_model(x)
        got = torch.export.load(out).module()(x)
    assert torch.allclose(got, expected, atol=1e-5)
