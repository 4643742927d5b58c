"""What a model is made of: its prunable layers in graph order, with shapes, parameters, FLOPs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def copy_model(model: nn.Module, memo: dict[int, object] | None = None) -> nn.Module:
    """``copy.deepcopy(model)``, also for models that cache tensors computed in a forward
    pass (timm's LeViT and TinyViT keep an attention-bias cache): such a tensor is not a graph
    leaf, which deepcopy refuses, so the copy gets a detached clone of it instead."""
    memo = {} if memo is None else memo
    for module in model.modules():
        for name, value in vars(module).items():
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            items = value.values() if isinstance(value, dict) else (value,)
            if isinstance(value, list | tuple):
                items = value
            for item in items:
                if isinstance(item, torch.Tensor) and not item.is_leaf and id(item) not in memo:
                    memo[id(item)] = item.detach().clone()
    return copy.deepcopy(model, memo)


def has_conv2d(model: nn.Module) -> bool:
    """Whether ``model`` contains a ``nn.Conv2d`` (conv nets get channels_last, Grad-CAM)."""
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


@dataclass(frozen=True)
class LayerInfo:
    """One prunable layer (a Linear or Conv2d weight).

    Attributes:
        name: module name in ``model.named_modules()``, e.g. ``"block1.conv2"``.
        kind: ``"Linear"`` or ``"Conv2d"``.
        weight_shape: (out, in) or (out, in, kh, kw).
        params: weight + bias parameter count.
        flops: FLOPs of this layer for one input sample (a multiply-add counts 2).
        order: position in execution order (0 = first layer the input reaches).
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    params: int
    flops: int
    order: int

    @property
    def shape_text(self) -> str:
        """The weight shape as people write it, e.g. ``"16×6×5×5"``."""
        return "×".join(map(str, self.weight_shape))

    @property
    def weight_numel(self) -> int:
        return int(torch.Size(self.weight_shape).numel())


def example_input(input_shape: tuple[int, ...], batch: int = 1) -> torch.Tensor:
    """A zero batch of the given per-sample shape, for tracing and FLOP counting."""
    return torch.zeros(batch, *input_shape)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def layer_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """FLOPs for one sample per module name (nested: a block counts its children); ``""`` = all.

    Attention is counted as the matrix products it is. The counter has no formula for the fused
    kernels that inference would pick (CPU flash attention inside
    ``scaled_dot_product_attention``, ``nn.MultiheadAttention``'s fast path), so it would count
    their q·kᵀ and attention·v products as zero. The count therefore runs with SDPA's math
    backend and with autograd enabled (which turns the fast path off); nothing is backpropagated.
    """
    x = example_input(input_shape).to(_device_of(model))
    with (
        torch.enable_grad(),
        sdpa_kernel(SDPBackend.MATH),
        FlopCounterMode(display=False) as counter,
    ):
        model(x)
    flops: dict[str, int] = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            flops[""] = int(sum(per_op.values()))
        else:
            # Keys are "<RootClass>.<module name>"; the root itself is "<RootClass>".
            _, _, name = str(key).partition(".")
            flops[name] = int(sum(per_op.values()))
    return flops


def model_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Total FLOPs of one forward pass for one sample (torch.utils.flop_counter)."""
    return layer_flops(model, input_shape).get("", 0)


def execution_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of the modules of ``PRUNABLE_TYPES`` in the order a forward pass first calls them."""
    names = {module: name for name, module in model.named_modules()}
    order: list[str] = []

    def record(module: nn.Module, _inputs: object) -> None:
        name = names[module]
        if name not in order:
            order.append(name)

    handles = [
        m.register_forward_pre_hook(record)
        for m in model.modules()
        if isinstance(m, PRUNABLE_TYPES)
    ]
    try:
        with torch.no_grad():
            model(example_input(input_shape).to(_device_of(model)))
    finally:
        for handle in handles:
            handle.remove()
    return order


def prunable_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerInfo]:
    """Every Linear / Conv2d layer that the forward pass uses, in graph (execution) order."""
    modules = dict(model.named_modules())
    flops = layer_flops(model, input_shape)
    layers = []
    for order, name in enumerate(execution_order(model, input_shape)):
        module = modules[name]
        params = module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
        layers.append(
            LayerInfo(
                name,
                type(module).__name__,
                tuple(module.weight.shape),
                int(params),
                flops.get(name, 0),
                order,
            )
        )
    return layers


def _join(prefix: str, leaf: str) -> str:
    """A child's name under ``prefix`` (the root module's prefix is ``""``)."""
    return f"{prefix}.{leaf}" if prefix else leaf


