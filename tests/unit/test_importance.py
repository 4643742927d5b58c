"""Importance criteria against scores computed by hand (autograd, forward hooks)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from explorer.engine import importance
from explorer.engine.evaluation import evaluate
from explorer.engine.importance import (
    CRITERIA,
    TAYLOR_BATCH,
    ScoringContext,
    UnsupportedCriterion,
    get_criterion,
)
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.engine.structure import ModelStructure
from explorer.engine.workbench import CALIBRATION_SIZE
from explorer.zoo.mnist import calibration_batch
from explorer.zoo.models import lenet5, lenet_300_100, load_model, vit_tiny
from tests.unit.conftest import (
    INPUT_SHAPE,
    assert_unchanged,
    prunable,
    require_trained,
    seeded,
    snapshot,
)


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


def taylor_by_hand(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int
) -> dict[str, torch.Tensor]:
    """Per prunable layer: sqrt(mean over mini-batches b of (dL_b/dw * w)^2), L_b the mean
    cross-entropy on the b-th run of ``batch`` images; autograd on a copy, one batch at a time."""
    reference = copy.deepcopy(model)
    layers = dict(prunable(reference))
    weights = [module.weight for module in layers.values()]
    squares: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for start in range(0, len(images), batch):
        x, y = images[start : start + batch], labels[start : start + batch]
        grads = torch.autograd.grad(F.cross_entropy(reference(x), y), weights)
        for name, weight, grad in zip(layers, weights, grads, strict=True):
            squares[name].append((grad * weight).detach() ** 2)
    return {name: torch.stack(parts).mean(0).sqrt() for name, parts in squares.items()}


def old_taylor_by_hand(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """|dL/dw * w| with L the mean loss over all images: the estimator this one replaced."""
    return taylor_by_hand(model, images, labels, batch=len(images))


def test_taylor_scores_are_the_rms_of_minibatch_grad_times_weight_by_autograd(
    lenet5_trained, lenet5_pruner, calibration
):
    before = snapshot(lenet5_trained)
    assert len(calibration) > TAYLOR_BATCH  # several mini-batches, or this tests nothing new
    expected = taylor_by_hand(lenet5_trained, calibration.images, calibration.labels, TAYLOR_BATCH)
    old = old_taylor_by_hand(lenet5_trained, calibration.images, calibration.labels)
    taylor = get_criterion("taylor")
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        scores = taylor.weight_scores(lenet5_pruner.context, name)
        assert expected[name].max() > 0  # the oracle is not trivially zero
        torch.testing.assert_close(scores, expected[name], rtol=1e-4, atol=1e-9)
        # The oracle tells the estimators apart: |mean gradient x w| ranks differently.
        assert not torch.equal(scores.argsort(), old[name].argsort()), name
    assert_unchanged(lenet5_trained, before)  # no .grad, no change


def test_taylor_averages_over_a_short_last_mini_batch(monkeypatch, calibration):
    # A tiny MLP and 10 images in mini-batches of 4: 4 + 4 + 2, the last one shorter.
    torch.manual_seed(3)
    model = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(784, 12),
            relu=nn.ReLU(),
            fc2=nn.Linear(12, 10),
        )
    ).eval()
    images, labels = calibration.images[:10], calibration.labels[:10]
    monkeypatch.setattr(importance, "TAYLOR_BATCH", 4)
    pruner = Pruner(model, INPUT_SHAPE, calibration.subset(torch.arange(10)))
    expected = taylor_by_hand(model, images, labels, batch=4)
    for name in ("fc1", "fc2"):
        scores = get_criterion("taylor").weight_scores(pruner.context, name)
        torch.testing.assert_close(scores, expected[name], rtol=1e-5, atol=1e-9)
        assert not torch.allclose(scores, taylor_by_hand(model, images, labels, 5)[name])


def test_scoring_never_touches_the_shared_model(calibration):
    # Other sessions run the shared model meanwhile: scoring must not call it (hooks would
    # record their inputs, swapped parameters would be seen), nor change .grad / requires_grad.
    model = seeded(lenet5)
    model.fc1.weight.requires_grad_(False)
    model.conv2.weight.grad = torch.full_like(model.conv2.weight, 0.5)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = snapshot(model)
    calls = []  # a deep copy carries the hook along, so count calls on *this* module only
    handle = model.register_forward_pre_hook(lambda m, _inputs: calls.append(m is model))
    try:
        pruner = Pruner(model, INPUT_SHAPE, calibration)
        pruner.units("filters")  # tracing the structure runs the model (once); scoring may not
        calls.clear()
        for criterion in ("taylor", "activation"):
            get_criterion(criterion).weight_scores(pruner.context, "fc1")
        pruner.resolve(PruningPlan(method="filters", criterion="taylor", amount=0.3))
    finally:
        handle.remove()
    assert calls and not any(calls)  # the copies ran, the shared model did not
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert torch.equal(model.conv2.weight.grad, torch.full_like(model.conv2.weight, 0.5))
    model.conv2.weight.grad = None
    assert_unchanged(model, before)


def test_taylor_unstructured_prunes_what_torch_prunes_with_the_hand_scores(
    lenet5_trained, lenet5_pruner, calibration
):
    expected = taylor_by_hand(lenet5_trained, calibration.images, calibration.labels, TAYLOR_BATCH)
    state = lenet5_pruner.resolve(PruningPlan(criterion="taylor", scope="layer", amount=0.5))
    for name in ("conv2", "fc1"):
        module = copy.deepcopy(lenet5_trained.get_submodule(name))
        prune.l1_unstructured(module, "weight", amount=0.5, importance_scores=expected[name])
        assert torch.equal(state.masks[f"{name}.weight"], module.weight_mask), name


def pruned_accuracy(name: str, fit_set, eval_set, plan: PruningPlan) -> float:
    """Eval accuracy of zoo model ``name`` pruned by ``plan``, calibrated as the app does."""
    require_trained(name)
    pruner = Pruner(load_model(name), INPUT_SHAPE, calibration_batch(fit_set, CALIBRATION_SIZE))
    return evaluate(pruner.pruned_model(plan), eval_set).accuracy


def test_taylor_keeps_up_with_magnitude_on_lenet5_at_half_sparsity(fit_set, eval_set):
    # Measured (app calibration, 5,000 eval images): magnitude 98.9%, taylor 98.8% (the
    # |mean gradient x w| it replaced: 98.7%); over 6 calibration draws taylor was at most
    # 0.7 points below. One point of margin.
    accuracy = {
        criterion: pruned_accuracy(
            "lenet5", fit_set, eval_set, PruningPlan(criterion=criterion, amount=0.5)
        )
        for criterion in ("magnitude", "taylor")
    }
    assert accuracy["taylor"] >= accuracy["magnitude"] - 0.01, accuracy


def test_taylor_beats_the_mean_gradient_on_vit_tiny_at_half_sparsity(fit_set, eval_set):
    # vit_tiny was trained with label smoothing, so its gradients are not ~0 and Taylor has
    # something to say. Measured: magnitude 95.4%, taylor 97.3%, |mean gradient x w| 82.8%
    # (mean over 3 calibration draws: 95.4 / 96.5 / 85.0). Bound: magnitude - 1 point.
    accuracy = {
        criterion: pruned_accuracy(
            "vit_tiny", fit_set, eval_set, PruningPlan(criterion=criterion, amount=0.5)
        )
        for criterion in ("magnitude", "taylor")
    }
    assert accuracy["taylor"] >= accuracy["magnitude"] - 0.01, accuracy


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
        PruningPlan(method="filters", criterion="apoz", scope="layer", unit_amounts=(("fc1", 0.3),))
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
