"""Decision paths against oracles: captum's layer attribution, a tiny MLP by hand, a unit cut
by hand, the per-sample loop for the class map; and the side effects (hooks, weights, mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerGradientXActivation
from torch import nn

from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import PrunedState
from explorer.inside.decision_paths import (
    class_unit_map,
    compare_paths,
    decision_path,
    default_layers,
    heads_column,
    path_layers,
    top_units,
    unit_contributions,
)
from explorer.plots.paths import class_unit_figure, path_graph_figure
from explorer.zoo.models import load_model
from tests.unit.conftest import BUNDLED, assert_unchanged, hooks_of, snapshot

MODELS = BUNDLED


def by_hand_state(masks: dict[str, torch.Tensor]) -> PrunedState:
    """A pruned state that only knows its masks (what ``compare_paths`` reads)."""
    return PrunedState(PruningPlan(), [], {}, {}, masks, {}, {}, ())


# --- contributions against oracles --------------------------------------------------------------


@pytest.mark.parametrize(("name", "layer"), [("lenet5", "conv2"), ("lenet300", "fc1")])
def test_contributions_equal_captums_gradient_x_activation(benches, eval_set, name, layer):
    model = benches[name].model
    x, target = eval_set.images[:4], eval_set.labels[:4]
    got = unit_contributions(model, x, target, [layer])[0][layer]  # one batched pass
    for i in range(4):
        captum = LayerGradientXActivation(model, model.get_submodule(layer)).attribute(
            x[i : i + 1], target=int(target[i])
        )
        expected = captum.sum(dim=(2, 3)) if captum.ndim == 4 else captum
        np.testing.assert_allclose(
            got[i].numpy(), expected[0].detach().double().numpy(), rtol=1e-4, atol=1e-6
        )
    assert hooks_of(model) == []


def test_head_contributions_equal_captum_on_the_projection_input(benches, eval_set):
    model = benches["vit_tiny"].model
    heads = benches["vit_tiny"].pruner.structure.heads[1]
    x, target = eval_set.images[:1], int(eval_set.labels[0])
    got = unit_contributions(model, x, [target], [heads_column(heads)])[0][heads_column(heads)]
    captum = LayerGradientXActivation(
        model, model.get_submodule(heads.proj), multiply_by_inputs=True
    ).attribute(x, target=target, attribute_to_layer_input=True)
    # (1, tokens, heads * d): head h owns the slice h*d:(h+1)*d of the projection's input
    expected = captum.reshape(1, -1, heads.num_heads, heads.head_dim).sum((1, 3))
    np.testing.assert_allclose(got.numpy(), expected.detach().double().numpy(), atol=1e-6)
    assert hooks_of(model) == []


def tiny_mlp() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[3.0, -1.0, 5.0], [1.0, 1.0, 1.0]]))
        model[2].bias.copy_(torch.tensor([0.5, -2.0]))
    return model.eval()


def test_a_tiny_mlp_by_hand():
    model, x = tiny_mlp(), torch.tensor([[1.0, 0.5]])
    # hidden pre-activations h = (1, 1, -1.5); logit 0 = 3 relu(h0) - relu(h1) + 5 relu(h2) + .5
    # so d logit0 / d h = (3, -1, 0) (h2 is cut by the ReLU) and h * grad = (3, -1, 0);
    # for logit 1 the gradient is (1, 1, 0) and h * grad = (1, 1, 0)
    contributions, logits = unit_contributions(model, x.repeat(2, 1), [0, 1], ["0"])
    np.testing.assert_allclose(contributions["0"].numpy(), [[3.0, -1.0, 0.0], [1.0, 1.0, 0.0]])
    # before a linear read-out the contributions add up to the logit minus its bias
    np.testing.assert_allclose(
        contributions["0"].sum(1).numpy(), logits[:, [0, 1]].diag().numpy() - [0.5, -2]
    )
    path = decision_path(model, x, 0, ["0"], top_k=3)
    assert path.layer("0").top == (0,)  # only positive contributions are on the path
    assert decision_path(model, x, 1, ["0"], top_k=1).layer("0").top == (0,)  # tie: lower index
    assert top_units(np.array([0.5, 2.0, -1.0, 2.0]), 2) == (1, 3)
    assert path.prediction == int(logits[0].argmax())
    with pytest.raises(ValueError, match="class indices"):
        decision_path(model, x, 2, ["0"])
    with pytest.raises(ValueError, match="unknown layer"):
        decision_path(model, x, 0, ["nope"])


class PositionBias(nn.Module):
    """A layer computed from fixed coordinates, not from the input (Swin V2's position-bias
    MLP): it carries no decision, so it is no column of a path."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden, self.bias_mlp, self.out = nn.Linear(4, 3), nn.Linear(2, 3), nn.Linear(3, 2)
        self.register_buffer("coords", torch.tensor([[0.5, -1.0]]))

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)) + self.bias_mlp(self.coords))


