"""Compaction: the physically smaller model computes what the masked model computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explorer.engine.compaction import can_compact, compact
from explorer.engine.inspection import model_flops
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.zoo.models import lenet5, resnet_mini, vit_tiny
from tests.unit.conftest import (
    INPUT_SHAPE,
    assert_unchanged,
    randomize_batchnorm,
    seeded,
    snapshot,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_equal_and_smaller(pruner: Pruner, plan: PruningPlan, images: torch.Tensor) -> nn.Module:
    state = pruner.resolve(plan)
    masked = pruner.pruned_model(state)
    small = compact(pruner, state)
    with torch.no_grad():
        expected, got = masked(images), small(images)
    assert expected.abs().max() > 1e-2  # outputs are not trivially zero
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert n_params(small) < n_params(pruner.model)
    assert model_flops(small, INPUT_SHAPE) < model_flops(pruner.model, INPUT_SHAPE)
    return small


@pytest.fixture(scope="module")
def lenet5_pruner() -> Pruner:
    return Pruner(seeded(lenet5, seed=1), INPUT_SHAPE)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return randomize_batchnorm(seeded(resnet_mini, seed=2), seed=3)


@pytest.fixture(scope="module")
def resnet_pruner(resnet) -> Pruner:
    return Pruner(resnet, INPUT_SHAPE)


@pytest.mark.parametrize("method", ["filters", "channels"])
def test_lenet5_compacted_equals_masked(lenet5_pruner, eval_images, method):
    plan = PruningPlan(method=method, amount=0.5)
    small = check_equal_and_smaller(lenet5_pruner, plan, eval_images)
    state = lenet5_pruner.resolve(plan)
    # Shapes by hand: every unit loses exactly its pruned channels.
    producer = {u.name: u.detail.producers[0] for u in state.units}  # the layer losing outputs
    for unit in state.units:
        layer = small.get_submodule(producer[unit.name])
        size = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        assert size == unit.size - state.pruned[unit.name]


def test_lenet5_filter_counts_by_hand(lenet5_pruner, eval_images):
    plan = PruningPlan(
        method="filters", scope="layer", unit_amounts=(("conv1", 0.5), ("conv2", 0.25))
    )
    small = check_equal_and_smaller(lenet5_pruner, plan, eval_images)
    assert small.conv1.out_channels == 3 and small.conv2.in_channels == 3
    assert small.conv2.out_channels == 12 and small.fc1.in_features == 12 * 25
    assert small.fc2.in_features == 120  # untouched


def test_lenet5_fully_pruned_unit_still_compacts_to_equal_outputs(lenet5_pruner, eval_images):
    plan = PruningPlan(method="filters", scope="layer", unit_amounts=(("conv2", 1.0),))
    state = lenet5_pruner.resolve(plan)
    assert any("conv2 is pruned 100%" in w for w in state.warnings)
    small = check_equal_and_smaller(lenet5_pruner, plan, eval_images)
    assert small.conv2.out_channels == 1  # one all-zero channel keeps the shapes valid


@pytest.mark.parametrize(
    "plan",
    [
        PruningPlan(method="filters", amount=0.5),
        PruningPlan(method="channels", amount=0.4),
        PruningPlan(
            method="filters",
            scope="layer",
            amount=0.3,
            unit_amounts=(("stem.conv", 0.5), ("block2.conv2", 0.75)),
        ),
    ],
    ids=["filters-global", "channels-global", "filters-layer"],
)
def test_resnet_compacted_equals_masked_with_batchnorm(resnet_pruner, eval_images, plan):
    small = check_equal_and_smaller(resnet_pruner, plan, eval_images)
    state = resnet_pruner.resolve(plan)
    if plan.scope == "layer":
        # The identity skip couples stem.conv and block1.conv2: both shrink to 16.
        assert small.stem.conv.out_channels == small.block1.conv2.out_channels == 16
        assert small.stem.bn.num_features == small.block1.bn2.num_features == 16
        assert small.block2.conv2.out_channels == small.block3.conv2.out_channels == 16
        assert small.fc.in_features == 16
    assert all(state.pruned[u.name] < u.size for u in state.units)


def test_resnet_batchnorm_was_really_exercised(resnet):
    bn = resnet.stem.bn
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.bias, torch.zeros_like(bn.bias))


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return seeded(vit_tiny, seed=4)


@pytest.fixture(scope="module")
def vit_pruner(vit) -> Pruner:
    return Pruner(vit, INPUT_SHAPE)


@pytest.mark.parametrize(
    "plan",
    [
        PruningPlan(method="heads", amount=0.5),
        PruningPlan(method="heads", scope="layer", unit_amounts=(("block2.attn", 1.0),)),
        PruningPlan(method="filters", amount=0.5),
    ],
    ids=["heads-global", "heads-one-block-100", "mlp-filters"],
)
def test_vit_compacted_equals_masked(vit_pruner, eval_images, plan):
    pruner = vit_pruner
    state = pruner.resolve(plan)
    small = check_equal_and_smaller(pruner, plan, eval_images)
    if plan.method == "heads":
        for unit in state.units:
            attn = small.get_submodule(unit.name)
            kept = max(unit.size - state.pruned[unit.name], 1)
            assert attn.num_heads == kept
            assert attn.qkv.out_features == 3 * kept * 16
            assert attn.proj.in_features == kept * 16


@pytest.mark.parametrize("method", ["unstructured", "nm"])
def test_scattered_zeros_cannot_be_compacted(lenet5_pruner, method):
    assert not can_compact(method)
    with pytest.raises(ValueError, match=r"cannot be removed physically.*'channels'.*'filters'"):
        compact(lenet5_pruner, PruningPlan(method=method, amount=0.5))


def test_structured_methods_can_be_compacted():
    assert all(can_compact(m) for m in ("filters", "channels", "heads"))


def test_compaction_leaves_the_dense_model_alone(eval_images):
    model = randomize_batchnorm(seeded(resnet_mini, seed=5), seed=6)
    before = snapshot(model)
    pruner = Pruner(model, INPUT_SHAPE)
    with torch.no_grad():
        dense_out = model(eval_images)
    compact(pruner, PruningPlan(method="filters", amount=0.6))
    assert_unchanged(model, before)
    with torch.no_grad():
        assert torch.equal(model(eval_images), dense_out)
