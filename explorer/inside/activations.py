"""What flows through a dense or pruned model: layer outputs for one input, unit statistics
over a dataset. Forward hooks capture the outputs and are always removed; the pruned variant
runs with ``torch.func.functional_call`` on the dense model, whose parameters stay untouched.

A *unit* of a layer is one output channel of a conv (dim 1 of an (N, C, H, W) output) or one
output feature of a Linear (the last dim of (N, F) or, for the ViT's tokens, (N, T, F)).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explorer.engine.inspection import PRUNABLE_TYPES

STATS_BATCH = 1000


def _output_tensor(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def named_modules_checked(
    model: nn.Module, names: Sequence[str], what: str = "module"
) -> dict[str, nn.Module]:
    """``model``'s modules by name; a ValueError naming some of its prunable layers when one
    of ``names`` is not among them (a typo in a layer name gets a list to choose from)."""
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(
            f"unknown {what}(s) {unknown}; the model has e.g. "
            f"{[n for n, m in modules.items() if isinstance(m, PRUNABLE_TYPES)]}"
        )
    return modules


def forward_with_activations(
    model: nn.Module,
    x: torch.Tensor,
    names: Sequence[str],
    parameters: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``model`` on ``x`` and capture the outputs of the modules ``names``.

    Args:
        model: the (dense) model in eval mode; read, never written.
        x: a batch (N, *input_shape).
        names: module names as in ``model.named_modules()``.
        parameters: name -> tensor substituted for the model's own (e.g.
            ``PrunedState.parameters``: the pruned variant); None or empty = the dense model.

    Returns:
        The model's output (N, classes) and, per name, that module's output (N, ...), on the
        CPU. Hooks only record calls made from this thread, so a concurrent forward of the
        shared model in another session cannot leak into the result.
    """
    modules = named_modules_checked(model, names)
    captured: dict[str, torch.Tensor] = {}
    owner = threading.get_ident()

    def hook_for(name: str) -> Callable[[nn.Module, object, object], None]:
        def record(_module: nn.Module, _inputs: object, output: object) -> None:
            if threading.get_ident() == owner:
                captured[name] = _output_tensor(output).detach()

        return record

    device = next(model.parameters()).device
    handles = [modules[name].register_forward_hook(hook_for(name)) for name in dict.fromkeys(names)]
    try:
        with torch.no_grad():
            x = x.to(device)
            if parameters:
                params = {k: v.to(device) for k, v in parameters.items()}
                output = torch.func.functional_call(model, params, (x,))
            else:
                output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return output.float().cpu(), {
        name: captured[name].float().cpu() for name in names if name in captured
    }


