"""Plans -> masks: exact counts, agreement with torch.nn.utils.prune, errors, exports."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from explorer.engine.compaction import compact
from explorer.engine.cost import model_cost, size_report
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import METHODS, Pruner
from explorer.keep.export import masked_state_dict
from explorer.zoo.models import lenet5, lenet_300_100, resnet_mini, vit_tiny
from tests.unit.conftest import (
    INPUT_SHAPE,
    assert_unchanged,
    distinct_weights,
    prunable,
    randomize_batchnorm,
    seeded,
    snapshot,
)

MLP_LAYERS = ("fc1", "fc2", "fc3")


def zeros(mask: torch.Tensor) -> int:
    return int((mask == 0).sum())


def weight_mask(state, layer: str, like: torch.Tensor) -> torch.Tensor:
    """The mask of ``layer.weight`` in ``state`` (all ones when the layer is not masked)."""
    return state.masks.get(f"{layer}.weight", torch.ones_like(like))


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    """LeNet-300-100 whose weight magnitudes are all distinct (model-wide)."""
    return distinct_weights(seeded(lenet_300_100), seed=1)


@pytest.fixture(scope="module")
def mlp_pruner(mlp) -> Pruner:
    return Pruner(mlp, INPUT_SHAPE)


@pytest.fixture(scope="module")
def tied_mlp() -> nn.Module:
    """LeNet-300-100 whose weights take only six values (+-1, +-2, +-3): ties everywhere."""
    model = seeded(lenet_300_100)
    with torch.no_grad():
        for _, module in prunable(model):
            n = module.weight.numel()
            pattern = torch.tensor([1.0, -2.0, 3.0, -1.0, 2.0, -3.0]).repeat(n // 6 + 1)[:n]
            module.weight.copy_(pattern.reshape(module.weight.shape))
    return model


@pytest.fixture(scope="module")
def tied_pruner(tied_mlp) -> Pruner:
    return Pruner(tied_mlp, INPUT_SHAPE)


AMOUNTS = [0.0, 0.001, 0.1, 0.25, 1 / 3, 0.5, 0.77, 0.999, 1.0]


# --- exact sparsity ----------------------------------------------------------------------------


@pytest.mark.parametrize("amount", AMOUNTS)
def test_layer_scope_prunes_exactly_round_amount_n_per_layer_even_with_ties(
    tied_mlp, tied_pruner, amount
):
    state = tied_pruner.resolve(PruningPlan(scope="layer", amount=amount))
    modules = dict(tied_mlp.named_modules())
    for name in MLP_LAYERS:
        weight = modules[name].weight
        mask = weight_mask(state, name, weight)
        expected = round(amount * weight.numel())
        assert zeros(mask) == expected
        assert state.pruned[name] == expected
        assert int((state.parameters.get(f"{name}.weight", weight) == 0).sum()) == expected
        kept, gone = weight[mask.bool()].abs(), weight[~mask.bool()].abs()
        if len(kept) and len(gone):
            assert gone.max() <= kept.min()  # the smallest magnitudes went first


@pytest.mark.parametrize("amount", AMOUNTS)
def test_global_scope_prunes_exactly_round_amount_n_overall_even_with_ties(
    tied_mlp, tied_pruner, amount
):
    state = tied_pruner.resolve(PruningPlan(scope="global", amount=amount))
    modules = dict(tied_mlp.named_modules())
    weights = [modules[name].weight for name in MLP_LAYERS]
    masks = [weight_mask(state, name, w) for name, w in zip(MLP_LAYERS, weights, strict=True)]
    total = sum(w.numel() for w in weights)
    assert sum(zeros(m) for m in masks) == round(amount * total)
    assert sum(state.pruned.values()) == round(amount * total)
    for name, mask in zip(MLP_LAYERS, masks, strict=True):
        assert state.pruned[name] == zeros(mask)
    kept = torch.cat([w[m.bool()].abs() for w, m in zip(weights, masks, strict=True)])
    gone = torch.cat([w[~m.bool()].abs() for w, m in zip(weights, masks, strict=True)])
    if len(kept) and len(gone):
        assert gone.max() <= kept.min()


@pytest.mark.parametrize("amount", [0.1, 0.5, 0.9])
def test_global_scope_with_an_override_is_exact_for_both_parts(tied_mlp, tied_pruner, amount):
    plan = PruningPlan(amount=amount, unit_amounts=(("fc2", 0.35),))
    state = tied_pruner.resolve(plan)
    modules = dict(tied_mlp.named_modules())
    assert state.pruned["fc2"] == round(0.35 * modules["fc2"].weight.numel())
    rest = modules["fc1"].weight.numel() + modules["fc3"].weight.numel()
    assert state.pruned["fc1"] + state.pruned["fc3"] == round(amount * rest)


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.999, 1.0])
def test_structured_counts_are_exact_when_every_channel_ties(amount):
    model = seeded(lenet_300_100)
    with torch.no_grad():
        for _, module in prunable(model):
            module.weight.fill_(0.5)  # every neuron has the same norm
    pruner = Pruner(model, INPUT_SHAPE)
    for scope in ("layer", "global"):
        state = pruner.resolve(PruningPlan(method="filters", scope=scope, amount=amount))
        if scope == "layer":
            assert state.pruned == {"fc1": round(amount * 300), "fc2": round(amount * 100)}
        else:
            assert sum(state.pruned.values()) == round(amount * 400)
        for name, size in (("fc1", 300), ("fc2", 100)):
            rows = weight_mask(state, name, model.get_submodule(name).weight).amax(dim=1)
            assert zeros(rows) == state.pruned[name] <= size


def test_head_counts_are_exact_with_ties():
    model = seeded(vit_tiny)
    with torch.no_grad():
        for name, module in prunable(model):
            if name.endswith(("qkv", "proj")) and "attn" in name:
                module.weight.fill_(0.1)
    pruner = Pruner(model, INPUT_SHAPE)
    for amount in (0.0, 0.25, 0.5, 0.6, 1.0):
        layer = pruner.resolve(PruningPlan(method="heads", scope="layer", amount=amount))
        assert layer.pruned == {f"block{i}.attn": round(amount * 4) for i in (1, 2, 3)}
        glob = pruner.resolve(PruningPlan(method="heads", scope="global", amount=amount))
        assert sum(glob.pruned.values()) == round(amount * 12)
        for name, count in glob.pruned.items():
            rows = weight_mask(glob, f"{name}.qkv", model.get_submodule(f"{name}.qkv").weight)
            assert zeros(rows.amax(dim=1)) == count * 3 * 16  # q, k and v rows of each head


def test_amount_zero_masks_nothing(mlp, mlp_pruner, eval_images):
    for method in ("unstructured", "filters", "channels", "nm"):
        state = mlp_pruner.resolve(PruningPlan(method=method, amount=0.0))
        assert state.masks == {}
        assert state.parameters == {}
        assert state.warnings == ()
        assert all(count == 0 for count in state.pruned.values())
    pruned = mlp_pruner.pruned_model(PruningPlan(amount=0.0))
    assert torch.equal(pruned(eval_images), mlp(eval_images))


def test_amount_one_zeroes_every_weight_warns_and_the_model_still_runs(mlp, mlp_pruner):
    state = mlp_pruner.resolve(PruningPlan(amount=1.0))
    model = mlp_pruner.pruned_model(state)
    for name in MLP_LAYERS:
        assert torch.count_nonzero(model.get_submodule(name).weight) == 0
        assert any(w.startswith(f"{name} is pruned 100%") for w in state.warnings)
    # With every weight zero, the logits are the last bias whatever the input.
    x = torch.randn(5, *INPUT_SHAPE)
    assert torch.equal(model(x), mlp.fc3.bias.detach().expand(5, -1))


def test_one_layer_at_100_percent_is_allowed_with_a_warning(mlp, mlp_pruner):
    plan = PruningPlan(scope="layer", amount=0.0, unit_amounts=(("fc2", 1.0),))
    state = mlp_pruner.resolve(plan)
    assert state.pruned == {"fc1": 0, "fc2": 100 * 300, "fc3": 0}
    assert len(state.warnings) == 1 and "fc2" in state.warnings[0]
    assert "100%" in state.warnings[0]
    model = mlp_pruner.pruned_model(state)
    # By hand: fc2's output is its bias for every input; the rest is untouched.
    expected = mlp.fc3(torch.relu(mlp.fc2.bias)).detach()
    out = model(torch.randn(3, *INPUT_SHAPE))
    assert torch.allclose(out, expected.expand(3, -1), atol=1e-6)


def test_a_structured_unit_at_100_percent_still_runs_with_a_warning(mlp, mlp_pruner):
    plan = PruningPlan(method="filters", scope="layer", unit_amounts=(("fc1", 1.0),))
    state = mlp_pruner.resolve(plan)
    assert state.pruned["fc1"] == 300
    assert any("fc1 is pruned 100%" in w for w in state.warnings)
    out = mlp_pruner.pruned_model(state)(torch.randn(2, *INPUT_SHAPE))
    expected = mlp.fc3(torch.relu(mlp.fc2.bias)).detach()  # nothing flows through fc1
    assert torch.allclose(out, expected.expand(2, -1), atol=1e-6)


# --- agreement with torch.nn.utils.prune --------------------------------------------------------


def torch_global_masks(model: nn.Module, names, amount: float) -> dict[str, torch.Tensor]:
    copied = copy.deepcopy(model)
    modules = dict(copied.named_modules())
    prune.global_unstructured(
        [(modules[n], "weight") for n in names], pruning_method=prune.L1Unstructured, amount=amount
    )
    return {n: modules[n].weight_mask for n in names}


def torch_layer_mask(module: nn.Module, amount: float, **kwargs) -> torch.Tensor:
    copied = copy.deepcopy(module)
    if "dim" in kwargs:
        prune.ln_structured(copied, "weight", amount=amount, **kwargs)
    else:
        prune.l1_unstructured(copied, "weight", amount=amount, **kwargs)
    return copied.weight_mask


@pytest.mark.parametrize("amount", [0.05, 0.3, 0.8, 0.97])
def test_global_magnitude_equals_torch_global_unstructured(mlp, mlp_pruner, amount):
    state = mlp_pruner.resolve(PruningPlan(scope="global", amount=amount))
    expected = torch_global_masks(mlp, MLP_LAYERS, amount)
    for name in MLP_LAYERS:
        assert torch.equal(state.masks[f"{name}.weight"], expected[name]), name


def test_global_magnitude_equals_torch_on_a_cnn():
    model = distinct_weights(seeded(lenet5), seed=2)
    names = [n for n, _ in prunable(model)]
    state = Pruner(model, INPUT_SHAPE).resolve(PruningPlan(amount=0.6))
    expected = torch_global_masks(model, names, 0.6)
    for name in names:
        assert torch.equal(state.masks[f"{name}.weight"], expected[name]), name


@pytest.mark.parametrize("amount", [0.1, 0.5, 0.9])
def test_layer_wise_magnitude_equals_torch_l1_unstructured(mlp, mlp_pruner, amount):
    plan = PruningPlan(scope="layer", amount=amount, unit_amounts=(("fc3", 0.42),))
    state = mlp_pruner.resolve(plan)
    for name in MLP_LAYERS:
        module = mlp.get_submodule(name)
        expected = torch_layer_mask(module, plan.amount_for(name))
        assert torch.equal(state.masks[f"{name}.weight"], expected), name


def test_global_override_and_dense_layers_equal_torch_on_the_rest(mlp, mlp_pruner):
    plan = PruningPlan(amount=0.6, unit_amounts=(("fc1", 0.9),))
    state = mlp_pruner.resolve(plan)
    assert torch.equal(state.masks["fc1.weight"], torch_layer_mask(mlp.fc1, 0.9))
    expected = torch_global_masks(mlp, ("fc2", "fc3"), 0.6)
    for name in ("fc2", "fc3"):
        assert torch.equal(state.masks[f"{name}.weight"], expected[name])

    dense = mlp_pruner.resolve(PruningPlan(amount=0.6, dense_units=("fc3",)))
    assert "fc3.weight" not in dense.masks and dense.pruned["fc3"] == 0
    expected = torch_global_masks(mlp, ("fc1", "fc2"), 0.6)
    for name in ("fc1", "fc2"):
        assert torch.equal(dense.masks[f"{name}.weight"], expected[name])


@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize("layer", ["fc1", "fc2"])
@pytest.mark.parametrize("amount", [0.2, 0.5, 0.9])
def test_filters_on_an_uncoupled_layer_choose_torch_ln_structured_rows(
    mlp, mlp_pruner, layer, norm, amount
):
    plan = PruningPlan(method="filters", scope="layer", unit_amounts=((layer, amount),), norm=norm)
    state = mlp_pruner.resolve(plan)
    module = mlp.get_submodule(layer)
    expected = torch_layer_mask(module, amount, n=norm, dim=0)
    mask = state.masks[f"{layer}.weight"]
    assert torch.equal(mask, expected)
    rows = expected[:, 0].bool()
    # Our structured unit removes the whole neuron: its bias and the next layer's input column.
    assert torch.equal(state.masks[f"{layer}.bias"].bool(), rows)
    consumer = {"fc1": "fc2", "fc2": "fc3"}[layer]
    assert torch.equal(state.masks[f"{consumer}.weight"].bool().all(dim=0), rows)
    assert state.masks[f"{consumer}.weight"][:, rows].bool().all()


@pytest.mark.parametrize("norm", [1, 2])
def test_filters_on_a_conv_layer_choose_torch_ln_structured_filters(norm):
    model = seeded(lenet5, seed=3)
    pruner = Pruner(model, INPUT_SHAPE)
    plan = PruningPlan(method="filters", scope="layer", unit_amounts=(("conv2", 0.5),), norm=norm)
    state = pruner.resolve(plan)
    expected = torch_layer_mask(model.conv2, 0.5, n=norm, dim=0)
    assert torch.equal(state.masks["conv2.weight"], expected)
    # conv2's 16 channels are flattened into fc1's 400 inputs, 25 per channel.
    kept = expected[:, 0, 0, 0].bool()
    columns = state.masks["fc1.weight"].bool().all(dim=0)
    assert torch.equal(columns, kept.repeat_interleave(25))


@pytest.mark.parametrize("norm", [1, 2])
def test_channels_score_input_columns_like_torch_ln_structured_dim1(mlp, mlp_pruner, norm):
    plan = PruningPlan(method="channels", scope="layer", unit_amounts=(("fc2", 0.4),), norm=norm)
    state = mlp_pruner.resolve(plan)
    expected = torch_layer_mask(mlp.fc2, 0.4, n=norm, dim=1)
    assert torch.equal(state.masks["fc2.weight"], expected)
    # Removing fc2's input channel j removes neuron j of fc1 (its row and bias).
    kept = expected[0].bool()
    assert torch.equal(state.masks["fc1.weight"].bool().all(dim=1), kept)
    assert torch.equal(state.masks["fc1.bias"].bool(), kept)


def test_global_filters_rank_mean_normalised_norms_across_layers(mlp, mlp_pruner):
    amount = 0.4
    state = mlp_pruner.resolve(PruningPlan(method="filters", amount=amount))
    # By hand: L1 norm per neuron, divided by the layer's mean, ranked over both layers.
    scores = [mlp.fc1.weight.abs().sum(1), mlp.fc2.weight.abs().sum(1)]
    ranked = torch.cat([s / s.mean() for s in scores])
    pruned = torch.argsort(ranked)[: round(amount * 400)]
    expected_fc1 = torch.ones(300, dtype=torch.bool)
    expected_fc1[pruned[pruned < 300]] = False
    expected_fc2 = torch.ones(100, dtype=torch.bool)
    expected_fc2[pruned[pruned >= 300] - 300] = False
    assert torch.equal(state.keeps["fc1"], expected_fc1)
    assert torch.equal(state.keeps["fc2"], expected_fc2)


# --- N:M ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4)])
@pytest.mark.parametrize("build", [lenet_300_100, resnet_mini], ids=["mlp", "resnet"])
def test_nm_keeps_the_n_largest_of_every_m_consecutive_inputs(build, n, m):
    model = seeded(build, seed=4)
    pruner = Pruner(model, INPUT_SHAPE)
    state = pruner.resolve(PruningPlan(method="nm", amount=0.5, n=n, m=m))
    for name, module in prunable(model):
        weight = module.weight.detach().flatten(1)
        if weight.shape[1] % m:  # e.g. resnet's stem: 1x3x3 = 9 inputs per output
            assert f"{name}.weight" not in state.masks
            assert any(w.startswith(f"{name} left dense") for w in state.warnings)
            continue
        groups = weight.reshape(weight.shape[0], -1, m)
        mask = state.masks[f"{name}.weight"].flatten(1).reshape(groups.shape)
        assert torch.equal(mask.sum(-1), torch.full(groups.shape[:2], float(n)))
        top = groups.abs().topk(n, dim=-1).indices
        expected = torch.zeros_like(mask).scatter_(-1, top, 1.0)
        assert torch.equal(mask, expected), name
        pruned = state.parameters[f"{name}.weight"].flatten(1).reshape(groups.shape)
        assert torch.equal((pruned != 0).sum(-1), torch.full(groups.shape[:2], n))
        assert state.pruned[name] == weight.numel() * (m - n) // m


def test_nm_leaves_layers_that_do_not_divide_dense_with_a_warning():
    model = seeded(lenet_300_100)
    state = Pruner(model, INPUT_SHAPE).resolve(PruningPlan(method="nm", amount=1.0, n=4, m=8))
    # fc1 has 784 inputs (divisible by 8); fc2 has 300 and fc3 100 (not).
    assert set(state.masks) == {"fc1.weight"}
    assert state.pruned["fc2"] == state.pruned["fc3"] == 0
    assert any(w.startswith("fc2 left dense") for w in state.warnings)
    assert any(w.startswith("fc3 left dense") for w in state.warnings)


def test_nm_on_a_layer_that_cannot_take_it_by_name_is_an_error():
    pruner = Pruner(seeded(lenet5), INPUT_SHAPE)
    plan = PruningPlan(method="nm", scope="layer", unit_amounts=(("conv1", 0.5),))
    with pytest.raises(ValueError, match=r"'conv1' cannot take 2:4: its 25 inputs per output"):
        pruner.resolve(plan)


# --- attention heads ----------------------------------------------------------------------------


def hand_attention(attn, x: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """Multi-head attention by hand, summing only the ``kept`` heads' contributions."""
    d, inner = attn.head_dim, attn.num_heads * attn.head_dim
    w_qkv, b_qkv = attn.qkv.weight, attn.qkv.bias
    out = attn.proj.bias.expand(x.shape[0], x.shape[1], -1).clone()
    for h in kept:
        rows = slice(h * d, (h + 1) * d)
        q = x @ w_qkv[rows].T + b_qkv[rows]
        k = x @ w_qkv[inner:][rows].T + b_qkv[inner:][rows]
        v = x @ w_qkv[2 * inner :][rows].T + b_qkv[2 * inner :][rows]
        weights = torch.softmax(q @ k.transpose(1, 2) / d**0.5, dim=-1)
        out = out + (weights @ v) @ attn.proj.weight[:, rows].T
    return out


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return seeded(vit_tiny, seed=5)


