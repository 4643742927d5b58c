"""Dynamic pruning: for each input, only its most active units run (simulated, and honestly so).

Static pruning removes the same units for every input. Dynamic pruning (input-dependent or
runtime pruning) keeps, per input, the units that matter for *that* input. Here the gate is an
oracle that looks at the layer's own output:

- **Gated layers**: by default every Linear / Conv2d the forward pass calls except the last one
  (the classifier, whose units are the classes); ``layers`` picks others.
- **Units**: the output channels of a conv (dim 1 of (N, C, H, W)), the output features of a
  Linear (the last dim of (N, F), or of the ViT's tokens (N, T, F)).
- **How many**: ``k = kept_units(keep, units) = max(1, floor(keep * units + 0.5))`` per layer
  and per input (rounded half up; at least one), one ``keep`` share for every layer. At
  ``keep = 1`` nothing is gated: the run *is* the dense model, bit for bit.
- **Which**: the ``k`` units with the largest **mean positive part** of their output (over a
  channel's pixels, over an input's tokens), ties broken by the larger mean output; the others'
  outputs are set to 0, as if they had not been computed. The positive part is what a ReLU
  passes on: a unit with a large negative output is silent after it, so ranking by ``|x|``
  would keep units that contribute nothing. For a Linear (N, F) this is simply the top-k of
  the output values. Where no ReLU follows (a residual branch before its sum, the attention
  projections, the ViT's MLP output) the rule is a heuristic: negative outputs do flow on
  there, and are ranked below any positive one. Measured on 1,000 class-balanced eval images
  at ``keep = 0.5`` (every default layer gated), ranking by mean ``|x|`` instead does worse on
  LeNet-5 (33% against 38%) and ResNet-mini (24% against 28%); on the ViT, whose gated
  outputs are mostly not rectified, neither rule keeps it above 25%.
- **Where**: a conv followed at once by its BatchNorm is gated after the BatchNorm
  (``gate_points``): before it, a zeroed channel would come out as the BatchNorm's shift, not
  as silence, and the sign of a raw conv output says nothing about what the ReLU will pass.
- **Tokens**: a token layer keeps the same ``k`` features for every token of an input (ranked
  by their mean positive part over the tokens), so "units computed" means the same for a ViT
  as for a CNN: the share of a layer's filters / weight rows that run for the input.

The cost reported is honest about what it counts (``DynamicResult``): the share of units
computed, and the share of the dense FLOPs that would remain if a skipped *output unit* cost
nothing (a kept conv channel costs its whole filter, a skipped one nothing). The next layer
could also skip the multiply-adds that read a zeroed unit; that saving is not counted (it
does not exist across a residual sum, and it needs a sparse *input* kernel as well).

``HONEST_NOTE`` says what this does and does not show. The model is never touched: the gates
are forward hooks on a private copy (``saliency.base.private_copy``), they act only on calls
from the calling thread, and they are removed in a ``finally``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explorer.engine import inspection
from explorer.engine.inspection import PRUNABLE_TYPES, execution_order, layer_flops
from explorer.engine.methods import get_method
from explorer.engine.plan import PruningPlan
from explorer.engine.structure import ModelStructure
from explorer.inside.activations import named_modules_checked, pruned_outputs, unit_axis
from explorer.inside.saliency.base import private_copy

#: What the page says next to the results.
HONEST_NOTE = (
    "Nothing here runs faster. The dense kernels still compute every unit of every layer; "
    "the units not kept are then set to zero, as if they had been skipped. What this shows "
    "is the accuracy when a free gate that sees every unit's output keeps each input's most "
    "active ones. "
    "To gain speed, a real scheme has to decide which units to run *before* running them, "
    "from a cheap predictor (e.g. a small side network, or the previous layer's output), and "
    "then compute only the chosen filters or rows (a gather followed by a smaller matrix "
    "product). That pays off only when few units are kept, and mostly at batch size 1: each "
    "input keeps different units, so a batch cannot share one smaller dense kernel. The idea "
    "has been studied as runtime neural pruning (Lin et al., 2017), feature boosting and "
    "suppression (Gao et al., 2019) and channel gating (Hua et al., 2019), which all train a "
    "gate and adapt the model to it; here the trained dense model is gated as it is, without "
    "retraining: the numbers say how well it tolerates per-input gates, not what a trained "
    "scheme would reach."
)

#: Inputs per forward pass.
DYNAMIC_BATCH = 500


@dataclass(frozen=True, eq=False)
class DynamicResult:
    """Predictions of the gated model at one ``keep`` share.

    Attributes:
        keep: the share of each gated layer's units kept per input, in (0, 1].
        kept: per gated layer (in the order given), the units kept per input
            (``kept_units(keep, units)``); units: per gated layer, how many it has.
        predictions: int64 (N,), the gated model's top-1 class per input.
        logits: float32 (N, classes), the gated model's outputs (on the CPU).
        accuracy: top-1 accuracy on the labels given, in [0, 1].
        usage: per gated layer, float64 (classes, units) in [0, 1]: the share of each class's
            inputs (class = true label) for which the unit was kept; a class without inputs
            has a row of zeros.
        flops_computed: share of the dense model's FLOPs (one input) that would remain if a
            skipped output unit cost nothing: each gated layer counted at ``kept / units`` of
            its FLOPs, every other op in full (savings in the next layer, which reads zeros,
            are not counted).
    """

    keep: float
    kept: dict[str, int]
    units: dict[str, int]
    predictions: torch.Tensor
    logits: torch.Tensor
    accuracy: float
    usage: dict[str, np.ndarray]
    flops_computed: float

    @property
    def fractions(self) -> dict[str, float]:
        """Per gated layer, the share of its units computed per input (``kept / units``)."""
        return {name: self.kept[name] / self.units[name] for name in self.kept}

    @property
    def units_computed(self) -> float:
        """Share of the gated layers' units computed per input, all layers together (each
        layer weighted by its number of units)."""
        return sum(self.kept.values()) / sum(self.units.values())


@dataclass(frozen=True)
class DynamicPoint:
    """One point of the accuracy / computation trade-off (shares in [0, 1])."""

    keep: float
    accuracy: float
    units_computed: float
    flops_computed: float


def kept_units(keep: float, units: int) -> int:
    """Units kept per input out of ``units`` at ``keep`` in (0, 1]: ``keep * units`` rounded
    half up, at least one (e.g. 0.1 of 300 -> 30, 0.25 of 10 -> 3, 0.01 of 6 -> 1)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    return max(1, min(units, math.floor(keep * units + 0.5)))


