"""Flips: the eval samples whose prediction a plan changed, and what the headline accuracy hides.

Two models with the same accuracy can disagree on many samples: the accuracy delta is only the
*net* of the flips, ``(fixed - broken) / N`` exactly. This module lists every flip, counts them
per class and compares the confusion matrices of the dense and the pruned model, as plain data
(numbers, numpy arrays, frozen dataclasses); figures live in ``explorer.plots.flips``.

Where the probabilities come from: ``EvalResult`` keeps predictions and labels, not logits. The
workbench's incremental evaluator does keep the logits of its last pass
(``IncrementalResult.logits``), so ``flips_for_plan`` / ``flips_for_state`` read those and run
no model beyond the (incremental, usually partial) evaluation the page runs anyway. Given bare
``EvalResult`` objects, ``flips_from_results`` counts exactly but leaves the probability fields
``nan`` unless logits are passed along. The dense model is never touched: the evaluator works on
its own private copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from explorer.engine.evaluation import EvalResult
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import PrunedState

if TYPE_CHECKING:  # the workbench may come to import this module
    from explorer.engine.workbench import Workbench

#: The three ways a prediction can change, by who was right.
FLIP_KINDS = ("broken", "fixed", "changed")


@dataclass(frozen=True)
class Flip:
    """One eval sample whose predicted class differs between the dense and the pruned model.

    Attributes:
        index: position in the eval set.
        kind: ``"broken"`` (dense right, pruned wrong), ``"fixed"`` (dense wrong, pruned right)
            or ``"changed"`` (both wrong, different classes).
        true_class, dense_prediction, pruned_prediction: class indices.
        dense_confidence: softmax probability of the dense prediction, in [0, 1] (nan: unknown).
        pruned_confidence: softmax probability of the pruned prediction, in [0, 1].
        dense_true_probability, pruned_true_probability: softmax probability of the true class.
        true_class_drop: dense minus pruned true-class probability (positive: pruning hurt).
    """

    index: int
    kind: str
    true_class: int
    dense_prediction: int
    pruned_prediction: int
    dense_confidence: float
    pruned_confidence: float
    dense_true_probability: float
    pruned_true_probability: float
    true_class_drop: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Sort keys of ``sort_flips``: a flip -> a number (nan sorts last either way).
SORT_KEYS: dict[str, Callable[[Flip], float]] = {
    "dense_confidence": lambda flip: flip.dense_confidence,
    "pruned_confidence": lambda flip: flip.pruned_confidence,
    "true_class_drop": lambda flip: flip.true_class_drop,
    "index": lambda flip: float(flip.index),
}

#: Which prediction ``filter_flips(predicted_class=...)`` looks at: a flip -> its classes.
PREDICTED_BY: dict[str, Callable[[Flip], tuple[int, ...]]] = {
    "dense": lambda flip: (flip.dense_prediction,),
    "pruned": lambda flip: (flip.pruned_prediction,),
    "either": lambda flip: (flip.dense_prediction, flip.pruned_prediction),
}


@dataclass(frozen=True, eq=False)
class Flips:
    """Every flip of one pruned model against the dense one, on the same eval samples.

    Attributes:
        flips: every flipped sample, in eval-index order.
        classes: class names, index = class.
        total: N, the number of eval samples compared.
        dense_correct, pruned_correct: correct top-1 predictions of each model (of N).
        dense_confusion, pruned_confusion: int64 (K, K), row = true class, column = predicted;
            each sums to N and its trace is the model's correct count.
    """

    flips: tuple[Flip, ...]
    classes: tuple[str, ...]
    total: int
    dense_correct: int
    pruned_correct: int
    dense_confusion: np.ndarray
    pruned_confusion: np.ndarray

    def count(self, kind: str) -> int:
        """How many flips of ``kind`` (one of ``FLIP_KINDS``)."""
        _check_kind(kind)
        return sum(1 for flip in self.flips if flip.kind == kind)

    @property
    def broken(self) -> int:
        return self.count("broken")

    @property
    def fixed(self) -> int:
        return self.count("fixed")

    @property
    def changed(self) -> int:
        return self.count("changed")

    @property
    def accuracy_delta(self) -> float:
        """Pruned minus dense accuracy; equals ``(fixed - broken) / total`` exactly."""
        return (self.pruned_correct - self.dense_correct) / self.total

    @property
    def confusion_change(self) -> np.ndarray:
        """int64 (K, K): pruned minus dense confusion; positive off the diagonal = new errors."""
        return self.pruned_confusion - self.dense_confusion

    @property
    def per_class(self) -> dict[str, np.ndarray]:
        """Kind -> int64 (K,): flips of that kind per *true* class."""
        counts = {kind: np.zeros(len(self.classes), dtype=np.int64) for kind in FLIP_KINDS}
        for flip in self.flips:
            counts[flip.kind][flip.true_class] += 1
        return counts

    def summary(self) -> dict[str, Any]:
        """The headline and what it hides: counts, accuracies and the flip rate."""
        return {
            "total": self.total,
            "dense_accuracy": self.dense_correct / self.total,
            "pruned_accuracy": self.pruned_correct / self.total,
            "accuracy_delta": self.accuracy_delta,
            **{kind: self.count(kind) for kind in FLIP_KINDS},
            "flipped": len(self.flips),
            "flip_rate": len(self.flips) / self.total,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lists instead of arrays (for session state, a file, a URL)."""
        return {
            "flips": [flip.to_dict() for flip in self.flips],
            "classes": list(self.classes),
            "total": self.total,
            "dense_correct": self.dense_correct,
            "pruned_correct": self.pruned_correct,
            "dense_confusion": self.dense_confusion.tolist(),
            "pruned_confusion": self.pruned_confusion.tolist(),
        }


