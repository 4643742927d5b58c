"""Saliency: attribution maps against autograd oracles, side effects, dead models, agreement."""

from __future__ import annotations

import copy
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.models import lenet5, lenet_300_100, resnet_mini, vit_tiny
from explorer.plan import PruningPlan
from explorer.plots.saliency import saliency_figure
from explorer.pruning import Pruner
from explorer.saliency import (
    ATTRIBUTIONS,
    attributions_for,
    compare_maps,
    explain_pair,
    get_attribution,
    predict_one,
)
from explorer.saliency.gradcam import UPSAMPLE_MODE, last_conv
from tests.unit.conftest import (
    INPUT_SHAPE,
    assert_unchanged,
    prunable,
    randomize_batchnorm,
    seeded,
    snapshot,
)

BUILDERS = {
    "lenet300": lenet_300_100,
    "lenet5": lenet5,
    "resnet_mini": resnet_mini,
    "vit_tiny": vit_tiny,
}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Every zoo architecture with a fixed random init (no trained weights needed)."""
    built = {name: seeded(build, seed=3) for name, build in BUILDERS.items()}
    randomize_batchnorm(built["resnet_mini"], seed=3)
    return built


@pytest.fixture(scope="module")
def image(eval_set) -> torch.Tensor:
    """One real eval image, (1, 1, 28, 28)."""
    return eval_set.images[7:8].clone()


def hooks_of(model: nn.Module) -> list[tuple[str, str]]:
    """(module name, hook kind) for every hook registered anywhere in ``model``."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [
        (name, kind)
        for name, module in model.named_modules()
        for kind in kinds
        if getattr(module, kind, None)
    ]


# --- oracles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_gradient_map_is_abs_input_gradient_max_over_channels(models, image, name):
    model, target = models[name], 4
    x = image.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[0, target], x)
    expected = grad.abs().amax(dim=1)[0].numpy()
    model.zero_grad(set_to_none=True)
    got = get_attribution("gradient").attribute(model, image, target)
    assert got.shape == (28, 28)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_gradient_map_takes_the_max_over_colour_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    x = torch.randn(1, 3, 4, 4)
    weight = model[1].weight.detach()[2].reshape(3, 4, 4)  # d logit_2 / d x, exactly
    got = get_attribution("gradient").attribute(model, x, 2)
    np.testing.assert_allclose(got, weight.abs().amax(0).numpy(), rtol=1e-6)


def test_gradcam_on_lenet5_equals_grad_cam_by_hand(models, image):
    model, target = models["lenet5"], 3
    assert last_conv(model, INPUT_SHAPE) == "conv2"
    # By hand: A = conv2's output, alpha_k = spatial mean of d logit / d A_k,
    # map = ReLU(sum_k alpha_k A_k), upsampled to the input size.
    captured = {}
    handle = model.conv2.register_forward_hook(lambda _m, _i, out: captured.setdefault("A", out))
    try:
        logit = model(image)[0, target]
    finally:
        handle.remove()
    activations = captured["A"]  # (1, 16, 10, 10)
    (grads,) = torch.autograd.grad(logit, activations)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((alpha * activations).sum(dim=1, keepdim=True))
    expected = F.interpolate(cam, size=(28, 28), mode=UPSAMPLE_MODE)[0, 0].detach().numpy()
    got = get_attribution("gradcam").attribute(model, image, target)
    assert cam.shape == (1, 1, 10, 10)
    assert float(cam.detach().max()) > 0  # the oracle is not trivially zero
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert (got >= 0).all()


def test_gradcam_uses_the_last_conv_in_graph_order(models):
    assert last_conv(models["resnet_mini"], INPUT_SHAPE) == "block3.conv2"
    assert last_conv(models["vit_tiny"], INPUT_SHAPE) == "embed.proj"
    assert last_conv(models["lenet300"], INPUT_SHAPE) is None


def test_gradcam_applies_only_to_models_with_a_conv(models, image):
    assert attributions_for(models["lenet300"]) == ["gradient"]
    assert attributions_for(models["lenet5"]) == ["gradient", "gradcam"]
    with pytest.raises(ValueError, match="does not apply"):
        get_attribution("gradcam").attribute(models["lenet300"], image, 0)


# --- side effects -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_attribution_leaves_the_model_untouched(models, image, name):
    model = models[name]
    before = snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    for method in attributions_for(model):
        get_attribution(method).attribute(model, image, 1)
        get_attribution(method).describe(model, INPUT_SHAPE)
    assert hooks_of(model) == []
    assert_unchanged(model, before)  # bit-identical parameters and buffers, every .grad None
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training


def test_a_model_in_training_mode_keeps_its_mode_and_batchnorm_statistics(image):
    model = randomize_batchnorm(seeded(resnet_mini, seed=5), seed=5).train()
    before = snapshot(model)  # running means / variances included
    for method in attributions_for(model):
        get_attribution(method).attribute(model, image, 2)
    assert model.training
    assert all(m.training for m in model.modules())
    assert_unchanged(model, before)
    assert hooks_of(model) == []