def test_a_layer_that_does_not_depend_on_the_input_is_no_column():
    model, x = PositionBias().eval(), torch.randn(1, 4)
    path = decision_path(model, x, 0)
    assert [layer.name for layer in path.layers] == ["hidden"]
    alone = decision_path(model, x, 0, ["hidden"])
    np.testing.assert_array_equal(
        path.layer("hidden").contributions, alone.layer("hidden").contributions
    )
    with pytest.raises(ValueError, match="on the way from the input"):
        decision_path(model, x, 0, ["bias_mlp"])


def test_default_columns_are_the_hidden_layers_and_heads_in_execution_order(benches):
    for bench in benches.values():
        structure = bench.pruner.structure
        layers = path_layers(structure, heads=True)
        assert default_layers(bench.model, bench.eval_set.input_shape) == layers
        assert structure.output_layer not in layers
    assert path_layers(benches["lenet300"].pruner.structure) == ["fc1", "fc2"]
    vit = path_layers(benches["vit_tiny"].pruner.structure, heads=True)
    assert vit.index("block1.attn:heads") == vit.index("block1.attn.proj") - 1
    assert "block1.attn:heads" not in path_layers(benches["vit_tiny"].pruner.structure)


# --- dense against pruned -----------------------------------------------------------------------


def test_the_path_changes_when_its_top_unit_is_cut(benches, eval_set):
    bench = benches["lenet300"]
    x, target = eval_set.images[:1], int(eval_set.labels[0])
    dense_path = decision_path(bench.model, x, target, ["fc1", "fc2"])
    top = dense_path.layer("fc2").top[0]
    # cut it by hand: its weight row and bias to zero, its mask row to zero
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
    assert comparison.layers == ("fc1", "fc2")
    assert comparison.cut("fc2") == (top,) and comparison.cut("fc1") == ()
    assert comparison.removed["fc2"].sum() == 1
    assert comparison.survival("fc2") == pytest.approx(1 - 1 / len(dense_path.layer("fc2").top))
    assert comparison.survival("fc1") == 1.0
    assert top not in comparison.pruned.layer("fc2").top
    assert comparison.weights_pruned["fc2"][top] == 1.0
    path = dense_path.layer("fc2")
    share = path.contributions[top] / path.contributions[list(path.top)].sum()
    assert comparison.weighted_survival("fc2") == pytest.approx(1 - share)
    assert comparison.total_survival < 1 and comparison.total_weighted_survival < 1
    assert_unchanged(bench.model, before)
    assert hooks_of(bench.model) == [] and hooks_of(pruned) == []
    figure = path_graph_figure(comparison, bench.eval_set.classes, {"fc1": "hidden 1"})
    cut = [t for t in figure.data if t.name == "on the dense path, removed by the plan"]
    assert len(cut) == 1 and list(cut[0].x) == [2]
    assert "removed by the plan" in cut[0].hovertext[0]
    assert "hidden 1" in figure.layout.xaxis.ticktext
    notes = [a.text for a in figure.layout.annotations]
    # after the two panel titles, per column: kept (dense panel), still on the path (pruned)
    assert notes[2] == "5/5" and notes[4] == "4/5"
    assert figure.layout.height <= 480  # two columns of five units: no scrolling at 800 px


