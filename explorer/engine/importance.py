"""Importance criteria: how much each weight, channel or head matters. Low score = pruned first.

A criterion gives element-wise scores for a layer's weight (``weight_scores``); a pruning method
aggregates those into channel, head or block scores with an Ln norm. Criteria measured on
activations override the channel / head / block scores directly. Add a criterion by subclassing
``Criterion`` and decorating it with ``@register_criterion``.

Data-dependent criteria use a calibration batch of the **fit** split, never the eval split.
"""

from __future__ import annotations

import copy
import zlib
from abc import ABC
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.blocks import BlockStage, removal_changes, removal_losses
from explorer.engine.inspection import copy_model
from explorer.engine.structure import (
    ChannelGroup,
    HeadGroup,
    ModelStructure,
    unpack_multihead_attention,
)
from explorer.zoo.mnist import ImageDataset

#: Images per mini-batch in the Taylor score. On the zoo models, rankings from batches of 1 to 64
#: agreed (pruned accuracy within noise): near a minimum the mean gradient is ~0, so E[(g_b w)^2]
#: ~ w^2 Var(g) / B for every B. 32 keeps it to 8 backward passes for 256 images.
TAYLOR_BATCH = 32


class UnsupportedCriterion(ValueError):
    """A criterion asked for a kind of unit it cannot score."""


