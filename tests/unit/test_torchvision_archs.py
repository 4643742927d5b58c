"""Structured pruning on real torchvision architectures, against oracles.

MobileNet (depthwise convs, squeeze-excite, Hardswish, a Linear classifier after a flatten),
ResNet-18 (residual coupling), ResNeXt (grouped convs: reported, never mis-masked) and
torchvision's ViT (``nn.MultiheadAttention`` heads). For each: masking equals removing, i.e. the
masked model and the compacted one give the same logits, and the compacted one is smaller.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from explorer.engine.compaction import compact
from explorer.engine.importance import UnsupportedCriterion, get_criterion
from explorer.engine.inspection import attention_modules, model_flops
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner, get_method
from explorer.engine.structure import CompactMultiheadAttention, ModelStructure
from explorer.zoo.mnist import ImageDataset
from tests.unit.conftest import randomize_batchnorm

CNN_SHAPE = (3, 64, 64)
VIT_SHAPE = (3, 32, 32)
LAYERS, HEADS, WIDTH = 2, 4, 64


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def depthwise_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
    }


def assert_same_logits(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    assert scale > 1e-3  # outputs are not trivially zero
    torch.testing.assert_close(got, expected, atol=1e-5 * max(scale, 1.0), rtol=1e-4)


def check_masked_equals_compacted(
    pruner: Pruner, plan: PruningPlan, shape: tuple[int, ...], seed: int = 0
) -> tuple[nn.Module, nn.Module]:
    """The masked and the compacted model agree on random inputs, differ from the dense one,
    and the compacted one has strictly fewer parameters and FLOPs."""
    state = pruner.resolve(plan)
    assert sum(state.pruned.values()) > 0
    masked, small = pruner.pruned_model(state), compact(pruner, state)
    images = torch.randn(4, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        dense, expected, got = pruner.model(images), masked(images), small(images)
    assert_same_logits(got, expected)
    assert not torch.allclose(expected, dense, atol=1e-4)  # pruning did change something
    assert n_params(small) < n_params(pruner.model)
    assert model_flops(small, shape) < model_flops(pruner.model, shape)
    return masked, small


# --- MobileNet V2 / V3: depthwise convs, squeeze-excite ------------------------------------------


BUILDERS = {
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=10),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(
        weights=None, num_classes=10
    ),
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def mobilenet(request) -> Pruner:
    torch.manual_seed(0)
    model = randomize_batchnorm(BUILDERS[request.param]().eval(), seed=1)
    return Pruner(model, CNN_SHAPE)


def test_every_depthwise_conv_is_in_exactly_one_group_along_dim_0(mobilenet):
    structure = mobilenet.structure
    convs = depthwise_convs(mobilenet.model)
    assert convs
    for name, conv in convs.items():
        [group] = [g for g in structure.channel_groups if name in g.layers]
        # It reads and writes the same channel: a producer and a consumer of its group.
        assert name in group.producers and name in group.consumers
        pieces = [s for s in group.slices if s.param == f"{name}.weight"]
        assert {s.role for s in pieces} == {"producer", "consumer"}
        assert all(s.dim == 0 for s in pieces)
        assert conv.weight.shape[1] == 1 and group.size == conv.out_channels
    # Nothing is dropped: every conv and Linear but the classifier loses outputs in some group.
    producers = {p for g in structure.channel_groups for p in g.producers}
    assert producers == {layer.name for layer in structure.layers} - {structure.output_layer}
    assert structure.unsupported_input_layers == {}


@pytest.mark.parametrize("method", ["filters", "channels"])
def test_a_group_mask_removes_the_depthwise_filter_rows(mobilenet, method):
    state = mobilenet.resolve(PruningPlan(method=method, amount=0.3))
    parameters = mobilenet.structure.parameters
    for unit in state.units:
        keep = state.keeps.get(unit.name)
        if keep is None:
            continue
        for name in set(depthwise_convs(mobilenet.model)) & set(unit.layers):
            mask = state.masks[f"{name}.weight"]
            # Filter c of a depthwise conv is row c (its weight is (C, 1, k, k)).
            assert torch.equal(mask.flatten(1).amin(1), keep.float())
            assert torch.equal(mask.flatten(1).amax(1), keep.float())
            masked = state.parameters[f"{name}.weight"]
            assert torch.equal(masked[keep], parameters[f"{name}.weight"][keep])


@pytest.mark.parametrize("method", ["filters", "channels"])
def test_mobilenet_compacted_equals_masked_with_narrower_depthwise_convs(mobilenet, method):
    plan = PruningPlan(method=method, amount=0.3)
    _, small = check_masked_equals_compacted(mobilenet, plan, CNN_SHAPE)
    state = mobilenet.resolve(plan)
    dense_convs, small_convs = depthwise_convs(mobilenet.model), depthwise_convs(small)
    assert set(small_convs) == set(dense_convs)
    narrower = 0
    for name, conv in small_convs.items():
        [unit] = [u for u in state.units if name in u.layers]
        expected = dense_convs[name].out_channels - state.pruned[unit.name]
        assert conv.out_channels == conv.in_channels == conv.groups == expected
        narrower += expected < dense_convs[name].out_channels
    assert narrower > len(small_convs) // 2


def test_squeeze_excite_gates_go_with_their_channels():
    torch.manual_seed(0)
    model = randomize_batchnorm(BUILDERS["mobilenet_v3_small"]().eval(), seed=1)
    structure = ModelStructure(model, CNN_SHAPE)
    group = structure.channel_group_of("features.4.block.1.0")  # a depthwise conv with SE
    # The SE block reads the channels (fc1) and gates each with its own output (fc2).
    assert "features.4.block.2.fc1" in group.consumers
    assert "features.4.block.2.fc2" in group.producers
    assert group.producers[0] == "features.4.block.0.0"  # the expansion conv leads
    # The last conv feeds the Linear classifier through pooling and a flatten.
    assert structure.channel_group_of("features.12.0").consumers == ("classifier.0",)


def test_wanda_scores_a_depthwise_filter_by_its_own_input_channel():
    # Weight (C, 1, k, k): filter c reads only input channel c, so its score is
    # |w[c]| x ||x_c||_2, not a (C, C, k, k) broadcast of every channel's norm.
    torch.manual_seed(0)
    model = randomize_batchnorm(BUILDERS["mobilenet_v3_small"]().eval(), seed=1)
    images = torch.randn(8, *CNN_SHAPE, generator=torch.Generator().manual_seed(2))
    data = ImageDataset("noise", "fit", images, torch.zeros(8, dtype=torch.long), ("a",))
    pruner = Pruner(model, CNN_SHAPE, data)
    name = "features.1.block.0.0"
    conv = model.get_submodule(name)
    seen = {}
    hook = conv.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    with torch.no_grad():
        model(images)
    hook.remove()
    norms = seen["x"].transpose(0, 1).flatten(1).norm(dim=1)
    expected = conv.weight.abs() * norms.reshape(-1, 1, 1, 1)
    plan = PruningPlan(criterion="activation", scope="layer", amount=0.5)
    torch.testing.assert_close(pruner.unit_scores(plan, name)[0], expected.flatten())
    assert pruner.resolve(plan).pruned[name] == round(0.5 * conv.weight.numel())


# --- ResNet-18: residual coupling ----------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18() -> Pruner:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    return Pruner(randomize_batchnorm(model, seed=1), CNN_SHAPE)


@pytest.mark.parametrize("method", ["filters", "channels"])
def test_resnet18_compacted_equals_masked(resnet18, method):
    _, small = check_masked_equals_compacted(
        resnet18, PruningPlan(method=method, amount=0.3), CNN_SHAPE
    )
    # The identity skips of layer1 add the stem's channels to each block's conv2.
    width = small.conv1.out_channels
    assert width < 64
    assert small.bn1.num_features == small.layer1[0].conv2.out_channels == width
    assert small.layer1[1].conv2.out_channels == small.layer2[0].downsample[0].in_channels == width
    assert small.fc.in_features == small.layer4[1].conv2.out_channels < 512


def test_resnet18_residual_group_couples_the_stem_and_layer1():
    torch.manual_seed(0)
    structure = ModelStructure(torchvision.models.resnet18(num_classes=10).eval(), CNN_SHAPE)
    stem = structure.channel_group_of("conv1")
    assert set(stem.producers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert "layer2.0.downsample.0" in stem.consumers


# --- ResNeXt: grouped convs are reported, never mis-masked ---------------------------------------


@pytest.fixture(scope="module")
def resnext() -> Pruner:
    torch.manual_seed(0)
    model = torchvision.models.resnext50_32x4d(weights=None, num_classes=10).eval()
    return Pruner(randomize_batchnorm(model, seed=1), VIT_SHAPE)


def test_grouped_convs_are_unsupported_with_a_reason(resnext):
    structure = resnext.structure
    grouped = [
        n for n, m in resnext.model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1
    ]
    assert len(grouped) == 16
    for group in structure.channel_groups:
        assert not set(group.layers) & set(grouped)
    outputs, inputs = structure.unsupported_channel_layers, structure.unsupported_input_layers
    assert "grouped conv 'layer1.0.conv2'" in outputs["layer1.0.conv1"]  # it feeds one
    assert "grouped conv 'layer1.0.conv2'" in outputs["layer1.0.conv2"]
    assert "grouped conv 'layer1.0.conv2'" in inputs["layer1.0.conv3"]  # it reads one
    with pytest.raises(ValueError, match=r"'layer2.1.conv1' cannot lose output.*grouped conv"):
        resnext.resolve(PruningPlan(method="filters", unit_amounts=(("layer2.1.conv1", 0.5),)))
    with pytest.raises(ValueError, match=r"'layer2.1.conv3' cannot lose input.*grouped conv"):
        resnext.resolve(PruningPlan(method="channels", unit_amounts=(("layer2.1.conv3", 0.5),)))


def test_resnext_residual_groups_still_compact_to_equal_outputs(resnext):
    _, small = check_masked_equals_compacted(
        resnext, PruningPlan(method="filters", amount=0.3), VIT_SHAPE
    )
    for name, conv in small.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.groups > 1:
            dense = resnext.model.get_submodule(name)
            assert (conv.in_channels, conv.out_channels) == (dense.in_channels, dense.out_channels)


# --- concatenation, and a graph torch-pruning cannot trace -------------------------------------


def test_concatenated_groups_read_by_one_layer_are_separate_units():
    # SqueezeNet's Fire module concatenates two expand convs; the next squeeze conv reads both
    # groups. Each must be its own unit (one name, one keep vector), or compaction would cut one
    # group with the other's choice.
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(weights=None, num_classes=10).eval()
    pruner = Pruner(model, CNN_SHAPE)
    units = pruner.units("channels")
    assert len({u.name for u in units}) == len(units)
    readers = [u for u in units if u.detail.consumers == ("features.4.squeeze",)]
    assert sorted(u.detail.producers[0] for u in readers) == [
        "features.3.expand1x1",
        "features.3.expand3x3",
    ]
    check_masked_equals_compacted(pruner, PruningPlan(method="channels", amount=0.3), CNN_SHAPE)


def test_layers_whose_coupling_torch_pruning_cannot_follow_say_why_and_the_rest_prune():
    # ShuffleNetV2: torch-pruning's split and reshape mappings fail on its channel shuffle.
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=10).eval()
    pruner = Pruner(model, CNN_SHAPE)
    refused = {
        layer: reason
        for layer, reason in pruner.structure.unsupported_channel_layers.items()
        if "torch-pruning" in reason
    }
    assert refused and pruner.structure.channel_groups
    layer = sorted(refused)[0]
    reason = get_method("filters").reason_unavailable(pruner.structure, layer)
    assert f"'{layer}' cannot lose output channels: torch-pruning" in reason
    assert sum(pruner.resolve(PruningPlan(method="filters", amount=0.3)).pruned.values()) > 0
    assert pruner.resolve(PruningPlan(amount=0.3)).pruned  # weight-level methods still work


# --- torchvision ViT: nn.MultiheadAttention heads ------------------------------------------------


def attention_names() -> list[str]:
    return [f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(LAYERS)]


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=WIDTH,
        mlp_dim=128,
        num_classes=10,
    ).eval()
    with torch.no_grad():  # torchvision zero-inits biases and the head: make every part count
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.fixture(scope="module")
def calibration() -> ImageDataset:
    generator = torch.Generator().manual_seed(7)
    return ImageDataset(
        "noise",
        "fit",
        torch.randn(16, *VIT_SHAPE, generator=generator),
        torch.randint(0, 10, (16,), generator=generator),
        tuple(str(i) for i in range(10)),
    )


@pytest.fixture(scope="module")
def vit_pruner(vit, calibration) -> Pruner:
    return Pruner(vit, VIT_SHAPE, calibration)


def head_rows(head: int) -> torch.Tensor:
    """Rows of in_proj_weight (3 * WIDTH rows, [q; k; v]) that belong to ``head``."""
    d = WIDTH // HEADS
    return torch.cat([torch.arange(d) + head * d + part * WIDTH for part in range(3)])


def head_columns(head: int) -> torch.Tensor:
    d = WIDTH // HEADS
    return torch.arange(d) + head * d


def test_vit_heads_are_units_one_per_layer(vit_pruner):
    units = vit_pruner.units("heads")
    assert [(u.name, u.size) for u in units] == [(name, HEADS) for name in attention_names()]
    assert attention_modules(vit_pruner.model) == attention_names()
    heads = vit_pruner.structure.heads[0]
    assert (heads.kind, heads.head_dim, heads.qkv_weight) == (
        "multihead",
        WIDTH // HEADS,
        f"{attention_names()[0]}.in_proj_weight",
    )
    assert heads.qkv_rows(1).tolist() == head_rows(1).tolist()
    # The hidden width passes through LayerNorm: no channel group there (masking != removing).
    reasons = vit_pruner.structure.unsupported_channel_layers
    assert "LayerNorm" in reasons["conv_proj"]
    assert "prune its heads instead" in reasons[f"{attention_names()[1]}.out_proj"]


def magnitude_head_scores(attention: nn.MultiheadAttention) -> torch.Tensor:
    return torch.stack(
        [
            attention.in_proj_weight[head_rows(h)].abs().sum()
            + attention.out_proj.weight[:, head_columns(h)].abs().sum()
            for h in range(HEADS)
        ]
    )


def zero_heads_by_hand(model: nn.Module, heads: dict[str, list[int]]) -> nn.Module:
    """A copy with the given heads' q, k, v rows and out_proj columns zeroed."""
    oracle = copy.deepcopy(model)
    with torch.no_grad():
        for name, removed in heads.items():
            attention = oracle.get_submodule(name)
            for h in removed:
                attention.in_proj_weight[head_rows(h)] = 0
                attention.in_proj_bias[head_rows(h)] = 0
                attention.out_proj.weight[:, head_columns(h)] = 0
    return oracle


