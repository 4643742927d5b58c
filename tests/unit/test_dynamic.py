"""Dynamic pruning against oracles: the dense model at keep 1, tiny models gated by hand, kept
counts and FLOPs by hand; and the side effects (no hook left, the model untouched)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from explorer.inside.decision_paths import path_layers
from explorer.inside.dynamic import (
    HONEST_NOTE,
    default_layers,
    dynamic_curve,
    dynamic_predict,
    gate_points,
    kept_units,
    static_dense_layers,
    static_plan,
    static_point,
)
from explorer.plots.dynamic import class_usage_figure, dynamic_curve_figure
from explorer.plots.prune import CurveSeries
from tests.unit.conftest import (
    BUNDLED,
    assert_unchanged,
    hooks_of,
    randomize_batchnorm,
    snapshot,
)

MODELS = BUNDLED


def _dense_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# --- the dense model is the oracle at keep = 1 --------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_keep_one_is_the_dense_model_exactly(benches, name):
    bench = benches[name]
    images, labels = bench.eval_set.images[:200], bench.eval_set.labels[:200]
    before = snapshot(bench.model)
    result = dynamic_predict(bench.model, images, labels, 1.0)
    dense = _dense_logits(bench.model, images)
    assert torch.equal(result.logits, dense)
    assert torch.equal(result.predictions, dense.argmax(1))
    assert result.accuracy == float((dense.argmax(1) == labels).double().mean())
    assert list(result.kept) == path_layers(bench.pruner.structure)  # all but the classifier
    assert result.units_computed == 1.0 and result.flops_computed == 1.0
    present = np.bincount(labels.numpy(), minlength=10) > 0
    for usage in result.usage.values():  # every unit used by every input: usage 1
        assert usage.shape[0] == 10 and (usage[present] == 1).all() and (usage[~present] == 0).all()
    assert_unchanged(bench.model, before)
    assert hooks_of(bench.model) == []
    assert not bench.model.training


def test_the_curve_starts_at_the_dense_accuracy(benches):
    bench = benches["lenet5"]
    images, labels = bench.eval_set.images[:300], bench.eval_set.labels[:300]
    curve = dynamic_curve(bench.model, images, labels, [1.0, 0.5, 0.1])
    dense = float((_dense_logits(bench.model, images).argmax(1) == labels).double().mean())
    assert [p.keep for p in curve] == [1.0, 0.5, 0.1]
    assert curve[0].accuracy == dense
    assert curve[0].units_computed > curve[1].units_computed > curve[2].units_computed
    assert curve[0].flops_computed > curve[1].flops_computed > curve[2].flops_computed
    assert curve[2].accuracy < dense  # keeping 10% of the units costs something


# --- tiny models gated by hand ------------------------------------------------------------------


def _hand_mlp(first: list[list[float]], bias: list[float], second: list[list[float]]) -> nn.Module:
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(len(first[0]), len(first)),
        nn.ReLU(),
        nn.Linear(len(first), len(second)),
    )
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(first))
        model[1].bias.copy_(torch.tensor(bias))
        model[3].weight.copy_(torch.tensor(second))
        model[3].bias.zero_()
    return model.eval()


def test_a_hand_built_mlp_gives_the_hand_computed_logits():
    # hidden = x (identity), keep 0.5 of 4 -> the 2 largest hidden values per input
    model = _hand_mlp(torch.eye(4).tolist(), [0.0] * 4, [[1, 0, 0, 3], [0, 0, 2, 0]])
    x = torch.tensor([[3.0, -1.0, 2.0, 1.0], [-1.0, -2.0, -3.0, -4.0]]).reshape(2, 1, 2, 2)
    result = dynamic_predict(model, x, torch.tensor([0, 1]), 0.5)
    # input 0: keep units 0, 2 -> relu [3, 0, 2, 0] -> logits [3, 4] (dense: [6, 4])
    # input 1: keep units 0, 1 (the least negative) -> relu [0, 0, 0, 0] -> logits [0, 0]
    assert result.logits.tolist() == [[3.0, 4.0], [0.0, 0.0]]
    assert _dense_logits(model, x)[0].tolist() == [6.0, 4.0]
    assert result.predictions.tolist() == [1, 0] and result.accuracy == 0.0
    assert result.kept == {"1": 2} and result.units == {"1": 4}
    assert result.usage["1"].tolist() == [[1, 0, 1, 0], [1, 1, 0, 0]]


def test_a_random_mlp_matches_the_gate_written_out():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = torch.randn(64, 1, 2, 4)
    result = dynamic_predict(model, x, torch.zeros(64, dtype=torch.long), 0.25, batch_size=16)
    with torch.no_grad():  # by hand: each input's 3 largest hidden outputs, the rest 0
        hidden = model[1](x.flatten(1))
        keep = torch.zeros_like(hidden, dtype=torch.bool)
        keep.scatter_(1, hidden.topk(3, dim=1).indices, True)
        expected = model[3](torch.relu(hidden * keep))
    torch.testing.assert_close(result.logits, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.usage["1"][0], keep.double().mean(0).numpy())


def test_a_conv_is_gated_after_its_batchnorm_by_its_mean_positive_output():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 4),
    )
    model = randomize_batchnorm(model, seed=1).eval()
    x = torch.randn(32, 1, 5, 5)
    assert gate_points(model, ["0"], (1, 5, 5)) == {"0": "1"}
    result = dynamic_predict(model, x, torch.arange(32) % 4, 0.5)
    with torch.no_grad():
        normed = model[1](model[0](x))
        score = normed.clamp(min=0).mean((2, 3))
        keep = torch.zeros_like(score, dtype=torch.bool)
        keep.scatter_(1, score.topk(3, dim=1).indices, True)
        expected = model[4](torch.relu(normed * keep[:, :, None, None]).flatten(1))
    torch.testing.assert_close(result.logits, expected, rtol=0, atol=1e-5)
    assert result.kept == {"0": 3}


class _Tokens(nn.Module):
    """(N, 1, 2, 3) images as 2 tokens of 3 features -> Linear -> ReLU -> mean -> classes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x.reshape(len(x), 2, 3))).mean(1))


