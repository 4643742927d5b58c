"""What a model is made of: its prunable layers in graph order, with shapes, parameters, FLOPs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


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
        with torch.inference_mode():
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


def attention_modules(model: nn.Module) -> list[str]:
    """Names of multi-head attention modules with a fused ``qkv`` and an output ``proj``."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(getattr(m, "num_heads", None), int)
        and isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "proj", None), nn.Linear)
    ]
