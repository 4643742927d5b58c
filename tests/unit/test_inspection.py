"""Inspection: prunable layers in graph order, parameter and FLOP counts by hand."""

from __future__ import annotations

import torch
from torch import nn

from explorer.engine.inspection import (
    attention_modules,
    execution_order,
    layer_flops,
    model_flops,
    prunable_layers,
)
from explorer.zoo.models import lenet5, lenet_300_100, resnet_mini, vit_tiny
from tests.unit.conftest import INPUT_SHAPE, seeded


def test_lenet300_flops_are_two_per_multiply_add_without_bias_adds():
    model = seeded(lenet_300_100)
    assert model_flops(model, INPUT_SHAPE) == 2 * (784 * 300 + 300 * 100 + 100 * 10)
    flops = {layer.name: layer.flops for layer in prunable_layers(model, INPUT_SHAPE)}
    assert flops == {"fc1": 2 * 784 * 300, "fc2": 2 * 300 * 100, "fc3": 2 * 100 * 10}


def test_bias_adds_are_not_counted():
    with_bias = nn.Sequential(nn.Flatten(), nn.Linear(784, 7, bias=True))
    without = nn.Sequential(nn.Flatten(), nn.Linear(784, 7, bias=False))
    assert model_flops(with_bias, INPUT_SHAPE) == model_flops(without, INPUT_SHAPE) == 2 * 784 * 7


def test_lenet5_conv_and_linear_flops_by_hand():
    model = seeded(lenet5)
    flops = {layer.name: layer.flops for layer in prunable_layers(model, INPUT_SHAPE)}
    expected = {
        "conv1": 2 * (6 * 28 * 28) * (1 * 5 * 5),  # 'same' padding: 28x28 outputs
        "conv2": 2 * (16 * 10 * 10) * (6 * 5 * 5),  # 14x14 in, 5x5 valid -> 10x10
        "fc1": 2 * 400 * 120,
        "fc2": 2 * 120 * 84,
        "fc3": 2 * 84 * 10,
    }
    assert flops == expected
    assert model_flops(model, INPUT_SHAPE) == sum(expected.values())


def test_layer_info_shapes_and_params_by_hand():
    layers = prunable_layers(seeded(lenet5), INPUT_SHAPE)
    assert [(la.name, la.kind, la.weight_shape, la.params, la.order) for la in layers] == [
        ("conv1", "Conv2d", (6, 1, 5, 5), 6 * 25 + 6, 0),
        ("conv2", "Conv2d", (16, 6, 5, 5), 16 * 6 * 25 + 16, 1),
        ("fc1", "Linear", (120, 400), 400 * 120 + 120, 2),
        ("fc2", "Linear", (84, 120), 120 * 84 + 84, 3),
        ("fc3", "Linear", (10, 84), 84 * 10 + 10, 4),
    ]
    assert layers[1].weight_numel == 16 * 6 * 25


def test_execution_order_follows_the_forward_pass_not_the_definition():
    # ResidualBlock defines its shortcut last, and calls it last: conv1, conv2, shortcut.
    names = execution_order(seeded(resnet_mini), INPUT_SHAPE)
    assert names == [
        "stem.conv",
        "block1.conv1",
        "block1.conv2",
        "block2.conv1",
        "block2.conv2",
        "block2.shortcut.0",
        "block3.conv1",
        "block3.conv2",
        "fc",
    ]

    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.second = nn.Linear(5, 3)
            self.first = nn.Linear(784, 5)
            self.unused = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.second(self.first(x.flatten(1)))

    assert execution_order(Reversed(), INPUT_SHAPE) == ["first", "second"]  # unused is left out


def test_layer_flops_nest_blocks_and_sum_to_the_total():
    model = seeded(resnet_mini)
    flops = layer_flops(model, INPUT_SHAPE)
    block = flops["block2"]
    parts = ["block2.conv1", "block2.conv2", "block2.shortcut.0"]
    assert block == sum(flops[p] for p in parts)
    # block2.conv1: 32 -> 64 channels, 3x3, stride 2 on 14x14 -> 7x7 outputs
    assert flops["block2.conv1"] == 2 * (64 * 7 * 7) * (32 * 3 * 3)
    assert flops["block2.shortcut.0"] == 2 * (64 * 7 * 7) * 32


def test_attention_modules_of_the_vit():
    assert attention_modules(seeded(vit_tiny)) == ["block1.attn", "block2.attn", "block3.attn"]
    assert attention_modules(seeded(lenet5)) == []


def test_vit_flops_count_the_attention_products():
    # Each block's attention: q·kᵀ and attention·v, each 2 * tokens² * head_dim per head.
    # The fused CPU kernels that inference picks are invisible to torch's FLOP counter; the
    # count must not silently drop them (it once gave 3.44 M here against the card's 3.67 M).
    model = seeded(vit_tiny)
    flops = layer_flops(model, INPUT_SHAPE)
    attention = model.block1.attn
    tokens = (28 // 7) ** 2 + 1
    products = 2 * (2 * tokens * tokens * attention.head_dim) * attention.num_heads
    linears = 2 * tokens * (attention.qkv.in_features * attention.qkv.out_features)
    linears += 2 * tokens * (attention.proj.in_features * attention.proj.out_features)
    assert flops["block1.attn"] == linears + products


def test_multihead_attention_is_counted_on_its_fast_path_too():
    attention = nn.MultiheadAttention(64, 4, batch_first=True).eval()

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = attention

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    tokens, dim, heads = 17, 64, 4
    projections = 2 * tokens * dim * (3 * dim) + 2 * tokens * dim * dim
    products = 2 * (2 * tokens * tokens * (dim // heads)) * heads
    assert model_flops(Tokens().eval(), (tokens, dim)) == projections + products


def test_every_model_card_states_the_flops_the_app_counts():
    # One number everywhere: the Model & data page and `info` read the card, Prune and `eval`
    # count the model; they must agree.
    from explorer.zoo.models import ZOO, load_card, load_model

    for name in ZOO:
        card = load_card(name)
        model = load_model(name)
        assert card["flops"] == model_flops(model, tuple(card["input_shape"])), name
