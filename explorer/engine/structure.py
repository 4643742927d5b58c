"""The prunable structure of a model: layers, coupled channel groups, attention heads, blocks.

Channel groups come from torch-pruning's dependency graph: channels that are added together
by a residual connection, normalised by the same BatchNorm, read by a depthwise conv, or
flattened into a Linear are one group, and each group channel maps to the exact parameter
entries that removing it removes. Masking all of those entries is *exactly* equivalent to
removing the channel (tested), which is what lets a masked plan become a physically smaller
model with equal outputs. A group that holds a module for which that is not so (LayerNorm, a
grouped conv) is left out, and its layers are reported with the reason.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from explorer.engine.blocks import BlockStage, find_block_stages
from explorer.engine.budget import BudgetExceeded, StepFailed, within_budget
from explorer.engine.inspection import (
    PRUNABLE_TYPES,
    HeadGroup,
    LayerInfo,
    attention_heads,
    copy_model,
    example_input,
    model_flops,
    prunable_layers,
)

__all__ = [
    "ChannelGroup",
    "CompactMultiheadAttention",
    "HeadGroup",
    "ModelStructure",
    "ParamSlice",
    "unpack_multihead_attention",
]


# --- a bound on torch-pruning's index lists ------------------------------------------------------

#: Why a layer's coupling was given up when its index lists ran away.
RUNAWAY_REASON = (
    "torch-pruning's map of how its channels are coupled grows without bound through a "
    "reshape it misreads (a channels-last tensor, as in Swin's windows, read as channels-first)"
)
#: Why a flattened group was given up when the model cannot run with fewer of its channels.
FIXED_WIDTH_REASON = (
    "the model's code fixes the width these channels are flattened into (e.g. "
    "x.view(-1, 16 * 4 * 4)), so a smaller model would not run"
)


def _flattens(group: ChannelGroup) -> bool:
    """Whether a consumer reads the group's channels flattened (several entries a channel)."""
    return any(
        piece.role == "consumer" and int((piece.channel_of >= 0).sum()) > group.size
        for piece in group.slices
    )


#: Why a group through a reshape was given up when its consumers read other channels.
RESHAPE_REASON = (
    "they pass through a reshape that reorders channels (e.g. a channel shuffle), which "
    "torch-pruning's map of the coupling does not follow"
)
_INDEX_BOUND: ContextVar[int | None] = ContextVar("index_bound", default=None)


class _IndexBlowUp(Exception):
    """A flatten index mapping produced more indices than any layer of the model has."""


def _bounded_flatten_call(self: object, idxs: object) -> object:
    result = _FLATTEN_CALL(self, idxs)
    bound = _INDEX_BOUND.get()
    if bound is not None and len(result) > bound:
        raise _IndexBlowUp
    return result


def _tolerant_reshape_mapping(graph: object, node: object) -> None:
    # torch-pruning divides by an inferred channel count that is 0 on some reshapes
    # (ShuffleNetV2's channel shuffle); such a reshape keeps its identity mapping, and the
    # groups through it are checked (ModelStructure._consumers_read_their_channels).
    try:
        _RESHAPE_MAPPING(graph, node)
    except ZeroDivisionError:
        return


_RESHAPE_MAPPING = tp.dependency.index_mapping.update_reshape_index_mapping
tp.dependency.index_mapping.update_reshape_index_mapping = _tolerant_reshape_mapping
_FLATTEN = tp.dependency.index_mapping._FlattenIndexMapping
_FLATTEN_CALL = _FLATTEN.__call__
_FLATTEN.__call__ = _bounded_flatten_call  # a no-op outside _bounded_index_lists


@contextmanager
def _bounded_index_lists(bound: int) -> Iterator[None]:
    """Within: a flatten mapping of more than ``bound`` indices raises ``_IndexBlowUp``. A
    legitimate flatten (conv channels into a Linear) maps to at most in_features indices."""
    token = _INDEX_BOUND.set(bound)
    try:
        yield
    finally:
        _INDEX_BOUND.reset(token)


