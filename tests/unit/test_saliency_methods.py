"""Integrated Gradients, Occlusion, Grad-CAM on a chosen layer, and method settings: each
against an oracle computed by hand (a linear model, autograd), plus the side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.models import lenet5, load_model
from explorer.saliency import attributions_for, explain_pair, get_attribution
from explorer.saliency.gradcam import UPSAMPLE_MODE, conv_layers
from explorer.saliency.integrated import dark_baseline, integrated_gradients
from explorer.saliency.occlusion import window_for
from tests.unit.conftest import assert_unchanged, require_trained, seeded, snapshot
from tests.unit.test_saliency import hooks_of

INPUT_SHAPE = (1, 28, 28)
#: Completeness of Integrated Gradients with 32 Gauss-Legendre steps, measured on the first
#: 20 eval images of the trained LeNet-5 (largest |error| / |logit change| there: 1.8%).
IG_RELATIVE_ERROR = 0.03


@pytest.fixture(scope="module")
def trained() -> dict[str, nn.Module]:
    for name in ("lenet5", "lenet300", "resnet_mini", "vit_tiny"):
        require_trained(name)
    return {name: load_model(name) for name in ("lenet5", "lenet300", "resnet_mini", "vit_tiny")}


class Linear(nn.Module):
    """logit_k = sum(w_k * x) + b_k: every attribution of it has a closed form."""

    def __init__(self, classes: int = 3, side: int = 8) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(classes, 1, side, side, generator=generator))
        self.b = nn.Parameter(torch.randn(classes, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(1) * self.w).flatten(2).sum(-1) + self.b


@pytest.fixture()
def linear_case() -> tuple[nn.Module, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return Linear(), torch.rand(1, 1, 8, 8, generator=generator) - 0.3


# --- Integrated Gradients -----------------------------------------------------------------


def test_ig_of_a_linear_model_is_input_minus_baseline_times_weight(linear_case):
    model, x = linear_case
    attributions, delta = integrated_gradients(model, x, 2, steps=4)
    expected = (x - dark_baseline(x)) * model.w[2:3].detach()
    torch.testing.assert_close(attributions, expected, rtol=1e-5, atol=1e-6)
    assert abs(delta) < 1e-4
    # the map is |sum over channels| and its evidence the total |attribution|
    result = get_attribution("integrated").explain(model, x, 2, steps=4)
    np.testing.assert_allclose(result.values, expected[0, 0].abs().numpy(), rtol=1e-5, atol=1e-6)
    assert result.evidence == pytest.approx(float(expected.abs().sum()), rel=1e-5)


def test_ig_completeness_on_the_trained_lenet5(trained, eval_set):
    model = trained["lenet5"]
    for i in range(20):
        x, target = eval_set.images[i : i + 1], int(eval_set.labels[i])
        attributions, delta = integrated_gradients(model, x, target, steps=32)
        with torch.no_grad():
            change = float(model(x)[0, target] - model(dark_baseline(x))[0, target])
        # the oracle: the logits themselves, not captum's delta
        error = float(attributions.sum()) - change
        assert error == pytest.approx(delta, abs=1e-3)
        assert abs(error) <= IG_RELATIVE_ERROR * abs(change), (i, error, change)


def test_ig_rejects_no_steps(linear_case):
    model, x = linear_case
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(model, x, 0, steps=0)


# --- Occlusion ----------------------------------------------------------------------------


def test_occlusion_of_a_linear_model_by_hand(linear_case):
    model, x = linear_case
    target, size, stride = 1, 4, 2
    got = get_attribution("occlusion").explain(model, x, target, window=size).values
    # By hand: hiding a window changes the logit by sum over it of w * (x - baseline); each
    # pixel averages the drops of the windows covering it; only drops count.
    contribution = (model.w[target, 0] * (x - dark_baseline(x))[0, 0]).detach()
    total = torch.zeros(8, 8)
    covers = torch.zeros(8, 8)
    for top in range(0, 8 - size + 1, stride):
        for left in range(0, 8 - size + 1, stride):
            drop = contribution[top : top + size, left : left + size].sum()
            total[top : top + size, left : left + size] += drop
            covers[top : top + size, left : left + size] += 1
    expected = (total / covers.clamp(min=1)).clamp(min=0)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_occlusion_window_rule_and_bad_windows(linear_case):
    assert window_for(28, 28) == 4 and window_for(224, 224) == 32 and window_for(8, 8) == 2
    model, x = linear_case
    with pytest.raises(ValueError, match="window"):
        get_attribution("occlusion").explain(model, x, 0, window=9)


# --- Grad-CAM on a chosen layer -----------------------------------------------------------


def test_gradcam_on_conv1_equals_grad_cam_by_hand(eval_set):
    model = seeded(lenet5, seed=3)
    image, target = eval_set.images[7:8], 3
    assert conv_layers(model, INPUT_SHAPE) == ("conv1", "conv2")
    captured = {}
    handle = model.conv1.register_forward_hook(lambda _m, _i, out: captured.setdefault("A", out))
    try:
        logit = model(image)[0, target]
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logit, captured["A"])
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * captured["A"]).sum(1, keepdim=True))
    expected = F.interpolate(cam, size=(28, 28), mode=UPSAMPLE_MODE)[0, 0].detach().numpy()
    method = get_attribution("gradcam")
    got = method.attribute(model, image, target, layer="conv1")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    # the default is the last conv, and differs from conv1's map
    default = method.attribute(model, image, target)
    np.testing.assert_array_equal(default, method.attribute(model, image, target, layer="conv2"))
    assert not np.allclose(default, got)
    assert "conv1" in method.describe(model, INPUT_SHAPE, layer="conv1")


def test_bad_settings_and_targets_are_refused_with_the_choices(linear_case):
    model = seeded(lenet5)
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(ValueError, match="conv1"):
        get_attribution("gradcam").explain(model, x, 0, layer="fc1")
    with pytest.raises(ValueError, match="steps"):
        get_attribution("gradient").explain(model, x, 0, steps=3)
    with pytest.raises(ValueError, match="class index"):
        get_attribution("gradient").explain(model, x, 10)


# --- every method, on every trained model ---------------------------------------------------


@pytest.mark.parametrize("name", ["lenet5", "lenet300", "resnet_mini", "vit_tiny"])
def test_every_method_gives_finite_maps_and_leaves_the_models_alone(trained, eval_set, name):
    model = trained[name]
    pruned = load_model(name)
    with torch.no_grad():
        for param in pruned.parameters():
            param[param.abs() < param.abs().median()] = 0
    before = snapshot(model)
    x = eval_set.images[3:4]
    methods = attributions_for(model, INPUT_SHAPE)
    assert {"gradient", "integrated", "occlusion"} <= set(methods)
    for method in methods:
        pair = explain_pair(method, model, pruned, x, int(eval_set.labels[3]))
        for attribution in (pair.dense_attribution, pair.pruned_attribution):
            assert attribution.values.shape == (28, 28)
            assert np.isfinite(attribution.values).all() and (attribution.values >= 0).all()
    assert_unchanged(model, before)
    assert hooks_of(model) == [] and hooks_of(pruned) == []


def test_identical_models_agree_exactly_for_every_method(trained, eval_set):
    model = trained["lenet5"]
    for method in attributions_for(model, INPUT_SHAPE):
        pair = explain_pair(method, model, model, eval_set.images[1:2], int(eval_set.labels[1]))
        np.testing.assert_array_equal(pair.dense_map, pair.pruned_map)
        assert not pair.dense_attribution.negligible, method  # else there is nothing to compare
        assert pair.comparison["correlation"] == pytest.approx(1.0)
        assert pair.comparison["top_iou"] == 1.0
        assert not pair.comparison["difference"].any()


# --- agreement over many images -----------------------------------------------------------


def test_rank_correlation_by_hand_with_ties():
    from explorer.saliency.compare import average_ranks, rank_correlation

    np.testing.assert_allclose(average_ranks(np.array([10.0, 0.0, 10.0, 5.0])), [3.5, 1, 3.5, 2])
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert rank_correlation(a, a**3) == pytest.approx(1.0)  # same order, other peaks
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    # ranks (1, 2, 3, 4) against (1.5, 1.5, 3, 4): Pearson of those by hand
    x, y = np.array([1, 2, 3, 4.0]), np.array([1.5, 1.5, 3, 4])
    expected = ((x - x.mean()) @ (y - y.mean())) / np.sqrt(
        ((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum()
    )
    assert rank_correlation(a, np.array([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(expected)


def test_agreement_is_one_for_identical_models_and_drops_when_the_top_unit_goes(
    trained, eval_set
):
    from explorer.paths import decision_path
    from explorer.saliency.agreement import agreement_curve

    model = trained["lenet300"]
    images, targets = eval_set.images[:12], eval_set.labels[:12]
    # the unit that carries image 0's decision most, in the last hidden layer
    top = decision_path(model, images[:1], int(targets[0]), ["fc2"]).layer("fc2").top[0]
    cut = load_model("lenet300")
    with torch.no_grad():
        cut.fc2.weight[top] = 0
        cut.fc2.bias[top] = 0
    progress = []
    same, without_top = agreement_curve(
        "gradient", model, {0.0: model, 0.5: cut}, images, targets, progress=progress.append
    )
    assert progress == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert same.compared == 12
    assert all(v == pytest.approx(1.0) for v in same.rank_correlations)
    assert all(v == 1.0 for v in same.overlaps)
    assert without_top.rank_correlations[0] < 1 and without_top.overlaps[0] < 1
    assert without_top.mean_rank_correlation < 1
    assert hooks_of(model) == [] and hooks_of(cut) == []
