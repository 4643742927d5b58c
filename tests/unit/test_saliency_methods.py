"""Integrated Gradients, Occlusion, Grad-CAM on a chosen layer, and method settings: each
against an oracle computed by hand (a linear model, autograd), plus the side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.inside.saliency import (
    ATTRIBUTIONS,
    AgreementCurve,
    AgreementPoint,
    agreement_curve,
    agreement_per_sample,
    attributions_for,
    explain_pair,
    get_attribution,
    top_k_overlap,
)
from explorer.inside.saliency.compare import average_ranks, compare_maps, rank_correlation
from explorer.inside.saliency.gradcam import UPSAMPLE_MODE, conv_layers
from explorer.inside.saliency.integrated import dark_baseline, integrated_gradients
from explorer.inside.saliency.occlusion import window_for
from explorer.plots.saliency import agreement_curve_figure
from explorer.zoo.models import lenet5, load_model
from tests.unit.conftest import assert_unchanged, hooks_of, require_trained, seeded, snapshot

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
    result = get_attribution("occlusion").explain(model, x, target, window=size)
    got = result.values
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
    assert float(expected.max()) > 0 and (expected == 0).any()  # drops and rises both occur
    assert result.evidence == pytest.approx(float(expected.max()), rel=1e-5)  # logit units


def test_occlusion_drop_is_the_logit_change_of_the_hidden_image(linear_case):
    """The same oracle without the weights: run the model on the image with a square hidden."""
    model, x = linear_case
    target = 0
    got = get_attribution("occlusion").explain(model, x, target, window=8).values
    hidden = dark_baseline(x)  # one 8x8 window: the whole image
    with torch.no_grad():
        drop = float(model(x)[0, target] - model(hidden)[0, target])
    np.testing.assert_allclose(got, np.full((8, 8), max(drop, 0.0)), rtol=1e-5, atol=1e-6)


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
    for target in (10, -1):
        with pytest.raises(ValueError, match="class index"):
            get_attribution("gradient").explain(model, x, target)
    with pytest.raises(ValueError, match="window"):  # before any work on either model
        explain_pair("integrated", model, model, x, 0, window=4)
    with pytest.raises(ValueError, match="unknown attribution method"):
        explain_pair("nonsense", model, model, x, 0)


def test_settings_defaults_and_which_methods_run_live():
    live = {name: method.live for name, method in ATTRIBUTIONS.items()}
    assert live == {
        "gradient": True,
        "gradcam": True,
        "gradcam_tokens": True,
        "integrated": False,
        "occlusion": False,
    }
    assert get_attribution("integrated").options == {"steps": 32}
    assert get_attribution("gradcam").options == {"layer": None}
    assert get_attribution("occlusion").options == {"window": None}
    assert get_attribution("gradient").options == {}
    assert all(method.cost_hint for method in ATTRIBUTIONS.values())


def test_explain_pair_passes_the_settings_to_both_models(linear_case):
    model, x = linear_case
    other = Linear()
    with torch.no_grad():
        other.w.mul_(-1)
    pair = explain_pair("integrated", model, other, x, 2, steps=4)
    for net, got in ((model, pair.dense_attribution), (other, pair.pruned_attribution)):
        expected = ((x - dark_baseline(x)) * net.w[2:3].detach())[0, 0].abs()
        np.testing.assert_allclose(got.values, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert pair.comparison["rank_correlation"] == pytest.approx(1.0)  # |-w| = |w|


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
    assert np.isnan(rank_correlation(a, np.ones((2, 2))))  # a flat map has no order
    # compare_maps carries it beside the existing keys
    out = compare_maps(a, np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert out["rank_correlation"] == pytest.approx(expected)
    assert {"difference", "correlation", "top_iou", "top_fraction", "reason"} <= set(out)


def strokes_on_a_blank(values: list[float]) -> np.ndarray:
    """A 10 x 10 map that is exactly 0 but on a 2 x 2 "stroke" (rows 4-5, columns 4-5), the
    way Integrated Gradients from the ink-free image is 0 on an MNIST background."""
    out = np.zeros((10, 10))
    out[4:6, 4:6] = np.reshape(values, (2, 2))
    return out


def test_shared_zeros_do_not_make_opposite_strokes_agree():
    # The same zero background, the stroke's pixels in the opposite order: no agreement.
    # Ranked over all 100 pixels, the 96 shared zeros tie in both maps and the correlation
    # would read +1.00 (0.999); over the 4 pixels where either map is nonzero it is -1.
    dense, pruned = strokes_on_a_blank([1, 2, 3, 4]), strokes_on_a_blank([4, 3, 2, 1])
    assert rank_correlation(dense, pruned) == pytest.approx(-1.0)
    assert compare_maps(dense, pruned)["rank_correlation"] == pytest.approx(-1.0)
    # identical maps on the same background agree exactly
    assert rank_correlation(dense, dense.copy()) == pytest.approx(1.0)
    assert compare_maps(dense, dense.copy())["rank_correlation"] == pytest.approx(1.0)


def test_rank_correlation_over_either_maps_nonzero_pixels_by_hand():
    # dense is nonzero on stroke pixels a, b, c; pruned on b, c, d (a gone, d new). Pixels
    # where either is nonzero: a, b, c, d (the other 96 are left out).
    dense, pruned = strokes_on_a_blank([1, 2, 3, 0]), strokes_on_a_blank([0, 3, 1, 2])
    # by hand: dense (1, 2, 3, 0) ranks (2, 3, 4, 1); pruned (0, 3, 1, 2) ranks (1, 4, 2, 3);
    # deviations from 2.5: (-.5, .5, 1.5, -1.5) and (-1.5, 1.5, -.5, .5);
    # products .75 + .75 - .75 - .75 = 0 -> Spearman 0
    assert rank_correlation(dense, pruned) == pytest.approx(0.0)
    # swap c and d in pruned: ranks (1, 4, 3, 2); products .75 + .75 + .75 + .75 = 3 over
    # sqrt(5 * 5) = 0.6
    assert rank_correlation(dense, strokes_on_a_blank([0, 3, 2, 1])) == pytest.approx(0.6)
    # fewer than two such pixels, or a map flat there: no order to compare
    one = strokes_on_a_blank([0, 0, 0, 5])
    assert np.isnan(rank_correlation(one, 2 * one))
    out = compare_maps(strokes_on_a_blank([1, 1, 1, 1]), strokes_on_a_blank([1, 2, 3, 4]))
    assert np.isnan(out["rank_correlation"]) and "no order" in out["reason"]


def test_integrated_gradients_agreement_of_a_changed_model_is_not_one(trained, eval_set):
    # The case: IG is 0 on the background of both maps, so ranked over every pixel
    # a pruned model that looks elsewhere on the stroke still read +1.00.
    model = trained["lenet5"]
    pruned = Pruner(model, INPUT_SHAPE).pruned_model(PruningPlan(amount=0.7))
    x = eval_set.images[16:17]
    target = int(model(x).argmax())
    assert int(pruned(x).argmax()) != target  # the pruned model gets this image wrong
    pair = explain_pair("integrated", model, pruned, x, target)
    dense, changed = pair.dense_map, pair.pruned_map
    background = (dense == 0) & (changed == 0)
    assert background.mean() > 0.7  # most of the image: no ink, so exactly 0 in both maps
    # the old reading, ranks over every pixel: the shared zeros make it look perfect
    everywhere = np.corrcoef(average_ranks(dense), average_ranks(changed))[0, 1]
    assert everywhere > 0.99
    # over the ink, where the two maps can differ, they agree much less
    ink = ~background
    expected = np.corrcoef(average_ranks(dense[ink]), average_ranks(changed[ink]))[0, 1]
    assert pair.comparison["rank_correlation"] == pytest.approx(expected)
    assert pair.comparison["rank_correlation"] < 0.9


def top_hidden_unit(model: nn.Module, x: torch.Tensor, target: int) -> int:
    """LeNet-300-100's fc2 unit whose term in logit ``target`` is largest, by hand:
    relu(fc2(relu(fc1(x)))) times fc3's weight row of ``target``."""
    with torch.no_grad():
        hidden = F.relu(model.fc2(F.relu(model.fc1(x.flatten(1)))))[0]  # (100,)
        return int((hidden * model.fc3.weight[target]).argmax())