def test_a_token_layer_keeps_the_same_features_for_every_token_of_an_input():
    torch.manual_seed(2)
    model = _Tokens().eval()
    x = torch.randn(40, 1, 2, 3)
    result = dynamic_predict(model, x, torch.zeros(40, dtype=torch.long), 0.25)
    assert result.kept == {"fc": 2}
    with torch.no_grad():
        hidden = model.fc(x.reshape(40, 2, 3))  # (N, T, F): rank by the mean over the tokens
        score = hidden.clamp(min=0).mean(1)
        top = score.topk(2, dim=1).indices  # a tie at 0 would be silent after the ReLU anyway
        keep = torch.zeros_like(score, dtype=torch.bool).scatter_(1, top, True)
        expected = model.head(torch.relu(hidden * keep[:, None, :]).mean(1))
    torch.testing.assert_close(result.logits, expected, rtol=0, atol=1e-6)


def test_a_unit_every_input_needs_has_usage_one():
    # unit 2's bias of 100 puts it first for every input; keep 0.25 of 4 = 1 unit
    first = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    model = _hand_mlp(first, [0.0, 0.0, 100.0, 0.0], [[1, 1, 1, 1], [1, -1, 0, 0]])
    torch.manual_seed(3)
    x = torch.randn(30, 1, 1, 2)
    labels = torch.arange(30) % 3
    result = dynamic_predict(model, x, labels, 0.25, classes=3)
    assert result.usage["1"].tolist() == [[0, 0, 1, 0]] * 3


# --- counts by hand -----------------------------------------------------------------------------


def test_kept_counts_round_half_up_and_keep_at_least_one():
    assert kept_units(0.1, 300) == 30 and kept_units(0.1, 100) == 10
    assert kept_units(0.25, 10) == 3 and kept_units(0.35, 10) == 4  # half up (0.35 * 10 = 3.5)
    assert kept_units(0.01, 6) == 1 and kept_units(1e-9, 1) == 1
    assert kept_units(1.0, 7) == 7
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="keep"):
            kept_units(bad, 10)