@pytest.fixture(scope="module")
def vit_pruner(vit) -> Pruner:
    return Pruner(vit, INPUT_SHAPE)


def test_head_pruning_touches_only_the_chosen_head(vit, vit_pruner):
    plan = PruningPlan(method="heads", scope="layer", unit_amounts=(("block2.attn", 0.25),))
    state = vit_pruner.resolve(plan)
    assert state.pruned == {"block1.attn": 0, "block2.attn": 1, "block3.attn": 0}
    attn = vit.block2.attn
    # By hand (L1 magnitude): a head's q, k, v rows plus its output-projection columns.
    d, inner = attn.head_dim, attn.num_heads * attn.head_dim
    scores = []
    for h in range(attn.num_heads):
        rows = torch.cat([torch.arange(d) + h * d + part * inner for part in range(3)])
        cols = torch.arange(d) + h * d
        scores.append(attn.qkv.weight[rows].abs().sum() + attn.proj.weight[:, cols].abs().sum())
    pruned_head = int(torch.stack(scores).argmin())
    assert torch.equal(state.keeps["block2.attn"], torch.arange(4) != pruned_head)

    model = vit_pruner.pruned_model(state)
    for name, dense in vit.named_parameters():
        if not name.startswith("block2.attn."):
            assert torch.equal(model.get_parameter(name), dense), name
    new = model.block2.attn
    for h in range(4):
        rows = torch.cat([torch.arange(d) + h * d + part * inner for part in range(3)])
        cols = torch.arange(d) + h * d
        if h == pruned_head:
            assert torch.count_nonzero(new.qkv.weight[rows]) == 0
            assert torch.count_nonzero(new.qkv.bias[rows]) == 0
            assert torch.count_nonzero(new.proj.weight[:, cols]) == 0
        else:
            assert torch.equal(new.qkv.weight[rows], attn.qkv.weight[rows])
            assert torch.equal(new.qkv.bias[rows], attn.qkv.bias[rows])
            assert torch.equal(new.proj.weight[:, cols], attn.proj.weight[:, cols])
    assert torch.equal(new.proj.bias, attn.proj.bias)

    x = torch.randn(2, 17, 64)
    kept = [h for h in range(4) if h != pruned_head]
    with torch.no_grad():
        expected = hand_attention(attn, x, kept)
        assert torch.allclose(new(x), expected, atol=1e-5)
        # and the hand computation with all heads is the dense module (the oracle itself).
        assert torch.allclose(attn(x), hand_attention(attn, x, list(range(4))), atol=1e-5)