# --- which parameter entries a channel owns, by kind of module -----------------------------------


def _is_depthwise(module: nn.Module) -> bool:
    return module.groups > 1 and module.groups == module.in_channels == module.out_channels


def _is_grouped(module: nn.Module) -> bool:
    return module.groups > 1 and not _is_depthwise(module)


def _always(module: nn.Module) -> bool:
    return True


def _zero_norm_outputs_zero(module: nn.Module) -> bool:
    """Whether a BatchNorm subclass with its own ``forward`` (timm's ``BatchNormAct2d``: the
    norm, then an activation and a dropout) still outputs exactly 0 for a channel whose weight
    and bias are 0, as a plain BatchNorm does: probed on a copy, so any activation with
    act(0) != 0 (a sigmoid) or any extra parameter rules it out. The copy is small: a norm's
    parameters are one number per channel."""
    names = {name for name, _ in module.named_parameters()}
    if not names <= {"weight", "bias"} or getattr(module, "weight", None) is None:
        return False
    try:
        probe = copy.deepcopy(module).eval()
        with torch.no_grad():
            probe.weight.zero_()
            if probe.bias is not None:
                probe.bias.zero_()
            shape = (2, module.num_features) + (3, 3) * isinstance(module, nn.BatchNorm2d)
            out = probe(torch.randn(shape) * 3 + 1)
    except Exception:  # a forward this probe cannot run: the rules are not known to hold
        return False
    return isinstance(out, torch.Tensor) and out.shape == shape and bool((out == 0).all())


@dataclass(frozen=True)
class _ChannelKind:
    """What removing one channel of a kind of module removes.

    Attributes:
        title: the kind in words, for reasons.
        base: the class the module must be an instance of, without its own ``forward`` (a
            subclass that computes something else would not follow these rules).
        test: further condition on the module (e.g. groups == channels for depthwise).
        entries: per side (``"out"``: the module's outputs are group channels, ``"in"``: its
            inputs are) the (parameter, dim, role) entries a channel owns.
        unsupported: why this kind's channels cannot be masked like removed, if so.
    """

    title: str
    base: type[nn.Module] | tuple[type[nn.Module], ...]
    test: Callable[[nn.Module], bool] = _always
    entries: dict[str, tuple[tuple[str, int, str], ...]] = field(default_factory=dict)
    unsupported: str | None = None

    #: A subclass with its own ``forward`` matches too when this says it keeps the rules
    #: (a BatchNorm followed by an activation of 0 = 0, timm's ``BatchNormAct2d``).
    own_forward: Callable[[nn.Module], bool] | None = None

    def matches(self, module: nn.Module) -> bool:
        bases = self.base if isinstance(self.base, tuple) else (self.base,)
        own = self.own_forward
        return any(
            isinstance(module, base)
            and (type(module).forward is base.forward or (own is not None and own(module)))
            for base in bases
        ) and self.test(module)


_PRODUCER = (("weight", 0, "producer"), ("bias", 0, "producer"))
_NORM = (("weight", 0, "norm"), ("bias", 0, "norm"))