class ScoringContext:
    """A dense model, its structure and a calibration batch; statistics are computed lazily, once.

    The model is never touched, not even for a moment: gradients and activations are measured on
    a private deep copy (other sessions may be running the shared model at the same time, and
    would otherwise see swapped parameters or record into our hooks).
    """

    def __init__(
        self, structure: ModelStructure, calibration: ImageDataset | None = None, seed: int = 0
    ) -> None:
        self.structure = structure
        self.model = structure.model
        self.calibration = calibration
        self.seed = seed
        self._cache: dict[str, Any] = {}  # shared by seeded views: statistics are seed-free

    def seeded(self, seed: int) -> ScoringContext:
        """A view of this context with another seed for random scores, sharing its statistics."""
        if seed == self.seed:
            return self
        view = copy.copy(self)
        view.seed = seed
        return view

    def _cached(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def require_calibration(self, criterion: str) -> ImageDataset:
        if self.calibration is None:
            raise UnsupportedCriterion(
                f"criterion {criterion!r} needs calibration data from the fit split; "
                "none was given (use 'magnitude' or 'random', or pass calibration data)"
            )
        return self.calibration

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _private_model(self) -> nn.Module:
        """A throwaway deep copy of the model, for measurements that need gradients or hooks."""
        return copy_model(self.model)

    @property
    def taylor_squares(self) -> dict[str, torch.Tensor]:
        """Per parameter name: the mean over calibration mini-batches b of (g_b * w)^2, where
        g_b = d(mean cross-entropy on b) / dw; shaped like the parameter.

        Mini-batches hold ``TAYLOR_BATCH`` images, in calibration order (the last may be smaller).
        """
        return self._cached("taylor_squares", self._compute_taylor_squares)

    def _compute_taylor_squares(self) -> dict[str, torch.Tensor]:
        data = self.require_calibration("taylor")
        model = self._private_model()
        params = dict(model.named_parameters())
        weights = {name: p.detach().clone() for name, p in params.items()}
        for p in params.values():
            p.requires_grad_(True)
        totals = {name: torch.zeros_like(w) for name, w in weights.items()}
        device = self._device()
        batches = range(0, len(data), TAYLOR_BATCH)
        with torch.enable_grad():
            for start in batches:
                x = data.images[start : start + TAYLOR_BATCH].to(device)
                y = data.labels[start : start + TAYLOR_BATCH].to(device)
                loss = F.cross_entropy(model(x), y)
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                for (name, w), g in zip(weights.items(), grads, strict=True):
                    if g is not None:  # unused parameters: no loss change, score 0
                        totals[name] += (g.detach() * w) ** 2
        return {name: total / max(len(batches), 1) for name, total in totals.items()}

    def _compute_activation_stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per prunable layer and per attention's output projection: L2 norm, mean |x| and
        fraction of zeros of each *input* channel.

        Channel = dim 1 for conv inputs (N, C, H, W), the last dim for Linear inputs (..., C).
        """
        data = self.require_calibration("activation")
        stats: dict[str, dict[str, torch.Tensor]] = {}
        # nn.MultiheadAttention never calls its out_proj as a module; its equal unpacked form
        # does, so the heads' outputs (what the output projection reads) can be hooked.
        model = unpack_multihead_attention(self._private_model())
        observed = [layer.name for layer in self.structure.layers]
        observed += [h.proj for h in self.structure.heads if h.proj not in observed]

        def hook_for(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
            def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
                x = inputs[0].detach().float()
                x = x.transpose(0, 1).flatten(1) if x.ndim == 4 else x.reshape(-1, x.shape[-1]).T
                stats[name] = {
                    "l2": x.norm(dim=1),
                    "mean_abs": x.abs().mean(dim=1),
                    "zeros": (x == 0).float().mean(dim=1),
                }

            return record

        handles = [
            model.get_submodule(name).register_forward_pre_hook(hook_for(name)) for name in observed
        ]
        try:
            with torch.no_grad():
                model(data.images.to(self._device()))
        finally:
            for handle in handles:
                handle.remove()
        return stats

    def input_stats(self, layer: str) -> dict[str, torch.Tensor]:
        """Statistics of the input channels of ``layer`` on the calibration batch."""
        return self._cached("activations", self._compute_activation_stats)[layer]

    def channel_stat(self, group: ChannelGroup, stat: str) -> torch.Tensor:
        """A statistic of each group channel, measured where consumers read it, averaged."""
        total = torch.zeros(group.size)
        count = torch.zeros(group.size)
        for piece in group.slices:
            if piece.role != "consumer":
                continue
            layer = piece.param.rsplit(".", 1)[0]
            values = self.input_stats(layer)[stat].cpu()
            valid = piece.channel_of >= 0
            total.index_add_(0, piece.channel_of[valid], values[valid])
            count.index_add_(0, piece.channel_of[valid], torch.ones(int(valid.sum())))
        return total / count.clamp(min=1)

    @property
    def block_changes(self) -> dict[str, float]:
        """Per removable block: ||block(x) - removed(x)|| / ||removed(x)|| on the calibration
        batch (``explorer.engine.blocks.removal_changes``), measured on a private copy."""
        return self._cached("block_changes", self._compute_block_changes)

    def _compute_block_changes(self) -> dict[str, float]:
        data = self.require_calibration("branch")
        blocks = [block for stage in self.structure.block_stages for block in stage.blocks]
        return removal_changes(self._private_model(), blocks, data.images)

    @property
    def block_loss_rises(self) -> dict[str, float]:
        """Per removable block: how much the mean cross-entropy on the calibration batch rises
        when that block alone is removed (``explorer.engine.blocks.removal_losses``)."""
        return self._cached("block_loss_rises", self._compute_block_loss_rises)

    def _compute_block_loss_rises(self) -> dict[str, float]:
        data = self.require_calibration("ablation")
        blocks = [block for stage in self.structure.block_stages for block in stage.blocks]
        return removal_losses(self._private_model(), blocks, data.images, data.labels)

    def layer_generator(self, layer: str) -> torch.Generator:
        """A generator seeded by (seed, layer name): the same scores for the same plan, always."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(layer.encode()))


class Criterion(ABC):
    """Scores weights (element-wise), and optionally channels and heads directly."""

    name: ClassVar[str]
    title: ClassVar[str]
    help: ClassVar[str]
    needs_data: ClassVar[bool] = False
    #: Scores depend on the plan's seed (so the seed is part of what the scores are keyed by).
    seeded: ClassVar[bool] = False
    #: Unit kinds (weights, channels, heads, blocks) this criterion can score.
    unit_kinds: ClassVar[frozenset[str]] = frozenset({"weights", "channels", "heads"})

    def weight_scores(self, ctx: ScoringContext, layer: str) -> torch.Tensor:
        """Scores shaped like ``layer``'s weight; low = less important."""
        raise UnsupportedCriterion(
            f"criterion {self.name!r} does not score individual weights; "
            "use it with a structured method (filters, channels, heads)"
        )

    def parameter_scores(self, ctx: ScoringContext, param: str) -> torch.Tensor:
        """Scores shaped like the parameter ``param``, which need not be a layer's weight (e.g.
        ``nn.MultiheadAttention``'s packed ``in_proj_weight``). By default a layer's weight is
        scored by ``weight_scores``; criteria that need no layer input override this."""
        layer, _, leaf = param.rpartition(".")
        if leaf == "weight" and layer in ctx.structure.layer_by_name:
            return self.weight_scores(ctx, layer)
        raise UnsupportedCriterion(
            f"criterion {self.name!r} scores layer weights only, and {param!r} is not one"
        )

    def channel_scores(self, ctx: ScoringContext, group: ChannelGroup) -> torch.Tensor | None:
        """Scores (group.size,) measured on the channels, or None to aggregate weights."""
        return None

    def head_scores(self, ctx: ScoringContext, heads: HeadGroup) -> torch.Tensor | None:
        """Scores (heads.num_heads,) measured on the heads themselves, or None to aggregate."""
        return None

    def block_scores(self, ctx: ScoringContext, stage: BlockStage) -> torch.Tensor | None:
        """Scores (stage.size,) measured on the blocks themselves, or None to aggregate the
        ``parameter_scores`` of their branches' weights."""
        return None


CRITERIA: dict[str, Criterion] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: make a criterion available by its ``name``."""
    CRITERIA[cls.name] = cls()
    return cls


def criteria_for(unit_kind: str) -> list[str]:
    """Names of the criteria that can score units of ``unit_kind``."""
    return [name for name, criterion in CRITERIA.items() if unit_kind in criterion.unit_kinds]


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; choose one of {sorted(CRITERIA)}") from None


#: What a criterion that scores weights can score when its scores of any parameter aggregate.
_ALL_KINDS = frozenset({"weights", "channels", "heads", "blocks"})


def _weight(ctx: ScoringContext, layer: str) -> torch.Tensor:
    return ctx.structure.parameters[f"{layer}.weight"].detach()


@register_criterion
class Magnitude(Criterion):
    name = "magnitude"
    title = "Weight magnitude"
    help = (
        "|w|: small weights matter least (Han et al. 2015). Channels and heads use the "
        "Ln norm of their weights; whole blocks the Ln mean, (mean |w|^p)^(1/p), of the weights "
        "of their residual branches."
    )
    unit_kinds = _ALL_KINDS

    def weight_scores(self, ctx: ScoringContext, layer: str) -> torch.Tensor:
        return _weight(ctx, layer).abs()

    def parameter_scores(self, ctx: ScoringContext, param: str) -> torch.Tensor:
        return ctx.structure.parameters[param].detach().abs()


@register_criterion
class Random(Criterion):
    name = "random"
    seeded = True
    title = "Random"
    help = (
        "Uniform random scores (seeded): the baseline every pruning result should beat. "
        "If a criterion is no better than random, it is not telling you much."
    )
    unit_kinds = _ALL_KINDS

    def weight_scores(self, ctx: ScoringContext, layer: str) -> torch.Tensor:
        shape = _weight(ctx, layer).shape
        return torch.rand(shape, generator=ctx.layer_generator(layer))

    def channel_scores(self, ctx: ScoringContext, group: ChannelGroup) -> torch.Tensor:
        return torch.rand(group.size, generator=ctx.layer_generator(group.name))

    def head_scores(self, ctx: ScoringContext, heads: HeadGroup) -> torch.Tensor:
        return torch.rand(heads.num_heads, generator=ctx.layer_generator(heads.name))

    def block_scores(self, ctx: ScoringContext, stage: BlockStage) -> torch.Tensor:
        return torch.rand(stage.size, generator=ctx.layer_generator(stage.name))


@register_criterion
class Taylor(Criterion):
    """Root mean square over calibration mini-batches of g * w (Molchanov et al. 2019).

    g * w is the first-order prediction of the loss change if w were set to zero. Near a minimum
    the gradient averaged over many images is ~0 (that is what trained means), so |mean(g) * w|
    is mostly noise; averaging the squares per mini-batch keeps the signal. The mean of
    (g * w)^2 is then about w^2 times the (empirical) Fisher diagonal over the batch size, the
    curvature term of Optimal Brain Damage. The square root keeps the units of g * w (a loss
    change), so channel and head Ln norms behave as they do for magnitude.
    """

    name = "taylor"
    title = "First-order Taylor"
    help = (
        "g x w (g = loss gradient): the loss change a first-order Taylor expansion predicts if "
        f"the weight were set to zero, as a root mean square over mini-batches of {TAYLOR_BATCH} "
        "calibration images from the fit split (Molchanov et al. 2019). Squares, because a "
        "trained model sits near a loss minimum, where the gradient averaged over many images "
        "is about zero. It can still lose to magnitude: these models classify their training "
        "images almost perfectly, so a handful of calibration images carry nearly all the "
        "gradient and the scores say what those few need; and a first-order estimate is for a "
        "tiny change to one weight, while pruning removes many at once, a large step whose size "
        "magnitude measures directly. Channels and heads use the Ln norm of these scores, "
        "whole blocks their Ln mean over the weights of the residual branches."
    )
    needs_data = True
    unit_kinds = _ALL_KINDS

    def weight_scores(self, ctx: ScoringContext, layer: str) -> torch.Tensor:
        return self.parameter_scores(ctx, f"{layer}.weight")

    def parameter_scores(self, ctx: ScoringContext, param: str) -> torch.Tensor:
        return ctx.taylor_squares[param].cpu().sqrt()


@register_criterion
class Activation(Criterion):
    name = "activation"
    title = "Activation (mean |a|; Wanda for weights)"
    help = (
        "Channels: mean |activation| a channel carries on the calibration batch; heads: "
        "mean |output| of each head. Weights: |w| x ||input feature||_2 (Wanda, Sun et al. "
        "2023), so weights on quiet inputs go first."
    )
    needs_data = True

    def weight_scores(self, ctx: ScoringContext, layer: str) -> torch.Tensor:
        weight = _weight(ctx, layer).cpu().abs()
        norms = ctx.input_stats(layer)["l2"].cpu()
        # Column j of a grouped (e.g. depthwise) conv's rows of group g reads input channel
        # g * (inputs per group) + j; an ordinary layer is one group.
        groups = getattr(ctx.structure.modules[layer], "groups", 1)
        per_row = norms.reshape(groups, -1).repeat_interleave(weight.shape[0] // groups, dim=0)
        return weight * per_row.reshape(*per_row.shape, *[1] * (weight.ndim - 2))

    def channel_scores(self, ctx: ScoringContext, group: ChannelGroup) -> torch.Tensor:
        return ctx.channel_stat(group, "mean_abs")

    def head_scores(self, ctx: ScoringContext, heads: HeadGroup) -> torch.Tensor:
        per_dim = ctx.input_stats(heads.proj)["mean_abs"].cpu()
        return per_dim.reshape(heads.num_heads, heads.head_dim).mean(1)


@register_criterion
class APoZ(Criterion):
    name = "apoz"
    title = "APoZ (average percentage of zeros)"
    help = (
        "Channels whose activations are most often zero after ReLU carry least "
        "(Hu et al. 2016). For channels only."
    )
    needs_data = True
    unit_kinds = frozenset({"channels"})

    def channel_scores(self, ctx: ScoringContext, group: ChannelGroup) -> torch.Tensor:
        zeros = ctx.channel_stat(group, "zeros")
        if not bool((zeros > 0).any()):
            raise UnsupportedCriterion(
                f"APoZ needs ReLU-like activations, but the channels of {group.name!r} are never "
                "exactly zero (e.g. after GELU); use activation, magnitude or taylor"
            )
        return 1.0 - zeros

    def head_scores(self, ctx: ScoringContext, heads: HeadGroup) -> torch.Tensor:
        raise UnsupportedCriterion(
            "APoZ counts zeros after ReLU; attention heads have none. "
            "Use magnitude, taylor, activation or random for heads"
        )


@register_criterion
class BranchOutput(Criterion):
    """How much a block's output changes if it becomes its skip connection, relative to the
    skip's output (Veit et al. 2016 found residual networks survive deleting such blocks)."""

    name = "branch"
    title = "Residual branch output"
    help = (
        "Whole blocks only: ||f(x)|| / ||skip(x)|| on the calibration batch from the fit split, "
        "where f is the block's residual branch: blocks that change their input little go "
        "first. Measured as the block's output with and without the branch, so a ReLU after "
        "the add counts (||relu(skip + f) - relu(skip)|| / ||relu(skip)||)."
    )
    needs_data = True
    unit_kinds = frozenset({"blocks"})

    def block_scores(self, ctx: ScoringContext, stage: BlockStage) -> torch.Tensor:
        changes = ctx.block_changes
        return torch.tensor([changes[block.name] for block in stage.blocks])


@register_criterion
class Ablation(Criterion):
    name = "ablation"
    title = "Loss rise when removed alone (ablation)"
    help = (
        "Whole blocks only: remove each block alone and measure how much the cross-entropy on "
        "the calibration batch from the fit split rises (one forward pass per block). The most "
        "direct score, but each block is measured with all the others in place: removing "
        "several at once can cost more than their rises add up to."
    )
    needs_data = True
    unit_kinds = frozenset({"blocks"})

    def block_scores(self, ctx: ScoringContext, stage: BlockStage) -> torch.Tensor:
        rises = ctx.block_loss_rises
        return torch.tensor([rises[block.name] for block in stage.blocks])