def test_agreement_is_one_for_identical_models_and_drops_when_the_top_unit_goes(trained, eval_set):
    model = trained["lenet300"]
    images, targets = eval_set.images[:12], eval_set.labels[:12]
    top = top_hidden_unit(model, images[:1], int(targets[0]))
    cut = load_model("lenet300")
    with torch.no_grad():
        cut.fc2.weight[top] = 0
        cut.fc2.bias[top] = 0
    before = snapshot(model)
    progress = []
    curve = agreement_curve(
        "gradient", model, {0.5: cut, 0.0: model}, images, targets, progress=progress.append
    )
    assert isinstance(curve, AgreementCurve) and curve.method == "gradient"
    assert curve.amounts == (0.0, 0.5) and curve.fraction == 0.1
    same, without_top = curve  # by increasing amount
    assert progress == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert same.compared == 12 and same.excluded == 0
    assert all(v == pytest.approx(1.0) for v in same.rank_correlations)
    assert all(v == 1.0 for v in same.overlaps)
    assert same.mean_rank_correlation == pytest.approx(1.0)
    assert without_top.rank_correlations[0] < 1 and without_top.overlaps[0] < 1
    assert without_top.mean_rank_correlation < 1
    assert hooks_of(model) == [] and hooks_of(cut) == []
    assert_unchanged(model, before)
    # the same image through agreement_per_sample: the same numbers
    (sample,) = agreement_per_sample("gradient", model, cut, images[:1], targets[:1])
    assert sample.target == int(targets[0]) and sample.compared and sample.reason == ""
    assert sample.rank_correlation == pytest.approx(without_top.rank_correlations[0])
    assert sample.top_overlap == pytest.approx(without_top.overlaps[0])


