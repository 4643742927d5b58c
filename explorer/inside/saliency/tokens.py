"""Where a vision transformer keeps its patch tokens: the layout that Grad-CAM needs for a ViT.

A ViT's only convolution is its patch embedding, the *first* layer, so "Grad-CAM on the last
conv" would read raw patch vectors before any attention. What fits a ViT is Grad-CAM over the
tokens of the last transformer block. ``token_layout`` finds them with one probe forward pass,
from shapes alone (no class or attribute names):

1. the patch embedding: the last ``nn.Conv2d`` the input reaches, output (1, D, h, w);
2. token tensors: (1, T, D) with T >= h * w; the T - h * w tokens before the patches are
   prefix tokens ([CLS], a distillation token), the rest the h x w grid in row-major order;
3. transformer blocks: modules that map tokens to tokens of the same shape and run a LayerNorm
   inside, innermost ones only (so a ``blocks`` container does not count as one);
4. the layer read: the first LayerNorm of the last block, i.e. the normalised tokens its
   attention reads. Not the block's *output*: in a model that classifies from the [CLS]
   token, the patch tokens leaving the last block reach no logit (their gradient is exactly
   0). Not the block's *input*: a LayerNorm ignores the scale of each token, so first-order
   contributions ``grad * activation`` of its input cancel per token by construction. Reading
   the first LayerNorm's output is also what pytorch-grad-cam does for ViTs
   (``blocks[-1].norm1``). This assumes pre-norm blocks (ViT, DeiT, timm).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch
from torch import nn

from explorer.engine.inspection import example_input, has_conv2d
from explorer.inside.saliency.base import architecture_key, private_copy


@dataclass(frozen=True)
class TokenLayout:
    """How a vision transformer lays out its patch tokens.

    Attributes:
        embedding: name of the Conv2d patch embedding (the first layer: pixels -> patches).
        grid: (h, w) patches; patch token ``i`` covers grid cell ``divmod(i, w)``.
        prefix: number of tokens before the patch tokens ([CLS], ...), left out of a map.
        block: name of the last transformer block.
        layer: name of that block's first LayerNorm, whose (1, prefix + h * w, D) output
            Grad-CAM reads.
    """

    embedding: str
    grid: tuple[int, int]
    prefix: int
    block: str
    layer: str


#: Layout per (architecture, input shape): finding it costs a forward pass, and every pruned
#: copy of a model has the same architecture.
_LAYOUTS: dict[tuple[Hashable, ...], TokenLayout | None] = {}


def _shape(value: object) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _probe(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, tuple, tuple]]:
    """(name, first input's shape, output's shape) per module call, in order of completion."""
    work = private_copy(model)
    calls: list[tuple[str, tuple, tuple]] = []

    def recorder(name: str):
        def record(_module: nn.Module, inputs: tuple, output: object) -> None:
            calls.append((name, _shape(inputs[0]) if inputs else None, _shape(output)))

        return record

    modules = dict(work.named_modules())
    handles = [m.register_forward_hook(recorder(n)) for n, m in modules.items() if n]
    try:
        with torch.no_grad():
            work(example_input(input_shape).to(next(work.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _find_layout(model: nn.Module, input_shape: tuple[int, ...]) -> TokenLayout | None:
    calls = _probe(model, input_shape)
    modules = dict(model.named_modules())
    convs = [(n, out) for n, _, out in calls if isinstance(modules[n], nn.Conv2d)]
    if not convs or convs[-1][1] is None or len(convs[-1][1]) != 4:
        return None
    embedding, (_, dim, h, w) = convs[-1]

    def is_tokens(shape: tuple | None) -> bool:
        return shape is not None and len(shape) == 3 and shape[2] == dim and shape[1] >= h * w

    norms = [(n, out) for n, _, out in calls if isinstance(modules[n], nn.LayerNorm)]
    norms = [(n, out) for n, out in norms if is_tokens(out)]
    blocks = [
        n
        for n, inp, out in calls
        if is_tokens(inp) and inp == out and any(m.startswith(f"{n}.") for m, _ in norms)
    ]
    innermost = [b for b in blocks if not any(o.startswith(f"{b}.") for o in blocks)]
    if not innermost:
        return None
    block = innermost[-1]  # completion order: the last block to finish
    layer, tokens = next((n, out) for n, out in norms if n.startswith(f"{block}."))
    return TokenLayout(embedding, (h, w), tokens[1] - h * w, block, layer)


def token_layout(model: nn.Module, input_shape: tuple[int, ...]) -> TokenLayout | None:
    """The patch-token layout of a vision transformer on (C, H, W) inputs; None for a model
    without one (a CNN, an MLP).

    The probe runs on a private copy (the caller's model gets no hooks) and is remembered per
    architecture and input shape.
    """
    key = architecture_key(model, input_shape)
    if key not in _LAYOUTS:
        _LAYOUTS[key] = _find_layout(model, tuple(input_shape)) if has_conv2d(model) else None
    return _LAYOUTS[key]
