"""Recovery as the app and the CLI run it: a fine-tuning job on a workbench's plan, a small
eval probe for the live curve, and the before / after numbers of a finished run.

The training loop itself is ``explorer.recovery.training``; this module only wires it to a
``Workbench`` (its dense model, its plan's masks, its fit and eval parts).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

import torch

from explorer.engine.evaluation import IncrementalEvaluator, evaluate
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import PrunedState
from explorer.engine.workbench import Workbench
from explorer.recovery.training import Recipe, TrainingJob, TrainingResult
from explorer.zoo.mnist import ImageDataset

#: Images of the eval part the live curve is measured on (the final numbers use all of them).
PROBE_SIZE = 1000
#: Evaluations of the probe per run, spread evenly (plus one at the end).
PROBE_POINTS = 8


def balanced_indices(labels: torch.Tensor, size: int) -> torch.Tensor:
    """Up to ``size`` indices, the first ones of each class in turn (int64, sorted): a small
    part whose accuracy is not skewed towards one class."""
    by_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    picked: list[torch.Tensor] = []
    per_class = max(1, size // max(1, len(by_class)))
    for members in by_class:
        picked.append(members[:per_class])
    chosen = torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)
    return chosen[:size].sort().values


def eval_probe(eval_set: ImageDataset, size: int = PROBE_SIZE) -> ImageDataset:
    """A class-balanced part of the eval split for progress curves (reporting only)."""
    if len(eval_set) <= size:
        return eval_set
    return eval_set.subset(balanced_indices(eval_set.labels, size))


class ProbeCurve:
    """The caller's ``evaluate`` for ``fine_tune``: accuracy of the model on a probe, recorded
    with the step it was taken at, readable from another thread while the run goes on.

    The loop calls it after every ``every``-th step and after the last (``total``), so the
    k-th call belongs to step ``min(k * every, total)``."""

    def __init__(self, probe: ImageDataset, every: int, total: int) -> None:
        self.probe = probe
        self.every = every
        self.total = total
        self._points: list[tuple[int, float]] = []
        self._lock = threading.Lock()

    def __call__(self, model: torch.nn.Module) -> float:
        accuracy = evaluate(model, self.probe).accuracy
        with self._lock:
            step = min((len(self._points) + 1) * self.every, self.total)
            self._points.append((step, accuracy))
        return accuracy

    @property
    def points(self) -> list[tuple[int, float]]:
        with self._lock:
            return list(self._points)


def finetune_job(
    bench: Workbench,
    plan: PruningPlan | PrunedState,
    recipe: Recipe,
    probe_size: int = PROBE_SIZE,
) -> tuple[TrainingJob, ProbeCurve]:
    """A fine-tuning job (not started) of ``plan`` on ``bench``'s fit part, with a probe curve
    of eval accuracy measured ``PROBE_POINTS`` times along the way."""
    state = bench.pruner.state_for(plan)
    fit = bench.fit_set
    total = recipe.total_steps(len(fit))
    every = max(1, total // PROBE_POINTS)
    curve = ProbeCurve(eval_probe(bench.eval_set, probe_size), every, total)
    job = TrainingJob(bench.model, state.masks, fit, recipe, evaluate=curve, eval_every=every)
    return job, curve


def masks_held(state_dict: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> int:
    """How many pruned weights of ``state_dict`` are not exactly zero (0 when masks held)."""
    return sum(
        int((state_dict[name][mask.cpu() == 0] != 0).sum())
        for name, mask in masks.items()
        if name in state_dict
    )


@dataclass(frozen=True)
class FineTuneOutcome:
    """Before and after, on the whole eval split. Accuracies in [0, 1], losses in nats."""

    dense_accuracy: float
    dense_loss: float
    pruned_accuracy: float
    pruned_loss: float
    finetuned_accuracy: float
    finetuned_loss: float
    eval_samples: int
    fit_samples: int
    steps: int
    total_steps: int
    stopped: bool
    seconds: float
    revived: int

    @property
    def recovered(self) -> float:
        """Share of the accuracy pruning lost that fine-tuning won back (1 = all of it)."""
        lost = self.dense_accuracy - self.pruned_accuracy
        return (self.finetuned_accuracy - self.pruned_accuracy) / lost if lost > 0 else 1.0

    def metrics(self) -> dict[str, Any]:
        return {**asdict(self), "recovered": self.recovered}


def finetune_outcome(
    bench: Workbench, plan: PruningPlan | PrunedState, result: TrainingResult
) -> FineTuneOutcome:
    """The dense, pruned and fine-tuned models measured on every eval image."""
    state = bench.pruner.state_for(plan)
    pruned = bench.evaluator.evaluate_state(state).result
    tuned = IncrementalEvaluator(result.load_into(bench.model), bench.eval_set).dense.result
    return FineTuneOutcome(
        dense_accuracy=bench.dense.accuracy,
        dense_loss=bench.dense.loss,
        pruned_accuracy=pruned.accuracy,
        pruned_loss=pruned.loss,
        finetuned_accuracy=tuned.accuracy,
        finetuned_loss=tuned.loss,
        eval_samples=len(bench.eval_set),
        fit_samples=int(result.seen_indices.numel()),
        steps=result.steps,
        total_steps=result.total_steps,
        stopped=result.stopped,
        seconds=result.seconds,
        revived=masks_held(result.state_dict, state.masks),
    )


__all__ = [
    "PROBE_POINTS",
    "PROBE_SIZE",
    "FineTuneOutcome",
    "ProbeCurve",
    "balanced_indices",
    "eval_probe",
    "finetune_job",
    "finetune_outcome",
    "masks_held",
]
