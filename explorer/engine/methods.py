"""Pruning methods: what a unit is (weights, channels, heads, blocks), how its elements are scored
from a criterion's scores, and which parameters a kept set masks. One class per method in a
registry.

This is the *selection* layer of the pruning engine (``explorer.engine.pruning``): scoring lives in
``explorer.engine.importance``, surgery in ``explorer.engine.compaction``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

import torch

from explorer.engine.blocks import BlockStage
from explorer.engine.importance import Criterion, ScoringContext, get_criterion
from explorer.engine.plan import PruningPlan
from explorer.engine.structure import ChannelGroup, HeadGroup, ModelStructure, ParamSlice


@dataclass(frozen=True, eq=False)
class Unit:
    """What one slider prunes: a layer's weights, a channel group, an attention's heads, or the
    blocks of a stage.

    Attributes:
        name: the name plans use (a layer name, a group's first layer, an attention module, the
            module holding a stage of blocks).
        size: number of prunable elements (weights, channels, heads or blocks).
        layers: every layer whose parameters the unit touches.
        kind: ``"weights"``, ``"channels"``, ``"heads"`` or ``"blocks"``.
        detail: the underlying ``LayerInfo``, ``ChannelGroup``, ``HeadGroup`` or ``BlockStage``.
    """

    name: str
    size: int
    layers: tuple[str, ...]
    kind: str
    detail: object = field(repr=False)


def _ln_rows(scores: torch.Tensor, dim: int, p: float) -> torch.Tensor:
    """sum(|s|^p) over everything but ``dim``: one value per index along ``dim``."""
    moved = scores.movedim(dim, 0).reshape(scores.shape[dim], -1)
    return moved.abs().pow(p).sum(1)


def _broadcast_keep(keep_along: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    view = [1] * len(shape)
    view[dim] = -1
    return keep_along.reshape(view).expand(shape).float()


class Method(ABC):
    """A pruning granularity: which units exist, how they are scored, what a kept set masks."""

    name: ClassVar[str]
    title: ClassVar[str]
    help: ClassVar[str]
    unit_kind: ClassVar[str]
    structured: ClassVar[bool] = True
    #: Divide each unit's scores by their mean before a global ranking, so that layers with
    #: different fan-in (and so different norm scales) compete fairly.
    normalize_globally: ClassVar[bool] = False
    supports_global: ClassVar[bool] = True
    #: The amount only switches a unit on (> 0) or off (0): the pattern fixes the sparsity.
    amount_is_switch: ClassVar[bool] = False
    #: What one per-unit control stands for, as a heading.
    unit_heading: ClassVar[str] = "Per layer"
    #: What the amount counts, plural ("filters / neurons"): a slider says what it removes, not
    #: "sparsity", which reads as zero weights (70% of the filters can be 91% of the weights).
    amount_counts: ClassVar[str] = "weights"
    #: Why a model may have no unit of this method, for the message that says so.
    absent_because: ClassVar[str] = ""
    #: The plan settings (as plan JSON names them) that change nothing for this method, each
    #: with why (``unused_settings``; the CLI names the flags given for them). Tested against
    #: the pruning itself: changing one of them leaves every mask as it was.
    ignores: ClassVar[Mapping[str, str]] = MappingProxyType({"nm": "only N:M plans have a pattern"})

    @property
    def counted(self) -> str:
        """What the amount counts and what happens to them: "filters / neurons removed"
        ("pruned" for weights: a masked weight is zero, not gone)."""
        return f"{self.amount_counts} {'removed' if self.structured else 'pruned'}"

    def amount_label(self, unit: str | None = None) -> str:
        """The label of a slider of this method's amount, e.g. "Weights pruned (%)",
        "Filters / neurons removed (%)"; with ``unit`` the per-unit slider's, "conv1 · filters /
        neurons removed (%)"."""
        if unit:
            return f"{unit} · {self.counted} (%)"
        return f"{self.counted[0].upper()}{self.counted[1:]} (%)"

    def amount_phrase(self, fraction: float, digits: int = 0) -> str:
        """An amount in words, e.g. "70% filters / neurons removed", "90.0% weights pruned"."""
        return f"{fraction:.{digits}%} {self.counted}"

    def why_absent(self, structure: ModelStructure) -> str:
        """Why this model has no unit of this method, in a few words ("" when unknown)."""
        return self.absent_because

    @abstractmethod
    def units(self, structure: ModelStructure) -> list[Unit]:
        """The units of this method in graph order."""

    @abstractmethod
    def scores(
        self, ctx: ScoringContext, criterion: Criterion, unit: Unit, norm: float
    ) -> torch.Tensor:
        """One score per element of ``unit`` (shape (unit.size,)); low = prune first."""

    @abstractmethod
    def masks(
        self, structure: ModelStructure, unit: Unit, keep: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """0/1 float masks (parameter shape) per parameter name for a keep vector (unit.size,)."""

    def keep(
        self, order: torch.Tensor, scores: torch.Tensor, pruned: int, plan: PruningPlan
    ) -> torch.Tensor:
        """Which elements survive when ``pruned`` of them go: the lowest-scored ones."""
        keep = torch.ones(len(order), dtype=torch.bool)
        keep[order[:pruned]] = False
        return keep

    def reason_unavailable(self, structure: ModelStructure, layer: str) -> str | None:
        """Why ``layer`` (a real layer but not a unit name) cannot be set, or None if unknown."""
        return None

    def reason_left_dense(self, unit: Unit, plan: PruningPlan) -> str | None:
        """Why the plan leaves ``unit`` dense although it asks for pruning, or None."""
        return None

    def scored_layers(self, unit: Unit) -> tuple[str, ...]:
        """The layers of ``unit`` whose own weights its scores are about (default: all)."""
        return tuple(unit.layers)


METHODS: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``."""
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None


@register_method
class Unstructured(Method):
    name = "unstructured"
    title = "Unstructured (weights)"
    help = (
        "Zero individual weights. Reaches high sparsity at little accuracy cost, but dense "
        "kernels still multiply the zeros: no speed-up without sparse hardware or kernels."
    )
    unit_kind = "weights"
    structured = False
    ignores = MappingProxyType(
        {
            **Method.ignores,
            "norm": "single weights are scored one by one, and the Ln norm only combines the "
            "scores of a channel, head or block",
        }
    )

    def units(self, structure: ModelStructure) -> list[Unit]:
        return [
            Unit(layer.name, layer.weight_numel, (layer.name,), self.unit_kind, layer)
            for layer in structure.layers
        ]

    def scores(
        self, ctx: ScoringContext, criterion: Criterion, unit: Unit, norm: float
    ) -> torch.Tensor:
        return criterion.weight_scores(ctx, unit.name).flatten().float().cpu()

    def masks(
        self, structure: ModelStructure, unit: Unit, keep: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        param = f"{unit.name}.weight"
        return {param: keep.reshape(structure.parameters[param].shape).float()}


@register_method
class NM(Unstructured):
    name = "nm"
    title = "N:M semi-structured"
    help = (
        "Keep the N most important of every M consecutive input weights of each output "
        "(2:4 = 50% sparsity). Sparse tensor cores on recent GPUs run 2:4 about twice as fast; "
        "on a CPU it is as slow as dense. The pattern fixes the sparsity: a layer is either "
        "N:M or dense, so there is no amount and no global ranking."
    )
    supports_global = False
    amount_is_switch = True
    ignores = MappingProxyType(
        {
            "norm": Unstructured.ignores["norm"],
            "scope": "each layer is N:M or dense by itself: there is no global ranking",
        }
    )

    def reason_left_dense(self, unit: Unit, plan: PruningPlan) -> str | None:
        if self.fits(unit, plan.m):
            return None
        inputs = unit.size // unit.detail.weight_shape[0]
        return f"its {inputs} inputs per output do not divide into groups of {plan.m}"

    def keep(
        self, order: torch.Tensor, scores: torch.Tensor, pruned: int, plan: PruningPlan
    ) -> torch.Tensor:
        if pruned == 0:
            return torch.ones(len(scores), dtype=torch.bool)
        blocks = scores.reshape(-1, plan.m)
        # Stable choice: argsort within each block, drop the M-N lowest (ties: lower index first).
        drop = torch.argsort(blocks, dim=1, stable=True)[:, : plan.m - plan.n]
        keep = torch.ones_like(blocks, dtype=torch.bool)
        keep.scatter_(1, drop, False)
        return keep.flatten()

    def fits(self, unit: Unit, m: int) -> bool:
        """N:M groups run along each output's inputs, so their count must divide by M."""
        shape = unit.detail.weight_shape
        return (unit.size // shape[0]) % m == 0


class _ChannelMethod(Method):
    """Shared by the two structured channel methods: same groups, scored from one side."""

    unit_kind = "channels"
    unit_heading = "Per channel group"
    normalize_globally = True
    score_role: ClassVar[str]

    def _scored_side(self, group: ChannelGroup) -> tuple[str, ...]:
        # Only one side is scored: e.g. the classifier *reads* a group of channels, but its
        # own outputs (the classes) are not in it.
        return tuple(group.producers if self.score_role == "producer" else group.consumers)

    def scored_layers(self, unit: Unit) -> tuple[str, ...]:
        return self._scored_side(unit.detail)

    def units(self, structure: ModelStructure) -> list[Unit]:
        units: list[Unit] = []
        taken: set[str] = set()
        for group in structure.channel_groups:
            if not group.consumers:
                continue
            # A unit is named after the first layer of its scored side. Groups concatenated
            # into one reader (SqueezeNet's Fire, Inception) share that reader, and one name
            # must address one group: a later group takes its next free layer name.
            candidates = (*self._scored_side(group), *group.layers)
            name = next((n for n in candidates if n not in taken), None)
            if name is None:
                name = f"{group.name}#{len(units)}"
            taken.add(name)
            units.append(Unit(name, group.size, group.layers, self.unit_kind, group))
        return units

    def scores(
        self, ctx: ScoringContext, criterion: Criterion, unit: Unit, norm: float
    ) -> torch.Tensor:
        group: ChannelGroup = unit.detail
        direct = criterion.channel_scores(ctx, group)
        if direct is not None:
            return direct.float().cpu()
        total = torch.zeros(group.size)
        for piece in group.slices:
            if piece.role != self.score_role or not piece.param.endswith(".weight"):
                continue
            layer = piece.param.rsplit(".", 1)[0]
            rows = _ln_rows(criterion.weight_scores(ctx, layer).float().cpu(), piece.dim, norm)
            valid = piece.channel_of >= 0
            total.index_add_(0, piece.channel_of[valid], rows[valid])
        return total.pow(1.0 / norm)

    def masks(
        self, structure: ModelStructure, unit: Unit, keep: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        group: ChannelGroup = unit.detail
        out = {}
        for piece in group.slices:
            out[piece.param] = self._slice_mask(structure, piece, keep)
        return out

    @staticmethod
    def _slice_mask(
        structure: ModelStructure, piece: ParamSlice, keep: torch.Tensor
    ) -> torch.Tensor:
        padded = torch.cat([keep, torch.ones(1, dtype=torch.bool)])  # index -1 -> kept
        keep_along = padded[piece.channel_of]
        return _broadcast_keep(keep_along, structure.parameters[piece.param].shape, piece.dim)

    def why_absent(self, structure: ModelStructure) -> str:
        reasons = (
            structure.unsupported_channel_layers
            if self.score_role == "producer"
            else structure.unsupported_input_layers
        )
        common = Counter(
            reason for layer, reason in reasons.items() if layer != structure.output_layer
        ).most_common(1)
        if not common:
            return self.absent_because
        reason, count = common[0]
        return f"{count} of its layers cannot lose channels because {reason}"

    def reason_unavailable(self, structure: ModelStructure, layer: str) -> str | None:
        for unit in self.units(structure):
            if layer in self.scored_layers(unit):
                return (
                    f"layer {layer!r} is coupled with {list(unit.layers)}: their channels "
                    f"are pruned together; set the amount on {unit.name!r}"
                )
        side, reasons = (
            ("output", structure.unsupported_channel_layers)
            if self.score_role == "producer"
            else ("input", structure.unsupported_input_layers)
        )
        if layer in reasons:
            return f"layer {layer!r} cannot lose {side} channels: {reasons[layer]}"
        return (
            f"layer {layer!r} has no prunable channels for {self.name!r} "
            "(its inputs are the model's input, or masking could not equal removal)"
        )


@register_method
class Filters(_ChannelMethod):
    name = "filters"
    title = "Structured: filters / neurons"
    help = (
        "Remove whole neurons or conv filters, scored by the Ln norm of their own weights "
        "(Li et al. 2017). Coupled channels (residual adds) go together. The model can be "
        "made physically smaller, so it really gets faster."
    )
    score_role = "producer"
    amount_counts = "filters / neurons"


@register_method
class Channels(_ChannelMethod):
    name = "channels"
    title = "Structured: input channels"
    help = (
        "Remove whole input channels of a layer, scored by the Ln norm of the weights that "
        "read them. Removing an input channel removes the neuron/filter that produced it."
    )
    score_role = "consumer"
    amount_counts = "input channels"


@register_method
class Heads(Method):
    name = "heads"
    title = "Attention heads"
    help = (
        "Remove whole attention heads (their q, k, v rows and output-projection columns). "
        "Many heads are redundant (Michel et al. 2019)."
    )
    unit_kind = "heads"
    unit_heading = "Per attention module"
    amount_counts = "heads"
    absent_because = "it has no attention heads"

    def units(self, structure: ModelStructure) -> list[Unit]:
        return [
            Unit(h.name, h.num_heads, (h.qkv, h.proj), self.unit_kind, h) for h in structure.heads
        ]

    def scores(
        self, ctx: ScoringContext, criterion: Criterion, unit: Unit, norm: float
    ) -> torch.Tensor:
        heads: HeadGroup = unit.detail
        direct = criterion.head_scores(ctx, heads)
        if direct is not None:
            return direct.float().cpu()
        # By parameter, not by layer: nn.MultiheadAttention's packed q, k, v weight is no layer.
        qkv = criterion.parameter_scores(ctx, heads.qkv_weight).float().cpu().abs().pow(norm)
        proj = criterion.parameter_scores(ctx, heads.proj_weight).float().cpu().abs().pow(norm)
        return torch.stack(
            [
                qkv[heads.qkv_rows(h)].sum() + proj[:, heads.proj_columns(h)].sum()
                for h in range(heads.num_heads)
            ]
        ).pow(1.0 / norm)

    def masks(
        self, structure: ModelStructure, unit: Unit, keep: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        heads: HeadGroup = unit.detail
        rows = torch.ones(heads.inner * 3, dtype=torch.bool)
        cols = torch.ones(heads.inner, dtype=torch.bool)
        for h in torch.nonzero(~keep).flatten().tolist():
            rows[heads.qkv_rows(h)] = False
            cols[heads.proj_columns(h)] = False
        params = structure.parameters
        out = {
            heads.qkv_weight: _broadcast_keep(rows, params[heads.qkv_weight].shape, 0),
            heads.proj_weight: _broadcast_keep(cols, params[heads.proj_weight].shape, 1),
        }
        if heads.qkv_bias is not None:
            out[heads.qkv_bias] = rows.float()
        return out

    def reason_unavailable(self, structure: ModelStructure, layer: str) -> str | None:
        for heads in structure.heads:
            if layer in (heads.qkv, heads.proj):
                return f"layer {layer!r} belongs to attention {heads.name!r}; set it by that name"
        return f"layer {layer!r} is not an attention module; head pruning applies to attention"


@register_method
class Blocks(Method):
    """Whole residual / transformer blocks (``explorer.engine.blocks``).

    Granularity: one unit per stage, i.e. per module holding removable blocks side by side
    (torchvision ResNet's ``layer1`` .. ``layer4``, its ViT's ``encoder.layers``; the zoo's
    ``block1..block3``); its elements are the stage's blocks, so a layer-wise amount removes
    ``round(amount x blocks)`` of that stage and the global amount ranks every block of the
    network together (raw scores, not normalised per stage: block scores are comparable).
    A removed block becomes its skip connection: its residual branches' parameters are masked
    to zero (see ``explorer.engine.blocks`` for exactly what that computes).
    """

    name = "blocks"
    title = "Whole blocks (residual / transformer)"
    help = (
        "Remove whole residual blocks or transformer encoder blocks: a removed block becomes "
        "its skip connection (the identity, or the downsampling shortcut, followed by the ReLU "
        "that came after the add in ResNets). Global scope ranks every block of the network; "
        "layer-wise, each stage loses its own fraction of blocks. The compacted model skips "
        "them entirely: whole layers of work go, not just width, so on a small CPU latency "
        "usually falls more per FLOP removed than with channel pruning. Accuracy usually "
        "needs fine-tuning to recover."
    )
    unit_kind = "blocks"
    unit_heading = "Per stage of blocks"
    amount_counts = "blocks"
    absent_because = (
        "it has no residual or transformer encoder block of a known kind (torchvision "
        "BasicBlock, Bottleneck or EncoderBlock, the sample zoo's blocks; others can be "
        "registered with explorer.engine.blocks.register_block_kind)"
    )

    def units(self, structure: ModelStructure) -> list[Unit]:
        return [
            Unit(stage.name, stage.size, stage.layers, self.unit_kind, stage)
            for stage in structure.block_stages
        ]

    def scores(
        self, ctx: ScoringContext, criterion: Criterion, unit: Unit, norm: float
    ) -> torch.Tensor:
        stage: BlockStage = unit.detail
        direct = criterion.block_scores(ctx, stage)
        if direct is not None:
            return direct.float().cpu()
        # The Ln mean over all weights of a block's branches: blocks of different sizes compete
        # on the typical weight, not on how many they have.
        scores = []
        for block in stage.blocks:
            total, count = torch.zeros((), dtype=torch.float64), 0
            for param in block.weights:
                values = criterion.parameter_scores(ctx, param).double().cpu().abs()
                total += values.pow(norm).sum()
                count += values.numel()
            scores.append((total / max(count, 1)).pow(1.0 / norm))
        return torch.stack(scores).float()

    def masks(
        self, structure: ModelStructure, unit: Unit, keep: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        stage: BlockStage = unit.detail
        out = {}
        for block, kept in zip(stage.blocks, keep.tolist(), strict=True):
            if not kept:
                for param in block.branch:
                    out[param] = torch.zeros(structure.parameters[param].shape)
        return out

    def reason_unavailable(self, structure: ModelStructure, layer: str) -> str | None:
        for stage in structure.block_stages:
            for block in stage.blocks:
                if layer in block.layers:
                    return (
                        f"layer {layer!r} belongs to block {block.name!r}: blocks are removed "
                        f"whole; set the amount on their stage {stage.name!r}"
                    )
                if block.skip and (layer == block.skip or layer.startswith(f"{block.skip}.")):
                    return (
                        f"layer {layer!r} is the skip connection of block {block.name!r}: it "
                        f"stays when the block is removed; set the amount on {stage.name!r}"
                    )
        return f"layer {layer!r} is in no removable block (residual or transformer block)"


def short_plan_label(plan: PruningPlan) -> str:
    """The plan in fewer words, for a narrow table: what its amount counts, the criterion's
    name and the scope, e.g. "70% filters / neurons, magnitude, global"."""
    method = get_method(plan.method)
    criterion = get_criterion(plan.criterion)
    parts = [
        (f"{plan.n}:{plan.m}" if plan.amount > 0 else f"{plan.n}:{plan.m} off (dense)")
        if method.amount_is_switch
        else f"{plan.amount:.0%} {method.amount_counts}",
        criterion.name + (f" (seed {plan.seed})" if criterion.seeded else ""),
    ]
    if not method.amount_is_switch:
        parts.append("global" if plan.scope == "global" else "layer-wise")
        if plan.unit_amounts:
            parts.append(f"{len(plan.unit_amounts)} own amount(s)")
    if plan.dense_units:
        parts.append(f"{len(plan.dense_units)} locked dense")
    return ", ".join(parts)


def plan_label(plan: PruningPlan, amount: bool = True) -> str:
    """The plan in a few words, e.g. "Unstructured (weights), weight magnitude, global, 50%
    weights pruned"."""
    method = get_method(plan.method)
    criterion = get_criterion(plan.criterion)
    parts = [method.title, criterion.title.lower()]
    if criterion.seeded:
        parts[-1] += f" (seed {plan.seed})"
    if method.amount_is_switch:
        parts.append(f"{plan.n}:{plan.m}" + (" on every layer" if plan.amount > 0 else " off"))
    else:
        parts.append("global" if plan.scope == "global" else "layer-wise")
        if amount:  # what the amount counts: 70% of the filters can be 91% of the weights
            parts.append(method.amount_phrase(plan.amount))
    if plan.unit_amounts and not method.amount_is_switch:
        parts.append(f"{len(plan.unit_amounts)} own amount(s)")
    if plan.dense_units:
        parts.append(f"{len(plan.dense_units)} locked dense")
    return ", ".join(parts)


def unused_settings(plan: PruningPlan) -> dict[str, str]:
    """The settings of ``plan`` that change nothing under its method and criterion, each with
    why, as plan JSON names them: the method's ``ignores``, ``"seed"`` for a criterion that is
    not random, and ``"amount"`` for a method whose amount only switches it on (0 < amount < 1
    prunes what 1 prunes)."""
    method, criterion = get_method(plan.method), get_criterion(plan.criterion)
    unused = dict(method.ignores)
    if not criterion.seeded:
        unused["seed"] = f"the {criterion.name} criterion is not random"
    if method.amount_is_switch and 0 < plan.amount < 1:
        unused["amount"] = (
            f"{method.title} is on for any amount above 0, or off: the {plan.n}:{plan.m} "
            "pattern sets the sparsity"
        )
    return unused
