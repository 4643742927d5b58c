"""Shared fixtures and helpers for the unit tests: small models, the data splits, oracles."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from explorer.zoo.mnist import ImageDataset, calibration_batch, load_mnist
from explorer.zoo.models import weights_path

INPUT_SHAPE = (1, 28, 28)


def seeded(build, seed: int = 0) -> nn.Module:
    """``build()`` with a fixed random init, in eval mode."""
    torch.manual_seed(seed)
    return build().eval()


def prunable(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every Linear / Conv2d, in definition order."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            yield name, module


def distinct_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every Linear / Conv2d weight entry a magnitude no other entry in the model has.

    Magnitudes are a random permutation of 1..N scaled into (0, 0.1], with random signs, so
    that magnitude rankings (per layer and global) have no ties and an oracle is unambiguous.
    """
    generator = torch.Generator().manual_seed(seed)
    layers = list(prunable(model))
    total = sum(m.weight.numel() for _, m in layers)
    magnitudes = (torch.randperm(total, generator=generator) + 1).double() / total * 0.1
    signs = torch.randint(0, 2, (total,), generator=generator) * 2 - 1
    values = (magnitudes * signs).float()
    assert len(torch.unique(values.abs())) == total  # precondition of every oracle using this
    start = 0
    with torch.no_grad():
        for _, module in layers:
            n = module.weight.numel()
            module.weight.copy_(values[start : start + n].reshape(module.weight.shape))
            start += n
    return model


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm running statistics and affine parameters (so that a test that
    compares a compacted model with the masked one actually exercises them)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=False).items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Every parameter and buffer of ``model`` is bit-identical to ``before``."""
    after = model.state_dict()
    assert set(after) == set(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), f"{name} of the dense model was modified"
    for name, param in model.named_parameters():
        assert param.grad is None, f"{name} of the dense model got a gradient"


def hooks_of(model: nn.Module) -> list[tuple[str, str]]:
    """(module name, hook kind) for every hook registered anywhere in ``model``."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [
        (name, kind)
        for name, module in model.named_modules()
        for kind in kinds
        if getattr(module, kind, None)
    ]


def trained_weights_exist(name: str) -> bool:
    return weights_path(name).exists()


def require_trained(name: str) -> None:
    """Skip (only) when the committed trained weights of ``name`` are not there yet."""
    if not trained_weights_exist(name):
        pytest.skip(f"no trained weights for {name} at {weights_path(name)} yet")


@pytest.fixture(scope="session")
def eval_set() -> ImageDataset:
    return load_mnist("eval")


@pytest.fixture(scope="session")
def fit_set() -> ImageDataset:
    return load_mnist("fit")


@pytest.fixture(scope="session")
def calibration(fit_set: ImageDataset) -> ImageDataset:
    """A small calibration batch from the fit split."""
    return calibration_batch(fit_set, 64, seed=0)


@pytest.fixture(scope="session")
def eval_images(eval_set: ImageDataset) -> torch.Tensor:
    """A handful of real eval images for output comparisons."""
    return eval_set.images[:16].clone()


#: The bundled models, smallest first.
BUNDLED = ("lenet300", "lenet5", "resnet_mini", "vit_tiny")


@pytest.fixture(scope="module")
def benches():
    """A CPU workbench of every bundled model (their trained weights required)."""
    from explorer.engine.workbench import open_workbench

    for name in BUNDLED:
        require_trained(name)
    return {name: open_workbench(name, torch.device("cpu")) for name in BUNDLED}
