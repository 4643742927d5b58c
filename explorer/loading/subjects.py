"""A subject's model and data, loaded and checked against each other.

Each half has its own loader (``explorer.loading.models``, ``explorer.loading.data``); this
module joins them and checks what neither can check alone: that the model takes the data's
images and has an output for every class. Every problem is a ``LoadError`` with one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.engine.outputs import OutputError, adapt_classifier
from explorer.engine.subject import Subject
from explorer.loading.data import LoadedData, load_data
from explorer.loading.errors import LoadError
from explorer.loading.models import LoadedModel, load_model
from explorer.loading.options import option
from explorer.loading.store import default_store

#: Images the compatibility check runs through the model (a forward pass of a small batch).
PROBE_BATCH = 2


@dataclass(frozen=True, eq=False)
class LoadedSubject:
    """A subject ready for a workbench.

    Attributes:
        subject: what was loaded.
        model: the model, CPU, eval mode.
        data: its fit and eval parts.
        loaded_model: the model loader's result (input shape, preprocessing, hooks, notes).
        card: what the Model & data page shows about it (plain data).
        notes: what the user should know, from both loaders and the checks.
    """

    subject: Subject
    model: nn.Module
    data: LoadedData
    loaded_model: LoadedModel
    card: dict[str, Any]
    notes: tuple[str, ...]


def load_subject(
    subject: Subject,
    *,
    trust_code: bool = False,
    trust_pickle: bool = False,
    resolve: Callable[[str], Path] | None = None,
) -> LoadedSubject:
    """Load ``subject``'s model (with its weights) and data, and check they fit together."""
    resolve = resolve or default_store().path
    weights = resolve(subject.weights) if subject.weights else None
    loaded = load_model(
        subject.model,
        weights,
        trust_code=trust_code,
        trust_pickle=trust_pickle,
        resolve=resolve,
    )
    data = load_data(subject.data, resolve=resolve, preprocessing=loaded.preprocessing)
    classes = len(data.eval.classes)
    probe = data.eval.images[:PROBE_BATCH]
    output_notes = _adapt_output(loaded.model, probe, subject)
    outputs = _probe(loaded.model, probe, subject)
    if outputs < classes:
        raise LoadError(
            f"the model has {outputs} outputs but the data has {classes} classes "
            f"({', '.join(data.eval.classes[:5])}{'…' if classes > 5 else ''}): "
            "a classifier needs one output per class"
        )
    notes = list(loaded.notes) + list(data.notes) + output_notes
    if outputs > classes:
        notes.append(
            f"The model has {outputs} outputs and the data {classes} classes: outputs "
            f"{classes}..{outputs - 1} never match a label."
        )
    card = {
        "name": subject.key,
        "title": subject.model_label,
        "summary": f"{type(loaded.model).__name__} from {subject.model.kind} source "
        f"{subject.model}, on {subject.data.source}.",
        "params": sum(p.numel() for p in loaded.model.parameters()),
        "input_shape": list(data.eval.input_shape),
        "classes": list(data.eval.classes),
        "fit_samples": len(data.fit),
        "eval_samples": len(data.eval),
    }
    return LoadedSubject(subject, loaded.model, data, loaded, card, tuple(notes))


def _adapt_output(model: nn.Module, images: torch.Tensor, subject: Subject) -> list[str]:
    """Make ``model`` return class scores (``explorer.engine.outputs``); notes on what it
    returns."""
    try:
        _, notes = adapt_classifier(model, images)
    except OutputError as err:
        raise LoadError(f"{subject.model}: {err}") from None
    except Exception:  # the forward pass itself failed: _probe says how, with the shapes
        return []
    return notes


def _probe(model: nn.Module, images: torch.Tensor, subject: Subject) -> int:
    """The number of outputs the model gives for a small batch of the data, or a LoadError
    that says how the shapes disagree."""
    try:
        with torch.no_grad():
            logits = model(images)
    except Exception as err:  # any shape error surfaces here, in the user's own code too
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LoadError(
            f"the model does not take this data's images of shape "
            f"{tuple(images.shape[1:])} (C, H, W): {first}. Set {option('size')} / "
            f"{option('channels')} to what the model expects"
        ) from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(images):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise LoadError(
            f"{subject.model} does not return one row of class scores per image "
            f"(got {shape} for a batch of {len(images)}): only classifiers are supported"
        )
    if not torch.isfinite(logits).all():
        raise LoadError(f"{subject.model} gives NaN or infinite outputs on this data")
    return int(logits.shape[1])