#: Tested in order; the first kind that matches a module decides. A module with parameters that
#: no kind matches makes its group unsupported.
_CHANNEL_KINDS: tuple[_ChannelKind, ...] = (
    # A depthwise filter, weight (C, 1, k, k), reads channel c and writes channel c: it goes with
    # the channel whichever side torch-pruning reaches it from, always along dim 0, and it is
    # both a producer and a consumer of the group (so both the filter and the input-channel
    # scores see it).
    _ChannelKind(
        "depthwise conv",
        nn.Conv2d,
        _is_depthwise,
        dict.fromkeys(("out", "in"), (*_PRODUCER, ("weight", 0, "consumer"))),
    ),
    # Input channel c of a grouped conv is column c % (C/groups) of only its group's rows, and
    # a smaller grouped conv needs every group to lose as many channels: neither is a mask along
    # one dimension that any choice of channels can take.
    _ChannelKind(
        "grouped conv",
        nn.Conv2d,
        _is_grouped,
        unsupported=(
            "reads each channel with only its own group's filters, and can only shrink if every "
            "group loses as many channels, which a free choice of channels does not give"
        ),
    ),
    _ChannelKind("conv", nn.Conv2d, entries={"out": _PRODUCER, "in": (("weight", 1, "consumer"),)}),
    _ChannelKind(
        "linear", nn.Linear, entries={"out": _PRODUCER, "in": (("weight", 1, "consumer"),)}
    ),
    # Zeroing a BatchNorm's weight and bias makes its output exactly 0 whatever its statistics.
    _ChannelKind(
        "batchnorm",
        (nn.BatchNorm1d, nn.BatchNorm2d),
        entries=dict.fromkeys(("out", "in"), _NORM),
        own_forward=_zero_norm_outputs_zero,
    ),
)

#: Why a module of these types cannot lose channels by masking (checked after the kinds).
_UNSUPPORTED_TYPES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.LayerNorm, "normalises over all channels: a masked channel would still shift the others"),
    (nn.GroupNorm, "normalises over groups of channels: a masked one would shift the others"),
    (
        nn.MultiheadAttention,
        "ties the width of its heads to these channels (prune its heads instead)",
    ),
)


def _channel_kind(module: nn.Module) -> _ChannelKind | None:
    return next((kind for kind in _CHANNEL_KINDS if kind.matches(module)), None)


def _why_unsupported(module: nn.Module | torch.Tensor, name: str) -> str | None:
    """Why ``module``'s channels cannot be masked as if removed ("<what> 'name', which ..."),
    or None if they can."""
    if isinstance(module, torch.Tensor):  # a bare nn.Parameter, e.g. a position embedding
        return f"parameter {name!r}, which is added to them and has no rule for masking"
    kind = _channel_kind(module)
    if kind is not None:
        return f"{kind.title} {name!r}, which {kind.unsupported}" if kind.unsupported else None
    why = next((w for t, w in _UNSUPPORTED_TYPES if isinstance(module, t)), None)
    return f"{type(module).__name__} {name!r}, which " + (
        why or "has parameters that no rule here masks channel by channel"
    )


