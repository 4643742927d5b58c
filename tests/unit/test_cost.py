"""Costs: parameter / FLOP counts under a plan by hand, the sparse encoding, saved sizes."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from explorer.engine.compaction import compact
from explorer.engine.cost import decode_sparse, model_cost, size_report, sparse_encoding
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.zoo.models import lenet_300_100
from tests.unit.conftest import INPUT_SHAPE, seeded

TOTAL = 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
WEIGHTS = {"fc1": 784 * 300, "fc2": 300 * 100, "fc3": 100 * 10}
FLOPS = {name: 2 * n for name, n in WEIGHTS.items()}


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    model = seeded(lenet_300_100)
    assert sum(int(torch.count_nonzero(p)) for p in model.parameters()) == TOTAL  # no zeros yet
    return model


@pytest.fixture(scope="module")
def pruner(mlp) -> Pruner:
    return Pruner(mlp, INPUT_SHAPE)


def saved_bytes(obj: object) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return len(buffer.getvalue())


def test_dense_cost_by_hand(pruner):
    cost = model_cost(pruner)
    assert cost.params_total == cost.params_nonzero == TOTAL
    assert cost.flops_dense == cost.flops_effective == sum(FLOPS.values())
    assert cost.sparsity == 0.0 and cost.prunable_sparsity == 0.0
    assert {la.name: (la.weights, la.nonzero, la.flops_dense) for la in cost.layers} == {
        name: (n, n, FLOPS[name]) for name, n in WEIGHTS.items()
    }


def test_unstructured_cost_by_hand(pruner):
    amounts = {"fc1": 0.9, "fc2": 0.5, "fc3": 0.25}
    plan = PruningPlan(scope="layer", unit_amounts=tuple(amounts.items()))
    cost = model_cost(pruner, pruner.resolve(plan))
    pruned = {name: round(amounts[name] * n) for name, n in WEIGHTS.items()}
    assert cost.params_total == TOTAL
    assert cost.params_nonzero == TOTAL - sum(pruned.values())
    assert cost.sparsity == pytest.approx(sum(pruned.values()) / TOTAL)
    assert cost.prunable_sparsity == pytest.approx(sum(pruned.values()) / sum(WEIGHTS.values()))
    saved = 0
    for layer in cost.layers:
        n = WEIGHTS[layer.name]
        assert layer.nonzero == n - pruned[layer.name]
        assert layer.sparsity == pytest.approx(amounts[layer.name], abs=1 / n)
        # Only multiply-adds with a nonzero weight are counted as effective.
        assert layer.flops_effective == round(FLOPS[layer.name] * (n - pruned[layer.name]) / n)
        saved += FLOPS[layer.name] - layer.flops_effective
    assert cost.flops_effective == sum(FLOPS.values()) - saved


def test_a_removed_neuron_zeroes_its_row_bias_and_the_next_layers_column(pruner):
    plan = PruningPlan(method="filters", scope="layer", unit_amounts=(("fc1", 0.5),))
    cost = model_cost(pruner, pruner.resolve(plan))
    removed = 150
    assert cost.params_nonzero == TOTAL - removed * (784 + 1 + 100)
    layers = {la.name: la for la in cost.layers}
    assert layers["fc1"].nonzero == (300 - removed) * 784
    assert layers["fc2"].nonzero == 100 * (300 - removed)
    assert layers["fc3"].nonzero == WEIGHTS["fc3"]


@pytest.mark.parametrize(
    "tensor",
    [
        torch.tensor(0.0),
        torch.tensor(3.5),
        torch.zeros(13),
        torch.arange(1.0, 10.0),
        torch.tensor([0.0, -0.0, 1.0, 0.0, -2.5, 0.0, 0.0, 0.0, 7.0]),
        torch.randn(3, 5, 7).masked_fill(torch.rand(3, 5, 7) < 0.8, 0.0),
        torch.randn(4, 9, dtype=torch.float64).masked_fill(torch.rand(4, 9) < 0.5, 0.0),
        torch.randint(-3, 3, (6, 11)),
    ],
    ids=["0d-zero", "0d", "all-zero", "no-zero", "signed-zeros", "3d", "float64", "int"],
)
def test_sparse_encoding_round_trips(tensor):
    encoded = sparse_encoding(tensor)
    decoded = decode_sparse(encoded)
    assert decoded.shape == tensor.shape
    assert decoded.dtype == tensor.dtype
    assert torch.equal(decoded, tensor)
    nonzero = int(torch.count_nonzero(tensor))
    assert encoded["values"].numel() == nonzero
    assert encoded["bitmap"].numel() == math.ceil(max(tensor.numel(), 1) / 8)  # 1 bit per entry


def test_size_report_by_hand(mlp, pruner):
    dense_bytes = saved_bytes(mlp.state_dict())
    unpruned = size_report(mlp, pruner.resolve(PruningPlan()))
    assert unpruned.dense == dense_bytes
    # Nothing is sparse enough to encode: the same tensors, as a plain dict (no state_dict
    # metadata).
    assert unpruned.sparse == saved_bytes(dict(mlp.state_dict()))
    assert unpruned.compacted is None

    sparse = size_report(mlp, pruner.resolve(PruningPlan(amount=0.9)))
    assert sparse.dense == dense_bytes
    # 1 bit of bitmap + 10% of the 32-bit values per weight: about 13% of the dense size.
    assert sparse.sparse < 0.2 * dense_bytes

    plan = PruningPlan(method="filters", amount=0.5)
    state = pruner.resolve(plan)
    small = compact(pruner, state)
    report = size_report(mlp, state, small)
    assert report.compacted == saved_bytes(small.state_dict())
    assert report.compacted < dense_bytes