def test_lenet300_at_keep_one_tenth_computes_what_the_hand_count_says(benches):
    bench = benches["lenet300"]
    images, labels = bench.eval_set.images[:100], bench.eval_set.labels[:100]
    result = dynamic_predict(bench.model, images, labels, 0.1)
    assert result.kept == {"fc1": 30, "fc2": 10} and result.units == {"fc1": 300, "fc2": 100}
    assert result.fractions == {"fc1": 0.1, "fc2": 0.1}
    assert result.units_computed == pytest.approx(40 / 400)
    # FLOPs: fc1 2*784*300, fc2 2*300*100, fc3 2*100*10; fc1 and fc2 at a tenth
    assert result.flops_computed == pytest.approx((47040 + 6000 + 2000) / 532400)
    present = np.bincount(labels.numpy(), minlength=10) > 0
    for name, usage in result.usage.items():
        assert ((usage >= 0) & (usage <= 1)).all()
        # each input keeps exactly k units, so a class's row sums to k
        np.testing.assert_allclose(usage[present].sum(1), result.kept[name])


def test_a_tiny_keep_still_keeps_one_unit_per_layer(benches):
    bench = benches["lenet5"]
    images, labels = bench.eval_set.images[:100], bench.eval_set.labels[:100]
    result = dynamic_predict(bench.model, images, labels, 0.001)
    assert result.kept == {"conv1": 1, "conv2": 1, "fc1": 1, "fc2": 1}
    present = np.bincount(labels.numpy(), minlength=10) > 0
    for usage in result.usage.values():
        np.testing.assert_allclose(usage[present].sum(1), 1.0)


# --- real models: residual + BatchNorm, tokens; side effects ------------------------------------


def test_resnet_and_vit_are_gated_and_left_untouched(benches):
    for name in ("resnet_mini", "vit_tiny"):
        bench = benches[name]
        images, labels = bench.eval_set.images[:64], bench.eval_set.labels[:64]
        layers = default_layers(bench.model, bench.eval_set.input_shape)
        points = gate_points(bench.model, layers, bench.eval_set.input_shape)
        modules = dict(bench.model.named_modules())
        batchnorm = [p for p in points.values() if isinstance(modules[p], nn.BatchNorm2d)]
        assert bool(batchnorm) == (name == "resnet_mini")
        before = snapshot(bench.model)
        result = dynamic_predict(bench.model, images, labels, 0.5)
        assert result.kept == {n: kept_units(0.5, u) for n, u in result.units.items()}
        assert 0 < result.flops_computed < 1 and bool(torch.isfinite(result.logits).all())
        assert_unchanged(bench.model, before)
        assert hooks_of(bench.model) == []
        assert not bench.model.training


