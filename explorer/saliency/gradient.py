"""Gradient saliency (Simonyan et al. 2014): |d logit / d pixel|, via captum's ``Saliency``."""

from __future__ import annotations

import torch
from captum.attr import Saliency
from torch import nn

from explorer.saliency.base import AttributionMethod, register_attribution


@register_attribution
class GradientSaliency(AttributionMethod):
    name = "gradient"
    title = "Gradient (saliency)"
    help = (
        "How much the class logit would change per unit change of each pixel: "
        "|d logit / d pixel|, the largest over colour channels. Sharp, pixel-level, but noisy."
    )

    def _attribute(self, model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
        gradients = Saliency(model).attribute(x, target=target, abs=True)  # (1, C, H, W)
        return gradients.amax(dim=1)[0]  # (H, W): max over channels