def default_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Every Linear / Conv2d the forward pass calls, in that order, but the last (the
    classifier). The probe runs on a private copy."""
    order = execution_order(private_copy(model), tuple(input_shape))
    return order[:-1]


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
        with torch.no_grad():
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


def unit_scores(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, mean), each (N, units): per input and unit, the mean of the output's positive
    part and the mean output, over the unit's positions (pixels, tokens; none for (N, F))."""
    axis = unit_axis(output)
    others = tuple(d for d in range(1, output.ndim) if d != axis)
    if not others:
        return output.clamp(min=0), output
    return output.clamp(min=0).mean(others), output.mean(others)


def top_units(output: torch.Tensor, k: int) -> torch.Tensor:
    """bool (N, units): each input's ``k`` units with the largest mean positive part, ties
    broken by the larger mean output (then by the lower index)."""
    positive, mean = unit_scores(output)
    by_mean = mean.argsort(dim=1, descending=True, stable=True)
    by_positive = positive.gather(1, by_mean).argsort(dim=1, descending=True, stable=True)
    chosen = by_mean.gather(1, by_positive[:, :k])
    return torch.zeros_like(positive, dtype=torch.bool).scatter_(1, chosen, True)


def _apply(output: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``output`` with the units not ``kept`` (bool (N, units)) set to 0."""
    shape = [len(output)] + [1] * (output.ndim - 1)
    shape[unit_axis(output)] = kept.shape[1]
    return output * kept.reshape(shape).to(output.dtype)


@dataclass(frozen=True)
class _Setup:
    """What every ``keep`` share of one run shares: the hooked copy, layers, points, FLOPs."""

    work: nn.Module
    layers: list[str]
    points: dict[str, str]
    layer_flops: dict[str, int]
    total_flops: int


def _setup(
    model: nn.Module,
    input_shape: tuple[int, ...],
    layers: Sequence[str] | None,
    points: Mapping[str, str] | None,
    flops: Mapping[str, int] | None,
    total_flops: int | None,
) -> _Setup:
    work = private_copy(model)
    layers = default_layers(work, input_shape) if layers is None else list(dict.fromkeys(layers))
    if not layers:
        raise ValueError("no layer to gate: give at least one Linear / Conv2d")
    modules = named_modules_checked(work, layers, "layer")
    if points is None:
        points = gate_points(work, layers, input_shape)
    points = {name: points.get(name, name) for name in layers}
    missing = sorted({point for point in points.values() if point not in modules})
    if missing:
        raise ValueError(f"unknown gate point(s) {missing}: not modules of the model")
    if flops is None or total_flops is None or any(name not in flops for name in layers):
        counted = layer_flops(work, input_shape)
        flops = {**counted, **(flops or {})}
        total_flops = total_flops or counted.get("", 0)
    return _Setup(work, layers, points, {n: int(flops.get(n, 0)) for n in layers}, total_flops)


def _gated_run(
    setup: _Setup,
    images: torch.Tensor,
    labels: torch.Tensor,
    keep: float,
    classes: int | None,
    batch_size: int,
) -> DynamicResult:
    """The gated forward passes at one ``keep`` share, and what they computed."""
    kept_units(keep, 1)  # validates keep
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"need as many labels as images (> 0), got {len(images)}, {len(labels)}")
    modules = dict(setup.work.named_modules())
    owner = threading.get_ident()
    ks: dict[str, int] = {}
    sizes: dict[str, int] = {}
    masks: dict[str, list[torch.Tensor]] = {name: [] for name in setup.layers}

    def gate_for(name: str) -> Callable[[nn.Module, object, object], object]:
        def gate(_module: nn.Module, _inputs: object, output: object) -> object:
            if threading.get_ident() != owner or not isinstance(output, torch.Tensor):
                return output
            units = output.shape[unit_axis(output)]
            k = kept_units(keep, units)
            ks[name], sizes[name] = k, units
            if k >= units:  # keep everything: the dense output itself, untouched
                masks[name].append(torch.ones(len(output), units, dtype=torch.bool))
                return output
            kept = top_units(output, k)
            masks[name].append(kept.cpu())
            return _apply(output, kept)

        return gate

    handles = [
        modules[setup.points[name]].register_forward_hook(gate_for(name)) for name in setup.layers
    ]
    device = next(setup.work.parameters()).device
    outputs = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                outputs.append(setup.work(images[start : start + batch_size].to(device)).cpu())
    finally:
        for handle in handles:
            handle.remove()
    silent = [name for name in setup.layers if name not in ks]
    if silent:
        raise ValueError(f"the forward pass never calls {silent}: nothing to gate there")
    logits = torch.cat(outputs).float()
    predicted = logits.argmax(1)
    label_array = labels.cpu().numpy().astype(np.int64)
    classes = classes or max(logits.shape[1], int(label_array.max()) + 1)
    members = np.bincount(label_array, minlength=classes)[:, None]
    usage = {}
    for name in setup.layers:
        kept = torch.cat(masks[name]).numpy()  # (N, units), one row per input and call
        if len(kept) != len(images):
            raise ValueError(f"{name!r} runs more than once per input: its gate is ambiguous")
        sums = np.zeros((classes, kept.shape[1]))
        np.add.at(sums, label_array, kept)
        usage[name] = np.divide(sums, members, out=np.zeros_like(sums), where=members > 0)
    flops = math.nan
    if setup.total_flops:
        saved = sum(setup.layer_flops[name] * (1 - ks[name] / sizes[name]) for name in setup.layers)
        flops = 1 - saved / setup.total_flops
    return DynamicResult(
        keep=keep,
        kept={name: ks[name] for name in setup.layers},
        units={name: sizes[name] for name in setup.layers},
        predictions=predicted,
        logits=logits,
        accuracy=float((predicted == labels.cpu()).double().mean()),
        usage=usage,
        flops_computed=flops,
    )


def dynamic_predict(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    keep: float,
    layers: Sequence[str] | None = None,
    classes: int | None = None,
    layer_flops: Mapping[str, int] | None = None,
    total_flops: int | None = None,
    batch_size: int = DYNAMIC_BATCH,
    points: Mapping[str, str] | None = None,
) -> DynamicResult:
    """Run ``model`` keeping, per input, only the top ``keep`` share of units at ``layers``.

    Args:
        model: the classifier, (N, *input_shape) -> (N, classes) logits; read only (a private
            copy is hooked), in eval mode (BatchNorm uses its running statistics).
        images: (N, *input_shape), normalised as the model expects; labels: int64 (N,), the
            true classes, for the accuracy and the usage map.
        keep: share of each gated layer's units kept per input, in (0, 1]; 1 = the dense model
            exactly. Per layer ``kept_units(keep, units)`` (half up, at least one).
        layers: the gated layers (Linear / Conv2d names); default ``default_layers``: all but
            the classifier.
        classes: K, the rows of ``usage``; default the model's output width.
        layer_flops, total_flops: FLOPs for one input of each gated layer and of the whole
            model (e.g. ``LayerInfo.flops``, ``ModelStructure.total_flops``); counted with
            ``inspection.layer_flops`` when not given.
        batch_size: inputs per forward pass.
        points: per layer, the module whose output is gated; default ``gate_points``
            (a conv's BatchNorm when one follows it).

    Returns:
        ``DynamicResult``: predictions, accuracy, units kept per layer, the share of units and
        of FLOPs computed, and which units each class keeps.
    """
    setup = _setup(model, tuple(images.shape[1:]), layers, points, layer_flops, total_flops)
    return _gated_run(setup, images, labels, keep, classes, batch_size)


def dynamic_curve(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    keeps: Sequence[float],
    layers: Sequence[str] | None = None,
    classes: int | None = None,
    layer_flops: Mapping[str, int] | None = None,
    total_flops: int | None = None,
    points: Mapping[str, str] | None = None,
    batch_size: int = DYNAMIC_BATCH,
) -> list[DynamicPoint]:
    """``dynamic_predict`` at every share in ``keeps`` (in that order): accuracy against the
    share of units and of FLOPs computed. The arguments are ``dynamic_predict``'s; the copy,
    gate points and FLOP counts are set up once. The point at ``keep = 1`` has exactly the
    dense model's accuracy."""
    setup = _setup(model, tuple(images.shape[1:]), layers, points, layer_flops, total_flops)
    curve = []
    for keep in keeps:
        result = _gated_run(setup, images, labels, keep, classes, batch_size)
        curve.append(
            DynamicPoint(keep, result.accuracy, result.units_computed, result.flops_computed)
        )
    return curve


# --- the static counterpart: the same share of units, but the same units for every input ------


def static_plan(
    layers: Sequence[str], keep: float, structure: ModelStructure | None = None
) -> PruningPlan:
    """The static counterpart of gating ``layers`` at ``keep``: every input loses the same
    units, each layer's ``1 - keep`` share of neurons / filters with the smallest L1 norm
    (the ``filters`` method, layer by layer, as the Prune page would do it); the other layers
    stay dense.

    With the model's ``structure``, the amounts are set where the method takes them: coupled
    layers (e.g. the convolutions feeding one residual sum) on their channel group, which is
    then pruned as a whole; a layer that cannot lose output channels (e.g. one a LayerNorm
    reads) stays dense, and ``static_point`` counts its units as computed.
    """
    kept_units(keep, 1)  # validates keep
    names = list(layers)
    if structure is not None:
        method = get_method("filters")
        wanted = set(layers)
        names = [u.name for u in method.units(structure) if wanted & set(method.scored_layers(u))]
    return PruningPlan(
        method="filters",
        criterion="magnitude",
        scope="layer",
        amount=0.0,
        unit_amounts=tuple((name, 1.0 - keep) for name in names),
    )


def static_dense_layers(layers: Sequence[str], structure: ModelStructure) -> list[str]:
    """The ``layers`` that ``static_plan`` leaves dense: no channel group lets them lose
    output units (e.g. a ViT's MLP output, which a LayerNorm reads whole)."""
    method = get_method("filters")
    covered = {name for unit in method.units(structure) for name in method.scored_layers(unit)}
    return [name for name in layers if name not in covered]


def static_point(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    parameters: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    keep: float,
    layers: Sequence[str],
    layer_flops: Mapping[str, int] | None = None,
    total_flops: int | None = None,
    batch_size: int = DYNAMIC_BATCH,
) -> DynamicPoint:
    """A statically pruned model on the same axes as ``dynamic_curve``: its accuracy on
    ``images`` and the share of ``layers``' units (and of the FLOPs, counted as for the gated
    model) it computes for every input.

    Args:
        model: the dense classifier, read only (a private copy runs with ``parameters``).
        parameters, masks: the pruned state's (``PrunedState.parameters`` / ``.masks``, e.g.
            of ``static_plan(layers, keep)`` resolved); a unit is removed when its mask zeroed
            every weight that produces it.
        keep: the share asked for (the point's ``keep``); layers: the layers counted.
        layer_flops, total_flops: as for ``dynamic_predict``.
    """
    work = private_copy(model)
    input_shape = tuple(images.shape[1:])
    modules = dict(work.named_modules())
    unknown = [name for name in layers if not isinstance(modules.get(name), PRUNABLE_TYPES)]
    if unknown or not layers:
        raise ValueError(f"not Linear / Conv2d layers of the model: {unknown or 'none given'}")
    if layer_flops is None or total_flops is None or any(n not in layer_flops for n in layers):
        counted = inspection.layer_flops(work, input_shape)
        layer_flops = {**counted, **(layer_flops or {})}
        total_flops = total_flops or counted.get("", 0)
    sizes = {name: int(modules[name].weight.shape[0]) for name in layers}
    kept = {name: int((~pruned_outputs(masks, name, sizes[name])).sum()) for name in layers}
    device = next(work.parameters()).device
    params = {name: value.to(device) for name, value in parameters.items()}
    with torch.no_grad():
        logits = torch.cat(
            [
                torch.func.functional_call(
                    work, params, (images[start : start + batch_size].to(device),)
                ).cpu()
                for start in range(0, len(images), batch_size)
            ]
        )
    accuracy = float((logits.argmax(1) == labels.cpu()).double().mean())
    saved = sum(layer_flops.get(n, 0) * (1 - kept[n] / sizes[n]) for n in layers)
    flops = 1 - saved / total_flops if total_flops else math.nan
    return DynamicPoint(keep, accuracy, sum(kept.values()) / sum(sizes.values()), flops)
