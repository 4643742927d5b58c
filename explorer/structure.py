"""The prunable structure of a model: layers, coupled channel groups, attention heads.

Channel groups come from torch-pruning's dependency graph: channels that are added together
by a residual connection, normalised by the same BatchNorm, or flattened into a Linear are one
group, and each group channel maps to the exact parameter entries that removing it removes.
Masking all of those entries is *exactly* equivalent to removing the channel (tested), which is
what lets a masked plan become a physically smaller model with equal outputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import torch
import torch_pruning as tp
from torch import nn

from explorer.inspection import (
    LayerInfo,
    attention_modules,
    example_input,
    model_flops,
    prunable_layers,
)

# Parameter entries removed with a channel, by module type and side. Modules with parameters
# not listed here (LayerNorm: its statistics mix channels, so masking != removing) make a group
# unsupported.
_CHANNEL_PARAMS: dict[tuple[type[nn.Module], str], tuple[tuple[str, int], ...]] = {
    (nn.Linear, "prune_out_channels"): (("weight", 0), ("bias", 0)),
    (nn.Linear, "prune_in_channels"): (("weight", 1),),
    (nn.Conv2d, "prune_out_channels"): (("weight", 0), ("bias", 0)),
    (nn.Conv2d, "prune_in_channels"): (("weight", 1),),
    (nn.BatchNorm2d, "prune_out_channels"): (("weight", 0), ("bias", 0)),
    (nn.BatchNorm1d, "prune_out_channels"): (("weight", 0), ("bias", 0)),
}


@dataclass(frozen=True, eq=False)
class ParamSlice:
    """Entries of one parameter that belong to group channels.

    Attributes:
        param: full parameter name, e.g. ``"block1.conv2.weight"``.
        dim: the dimension the channels run along (0 = rows / filters, 1 = input columns).
        channel_of: int64 (param.shape[dim],): the group channel of each index, -1 if none.
        role: ``"producer"`` (output rows), ``"consumer"`` (input columns) or ``"norm"``.
    """

    param: str
    dim: int
    channel_of: torch.Tensor
    role: str


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Coupled channels that can only be removed together.

    Attributes:
        name: the first producer layer (in graph order); the plan addresses the group by it.
        size: number of channels.
        producers: layers whose output channels form the group.
        consumers: layers that read the group's channels.
        slices: every parameter entry tied to the group's channels.
        root: the producer torch-pruning prunes the group through.
    """

    name: str
    size: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    slices: tuple[ParamSlice, ...]
    root: str

    @property
    def layers(self) -> tuple[str, ...]:
        return self.producers + tuple(c for c in self.consumers if c not in self.producers)


@dataclass(frozen=True, eq=False)
class HeadGroup:
    """The heads of one attention module (fused ``qkv`` as [q|k|v] x heads, and ``proj``)."""

    name: str
    num_heads: int
    head_dim: int

    @property
    def qkv(self) -> str:
        return f"{self.name}.qkv"

    @property
    def proj(self) -> str:
        return f"{self.name}.proj"

    def qkv_rows(self, head: int) -> torch.Tensor:
        """Rows of ``qkv.weight`` that belong to ``head`` (its q, k and v parts)."""
        inner = self.num_heads * self.head_dim
        base = torch.arange(self.head_dim) + head * self.head_dim
        return torch.cat([base + part * inner for part in range(3)])

    def proj_columns(self, head: int) -> torch.Tensor:
        return torch.arange(self.head_dim) + head * self.head_dim


def _handler_name(handler: object) -> str:
    return getattr(handler, "__name__", str(handler))


