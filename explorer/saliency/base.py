"""The attribution base class and registry: one method per file extends ``AttributionMethod``.

Every method answers the same question, "which input pixels does the logit of class ``target``
depend on?", as one non-negative (H, W) map for one image. The base class owns everything the
methods share, so that a new method only writes ``_attribute``:

- the caller's model is never touched: attribution runs on a private copy in eval mode (new
  module objects over the same, read-only weights) whose parameters do not require gradients,
  so no ``.grad`` appears anywhere and no hook that a method registers can outlive the call or
  reach a model that another session is using at the same moment;
- the input is checked to be one image, (1, C, H, W), and moved to the model's device;
- the result is a finite float32 numpy array (a dead, fully pruned model gives zeros, not NaN).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
from torch import nn


class AttributionMethod(ABC):
    """A way to attribute one logit of an image classifier to the input pixels.

    Class attributes:
        name: registry key, used in URLs and code, e.g. ``"gradient"``.
        title: what the page shows, e.g. ``"Gradient (saliency)"``.
        help: one line that teaches what the map means.
        requires: what a model needs for ``applies_to`` to hold ("" = any classifier).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    help: ClassVar[str]
    requires: ClassVar[str] = ""

    def applies_to(self, model: nn.Module) -> bool:
        """Whether this method can explain ``model`` (e.g. Grad-CAM needs a Conv2d)."""
        return True

    def describe(self, model: nn.Module, input_shape: tuple[int, ...]) -> str:
        """One line on how the method meets this model (e.g. which layer it reads); "" if none.

        Args:
            model: the classifier (read only; any probing runs on a private copy).
            input_shape: one sample's shape, (C, H, W).
        """
        return ""

    def attribute(self, model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
        """Attribution map of logit ``target`` for one image.

        Args:
            model: an image classifier, (N, C, H, W) -> (N, classes) logits. Read, never
                modified: no parameter, ``.grad`` or hook of it changes.
            x: float tensor (1, C, H, W), the (normalised) image a model takes.
            target: class index whose logit is explained, in ``range(classes)``.

        Returns:
            float32 array (H, W), finite and non-negative; larger = more important.
        """
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"expected one image of shape (1, C, H, W), got {tuple(x.shape)}")
        if not self.applies_to(model):
            raise ValueError(f"{self.title} does not apply to this model")
        work = private_copy(model)
        device = next(work.parameters()).device
        image = x.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
        result = self._attribute(work, image, int(target)).detach().float().cpu()
        result = result.reshape(result.shape[-2:]) if result.ndim > 2 else result
        if tuple(result.shape) != tuple(x.shape[-2:]):
            raise RuntimeError(
                f"{self.name} returned a {tuple(result.shape)} map for a "
                f"{tuple(x.shape[-2:])} image"
            )
        return np.nan_to_num(result.numpy().astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)

    @abstractmethod
    def _attribute(self, model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
        """The method proper, on a private copy of the model.

        Args:
            model: a deep copy in eval mode, parameters frozen; free to hook.
            x: (1, C, H, W) on the model's device, a fresh leaf tensor that requires grad.
            target: class index.

        Returns:
            tensor (H, W) or (1, 1, H, W), at the input's spatial size.
        """


def private_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose parameters do not require gradients.

    Every module is a new object (so hooks, ``requires_grad`` flags and the train/eval mode of
    the copy are its own), but parameters and buffers alias the original storage: nothing is
    copied, and nothing here ever writes to it.
    """
    memo: dict[int, object] = {}
    for param in model.parameters():
        memo[id(param)] = nn.Parameter(param.detach(), requires_grad=False)
    for buffer in model.buffers():
        memo[id(buffer)] = buffer
    return copy.deepcopy(model, memo).eval()


ATTRIBUTIONS: dict[str, AttributionMethod] = {}


def register_attribution(cls: type[AttributionMethod]) -> type[AttributionMethod]:
    """Class decorator: make an attribution method available by its ``name``."""
    ATTRIBUTIONS[cls.name] = cls()
    return cls


def get_attribution(name: str) -> AttributionMethod:
    """The registered method ``name``; a ValueError naming the choices otherwise."""
    try:
        return ATTRIBUTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown attribution method {name!r}; choose one of {sorted(ATTRIBUTIONS)}"
        ) from None


def attributions_for(model: nn.Module) -> list[str]:
    """Names of the registered methods that apply to ``model``, in registration order."""
    return [name for name, method in ATTRIBUTIONS.items() if method.applies_to(model)]