def test_a_plan_compared_without_its_pruned_model_gives_the_same_paths(benches, eval_set):
    bench = benches["lenet5"]
    state = bench.resolve(PruningPlan(method="filters", amount=0.6))
    x, structure = eval_set.images[3:4], bench.pruner.structure
    built = compare_paths(bench.model, bench.pruner.pruned_model(state), state, x, 0, structure)
    substituted = compare_paths(bench.model, None, state, x, 0, structure)
    for a, b in zip(built.pruned.layers, substituted.pruned.layers, strict=True):
        np.testing.assert_allclose(a.contributions, b.contributions, rtol=1e-5, atol=1e-7)
    assert any(built.cut(layer) for layer in built.layers)
    for layer in built.layers:
        removed = built.removed[layer]
        assert not (set(np.flatnonzero(removed)) & set(built.pruned.layer(layer).top))


def test_the_dense_model_against_itself_keeps_its_whole_path(benches, eval_set):
    bench = benches["lenet5"]
    state = bench.resolve(PruningPlan())
    comparison = compare_paths(
        bench.model, bench.model, state, eval_set.images[:1], 7, bench.pruner.structure
    )
    assert comparison.total_survival == 1.0 and comparison.total_still_on_path == 1.0
    assert comparison.total_weighted_survival == 1.0
    for layer in comparison.layers:
        assert comparison.survival(layer) == 1.0
        assert comparison.dense.layer(layer).top == comparison.pruned.layer(layer).top
        assert comparison.new_units(layer) == ()


def test_coupled_channels_are_one_unit_of_removal(benches, eval_set):
    bench = benches["resnet_mini"]
    structure = bench.pruner.structure
    for method in ("filters", "channels"):
        state = bench.resolve(PruningPlan(method=method, amount=0.5))
        pruned = bench.pruner.pruned_model(state)
        spanning = []
        for i in range(6):
            x, target = eval_set.images[i : i + 1], int(eval_set.labels[i])
            comparison = compare_paths(bench.model, pruned, state, x, target, structure)
            keys = [(g.group, g.channel) for g in comparison.removed_groups]
            assert len(keys) == len(set(keys))  # each removed group channel once
            cut = sum(len(comparison.cut(layer)) for layer in comparison.layers)
            assert sum(len(g.layers) for g in comparison.removed_groups) == cut
            for group in comparison.removed_groups:
                for layer in group.layers:
                    assert structure.channel_group_of(layer).name == group.group
                    unit = next(
                        u
                        for u in comparison.cut(layer)
                        if comparison.group_of(layer, u) == (group.group, group.channel)
                    )
                    assert comparison.removed[layer][unit]
            spanning += [(g, comparison) for g in comparison.removed_groups if len(g.layers) > 1]
        # a residual channel on the path in several producer layers is removed once, and the
        # figure draws it as one: its × marks joined by one line
        group, comparison = spanning[0]
        residual = structure.channel_group_of(group.layers[0])
        assert group.group == residual.name and set(group.layers) <= set(residual.producers)
        figure = path_graph_figure(comparison)
        joined = [t for t in figure.data if t.name == "one coupled channel, removed once"]
        assert len(joined) == sum(len(g.layers) > 1 for g in comparison.removed_groups)
        assert group.label in " ".join(t.hovertext for t in joined)


def test_the_vision_transformer_has_a_path_through_its_heads_and_linear_layers(benches, eval_set):
    bench = benches["vit_tiny"]
    structure = bench.pruner.structure
    state = bench.resolve(PruningPlan(method="heads", amount=0.5))
    pruned = bench.pruner.pruned_model(state)
    before = snapshot(bench.model)
    comparison = compare_paths(bench.model, pruned, state, eval_set.images[:1], 3, structure)
    assert "block1.attn.qkv" in comparison.layers and "block1.fc1" in comparison.layers
    for heads in structure.heads:
        column = heads_column(heads)
        removed = ~state.keeps[heads.name].numpy() if heads.name in state.keeps else False
        np.testing.assert_array_equal(comparison.removed[column], removed)
        np.testing.assert_array_equal(comparison.weights_pruned[column], removed * 1.0)
        # a removed head outputs nothing: it contributes exactly 0 in the pruned model
        assert (comparison.pruned.layer(column).contributions[removed] == 0).all()
        # and its q, k, v rows are removed units of the packed projection
        kept = float(state.keeps[heads.name].double().mean()) if heads.name in state.keeps else 1
        assert comparison.removed[heads.qkv].mean() == pytest.approx(1 - kept)
    figure = path_graph_figure(comparison, bench.eval_set.classes)
    ticks = list(figure.layout.xaxis.ticktext)
    groups = [a.text for a in figure.layout.annotations]
    # grouped under their module's bracket, or written whole (vertically) when crowded
    assert "block1.attn heads" in ticks or ("heads" in ticks and "block1.attn" in groups)
    assert_unchanged(bench.model, before)
    assert hooks_of(bench.model) == [] and hooks_of(pruned) == []