# --- errors -------------------------------------------------------------------------------------


def test_unknown_layer_names_the_valid_layers(mlp_pruner):
    with pytest.raises(ValueError, match=r"unknown unit 'nosuch'.*'fc1', 'fc2', 'fc3'"):
        mlp_pruner.resolve(PruningPlan().with_unit("nosuch", 0.5))
    with pytest.raises(ValueError, match=r"unknown unit 'fc9'"):
        mlp_pruner.resolve(PruningPlan(dense_units=("fc9",)))


def test_unknown_method_and_criterion_name_the_choices(mlp_pruner):
    with pytest.raises(ValueError, match=r"unknown method 'prune_all'.*'filters'.*'unstructured'"):
        mlp_pruner.resolve(PruningPlan(method="prune_all", amount=0.5))
    with pytest.raises(ValueError, match=r"unknown criterion 'size'.*'magnitude'.*'random'"):
        mlp_pruner.resolve(PruningPlan(criterion="size", amount=0.5))
    assert {"unstructured", "nm", "filters", "channels", "heads"} <= set(METHODS)


def test_filters_on_the_output_layer_say_why(mlp_pruner):
    plan = PruningPlan(method="filters", scope="layer", unit_amounts=(("fc3", 0.5),))
    with pytest.raises(ValueError, match=r"'fc3' cannot lose output channels.*classes"):
        mlp_pruner.resolve(plan)


