"""The attribution base class and registry: one method per file extends ``AttributionMethod``.

Every method answers the same question, "which input pixels does the logit of class ``target``
depend on?", as one non-negative (H, W) map for one image. The base class owns everything the
methods share, so that a new method only writes ``_attribute``:

- the caller's model is never touched: attribution runs on a private copy in eval mode (new
  module objects over the same, read-only weights) whose parameters do not require gradients,
  so no ``.grad`` appears anywhere and no hook that a method registers can outlive the call or
  reach a model that another session is using at the same moment;
- the input is checked to be one image, (1, C, H, W), and moved to the model's device;
- the result is a finite float32 numpy array (a dead, fully pruned model gives zeros, not NaN);
- the map comes with a verdict: whether it is too small to mean anything (``Attribution``).

When is a map "≈ 0"?
--------------------
A map drawn scaled to its own maximum always looks like *something*: a map whose largest value
is 0.0036 shows the same bright spot as one whose largest value is 3.6. So every method also
reports its map's **evidence**, the map's total in *logit units* (how much of the target logit
the map accounts for, to first order; each method documents its own, see ``_attribute``), and
the map is **negligible** when

    evidence <= NEGLIGIBLE_SHARE * (highest logit - lowest logit),   NEGLIGIBLE_SHARE = 0.1%

i.e. when it accounts for less than a thousandth of the spread between the classes. The
reference is the logit *range*, not the target logit itself: softmax ignores a common shift of
the logits, so a target logit of 0.01 can be a certain prediction; the range is what separates
the classes. Why a thousandth, measured on the trained LeNet-5 (Grad-CAM on ``conv2``, the
first 40 eval images, each explaining the dense model's prediction):

- the dense maps' evidence / range has a tenfold gap, from 0.02% to 0.19%; the 5 maps below
  it (images 0, 12, 23, 29, 37; image 0 is the issue's max-0.0036 map) are ReLU residues in
  which at most 1 of the 100 positions of ``conv2`` is positive; above it, 3 or more are;
- a first-order change of ``d`` in a logit moves that class's softmax probability by at most
  ``d / 4``: at 0.1% of a LeNet-5 range (~30) that is under 1 percentage point, at 1% it could
  be 7.5, which is not "no evidence";
- a threshold of 1% would blank 17 of those 40 dense maps (and 17 of 40 of the trained ViT's
  token Grad-CAM maps), many of them multi-position patterns that stay put under input noise.

With 0.1%, the pruned LeNet-5 (50 / 60 / 70% unstructured magnitude) has 4 / 2 / 1 of the 40
maps flagged; ResNet-mini (dense, 60%) and the ViT (dense, 50%, 70%) none. Gradient maps of
the trained models carry 70% or more of the range, so they are flagged only when a model has
stopped reacting to its input.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from explorer.engine.inspection import copy_model

#: A map whose evidence is at most this share of the logit range is "≈ 0" (see module doc).
NEGLIGIBLE_SHARE = 1e-3


def is_negligible(evidence: float, logit_range: float) -> bool:
    """The "≈ 0" rule: ``evidence <= NEGLIGIBLE_SHARE * logit_range`` (both in logit units).

    True as well when either is nan or the range infinite (a broken output has nothing to
    explain) and when both are 0; a map with evidence over a range of 0 (all classes tied) is
    kept: it shows what would break the tie.
    """
    return not evidence > NEGLIGIBLE_SHARE * logit_range  # written so that nan gives True


@dataclass(frozen=True, eq=False)
class Attribution:
    """One attribution map, with how much of the decision it accounts for.

    Attributes:
        values: float32 (H, W), finite and non-negative; larger = more important.
        evidence: the map's total in logit units (>= 0; what it means depends on the method,
            see its ``evidence_means``).
        logit_range: highest minus lowest logit of the model for this image; nan when the
            output is not finite.
        evidence_means: how the method turns its map into logit units, for the reason text.
    """

    values: np.ndarray
    evidence: float
    logit_range: float
    evidence_means: str = ""

    @property
    def share(self) -> float:
        """``evidence / logit_range``: the share of the class spread the map accounts for."""
        if self.logit_range > 0:
            return self.evidence / self.logit_range
        return math.inf if self.evidence > 0 else math.nan

    @property
    def negligible(self) -> bool:
        """Whether the map is "≈ 0" (``is_negligible``): draw it blank, compare nothing."""
        return is_negligible(self.evidence, self.logit_range)

    @property
    def reason(self) -> str:
        """Why the map is negligible, with its numbers; "" when it is not."""
        if not self.negligible:
            return ""
        if not math.isfinite(self.logit_range):
            return "the model's output is not finite, so there is no decision to explain"
        if not self.values.any():
            return "the map is exactly zero: no evidence for this class where the method reads"
        means = f" ({self.evidence_means})" if self.evidence_means else ""
        return (
            f"its total{means} is {self.evidence:.2g} logits, {self.share:.2%} of the logit "
            f"range ({self.logit_range:.3g}); below {NEGLIGIBLE_SHARE:.1%} a map explains "
            "nothing the decision rests on, and scaling it to a maximum of 1 would only "
            "stretch a residue"
        )


class AttributionMethod(ABC):
    """A way to attribute one logit of an image classifier to the input pixels.

    Class attributes:
        name: registry key, used in URLs and code, e.g. ``"gradient"``.
        title: what the page shows, e.g. ``"Gradient (saliency)"``.
        help: one line that teaches what the map means.
        requires: what a model needs for ``applies_to`` to hold ("" = any classifier).
        evidence_means: how ``_attribute`` measures its map in logit units (one phrase).
        zero_means: what a negligible map says, shown over its blank panel (one phrase).
        options: the method's settings and their defaults (e.g. ``{"steps": 32}``); ``explain``
            accepts exactly these as keyword arguments.
        live: whether one map is cheap enough (one or two passes) to redraw with every slider
            move; an expensive method (many passes per map) runs on request.
        cost_hint: what one map costs, in passes of the model (one phrase, for the page).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    help: ClassVar[str]
    requires: ClassVar[str] = ""
    evidence_means: ClassVar[str] = ""
    zero_means: ClassVar[str] = "no evidence for this class"
    options: ClassVar[dict[str, Any]] = {}
    live: ClassVar[bool] = True
    cost_hint: ClassVar[str] = "one forward and one backward pass"

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The defaults updated with ``options``; a ValueError for a setting the method lacks."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = sorted(self.options) or "none"
            raise ValueError(f"{self.title} has no setting {unknown}; its settings: {known}")
        return {**self.options, **options}

    def applies_to(self, model: nn.Module, input_shape: tuple[int, ...]) -> bool:
        """Whether this method can explain ``model`` on (C, H, W) inputs (e.g. Grad-CAM needs a
        Conv2d); any probing runs on a private copy."""
        return True

    def describe(self, model: nn.Module, input_shape: tuple[int, ...], **options: Any) -> str:
        """One line on how the method meets this model (e.g. which layer it reads); "" if none.

        Args:
            model: the classifier (read only; any probing runs on a private copy).
            input_shape: one sample's shape, (C, H, W).
            options: the method's settings (see ``options``).
        """
        return ""

    def attribute(
        self, model: nn.Module, x: torch.Tensor, target: int, **options: Any
    ) -> np.ndarray:
        """Attribution map of logit ``target`` for one image: ``explain(...).values``.

        Returns:
            float32 array (H, W), finite and non-negative; larger = more important.
        """
        return self.explain(model, x, target, **options).values

    def explain(
        self, model: nn.Module, x: torch.Tensor, target: int, **options: Any
    ) -> Attribution:
        """Attribution map of logit ``target`` for one image, with its evidence.

        Args:
            model: an image classifier, (N, C, H, W) -> (N, classes) logits. Read, never
                modified: no parameter, ``.grad`` or hook of it changes.
            x: float tensor (1, C, H, W), the (normalised) image a model takes.
            target: class index whose logit is explained, in ``range(classes)``.
            options: the method's settings (``options`` lists them and their defaults).

        Returns:
            ``Attribution``: the (H, W) map, its evidence and the model's logit range.
        """
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"expected one image of shape (1, C, H, W), got {tuple(x.shape)}")
        settings = self.resolve_options(options)
        if not self.applies_to(model, tuple(x.shape[1:])):
            raise ValueError(f"{self.title} does not apply to this model")
        work = private_copy(model)
        device = next(work.parameters()).device
        image = x.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
        with torch.no_grad():
            logits = work(image.detach())[0].double()
        finite = bool(torch.isfinite(logits).all())
        logit_range = float(logits.max() - logits.min()) if finite else math.nan
        if not 0 <= int(target) < len(logits):
            raise ValueError(f"target {target} is not a class index (0..{len(logits) - 1})")
        result, evidence = self._attribute(work, image, int(target), **settings)
        result = result.detach().float().cpu()
        result = result.reshape(result.shape[-2:]) if result.ndim > 2 else result
        if tuple(result.shape) != tuple(x.shape[-2:]):
            raise RuntimeError(
                f"{self.name} returned a {tuple(result.shape)} map for a "
                f"{tuple(x.shape[-2:])} image"
            )
        values = np.nan_to_num(result.numpy().astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        evidence = float(evidence)
        return Attribution(
            values,
            evidence if math.isfinite(evidence) else 0.0,
            logit_range,
            self.evidence_means,
        )

    @abstractmethod
    def _attribute(
        self, model: nn.Module, x: torch.Tensor, target: int, **options: Any
    ) -> tuple[torch.Tensor, float]:
        """The method proper, on a private copy of the model.

        Args:
            model: a deep copy in eval mode, parameters frozen; free to hook.
            x: (1, C, H, W) on the model's device, a fresh leaf tensor that requires grad.
            target: class index.
            options: every setting of ``options``, defaults filled in.

        Returns:
            (map, evidence): the map as a tensor (H, W) or (1, 1, H, W) at the input's spatial
            size, and its total in logit units (>= 0), compared with the logit range to decide
            whether the map is negligible (see the module doc).
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
    return copy_model(model, memo).eval()


def architecture_key(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[Hashable, ...]:
    """What a probe of ``model``'s layers depends on: module names and types, and the input
    shape (every pruned copy of a model shares its dense model's key)."""
    modules = tuple((name, type(module)) for name, module in model.named_modules())
    return modules, tuple(input_shape)


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


def attributions_for(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of the registered methods that apply to ``model`` on (C, H, W) inputs, in
    registration order."""
    return [name for name, m in ATTRIBUTIONS.items() if m.applies_to(model, input_shape)]
