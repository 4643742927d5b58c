"""Importance criteria against scores computed by hand (autograd, forward hooks)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from explorer.importance import (
    CRITERIA,
    ScoringContext,
    UnsupportedCriterion,
    get_criterion,
)
from explorer.models import lenet5, lenet_300_100, load_model, vit_tiny
from explorer.plan import PruningPlan
from explorer.pruning import Pruner
from explorer.structure import ModelStructure
from tests.unit.conftest import INPUT_SHAPE, assert_unchanged, seeded, snapshot


def inputs_of(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """What ``layer`` receives for ``images``, captured by a forward hook."""
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, inputs, _out: seen.append(inputs[0].detach())
    )
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return seen[0]


def outputs_of(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _inputs, out: seen.append(out.detach())
    )
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return seen[0]


@pytest.fixture(scope="module")
def lenet5_trained() -> nn.Module:
    return load_model("lenet5")


@pytest.fixture(scope="module")
def lenet5_pruner(lenet5_trained, calibration) -> Pruner:
    return Pruner(lenet5_trained, INPUT_SHAPE, calibration)


@pytest.fixture(scope="module")
def mlp_trained() -> nn.Module:
    return load_model("lenet300")


@pytest.fixture(scope="module")
def mlp_pruner(mlp_trained, calibration) -> Pruner:
    return Pruner(mlp_trained, INPUT_SHAPE, calibration)


def test_registry_names_the_choices():
    assert {"magnitude", "random", "taylor", "activation", "apoz"} <= set(CRITERIA)
    with pytest.raises(ValueError, match=r"unknown criterion 'l0'.*'magnitude'"):
        get_criterion("l0")


def test_magnitude_is_the_absolute_weight(lenet5_pruner, lenet5_trained):
    scores = get_criterion("magnitude").weight_scores(lenet5_pruner.context, "conv2")
    assert torch.equal(scores, lenet5_trained.conv2.weight.detach().abs())


def test_taylor_scores_equal_abs_grad_times_weight_by_autograd(
    lenet5_trained, lenet5_pruner, calibration
):
    before = snapshot(lenet5_trained)
    # By hand: mean cross-entropy on the same calibration batch, backward on a copy.
    reference = copy.deepcopy(lenet5_trained)
    loss = F.cross_entropy(reference(calibration.images), calibration.labels)
    loss.backward()
    taylor = get_criterion("taylor")
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        module = reference.get_submodule(name)
        expected = (module.weight.grad * module.weight).abs().detach()
        scores = taylor.weight_scores(lenet5_pruner.context, name)
        assert expected.abs().max() > 0  # the oracle is not trivially zero
        torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-9)
    assert_unchanged(lenet5_trained, before)  # no .grad, no change


def test_taylor_unstructured_prunes_what_torch_prunes_with_the_hand_scores(
    lenet5_trained, lenet5_pruner, calibration
):
    reference = copy.deepcopy(lenet5_trained)
    F.cross_entropy(reference(calibration.images), calibration.labels).backward()
    state = lenet5_pruner.resolve(PruningPlan(criterion="taylor", scope="layer", amount=0.5))
    for name in ("conv2", "fc1"):
        original = reference.get_submodule(name)
        scores = (original.weight.grad * original.weight).abs().detach()
        module = copy.deepcopy(original)
        prune.l1_unstructured(module, "weight", amount=0.5, importance_scores=scores)
        assert torch.equal(state.masks[f"{name}.weight"], module.weight_mask), name


def test_activation_weight_scores_are_wanda_by_hand_for_linear(
    mlp_trained, mlp_pruner, calibration
):
    x = inputs_of(mlp_trained, "fc2", calibration.images)  # (N, 300), post-ReLU
    expected = mlp_trained.fc2.weight.detach().abs() * x.norm(dim=0)[None, :]
    scores = get_criterion("activation").weight_scores(mlp_pruner.context, "fc2")
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-7)


def test_activation_weight_scores_are_wanda_by_hand_for_conv(
    lenet5_trained, lenet5_pruner, calibration
):
    x = inputs_of(lenet5_trained, "conv2", calibration.images)  # (N, 6, 14, 14)
    norms = x.transpose(0, 1).reshape(6, -1).norm(dim=1)
    expected = lenet5_trained.conv2.weight.detach().abs() * norms[None, :, None, None]
    scores = get_criterion("activation").weight_scores(lenet5_pruner.context, "conv2")
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-7)


def test_activation_channel_scores_are_mean_abs_activation(mlp_trained, mlp_pruner, calibration):
    a = outputs_of(mlp_trained, "relu1", calibration.images)  # what fc2 reads of fc1's neurons
    group = mlp_pruner.structure.channel_group_of("fc1")
    scores = get_criterion("activation").channel_scores(mlp_pruner.context, group)
    torch.testing.assert_close(scores, a.abs().mean(dim=0), rtol=1e-5, atol=1e-7)


def test_apoz_by_hand_on_a_relu_mlp(mlp_trained, mlp_pruner, calibration):
    a = outputs_of(mlp_trained, "relu1", calibration.images)
    apoz = (a == 0).float().mean(dim=0)
    assert 0 < apoz.mean() < 1  # a ReLU MLP has some zeros, not all
    group = mlp_pruner.structure.channel_group_of("fc1")
    scores = get_criterion("apoz").channel_scores(mlp_pruner.context, group)
    torch.testing.assert_close(scores, 1 - apoz)
    # Pruning by APoZ removes the neurons that are zero most often.
    state = mlp_pruner.resolve(
        PruningPlan(
            method="filters", criterion="apoz", scope="layer", layer_amounts=(("fc1", 0.3),)
        )
    )
    keep = state.keeps["fc1"]
    assert int((~keep).sum()) == round(0.3 * 300)
    assert apoz[~keep].min() >= apoz[keep].max()


def test_apoz_refuses_gelu_activations_with_a_clear_error(calibration):
    pruner = Pruner(seeded(vit_tiny), INPUT_SHAPE, calibration)
    plan = PruningPlan(method="filters", criterion="apoz", amount=0.5)
    with pytest.raises(ValueError, match=r"APoZ needs ReLU-like activations.*GELU"):
        pruner.resolve(plan)
    with pytest.raises(ValueError, match=r"'apoz'.*choose one of"):
        pruner.resolve(PruningPlan(method="heads", criterion="apoz", amount=0.5))


def test_apoz_does_not_score_single_weights(mlp_pruner):
    with pytest.raises(ValueError, match=r"'apoz'.*weights"):
        mlp_pruner.resolve(PruningPlan(criterion="apoz", amount=0.5))


def test_activation_head_scores_are_mean_abs_head_output(calibration):
    model = seeded(vit_tiny, seed=2)
    pruner = Pruner(model, INPUT_SHAPE, calibration)
    heads = pruner.structure.heads[1]
    x = inputs_of(model, "block2.attn.proj", calibration.images)  # (N, 17, 4 * 16)
    expected = x.abs().reshape(-1, 4, 16).mean(dim=(0, 2))
    scores = get_criterion("activation").head_scores(pruner.context, heads)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-7)


def test_data_criteria_need_calibration_data():
    structure = ModelStructure(seeded(lenet_300_100), INPUT_SHAPE)
    context = ScoringContext(structure, calibration=None)
    with pytest.raises(UnsupportedCriterion, match="needs calibration data from the fit split"):
        get_criterion("taylor").weight_scores(context, "fc1")
    with pytest.raises(UnsupportedCriterion, match="needs calibration data"):
        get_criterion("activation").weight_scores(context, "fc1")


def test_random_scores_depend_on_seed_and_layer_only():
    structure = ModelStructure(seeded(lenet5), INPUT_SHAPE)
    context = ScoringContext(structure, seed=1)
    random = get_criterion("random")
    a = random.weight_scores(context, "fc1")
    assert torch.equal(a, random.weight_scores(ScoringContext(structure, seed=1), "fc1"))
    assert not torch.equal(a, random.weight_scores(context.seeded(2), "fc1"))
    assert a.shape == structure.parameters["fc1.weight"].shape
    assert float(a.min()) >= 0 and float(a.max()) < 1
