"""Gradient saliency (Simonyan et al. 2014): |d logit / d pixel|, via captum's ``Saliency``."""

from __future__ import annotations

import torch
from captum.attr import Saliency
from torch import nn

from explorer.inside.saliency.base import AttributionMethod, register_attribution


@register_attribution
class GradientSaliency(AttributionMethod):
    name = "gradient"
    title = "Gradient (saliency)"
    help = (
        "How much the class logit would change per unit change of each pixel: "
        "|d logit / d pixel|, the largest over colour channels. Sharp, pixel-level, but noisy."
    )
    evidence_means = "the sum of |d logit / d pixel| times the image's contrast"
    zero_means = "the logit barely reacts to the pixels"

    def _attribute(
        self, model: nn.Module, x: torch.Tensor, target: int, **options: object
    ) -> tuple[torch.Tensor, float]:
        gradients = Saliency(model).attribute(x, target=target, abs=True)  # (1, C, H, W)
        saliency = gradients.amax(dim=1)[0]  # (H, W): max over channels
        # Evidence in logit units: how far the logit could move, to first order, if every
        # pixel changed by the image's contrast (max - min). The contrast, not |x|, so that the
        # number does not depend on where the normalisation put zero.
        contrast = float(x.detach().max() - x.detach().min())
        return saliency, float(saliency.sum()) * contrast