def test_channels_on_the_first_layer_say_why(mlp_pruner):
    plan = PruningPlan(method="channels", scope="layer", unit_amounts=(("fc1", 0.5),))
    with pytest.raises(ValueError, match=r"'fc1' has no prunable channels.*model's input"):
        mlp_pruner.resolve(plan)


@pytest.fixture(scope="module")
def resnet_pruner() -> Pruner:
    return Pruner(seeded(resnet_mini), INPUT_SHAPE)


def test_a_residual_coupled_layer_must_be_addressed_by_its_group_leader(resnet_pruner):
    # The identity skip of block1 adds stem.conv's and block1.conv2's outputs channel by channel.
    plan = PruningPlan(method="filters", scope="layer", unit_amounts=(("block1.conv2", 0.5),))
    with pytest.raises(ValueError, match=r"'block1.conv2' is coupled with.*'stem.conv'"):
        resnet_pruner.resolve(plan)
    plan = PruningPlan(method="filters", scope="layer", unit_amounts=(("block3.conv2", 0.5),))
    with pytest.raises(ValueError, match=r"set the amount on 'block2.conv2'"):
        resnet_pruner.resolve(plan)
    plan = PruningPlan(method="filters", scope="layer", unit_amounts=(("fc", 0.5),))
    with pytest.raises(ValueError, match=r"'fc' cannot lose output channels"):
        resnet_pruner.resolve(plan)
    # The leader takes it, and the coupled producers lose the same channels.
    state = resnet_pruner.resolve(
        PruningPlan(method="filters", scope="layer", unit_amounts=(("stem.conv", 0.5),))
    )
    stem = state.masks["stem.conv.weight"].amax(dim=(1, 2, 3))
    block1 = state.masks["block1.conv2.weight"].amax(dim=(1, 2, 3))
    assert zeros(stem) == 16
    assert torch.equal(stem, block1)


