"""No model takes the process down: a step past its memory or time budget stops with a message
naming the step, and the caller carries on. Real architectures torch-pruning's analysis trips
on (ShuffleNetV2's channel shuffle and split, Swin's channels-last windows) keep the groups it
can follow, and those are exact: masked equals compacted."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torchvision

from explorer.engine.budget import BudgetExceeded, StepFailed, within_budget
from explorer.engine.compaction import compact
from explorer.engine.inspection import model_flops
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.engine.structure import ModelStructure
from tests.unit.conftest import randomize_batchnorm


def test_the_result_comes_back_from_the_child():
    parent = os.getpid()
    pid, values = within_budget(lambda: (os.getpid(), {"w": torch.arange(5.0)}), what="a step")
    assert pid != parent  # it did run in another process
    assert torch.equal(values["w"], torch.arange(5.0))


def test_past_the_memory_budget_is_a_message_and_the_caller_lives_on():
    with pytest.raises(BudgetExceeded, match=r"the greedy step needed more than its 256 MB"):
        within_budget(lambda: bytearray(2**31), what="greedy step", memory_mb=256, seconds=60)
    assert within_budget(lambda: 1 + 1, what="next step") == 2


def test_past_the_time_budget_the_step_is_stopped():
    start = time.monotonic()
    with pytest.raises(BudgetExceeded, match=r"the slow step took longer than 0.5 s"):
        within_budget(lambda: time.sleep(30), what="slow step", seconds=0.5)
    assert time.monotonic() - start < 10


def test_a_step_that_raises_says_what_it_raised():
    def broken():
        raise ValueError("no channels here\nsecond line")

    with pytest.raises(StepFailed, match=r"^ValueError: no channels here$"):
        within_budget(broken, what="step")


def exact_filters(model: torch.nn.Module, shape: tuple[int, ...]) -> Pruner:
    pruner = Pruner(model, shape)
    state = pruner.resolve(PruningPlan(method="filters", amount=0.3))
    assert sum(state.pruned.values()) > 0
    masked, small = pruner.pruned_model(state), compact(pruner, state)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = masked(x), small(x)
    torch.testing.assert_close(got, expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-4)
    assert model_flops(small, shape) < model_flops(model, shape)
    return pruner


def test_shufflenet_keeps_the_groups_torch_pruning_follows_and_they_are_exact():
    torch.manual_seed(0)
    model = randomize_batchnorm(
        torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=10).eval()
    )
    structure = exact_filters(model, (3, 64, 64)).structure
    assert len(structure.channel_groups) >= 10
    refused = structure.unsupported_channel_layers
    assert all(reason for reason in refused.values())  # every refusal says why
    assert any("torch-pruning" in reason for reason in refused.values())


@pytest.mark.slow
def test_swin_t_no_longer_exhausts_memory_and_its_mlp_channels_prune_exactly():
    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None, num_classes=10).eval()
    structure = ModelStructure(model, (3, 64, 64))
    names = {name for group in structure.channel_groups for name in group.producers}
    assert names and all(".mlp." in name for name in names)
    exact_filters(model, (3, 64, 64))