def test_agreement_leaves_out_and_counts_maps_that_are_zero(eval_set):
    model = seeded(lenet5, seed=3)
    dead = seeded(lenet5, seed=3)
    with torch.no_grad():
        dead.fc3.weight.zero_()  # every logit constant: every gradient map is exactly zero
    images, targets = eval_set.images[:3], eval_set.labels[:3]
    samples = agreement_per_sample("gradient", model, dead, images, targets, fraction=0.2)
    assert [s.compared for s in samples] == [False] * 3
    assert all(np.isnan(s.rank_correlation) and np.isnan(s.top_overlap) for s in samples)
    assert all("pruned map is ≈ 0" in s.reason for s in samples)
    (point,) = agreement_curve("gradient", model, {0.9: dead}, images, targets)
    assert point.compared == 0 and point.excluded == 3
    assert np.isnan(point.mean_rank_correlation) and np.isnan(point.mean_overlap)


def test_top_k_overlap_by_hand():
    a = np.arange(10.0).reshape(2, 5)  # top 20% = flat 8, 9
    b = np.array([[0, 0, 0, 0, 0], [0, 0, 0, 5, 9.0]])  # top 20% = flat 9, 8
    assert top_k_overlap(a, b, 0.2) == 1.0
    c = np.array([[9.0, 5, 0, 0, 0], [0, 0, 0, 0, 1]])  # top 20% = flat 0, 1
    assert top_k_overlap(a, c, 0.2) == 0.0
    assert top_k_overlap(a, c, 0.3) == pytest.approx(1 / 5)  # {7,8,9} vs {0,1,9}
    assert np.isnan(top_k_overlap(a, np.ones((2, 5))))


def test_agreement_curve_figure_draws_the_means_and_each_image():
    points = (
        AgreementPoint(0.3, (1.0, 0.8, float("nan")), (1.0, 0.6, float("nan"))),
        AgreementPoint(0.9, (0.2, -0.6, 0.1), (0.1, 0.0, 0.2)),
    )
    fig = agreement_curve_figure(AgreementCurve("gradient", 0.1, points), current=0.5)
    means = [t for t in fig.data if t.mode == "lines+markers"]
    dots = [t for t in fig.data if t.mode == "markers"]
    assert [t.name for t in means] == ["mean rank correlation", "mean top-10% overlap"]
    assert list(means[0].x) == [30.0, 90.0]
    np.testing.assert_allclose(means[0].y, [0.9, -0.1])  # (0.2 - 0.6 + 0.1) / 3
    np.testing.assert_allclose(means[1].y, [0.8, 0.1])
    assert len(dots[0].x) == 5  # the nan image is left out of the dots
    assert fig.layout.yaxis.range[0] <= -0.6 and fig.layout.yaxis.range[1] >= 1
    assert "of %{customdata[1]} images" in means[0].hovertemplate
    # a plain list of points draws the same
    assert len(agreement_curve_figure(list(points)).data) == len(fig.data)
