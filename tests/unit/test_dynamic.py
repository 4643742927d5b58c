"""Dynamic pruning against oracles: the dense model at keep 1, a tiny MLP gated by hand, the
kept counts by hand; and the side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explorer.dynamic import dynamic_curve, dynamic_predict, gate_points, kept_units
from explorer.paths import path_layers
from explorer.plots.dynamic import class_usage_figure, dynamic_curve_figure
from explorer.workbench import open_workbench
from tests.unit.conftest import assert_unchanged, require_trained, snapshot
from tests.unit.test_saliency import hooks_of


@pytest.fixture(scope="module")
def benches():
    for name in ("lenet300", "resnet_mini"):
        require_trained(name)
    return {name: open_workbench(name, torch.device("cpu")) for name in ("lenet300", "resnet_mini")}


def test_keep_one_is_the_dense_model(benches):
    for bench in benches.values():
        images, labels = bench.eval_set.images[:300], bench.eval_set.labels[:300]
        layers = path_layers(bench.pruner.structure)
        points = gate_points(bench.model, layers, bench.eval_set.input_shape)
        result = dynamic_predict(bench.model, images, labels, 1.0, layers, 10, points=points)
        with torch.no_grad():
            expected = bench.model(images).argmax(1)
        assert torch.equal(result.predictions, expected)
        assert result.units_computed == 1.0
        present = np.bincount(labels.numpy(), minlength=10) > 0
        for usage in result.usage.values():
            assert (usage[present] == 1).all()


def test_a_tiny_mlp_gated_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.randn(5, 1, 2, 2)
    flat = nn.Sequential(nn.Flatten(), model).eval()
    result = dynamic_predict(flat, x, torch.zeros(5, dtype=torch.long), 0.5, ["1.0"], 3)
    # by hand: hidden pre-activations, keep each input's 3 largest (positive part), rest 0
    with torch.no_grad():
        hidden = model[0](x.flatten(1))
        keep = torch.zeros_like(hidden, dtype=torch.bool)
        keep.scatter_(1, hidden.clamp(min=0).topk(3, dim=1).indices, True)
        expected = model[2](torch.relu(hidden * keep)).argmax(1)
    assert torch.equal(result.predictions, expected)
    assert result.kept == {"1.0": 3}
    np.testing.assert_allclose(result.usage["1.0"][0], keep.double().mean(0).numpy())


def test_kept_counts_by_hand(benches):
    assert kept_units(0.1, 300) == 30 and kept_units(0.1, 100) == 10
    assert kept_units(0.01, 6) == 1  # at least one
    with pytest.raises(ValueError, match="keep"):
        kept_units(0.0, 10)
    bench = benches["lenet300"]
    result = dynamic_predict(
        bench.model,
        bench.eval_set.images[:50],
        bench.eval_set.labels[:50],
        0.1,
        ["fc1", "fc2"],
        10,
    )
    assert result.kept == {"fc1": 30, "fc2": 10}
    assert result.units_computed == pytest.approx(40 / 400)
    for usage in result.usage.values():
        assert ((usage >= 0) & (usage <= 1)).all()


def test_a_conv_with_batchnorm_is_gated_after_it_and_nothing_is_left_behind(benches):
    bench = benches["resnet_mini"]
    layers = path_layers(bench.pruner.structure)
    points = gate_points(bench.model, layers, bench.eval_set.input_shape)
    modules = dict(bench.model.named_modules())
    assert any(isinstance(modules[p], nn.BatchNorm2d) for p in points.values())
    before = snapshot(bench.model)
    curve = dynamic_curve(
        bench.model,
        bench.eval_set.images[:64],
        bench.eval_set.labels[:64],
        [1.0, 0.5],
        layers,
        10,
        points=points,
    )
    assert [p.keep for p in curve] == [1.0, 0.5]
    assert_unchanged(bench.model, before)
    assert hooks_of(bench.model) == []
    dynamic_curve_figure(curve, curve[0].accuracy, 0.5)  # draws
    class_usage_figure(np.full((10, 4), 0.5), [str(c) for c in range(10)], "x")
