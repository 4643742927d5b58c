"""Quality of a (pruned) model on a dataset: accuracy, loss, per-class, confusion, flips."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from explorer.data import ImageDataset

EVAL_BATCH = 1000


@dataclass(frozen=True, eq=False)
class EvalResult:
    """Metrics of one model on one dataset.

    Attributes:
        accuracy: fraction of correct top-1 predictions, in [0, 1].
        loss: mean cross-entropy (nats); ``nan`` when the logits are not finite.
        predictions: int64 (N,), top-1 class per sample.
        labels: int64 (N,), the true classes.
        num_classes: number of classes (confusion matrix size).
        finite: False when any logit was NaN or infinite.
    """

    accuracy: float
    loss: float
    predictions: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    finite: bool = True

    @property
    def per_class_accuracy(self) -> torch.Tensor:
        """float (num_classes,): accuracy on the samples of each class (nan for an absent class)."""
        correct = torch.bincount(
            self.labels[self.predictions == self.labels], minlength=self.num_classes
        ).float()
        total = torch.bincount(self.labels, minlength=self.num_classes).float()
        return correct / total

    @property
    def confusion(self) -> torch.Tensor:
        """int64 (num_classes, num_classes): row = true class, column = predicted class."""
        k = self.num_classes
        return torch.bincount(self.labels * k + self.predictions, minlength=k * k).reshape(k, k)

    def changed_vs(self, reference: EvalResult) -> torch.Tensor:
        """Indices of samples whose prediction differs from ``reference`` (e.g. the dense model)."""
        return torch.nonzero(self.predictions != reference.predictions).flatten()


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> EvalResult:
    """Accuracy, loss and predictions from precomputed logits (N, num_classes)."""
    finite = bool(torch.isfinite(logits).all())
    predictions = logits.argmax(1)
    loss = float(F.cross_entropy(logits, labels)) if finite else float("nan")
    accuracy = float((predictions == labels).float().mean())
    return EvalResult(accuracy, loss, predictions, labels, num_classes, finite)


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Logits of ``model`` (in its current mode) for ``images``, batched, on the model's device."""
    device = next(model.parameters()).device
    outputs = [
        model(images[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs)


def evaluate(model: nn.Module, dataset: ImageDataset, batch_size: int = EVAL_BATCH) -> EvalResult:
    """Metrics of ``model`` on ``dataset`` (the model must already be in eval mode)."""
    logits = predict(model, dataset.images, batch_size)
    return metrics_from_logits(logits, dataset.labels, len(dataset.classes))


# --- incremental re-evaluation ------------------------------------------------------------------


def stages_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The stages evaluation can resume from: the children of an ``nn.Sequential``, else the
    whole model as one stage (a full pass every time)."""
    if isinstance(model, nn.Sequential) and len(model) > 1:
        return list(model.named_children())
    return [("", model)]


@dataclass(frozen=True, eq=False)
class IncrementalResult:
    """An evaluation plus how it was obtained."""

    result: EvalResult
    logits: torch.Tensor
    resumed_from: int  # stage index the pass started at (0 = a full pass)
    stages: int


class IncrementalEvaluator:
    """Evaluates pruned states of one model on one dataset, recomputing only what changed.

    It keeps, for the last state it evaluated, the input of every stage on the whole dataset.
    When the next state differs only in parameters of stage k onward, the pass resumes at
    stage k from the stored input. The result is bit-identical to a full pass: the same chunks
    go through the same operations with the same values.

    Args:
        model: the dense model in eval mode (read, never written).
        dataset: the data to evaluate on (typically the eval split).
        batch_size: chunk size; the same chunks as ``predict`` so results match it exactly.
    """

    def __init__(
        self, model: nn.Module, dataset: ImageDataset, batch_size: int = EVAL_BATCH
    ) -> None:
        # A private copy: functional_call swaps parameters in place while it runs, which other
        # threads (app sessions) using the shared model must never see.
        self.model = copy.deepcopy(model)
        self.dataset = dataset
        self.batch_size = batch_size
        self.stages = stages_of(self.model)
        self.device = next(self.model.parameters()).device
        self._stage_of_param = {}
        for index, (stage_name, stage) in enumerate(self.stages):
            for param_name, _ in stage.named_parameters():
                full = f"{stage_name}.{param_name}" if stage_name else param_name
                self._stage_of_param[full] = (index, param_name)
        chunks = [
            dataset.images[i : i + batch_size].to(self.device)
            for i in range(0, len(dataset), batch_size)
        ]
        # _inputs[k] = (signature of stages < k, chunks of stage k's input) from the last pass.
        self._inputs: list[tuple[tuple, list[torch.Tensor]] | None] = [None] * len(self.stages)
        self._inputs[0] = ((), chunks)
        self._lock = threading.Lock()
        self.dense = self.evaluate({}, {})

    def _split(
        self, parameters: dict[str, torch.Tensor], signatures: dict[str, object]
    ) -> tuple[list[dict[str, torch.Tensor]], list[tuple]]:
        per_stage: list[dict[str, torch.Tensor]] = [{} for _ in self.stages]
        signature: list[list] = [[] for _ in self.stages]
        for name, value in parameters.items():
            index, local = self._stage_of_param[name]
            per_stage[index][local] = value.to(self.device)
            signature[index].append((name, signatures.get(name, id(value))))
        return per_stage, [tuple(sorted(s, key=str)) for s in signature]

    @torch.inference_mode()
    def evaluate(
        self, parameters: dict[str, torch.Tensor], signatures: dict[str, object] | None = None
    ) -> IncrementalResult:
        """Evaluate the dense model with ``parameters`` (name -> tensor) substituted.

        ``signatures`` (name -> hashable) identify parameter values across calls; without them
        a tensor's identity is used. ``PrunedState.parameters`` / ``.signatures`` fit directly.
        """
        per_stage, stage_signatures = self._split(parameters, signatures or {})
        prefixes = [tuple(stage_signatures[:k]) for k in range(len(self.stages))]
        with self._lock:
            start = max(
                k
                for k in range(len(self.stages))
                if self._inputs[k] is not None and self._inputs[k][0] == prefixes[k]
            )
            chunks = self._inputs[start][1]
            for k in range(start, len(self.stages)):
                if k > start:
                    self._inputs[k] = (prefixes[k], chunks)
                stage = self.stages[k][1]
                params = per_stage[k]
                chunks = [
                    torch.func.functional_call(stage, params, (x,)) if params else stage(x)
                    for x in chunks
                ]
        logits = torch.cat([c.float().cpu() for c in chunks])
        result = metrics_from_logits(logits, self.dataset.labels, len(self.dataset.classes))
        return IncrementalResult(result, logits, start, len(self.stages))

    def evaluate_state(self, state: object) -> IncrementalResult:
        """Evaluate a ``PrunedState`` (its masked parameters)."""
        return self.evaluate(state.parameters, state.signatures)
