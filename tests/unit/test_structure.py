"""Model structure: coupled channel groups and attention heads, against the architectures."""

from __future__ import annotations

import pytest
import torch

from explorer.engine.structure import ModelStructure
from explorer.zoo.models import lenet5, lenet_300_100, resnet_mini, vit_tiny
from tests.unit.conftest import INPUT_SHAPE, seeded


@pytest.fixture(scope="module")
def resnet() -> ModelStructure:
    return ModelStructure(seeded(resnet_mini), INPUT_SHAPE)


def test_mlp_groups_are_each_hidden_layer_and_its_reader():
    structure = ModelStructure(seeded(lenet_300_100), INPUT_SHAPE)
    groups = [(g.name, g.size, g.producers, g.consumers) for g in structure.channel_groups]
    assert groups == [("fc1", 300, ("fc1",), ("fc2",)), ("fc2", 100, ("fc2",), ("fc3",))]
    assert structure.output_layer == "fc3"
    assert structure.channel_group_of("fc3") is None
    assert structure.input_group_of("fc3").name == "fc2"
    assert structure.input_group_of("fc1") is None


def test_lenet5_flatten_maps_each_conv_channel_to_25_fc_inputs():
    structure = ModelStructure(seeded(lenet5), INPUT_SHAPE)
    group = structure.channel_group_of("conv2")
    assert group.consumers == ("fc1",)
    consumer = next(s for s in group.slices if s.param == "fc1.weight")
    assert consumer.dim == 1 and consumer.role == "consumer"
    # Flatten of (16, 5, 5): input j of fc1 comes from channel j // 25.
    assert torch.equal(consumer.channel_of, torch.arange(400) // 25)


def test_resnet_identity_skips_couple_channels(resnet):
    stem = resnet.channel_group_of("stem.conv")
    assert resnet.channel_group_of("block1.conv2") is stem
    assert set(stem.producers) == {"stem.conv", "block1.conv2"}
    assert {"block1.conv1", "block2.conv1", "block2.shortcut.0"} <= set(stem.consumers)
    norms = {s.param for s in stem.slices if s.role == "norm"}
    assert {"stem.bn.weight", "stem.bn.bias", "block1.bn2.weight", "block1.bn2.bias"} <= norms
    wide = resnet.channel_group_of("block2.conv2")
    assert set(wide.producers) == {"block2.conv2", "block2.shortcut.0", "block3.conv2"}
    assert wide.size == 64 and "fc" in wide.consumers
    # A block's inner conv is its own group.
    inner = resnet.channel_group_of("block1.conv1")
    assert inner.producers == ("block1.conv1",) and inner.consumers == ("block1.conv2",)


def test_every_group_slice_maps_channels_consistently(resnet):
    for group in resnet.channel_groups:
        for piece in group.slices:
            param = resnet.parameters[piece.param]
            assert piece.channel_of.shape == (param.shape[piece.dim],)
            covered = piece.channel_of[piece.channel_of >= 0]
            assert int(covered.max()) < group.size


def test_vit_heads_and_what_cannot_be_channel_pruned():
    structure = ModelStructure(seeded(vit_tiny), INPUT_SHAPE)
    heads = structure.heads
    assert [(h.name, h.num_heads, h.head_dim) for h in heads] == [
        (f"block{i}.attn", 4, 16) for i in (1, 2, 3)
    ]
    head = heads[0]
    # Head 1's q, k and v rows in the fused [q heads | k heads | v heads] qkv of 3 x 64 rows.
    expected = list(range(16, 32)) + list(range(80, 96)) + list(range(144, 160))
    assert head.qkv_rows(1).tolist() == expected
    assert head.proj_columns(3).tolist() == list(range(48, 64))
    reasons = structure.unsupported_channel_layers
    assert "prune its heads instead" in reasons["block2.attn.qkv"]
    assert "classes" in reasons["head.fc"]
    # The residual stream passes through LayerNorm (masking != removing): only MLP groups.
    assert [g.name for g in structure.channel_groups] == [f"block{i}.fc1" for i in (1, 2, 3)]


class NormThen(torch.nn.BatchNorm2d):
    """A BatchNorm with its activation inside its own forward, as timm's BatchNormAct2d."""

    def __init__(self, channels: int, act: torch.nn.Module) -> None:
        super().__init__(channels)
        self.act = act

    def forward(self, x):
        return self.act(super().forward(x))


class ConvNormAct(torch.nn.Module):
    def __init__(self, act: torch.nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(1, 8, 3), NormThen(8, act)
        self.conv2, self.fc = torch.nn.Conv2d(8, 4, 3), torch.nn.Linear(4 * 24 * 24, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv2(self.bn1(self.conv1(x))), 1))


@pytest.mark.parametrize(
    ("act", "prunable"), [(torch.nn.ReLU(), True), (torch.nn.Sigmoid(), False)]
)
def test_a_norm_with_its_own_activation_prunes_only_when_a_zero_channel_stays_zero(act, prunable):
    from explorer.engine.compaction import compact
    from explorer.engine.plan import PruningPlan
    from explorer.engine.pruning import Pruner

    torch.manual_seed(0)
    model = ConvNormAct(act).eval()
    with torch.no_grad():  # statistics unlike the defaults, so that a wrong rule shows
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.running_var.uniform_(0.5, 2)
    structure = ModelStructure(model, INPUT_SHAPE)
    names = [g.name for g in structure.channel_groups]
    assert ("conv1" in names) is prunable
    if not prunable:  # sigmoid(0) = 0.5: a masked channel would still feed conv2
        assert "NormThen 'bn1'" in structure.unsupported_channel_layers["conv1"]
        return
    pruner = Pruner(model, INPUT_SHAPE)
    plan = PruningPlan(method="filters", amount=0.5, scope="layer")
    small = compact(pruner, plan)
    x = torch.randn(4, *INPUT_SHAPE)
    # the oracle: the masked dense model, which zeroes the removed channels' weights
    masked = pruner.pruned_model(pruner.resolve(plan))
    assert small.conv1.out_channels < 8
    torch.testing.assert_close(small(x), masked(x), atol=1e-5, rtol=1e-4)