def test_heads_errors_name_the_reason(mlp_pruner, vit_pruner):
    with pytest.raises(ValueError, match="no attention heads"):
        mlp_pruner.resolve(PruningPlan(method="heads", amount=0.5))
    plan = PruningPlan(method="heads", scope="layer", unit_amounts=(("block1.attn.qkv", 0.5),))
    with pytest.raises(ValueError, match=r"belongs to attention 'block1.attn'"):
        vit_pruner.resolve(plan)
    plan = PruningPlan(method="heads", scope="layer", unit_amounts=(("nosuch", 0.5),))
    with pytest.raises(ValueError, match=r"unknown unit 'nosuch'.*'block1.attn'"):
        vit_pruner.resolve(plan)
    plan = PruningPlan(method="filters", unit_amounts=(("block1.attn.qkv", 0.5),))
    with pytest.raises(ValueError, match="prune its heads instead"):
        vit_pruner.resolve(plan)


def test_data_criteria_without_calibration_are_an_error(mlp_pruner):
    for criterion in ("taylor", "activation"):
        with pytest.raises(ValueError, match=f"'{criterion}' needs calibration data"):
            mlp_pruner.resolve(PruningPlan(criterion=criterion, amount=0.5))


def test_export_style_must_be_known(mlp_pruner):
    with pytest.raises(ValueError, match=r"unknown export style 'npz'.*'torch_prune', 'zeros'"):
        masked_state_dict(mlp_pruner, PruningPlan(amount=0.5), style="npz")


