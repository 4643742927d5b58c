"""Decision paths: the units (neurons, channels, heads) that carry one decision, dense and pruned.

A unit's **contribution** to the logit of class ``target`` is activation × gradient, summed
over the unit's positions (a channel's pixels, a token layer's tokens):

    c_u = sum_p  a_u,p * d logit_target / d a_u,p

the first-order share of the logit that passes through the unit (Shrikumar et al. 2016,
captum's ``LayerGradientXActivation``; for a layer followed by a linear read-out it is exactly
the unit's part of the logit). It is signed: positive pushes towards the target.

The **columns** of a path are the model's prunable layers (Linear / Conv2d) in execution order,
but the classifier, whose units are the classes (the path's output column is the target
class). An attention module with fused ``[q|k|v]`` projections adds a column of its **heads**,
named ``"<attention>:heads"`` and placed before its output projection: head ``h``'s
contribution is activation × gradient of its slice ``h*d:(h+1)*d`` of the output projection's
input (the concatenated head outputs), summed over tokens and the slice. ``nn.MultiheadAttention``
calls its output projection functionally, so its heads get no column (its Linear layers that
run as modules still do).

The **decision path** of one input is, in every column, the ``top_k`` units of largest
*positive* contribution (fewer when fewer are positive): a fixed count, not a share of the
total, so that paths of different inputs and models compare unit for unit.

Against a plan (``compare_paths``): a unit is **removed** when the plan zeroed every weight
that produces it (its weight row or filter; a head: its output-projection columns, or the
plan's keep-vector for heads). The **survival** of a column is the share of the dense path's
units the plan kept, ``weighted_survival`` the share of their contribution; the totals run over
all columns. With a structured plan, channels that can only be removed together (a
``ChannelGroup``: e.g. the convolutions that feed one residual sum) are one unit of removal:
each path unit knows its group channel, and a removed group channel that sat on the dense path
in several columns is listed once (``removed_groups``), named by group and channel index.

Everything runs one forward and one backward pass per model on a private copy (hooks and
gradients there, never on the caller's model; see ``saliency.base.private_copy``), in eval
mode, where samples of a batch do not mix (BatchNorm uses its running statistics).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from explorer.engine.inspection import HeadGroup, attention_heads, execution_order
from explorer.engine.pruning import PrunedState
from explorer.engine.structure import ChannelGroup, ModelStructure
from explorer.inside.activations import pruned_outputs
from explorer.inside.saliency.base import private_copy

#: Units per column on a decision path (the largest positive contributions).
TOP_K = 5
#: Suffix of a column of attention heads: ``"block1.attn:heads"``.
HEADS_SUFFIX = ":heads"
#: Images per forward / backward pass of ``class_unit_map``.
CLASS_MAP_BATCH = 256


def heads_column(heads: HeadGroup) -> str:
    """The column name of an attention module's heads, e.g. ``"block1.attn:heads"``."""
    return f"{heads.name}{HEADS_SUFFIX}"


def is_heads_column(name: str) -> bool:
    return name.endswith(HEADS_SUFFIX)


def _fused_heads(model: nn.Module) -> dict[str, HeadGroup]:
    """column name -> heads, for attention modules whose output projection runs as a module."""
    return {heads_column(h): h for h in attention_heads(model) if h.kind == "fused"}


def _with_heads(layers: Sequence[str], heads: Mapping[str, HeadGroup]) -> list[str]:
    """``layers`` with each heads column inserted right before its output projection."""
    before = {h.proj: column for column, h in heads.items()}
    out: list[str] = []
    for layer in layers:
        if layer in before:
            out.append(before[layer])
        out.append(layer)
    return out


@dataclass(frozen=True, eq=False)
class LayerPath:
    """One column of a decision path.

    Attributes:
        name: the layer (module name) or heads column (``"<attention>:heads"``).
        contributions: float64 (units,), activation × gradient of the target logit, summed
            over positions; positive = the unit pushes towards the target.
        top: the path's units in this column, largest contribution first (positive only, at
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
        """Share of the column's positive contribution its path units carry, in [0, 1]."""
        positive = np.clip(self.contributions, 0, None)
        total = float(positive.sum())
        return float(positive[list(self.top)].sum()) / total if total > 0 else 0.0


