"""Dynamic pruning: for each input, only its most active units run (simulated, and honestly so).

Static pruning removes the same units for every input. Dynamic pruning (runtime or
input-dependent pruning: e.g. Runtime Neural Pruning, Lin et al. 2017; Feature Boosting and
Suppression, Gao et al. 2019; channel gating, Hua et al. 2019) keeps, per input, the units
that matter for *that* input. Here, at every hidden layer (every prunable Linear / Conv2d but
the classifier) and for every input, the ``k = max(1, round(keep * units))`` units with the
largest **mean positive output** (over a channel's pixels or a token layer's tokens) are kept
and the others' outputs set to 0, as if they had not been computed. The positive part is what
a following ReLU passes on: a unit with a large negative output is silent after it. A
convolution followed at once by its BatchNorm is gated after the BatchNorm (``gate_points``):
before it, a zeroed channel would come out as the BatchNorm's shift, not as silence, and the
sign of a raw convolution output says nothing about what the ReLU will pass.

``HONEST_NOTE`` says what this does and does not show: the dense kernels here still compute
every unit and then zero some, so nothing runs faster; the accuracy against the fraction of
units computed is what a real dynamic scheme could reach with a free, perfect gate.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explorer.saliency.base import private_copy

HONEST_NOTE = (
    "Nothing here runs faster. The dense kernels still compute every unit of every layer; "
    "the units not kept are then set to zero, as if they had been skipped. What this shows "
    "is the accuracy a dynamic scheme could reach with a perfect gate that costs nothing. "
    "To gain speed, a real scheme has to decide which units to run *before* running them, "
    "from a cheap predictor (e.g. a small side network, or the previous layer's output), and "
    "then compute only the chosen filters or rows (a gather followed by a smaller matrix "
    "product). That pays off only when few units are kept, and mostly at batch size 1: each "
    "input keeps different units, so a batch cannot share one smaller dense kernel."
)


@dataclass(frozen=True, eq=False)
class DynamicResult:
    """Predictions of the gated model at one ``keep`` fraction.

    Attributes:
        keep: the share of each layer's units kept per input.
        kept: per gated layer, the number of units kept per input (``max(1, round(keep *
            units))``); units: per gated layer, how many it has.
        predictions: int64 (N,); accuracy: top-1 on the labels given.
        usage: per gated layer, float64 (classes, units): the share of each class's inputs
            for which the unit was kept (class = the true label).
        flops_computed: share of the model's FLOPs left if the skipped output units cost
            nothing (a skipped unit saves its share of its own layer only; see
            ``dynamic_predict``); nan when per-layer FLOPs are not given.
    """

    keep: float
    kept: dict[str, int]
    units: dict[str, int]
    predictions: torch.Tensor
    accuracy: float
    usage: dict[str, np.ndarray]
    flops_computed: float

    @property
    def units_computed(self) -> float:
        """Share of the gated layers' units computed per input (all layers together)."""
        return sum(self.kept.values()) / sum(self.units.values())


def kept_units(keep: float, units: int) -> int:
    """Units kept per input out of ``units`` at ``keep`` in (0, 1]: at least one."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    return max(1, min(units, round(keep * units)))


def _unit_scores(output: torch.Tensor) -> torch.Tensor:
    """(N, units): mean positive part of each unit's output over its positions."""
    positive = output.clamp(min=0)
    if positive.ndim == 2:
        return positive
    axis = 1 if positive.ndim == 4 else positive.ndim - 1
    moved = positive.movedim(axis, -1)
    return moved.reshape(len(moved), -1, moved.shape[-1]).mean(1)


def _gate(output: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``output`` with all but each input's top-k units zeroed, and the bool (N, units) kept."""
    scores = _unit_scores(output)
    top = scores.topk(k, dim=1).indices
    kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)
    axis = 1 if output.ndim == 4 else output.ndim - 1
    shape = [len(output)] + [1] * (output.ndim - 1)
    shape[axis] = kept.shape[1]
    return output * kept.reshape(shape).to(output.dtype), kept