def test_an_error_inside_the_run_leaves_no_hook():
    model = _Tokens().eval()
    model.spare = nn.Linear(3, 3)  # never called by forward
    x, labels = torch.randn(4, 1, 2, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown layer"):
        dynamic_predict(model, x, labels, 0.5, ["nope"])
    with pytest.raises(ValueError, match="unknown gate point"):
        dynamic_predict(model, x, labels, 0.5, ["fc"], points={"fc": "nope"})
    with pytest.raises(ValueError, match="never calls"):  # raised after the gates ran
        dynamic_predict(model, x, labels, 0.5, ["fc", "spare"])
    assert hooks_of(model) == []


# --- figures and the note -----------------------------------------------------------------------


def test_the_figures_draw_what_they_are_given(benches):
    bench = benches["lenet300"]
    images, labels = bench.eval_set.images[:100], bench.eval_set.labels[:100]
    curve = dynamic_curve(bench.model, images, labels, [0.1, 1.0])
    static = [CurveSeries("filters", [0.0, 0.5], [curve[1].accuracy, 0.5])]
    fig = dynamic_curve_figure(curve, curve[1].accuracy, 0.1, static=static)
    by_name = {trace.name: trace for trace in fig.data}
    assert list(by_name["top-k per input"].x) == pytest.approx([10.0, 100.0])
    assert list(by_name["static: filters"].x) == [50.0, 100.0]
    assert list(by_name["this setting"].y) == [curve[0].accuracy * 100]
    usage = np.linspace(0, 1, 30).reshape(3, 10)
    heat = class_usage_figure(usage, ["a", "b", "c"], "fc2").data[0]
    np.testing.assert_array_equal(heat.z, usage)


def test_the_note_says_nothing_runs_faster():
    assert "Nothing here runs faster" in HONEST_NOTE
    assert "batch" in HONEST_NOTE and "Lin et al., 2017" in HONEST_NOTE


# --- the static counterpart: torch.nn.utils.prune is the oracle ----------------------------------


def test_the_static_counterpart_is_ln_structured_pruning_of_each_gated_layer(benches):
    from torch.nn.utils import prune as torch_prune

    bench = benches["lenet300"]
    images, labels = bench.eval_set.images[:1000], bench.eval_set.labels[:1000]
    layers = ["fc1", "fc2"]
    before = snapshot(bench.model)
    state = bench.resolve(static_plan(layers, 0.5, bench.pruner.structure))
    point = static_point(bench.model, images, labels, state.parameters, state.masks, 0.5, layers)
    # oracle: half of each layer's rows with the smallest L1 norm, their bias too (a removed
    # neuron passes nothing on, not relu(bias))
    oracle = copy.deepcopy(bench.model)
    for name in layers:
        layer = oracle.get_submodule(name)
        torch_prune.ln_structured(layer, "weight", amount=0.5, n=1, dim=0)
        with torch.no_grad():
            layer.bias[layer.weight_mask[:, 0] == 0] = 0
    expected = _dense_logits(oracle, images).argmax(1)
    assert point.accuracy == float((expected == labels).double().mean())
    assert point.units_computed == (150 + 50) / (300 + 100)
    flops = {layer.name: layer.flops for layer in bench.pruner.structure.layers}
    saved = (flops["fc1"] + flops["fc2"]) / 2
    assert point.flops_computed == pytest.approx(1 - saved / bench.dense_flops)
    assert point.accuracy < bench.dense.accuracy  # the same half for every input costs accuracy
    assert_unchanged(bench.model, before)


def test_the_static_counterpart_prunes_coupled_channels_together_and_skips_what_cannot_go(
    benches,
):
    resnet = benches["resnet_mini"]
    layers = path_layers(resnet.pruner.structure)
    plan = static_plan(layers, 0.5, resnet.pruner.structure)
    state = resnet.resolve(plan)  # without the structure, a coupled layer is refused
    with pytest.raises(ValueError, match="coupled"):
        resnet.resolve(static_plan(layers, 0.5))
    images, labels = resnet.eval_set.images[:64], resnet.eval_set.labels[:64]
    point = static_point(resnet.model, images, labels, state.parameters, state.masks, 0.5, layers)
    assert point.units_computed == pytest.approx(0.5, abs=0.02)
    # a ViT's fc2 feeds a LayerNorm: it cannot lose outputs, stays dense and counts as computed
    vit = benches["vit_tiny"]
    layers = ["block1.fc1", "block1.fc2"]
    state = vit.resolve(static_plan(layers, 0.5, vit.pruner.structure))
    images, labels = vit.eval_set.images[:64], vit.eval_set.labels[:64]
    point = static_point(vit.model, images, labels, state.parameters, state.masks, 0.5, layers)
    fc1 = vit.model.get_submodule("block1.fc1").out_features
    fc2 = vit.model.get_submodule("block1.fc2").out_features
    assert point.units_computed == pytest.approx((fc1 / 2 + fc2) / (fc1 + fc2))
    assert static_dense_layers(layers, vit.pruner.structure) == ["block1.fc2"]
    assert static_dense_layers(path_layers(resnet.pruner.structure), resnet.pruner.structure) == []


def test_static_point_refuses_a_layer_that_is_not_linear_or_conv(benches):
    bench = benches["lenet300"]
    state = bench.resolve(static_plan(["fc1"], 0.5))
    images, labels = bench.eval_set.images[:8], bench.eval_set.labels[:8]
    with pytest.raises(ValueError, match="not Linear / Conv2d"):
        static_point(bench.model, images, labels, state.parameters, state.masks, 0.5, ["nope"])
    with pytest.raises(ValueError, match="keep"):
        static_plan(["fc1"], 0.0)