def compute_flips(
    dense_logits: torch.Tensor,
    pruned_logits: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
) -> Flips:
    """Flips from the logits of both models on the same samples.

    Args:
        dense_logits, pruned_logits: float (N, K), raw scores (softmax is applied here).
        labels: int64 (N,), true classes in ``range(K)``.
        classes: the K class names.
    """
    dense_probs = torch.softmax(dense_logits.double(), dim=1)
    pruned_probs = torch.softmax(pruned_logits.double(), dim=1)
    return _build_flips(
        labels, dense_logits.argmax(1), pruned_logits.argmax(1), classes, dense_probs, pruned_probs
    )


def flips_from_results(
    dense: EvalResult,
    pruned: EvalResult,
    classes: Sequence[str] | None = None,
    dense_logits: torch.Tensor | None = None,
    pruned_logits: torch.Tensor | None = None,
) -> Flips:
    """Flips from two ``EvalResult`` on the same samples (the same labels, in the same order).

    Counts and confusion matrices are exact from the predictions alone; the probability fields
    of each flip need that model's logits (float (N, K)) and are ``nan`` without them.
    ``classes`` defaults to ``"0"``, ``"1"``, ...
    """
    if not torch.equal(dense.labels, pruned.labels):
        raise ValueError("the two results are not on the same samples (their labels differ)")
    classes = classes if classes is not None else [str(k) for k in range(dense.num_classes)]
    dense_probs = None if dense_logits is None else torch.softmax(dense_logits.double(), 1)
    pruned_probs = None if pruned_logits is None else torch.softmax(pruned_logits.double(), 1)
    return _build_flips(
        dense.labels, dense.predictions, pruned.predictions, classes, dense_probs, pruned_probs
    )


def flips_for_state(bench: Workbench, state: PrunedState) -> Flips:
    """Flips of a pruned ``state`` on the whole eval set of ``bench`` (a ``Workbench``).

    Uses the logits its incremental evaluator keeps (no extra model run beyond that
    evaluation, which resumes from the stored stage inputs); the dense model is not modified.
    """
    dense = bench.evaluator.dense
    pruned = bench.evaluator.evaluate_state(state)
    if not torch.equal(dense.samples, pruned.samples):
        raise ValueError("the dense and pruned evaluations cover different samples")
    labels = bench.eval_set.labels[pruned.samples]
    flips = compute_flips(dense.logits, pruned.logits, labels, bench.eval_set.classes)
    # compute_flips numbers samples by position; a partial pass covers a subset of the eval set
    samples = pruned.samples.tolist()
    if samples != list(range(len(samples))):
        flips = replace(flips, flips=tuple(replace(f, index=samples[f.index]) for f in flips.flips))
    return flips


def flips_for_plan(bench: Workbench, plan: PruningPlan) -> Flips:
    """``flips_for_state`` of ``plan`` resolved on ``bench``."""
    return flips_for_state(bench, bench.resolve(plan))