@pytest.mark.parametrize(
    "plan",
    [
        PruningPlan(method="heads", scope="layer", amount=0.5),
        PruningPlan(method="heads", amount=0.25),
        PruningPlan(method="heads", scope="layer", unit_amounts=((attention_names()[1], 0.75),)),
    ],
    ids=["2-of-4-each", "global-2", "3-in-one-layer"],
)
def test_masking_heads_equals_the_hand_oracle_and_the_compacted_model(vit, vit_pruner, plan):
    state = vit_pruner.resolve(plan)
    # Which heads: the lowest L1 magnitude of their q, k, v rows and out_proj columns.
    scores = {name: magnitude_head_scores(vit.get_submodule(name)) for name in attention_names()}
    for name in attention_names():
        torch.testing.assert_close(vit_pruner.unit_scores(plan, name)[0], scores[name])
    removed = {n: torch.nonzero(~k).flatten().tolist() for n, k in state.keeps.items()}
    if plan.scope == "layer":
        for name, heads in removed.items():
            assert heads == sorted(torch.argsort(scores[name])[: len(heads)].tolist())
    oracle = zero_heads_by_hand(vit, removed)
    masked, small = check_masked_equals_compacted(vit_pruner, plan, VIT_SHAPE)
    for name, param in oracle.named_parameters():
        assert torch.equal(masked.get_parameter(name), param), name
    images = torch.randn(4, *VIT_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_same_logits(small(images), oracle(images))
    for name in attention_names():
        attention = small.get_submodule(name)
        kept = HEADS - len(removed.get(name, []))
        if name in removed:
            assert isinstance(attention, CompactMultiheadAttention)
            assert attention.num_heads == kept and attention.in_proj.out_features == 3 * kept * 16
            assert attention.out_proj.in_features == kept * 16
        else:
            assert isinstance(attention, nn.MultiheadAttention)  # untouched


def test_compacted_attention_is_found_again_with_its_kept_heads(vit_pruner):
    plan = PruningPlan(method="heads", scope="layer", amount=0.5)
    small = compact(vit_pruner, plan)
    heads = ModelStructure(small, VIT_SHAPE).heads
    assert [(h.name, h.num_heads, h.kind) for h in heads] == [
        (name, 2, "fused") for name in attention_names()
    ]


def test_a_fully_pruned_attention_compacts_to_one_zero_head(vit_pruner):
    name = attention_names()[0]
    plan = PruningPlan(method="heads", scope="layer", unit_amounts=((name, 1.0),))
    _, small = check_masked_equals_compacted(vit_pruner, plan, VIT_SHAPE)
    assert small.get_submodule(name).num_heads == 1


def hand_head_outputs(attention: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Each head's attention output (N, L, heads, d) by hand, for self-attention on x (N, L, E)."""
    d = WIDTH // HEADS
    q, k, v = (x @ w.T + b for w, b in zip(
        attention.in_proj_weight.chunk(3), attention.in_proj_bias.chunk(3), strict=True
    ))  # fmt: skip
    q, k, v = (t.reshape(*x.shape[:2], HEADS, d).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1)
    return (weights @ v).transpose(1, 2)


def test_activation_head_scores_are_the_mean_output_of_each_head(vit, vit_pruner, calibration):
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        vit.get_submodule(name).register_forward_pre_hook(
            lambda m, args, name=name: inputs.__setitem__(name, args[0])
        )
        for name in attention_names()
    ]
    try:
        with torch.no_grad():
            vit(calibration.images)
    finally:
        for hook in hooks:
            hook.remove()
    plan = PruningPlan(method="heads", criterion="activation", scope="layer", amount=0.5)
    for name in attention_names():
        with torch.no_grad():
            outputs = hand_head_outputs(vit.get_submodule(name), inputs[name])
        expected = outputs.abs().mean(dim=(0, 1, 3))
        torch.testing.assert_close(vit_pruner.unit_scores(plan, name)[0], expected)


@pytest.mark.parametrize("criterion", ["magnitude", "random", "taylor", "activation"])
def test_every_head_criterion_scores_and_compacts(vit_pruner, criterion):
    plan = PruningPlan(method="heads", criterion=criterion, scope="layer", amount=0.5)
    for name in attention_names():
        scores, threshold = vit_pruner.unit_scores(plan, name)
        assert scores.shape == (HEADS,) and bool(torch.isfinite(scores).all())
        assert threshold is not None
    check_masked_equals_compacted(vit_pruner, plan, VIT_SHAPE)


def test_apoz_cannot_score_heads(vit_pruner):
    with pytest.raises(ValueError, match="cannot score heads"):
        vit_pruner.resolve(PruningPlan(method="heads", criterion="apoz", amount=0.5))
    with pytest.raises(UnsupportedCriterion, match="attention heads have none"):
        get_criterion("apoz").head_scores(vit_pruner.context, vit_pruner.structure.heads[0])


def test_vit_mlp_filters_compact_to_equal_outputs(vit_pruner):
    assert [u.name for u in vit_pruner.units("filters")] == [
        f"encoder.layers.encoder_layer_{i}.mlp.0" for i in range(LAYERS)
    ]
    check_masked_equals_compacted(vit_pruner, PruningPlan(method="filters", amount=0.3), VIT_SHAPE)


# --- CompactMultiheadAttention: nn.MultiheadAttention's call, any heads --------------------------


def _padding(batch: int, source: int) -> torch.Tensor:
    padding = torch.zeros(batch, source, dtype=torch.bool)
    padding[:, -2:] = True  # the last two keys of every sequence are padding
    return padding


#: Masks nn.MultiheadAttention takes, as (batch, target, source, generator) -> keyword arguments.
MASKS = {
    "none": lambda b, t, s, g: {},
    "padding": lambda b, t, s, g: {"key_padding_mask": _padding(b, s)},
    "float-2d": lambda b, t, s, g: {"attn_mask": torch.randn(t, s, generator=g)},
    "bool-2d+padding": lambda b, t, s, g: {
        "attn_mask": torch.rand(t, s, generator=g) > 0.7,
        "key_padding_mask": _padding(b, s),
    },
    "float-3d": lambda b, t, s, g: {"attn_mask": torch.randn(b * HEADS, t, s, generator=g)},
}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masks", sorted(MASKS))
def test_compact_attention_equals_multihead_attention(batch_first, need_weights, masks):
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(WIDTH, HEADS, batch_first=batch_first).eval()
    with torch.no_grad():
        reference.in_proj_bias.normal_()
        reference.out_proj.bias.normal_()
    ours = CompactMultiheadAttention.from_multihead(reference).eval()
    batch, target, source = 3, 5, 7
    query, memory = torch.randn(batch, target, WIDTH), torch.randn(batch, source, WIDTH)
    if not batch_first:
        query, memory = query.transpose(0, 1), memory.transpose(0, 1)
    with torch.no_grad():
        for q, kv, length in ((query, memory, source), (query, query, target)):  # cross, self
            generator = torch.Generator().manual_seed(3)
            options = {
                "need_weights": need_weights,
                **MASKS[masks](batch, target, length, generator),
            }
            expected, expected_weights = reference(q, kv, kv, **options)
            got, weights = ours(q, kv, kv, **options)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
            if need_weights:
                torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-4)
            else:
                assert weights is None


def test_compact_attention_with_fewer_heads_equals_zeroed_heads():
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True).eval()
    kept = [0, 3]
    ours = CompactMultiheadAttention.from_multihead(reference, kept).eval()
    zeroed = copy.deepcopy(reference)
    with torch.no_grad():
        for h in (1, 2):
            zeroed.in_proj_weight[head_rows(h)] = 0
            zeroed.in_proj_bias[head_rows(h)] = 0
            zeroed.out_proj.weight[:, head_columns(h)] = 0
        x = torch.randn(2, 9, WIDTH)
        expected, _ = zeroed(x, x, x, need_weights=False)
        got, _ = ours(x, x, x, need_weights=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert n_params(ours) < n_params(reference)
    with pytest.raises(ValueError, match="3-D attn_mask needs batch x heads = 4"):
        ours(x, x, x, attn_mask=torch.zeros(2 * HEADS, 9, 9))
