"""Decision paths: the units (neurons, channels) that carry one decision, dense and pruned.

A unit's **contribution** to the logit of class ``target`` is activation × gradient, summed
over the unit's positions (a channel's pixels, a token layer's tokens):

    c_u = sum_p  a_u,p * d logit_target / d a_u,p

the first-order share of the logit that passes through the unit (Shrikumar et al. 2016,
captum's ``LayerGradientXActivation``; for a layer followed by a linear read-out it is exactly
the unit's part of the logit). The **decision path** of one input is, at every hidden layer
(every prunable Linear / Conv2d but the classifier, whose units are the classes), the
``top_k`` units with the largest positive contribution: the ones that push towards the target.

Against a plan (``compare_paths``): a unit is **removed** when the plan zeroed every weight
that produces it (its weight row or filter: it passes on its bias only); the **survival** of a
layer is the share of the dense path's units that the plan kept, and the total the share over
all layers. With a structured plan, channels that can only be removed together (a
``ChannelGroup``: e.g. the convolutions feeding one residual sum) are one unit of removal: the
comparison lists each removed group channel once, with the layers it spans.

All of it runs one forward and one backward pass on a private copy of the model (hooks and
gradients there, never on the caller's model; see ``saliency.base.private_copy``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from explorer.activations import pruned_outputs
from explorer.pruning import PrunedState
from explorer.saliency.base import private_copy
from explorer.structure import ChannelGroup, ModelStructure

#: Units per layer on a decision path (the largest positive contributions).
TOP_K = 5


@dataclass(frozen=True, eq=False)
class LayerPath:
    """One layer of a decision path.

    Attributes:
        name: the layer (module name).
        contributions: float64 (units,), activation × gradient of the target logit, summed
            over positions; positive = the unit pushes towards the target.
        top: the path's units at this layer, largest contribution first (positive only, at
            most ``top_k``).
    """

    name: str
    contributions: np.ndarray
    top: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.contributions)

    @property
    def top_share(self) -> float:
        """Share of the layer's positive contribution its path units carry, in [0, 1]."""
        positive = np.clip(self.contributions, 0, None)
        total = float(positive.sum())
        return float(positive[list(self.top)].sum()) / total if total > 0 else 0.0


@dataclass(frozen=True, eq=False)
class DecisionPath:
    """The units that carry one input's decision for class ``target``, layer by layer.

    Attributes:
        target: the class explained.
        logits: float64 (classes,), the model's logits for the input.
        layers: one ``LayerPath`` per hidden layer, in execution order.
    """

    target: int
    logits: np.ndarray
    layers: tuple[LayerPath, ...]

    @property
    def prediction(self) -> int:
        return int(np.argmax(self.logits))

    def layer(self, name: str) -> LayerPath:
        return next(layer for layer in self.layers if layer.name == name)


def path_layers(structure: ModelStructure) -> list[str]:
    """The hidden prunable layers a path runs through, in execution order (all but the
    classifier, whose units are the classes)."""
    return [layer.name for layer in structure.layers if layer.name != structure.output_layer]


