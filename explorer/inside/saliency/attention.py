"""Attention maps per head and attention rollout, for the dense and the pruned model.

Where a vision transformer's [CLS] token (the one its classifier reads) looks, per head and
per block, and through all blocks together:

- **Per head**: ``softmax(q kᵀ / sqrt(d))`` of each head, recomputed from the packed q, k, v
  projection's output (captured by a hook on a private copy: a fused ``scaled_dot_product_
  attention`` never returns its weights). The row of the [CLS] token over the patch tokens is
  that head's map.
- **Rollout** (Abnar & Zuidema 2020): per block, the heads' mean attention plus the identity
  for the residual connection, rows renormalised; the blocks' matrices multiplied from the
  first to the last. Its [CLS] row says how much each patch token reaches the [CLS] token
  through every block.

A pruned head's q, k and v rows are zero: its scores are all 0, so its attention is uniform
(softmax of zeros), but its value vectors are zero and it passes nothing on. So rollout leaves
removed heads out of each block's mean (a block with every head removed adds only its
residual: the identity), and the per-head figure greys them out rather than showing a uniform
map that means nothing.

Supported: attention modules with a packed [q heads | k heads | v heads] Linear (the bundled
ViT's ``Attention``, ``CompactMultiheadAttention``) and ``nn.MultiheadAttention`` used as
self-attention; attention masks are not applied (a ViT has none).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.inspection import HeadGroup, attention_heads, execution_order
from explorer.inside.saliency.base import private_copy
from explorer.inside.saliency.compare import difference_map, rank_correlation
from explorer.inside.saliency.tokens import TokenLayout, token_layout


@dataclass(frozen=True, eq=False)
class AttentionMaps:
    """Every attention module's weights for one input.

    Attributes:
        modules: attention module names, in execution order.
        weights: per module, float64 (heads, tokens, tokens); rows sum to 1.
        removed: per module, bool (heads,): heads the plan removed (all False for a dense
            model).
    """

    modules: tuple[str, ...]
    weights: dict[str, np.ndarray]
    removed: dict[str, np.ndarray]


def _scores(qkv: torch.Tensor, heads: HeadGroup) -> torch.Tensor:
    """(heads, T, T) attention of one input from its packed projection output (T, 3 * inner)."""
    tokens = qkv.shape[0]
    q, k, _ = qkv.reshape(tokens, 3, heads.num_heads, heads.head_dim).permute(1, 2, 0, 3)
    return torch.softmax(q @ k.transpose(-1, -2) / heads.head_dim**0.5, dim=-1)


def attention_maps(
    model: nn.Module,
    x: torch.Tensor,
    removed: Mapping[str, np.ndarray] | None = None,
) -> AttentionMaps:
    """The attention weights of every attention module for one input ``x`` (1, C, H, W).

    Args:
        model: a vision transformer (read only: a private copy is hooked).
        x: the image as the model takes it.
        removed: per attention module, bool (heads,) of heads the plan removed (e.g. from
            ``removed_heads``); default none.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image of shape (1, C, H, W), got {tuple(x.shape)}")
    work = private_copy(model)
    groups = attention_heads(work)
    if not groups:
        raise ValueError(
            "this model has no attention module whose heads can be told apart (a packed "
            "[q|k|v] Linear or an nn.MultiheadAttention); attention maps need one"
        )
    modules = dict(work.named_modules())
    captured: dict[str, torch.Tensor] = {}
    owner = threading.get_ident()
    handles = []
    for heads in groups:
        module = modules[heads.name]
        batch_first = getattr(module, "batch_first", True)

        def keep(name: str, value: torch.Tensor, batch_first: bool = batch_first) -> None:
            if threading.get_ident() == owner and name not in captured:
                captured[name] = (value if batch_first else value.transpose(0, 1)).detach()[0]

        if heads.kind == "multihead":

            def pre(mod, args, kwargs, name=heads.name, keep=keep):
                query = args[0] if args else kwargs["query"]
                keep(name, F.linear(query, mod.in_proj_weight, mod.in_proj_bias))

            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        else:

            def post(_mod, _inputs, output, name=heads.name, keep=keep):
                keep(name, output)

            handles.append(modules[heads.qkv].register_forward_hook(post))
    device = next(work.parameters()).device
    try:
        with torch.no_grad():
            work(x.to(device))
    finally:
        for handle in handles:
            handle.remove()
    order = execution_order(work, tuple(x.shape[1:]))
    rank = {name: i for i, name in enumerate(order)}
    ordered = sorted(groups, key=lambda g: rank.get(g.qkv, rank.get(f"{g.name}.out_proj", 0)))
    removed = removed or {}
    return AttentionMaps(
        tuple(g.name for g in ordered),
        {g.name: _scores(captured[g.name].double(), g).cpu().numpy() for g in ordered},
        {
            g.name: np.asarray(removed.get(g.name, np.zeros(g.num_heads, dtype=bool)))
            for g in ordered
        },
    )


