"""What a user's classifier returns, turned into what every number here is computed from.

Models in the wild return more than a tensor of logits: a tuple ``(logits, aux)`` (torchvision's
GoogLeNet and Inception v3 in training mode, many research models), a dict
``{"logits": ..., "features": ...}``, a HuggingFace-style ``ModelOutput`` with a ``.logits``
attribute, or class scores already passed through ``log_softmax`` or ``softmax``.

- ``logits_of(output)`` picks the class scores out of any of those forms (one definition, used
  by the adapter below and by the training loop, where a model may return aux outputs);
- ``adapt_classifier(model, probe)`` makes a model whose *eval-mode* output is not a plain
  ``(N, classes)`` tensor of logits return one, without renaming a single parameter (so
  weights files, exports and layer names stay the user's): the model's class is swapped for a
  subclass whose ``forward`` calls the original and picks the scores.

Log-probabilities need nothing: ``log_softmax`` is idempotent under ``log_softmax``, so the
cross-entropy loss, softmax confidences and predictions are exactly those of the logits they
came from; saliency then explains the class's log-probability, and a note says so.
Probabilities (rows of a softmax) are turned into log-probabilities, so that the loss is the
model's real negative log-likelihood rather than cross-entropy of already-normalised scores.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

#: Keys / attributes under which wrapped outputs commonly carry the class scores.
LOGIT_KEYS = ("logits", "logit", "out", "output", "scores")
#: How close rows must come to a normalised distribution to be taken for one.
NORMALISED_TOLERANCE = 1e-4
#: Smallest probability a log is taken of (a softmax that underflowed to 0 stays finite).
TINY = 1e-30


class OutputError(TypeError):
    """A model output with no recognisable class scores (a user-facing message)."""


def logits_of(output: Any) -> torch.Tensor:
    """The class-score tensor in a model's ``output``: the tensor itself, the first element of
    a tuple / list, a mapping's ``"logits"`` (or its only tensor), or an object's ``.logits``.

    Raises ``OutputError`` naming what was found when none of those applies."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for key in LOGIT_KEYS:
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        tensors = [value for value in output.values() if isinstance(value, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise OutputError(
            f"the model returns a {type(output).__name__} with keys {sorted(map(str, output))} "
            "and none of them is 'logits': return the class scores, or put them under 'logits'"
        )
    for key in LOGIT_KEYS[:1]:
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, Sequence) and not isinstance(output, str) and len(output) > 0:
        return logits_of(output[0])
    raise OutputError(
        f"the model returns a {type(output).__name__}, not class scores: return a tensor of "
        "shape (batch, classes), a tuple whose first item is one, or a dict with 'logits'"
    )


def output_kind(scores: torch.Tensor) -> str:
    """``"log-probabilities"`` when every row's exp sums to 1, ``"probabilities"`` when every
    row is non-negative and sums to 1, else ``"logits"`` (decided on a probe batch)."""
    scores = scores.detach().double()
    if scores.ndim != 2 or scores.shape[1] < 2 or not torch.isfinite(scores).all():
        return "logits"
    if (scores <= 0).all() and (scores.logsumexp(1).abs() < NORMALISED_TOLERANCE).all():
        return "log-probabilities"
    if (scores >= 0).all() and ((scores.sum(1) - 1).abs() < NORMALISED_TOLERANCE).all():
        return "probabilities"
    return "logits"


class _Adapted:
    """Mixed into a model's class by ``adapt_classifier``: forward returns class scores."""

    _explorer_log_of_probabilities: bool = False


_ADAPTED_CLASSES: dict[tuple[type, bool], type] = {}


def _adapted_class(cls: type, log_of_probabilities: bool) -> type:
    key = (cls, log_of_probabilities)
    if key not in _ADAPTED_CLASSES:
        original = cls.forward

        # The original's signature (functools.wraps): torch.export maps inputs to it by name.
        @functools.wraps(original)
        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
            scores = logits_of(original(self, *args, **kwargs))
            return scores.clamp_min(TINY).log() if log_of_probabilities else scores

        adapted = type(
            cls.__name__,
            (_Adapted, cls),
            {
                "forward": forward,
                "_explorer_log_of_probabilities": log_of_probabilities,
                "__module__": cls.__module__,
            },
        )
        adapted.__qualname__ = cls.__qualname__
        _ADAPTED_CLASSES[key] = adapted
    return _ADAPTED_CLASSES[key]


def is_adapted(model: nn.Module) -> bool:
    return isinstance(model, _Adapted)


def adapt_classifier(model: nn.Module, probe: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """``model`` made to return a tensor of logits (or log-probabilities) in eval mode, and
    notes on what was done. The model is changed in place (its class), never its parameters;
    a model that already returns logits is returned as it is.

    Raises ``OutputError`` when the output holds no class scores."""
    with torch.no_grad():
        output = model(probe)
    scores = logits_of(output)
    kind = output_kind(scores)
    notes: list[str] = []
    if not isinstance(output, torch.Tensor):
        notes.append(
            f"The model returns a {type(output).__name__}: its class scores are read from it "
            "(the first item of a tuple, 'logits' of a dict or output); the rest is ignored."
        )
    if kind == "log-probabilities":
        notes.append(
            "The model returns log-probabilities (log_softmax): loss, confidences and "
            "predictions are those of its logits; saliency explains each class's log-probability."
        )
    if kind == "probabilities":
        notes.append(
            "The model returns probabilities (softmax): their log is used as the class scores, "
            "so that the loss is the model's negative log-likelihood."
        )
    if isinstance(output, torch.Tensor) and kind != "probabilities":
        return model, notes
    if isinstance(model, torch.jit.ScriptModule):
        raise OutputError(
            "a TorchScript model must return a tensor of class scores, got "
            f"{type(output).__name__}" + (" of probabilities" if kind == "probabilities" else "")
        )
    model.__class__ = _adapted_class(type(model), kind == "probabilities")
    return model, notes


__all__ = [
    "OutputError",
    "adapt_classifier",
    "is_adapted",
    "logits_of",
    "output_kind",
]
