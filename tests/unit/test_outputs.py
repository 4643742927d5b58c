"""What a user's classifier returns: tuples, dicts, ModelOutput-like objects, log-probabilities
and probabilities all become class scores, with the user's parameter names untouched.

Oracles: the logits the model computes inside (``Base.scores``), and cross-entropy of those
logits (the loss of a log_softmax model must be the loss of its logits).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.evaluation import evaluate
from explorer.engine.outputs import (
    OutputError,
    adapt_classifier,
    is_adapted,
    logits_of,
    output_kind,
)
from tests.unit.conftest import seeded

SHAPE = (1, 8, 8)


class Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x)


class TupleOut(Base):
    def forward(self, x):
        z = self.scores(x)
        return z, z.abs().mean()


class DictOut(Base):
    def forward(self, x):
        return {"features": torch.flatten(x, 1), "logits": self.scores(x)}


class HFOutput(OrderedDict):
    """Like transformers' ModelOutput: a mapping with attribute access."""

    def __getattr__(self, key):
        return self[key]


class ModelOutputOut(Base):
    def forward(self, x):
        return HFOutput(loss=None, logits=self.scores(x))


class LogSoftmaxOut(Base):
    def forward(self, x):
        return F.log_softmax(self.scores(x), dim=1)


class SoftmaxOut(Base):
    def forward(self, x):
        return F.softmax(self.scores(x), dim=1)


class NoScores(Base):
    def forward(self, x):
        return {"a": self.scores(x), "b": self.scores(x)}


def images(n: int = 6) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("cls", [TupleOut, DictOut, ModelOutputOut])
def test_wrapped_outputs_give_the_inner_logits_and_keep_every_name(cls):
    model = seeded(cls)
    names = list(model.state_dict())
    x = images()
    adapted, notes = adapt_classifier(model, x)
    assert is_adapted(adapted) and notes
    assert list(adapted.state_dict()) == names
    assert type(adapted).__name__ == cls.__name__
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), adapted.scores(x), rtol=0, atol=0)
        copied = copy.deepcopy(adapted)  # caches and pruned copies deep-copy the model
        torch.testing.assert_close(copied(x), adapted.scores(x), rtol=0, atol=0)


def test_log_softmax_models_keep_their_output_and_the_loss_of_their_logits():
    model = seeded(LogSoftmaxOut)
    x = images()
    adapted, notes = adapt_classifier(model, x)
    assert not is_adapted(adapted) and any("log-probabilities" in n for n in notes)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        expected = F.cross_entropy(model.scores(x), labels)
        got = F.cross_entropy(adapted(x), labels)
    torch.testing.assert_close(got, expected)


def test_probability_outputs_become_log_probabilities():
    model = seeded(SoftmaxOut)
    x = images()
    adapted, notes = adapt_classifier(model, x)
    assert is_adapted(adapted) and any("probabilities" in n for n in notes)
    with torch.no_grad():
        torch.testing.assert_close(
            adapted(x), F.log_softmax(adapted.scores(x), 1), atol=1e-5, rtol=0
        )


def test_output_kind_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    assert output_kind(logits) == "logits"
    assert output_kind(F.log_softmax(logits, 1)) == "log-probabilities"
    assert output_kind(F.softmax(logits, 1)) == "probabilities"
    # a model that happens to give non-negative scores is not taken for a softmax
    assert output_kind(torch.tensor([[0.2, 0.3, 0.1], [0.5, 0.6, 0.0]])) == "logits"


def test_an_output_without_class_scores_is_refused_with_its_keys():
    with pytest.raises(OutputError, match=r"keys \['a', 'b'\].*logits"):
        adapt_classifier(seeded(NoScores), images())
    with pytest.raises(OutputError, match="returns a str"):
        logits_of("nope")


def test_evaluation_of_an_adapted_model_equals_its_logits():
    from explorer.zoo.mnist import ImageDataset

    model, _ = adapt_classifier(seeded(TupleOut), images())
    x = images(20)
    labels = torch.arange(20) % 5
    data = ImageDataset("random", "eval", x, labels, tuple("abcde"))
    with torch.no_grad():
        expected = (model.scores(x).argmax(1) == labels).float().mean().item()
    assert evaluate(model, data).accuracy == pytest.approx(expected)


class AuxInTraining(Base):
    """Like torchvision's GoogLeNet: (logits, aux) in training mode, logits in eval mode."""

    def forward(self, x):
        z = self.scores(x)
        return (z, z.mean(1, keepdim=True)) if self.training else z


def test_fine_tuning_trains_a_model_that_returns_aux_outputs_in_training():
    from explorer.recovery.training import Recipe, fine_tune
    from explorer.zoo.mnist import ImageDataset

    model = seeded(AuxInTraining)
    data = ImageDataset("random", "fit", images(32), torch.arange(32) % 5, tuple("abcde"))
    mask = (torch.arange(model.fc.weight.numel()) % 2).reshape(model.fc.weight.shape).float()
    result = fine_tune(
        model, {"fc.weight": mask}, data, Recipe(steps=2, batch_size=16, lr=0.1), device="cpu"
    )
    trained = result.state_dict
    assert torch.equal(trained["fc.weight"][mask == 0], torch.zeros(int((mask == 0).sum())))
    assert not torch.equal(trained["conv.weight"], model.conv.weight)  # it did train


class AuxNeedsLargerInputs(Base):
    """Like Inception v3: an aux branch that runs in training only and needs bigger images."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Conv2d(4, 5, 7)  # 7x7 kernel on a 6x6 feature map: only in training

    def forward(self, x):
        z = self.scores(x)
        if self.training:
            return z, self.aux(F.relu(self.conv(x))).flatten(1)
        return z


def test_a_training_only_part_that_cannot_take_the_images_is_a_clear_message():
    from explorer.recovery.training import Recipe, fine_tune
    from explorer.zoo.mnist import ImageDataset

    model = seeded(AuxNeedsLargerInputs)
    data = ImageDataset("random", "fit", images(32), torch.arange(32) % 5, tuple("abcde"))
    with pytest.raises(ValueError, match=r"fails in training mode.*aux_logits"):
        fine_tune(model, {}, data, Recipe(steps=1, batch_size=16), device="cpu")