# --- many inputs --------------------------------------------------------------------------------


def per_sample_map(model, images, labels, layer, classes, top_k):
    """The oracle: one decision path per image, counted by class."""
    counts = np.zeros((classes, 0))
    for i in range(len(images)):
        path = decision_path(model, images[i : i + 1], int(labels[i]), [layer], top_k)
        if counts.shape[1] == 0:
            counts = np.zeros((classes, path.layer(layer).size))
        counts[int(labels[i]), list(path.layer(layer).top)] += 1
    members = np.bincount(labels.numpy(), minlength=classes)[:, None]
    return np.divide(counts, members, out=np.zeros_like(counts), where=members > 0)


def test_class_unit_map_equals_the_per_sample_loop(benches, eval_set):
    model = benches["lenet5"].model
    images, labels = eval_set.images[:40], eval_set.labels[:40]
    got = class_unit_map(model, images, labels, "conv2", 10, top_k=3, batch_size=16)
    np.testing.assert_allclose(got, per_sample_map(model, images, labels, "conv2", 10, 3))
    assert got.shape == (10, 16) and ((got >= 0) & (got <= 1)).all()
    present = np.bincount(labels.numpy(), minlength=10) > 0
    np.testing.assert_allclose(got[present].sum(1), 3, atol=1e-12)  # 3 units per input
    figure = class_unit_figure(got, eval_set.classes, "conv2", np.arange(16) < 2)
    marks = [t for t in figure.data if t.name == "removed by the plan"]
    assert list(marks[0].x) == [0, 1]


def test_batchnorm_samples_stay_independent_even_for_a_model_in_train_mode(benches, eval_set):
    model = benches["resnet_mini"].model.train()  # the caller's mode must not leak in
    try:
        before = snapshot(model)
        images, labels = eval_set.images[:8], eval_set.labels[:8]
        got = class_unit_map(model, images, labels, "block2.conv1", 10, batch_size=8)
        np.testing.assert_allclose(
            got, per_sample_map(model, images, labels, "block2.conv1", 10, 5)
        )
        assert model.training  # running statistics and mode untouched
        assert_unchanged(model, before)
    finally:
        model.eval()


def test_no_hooks_gradients_or_changes_are_left_on_any_model(benches, eval_set):
    x, labels = eval_set.images[:4], eval_set.labels[:4]
    for bench in benches.values():
        before = snapshot(bench.model)
        layers = path_layers(bench.pruner.structure, heads=True)
        decision_path(bench.model, x[:1], 1)
        class_unit_map(bench.model, x, labels, layers[-1], 10)
        compare_paths(bench.model, None, bench.resolve(PruningPlan(amount=0.5)), x[:1], 2)
        assert hooks_of(bench.model) == []
        assert_unchanged(bench.model, before)


def test_column_names_stay_whole_short_under_their_module_or_vertical():
    from explorer.plots.paths import column_ticks

    names = ["features.3.attn.qkv", "features.3.attn:heads", "features.3.attn.proj", "head"]
    columns = column_ticks(names)
    assert columns.ticks == ["qkv", "heads", "proj", "head"] and not columns.vertical
    assert columns.groups == [("features.3.attn", 1, 3)]  # column 0 is the input
    # each group with its tick gives the full name back
    many = [f"encoder.layers.encoder_layer_{i}.mlp.{j}" for i in range(12) for j in (0, 3)]
    crowded = column_ticks(many)
    assert crowded.vertical and crowded.groups == [] and crowded.ticks == many
    assert column_ticks(["fc1"], {"fc1": "hidden 1"}).ticks == ["hidden 1"]