def sort_flips(
    flips: Sequence[Flip], key: str = "true_class_drop", descending: bool = True
) -> list[Flip]:
    """``flips`` ordered by ``key`` (a name in ``SORT_KEYS``); ties keep eval-index order and
    nan values (unknown probabilities) go last."""
    if key not in SORT_KEYS:
        raise ValueError(f"unknown sort key {key!r}; choose one of {sorted(SORT_KEYS)}")
    value = SORT_KEYS[key]
    sign = -1.0 if descending else 1.0

    def order(flip: Flip) -> tuple[bool, float, int]:
        v = value(flip)
        return (bool(np.isnan(v)), 0.0 if np.isnan(v) else sign * v, flip.index)

    return sorted(flips, key=order)


def filter_flips(
    flips: Sequence[Flip],
    true_class: int | None = None,
    predicted_class: int | None = None,
    predicted_by: str = "either",
    kinds: Sequence[str] = (),
) -> list[Flip]:
    """The flips that match every given condition (None / empty: no condition).

    Args:
        true_class: keep flips of samples of this class.
        predicted_class: keep flips predicted as this class by ``predicted_by``.
        predicted_by: ``"dense"``, ``"pruned"`` or ``"either"`` (a name in ``PREDICTED_BY``).
        kinds: keep only these kinds (names in ``FLIP_KINDS``).
    """
    if predicted_by not in PREDICTED_BY:
        raise ValueError(
            f"unknown predicted_by {predicted_by!r}; choose one of {sorted(PREDICTED_BY)}"
        )
    for kind in kinds:
        _check_kind(kind)
    predictions = PREDICTED_BY[predicted_by]
    return [
        flip
        for flip in flips
        if (true_class is None or flip.true_class == true_class)
        and (predicted_class is None or predicted_class in predictions(flip))
        and (not kinds or flip.kind in kinds)
    ]


# --- helpers --------------------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in FLIP_KINDS:
        raise ValueError(f"unknown flip kind {kind!r}; choose one of {sorted(FLIP_KINDS)}")


def _confusion(labels: np.ndarray, predictions: np.ndarray, k: int) -> np.ndarray:
    """int64 (k, k): row = true class, column = predicted class."""
    return np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k).astype(np.int64)


def _build_flips(
    labels: torch.Tensor,
    dense_predictions: torch.Tensor,
    pruned_predictions: torch.Tensor,
    classes: Sequence[str],
    dense_probs: torch.Tensor | None,
    pruned_probs: torch.Tensor | None,
) -> Flips:
    """The shared core: predictions (and optional probabilities (N, K)) -> ``Flips``."""
    y = labels.cpu().numpy().astype(np.int64)
    d = dense_predictions.cpu().numpy().astype(np.int64)
    p = pruned_predictions.cpu().numpy().astype(np.int64)
    if not len(y) == len(d) == len(p) > 0:
        raise ValueError(f"need equal, non-empty lengths, got {len(y)}, {len(d)}, {len(p)}")
    k = len(classes)
    rows = np.arange(len(y))
    nan = np.full(len(y), np.nan)
    dense_np = None if dense_probs is None else dense_probs.cpu().numpy()
    pruned_np = None if pruned_probs is None else pruned_probs.cpu().numpy()
    confidence = nan if dense_np is None else dense_np[rows, d]
    pruned_confidence = nan if pruned_np is None else pruned_np[rows, p]
    dense_true = nan if dense_np is None else dense_np[rows, y]
    pruned_true = nan if pruned_np is None else pruned_np[rows, y]
    # Kind of each flipped sample: by who was right.
    kinds = np.where(d == y, "broken", np.where(p == y, "fixed", "changed"))
    flips = tuple(
        Flip(
            index=int(i),
            kind=str(kinds[i]),
            true_class=int(y[i]),
            dense_prediction=int(d[i]),
            pruned_prediction=int(p[i]),
            dense_confidence=float(confidence[i]),
            pruned_confidence=float(pruned_confidence[i]),
            dense_true_probability=float(dense_true[i]),
            pruned_true_probability=float(pruned_true[i]),
            true_class_drop=float(dense_true[i] - pruned_true[i]),
        )
        for i in np.flatnonzero(d != p)
    )
    return Flips(
        flips=flips,
        classes=tuple(classes),
        total=len(y),
        dense_correct=int((d == y).sum()),
        pruned_correct=int((p == y).sum()),
        dense_confusion=_confusion(y, d, k),
        pruned_confusion=_confusion(y, p, k),
    )