def layer_activations(
    model: nn.Module,
    x: torch.Tensor,
    parameters: Mapping[str, torch.Tensor] | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The output (N, ...) of every prunable layer (Linear / Conv2d) for the batch ``x``.

    ``parameters`` substitutes masked weights (the pruned variant); ``names`` restricts or
    extends the modules captured (default: every Linear and Conv2d, in definition order).
    """
    if names is None:
        names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    return forward_with_activations(model, x, names, parameters)[1]


def unit_axis(activation: torch.Tensor) -> int:
    """The axis of units in a batched output: channels of (N, C, H, W), else the last one."""
    return 1 if activation.ndim == 4 else activation.ndim - 1


def pruned_outputs(masks: Mapping[str, torch.Tensor], layer: str, size: int) -> np.ndarray:
    """bool (size,): output units of ``layer`` whose every weight the plan masked (its weight
    rows are all zero, so the unit only passes its bias on)."""
    mask = masks.get(f"{layer}.weight")
    if mask is None:
        return np.zeros(size, dtype=bool)
    return (mask.reshape(mask.shape[0], -1) == 0).all(1).cpu().numpy()


# --- one sample: dense vs pruned ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SampleComparison:
    """One input through the dense and the pruned model.

    Attributes:
        dense_logits, pruned_logits: float (classes,).
        dense, pruned: per layer, its output for the sample without the batch dim: (C, H, W),
            (F,) or (T, F).
    """

    dense_logits: torch.Tensor
    pruned_logits: torch.Tensor
    dense: dict[str, torch.Tensor]
    pruned: dict[str, torch.Tensor]

    @property
    def dense_probabilities(self) -> torch.Tensor:
        return self.dense_logits.softmax(-1)

    @property
    def pruned_probabilities(self) -> torch.Tensor:
        return self.pruned_logits.softmax(-1)

    def divergence(self) -> dict[str, float]:
        """Per layer, ||pruned - dense|| / ||dense|| of its output (0 = unchanged)."""
        out = {}
        for name, dense in self.dense.items():
            norm = float(dense.norm())
            change = float((self.pruned[name] - dense).norm())
            out[name] = change / norm if norm > 0 else (0.0 if change == 0 else float("inf"))
        return out


def compare_sample(
    model: nn.Module,
    x: torch.Tensor,
    parameters: Mapping[str, torch.Tensor],
    names: Sequence[str],
) -> SampleComparison:
    """Outputs of ``names`` and the logits for one sample ``x`` (1, *input_shape), dense and
    with ``parameters`` substituted."""
    dense_logits, dense = forward_with_activations(model, x, names)
    pruned_logits, pruned = forward_with_activations(model, x, names, parameters)
    return SampleComparison(
        dense_logits[0],
        pruned_logits[0],
        {k: v[0] for k, v in dense.items()},
        {k: v[0] for k, v in pruned.items()},
    )


# --- a whole dataset: per-unit statistics ---------------------------------------------------------


def observation_points(model: nn.Module, layers: Sequence[str]) -> dict[str, str]:
    """Per layer, the module whose output the unit statistics measure.

    A layer followed in its parent ``nn.Sequential`` by an ``nn.ReLU`` (optionally with a
    BatchNorm in between, as in conv-bn-relu) is measured after that ReLU, where "zero" means
    "the ReLU cut it off". Otherwise (the classifier, functional ``F.relu`` / GELU inside a block)
    its raw output is measured.
    """
    modules = dict(model.named_modules())
    points = {}
    for layer in layers:
        parent_name, _, child = layer.rpartition(".")
        parent = modules[parent_name]
        points[layer] = layer
        if not isinstance(parent, nn.Sequential):
            continue
        siblings = list(parent.named_children())
        index = [name for name, _ in siblings].index(child)
        for name, module in siblings[index + 1 :]:
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                continue
            if isinstance(module, nn.ReLU):
                points[layer] = f"{parent_name}.{name}" if parent_name else name
            break
    return points


@dataclass(frozen=True, eq=False)
class UnitStats:
    """Per-unit statistics of one layer over a dataset (all numpy, so they cache and pickle).

    Attributes:
        mean: float64 (U,), mean value per unit over samples and positions / tokens.
        zero_fraction: float64 (U,), fraction of values exactly 0.
        max: float64 (U,), the largest value seen.
        measured_at: the module measured (the layer itself, or the ReLU after it).
        samples: number of inputs.
    """

    mean: np.ndarray
    zero_fraction: np.ndarray
    max: np.ndarray
    measured_at: str
    samples: int

    @property
    def dead(self) -> np.ndarray:
        """bool (U,): never > 0 on the dataset (a ReLU after it would always output 0)."""
        return self.max <= 0


def unit_statistics(
    model: nn.Module,
    images: torch.Tensor,
    points: Mapping[str, str],
    parameters: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = STATS_BATCH,
) -> dict[str, UnitStats]:
    """Mean, fraction of zeros and max per unit of each layer over ``images`` (N, C, H, W).

    Args:
        model: the dense model (read only); ``parameters`` substitutes masked weights.
        points: layer -> module measured, from ``observation_points``.
        batch_size: images per forward pass.
    """
    names = list(dict.fromkeys(points.values()))
    sums: dict[str, torch.Tensor] = {}
    zeros: dict[str, torch.Tensor] = {}
    maxima: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for start in range(0, len(images), batch_size):
        _, outputs = forward_with_activations(
            model, images[start : start + batch_size], names, parameters
        )
        for name, value in outputs.items():
            axis = unit_axis(value)
            others = tuple(d for d in range(value.dim()) if d != axis)  # reduce in place: no copy
            sums[name] = sums.get(name, 0) + value.sum(others).double()
            zeros[name] = zeros.get(name, 0) + (value == 0).sum(others)
            top = value.amax(others).double()
            maxima[name] = torch.maximum(maxima[name], top) if name in maxima else top
            counts[name] = counts.get(name, 0) + value.numel() // value.shape[axis]
    return {
        layer: UnitStats(
            (sums[name] / counts[name]).numpy(),
            (zeros[name].double() / counts[name]).numpy(),
            maxima[name].numpy(),
            name,
            len(images),
        )
        for layer, name in points.items()
    }