class ModelStructure:
    """Layers, channel groups and attention heads of a model, computed once and read-only."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.model = model
        self.input_shape = tuple(input_shape)
        self.layers: list[LayerInfo] = prunable_layers(model, self.input_shape)
        self.total_flops = model_flops(model, self.input_shape)
        self.layer_by_name = {layer.name: layer for layer in self.layers}
        self.modules = dict(model.named_modules())
        self.parameters = dict(model.named_parameters())

    @property
    def output_layer(self) -> str:
        """The last layer in graph order: its outputs are the classes and are never removed."""
        return self.layers[-1].name

    @cached_property
    def heads(self) -> list[HeadGroup]:
        groups = []
        for name in attention_modules(self.model):
            module = self.modules[name]
            head_dim = getattr(module, "head_dim", module.qkv.out_features // 3 // module.num_heads)
            groups.append(HeadGroup(name, module.num_heads, head_dim))
        return groups

    @cached_property
    def dependency_graph(self) -> tp.DependencyGraph:
        """torch-pruning's dependency graph of the model (built once; the model is not changed)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns about cls tokens it will never prune here
            return tp.DependencyGraph().build_dependency(
                self.model,
                example_inputs=example_input(self.input_shape).to(
                    next(self.model.parameters()).device
                ),
            )

    @cached_property
    def unsupported_channel_layers(self) -> dict[str, str]:
        """Layers whose output channels cannot be pruned, with the reason why."""
        reasons = {self.output_layer: "its outputs are the model's classes"}
        for heads in self.heads:
            reason = f"it belongs to attention {heads.name!r}: prune its heads instead"
            reasons[heads.qkv] = reason
            reasons[heads.proj] = reason
        return reasons

    @cached_property
    def channel_groups(self) -> list[ChannelGroup]:
        """Every group of coupled channels whose removal masking can reproduce exactly."""
        graph = self.dependency_graph
        names = {module: name for name, module in self.modules.items()}
        ignored = [self.modules[name] for name in self.unsupported_channel_layers]
        order = {layer.name: layer.order for layer in self.layers}
        groups = []
        for probe in graph.get_all_groups(
            ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)
        ):
            root_module = probe[0].dep.target.module
            size = (
                root_module.out_channels
                if isinstance(root_module, nn.Conv2d)
                else root_module.out_features
            )
            handler = probe[0].dep.handler
            group = graph.get_pruning_group(root_module, handler, list(range(size)))
            built = self._group_from_tp(group, names, size, order)
            if built is not None:
                groups.append(built)
        return sorted(groups, key=lambda g: order[g.name])

    def _group_from_tp(
        self, group: tp.Group, names: dict[nn.Module, str], size: int, order: dict[str, int]
    ) -> ChannelGroup | None:
        slices, producers, consumers = [], [], []
        for item in group.items:
            module = item.dep.target.module
            if not any(True for _ in module.parameters(recurse=False)):
                continue  # reshapes, activations, pooling: nothing to mask
            key = (type(module), _handler_name(item.dep.handler))
            if key not in _CHANNEL_PARAMS or module not in names:
                return None  # e.g. LayerNorm: masking would not equal removal
            name = names[module]
            for param_name, dim in _CHANNEL_PARAMS[key]:
                param = getattr(module, param_name, None)
                if param is None:
                    continue
                channel_of = torch.full((param.shape[dim],), -1, dtype=torch.long)
                channel_of[torch.as_tensor(item.idxs)] = torch.as_tensor(item.root_idxs)
                role = (
                    "norm"
                    if not isinstance(module, nn.Linear | nn.Conv2d)
                    else "producer"
                    if key[1] == "prune_out_channels"
                    else "consumer"
                )
                slices.append(ParamSlice(f"{name}.{param_name}", dim, channel_of, role))
            if isinstance(module, nn.Linear | nn.Conv2d):
                (producers if key[1] == "prune_out_channels" else consumers).append(name)
        producers = sorted(set(producers), key=order.__getitem__)
        consumers = sorted(set(consumers), key=order.__getitem__)
        root = names[group.items[0].dep.target.module]
        return ChannelGroup(
            producers[0], size, tuple(producers), tuple(consumers), tuple(slices), root
        )

    def channel_group_of(self, layer: str) -> ChannelGroup | None:
        """The channel group whose outputs ``layer`` produces, if any."""
        for group in self.channel_groups:
            if layer in group.producers:
                return group
        return None

    def input_group_of(self, layer: str) -> ChannelGroup | None:
        """The channel group that ``layer`` reads as its input channels, if any."""
        for group in self.channel_groups:
            if layer in group.consumers:
                return group
        return None