@dataclass(frozen=True, eq=False)
class DecisionPath:
    """The units that carry one input's decision for class ``target``, column by column.

    Attributes:
        target: the class explained (the output column).
        logits: float64 (classes,), the model's logits for the input.
        layers: one ``LayerPath`` per column, in execution order.
    """

    target: int
    logits: np.ndarray
    layers: tuple[LayerPath, ...]

    @property
    def prediction(self) -> int:
        return int(np.argmax(self.logits))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def layer(self, name: str) -> LayerPath:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no column {name!r}; the path has {list(self.names)}")


def path_layers(structure: ModelStructure, heads: bool = False) -> list[str]:
    """The hidden prunable layers a path runs through, in execution order (all but the
    classifier, whose units are the classes); with ``heads``, each fused attention module's
    heads column too (before its output projection)."""
    layers = [layer.name for layer in structure.layers if layer.name != structure.output_layer]
    if not heads:
        return layers
    return _with_heads(layers, {heads_column(h): h for h in structure.heads if h.kind == "fused"})


def default_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """``path_layers(..., heads=True)`` without a ``ModelStructure``: the Linear / Conv2d
    layers in the order one forward pass of ``model`` (run on a private copy) calls them, but
    the last (the classifier), and the heads columns."""
    work = private_copy(model)
    return _default_layers(work, input_shape)