@dataclass(frozen=True, eq=False)
class HeadGroup:
    """The heads of one attention module.

    Whatever the module, its q, k and v projections are packed as rows [q heads | k heads |
    v heads] of one weight (head ``h`` owns rows ``h*d:(h+1)*d`` of each third), and head ``h``
    owns columns ``h*d:(h+1)*d`` of the output projection; removing a head removes exactly those.

    Attributes:
        name: the attention module.
        num_heads, head_dim: its heads and their width ``d``.
        qkv: the packed projection's name: a Linear, or for ``nn.MultiheadAttention`` (whose
            ``in_proj_weight`` is no module) ``"<name>.in_proj"``, for display.
        proj: the output projection, a Linear.
        qkv_weight, qkv_bias: parameter names of the packed projection (bias None if absent).
        kind: how the module holds its heads (``"fused"`` Linears or ``"multihead"``); the key
            compaction looks up how to cut it by.
    """

    name: str
    num_heads: int
    head_dim: int
    qkv: str
    proj: str
    qkv_weight: str
    qkv_bias: str | None
    kind: str

    @property
    def proj_weight(self) -> str:
        return f"{self.proj}.weight"

    @property
    def inner(self) -> int:
        """Width of the concatenated heads (``embed_dim`` for ``nn.MultiheadAttention``)."""
        return self.num_heads * self.head_dim

    def qkv_rows(self, head: int) -> torch.Tensor:
        """Rows of the packed q, k, v weight that belong to ``head`` (its q, k and v parts)."""
        base = torch.arange(self.head_dim) + head * self.head_dim
        return torch.cat([base + part * self.inner for part in range(3)])

    def proj_columns(self, head: int) -> torch.Tensor:
        return torch.arange(self.head_dim) + head * self.head_dim


#: Attribute names of (packed [q|k|v] Linear, output Linear) in attention modules of ours: the
#: bundled ViT's ``Attention`` and ``CompactMultiheadAttention`` (what compaction turns an
#: ``nn.MultiheadAttention`` into, so a compacted model's heads are found again).
FUSED_PROJECTIONS: tuple[tuple[str, str], ...] = (("qkv", "proj"), ("in_proj", "out_proj"))


def _fused_heads(name: str, module: nn.Module) -> HeadGroup | None:
    num_heads = getattr(module, "num_heads", None)
    if not isinstance(num_heads, int) or num_heads < 1:
        return None
    for packed, out in FUSED_PROJECTIONS:
        qkv, proj = getattr(module, packed, None), getattr(module, out, None)
        if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
            continue
        head_dim = getattr(module, "head_dim", qkv.out_features // 3 // num_heads)
        inner = num_heads * head_dim
        if qkv.out_features != 3 * inner or proj.in_features != inner:
            return None  # not the [q|k|v] x heads layout: heads cannot be told apart
        qkv_name = _join(name, packed)
        return HeadGroup(
            name,
            num_heads,
            head_dim,
            qkv_name,
            _join(name, out),
            f"{qkv_name}.weight",
            f"{qkv_name}.bias" if qkv.bias is not None else None,
            "fused",
        )
    return None


def _multihead_heads(name: str, module: nn.Module) -> HeadGroup | None:
    # Only the packed layout: with kdim/vdim != embed_dim the projections are separate
    # (q_proj_weight, ...), and bias_k / bias_v / add_zero_attn add keys that no head owns.
    if not isinstance(module, nn.MultiheadAttention) or module.in_proj_weight is None:
        return None
    if module.bias_k is not None or module.bias_v is not None or module.add_zero_attn:
        return None
    return HeadGroup(
        name,
        module.num_heads,
        module.head_dim,
        _join(name, "in_proj"),
        _join(name, "out_proj"),
        _join(name, "in_proj_weight"),
        _join(name, "in_proj_bias") if module.in_proj_bias is not None else None,
        "multihead",
    )


#: How each kind of attention module shows its heads: a finder returns its HeadGroup, or None
#: when the module is not of its kind. The first that answers wins.
HEAD_FINDERS: tuple[Callable[[str, nn.Module], HeadGroup | None], ...] = (
    _multihead_heads,
    _fused_heads,
)


def attention_heads(model: nn.Module) -> list[HeadGroup]:
    """The heads of every multi-head attention module whose heads can be told apart."""
    groups = []
    for name, module in model.named_modules():
        found = next((g for find in HEAD_FINDERS if (g := find(name, module)) is not None), None)
        if found is not None:
            groups.append(found)
    return groups


def attention_modules(model: nn.Module) -> list[str]:
    """Names of multi-head attention modules: a fused ``qkv`` and an output ``proj`` Linear,
    or an ``nn.MultiheadAttention`` with packed q, k, v projections."""
    return [heads.name for heads in attention_heads(model)]
