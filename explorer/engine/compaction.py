"""Surgery: turn a structured plan into a physically smaller model with the same outputs.

The masked model already computes exactly what the smaller one computes (every parameter entry
of a removed channel or head is zero), so compaction only has to drop those entries. Channel
groups go through torch-pruning's dependency graph, which keeps coupled layers (residual adds,
BatchNorm, depthwise convs, flatten -> Linear) consistent; attention heads are cut here, row by
row, and an ``nn.MultiheadAttention`` that loses heads becomes a ``CompactMultiheadAttention``
(it cannot hold fewer heads than its width allows). A removed whole block is replaced by its
skip connection (``explorer.engine.blocks.remove_blocks``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from explorer.engine.blocks import BlockStage, remove_blocks
from explorer.engine.inspection import example_input
from explorer.engine.pruning import PrunedState, Pruner, get_method
from explorer.engine.structure import ChannelGroup, CompactMultiheadAttention, HeadGroup

Compactor = Callable[[nn.Module, Pruner, PrunedState], None]
COMPACTORS: dict[str, Compactor] = {}


def register_compactor(*methods: str) -> Callable[[Compactor], Compactor]:
    def decorate(function: Compactor) -> Compactor:
        for method in methods:
            COMPACTORS[method] = function
        return function

    return decorate


def _removable(keep: torch.Tensor) -> list[int]:
    """Indices to remove; a fully pruned unit keeps one (all-zero, so outputs stay equal)."""
    removed = torch.nonzero(~keep).flatten().tolist()
    return removed[1:] if len(removed) == len(keep) else removed


@register_compactor("filters", "channels")
def _compact_channels(model: nn.Module, pruner: Pruner, state: PrunedState) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(
            model,
            example_inputs=example_input(pruner.structure.input_shape).to(
                next(model.parameters()).device
            ),
        )
    modules = dict(model.named_modules())
    for unit in state.units:
        if unit.name not in state.keeps:
            continue
        group: ChannelGroup = unit.detail
        root = modules[group.root]
        handler = (
            tp.prune_conv_out_channels
            if isinstance(root, nn.Conv2d)
            else tp.prune_linear_out_channels
        )
        removed = _removable(state.keeps[unit.name])
        if removed:
            graph.get_pruning_group(root, handler, removed).prune()


HeadCutter = Callable[[nn.Module, HeadGroup, list[int]], None]
#: How to keep only some heads of an attention module, by ``HeadGroup.kind``.
HEAD_CUTTERS: dict[str, HeadCutter] = {}


def register_head_cutter(kind: str) -> Callable[[HeadCutter], HeadCutter]:
    def decorate(function: HeadCutter) -> HeadCutter:
        HEAD_CUTTERS[kind] = function
        return function

    return decorate


#: Attributes in which attention modules keep the width of their joined heads.
WIDTH_ATTRIBUTES = ("attn_dim", "all_head_size", "inner_dim")


@register_head_cutter("fused")
def _cut_fused(model: nn.Module, heads: HeadGroup, kept: list[int]) -> None:
    attention = model.get_submodule(heads.name)
    # The new packed projection keeps the [q heads | k heads | v heads] layout, kept heads only.
    rows = torch.cat(
        [
            torch.arange(heads.head_dim) + h * heads.head_dim + part * heads.inner
            for part in range(3)
            for h in kept
        ]
    )
    columns = torch.cat([heads.proj_columns(h) for h in kept])
    packed, out = heads.qkv.rpartition(".")[2], heads.proj.rpartition(".")[2]
    setattr(attention, packed, _take_linear(getattr(attention, packed), rows=rows))
    setattr(attention, out, _take_linear(getattr(attention, out), columns=columns))
    attention.num_heads = len(kept)
    # The width the heads are joined into, under the names attention modules keep it (timm's
    # attn_dim, HuggingFace's all_head_size); compact() checks the result against the mask.
    for width in WIDTH_ATTRIBUTES:
        if getattr(attention, width, None) == heads.inner:
            setattr(attention, width, len(kept) * heads.head_dim)


@register_head_cutter("multihead")
def _cut_multihead(model: nn.Module, heads: HeadGroup, kept: list[int]) -> None:
    # nn.MultiheadAttention's heads always fill embed_dim, the width of the residual stream
    # around it: fewer heads need a module of ours with the same call and return value.
    parent, _, leaf = heads.name.rpartition(".")
    if not leaf:
        raise ValueError("cannot replace the model itself: it is one nn.MultiheadAttention")
    small = CompactMultiheadAttention.from_multihead(model.get_submodule(heads.name), kept)
    setattr(model.get_submodule(parent), leaf, small)


@register_compactor("heads")
def _compact_heads(model: nn.Module, pruner: Pruner, state: PrunedState) -> None:
    for unit in state.units:
        if unit.name not in state.keeps:
            continue
        heads: HeadGroup = unit.detail
        removed = set(_removable(state.keeps[unit.name]))
        kept = [h for h in range(heads.num_heads) if h not in removed]
        HEAD_CUTTERS[heads.kind](model, heads, kept)


@register_compactor("blocks")
def _compact_blocks(model: nn.Module, pruner: Pruner, state: PrunedState) -> None:
    # Unlike a channel group, a stage can lose every block: the skips still carry the signal.
    removed = []
    for unit in state.units:
        keep = state.keeps.get(unit.name)
        if keep is None:
            continue
        stage: BlockStage = unit.detail
        removed += [b for b, kept in zip(stage.blocks, keep.tolist(), strict=True) if not kept]
    remove_blocks(model, removed)


def _take_linear(
    layer: nn.Linear, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None
) -> nn.Linear:
    weight = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if columns is not None:
        weight = weight[:, columns]
    smaller = nn.Linear(
        weight.shape[1],
        weight.shape[0],
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        smaller.weight.copy_(weight)
        if bias is not None:
            smaller.bias.copy_(bias)
    return smaller


def can_compact(method: str) -> bool:
    """Whether plans of ``method`` can become a physically smaller model."""
    return method in COMPACTORS


class CompactionError(ValueError):
    """A plan whose masked model cannot be made physically smaller with the same outputs (a
    user-facing message: the masked numbers stand, the compacted ones do not exist)."""


#: Largest difference between the compacted and the masked model's outputs, relative to the
#: largest output: float rounding of shorter sums, nothing more.
COMPACTED_TOLERANCE = 1e-4


def compact(pruner: Pruner, plan_or_state: object) -> nn.Module:
    """A new, physically smaller model equal in outputs to the masked one (structured plans).

    The result is checked on a probe batch against the masked model: a model whose forward
    hard-codes a width (``x.view(-1, 16 * 4 * 4)``, a reshape to the input's channel count)
    cannot lose channels or heads, and gets a ``CompactionError`` saying so instead of a model
    that crashes or computes something else.

    Raises ValueError for unstructured and N:M plans: their zeros are scattered inside dense
    tensors, so nothing can be removed (they need sparse kernels or sparse hardware instead).
    """
    state = pruner.state_for(plan_or_state)
    method = get_method(state.plan.method)
    if method.name not in COMPACTORS:
        raise ValueError(
            f"{method.title} cannot be removed physically: its zeros are scattered inside dense "
            f"weight tensors. Choose one of {sorted(COMPACTORS)} for a smaller, faster model"
        )
    model = pruner.pruned_model(state)
    device = next(model.parameters()).device
    probe = torch.randn(
        2, *pruner.structure.input_shape, generator=torch.Generator().manual_seed(0)
    ).to(device)
    with torch.no_grad():
        expected = model(probe)
    what = f"this {method.name} plan cannot be made physically smaller"
    try:
        # torch-pruning traces through autograd: a caller's no_grad must not stop it.
        with torch.inference_mode(False), torch.enable_grad():
            COMPACTORS[method.name](model, pruner, state)
        with torch.no_grad():
            got = model(probe)
    except CompactionError:
        raise
    except Exception as err:  # the user's forward hard-codes a width, or torch-pruning failed
        lines = str(err).strip().splitlines()
        raise CompactionError(
            f"{what}: the compacted model fails ({type(err).__name__}: "
            f"{lines[0] if lines else ''}), most likely because the model's code fixes a width "
            "that the plan changes; the masked model's numbers stand"
        ) from None
    scale = max(float(expected.abs().max()), 1e-6)
    error = (
        float((got.float() - expected.float()).abs().max()) if got.shape == expected.shape else None
    )
    if error is None or error > COMPACTED_TOLERANCE * scale:
        differ = f"by {error:.2g}" if error is not None else f"in shape {tuple(got.shape)}"
        raise CompactionError(
            f"{what}: the compacted model's outputs differ from the masked model's {differ} "
            "(the model's code reads a width the plan changes); the masked model's numbers stand"
        )
    return model.eval()