# --- random criterion ---------------------------------------------------------------------------


def test_random_criterion_is_reproducible_per_seed_and_exact(mlp_pruner):
    plan = PruningPlan(criterion="random", amount=0.5, seed=3)
    first = mlp_pruner.resolve(plan)
    again = Pruner(copy.deepcopy(mlp_pruner.model), INPUT_SHAPE).resolve(plan)
    other = mlp_pruner.resolve(PruningPlan(criterion="random", amount=0.5, seed=4))
    for name in MLP_LAYERS:
        key = f"{name}.weight"
        assert torch.equal(first.masks[key], again.masks[key])
    assert any(not torch.equal(first.masks[k], other.masks[k]) for k in first.masks)
    total = sum(mlp_pruner.model.get_submodule(n).weight.numel() for n in MLP_LAYERS)
    assert sum(zeros(m) for m in first.masks.values()) == round(0.5 * total)


# --- exports ------------------------------------------------------------------------------------


def test_torch_pruned_model_reproduces_pruned_model(mlp, mlp_pruner, eval_images):
    plan = PruningPlan(amount=0.7, unit_amounts=(("fc3", 0.2),))
    pruned = mlp_pruner.pruned_model(plan)
    torch_model = mlp_pruner.torch_pruned_model(plan)
    for name in MLP_LAYERS:
        module = torch_model.get_submodule(name)
        assert prune.is_pruned(module)
        product = module.weight_orig * module.weight_mask
        assert torch.equal(product, pruned.get_submodule(name).weight)
        assert torch.equal(module.weight_orig, mlp.get_submodule(name).weight)
    with torch.no_grad():
        assert torch.equal(torch_model(eval_images), pruned(eval_images))