@dataclass(frozen=True, eq=False)
class ParamSlice:
    """Entries of one parameter that belong to group channels.

    Attributes:
        param: full parameter name, e.g. ``"block1.conv2.weight"``.
        dim: the dimension the channels run along (0 = rows / filters, 1 = input columns).
        channel_of: int64 (param.shape[dim],): the group channel of each index, -1 if none.
        role: ``"producer"`` (output rows), ``"consumer"`` (input columns) or ``"norm"``. A
            depthwise filter is both, so its weight has one slice of each role.
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


@dataclass
class _Members:
    """What one torch-pruning group touches, and why masking cannot remove its channels
    (``reasons`` empty: it can)."""

    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    slices: list[ParamSlice] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def _handler_side(handler: object) -> str:
    # torch-pruning's handlers are bound ``prune_out_channels`` / ``prune_in_channels``.
    return "out" if getattr(handler, "__name__", "") == "prune_out_channels" else "in"


# --- attention with fewer heads than nn.MultiheadAttention can hold -----------------------------


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True = may not attend) as -inf / 0, a float one as it is."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)


class CompactMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s call and return value, with heads of any number and width.

    ``nn.MultiheadAttention`` ties its heads' total width to ``embed_dim``, the width of what
    it reads and writes, so it cannot hold fewer heads while the model around it keeps its
    width; compaction puts this module in its place. The projections are Linears called as
    modules: ``in_proj`` packs [q heads | k heads | v heads] like ``in_proj_weight``, and
    ``out_proj`` reads the heads side by side.

    Returned attention weights are those of the heads it has. A 3-D ``attn_mask`` must have
    one slice per batch element and head it has (a caller that built it for the heads of the
    original module must drop the removed heads' slices).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        bias: bool = True,
        out_bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.batch_first = batch_first
        inner = num_heads * head_dim
        factory = {"device": device, "dtype": dtype}
        self.in_proj = nn.Linear(embed_dim, 3 * inner, bias=bias, **factory)
        self.out_proj = nn.Linear(inner, embed_dim, bias=out_bias, **factory)

    @classmethod
    def from_multihead(
        cls, attention: nn.MultiheadAttention, heads: Sequence[int] | None = None
    ) -> CompactMultiheadAttention:
        """The same computation as ``attention`` restricted to ``heads`` (default: all)."""
        kept = list(range(attention.num_heads)) if heads is None else list(heads)
        d, width = attention.head_dim, attention.embed_dim
        rows = torch.cat(
            [torch.arange(d) + h * d + part * width for part in range(3) for h in kept]
        )
        columns = torch.cat([torch.arange(d) + h * d for h in kept])
        weight = attention.in_proj_weight.detach()
        bias = attention.in_proj_bias
        out = attention.out_proj
        small = cls(
            width,
            len(kept),
            d,
            bias=bias is not None,
            out_bias=out.bias is not None,
            dropout=attention.dropout,
            batch_first=attention.batch_first,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            small.in_proj.weight.copy_(weight[rows])
            small.out_proj.weight.copy_(out.weight[:, columns])
            if bias is not None:
                small.in_proj.bias.copy_(bias[rows])
            if out.bias is not None:
                small.out_proj.bias.copy_(out.bias)
        return small.train(attention.training)

    def _mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        batch: int,
        dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """attn_mask and key_padding_mask merged into one additive (batch, heads, L, S) mask."""
        mask = _additive_mask(attn_mask, dtype)
        if mask is not None and mask.dim() == 3:
            if mask.shape[0] != batch * self.num_heads:
                raise ValueError(
                    f"a 3-D attn_mask needs batch x heads = {batch * self.num_heads} slices "
                    f"(this attention has {self.num_heads} heads), got {mask.shape[0]}"
                )
            mask = mask.reshape(batch, self.num_heads, *mask.shape[1:])
        padding = _additive_mask(key_padding_mask, dtype)
        if padding is not None:
            padding = padding.reshape(batch, 1, 1, -1)
            mask = padding if mask is None else mask + padding
        return mask

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:
            # As nn.MultiheadAttention: is_causal is only a hint about attn_mask.
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        packed = query is key and key is value  # self-attention: one call of in_proj
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if packed:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:
            weights = self.in_proj.weight.chunk(3)
            biases = self.in_proj.bias.chunk(3) if self.in_proj.bias is not None else (None,) * 3
            q, k, v = (
                F.linear(x, w, b)
                for x, w, b in zip((query, key, value), weights, biases, strict=True)
            )
        batch, target = q.shape[:2]
        q, k, v = (
            t.reshape(batch, t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
            for t in (q, k, v)
        )
        mask = self._mask(attn_mask, key_padding_mask, batch, q.dtype)
        dropout = self.dropout if self.training else 0.0
        attention = None
        if need_weights:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            attention = (scores if mask is None else scores + mask).softmax(dim=-1)
            if dropout > 0:
                attention = F.dropout(attention, p=dropout)
            out = attention @ v
            if average_attn_weights:
                attention = attention.mean(dim=1)
            if unbatched:
                attention = attention.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, target, -1))
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, attention


def unpack_multihead_attention(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.MultiheadAttention`` whose heads are known replaced (in place)
    by an equal ``CompactMultiheadAttention``: its projections are then called as modules, so
    hooks on ``<name>.in_proj`` / ``<name>.out_proj`` see what they read. Returns the model
    (a new one only if the model itself was such an attention)."""
    for heads in attention_heads(model):
        if heads.kind != "multihead":
            continue
        module = model.get_submodule(heads.name)
        unpacked = CompactMultiheadAttention.from_multihead(module)
        unpacked.unpacked_from_multihead = True  # its weights have other names in the source
        if not heads.name:
            return unpacked
        parent, _, leaf = heads.name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, unpacked)
    return model


