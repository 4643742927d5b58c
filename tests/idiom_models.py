"""Small MNIST classifiers (1x28x28 -> 10 classes) written the ways people write them.

Each idiom is its own class, so that each is also a Python model source
``tests/idiom_models.py:ClassName``. ``IDIOMS`` lists them with what each one exercises.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class ViewAfterConv(nn.Module):
    """Flatten with ``x.view(x.size(0), -1)`` right after a conv (no pooling in between)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5, stride=2)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)
        self.fc = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.conv2(x)
        x = x.view(x.size(0), -1)
        return self.fc(F.relu(x))


class ClassicLeNet(nn.Module):
    """The classic tutorial LeNet: ``x.view(-1, 16 * 4 * 4)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 16 * 4 * 4)
        return self.fc2(F.relu(self.fc1(x)))


class ReshapeFlatten(nn.Module):
    """``x.reshape(len(x), -1)`` after pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 4)
        return self.fc(x.reshape(x.shape[0], -1))


class TorchFlatten(nn.Module):
    """``torch.flatten(x, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 4)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class ModuleFlatten(nn.Module):
    """An ``nn.Sequential`` with ``nn.Flatten()``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(4),
            nn.Flatten(),
            nn.Linear(8 * 7 * 7, 10),
        )

    def forward(self, x):
        return self.net(x)


class FunctionalOps(nn.Module):
    """``F.relu``, ``F.max_pool2d`` and ``F.dropout(x, training=self.training)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.dropout(torch.flatten(x, 1), p=0.25, training=self.training)
        return self.fc2(F.relu(self.fc1(x)))


class InplaceReLU(nn.Module):
    """``nn.ReLU(inplace=True)`` after every layer, a BatchNorm2d in between."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(4)
        self.fc1 = nn.Linear(8 * 7 * 7, 32)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(self.relu(self.bn(self.conv(x))))
        return self.fc2(self.relu2(self.fc1(torch.flatten(x, 1))))


class LogSoftmaxOutput(nn.Module):
    """Returns ``F.log_softmax(x, dim=1)`` (trained with NLL loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 4)
        return F.log_softmax(self.fc(torch.flatten(x, 1)), dim=1)


class TupleOutput(nn.Module):
    """Returns a tuple ``(logits, aux)`` (aux: the features)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        features = torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 4), 1)
        return self.fc(features), features


class DictOutput(nn.Module):
    """Returns a dict ``{"logits": ..., "features": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        features = torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 4), 1)
        return {"logits": self.fc(features), "features": features}


@dataclass
class ClassifierOutput(OrderedDict):
    """Like HuggingFace's ``ModelOutput``: an OrderedDict with attributes (``.logits``)."""

    logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for key in ("logits", "hidden_states"):
            value = getattr(self, key)
            if value is not None:
                self[key] = value

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


class ModelOutputObject(nn.Module):
    """Returns a ``ModelOutput``-like object with a ``.logits`` attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        features = torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 4), 1)
        return ClassifierOutput(logits=self.fc(features), hidden_states=features)


class BatchNorm1dHead(nn.Module):
    """An MLP with ``nn.BatchNorm1d`` after a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 128)
        self.bn1 = nn.BatchNorm1d(128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.bn1(self.fc1(torch.flatten(x, 1)))))


class SharedConv(nn.Module):
    """One conv applied twice (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 2)
        x = F.relu(self.shared(x))
        x = F.max_pool2d(F.relu(self.shared(x)), 2)
        return self.fc(torch.flatten(x, 1))


class SharedLinear(nn.Module):
    """One Linear reused twice (a weight-tied MLP block)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(28 * 28, 64)
        self.hidden = nn.Linear(64, 64)
        self.fc_out = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.fc_in(torch.flatten(x, 1)))
        x = F.relu(self.hidden(x))
        x = F.relu(self.hidden(x))
        return self.fc_out(x)


class ExtraArguments(nn.Module):
    """``forward(self, x, mask=None, return_features=False)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x, mask=None, return_features=False):
        if mask is not None:
            x = x * mask
        features = torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 4), 1)
        logits = self.fc(features)
        return (logits, features) if return_features else logits


class CachesOnFirstForward(nn.Module):
    """A tensor computed in the first forward and kept (timm ConViT's relative positions)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, 10)
        self.positions: torch.Tensor | None = None

    def forward(self, x):
        if self.positions is None or self.positions.shape[-2:] != x.shape[-2:]:
            self.positions = torch.linspace(0.5, 1.5, x.shape[-1]).expand(*x.shape[-2:])
        x = F.relu(self.conv(x * self.positions))
        return self.fc(torch.flatten(F.max_pool2d(x, 4), 1))


#: class name -> what it exercises.
IDIOMS: dict[str, str] = {
    cls.__name__: (cls.__doc__ or "").strip().splitlines()[0]
    for cls in (
        ViewAfterConv,
        ClassicLeNet,
        ReshapeFlatten,
        TorchFlatten,
        ModuleFlatten,
        FunctionalOps,
        InplaceReLU,
        LogSoftmaxOutput,
        TupleOutput,
        DictOutput,
        ModelOutputObject,
        BatchNorm1dHead,
        SharedConv,
        SharedLinear,
        ExtraArguments,
        CachesOnFirstForward,
    )
}


def training_logits(output: object) -> torch.Tensor:
    """The class scores of any of these models' outputs (for training them)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    if isinstance(output, dict):
        return output["logits"]
    return output.logits
