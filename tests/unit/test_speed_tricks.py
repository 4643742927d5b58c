"""Speed tricks never change what runs: channels_last and BatchNorm folding are probed first.

The oracle is the plain model itself: whatever copy evaluation, latency timing or int8 runs
must give its outputs. A model that flattens with ``x.view(x.size(0), -1)`` after a conv (the
tutorial idiom) cannot run in channels_last at all; one that reads its own conv weight in
``forward`` gives other outputs once BatchNorm is folded into that weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.evaluation import IncrementalEvaluator, predict
from explorer.engine.latency import measure_latency
from explorer.engine.speed_tricks import checked_copy
from explorer.keep.quantize import quantize_int8
from explorer.zoo.mnist import ImageDataset
from tests.unit.conftest import seeded

SHAPE = (1, 12, 12)


class ViewAfterConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 10 * 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        return self.fc(x.view(x.size(0), -1))


class FlattenAfterConv(ViewAfterConv):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class ReadsItsWeight(nn.Module):
    """Adds its conv weight's mean to every output: folding BatchNorm rescales that weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 10 * 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(x, 1)) + 10 * self.conv.weight.mean()


def probe(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(1))


def with_statistics(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 2.0)
    return model.eval()


def test_view_after_conv_runs_without_channels_last_and_says_why():
    model = seeded(ViewAfterConv)
    x = probe()
    try:  # the bug this guards against: the idiom cannot run in channels_last
        model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        raise AssertionError("x.view after a conv ran in channels_last: the test is moot")
    except RuntimeError:
        pass
    model = seeded(ViewAfterConv)
    copied, tricks = checked_copy(model, x)
    assert not tricks.channels_last
    assert any("channels_last" in note and "view" in note for note in tricks.notes)
    with torch.no_grad():
        torch.testing.assert_close(copied(tricks.prepare_input(x)), model(x))


def test_a_model_the_trick_suits_keeps_it_with_no_note():
    model = seeded(FlattenAfterConv)
    before = {name: (p.stride(), p.clone()) for name, p in model.named_parameters()}
    copied, tricks = checked_copy(model, probe())
    assert tricks.channels_last and tricks.notes == ()
    assert copied.fc.weight.data_ptr() != model.fc.weight.data_ptr()  # a copy
    for name, param in model.named_parameters():  # the model itself is untouched
        assert param.stride() == before[name][0] and torch.equal(param, before[name][1])


def test_folding_that_changes_the_outputs_is_left_out():
    model = with_statistics(seeded(ReadsItsWeight))
    x = probe()
    copied, tricks = checked_copy(model, x)
    assert not tricks.folded
    assert any("BatchNorm" in note and "differ" in note for note in tricks.notes)
    assert any(isinstance(m, nn.BatchNorm2d) for m in copied.modules())
    with torch.no_grad():
        torch.testing.assert_close(copied(tricks.prepare_input(x)), model(x))
    # A model it suits is folded: no BatchNorm left, same outputs.
    plain = with_statistics(seeded(lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))))
    folded, used = checked_copy(plain, x)
    assert used.folded and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


def dataset(count: int = 40) -> ImageDataset:
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(count, *SHAPE, generator=generator)
    labels = torch.randint(0, 3, (count,), generator=generator)
    return ImageDataset("random", "eval", images, labels, ("a", "b", "c"))


def test_evaluator_on_a_view_model_equals_a_plain_pass():
    model = seeded(ViewAfterConv)
    data = dataset()
    evaluator = IncrementalEvaluator(model, data, batch_size=16, first_chunk_s=None)
    assert not evaluator.channels_last and evaluator.tricks.notes
    torch.testing.assert_close(evaluator.dense.logits, predict(model, data.images))


def test_latency_times_a_view_model_and_names_the_trick_left_out():
    timings = measure_latency(
        {"dense": seeded(ViewAfterConv)}, SHAPE, batch_sizes=(2,), repeats=3, warmup=1
    )
    assert len(timings) == 1 and timings[0].median_ms > 0
    assert any("channels_last" in note for note in timings[0].notes)


def test_int8_does_not_fold_where_folding_would_change_the_model():
    model = with_statistics(seeded(ReadsItsWeight))
    quantized = quantize_int8(model, SHAPE)
    assert quantized.folded == ()
    x = probe()
    with torch.no_grad():
        # weight-only int8 rounds weights: close to, not equal to, the fp32 model
        torch.testing.assert_close(quantized.model(x), model(x), atol=0.05, rtol=0.05)
