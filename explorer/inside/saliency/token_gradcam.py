"""Grad-CAM for vision transformers: Grad-CAM over the patch tokens of the last block.

The tokens (1, prefix + h * w, D) that the last block's attention reads (see ``tokens``) play
the part of a CNN's last feature maps: the D token channels are the "maps", the h x w patch
grid their positions. The [CLS] (prefix) tokens are dropped, each channel is weighted by its
gradient averaged over the patches, and the weighted sum is ReLU'd and upsampled, exactly as
in Grad-CAM (Selvaraju et al. 2017; the ViT variant of pytorch-grad-cam).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution
from torch import nn

from explorer.inside.saliency.base import AttributionMethod, register_attribution
from explorer.inside.saliency.gradcam import UPSAMPLE_MODE
from explorer.inside.saliency.tokens import token_layout


@register_attribution
class TokenGradCam(AttributionMethod):
    name = "gradcam_tokens"
    title = "Grad-CAM (last transformer block)"
    help = (
        "Where the patch tokens read by the last transformer block support the class: each "
        "token channel weighted by its mean gradient over the patches, summed, ReLU'd and "
        "upsampled from the patch grid. One value per patch."
    )
    requires = "a vision transformer (patch tokens from a Conv2d patch embedding)"
    evidence_means = "the Grad-CAM map summed over the patches"
    zero_means = "no evidence for this class in the patches the last block reads"

    def applies_to(self, model: nn.Module, input_shape: tuple[int, ...]) -> bool:
        return token_layout(model, input_shape) is not None

    def describe(self, model: nn.Module, input_shape: tuple[int, ...], **options: object) -> str:
        layout = token_layout(model, input_shape)
        if layout is None:
            return ""
        h, w = layout.grid
        return (
            f"Grad-CAM reads the {h}×{w} patch tokens at `{layout.layer}`, the input of the "
            f"last transformer block `{layout.block}` after its LayerNorm: where the last "
            "attention finds evidence for the class, one value per patch. (The only "
            f"convolution, `{layout.embedding}`, is the patch embedding, the first layer.)"
        )

    def _attribute(
        self, model: nn.Module, x: torch.Tensor, target: int, **options: object
    ) -> tuple[torch.Tensor, float]:
        layout = token_layout(model, tuple(x.shape[1:]))
        if layout is None:
            raise ValueError("token Grad-CAM needs a vision transformer's patch tokens")
        captured: list[torch.Tensor] = []
        layer = model.get_submodule(layout.layer)
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            logit = model(x)[0, target]
        finally:
            handle.remove()  # on a private copy, but a method cleans up after itself anyway
        tokens = captured[-1]  # (1, prefix + h * w, D)
        grads = None
        if tokens.requires_grad:  # False only if no path from the input reaches the tokens
            (grads,) = torch.autograd.grad(logit, tokens, allow_unused=True)
        if grads is None:  # the logit does not depend on the tokens: no evidence anywhere
            grads = torch.zeros_like(tokens)
        h, w = layout.grid
        patches = tokens[0, layout.prefix :].detach()  # (h * w, D): [CLS] dropped
        weights = grads[0, layout.prefix :].mean(dim=0)  # (D,): alpha_k, mean over patches
        cam = F.relu(patches @ weights).reshape(1, 1, h, w)  # ReLU(sum_k alpha_k A_k)
        evidence = float(cam.sum())  # in logit units, as for the conv Grad-CAM
        return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), UPSAMPLE_MODE), evidence