def unit_contributions(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layers: Sequence[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Activation × gradient of each sample's target logit, per unit of each layer.

    Args:
        model: a classifier, (N, C, H, W) -> (N, classes); read only (a private copy runs).
        x: a batch (N, C, H, W).
        targets: int64 (N,), the class each sample's logit is taken of.
        layers: module names whose outputs' units are scored (Linear / Conv2d outputs:
            (N, units), (N, units, H, W) or tokens (N, T, units)).

    Returns:
        (contributions, logits): per layer float64 (N, units) on the CPU, and the logits
        (N, classes). Samples do not mix: in eval mode the sum of the samples' target logits
        has, for each sample, that sample's own gradient.
    """
    work = private_copy(model)
    modules = dict(work.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"unknown layer(s) {missing}")
    outputs: dict[str, torch.Tensor] = {}
    owner = threading.get_ident()

    def recorder(name: str):
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if threading.get_ident() == owner and name not in outputs:
                output.retain_grad()
                outputs[name] = output

        return record

    handles = [modules[name].register_forward_hook(recorder(name)) for name in layers]
    device = next(work.parameters()).device
    try:
        with torch.enable_grad():
            image = x.detach().to(device=device, dtype=torch.float32).requires_grad_(True)
            logits = work(image)
            targets = torch.as_tensor(targets, device=logits.device).reshape(-1, 1)
            logits.gather(1, targets).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    contributions = {}
    for name in layers:
        out = outputs.get(name)
        if out is None or out.grad is None:
            raise ValueError(f"layer {name!r} is not on the way from the input to the logits")
        product = (out.detach() * out.grad).double().cpu()
        # units: channels of (N, C, H, W), else the last axis; sum every other axis but N
        axis = 1 if product.ndim == 4 else product.ndim - 1
        product = product.movedim(axis, -1)
        contributions[name] = product.reshape(len(product), -1, product.shape[-1]).sum(1)
    return contributions, logits.detach().double().cpu()


def top_units(contributions: np.ndarray, top_k: int = TOP_K) -> tuple[int, ...]:
    """The ``top_k`` units of largest positive contribution, largest first (ties: lower index
    first)."""
    order = np.argsort(-contributions, kind="stable")[:top_k]
    return tuple(int(u) for u in order if contributions[u] > 0)


def decision_path(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    layers: Sequence[str],
    top_k: int = TOP_K,
) -> DecisionPath:
    """The decision path of one input ``x`` (1, C, H, W) for class ``target`` through
    ``layers`` (e.g. ``path_layers(structure)``); the model is not modified."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image of shape (1, C, H, W), got {tuple(x.shape)}")
    contributions, logits = unit_contributions(model, x, torch.tensor([int(target)]), layers)
    if not 0 <= target < logits.shape[1]:
        raise ValueError(f"target {target} is not a class index (0..{logits.shape[1] - 1})")
    return DecisionPath(
        int(target),
        logits[0].numpy(),
        tuple(
            LayerPath(
                name,
                contributions[name][0].numpy(),
                top_units(contributions[name][0].numpy(), top_k),
            )
            for name in layers
        ),
    )


# --- dense against pruned -----------------------------------------------------------------------


@dataclass(frozen=True)
class RemovedGroup:
    """Coupled channels removed together that sat on the dense path: one unit of removal.

    Attributes:
        group: the ``ChannelGroup`` name; channel: the group channel.
        layers: the path layers where this channel is an output unit on the dense path.
    """

    group: str
    channel: int
    layers: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class PathComparison:
    """One input's decision path in the dense and the pruned model, and what the plan cut.

    Attributes:
        dense, pruned: the two paths (same target class, same layers).
        removed: per layer, bool (units,): output units the plan removed.
        weights_pruned: per layer, float64 (units,): the share of each unit's weights (its
            row or filter) that the plan zeroed; 1 for a removed unit.
        groups: per layer, the ``ChannelGroup`` name its output channels belong to (structured
            plans; absent for layers without one).
        removed_groups: removed group channels that sat on the dense path, each once.
        seconds: wall time of both paths.
    """

    dense: DecisionPath
    pruned: DecisionPath
    removed: dict[str, np.ndarray]
    weights_pruned: dict[str, np.ndarray]
    groups: dict[str, str] = field(default_factory=dict)
    removed_groups: tuple[RemovedGroup, ...] = ()
    seconds: float = 0.0

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.dense.layers)

    def cut(self, layer: str) -> tuple[int, ...]:
        """The dense path's units at ``layer`` that the plan removed, in path order."""
        removed = self.removed[layer]
        return tuple(u for u in self.dense.layer(layer).top if removed[u])

    def survival(self, layer: str) -> float:
        """Share of the dense path's units at ``layer`` that the plan kept (1 when the layer
        has no path units)."""
        top = self.dense.layer(layer).top
        return 1 - len(self.cut(layer)) / len(top) if top else 1.0

    def weighted_survival(self, layer: str) -> float:
        """Share of the dense path's contribution at ``layer`` carried by units that survive."""
        path = self.dense.layer(layer)
        total = float(path.contributions[list(path.top)].sum())
        lost = float(path.contributions[list(self.cut(layer))].sum())
        return 1 - lost / total if total > 0 else 1.0

    @property
    def total_survival(self) -> float:
        """Share of all the dense path's units (every layer) that the plan kept."""
        units = sum(len(layer.top) for layer in self.dense.layers)
        cut = sum(len(self.cut(name)) for name in self.layers)
        return 1 - cut / units if units else 1.0

    def still_on_path(self, layer: str) -> float:
        """Share of the dense path's units at ``layer`` that are on the pruned path too (an
        unstructured plan removes no unit but can still move the path)."""
        top = self.dense.layer(layer).top
        return len(set(top) & set(self.pruned.layer(layer).top)) / len(top) if top else 1.0

    @property
    def total_still_on_path(self) -> float:
        """``still_on_path`` over all layers' dense path units together."""
        units = sum(len(layer.top) for layer in self.dense.layers)
        kept = sum(
            len(set(d.top) & set(p.top))
            for d, p in zip(self.dense.layers, self.pruned.layers, strict=True)
        )
        return kept / units if units else 1.0

    def new_units(self, layer: str) -> tuple[int, ...]:
        """Units on the pruned path at ``layer`` that were not on the dense one."""
        dense = set(self.dense.layer(layer).top)
        return tuple(u for u in self.pruned.layer(layer).top if u not in dense)


