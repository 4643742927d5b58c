"""Layer outputs and per-unit statistics, dense and pruned, against a forward pass written out
by hand; hooks never outlive a call and the dense model is never modified."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.inside.activations import (
    compare_sample,
    forward_with_activations,
    layer_activations,
    observation_points,
    pruned_outputs,
    unit_statistics,
)
from explorer.plots.activations import (
    divergence_figure,
    feature_maps_figure,
    token_map_figure,
    unit_stats_figure,
    unit_strip_figure,
)
from explorer.zoo.models import lenet5, lenet_300_100, resnet_mini, vit_tiny
from tests.unit.conftest import INPUT_SHAPE, assert_unchanged, seeded, snapshot

ATOL = 1e-5


def no_hooks(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in model.modules()
    )


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    return seeded(lenet_300_100, seed=4)


@pytest.fixture(scope="module")
def mlp_state(mlp):
    return Pruner(mlp, INPUT_SHAPE).resolve(PruningPlan(amount=0.7))


def masked(model: nn.Module, state, layer: str) -> torch.Tensor:
    return state.parameters.get(
        f"{layer}.weight", dict(model.named_parameters())[f"{layer}.weight"]
    ).detach()


def test_pruned_mlp_outputs_equal_a_manual_forward(mlp, mlp_state, eval_images):
    before = snapshot(mlp)
    x = eval_images[:8]
    outputs = layer_activations(mlp, x, mlp_state.parameters)
    w1, w2, w3 = (masked(mlp, mlp_state, name) for name in ("fc1", "fc2", "fc3"))
    assert (w1 == 0).any() and (w1 != mlp.fc1.weight).any()  # really the pruned weights
    h1 = x.flatten(1) @ w1.T + mlp.fc1.bias
    h2 = h1.relu() @ w2.T + mlp.fc2.bias
    h3 = h2.relu() @ w3.T + mlp.fc3.bias
    for name, expected in (("fc1", h1), ("fc2", h2), ("fc3", h3)):
        torch.testing.assert_close(outputs[name], expected.detach(), atol=ATOL, rtol=0)
    assert no_hooks(mlp)
    assert_unchanged(mlp, before)


def test_dense_conv_outputs_equal_a_manual_forward(eval_images):
    model = seeded(lenet5, seed=5)
    x = eval_images[:4]
    outputs = layer_activations(model, x)
    expected = F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=2)
    torch.testing.assert_close(outputs["conv1"], expected.detach(), atol=ATOL, rtol=0)
    pooled = F.max_pool2d(expected.relu(), 2)
    expected2 = F.conv2d(pooled, model.conv2.weight, model.conv2.bias)
    torch.testing.assert_close(outputs["conv2"], expected2.detach(), atol=ATOL, rtol=0)
    assert no_hooks(model)


def test_hooks_are_removed_even_when_the_forward_fails(mlp):
    with pytest.raises(RuntimeError):
        forward_with_activations(mlp, torch.zeros(2, 3, 5, 5), ["fc1"])  # wrong input size
    assert no_hooks(mlp)
    with pytest.raises(ValueError, match="unknown module"):
        forward_with_activations(mlp, torch.zeros(1, *INPUT_SHAPE), ["nope"])


def test_hooks_ignore_forwards_from_other_threads(mlp, eval_images):
    """Another session running the shared model meanwhile must not leak into the capture."""
    inside, done = threading.Event(), threading.Event()
    original = mlp.fc2.forward

    def paused_fc2(x: torch.Tensor) -> torch.Tensor:
        if threading.current_thread() is not threading.main_thread():
            inside.set()  # the worker's hooks are registered and fc1 was captured
            done.wait(10)
        return original(x)

    mlp.fc2.forward = paused_fc2
    result: dict[str, torch.Tensor] = {}
    worker = threading.Thread(
        target=lambda: result.update(layer_activations(mlp, eval_images[:2], names=["fc1", "fc3"]))
    )
    try:
        worker.start()
        assert inside.wait(10)
        with torch.inference_mode():
            mlp(torch.zeros(3, *INPUT_SHAPE))  # fires the worker's fc1 and fc3 hooks here
        done.set()
        worker.join(10)
    finally:
        done.set()
        del mlp.fc2.forward
    assert result["fc1"].shape[0] == 2 and result["fc3"].shape[0] == 2
    expected = eval_images[:2].flatten(1) @ mlp.fc1.weight.T + mlp.fc1.bias
    torch.testing.assert_close(result["fc1"], expected.detach(), atol=ATOL, rtol=0)
    assert no_hooks(mlp)


def test_observation_points_follow_relu_modules():
    points = observation_points(seeded(lenet5), ["conv1", "conv2", "fc1", "fc3"])
    assert points == {"conv1": "relu1", "conv2": "relu2", "fc1": "relu3", "fc3": "fc3"}
    res = observation_points(seeded(resnet_mini), ["stem.conv", "block1.conv1", "fc"])
    assert res == {"stem.conv": "stem.relu", "block1.conv1": "block1.conv1", "fc": "fc"}


def test_unit_statistics_match_a_hand_computation(mlp, mlp_state, eval_images):
    before = snapshot(mlp)
    x = eval_images[:13]
    points = observation_points(mlp, ["fc1", "fc3"])
    stats = unit_statistics(mlp, x, points, mlp_state.parameters, batch_size=5)  # 3 batches
    w1, w3 = masked(mlp, mlp_state, "fc1"), masked(mlp, mlp_state, "fc3")
    h1 = (x.flatten(1) @ w1.T + mlp.fc1.bias).relu().double().detach()
    relu1 = stats["fc1"]
    assert relu1.measured_at == "relu1" and relu1.samples == 13
    np.testing.assert_allclose(relu1.mean, h1.mean(0).numpy(), atol=ATOL)
    np.testing.assert_allclose(relu1.zero_fraction, (h1 == 0).double().mean(0).numpy())
    np.testing.assert_allclose(relu1.max, h1.max(0).values.numpy(), atol=ATOL)
    np.testing.assert_array_equal(relu1.dead, (h1 <= 0).all(0).numpy())
    # The classifier is measured raw (no ReLU follows it).
    w2 = masked(mlp, mlp_state, "fc2")
    h2 = (h1.float() @ w2.T + mlp.fc2.bias).relu()
    logits = (h2 @ w3.T + mlp.fc3.bias).double().detach()
    assert stats["fc3"].measured_at == "fc3"
    np.testing.assert_allclose(stats["fc3"].mean, logits.mean(0).numpy(), atol=1e-4)
    assert no_hooks(mlp)
    assert_unchanged(mlp, before)


def test_conv_unit_statistics_average_over_positions(eval_images):
    model = seeded(lenet5, seed=6)
    pruner = Pruner(model, INPUT_SHAPE)
    state = pruner.resolve(PruningPlan(method="filters", scope="layer", amount=0.5))
    x = eval_images[:6]
    stats = unit_statistics(model, x, {"conv1": "relu1"}, state.parameters, batch_size=4)
    w = state.parameters["conv1.weight"]
    b = state.parameters.get("conv1.bias", model.conv1.bias)
    relu = F.conv2d(x, w, b, padding=2).relu().double().detach()  # (6, 6, 28, 28)
    np.testing.assert_allclose(stats["conv1"].mean, relu.mean((0, 2, 3)).numpy(), atol=ATOL)
    zeros = (relu == 0).double().mean((0, 2, 3)).numpy()
    np.testing.assert_allclose(stats["conv1"].zero_fraction, zeros)
    removed = pruned_outputs(state.masks, "conv1", 6)
    assert removed.sum() == 3
    np.testing.assert_array_equal(removed, ~state.keeps["conv1"].numpy())


def test_pruned_outputs_are_the_all_zero_weight_rows(mlp):
    state = Pruner(mlp, INPUT_SHAPE).resolve(PruningPlan(method="filters", amount=0.4))
    rows = pruned_outputs(state.masks, "fc1", 300)
    np.testing.assert_array_equal(rows, (state.parameters["fc1.weight"] == 0).all(1).numpy())
    assert rows.sum() == state.pruned["fc1"] > 0
    assert not pruned_outputs(state.masks, "fc3", 10).any()  # the classes are never pruned
    assert not pruned_outputs({}, "fc1", 300).any()


def test_compare_sample_agrees_with_the_pruned_copy(mlp, mlp_state, eval_images):
    pruner = Pruner(mlp, INPUT_SHAPE)
    x = eval_images[3:4]
    comparison = compare_sample(mlp, x, mlp_state.parameters, ["fc1", "fc2", "fc3"])
    copy = pruner.pruned_model(mlp_state)
    with torch.inference_mode():
        torch.testing.assert_close(comparison.dense_logits, mlp(x)[0])
        torch.testing.assert_close(comparison.pruned_logits, copy(x)[0])
    torch.testing.assert_close(comparison.pruned["fc3"], comparison.pruned_logits)
    assert comparison.pruned_probabilities.sum().item() == pytest.approx(1.0)
    change = comparison.divergence()
    assert change["fc1"] > 0
    same = compare_sample(mlp, x, {}, ["fc1", "fc3"]).divergence()
    assert same == {"fc1": 0.0, "fc3": 0.0}


def test_vit_token_outputs_and_figures(eval_images):
    model = seeded(vit_tiny)
    state = Pruner(model, INPUT_SHAPE).resolve(
        PruningPlan(method="heads", scope="layer", amount=0.5)
    )
    comparison = compare_sample(model, eval_images[:1], state.parameters, ["block1.attn.qkv"])
    dense, pruned = comparison.dense["block1.attn.qkv"], comparison.pruned["block1.attn.qkv"]
    assert dense.shape == (17, 192)
    removed = pruned_outputs(state.masks, "block1.attn.qkv", 192)
    assert removed.sum() == 2 * 3 * 16  # 2 of 4 heads: their q, k and v rows
    np.testing.assert_allclose(
        pruned.numpy()[:, removed],
        np.broadcast_to(
            state.parameters["block1.attn.qkv.bias"].numpy()[removed], (17, int(removed.sum()))
        ),
        atol=ATOL,
    )
    fig = token_map_figure(dense.numpy(), pruned.numpy(), removed)
    shaded = sum(s.x1 - s.x0 for s in fig.layout.shapes)
    assert shaded == removed.sum()


def test_activation_figures_mark_exactly_the_removed_units():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(6, 4, 4)).astype(np.float32)
    removed = np.array([False, True, False, False, True, False])
    fig = feature_maps_figure(maps, maps * 0, removed)
    assert len(fig.layout.shapes) == 2
    strip = unit_strip_figure(maps[:, 0, 0], maps[:, 0, 0], removed)
    assert sorted((s.x0 + 0.5, s.x1 - 0.5) for s in strip.layout.shapes) == [(1, 1), (4, 4)]


def test_unit_stats_figure_shades_removed_units(mlp, mlp_state, eval_images):
    points = observation_points(mlp, ["fc2"])
    dense = unit_statistics(mlp, eval_images, points)["fc2"]
    pruned = unit_statistics(mlp, eval_images, points, mlp_state.parameters)["fc2"]
    removed = np.zeros(100, dtype=bool)
    removed[[3, 4, 5, 50]] = True
    fig = unit_stats_figure(dense, pruned, removed)
    assert len(fig.data) == 6  # three panels x (dense, pruned)
    spans = {(s.x0 + 0.5, s.x1 - 0.5) for s in fig.layout.shapes}
    assert spans == {(3, 5), (50, 50)}


def test_change_by_layer_keeps_every_layer_name_readable():
    # A ViT has 14 prunable layers: vertical labels under narrow bars overlapped into a smear.
    layers = [layer.name for layer in Pruner(seeded(vit_tiny), INPUT_SHAPE).structure.layers]
    assert len(layers) == 14
    fig = divergence_figure(layers, [i / 10 for i in range(14)], selected=layers[3])
    (bars,) = fig.data
    assert bars.orientation == "h" and list(bars.y) == layers  # one row per name
    assert fig.layout.yaxis.automargin and fig.layout.xaxis.automargin
    assert fig.layout.height >= 14 * 20  # room for every row
    assert list(bars.marker.line.width).index(3) == 3  # the layer shown is outlined