def test_masked_state_dict_zeros_loads_strictly_into_a_fresh_architecture(mlp_pruner, eval_images):
    plan = PruningPlan(method="filters", amount=0.5)
    state_dict = masked_state_dict(mlp_pruner, plan, style="zeros")
    fresh = lenet_300_100().eval()
    fresh.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(eval_images), mlp_pruner.pruned_model(plan)(eval_images))


def test_masked_state_dict_torch_prune_style_has_orig_and_mask_pairs(mlp_pruner, eval_images):
    plan = PruningPlan(amount=0.5)
    state_dict = masked_state_dict(mlp_pruner, plan, style="torch_prune")
    for name in MLP_LAYERS:
        assert f"{name}.weight_orig" in state_dict and f"{name}.weight_mask" in state_dict
        assert f"{name}.weight" not in state_dict
    # It loads into a fresh model prepared the way torch.nn.utils.prune prepares one.
    fresh = lenet_300_100().eval()
    for name in MLP_LAYERS:
        prune.identity(fresh.get_submodule(name), "weight")
    fresh.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(eval_images), mlp_pruner.pruned_model(plan)(eval_images))


# --- the dense model is never modified ----------------------------------------------------------


@pytest.mark.parametrize("build", [lenet5, resnet_mini, vit_tiny], ids=["lenet5", "resnet", "vit"])
def test_the_dense_model_is_bit_identical_after_everything(build, calibration):
    model = randomize_batchnorm(seeded(build, seed=6), seed=7)  # a no-op without BatchNorm
    before = snapshot(model)
    pruner = Pruner(model, INPUT_SHAPE, calibration)
    structured = "heads" if build is vit_tiny else "filters"
    plans = [
        PruningPlan(amount=0.6),
        PruningPlan(method="nm", criterion="activation", amount=1),  # forward hooks
        PruningPlan(method=structured, criterion="taylor", amount=0.5),  # gradients
    ]
    for plan in plans:
        state = pruner.resolve(plan)
        pruner.pruned_model(state)
        pruner.torch_pruned_model(state)
        masked_state_dict(pruner, plan, "zeros")
        model_cost(pruner, state)
        compacted = compact(pruner, state) if plan.method == structured else None
        size_report(model, state, compacted)
    assert_unchanged(model, before)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
