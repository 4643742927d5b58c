"""Occlusion (Zeiler & Fergus 2014), via captum's ``Occlusion``: hide a patch, watch the logit.

A square window of "no ink" (each channel at its darkest value in the image, as for
Integrated Gradients) slides over the image; each pixel's value is the mean drop of the target
logit over the windows that cover it. It needs no gradient and reads the model as a black box,
at the cost of one forward pass per window position.

Window and stride: the window's side is ``window_for(H, W)``, about a seventh of the shorter
side (4 px on MNIST's 28 x 28: about a stroke's width, so hiding one square can cut a stroke
but not hide a digit); the stride is half the window, so every pixel is under up to four
windows and the map is smoother than the window grid. On 28 x 28 that is 13 x 13 = 169
positions, evaluated ``WINDOWS_PER_PASS`` at a time. (Where (H - window) is not a multiple of
the stride, the last rows / columns are under no window and get 0.)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from captum.attr import Occlusion
from torch import nn

from explorer.inside.saliency.base import AttributionMethod, register_attribution
from explorer.inside.saliency.integrated import dark_baseline

#: Windows evaluated per forward pass (a batch): fewer passes, same result.
WINDOWS_PER_PASS = 64


def window_for(height: int, width: int) -> int:
    """Default window side: about a seventh of the shorter side, at least 2 (4 px on MNIST's
    28, about a stroke's width; 32 px on a 224-px photo)."""
    return max(2, round(min(height, width) / 7))


@register_attribution
class OcclusionMethod(AttributionMethod):
    name = "occlusion"
    title = "Occlusion"
    help = (
        "How much the class logit drops when a small square of the image is hidden (set to "
        "no ink), averaged over the squares that cover each pixel. Model-agnostic and "
        "faithful to what hiding does, but coarse and slower: one pass per square."
    )
    evidence_means = (
        "the map's largest value: the largest drop of the logit at a pixel, averaged over the "
        "squares that hide it"
    )
    zero_means = "hiding any square leaves the logit as it is or raises it"
    #: window: side of the hidden square in pixels (None: ``window_for`` the image); the
    #: stride is half the window.
    options: ClassVar[dict[str, Any]] = {"window": None}
    live = False
    cost_hint = (
        "one forward pass per position of the square: 169 on a 28×28 image with the default "
        "4-px square, in batches of 64"
    )

    def _window(self, input_shape: tuple[int, ...], window: int | None) -> int:
        height, width = input_shape[-2:]
        size = window_for(height, width) if window is None else int(window)
        if not 1 <= size <= min(height, width):
            raise ValueError(f"window must be 1..{min(height, width)} pixels, got {window}")
        return size

    def describe(self, model: nn.Module, input_shape: tuple[int, ...], **options: Any) -> str:
        size = self._window(input_shape, options.get("window"))
        return f"Occlusion hides {size}×{size}-pixel squares, every {max(1, size // 2)} px."

    def _attribute(
        self, model: nn.Module, x: torch.Tensor, target: int, **options: Any
    ) -> tuple[torch.Tensor, float]:
        channels = x.shape[1]
        size = self._window(tuple(x.shape[1:]), options["window"])
        stride = max(1, size // 2)
        drops = Occlusion(model).attribute(
            x.detach(),
            sliding_window_shapes=(channels, size, size),
            strides=(channels, stride, stride),
            baselines=dark_baseline(x),
            target=int(target),
            perturbations_per_eval=WINDOWS_PER_PASS,
        )
        # every channel of a pixel gets the same value (the window spans them): take one;
        # only drops are evidence *for* the class
        evidence = drops[0, 0].clamp(min=0)
        # in logit units: the map's peak (its sum would grow with the number of squares)
        return evidence, float(evidence.max())