def source_names(model: nn.Module) -> dict[str, str]:
    """State-dict keys of ``model`` that ``unpack_multihead_attention`` renamed, mapped back to
    the names ``nn.MultiheadAttention`` gives them (``in_proj.weight`` -> ``in_proj_weight``),
    so that exported weights load into the user's own architecture."""
    renamed = {}
    for name, module in model.named_modules():
        if getattr(module, "unpacked_from_multihead", False):
            prefix = f"{name}." if name else ""
            for suffix in ("weight", "bias"):
                if getattr(module.in_proj, suffix, None) is not None:
                    renamed[f"{prefix}in_proj.{suffix}"] = f"{prefix}in_proj_{suffix}"
    return renamed


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
        return attention_heads(self.model)

    @cached_property
    def block_stages(self) -> list[BlockStage]:
        """Removable residual / transformer blocks, grouped by the module holding them."""
        return find_block_stages(self.model, self.layer_by_name)

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
    def _fixed_reasons(self) -> dict[str, str]:
        """Layers that must keep their output channels whatever the graph says, and why."""
        reasons = {self.output_layer: "its outputs are the model's classes"}
        for heads in self.heads:
            reason = f"it belongs to attention {heads.name!r}: prune its heads instead"
            reasons[heads.qkv] = reason
            reasons[heads.proj] = reason
        return reasons

    @cached_property
    def unsupported_channel_layers(self) -> dict[str, str]:
        """Layers whose output channels cannot be pruned, with the reason why."""
        reasons = dict(self._fixed_reasons)
        for layer, reason in self._analysis[1].items():
            reasons.setdefault(layer, reason)
        return reasons

    @cached_property
    def unsupported_input_layers(self) -> dict[str, str]:
        """Layers whose input channels cannot be pruned although a layer produces them, and why
        (a layer that reads the model's input is not listed: there is nothing to prune)."""
        return dict(self._analysis[2])

    @cached_property
    def channel_groups(self) -> list[ChannelGroup]:
        """Every group of coupled channels whose removal masking can reproduce exactly."""
        return self._analysis[0]

    @cached_property
    def _analysis(self) -> tuple[list[ChannelGroup], dict[str, str], dict[str, str]]:
        """The supported groups, and per layer why its output / input channels are not.

        Computed within the operator's memory and time budget (``explorer.engine.budget``): on some
        architectures torch-pruning's index lists grow without bound, and past the budget no
        channel is prunable, with the reason, instead of the process being killed."""
        device = next(self.model.parameters()).device
        what = f"channel analysis (torch-pruning's dependency graph) of {type(self.model).__name__}"
        try:
            with torch.inference_mode(False), torch.enable_grad():  # torch-pruning traces autograd
                return within_budget(self._analyse, what=what, device=device)
        except (BudgetExceeded, StepFailed) as error:
            reason = f"{error}; structured methods cannot be used on this model"
            return [], {layer.name: reason for layer in self.layers}, {}

    def _analyse(self) -> tuple[list[ChannelGroup], dict[str, str], dict[str, str]]:
        try:
            graph = self.dependency_graph
        except Exception as error:  # e.g. a reshape its index mapping cannot follow
            # Without the graph no coupling is known, and a guessed one could mask wrongly.
            reason = (
                "torch-pruning cannot trace how this model's channels are coupled "
                f"({type(error).__name__}: {error})"
            )
            return [], {layer.name: reason for layer in self.layers}, {}
        names: dict[object, str] = {module: name for name, module in self.modules.items()}
        names.update({param: name for name, param in self.parameters.items()})
        order = {layer.name: layer.order for layer in self.layers}
        groups: list[ChannelGroup] = []
        no_outputs: dict[str, str] = {}
        no_inputs: dict[str, str] = {}
        # One group per root layer, as graph.get_all_groups forms them, but each under a bound
        # on its index lists, so that one runaway coupling refuses its layers, not the model.
        bound = 4 * max(max(param.shape, default=1) for param in self.parameters.values())
        visited: set[nn.Module] = set()
        for root_module in list(graph.module2node):
            if not isinstance(root_module, nn.Conv2d | nn.Linear) or root_module in visited:
                continue
            if root_module in graph.IGNORED_LAYERS_IN_TRACING:
                continue
            pruner = graph.get_pruner_of_module(root_module)
            size = pruner.get_out_channels(root_module) if pruner is not None else None
            if size is None:
                continue
            try:
                with _bounded_index_lists(bound), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "Maximum recursive depth reached!"
                    group = graph.get_pruning_group(
                        root_module, pruner.prune_out_channels, list(range(size))
                    )
            except _IndexBlowUp:
                if root_module in names:
                    no_outputs.setdefault(names[root_module], RUNAWAY_REASON)
                continue
            except Exception as error:  # its index mapping of a split or reshape failed
                if root_module in names:
                    no_outputs.setdefault(
                        names[root_module],
                        "torch-pruning cannot follow how its channels are coupled "
                        f"({type(error).__name__}: {error})",
                    )
                continue
            visited.update(
                dep.target.module
                for dep, _ in group
                if graph.is_out_channel_pruning_fn(dep.handler)
            )
            try:
                members = self._members(group, names)
            except IndexError as error:  # its index mapping points past a parameter's size
                if root_module in names:
                    no_outputs.setdefault(
                        names[root_module],
                        f"torch-pruning maps its channels to entries that do not exist ({error})",
                    )
                continue
            if members is None:
                continue
            if members.reasons:
                reason = members.reasons[0]
                for layer in members.producers:
                    no_outputs.setdefault(layer, reason)
                for layer in members.consumers:
                    no_inputs.setdefault(layer, reason)
                continue
            producers = sorted(set(members.producers), key=order.__getitem__)
            consumers = sorted(set(members.consumers), key=order.__getitem__)
            root = names[group.items[0].dep.target.module]
            slices = tuple(members.slices)
            channel_group = ChannelGroup(
                producers[0], size, tuple(producers), tuple(consumers), slices, root
            )
            if _flattens(channel_group) and not self._removes_physically(channel_group):
                for layer in producers:
                    no_outputs.setdefault(layer, FIXED_WIDTH_REASON)
                for layer in consumers:
                    no_inputs.setdefault(layer, FIXED_WIDTH_REASON)
                continue
            reshaped = any(dep.target.type == tp.ops.OPTYPE.RESHAPE for dep, _ in group)
            if reshaped and not self._consumers_read_their_channels(channel_group):
                for layer in producers:
                    no_outputs.setdefault(layer, RESHAPE_REASON)
                for layer in consumers:
                    no_inputs.setdefault(layer, RESHAPE_REASON)
                continue
            groups.append(channel_group)
        groups.sort(key=lambda g: order[g.name])
        return groups, no_outputs, no_inputs

    def _removes_physically(self, group: ChannelGroup) -> bool:
        """Whether a copy of the model still runs, with the same output shape, once one channel
        of ``group`` is physically removed: a forward that hard-codes the flattened width
        (``x.view(-1, 16 * 4 * 4)``) does not."""
        copied = copy_model(self.model).eval()
        probe = example_input(self.input_shape, 2).to(next(copied.parameters()).device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.no_grad():
                    expected = copied(probe).shape
                graph = tp.DependencyGraph().build_dependency(copied, example_inputs=probe[:1])
                root = dict(copied.named_modules())[group.root]
                handler = (
                    tp.prune_conv_out_channels
                    if isinstance(root, nn.Conv2d)
                    else tp.prune_linear_out_channels
                )
                graph.get_pruning_group(root, handler, [0]).prune()
                with torch.no_grad():
                    return copied(probe).shape == expected
        except Exception:  # the forward fails with the smaller width
            return False

    def _consumers_read_their_channels(self, group: ChannelGroup) -> bool:
        """Whether the entries the group gives each consumer read exactly its channel: with a
        channel silenced at every producer, changing those consumer entries must change
        nothing. A reshape that reorders channels (a channel shuffle) fails this."""
        params = {name: p.detach() for name, p in self.model.named_parameters()}
        device = next(iter(params.values())).device
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(2, *self.input_shape, generator=generator).to(device)
        for channel in sorted({0, group.size // 2, group.size - 1}):
            silenced, changed = dict(params), {}
            for piece in group.slices:
                index = torch.nonzero(piece.channel_of == channel).flatten().to(device)
                value = silenced[piece.param].clone()
                if piece.role == "consumer":
                    noise = torch.randn(
                        value.index_select(piece.dim, index).shape, generator=generator
                    )
                    changed[piece.param] = (piece.dim, index, noise.to(device))
                else:
                    value.index_fill_(piece.dim, index, 0.0)
                silenced[piece.param] = value
            other = dict(silenced)
            for name, (dim, index, noise) in changed.items():
                other[name] = other[name].clone().index_copy_(dim, index, noise)
            with torch.no_grad():
                expected = torch.func.functional_call(self.model, silenced, (probe,))
                got = torch.func.functional_call(self.model, other, (probe,))
            scale = max(float(expected.abs().max()), 1e-6)
            if float((got - expected).abs().max()) > 1e-4 * scale:
                return False
        return True

    def _members(self, group: tp.Group, names: dict[object, str]) -> _Members | None:
        """The layers and parameter entries of a torch-pruning group, and what stops it (in
        ``reasons``); None for a group outside this model's layers."""
        members = _Members()
        fixed: list[str] = []
        for item in group.items:
            module = item.dep.target.module
            if isinstance(module, nn.Module) and next(module.parameters(False), None) is None:
                continue  # reshapes, activations, pooling: nothing to mask
            if module not in names:
                return None
            name = names[module]
            side = _handler_side(item.dep.handler)
            if isinstance(module, PRUNABLE_TYPES) and name not in self.layer_by_name:
                return None  # never called by the forward pass: not a layer of this model
            kind = None if isinstance(module, torch.Tensor) else _channel_kind(module)
            roles = {role for _, _, role in kind.entries.get(side, ())} if kind else set()
            if isinstance(module, PRUNABLE_TYPES):
                if "producer" in roles or (not roles and side == "out"):
                    members.producers.append(name)
                if "consumer" in roles or (not roles and side == "in"):
                    members.consumers.append(name)
            if side == "out" and name in self._fixed_reasons:
                fixed.append(f"layer {name!r}, which must keep them ({self._fixed_reasons[name]})")
            why = _why_unsupported(module, name)
            if why is not None:
                members.reasons.append(why)
                continue
            for param_name, dim, role in kind.entries.get(side, ()):
                param = getattr(module, param_name, None)
                if param is None:
                    continue
                channel_of = torch.full((param.shape[dim],), -1, dtype=torch.long)
                channel_of[torch.as_tensor(item.idxs)] = torch.as_tensor(item.root_idxs)
                members.slices.append(ParamSlice(f"{name}.{param_name}", dim, channel_of, role))
        # What the module kinds forbid says more than "another layer keeps them", so it leads.
        members.reasons = [f"they are tied to {why}" for why in members.reasons + fixed]
        return members

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