def _default_layers(work: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    order = execution_order(work, input_shape)
    return _with_heads(order[:-1], _fused_heads(work))


def unit_contributions(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    layers: Sequence[str] | None = None,
    parameters: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Activation × gradient of each sample's target logit, per unit of each column.

    Args:
        model: a classifier, (N, C, H, W) -> (N, classes); read only (a private copy in eval
            mode runs, so the caller's hooks, gradients and train/eval mode are untouched).
        x: a batch (N, C, H, W).
        targets: int (N,), the class each sample's logit is taken of.
        layers: columns: module names whose outputs' units are scored (Linear / Conv2d
            outputs: (N, units), (N, units, H, W) or tokens (N, T, units)) and heads columns
            (``heads_column``); default ``default_layers``.
        parameters: name -> tensor substituted for the model's own (e.g.
            ``PrunedState.parameters``: the pruned variant without building it).

    Returns:
        (contributions, logits): per column (in the order of ``layers``; a column that the
        input's gradient does not reach is left out, a ValueError if none does) float64
        (N, units) on the CPU, and the logits float64 (N, classes). One forward and one
        backward pass of the sum of the samples' target logits: in eval mode samples do not
        interact, so each sample's gradient is that of its own logit.
    """
    work = private_copy(model)
    if layers is None:
        layers = _default_layers(work, tuple(x.shape[1:]))
    layers = list(dict.fromkeys(layers))
    modules = dict(work.named_modules())
    heads = _fused_heads(work) if any(map(is_heads_column, layers)) else {}
    missing = [n for n in layers if n not in modules and n not in heads]
    if missing:
        raise ValueError(
            f"unknown layer(s) {missing}; choose from {_default_layers(work, tuple(x.shape[1:]))}"
        )
    captured: dict[str, torch.Tensor] = {}
    owner = threading.get_ident()

    def keep(name: str, value: torch.Tensor) -> None:
        # the first call only (a module run twice is scored on its first use)
        if threading.get_ident() == owner and name not in captured and value.requires_grad:
            value.retain_grad()
            captured[name] = value

    def output_hook(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        return lambda _module, _inputs, output: keep(name, output)

    def input_hook(name: str) -> Callable[[nn.Module, tuple], None]:
        return lambda _module, inputs: keep(name, inputs[0])

    handles = []
    try:
        for name in layers:
            if name in heads:
                module = modules[heads[name].proj]
                handles.append(module.register_forward_pre_hook(input_hook(name)))
            else:
                handles.append(modules[name].register_forward_hook(output_hook(name)))
        device = next(work.parameters()).device
        with torch.enable_grad():
            image = x.detach().to(device=device, dtype=torch.float32).requires_grad_(True)
            if parameters:
                params = {k: v.detach().to(device) for k, v in parameters.items()}
                logits = torch.func.functional_call(work, params, (image,))
            else:
                logits = work(image)
            index = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
            if len(index) != len(logits):
                raise ValueError(f"{len(index)} targets for {len(logits)} inputs")
            classes = logits.shape[1]
            if len(index) and (int(index.min()) < 0 or int(index.max()) >= classes):
                raise ValueError(f"targets must be class indices 0..{classes - 1}")
            logits.gather(1, index[:, None]).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    contributions = {}
    reached = [n for n in layers if n in captured and captured[n].grad is not None]
    if not reached:
        raise ValueError(f"none of the layers {layers} is on the way from the input to the logits")
    for name in reached:
        # A layer the input's gradient never reaches carries no decision: its output does not
        # depend on the input (Swin V2's position-bias MLP) or never reaches the logits.
        value = captured[name]
        product = (value.detach() * value.grad).double().cpu()
        n = len(product)
        if name in heads:
            # (N, ..., heads * d): the concatenated head outputs; sum tokens and each slice
            h = heads[name]
            contributions[name] = product.reshape(n, -1, h.num_heads, h.head_dim).sum((1, 3))
            continue
        # units: channels of (N, C, H, W), else the last axis; sum every other axis but N
        axis = 1 if product.ndim == 4 else product.ndim - 1
        product = product.movedim(axis, -1)
        contributions[name] = product.reshape(n, -1, product.shape[-1]).sum(1)
    return contributions, logits.detach().double().cpu()


def top_units(contributions: np.ndarray, top_k: int = TOP_K) -> tuple[int, ...]:
    """The ``top_k`` units of largest positive contribution, largest first (ties: lower index
    first)."""
    order = np.argsort(-contributions, kind="stable")[:top_k]
    return tuple(int(u) for u in order if contributions[u] > 0)


def _top_matrix(contributions: np.ndarray, top_k: int) -> np.ndarray:
    """bool (N, units): ``top_units`` of every row at once."""
    order = np.argsort(-contributions, axis=1, kind="stable")[:, :top_k]
    chosen = np.zeros(contributions.shape, dtype=bool)
    rows = np.arange(len(contributions))[:, None]
    chosen[rows, order] = np.take_along_axis(contributions, order, 1) > 0
    return chosen


def decision_path(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    layers: Sequence[str] | None = None,
    top_k: int = TOP_K,
    parameters: Mapping[str, torch.Tensor] | None = None,
) -> DecisionPath:
    """The decision path of one input for class ``target``; the model is not modified.

    Args:
        model: the classifier (read only).
        x: one input, (1, C, H, W) for an image model, (1, *input_shape) in general.
        target: the class explained.
        layers: the columns (e.g. ``path_layers(structure, heads=True)``); default
            ``default_layers``.
        top_k: path units per column (default ``TOP_K``).
        parameters: substituted parameters (see ``unit_contributions``).
    """
    if x.ndim < 2 or x.shape[0] != 1:
        raise ValueError(f"expected one input of shape (1, C, H, W), got {tuple(x.shape)}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    contributions, logits = unit_contributions(model, x, [int(target)], layers, parameters)
    return DecisionPath(
        int(target),
        logits[0].numpy(),
        tuple(
            LayerPath(name, values[0].numpy(), top_units(values[0].numpy(), top_k))
            for name, values in contributions.items()
        ),
    )


# --- dense against pruned -----------------------------------------------------------------------


@dataclass(frozen=True)
class RemovedGroup:
    """A channel of a coupled group, removed by the plan, that sat on the dense path: one unit
    of removal however many columns it appears in.

    Attributes:
        group: the ``ChannelGroup`` name; channel: the group channel.
        layers: the columns where this channel is a unit of the dense path.
    """

    group: str
    channel: int
    layers: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.group} #{self.channel}"


@dataclass(frozen=True, eq=False)
class PathComparison:
    """One input's decision path in the dense and the pruned model, and what the plan cut.

    Attributes:
        dense, pruned: the two paths (same target class, same columns).
        removed: per column, bool (units,): units the plan removed.
        weights_pruned: per column, float64 (units,): the share of each unit's weights (its
            row, filter, or a head's q/k/v rows and output columns) the plan zeroed.
        groups: per column, the ``ChannelGroup`` name its output channels belong to
            (structured channel plans only).
        group_channels: per column in ``groups``, int64 (units,): each unit's group channel.
        removed_groups: removed group channels that sat on the dense path, each once.
        seconds: wall time of both paths.
    """

    dense: DecisionPath
    pruned: DecisionPath
    removed: dict[str, np.ndarray]
    weights_pruned: dict[str, np.ndarray]
    groups: dict[str, str] = field(default_factory=dict)
    group_channels: dict[str, np.ndarray] = field(default_factory=dict)
    removed_groups: tuple[RemovedGroup, ...] = ()
    seconds: float = 0.0

    @property
    def layers(self) -> tuple[str, ...]:
        return self.dense.names

    def cut(self, layer: str) -> tuple[int, ...]:
        """The dense path's units in ``layer`` that the plan removed, in path order."""
        removed = self.removed[layer]
        return tuple(u for u in self.dense.layer(layer).top if removed[u])

    def survival(self, layer: str) -> float:
        """Share of the dense path's units in ``layer`` that the plan kept (1 when the column
        has no path units)."""
        top = self.dense.layer(layer).top
        return 1 - len(self.cut(layer)) / len(top) if top else 1.0

    def weighted_survival(self, layer: str) -> float:
        """Share of the dense path's contribution in ``layer`` carried by units that survive."""
        path = self.dense.layer(layer)
        total = float(path.contributions[list(path.top)].sum())
        lost = float(path.contributions[list(self.cut(layer))].sum())
        return 1 - lost / total if total > 0 else 1.0

    @property
    def total_survival(self) -> float:
        """Share of all the dense path's units (every column) that the plan kept."""
        units = sum(len(layer.top) for layer in self.dense.layers)
        cut = sum(len(self.cut(name)) for name in self.layers)
        return 1 - cut / units if units else 1.0

    @property
    def total_weighted_survival(self) -> float:
        """``weighted_survival`` averaged over the columns with a path (each column's
        contributions approximate the same logit, so each counts once)."""
        shares = [self.weighted_survival(p.name) for p in self.dense.layers if p.top]
        return float(np.mean(shares)) if shares else 1.0

    def still_on_path(self, layer: str) -> float:
        """Share of the dense path's units in ``layer`` that are on the pruned path too (an
        unstructured plan removes no unit but can still move the path)."""
        top = self.dense.layer(layer).top
        return len(set(top) & set(self.pruned.layer(layer).top)) / len(top) if top else 1.0

    @property
    def total_still_on_path(self) -> float:
        """``still_on_path`` over all columns' dense path units together."""
        units = sum(len(layer.top) for layer in self.dense.layers)
        kept = sum(
            len(set(d.top) & set(p.top))
            for d, p in zip(self.dense.layers, self.pruned.layers, strict=True)
        )
        return kept / units if units else 1.0

    def new_units(self, layer: str) -> tuple[int, ...]:
        """Units on the pruned path in ``layer`` that were not on the dense one."""
        dense = set(self.dense.layer(layer).top)
        return tuple(u for u in self.pruned.layer(layer).top if u not in dense)

    def group_of(self, layer: str, unit: int) -> tuple[str, int] | None:
        """(group name, group channel) of ``unit`` in ``layer``, None outside any group."""
        channels = self.group_channels.get(layer)
        if channels is None or channels[unit] < 0:
            return None
        return self.groups[layer], int(channels[unit])


def _heads_of(state: PrunedState, heads: Sequence[HeadGroup]) -> dict[str, HeadGroup]:
    found = {heads_column(h): h for h in heads}
    for unit in state.units:
        if isinstance(unit.detail, HeadGroup):
            found.setdefault(heads_column(unit.detail), unit.detail)
    return found


def _removed_heads(state: PrunedState, heads: HeadGroup) -> np.ndarray:
    """bool (heads,): heads the plan's keep-vector drops, or whose output-projection columns
    are all masked (their output no longer reaches the model)."""
    keep = state.keeps.get(heads.name)
    if keep is not None and keep.numel() == heads.num_heads:
        return ~keep.bool().cpu().numpy()
    mask = state.masks.get(heads.proj_weight)
    if mask is None:
        return np.zeros(heads.num_heads, dtype=bool)
    columns = mask.reshape(mask.shape[0], heads.num_heads, heads.head_dim)
    return (columns == 0).all(2).all(0).cpu().numpy()


def _pruned_head_weights(state: PrunedState, heads: HeadGroup) -> np.ndarray:
    """float64 (heads,): share of each head's q/k/v rows and output columns the plan zeroed."""
    zeros = np.zeros(heads.num_heads)
    total = np.zeros(heads.num_heads)
    qkv, proj = state.masks.get(heads.qkv_weight), state.masks.get(heads.proj_weight)
    for h in range(heads.num_heads):
        if qkv is not None:
            rows = qkv[heads.qkv_rows(h)]
            zeros[h] += float((rows == 0).sum())
            total[h] += rows.numel()
        if proj is not None:
            columns = proj[:, heads.proj_columns(h)]
            zeros[h] += float((columns == 0).sum())
            total[h] += columns.numel()
    return np.divide(zeros, total, out=np.zeros_like(zeros), where=total > 0)


def removed_units(
    state: PrunedState, layers: Mapping[str, int], heads: Sequence[HeadGroup] = ()
) -> dict[str, np.ndarray]:
    """Per column (name -> units), bool (units,): the units the plan removed: output units
    whose every weight it zeroed (a neuron, filter or channel; a head's rows of a packed
    projection too), and for a heads column the heads it removed (``heads``: the model's
    attention heads, ``ModelStructure.heads``; a heads plan's own are known anyway)."""
    known = _heads_of(state, heads) if any(map(is_heads_column, layers)) else {}
    out = {}
    for name, size in layers.items():
        if name in known:
            out[name] = _removed_heads(state, known[name])
        elif is_heads_column(name):
            out[name] = np.zeros(size, dtype=bool)
        else:
            out[name] = pruned_outputs(state.masks, name, size)
    return out


def pruned_weight_shares(
    state: PrunedState, layers: Mapping[str, int], heads: Sequence[HeadGroup] = ()
) -> dict[str, np.ndarray]:
    """Per column (name -> units), float64 (units,): the share of each unit's weights (row of
    a Linear, filter of a Conv2d, a head's q/k/v rows and output columns) the plan zeroed."""
    known = _heads_of(state, heads) if any(map(is_heads_column, layers)) else {}
    shares = {}
    for name, size in layers.items():
        mask = state.masks.get(f"{name}.weight")
        if name in known:
            shares[name] = _pruned_head_weights(state, known[name])
        elif mask is None or mask.shape[0] != size:
            shares[name] = np.zeros(size)
        else:
            shares[name] = 1 - mask.reshape(size, -1).double().mean(1).cpu().numpy()
    return shares


def compare_paths(
    dense: nn.Module,
    pruned: nn.Module | None,
    state: PrunedState,
    x: torch.Tensor,
    target: int,
    structure: ModelStructure | None = None,
    top_k: int = TOP_K,
    layers: Sequence[str] | None = None,
) -> PathComparison:
    """The decision path of one input in the dense and the pruned model, and what the plan cut.

    Args:
        dense: the dense model (read only, never modified).
        pruned: ``dense`` under ``state`` with zeros in place (``Pruner.pruned_model``), read
            only; None runs ``dense`` with ``state.parameters`` substituted instead.
        state: the resolved plan: which units it removed.
        x: one image (1, C, H, W); target: the class explained.
        structure: the dense model's structure: the columns (``path_layers(structure,
            heads=True)``) and its channel groups, so that coupled channels of a channel plan
            count as one unit of removal. None: ``default_layers`` and no grouping.
        top_k: path units per column.
        layers: the columns, overriding the default.
    """
    start = time.perf_counter()
    if layers is None:
        layers = (
            path_layers(structure, heads=True)
            if structure is not None
            else default_layers(dense, tuple(x.shape[1:]))
        )
    dense_path = decision_path(dense, x, target, layers, top_k)
    if pruned is None:
        pruned_path = decision_path(dense, x, target, layers, top_k, state.parameters)
    else:
        pruned_path = decision_path(pruned, x, target, layers, top_k)
    sizes = {layer.name: layer.size for layer in dense_path.layers}
    heads = structure.heads if structure is not None else attention_heads(dense)
    removed = removed_units(state, sizes, heads)
    groups: dict[str, str] = {}
    group_channels: dict[str, np.ndarray] = {}
    cut: dict[tuple[str, int], list[str]] = {}
    structured = structure is not None and any(unit.kind == "channels" for unit in state.units)
    for layer in dense_path.layers if structured else ():
        group = structure.channel_group_of(layer.name)
        if group is None:
            continue
        groups[layer.name] = group.name
        channels = group_channels[layer.name] = _group_channels(group, layer.name, layer.size)
        for unit in layer.top:
            if removed[layer.name][unit] and channels[unit] >= 0:
                cut.setdefault((group.name, int(channels[unit])), []).append(layer.name)
    return PathComparison(
        dense_path,
        pruned_path,
        removed,
        pruned_weight_shares(state, sizes, heads),
        groups,
        group_channels,
        tuple(RemovedGroup(g, c, tuple(names)) for (g, c), names in cut.items()),
        time.perf_counter() - start,
    )


def _group_channels(group: ChannelGroup, layer: str, size: int) -> np.ndarray:
    """int64 (size,): the group channel of each output unit of ``layer`` (a producer's rows
    may be a slice of the group's channels, e.g. one input of a concatenation; -1: none)."""
    weight = f"{layer}.weight"
    for piece in group.slices:
        if piece.param == weight and piece.role == "producer" and len(piece.channel_of) == size:
            return piece.channel_of.cpu().numpy().astype(np.int64)
    return np.arange(size, dtype=np.int64)


# --- many inputs: which units carry which class --------------------------------------------------


def class_unit_map(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    layer: str,
    classes: int,
    top_k: int = TOP_K,
    batch_size: int = CLASS_MAP_BATCH,
) -> np.ndarray:
    """float64 (classes, units): the share of each class's inputs on whose decision path
    (for their true class) each unit of ``layer`` lies. Rows of classes with no input are 0.

    Args:
        model: the classifier (read only).
        images: (N, C, H, W); labels: int64 (N,), the true classes (and the targets).
        layer: a column (see ``path_layers``; a heads column too).
        classes: the number of classes K.
        top_k: path units per input.
        batch_size: images per forward / backward pass (one pass of the summed target logits
            gives every sample its own gradient: the model runs in eval mode).
    """
    if len(images) == 0:
        raise ValueError("no images")
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    counts: np.ndarray | None = None
    for start in range(0, len(images), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        values = unit_contributions(model, x, y, [layer])[0][layer].numpy()  # or ValueError
        if counts is None:
            counts = np.zeros((classes, values.shape[1]))
        np.add.at(counts, y.numpy(), _top_matrix(values, top_k))
    members = np.bincount(labels.numpy(), minlength=classes)[:classes, None]
    return np.divide(counts, members, out=np.zeros_like(counts), where=members > 0)
