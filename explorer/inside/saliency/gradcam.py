"""Grad-CAM (Selvaraju et al. 2017) on the last Conv2d of a CNN, via captum's ``LayerGradCam``."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, ClassVar

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from explorer.engine.inspection import execution_order, has_conv2d
from explorer.inside.saliency.base import (
    AttributionMethod,
    architecture_key,
    private_copy,
    register_attribution,
)
from explorer.inside.saliency.tokens import token_layout

#: How the coarse (h, w) map is brought to the input's (H, W) (a ``F.interpolate`` mode).
UPSAMPLE_MODE = "bilinear"


#: Conv2d layer names in execution order per (architecture, input shape): finding them costs
#: a forward pass, and every pruned copy of a model has the same architecture.
_CONVS: dict[tuple[Hashable, ...], tuple[str, ...]] = {}


def conv_layers(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[str, ...]:
    """Names of the ``nn.Conv2d`` layers a forward pass of one (C, H, W) input reaches, in the
    order it reaches them (the layers Grad-CAM can read).

    The probe runs on a private copy (the caller's model gets no hooks) and is remembered per
    architecture and input shape.
    """
    key = architecture_key(model, input_shape)
    if key not in _CONVS:
        if not has_conv2d(model):
            _CONVS[key] = ()
        else:
            work = private_copy(model)
            modules = dict(work.named_modules())
            order = execution_order(work, tuple(input_shape))
            _CONVS[key] = tuple(name for name in order if isinstance(modules[name], nn.Conv2d))
    return _CONVS[key]


def last_conv(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Name of the last ``nn.Conv2d`` a forward pass of one (C, H, W) input reaches, or None."""
    convs = conv_layers(model, input_shape)
    return convs[-1] if convs else None


def chosen_conv(model: nn.Module, input_shape: tuple[int, ...], layer: str | None) -> str:
    """``layer`` if Grad-CAM can read it (a Conv2d the input reaches), the last such conv when
    ``layer`` is None; a ValueError naming the choices otherwise."""
    convs = conv_layers(model, input_shape)
    if not convs:
        raise ValueError("Grad-CAM needs a Conv2d layer that the forward pass uses")
    if layer is None:
        return convs[-1]
    if layer not in convs:
        raise ValueError(f"Grad-CAM cannot read {layer!r}; choose one of {list(convs)}")
    return layer


@register_attribution
class GradCam(AttributionMethod):
    name = "gradcam"
    title = "Grad-CAM"
    help = (
        "Where a convolution's feature maps support the class (the last one by default): each "
        "map weighted by its mean gradient, summed, ReLU'd, upsampled to the image. Coarse "
        "but class-specific; an earlier layer gives a finer, less class-specific map."
    )
    #: layer: the Conv2d to read (None: the last one the input reaches).
    options: ClassVar[dict[str, Any]] = {"layer": None}
    # A ViT has a Conv2d too, but only as its patch embedding: the first layer, not a feature
    # map near the decision. It gets the token version (``token_gradcam``) instead.
    requires = (
        "a convolutional feature map (a CNN; a vision transformer's only convolution is its "
        "patch embedding, the first layer)"
    )
    evidence_means = "the Grad-CAM map summed over the layer's positions"
    zero_means = "no evidence for this class at this layer"

    def applies_to(self, model: nn.Module, input_shape: tuple[int, ...]) -> bool:
        return has_conv2d(model) and token_layout(model, input_shape) is None

    def describe(self, model: nn.Module, input_shape: tuple[int, ...], **options: object) -> str:
        convs = conv_layers(model, input_shape)
        if not convs:
            return ""
        layer = options.get("layer") or convs[-1]
        if layer not in convs:
            return ""
        place = "last" if layer == convs[-1] else f"number {convs.index(layer) + 1}"
        return (
            f"Grad-CAM reads `{layer}`, the {place} of the {len(convs)} convolutions the "
            "input reaches."
        )

    def _attribute(
        self, model: nn.Module, x: torch.Tensor, target: int, **options: object
    ) -> tuple[torch.Tensor, float]:
        layer_name = chosen_conv(model, tuple(x.shape[1:]), options.get("layer"))
        layer = model.get_submodule(layer_name)
        # (1, 1, h, w): ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of d logit / d A_k
        cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
        # Evidence: the coarse map's sum. Each position's value is a first-order share of the
        # logit (sum_k alpha_k A_k); after global average pooling the unclipped sum is exactly
        # the layer's contribution to the logit.
        evidence = float(cam.detach().sum())
        return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), UPSAMPLE_MODE), evidence