def magnitude_pruned(model: nn.Module, amount: float) -> nn.Module:
    """A copy with the smallest ``amount`` of every Linear / Conv2d weight set to zero."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for _, module in prunable(pruned):
            weight = module.weight
            count = round(amount * weight.numel())
            if count:
                order = weight.abs().flatten().argsort()[:count]
                weight.view(-1)[order] = 0
    return pruned


def test_the_pruner_at_100_percent_gives_finite_zero_maps(models, image):
    dead = Pruner(models["lenet5"], INPUT_SHAPE).pruned_model(PruningPlan(amount=1.0))
    for method in ("gradient", "gradcam"):
        got = get_attribution(method).attribute(dead, image, 0)
        assert np.isfinite(got).all() and not got.any(), method


@pytest.mark.parametrize("name", list(BUILDERS))
def test_all_zero_weights_give_finite_zero_maps(models, image, name):
    dead = magnitude_pruned(models[name], 1.0)
    for method in attributions_for(dead):
        got = get_attribution(method).attribute(dead, image, 0)
        assert np.isfinite(got).all(), method
        assert not got.any(), method


def test_attribute_rejects_a_batch_and_unknown_names(models, image):
    with pytest.raises(ValueError, match="one image"):
        get_attribution("gradient").attribute(models["lenet5"], image.repeat(2, 1, 1, 1), 0)
    with pytest.raises(ValueError, match="gradcam"):
        get_attribution("nonsense")
    assert {"gradient", "gradcam"} <= set(ATTRIBUTIONS)


# --- agreement ----------------------------------------------------------------------------------


def test_identical_maps_agree_perfectly():
    rng = np.random.default_rng(0)
    values = rng.random((28, 28))
    out = compare_maps(values, values.copy())
    assert out["correlation"] == pytest.approx(1.0)
    assert out["top_iou"] == 1.0
    assert not out["difference"].any()


def test_top_overlap_on_hand_made_maps():
    dense = np.arange(100.0).reshape(10, 10)  # top 10% = flat indices 90..99
    pruned = np.zeros(100)
    pruned[85:95] = np.arange(10) + 100  # top 10% = flat indices 85..94
    out = compare_maps(dense, pruned.reshape(10, 10))
    assert out["top_iou"] == pytest.approx(5 / 15)  # 90..94 shared; 85..99 in either


def test_correlation_and_difference_by_hand():
    dense = np.array([[1.0, 2.0], [3.0, 4.0]])
    # deviations (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): 4 / sqrt(5 * 5) = 0.8
    assert compare_maps(dense, np.array([[1.0, 3.0], [2.0, 4.0]]))["correlation"] == (
        pytest.approx(0.8)
    )
    assert compare_maps(dense, 2 * dense + 3)["correlation"] == pytest.approx(1.0)
    assert compare_maps(dense, -dense)["correlation"] == pytest.approx(-1.0)
    flat = np.full((2, 2), 2.0)
    out = compare_maps(dense, flat)
    np.testing.assert_allclose(out["difference"], 1 - dense / 4)  # each scaled to max 1
    assert math.isnan(out["correlation"])  # a flat map has no pattern to correlate
    assert math.isnan(out["top_iou"])


def test_compare_maps_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        compare_maps(np.zeros((2, 2)), np.zeros((3, 3)))


# --- one image through both models --------------------------------------------------------------


def test_explain_pair_on_dense_and_pruned(models, image):
    dense = models["lenet5"]
    pruned = magnitude_pruned(dense, 0.9)
    before = snapshot(dense)
    with torch.no_grad():
        probabilities = torch.softmax(pruned(image)[0].double(), 0)
    out = explain_pair("gradcam", dense, pruned, image, target=5)
    assert out.target == 5
    assert out.pruned.label == int(probabilities.argmax())
    assert out.pruned.confidence == pytest.approx(float(probabilities.max()))
    assert out.dense.label == predict_one(dense, image).label
    np.testing.assert_allclose(out.comparison["difference"], out.pruned_scaled - out.dense_scaled)
    assert_unchanged(dense, before)


def test_saliency_figure_titles_carry_predictions():
    maps = np.random.default_rng(0).random((3, 28, 28))
    fig = saliency_figure(
        maps[0], maps[1], maps[2], maps[2] - maps[1], "7", "7", ("7", 0.991), ("3", 0.54)
    )
    assert isinstance(fig, go.Figure)
    titles = [a.text for a in fig.layout.annotations]
    assert "Dense<br>predicts 7 (99.1%)" in titles
    assert "Pruned<br>predicts 3 (54.0%)" in titles
    assert fig.layout.coloraxis2.cmin == -fig.layout.coloraxis2.cmax  # centred at 0