def removed_heads(keeps: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, np.ndarray]:
    """Per attention module, bool (heads,): heads a plan removed (``PrunedState.keeps``)."""
    return {
        g.name: (~keeps[g.name].bool()).cpu().numpy()
        if g.name in keeps
        else np.zeros(g.num_heads, dtype=bool)
        for g in attention_heads(model)
    }


def attention_rollout(maps: AttentionMaps, residual: bool = True) -> np.ndarray:
    """float64 (tokens, tokens): attention rolled out through every module, first to last;
    removed heads are left out of each module's mean (see the module doc). Rows sum to 1."""
    rollout = None
    for name in maps.modules:
        weights, removed = maps.weights[name], maps.removed[name]
        tokens = weights.shape[-1]
        live = weights[~removed]
        mean = live.mean(0) if len(live) else np.zeros((tokens, tokens))
        if residual:
            mean = mean + np.eye(tokens)
        total = mean.sum(-1, keepdims=True)
        mean = np.divide(mean, total, out=np.eye(tokens), where=total > 0)
        rollout = mean if rollout is None else mean @ rollout
    return rollout


def cls_map(row: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """The [CLS] token's row over the patch tokens, as the (h, w) patch grid."""
    height, width = layout.grid
    return np.asarray(row)[layout.prefix : layout.prefix + height * width].reshape(height, width)


def head_maps(maps: AttentionMaps, module: str, layout: TokenLayout) -> np.ndarray:
    """float64 (heads, h, w): where each head of ``module`` sends the [CLS] token."""
    return np.stack([cls_map(head[0], layout) for head in maps.weights[module]])


@dataclass(frozen=True, eq=False)
class RolloutComparison:
    """The dense and the pruned model's rollout [CLS] maps of one input, and how they agree.

    Attributes:
        dense, pruned: float64 (h, w) rollout maps; difference: ``compare.difference_map``
            (each map's share of its total per patch, pruned minus dense);
            rank_correlation: ``compare.rank_correlation`` of the two maps.
        dense_maps, pruned_maps: the per-head weights behind them.
        layout: the token layout (grid, prefix tokens).
    """

    dense: np.ndarray
    pruned: np.ndarray
    difference: np.ndarray
    rank_correlation: float
    dense_maps: AttentionMaps
    pruned_maps: AttentionMaps
    layout: TokenLayout


def compare_attention(
    dense: nn.Module,
    pruned: nn.Module,
    x: torch.Tensor,
    removed: Mapping[str, np.ndarray],
    input_shape: Sequence[int] | None = None,
) -> RolloutComparison:
    """Attention of ``x`` (1, C, H, W) in both models, rolled out to [CLS] maps."""
    layout = token_layout(dense, tuple(input_shape or x.shape[1:]))
    if layout is None:
        raise ValueError("attention maps need a vision transformer's patch-token layout")
    dense_maps = attention_maps(dense, x)
    pruned_maps = attention_maps(pruned, x, removed)
    dense_map = cls_map(attention_rollout(dense_maps)[0], layout)
    pruned_map = cls_map(attention_rollout(pruned_maps)[0], layout)
    return RolloutComparison(
        dense_map,
        pruned_map,
        difference_map(dense_map, pruned_map),
        rank_correlation(dense_map, pruned_map),
        dense_maps,
        pruned_maps,
        layout,
    )
