"""Saliency: attribution maps against autograd oracles, side effects, dead models, agreement,
maps that are "≈ 0", and Grad-CAM for a vision transformer."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.inside.saliency import (
    ATTRIBUTIONS,
    NEGLIGIBLE_SHARE,
    attributions_for,
    compare_maps,
    explain_pair,
    get_attribution,
    is_negligible,
    predict_one,
)
from explorer.inside.saliency.compare import difference_map, scaled
from explorer.inside.saliency.gradcam import UPSAMPLE_MODE, last_conv
from explorer.inside.saliency.tokens import TokenLayout, token_layout
from explorer.plots.saliency import saliency_figure
from explorer.zoo.models import lenet5, lenet_300_100, load_model, resnet_mini, vit_tiny
from tests.unit.conftest import (
    INPUT_SHAPE,
    assert_unchanged,
    hooks_of,
    prunable,
    randomize_batchnorm,
    require_trained,
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
    got = get_attribution("gradient").explain(model, x, 2)
    np.testing.assert_allclose(got.values, weight.abs().amax(0).numpy(), rtol=1e-6)
    # evidence: the map's sum times the image's contrast, in logit units
    contrast = float(x.max() - x.min())
    assert got.evidence == pytest.approx(float(weight.abs().amax(0).sum()) * contrast, rel=1e-5)
    with torch.no_grad():
        logits = model(x)[0]
    assert got.logit_range == pytest.approx(float(logits.max() - logits.min()), rel=1e-6)


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
    def conv_methods(name: str) -> list[str]:
        return [m for m in attributions_for(models[name], INPUT_SHAPE) if "gradcam" in m]

    assert conv_methods("lenet300") == []
    assert conv_methods("lenet5") == conv_methods("resnet_mini") == ["gradcam"]
    # the ViT's only conv is its patch embedding: it gets Grad-CAM over tokens instead
    assert conv_methods("vit_tiny") == ["gradcam_tokens"]
    with pytest.raises(ValueError, match="does not apply"):
        get_attribution("gradcam").attribute(models["lenet300"], image, 0)


# --- side effects -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_attribution_leaves_the_model_untouched(models, image, name):
    model = models[name]
    before = snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    assert len(attributions_for(model, INPUT_SHAPE)) >= 1
    for method in attributions_for(model, INPUT_SHAPE):
        get_attribution(method).attribute(model, image, 1)
        get_attribution(method).describe(model, INPUT_SHAPE)
    assert hooks_of(model) == []
    assert_unchanged(model, before)  # bit-identical parameters and buffers, every .grad None
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training


def test_a_model_in_training_mode_keeps_its_mode_and_batchnorm_statistics(image):
    model = randomize_batchnorm(seeded(resnet_mini, seed=5), seed=5).train()
    before = snapshot(model)  # running means / variances included
    for method in attributions_for(model, INPUT_SHAPE):
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
        got = get_attribution(method).explain(dead, image, 0)
        assert np.isfinite(got.values).all() and not got.values.any(), method
        assert got.negligible and "exactly zero" in got.reason, method


@pytest.mark.parametrize("name", list(BUILDERS))
def test_all_zero_weights_give_finite_zero_maps(models, image, name):
    dead = magnitude_pruned(models[name], 1.0)
    for method in attributions_for(dead, INPUT_SHAPE):
        got = get_attribution(method).explain(dead, image, 0)
        assert np.isfinite(got.values).all(), method
        assert not got.values.any(), method
        assert got.evidence == 0 and got.negligible, method


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
    # each map as a share of its total: 1/4 each against (1, 2, 3, 4) / 10
    np.testing.assert_allclose(out["difference"], 0.25 - dense / 10)
    assert math.isnan(out["correlation"])  # a flat map has no pattern to correlate
    assert math.isnan(out["top_iou"])


def test_a_flatter_pruned_map_is_not_more_reliance_everywhere():
    # The pruned map is the dense one at half strength plus a uniform floor: it relies less
    # on the peak and more on the rest. Scaled each to its own maximum, the difference is
    # >= 0 on every pixel (red everywhere: "more reliance"); as shares of each map's total
    # it has the right signs and sums to 0.
    dense = np.array([[6.0, 2.0], [0.0, 0.0]])
    pruned = 0.5 * dense + 1  # (4, 2, 1, 1)
    per_max = scaled(pruned) - scaled(dense)  # (0, 1/6, 1/4, 1/4): nothing is blue
    assert (per_max >= 0).all() and (per_max > 0).sum() == 3
    # by hand: shares (.5, .25, .125, .125) - (.75, .25, 0, 0)
    out = compare_maps(dense, pruned)
    np.testing.assert_allclose(out["difference"], [[-0.25, 0.0], [0.125, 0.125]])
    assert out["difference"].sum() == pytest.approx(0.0)
    np.testing.assert_allclose(difference_map(dense, pruned), out["difference"])
    # the same map at another strength has no difference at all
    assert not compare_maps(dense, 3 * dense)["difference"].any()


def test_the_difference_panel_says_what_its_colours_are():
    image = np.zeros((2, 2))
    dense = np.array([[6.0, 2.0], [0.0, 0.0]])
    difference = difference_map(dense, 0.5 * dense + 1)
    fig = saliency_figure(
        image, scaled(dense), scaled(0.5 * dense + 1), difference, "7", "7", ("7", 0.9), ("7", 0.8)
    )
    bar = fig.layout.coloraxis2.colorbar
    assert "share of each map's total" in bar.title.text and bar.tickformat.endswith("%")
    assert fig.layout.coloraxis2.cmin == pytest.approx(-0.25)  # symmetric around 0
    heatmaps = [t for t in fig.data if isinstance(t, go.Heatmap)]
    np.testing.assert_allclose(heatmaps[-1].z, difference)
    assert "%" in heatmaps[-1].hovertemplate


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
    dense_map, pruned_map = out.dense_map.astype(np.float64), out.pruned_map.astype(np.float64)
    np.testing.assert_allclose(  # each map's share of its own total (both sum to 1)
        out.comparison["difference"],
        pruned_map / pruned_map.sum() - dense_map / dense_map.sum(),
    )
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


# --- maps that are ≈ 0 --------------------------------------------------------------------------


class TwoPaths(nn.Module):
    """logits = pixels @ W + feature_scale * head(conv features averaged over positions).

    With positive conv weights, a positive image and a positive head row, every Grad-CAM term is
    positive (the ReLU clips nothing), and after global average pooling the map's coarse sum is
    exactly the conv path's share of the target logit: ``feature_scale * head(features)[t]``.
    """

    def __init__(self, feature_scale: float) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, bias=False)  # (1, 1, 4, 4) -> (1, 3, 2, 2)
        self.pixels = nn.Linear(16, 3)
        self.head = nn.Linear(3, 3, bias=False)
        self.feature_scale = feature_scale
        with torch.no_grad():
            self.conv.weight.copy_(torch.rand(3, 1, 3, 3, generator=generator) + 0.1)
            self.pixels.weight.copy_(torch.randn(3, 16, generator=generator))
            self.head.weight.copy_(torch.rand(3, 3, generator=generator) + 0.1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))  # (N, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixels(x.flatten(1)) + self.feature_scale * self.head(self.features(x))


@pytest.fixture(scope="module")
def small_image() -> torch.Tensor:
    """A positive (1, 1, 4, 4) image with a pattern (so the conv feature map is not flat)."""
    return (torch.arange(16.0).reshape(1, 1, 4, 4) % 5 + 1) / 5


@pytest.mark.parametrize("feature_scale", [1.0, 1e-6])
def test_gradcam_evidence_is_the_conv_paths_share_of_the_logit(small_image, feature_scale):
    model, target = TwoPaths(feature_scale).eval(), 1
    with torch.no_grad():
        logits = model(small_image)[0]
        share = feature_scale * float(model.head(model.features(small_image))[0, target])
    got = get_attribution("gradcam").explain(model, small_image, target)
    assert got.evidence == pytest.approx(share, rel=1e-4)
    assert got.logit_range == pytest.approx(float(logits.max() - logits.min()), rel=1e-6)
    assert np.ptp(got.values) > 0  # a pattern, which a plot scaled to max 1 would show ...
    # ... but only a conv path worth a millionth of the logits is "≈ 0"
    assert got.negligible == (feature_scale < 1e-3)
    assert ("logits" in got.reason) == got.negligible


def test_the_issues_lenet5_image_0_has_an_empty_gradcam_map(eval_set):
    require_trained("lenet5")
    model = load_model("lenet5")
    maps = {}
    for index in (0, 1):
        x = eval_set.images[index : index + 1]
        maps[index] = get_attribution("gradcam").explain(model, x, predict_one(model, x).label)
    assert 0 < maps[0].values.max() < 0.01  # the issue's "max 0.0036" map
    assert maps[0].negligible and maps[0].share < NEGLIGIBLE_SHARE
    assert not maps[1].negligible and maps[1].share > 10 * NEGLIGIBLE_SHARE


def test_the_negligible_rule_at_its_edges():
    assert is_negligible(0.9e-3, 1.0) and not is_negligible(1.1e-3, 1.0)
    assert is_negligible(0.02, 30.0) and not is_negligible(0.04, 30.0)  # scales with the range
    assert is_negligible(0.0, 0.0)  # nothing over nothing
    assert not is_negligible(0.5, 0.0)  # classes tied: the map shows what breaks the tie
    assert is_negligible(5.0, math.nan) and is_negligible(math.nan, 3.0)  # broken output


def test_no_agreement_is_computed_on_a_negligible_map(small_image):
    normal, residue = TwoPaths(1.0).eval(), TwoPaths(1e-6).eval()
    out = explain_pair("gradcam", normal, residue, small_image, target=1)
    assert not out.dense_attribution.negligible and out.pruned_attribution.negligible
    comparison = out.comparison
    assert math.isnan(comparison["correlation"]) and math.isnan(comparison["top_iou"])
    assert comparison["reason"] == "the pruned map is ≈ 0, so there is no pattern to compare"
    assert not comparison["difference"].any()
    assert not out.pruned_scaled.any()  # shown blank, not stretched to 1
    assert out.pruned_map.any()  # the raw residue is still there for whoever wants it
    assert out.dense_scaled.max() == pytest.approx(1.0)
    # the same two maps without the verdict would be compared: the flags are what stops it
    assert math.isfinite(compare_maps(out.dense_map, out.pruned_map)["correlation"])


def test_compare_maps_on_negligible_flags():
    rng = np.random.default_rng(1)
    a, b = rng.random((5, 5)), rng.random((5, 5))
    both = compare_maps(a, b, negligible=(True, True))
    assert math.isnan(both["correlation"]) and "both maps" in both["reason"]
    dense = compare_maps(a, b, negligible=(True, False))
    assert math.isnan(dense["top_iou"]) and "dense map" in dense["reason"]
    assert compare_maps(a, b)["reason"] == ""
    assert "flat" in compare_maps(a, np.ones((5, 5)))["reason"]


def heatmaps(fig: go.Figure) -> list[go.Heatmap]:
    """The dense map, pruned map and difference panels, in that order."""
    return [t for t in fig.data if isinstance(t, go.Heatmap) and t.coloraxis]


def test_saliency_figure_does_not_stretch_a_negligible_map():
    maps = np.random.default_rng(0).random((3, 28, 28))
    args = (maps[0], maps[1], maps[2], maps[2] - maps[1], "7", "7", ("7", 0.99), ("7", 0.98))
    plain = saliency_figure(*args)
    assert all(np.asarray(h.z).any() for h in heatmaps(plain))
    fig = saliency_figure(*args, pruned_note="no evidence for this class at this layer")
    dense, pruned, difference = heatmaps(fig)
    np.testing.assert_array_equal(np.asarray(dense.z), maps[1])
    assert not np.asarray(pruned.z).any()  # all zeros, although it was given a pattern
    assert not np.asarray(difference.z).any()
    notes = [a.text for a in fig.layout.annotations if a.xref == "x3 domain"]
    assert len(notes) == 1 and notes[0].startswith("map ≈ 0")
    assert "no evidence" in notes[0]


# --- Grad-CAM for a vision transformer ----------------------------------------------------------


def test_vit_token_layout_is_found_from_shapes(models):
    assert token_layout(models["vit_tiny"], INPUT_SHAPE) == TokenLayout(
        embedding="embed.proj", grid=(4, 4), prefix=1, block="block3", layer="block3.norm1"
    )
    for name in ("lenet300", "lenet5", "resnet_mini"):
        assert token_layout(models[name], INPUT_SHAPE) is None, name
    # blocks inside a container: the container is not "the last block", its last child is
    vit = models["vit_tiny"]
    nested = nn.Sequential(
        OrderedDict(
            embed=vit.embed,
            blocks=nn.Sequential(vit.block1, vit.block2, vit.block3),
            head=vit.head,
        )
    ).eval()
    layout = token_layout(nested, INPUT_SHAPE)
    assert (layout.block, layout.layer) == ("blocks.2", "blocks.2.norm1")


def test_vit_gradcam_reads_the_last_block_and_equals_grad_cam_by_hand(models, image):
    model, target = models["vit_tiny"], 6
    before = snapshot(model)
    method = get_attribution("gradcam_tokens")
    assert "block3.norm1" in method.describe(model, INPUT_SHAPE)
    assert "patch embedding, the first layer" in method.describe(model, INPUT_SHAPE)
    got = method.explain(model, image, target)
    assert hooks_of(model) == []
    assert_unchanged(model, before)
    # By hand: A = the normalised tokens the last block's attention reads, [CLS] dropped;
    # alpha_d = mean over patches of d logit / d A_d; map = ReLU(A @ alpha) on the 4x4 grid.
    captured = {}
    handle = model.block3.norm1.register_forward_hook(lambda _m, _i, o: captured.setdefault("A", o))
    try:
        logit = model(image)[0, target]
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logit, captured["A"])
    patches, alpha = captured["A"][0, 1:], grads[0, 1:].mean(0)  # (16, 64), (64,)
    cam = F.relu(patches @ alpha).reshape(1, 1, 4, 4).detach()
    expected = F.interpolate(cam, size=(28, 28), mode=UPSAMPLE_MODE)[0, 0].numpy()
    assert float(cam.max()) > 0  # the oracle is not trivially zero
    assert got.values.shape == (28, 28) and got.values.dtype == np.float32
    assert np.isfinite(got.values).all() and (got.values >= 0).all()
    np.testing.assert_allclose(got.values, expected, rtol=1e-4, atol=1e-6)
    assert got.evidence == pytest.approx(float(cam.sum()), rel=1e-4)
    assert hooks_of(model) == []


def test_vit_patch_tokens_leaving_the_last_block_reach_no_logit(models, image):
    """Why Grad-CAM reads the last block's input: its output patch tokens have zero gradient
    (the head reads only [CLS]), so a map there would always be empty."""
    model = models["vit_tiny"]
    captured = {}
    handle = model.block3.register_forward_hook(lambda _m, _i, o: captured.setdefault("out", o))
    try:
        logits = model(image)[0]
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logits.sum(), captured["out"])
    assert not grads[0, 1:].any() and grads[0, 0].any()