def gate_points(
    model: nn.Module, layers: Sequence[str], input_shape: tuple[int, ...]
) -> dict[str, str]:
    """Per gated layer, the module whose output is gated: the layer itself, or the
    ``BatchNorm2d`` the forward pass calls right after a ``Conv2d`` (same channel count)."""
    work = private_copy(model)
    names = {module: name for name, module in work.named_modules()}
    calls: list[str] = []
    leaves = [m for m in work.modules() if not list(m.children())]
    handles = [m.register_forward_pre_hook(lambda m, _i: calls.append(names[m])) for m in leaves]
    try:
        with torch.inference_mode():
            device = next(work.parameters()).device
            work(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(work.named_modules())
    points = {}
    for layer in layers:
        point = layer
        if layer in calls and isinstance(modules[layer], nn.Conv2d):
            after = calls[calls.index(layer) + 1 : calls.index(layer) + 2]
            norm = modules.get(after[0]) if after else None
            if isinstance(norm, nn.BatchNorm2d) and (
                norm.num_features == modules[layer].out_channels
            ):
                point = after[0]
        points[layer] = point
    return points


def dynamic_predict(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    keep: float,
    layers: Sequence[str],
    classes: int,
    layer_flops: dict[str, int] | None = None,
    total_flops: int | None = None,
    batch_size: int = 500,
    points: dict[str, str] | None = None,
) -> DynamicResult:
    """Run ``model`` keeping, per input, only the top ``keep`` share of units at ``layers``.

    Args:
        model: the classifier (read only: a private copy is hooked).
        images: (N, C, H, W); labels: int64 (N,), for the accuracy and the usage map.
        keep: share of each gated layer's units kept per input, in (0, 1]; 1 = the model.
        layers: the gated layers (e.g. ``paths.path_layers``), Linear / Conv2d outputs.
        classes: K, the number of classes.
        points: per layer, the module whose output is gated (``gate_points``); default the
            layer itself.
        layer_flops, total_flops: FLOPs of each gated layer and of the whole model for one
            input; given both, ``flops_computed`` counts each gated layer at its kept share
            (the inputs a skipped unit no longer feeds are not counted as savings).
        batch_size: inputs per pass.
    """
    work = private_copy(model)
    modules = dict(work.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}")
    owner = threading.get_ident()
    ks: dict[str, int] = {}
    masks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def gate_for(name: str):
        def gate(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            if threading.get_ident() != owner:
                return output
            axis = 1 if output.ndim == 4 else output.ndim - 1
            units = output.shape[axis]
            ks.setdefault(name, kept_units(keep, units))
            gated, kept = _gate(output, ks[name])
            masks[name].append(kept.cpu())
            return gated

        return gate

    points = points or {}
    handles = [
        modules[points.get(name, name)].register_forward_hook(gate_for(name)) for name in layers
    ]
    device = next(work.parameters()).device
    predictions = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size].to(device)
                predictions.append(work(batch).argmax(1).cpu())
    finally:
        for handle in handles:
            handle.remove()
    predicted = torch.cat(predictions)
    label_array = labels.numpy()
    members = np.bincount(label_array, minlength=classes)[:, None]
    usage = {}
    units = {}
    for name in layers:
        kept = torch.cat(masks[name]).numpy()  # (N, units)
        units[name] = kept.shape[1]
        sums = np.zeros((classes, kept.shape[1]))
        np.add.at(sums, label_array, kept)
        usage[name] = np.divide(sums, members, out=np.zeros_like(sums), where=members > 0)
    flops = float("nan")
    if layer_flops is not None and total_flops:
        saved = sum(layer_flops[name] * (1 - ks[name] / units[name]) for name in layers)
        flops = 1 - saved / total_flops
    return DynamicResult(
        keep=keep,
        kept=dict(ks),
        units=units,
        predictions=predicted,
        accuracy=float((predicted == labels).double().mean()),
        usage=usage,
        flops_computed=flops,
    )


@dataclass(frozen=True)
class DynamicPoint:
    """One point of the accuracy / computation trade-off."""

    keep: float
    accuracy: float
    units_computed: float
    flops_computed: float


def dynamic_curve(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    keeps: Sequence[float],
    layers: Sequence[str],
    classes: int,
    layer_flops: dict[str, int] | None = None,
    total_flops: int | None = None,
    points: dict[str, str] | None = None,
) -> list[DynamicPoint]:
    """``dynamic_predict`` at every ``keep``: accuracy against the share computed."""
    curve = []
    for keep in keeps:
        result = dynamic_predict(
            model,
            images,
            labels,
            keep,
            layers,
            classes,
            layer_flops,
            total_flops,
            points=points,
        )
        curve.append(
            DynamicPoint(keep, result.accuracy, result.units_computed, result.flops_computed)
        )
    return curve
