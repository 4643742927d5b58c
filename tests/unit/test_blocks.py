"""Whole-block pruning: a removed block is exactly its skip connection, masked and compacted.

Oracles: a skip-only model built here by hand (independently of ``explorer.engine.blocks``), the
dense model, FLOPs measured by ``torch.utils.flop_counter``, scores computed by hand.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer

from explorer.engine.blocks import Block, SkipBlock, block_kind
from explorer.engine.compaction import can_compact, compact
from explorer.engine.cost import model_cost
from explorer.engine.importance import criteria_for
from explorer.engine.inspection import layer_flops, model_flops
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.keep.export import export_program
from explorer.zoo.mnist import ImageDataset
from explorer.zoo.models import ResidualBlock, TransformerBlock, lenet5, resnet_mini, vit_tiny
from tests.unit.conftest import (
    INPUT_SHAPE,
    assert_unchanged,
    randomize_batchnorm,
    seeded,
    snapshot,
)

# --- the models -----------------------------------------------------------------------------------


def bottleneck_net() -> nn.Module:
    """Three torchvision Bottlenecks (the middle one with a strided downsample) on a small stem."""
    down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
            ),
            stage=nn.Sequential(
                Bottleneck(16, 4), Bottleneck(16, 8, stride=2, downsample=down), Bottleneck(32, 8)
            ),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(32, 10),
        )
    )


def tiny_torchvision_vit() -> nn.Module:
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision starts it at zero
    return model


@dataclass(frozen=True)
class Case:
    build: object
    shape: tuple[int, ...]
    seed: int


CASES = {
    "resnet_mini": Case(resnet_mini, INPUT_SHAPE, 2),
    "vit_tiny": Case(vit_tiny, INPUT_SHAPE, 4),
    "resnet18": Case(lambda: torchvision.models.resnet18(num_classes=10), (3, 64, 64), 0),
    "bottleneck": Case(bottleneck_net, (3, 32, 32), 1),
    "tv_vit": Case(tiny_torchvision_vit, (3, 32, 32), 3),
}


def as_input(images: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """MNIST images resized and repeated to ``shape`` (C, H, W): real images for any model."""
    channels, height, width = shape
    resized = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    return resized.repeat(1, channels, 1, 1)


class LazyPruners(dict):
    """Case name -> its pruner (calibrated with images of its input shape), built on first use."""

    def __init__(self, calibration: ImageDataset) -> None:
        super().__init__()
        self.calibration = calibration

    def __missing__(self, name: str) -> Pruner:
        case, data = CASES[name], self.calibration
        model = randomize_batchnorm(seeded(case.build, case.seed), seed=case.seed + 10)
        images = as_input(data.images, case.shape)
        self[name] = Pruner(
            model, case.shape, ImageDataset("mnist", "fit", images, data.labels, data.classes)
        )
        return self[name]


@pytest.fixture(scope="module")
def pruners(calibration) -> LazyPruners:
    return LazyPruners(calibration)


@pytest.fixture(scope="module")
def images(eval_images) -> dict[str, torch.Tensor]:
    return {name: as_input(eval_images, case.shape) for name, case in CASES.items()}


# --- the oracle: a skip-only model built by hand --------------------------------------------------


class ReluOfSkip(nn.Module):
    def __init__(self, skip: nn.Module | None) -> None:
        super().__init__()
        self.skip = skip if skip is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.skip(x))


def by_hand(block: nn.Module) -> nn.Module:
    """What a removed block is meant to compute, spelled out per class."""
    if isinstance(block, ResidualBlock):
        return ReluOfSkip(block.shortcut)
    if isinstance(block, BasicBlock | Bottleneck):
        return ReluOfSkip(block.downsample)
    if isinstance(block, TransformerBlock | EncoderBlock):
        return nn.Identity()
    raise AssertionError(f"no oracle for {type(block).__name__}")


def skip_only_model(dense: nn.Module, removed: list[str]) -> nn.Module:
    model = copy.deepcopy(dense)
    for name in removed:
        holder_name, _, leaf = name.rpartition(".")
        holder = model.get_submodule(holder_name)
        setattr(holder, leaf, by_hand(getattr(holder, leaf)))
    return model


def removed_blocks(state) -> list[Block]:
    return [
        block
        for unit in state.units
        if unit.name in state.keeps
        for block, kept in zip(unit.detail.blocks, state.keeps[unit.name].tolist(), strict=True)
        if not kept
    ]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- finding blocks -------------------------------------------------------------------------------


EXPECTED_STAGES = {
    "resnet_mini": {"block1..block3": ["block1", "block2", "block3"]},
    "vit_tiny": {"block1..block3": ["block1", "block2", "block3"]},
    "resnet18": {f"layer{i}": [f"layer{i}.0", f"layer{i}.1"] for i in range(1, 5)},
    "bottleneck": {"stage": ["stage.0", "stage.1", "stage.2"]},
    "tv_vit": {"encoder.layers": [f"encoder.layers.encoder_layer_{i}" for i in range(3)]},
}

EXPECTED_SKIPS = {  # blocks whose skip holds parameters
    "resnet_mini": {"block2": "block2.shortcut"},
    "vit_tiny": {},
    "resnet18": {f"layer{i}.0": f"layer{i}.0.downsample" for i in (2, 3, 4)},
    "bottleneck": {"stage.1": "stage.1.downsample"},
    "tv_vit": {},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_block_is_found_once_grouped_by_the_module_holding_it(pruners, name):
    units = pruners[name].units("blocks")
    assert {u.name: [b.name for b in u.detail.blocks] for u in units} == EXPECTED_STAGES[name]
    assert all(u.size == len(u.detail.blocks) and u.kind == "blocks" for u in units)
    model = pruners[name].model
    for unit in units:
        for block in unit.detail.blocks:
            skip = model.get_submodule(block.skip) if block.skip else nn.Identity()
            with_params = any(True for _ in skip.parameters())
            assert (block.skip if with_params else None) == EXPECTED_SKIPS[name].get(block.name)


def test_a_branch_is_every_parameter_of_the_block_outside_its_skip(pruners):
    [block] = [b for u in pruners["resnet18"].units("blocks") for b in u.detail.blocks
               if b.name == "layer2.0"]  # fmt: skip
    local = ("conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias")
    assert sorted(block.branch) == sorted(f"layer2.0.{p}" for p in local)
    assert block.weights == ("layer2.0.conv1.weight", "layer2.0.conv2.weight")
    assert block.layers == ("layer2.0.conv1", "layer2.0.conv2")


def test_a_model_without_blocks_gets_a_clear_message():
    pruner = Pruner(seeded(lenet5), INPUT_SHAPE)
    assert pruner.units("blocks") == []
    with pytest.raises(
        ValueError, match=r"nothing that .*Whole blocks.*no residual or transformer"
    ):
        pruner.resolve(PruningPlan(method="blocks", amount=0.5))


def test_a_subclass_that_computes_something_else_is_not_taken_for_a_block():
    class Doubled(ResidualBlock):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    class Renamed(ResidualBlock):
        pass

    assert block_kind(Doubled(4, 4)) is None
    assert block_kind(Renamed(4, 4)) is block_kind(ResidualBlock(4, 4))


# --- masked = skip-only, compacted = masked -------------------------------------------------------


PLANS = {
    "resnet_mini-1-of-3": ("resnet_mini", PruningPlan(method="blocks", amount=1 / 3)),
    "resnet_mini-all": ("resnet_mini", PruningPlan(method="blocks", scope="layer", amount=1.0)),
    "vit_tiny-branch-2-of-3": (
        "vit_tiny",
        PruningPlan(method="blocks", criterion="branch", amount=2 / 3),
    ),
    "resnet18-layer2-whole": (
        "resnet18",
        PruningPlan(method="blocks", scope="layer", unit_amounts=(("layer2", 1.0),)),
    ),
    "resnet18-branch-3-of-8": (
        "resnet18",
        PruningPlan(method="blocks", criterion="branch", amount=3 / 8),
    ),
    "bottleneck-all": ("bottleneck", PruningPlan(method="blocks", scope="layer", amount=1.0)),
    "tv_vit-taylor-2-of-3": (
        "tv_vit",
        PruningPlan(method="blocks", criterion="taylor", amount=2 / 3),
    ),
}


@pytest.mark.parametrize(("name", "plan"), list(PLANS.values()), ids=list(PLANS))
def test_the_masked_model_is_the_skip_only_model_built_by_hand(pruners, images, name, plan):
    pruner = pruners[name]
    state = pruner.resolve(plan)
    removed = [b.name for b in removed_blocks(state)]
    assert len(removed) == sum(state.pruned.values()) > 0
    oracle = skip_only_model(pruner.model, removed)
    with torch.no_grad():
        expected, got = oracle(images[name]), pruner.pruned_model(state)(images[name])
        dense = pruner.model(images[name])
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, dense, atol=1e-4)  # removing blocks did change something


@pytest.mark.parametrize("name", ["resnet_mini", "resnet18", "tv_vit"])
def test_a_masked_block_stays_its_skip_in_train_mode_as_fine_tuning_runs_it(pruners, images, name):
    # Batch statistics instead of running ones: a zeroed BatchNorm / LayerNorm still outputs 0.
    pruner = pruners[name]
    state = pruner.resolve(PruningPlan(method="blocks", amount=0.5))
    masked = pruner.pruned_model(state).train()
    oracle = skip_only_model(pruner.model, [b.name for b in removed_blocks(state)]).train()
    with torch.no_grad():
        torch.testing.assert_close(masked(images[name]), oracle(images[name]), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("name", "plan"), list(PLANS.values()), ids=list(PLANS))
def test_the_compacted_model_equals_the_masked_one_and_loses_the_blocks_flops(
    pruners, images, name, plan
):
    pruner = pruners[name]
    shape = CASES[name].shape
    state = pruner.resolve(plan)
    small = compact(pruner, state)
    with torch.no_grad():
        expected, got = pruner.pruned_model(state)(images[name]), small(images[name])
    assert torch.allclose(got, expected, atol=1e-5)
    # FLOPs fall by exactly the removed blocks' own FLOPs (their skips stay).
    flops = layer_flops(pruner.model, shape)
    saved = sum(
        flops[b.name] - (flops.get(b.skip, 0) if b.skip else 0) for b in removed_blocks(state)
    )
    assert saved > 0
    assert model_flops(small, shape) == flops[""] - saved
    # The parameters masked are exactly those the compacted model no longer has.
    dense_names = set(dict(pruner.model.named_parameters()))
    small_params = dict(small.named_parameters())
    assert dense_names - set(small_params) == set(state.masks)
    assert n_params(small) == n_params(pruner.model) - sum(m.numel() for m in state.masks.values())
    for param_name, value in small_params.items():  # what survives is untouched
        assert torch.equal(value, pruner.structure.parameters[param_name])


@pytest.mark.parametrize("name", ["resnet_mini", "resnet18", "bottleneck"])
def test_a_masked_resnet_reports_the_flops_its_compacted_model_has(pruners, name):
    # Conv nets' FLOPs are all in convs and Linears: the masked cost the app shows is exact.
    pruner = pruners[name]
    state = pruner.resolve(PruningPlan(method="blocks", amount=0.5))
    cost = model_cost(pruner, state)
    small = compact(pruner, state)
    assert cost.flops_effective == model_flops(small, CASES[name].shape) < cost.flops_dense
    assert cost.params_nonzero == sum(int(torch.count_nonzero(p)) for p in small.parameters())


@pytest.mark.parametrize("name", sorted(CASES))
def test_amount_zero_is_the_dense_model(pruners, images, name):
    pruner = pruners[name]
    state = pruner.resolve(PruningPlan(method="blocks", amount=0.0))
    assert state.masks == {} and not state.keeps
    small = compact(pruner, state)
    assert [type(m) for m in small.modules()] == [type(m) for m in pruner.model.modules()]
    with torch.no_grad():
        assert torch.equal(small(images[name]), pruner.model(images[name]))


def test_a_whole_stage_can_go_and_the_model_still_runs_through_its_skips(pruners, images):
    pruner = pruners["resnet18"]
    state = pruner.resolve(
        PruningPlan(method="blocks", scope="layer", unit_amounts=(("layer3", 1.0),))
    )
    small = compact(pruner, state)
    assert all(isinstance(block, SkipBlock) for block in small.layer3)
    assert not any(isinstance(m, BasicBlock) for m in small.layer3.modules())
    # The first block keeps its downsample (under its own name) and the ReLU after the add.
    assert small.layer3[0].downsample is not None
    assert small.layer3[0].downsample[0].stride == (2, 2)
    with torch.no_grad():
        assert small(images["resnet18"]).shape == (16, 10)


def test_pruning_never_touches_the_dense_model_and_leaves_no_hooks(calibration, eval_images):
    model = randomize_batchnorm(seeded(resnet_mini, seed=5), seed=6)
    before = snapshot(model)
    with torch.no_grad():
        dense_out = model(eval_images)
    pruner = Pruner(model, INPUT_SHAPE, calibration)
    for criterion in ("magnitude", "branch", "ablation", "taylor", "random"):
        plan = PruningPlan(method="blocks", criterion=criterion, amount=2 / 3)
        pruner.pruned_model(plan)
        compact(pruner, plan)
    assert_unchanged(model, before)
    assert all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in model.modules()
    )
    assert all(isinstance(getattr(model, f"block{i}"), ResidualBlock) for i in (1, 2, 3))
    with torch.no_grad():
        assert torch.equal(model(eval_images), dense_out)


def test_the_compacted_resnet_mini_exports_with_torch_export(pruners, images):
    pruner = pruners["resnet_mini"]
    small = compact(pruner, PruningPlan(method="blocks", amount=1 / 3))
    program = export_program(small, INPUT_SHAPE).module()
    with torch.no_grad():
        torch.testing.assert_close(program(images["resnet_mini"]), small(images["resnet_mini"]))
    assert can_compact("blocks")


# --- scores and ranking ---------------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["magnitude", "branch", "ablation", "taylor", "random"])
@pytest.mark.parametrize("count", [1, 3])
def test_the_global_ranking_removes_the_lowest_scored_blocks(pruners, criterion, count):
    pruner = pruners["resnet18"]
    plan = PruningPlan(method="blocks", criterion=criterion, amount=count / 8)
    table = pruner.score_table(plan)
    scores = {
        block.name: float(score)
        for unit, unit_scores in zip(table.units, table.scores, strict=True)
        for block, score in zip(unit.detail.blocks, unit_scores, strict=True)
    }
    assert len(scores) == 8 and len(set(scores.values())) == 8
    lowest = sorted(scores, key=scores.__getitem__)[:count]
    assert sorted(b.name for b in removed_blocks(pruner.resolve(plan))) == sorted(lowest)


def test_layer_scope_removes_round_amount_of_each_stage(pruners):
    state = pruners["resnet18"].resolve(PruningPlan(method="blocks", scope="layer", amount=0.5))
    assert state.pruned == {f"layer{i}": 1 for i in range(1, 5)}


@pytest.mark.parametrize("norm", [1.0, 2.0])
def test_magnitude_scores_a_block_by_the_ln_mean_of_its_branch_weights(pruners, norm):
    pruner = pruners["resnet_mini"]
    table = pruner.score_table(PruningPlan(method="blocks", norm=norm))
    model = pruner.model
    expected = []
    for name in ("block1", "block2", "block3"):
        block = model.get_submodule(name)  # conv1 and conv2; not the BatchNorms, not the skip
        weights = torch.cat([block.conv1.weight.flatten(), block.conv2.weight.flatten()])
        expected.append(weights.detach().abs().double().pow(norm).mean().pow(1 / norm))
    torch.testing.assert_close(table.scores[0], torch.stack(expected).float())


def test_branch_scores_are_the_relative_change_when_the_block_becomes_its_skip(
    pruners, calibration
):
    # The zoo models are nn.Sequential: run them stage by stage and compare by hand.
    vit = pruners["vit_tiny"]
    x = vit.model.embed(calibration.images)
    expected = []
    with torch.no_grad():
        for name in ("block1", "block2", "block3"):
            y = vit.model.get_submodule(name)(x)
            expected.append((y - x).norm() / x.norm())  # ||f(x)|| / ||x||
            x = y
    scores = vit.score_table(PruningPlan(method="blocks", criterion="branch")).scores[0]
    torch.testing.assert_close(scores, torch.stack(expected), rtol=1e-4, atol=0)

    resnet = pruners["resnet_mini"]
    expected = []
    with torch.no_grad():
        x = resnet.model.stem(calibration.images)
        for name in ("block1", "block2", "block3"):
            block = resnet.model.get_submodule(name)
            y, skip = block(x), torch.relu(block.shortcut(x))
            expected.append((y - skip).norm() / skip.norm())
            x = y
    scores = resnet.score_table(PruningPlan(method="blocks", criterion="branch")).scores[0]
    torch.testing.assert_close(scores, torch.stack(expected), rtol=1e-4, atol=0)


@pytest.mark.parametrize("name", ["resnet18", "tv_vit"])
def test_ablation_scores_are_the_loss_rise_of_the_model_without_that_block(pruners, name):
    pruner = pruners[name]
    data = pruner.context.calibration
    table = pruner.score_table(PruningPlan(method="blocks", criterion="ablation"))
    with torch.no_grad():
        dense = F.cross_entropy(pruner.model(data.images), data.labels)
        for unit, scores in zip(table.units, table.scores, strict=True):
            for block, score in zip(unit.detail.blocks, scores, strict=True):
                without = skip_only_model(pruner.model, [block.name])
                rise = F.cross_entropy(without(data.images), data.labels) - dense
                torch.testing.assert_close(score, rise, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("quiet", ["block1", "block2", "block3"])
def test_the_block_whose_branch_barely_adds_anything_goes_first(calibration, quiet):
    model = randomize_batchnorm(seeded(resnet_mini, seed=7), seed=8)
    with torch.no_grad():
        bn = model.get_submodule(f"{quiet}.bn2")  # the branch's last layer: f(x) ~ 0
        bn.weight.mul_(1e-3)
        bn.bias.mul_(1e-3)
    pruner = Pruner(model, INPUT_SHAPE, calibration)
    state = pruner.resolve(PruningPlan(method="blocks", criterion="branch", amount=1 / 3))
    assert [b.name for b in removed_blocks(state)] == [quiet]


def test_block_criteria_and_their_errors(pruners):
    assert set(criteria_for("blocks")) == {"magnitude", "random", "taylor", "branch", "ablation"}
    assert not {"branch", "ablation"} & set(criteria_for("channels"))
    pruner = pruners["resnet_mini"]
    with pytest.raises(ValueError, match=r"cannot score blocks.*'branch'"):
        pruner.resolve(PruningPlan(method="blocks", criterion="activation", amount=0.5))
    with pytest.raises(ValueError, match=r"cannot score channels"):
        pruner.resolve(PruningPlan(method="filters", criterion="branch", amount=0.5))
    no_data = Pruner(pruner.model, INPUT_SHAPE)
    with pytest.raises(ValueError, match="needs calibration data"):
        no_data.resolve(PruningPlan(method="blocks", criterion="branch", amount=0.5))


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("layer2.0.conv1", r"belongs to block 'layer2.0'.*whole.*'layer2'"),
        ("layer2.0.downsample.0", r"skip connection of block 'layer2.0'"),
        ("conv1", r"in no removable block"),
    ],
)
def test_a_layer_is_not_a_unit_of_whole_blocks_and_the_error_says_why(pruners, layer, message):
    plan = PruningPlan(method="blocks", unit_amounts=((layer, 0.5),))
    with pytest.raises(ValueError, match=message):
        pruners["resnet18"].resolve(plan)