def removed_units(state: PrunedState, layers: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Per layer (name -> units), bool (units,): the output units whose every weight the plan
    zeroed (a removed neuron, filter or channel; a head's rows of a packed projection too)."""
    return {name: pruned_outputs(state.masks, name, size) for name, size in layers.items()}


def pruned_weight_shares(state: PrunedState, layers: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Per layer (name -> units), float64 (units,): the share of each output unit's weights
    (row of a Linear, filter of a Conv2d) that the plan zeroed."""
    shares = {}
    for name, size in layers.items():
        mask = state.masks.get(f"{name}.weight")
        if mask is None or mask.shape[0] != size:
            shares[name] = np.zeros(size)
        else:
            shares[name] = 1 - mask.reshape(size, -1).double().mean(1).cpu().numpy()
    return shares


def compare_paths(
    dense: nn.Module,
    pruned: nn.Module,
    state: PrunedState,
    x: torch.Tensor,
    target: int,
    structure: ModelStructure,
    top_k: int = TOP_K,
) -> PathComparison:
    """The decision path of ``x`` (1, C, H, W) for ``target`` in both models, with what the
    plan removed. ``pruned`` is ``dense`` under ``state`` (zeros in place); neither changes."""
    start = time.perf_counter()
    layers = path_layers(structure)
    dense_path = decision_path(dense, x, target, layers, top_k)
    pruned_path = decision_path(pruned, x, target, layers, top_k)
    sizes = {layer.name: layer.size for layer in dense_path.layers}
    removed = removed_units(state, sizes)
    groups: dict[str, str] = {}
    cut: dict[tuple[str, int], list[str]] = {}
    structured = any(unit.kind == "channels" for unit in state.units)
    for layer in dense_path.layers if structured else ():
        group = structure.channel_group_of(layer.name)
        if group is None:
            continue
        groups[layer.name] = group.name
        channel_of = _group_channels(group, layer.name)
        for unit in layer.top:
            if removed[layer.name][unit]:
                cut.setdefault((group.name, channel_of(unit)), []).append(layer.name)
    return PathComparison(
        dense_path,
        pruned_path,
        removed,
        pruned_weight_shares(state, sizes),
        groups,
        tuple(RemovedGroup(g, c, tuple(names)) for (g, c), names in cut.items()),
        time.perf_counter() - start,
    )


def _group_channels(group: ChannelGroup, layer: str):
    """unit of ``layer``'s output -> its channel in ``group`` (a producer's rows may be a
    slice of the group's channels, e.g. one input of a concatenation)."""
    weight = f"{layer}.weight"
    for piece in group.slices:
        if piece.param == weight and piece.role == "producer":
            channel_of = piece.channel_of.tolist()
            return lambda unit: int(channel_of[unit])
    return lambda unit: int(unit)


# --- many inputs: which units carry which class --------------------------------------------------


def class_unit_map(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    layer: str,
    classes: int,
    top_k: int = TOP_K,
    batch_size: int = 256,
) -> np.ndarray:
    """float64 (classes, units): the share of each class's inputs on whose decision path
    (for their true class) each unit of ``layer`` lies. Rows of classes with no input are 0.

    Args:
        model: the classifier (read only).
        images: (N, C, H, W); labels: int64 (N,), the true classes (and the targets).
        layer: a hidden layer (see ``path_layers``).
        classes: the number of classes K.
        top_k: path units per input.
    """
    counts: np.ndarray | None = None
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        y = labels[start : start + batch_size]
        contributions = unit_contributions(model, x, y, [layer])[0][layer].numpy()
        if counts is None:
            counts = np.zeros((classes, contributions.shape[1]))
        for row, label in zip(contributions, y.tolist(), strict=True):
            counts[label, list(top_units(row, top_k))] += 1
    if counts is None:
        raise ValueError("no images")
    members = np.bincount(labels.numpy(), minlength=classes)[:, None]
    return np.divide(counts, members, out=np.zeros_like(counts), where=members > 0)
