"""Pruning *during* training: sparsity schedules and gradual (iterative) pruning.

One-shot pruning removes everything at once and then fine-tunes. Gradual pruning removes a bit,
lets the network recover, and removes a bit more; the survivors take over the work of the
removed weights step by step. Zhu & Gupta (2017), "To prune, or not to prune", raise the
sparsity along a cubic (*automated gradual pruning*, AGP):

    s_t = s_f + (s_i - s_f) * (1 - t / n)^3,   t = 1 .. n

big cuts early, while many weights are redundant, and ever smaller ones near the end, when every
survivor matters. A schedule is a function (initial, final, steps) -> targets, in a registry
(``SPARSITY_SCHEDULES``: ``"agp"``, ``"linear"``, ``"one-shot"``); its last target is the final
sparsity exactly.

``gradual_prune`` runs the loop. At step t:

1. **score on the current weights**: a ``Pruner`` built on a copy holding the weights
   fine-tuned after step t-1 (the dense model at step 1) scores the plan's units, so a
   magnitude criterion ranks the *fine-tuned* weights, not the dense ones; neither the dense
   model nor the caller's pruner is ever changed;
2. **prune to s_t, masks only grow**: the plan at amount s_t is resolved there and intersected
   with the previous step's keep-vectors (``grow_masks``), so nothing pruned comes back. A
   pruned weight is exactly zero in the fine-tuned copy, so magnitude, Taylor, activation and
   APoZ scores put it first and the intersection changes nothing: the pruned count is exactly
   the engine's ``round(s_t x elements)``. (Random scores depend on the seed only, so their
   rankings nest too.)
3. **fine-tune with the masks held** (``explorer.recovery.training.fine_tune``, fit split only) for
   the step's recipe;
4. **record** a trajectory point: target and actual sparsity, and, for *reporting* only, the
   eval-split accuracy after pruning and after fine-tuning (nothing is chosen by it).

Per-layer overrides of the plan are **scaled** along the same schedule (an override ``a`` is
``a x s_t / s_final`` at step t, so it reaches ``a`` exactly at the last step); dense layers stay
dense. N:M plans have no amount to schedule and are refused.

``one_shot_vs_gradual`` runs the same loop twice with the same final target and the same
training budget: ``"one-shot"`` (every target is the final sparsity: prune once at step 1, then
fine-tune in the same n chunks) and the chosen gradual schedule. Both trajectories are plain
data for one chart.

``ProgressJob`` runs any such function in a background thread with the interface of
``explorer.recovery.training.TrainingJob`` (start / stop / join / progress / result / error).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from explorer.engine.evaluation import evaluate
from explorer.engine.inspection import copy_model
from explorer.engine.methods import get_method
from explorer.engine.plan import PruningPlan, check_amount
from explorer.engine.pruning import Pruner
from explorer.recovery.training import (
    BackgroundJob,
    Recipe,
    StopFlag,
    TrainingProgress,
    fine_tune,
)
from explorer.zoo.mnist import ImageDataset

if TYPE_CHECKING:
    from explorer.engine.workbench import Workbench

log = logging.getLogger(__name__)

# --- sparsity schedules ---------------------------------------------------------------------------


def agp_targets(initial: float, final: float, steps: int) -> list[float]:
    """Zhu & Gupta's cubic: ``s_t = s_f + (s_i - s_f) * (1 - t/n)^3`` for t = 1 .. n."""
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]


def linear_targets(initial: float, final: float, steps: int) -> list[float]:
    """Equal increments: ``s_t = s_i + (s_f - s_i) * t/n`` for t = 1 .. n."""
    return [initial + (final - initial) * t / steps for t in range(1, steps + 1)]


def one_shot_targets(initial: float, final: float, steps: int) -> list[float]:
    """The final sparsity at every step: prune once, then only fine-tune."""
    return [final] * steps


@dataclass(frozen=True)
class SparsitySchedule:
    """A named way to go from an initial to a final sparsity in n steps.

    Attributes:
        name: the registry key.
        title: a few words for a select box.
        help: one or two sentences for people.
        targets: (initial, final, steps) -> the n sparsity targets, fractions in [0, 1].
    """

    name: str
    title: str
    help: str
    targets: Callable[[float, float, int], list[float]]


#: Sparsity schedules by name (the first is the default).
SPARSITY_SCHEDULES: dict[str, SparsitySchedule] = {
    s.name: s
    for s in (
        SparsitySchedule(
            "agp",
            "AGP (cubic, Zhu & Gupta 2017)",
            "Large cuts first, while many weights are redundant, then ever smaller ones: "
            "s_t = s_f + (s_i - s_f)(1 - t/n)^3.",
            agp_targets,
        ),
        SparsitySchedule(
            "linear",
            "Linear",
            "The same share of weights removed at every step.",
            linear_targets,
        ),
        SparsitySchedule(
            "one-shot",
            "One-shot",
            "Prune to the final sparsity at the first step, then only fine-tune: the baseline "
            "gradual pruning is compared with.",
            one_shot_targets,
        ),
    )
}
DEFAULT_SCHEDULE = "agp"


def get_schedule(name: str) -> SparsitySchedule:
    """The schedule ``name``; a ValueError naming the choices otherwise."""
    try:
        return SPARSITY_SCHEDULES[name]
    except KeyError:
        raise ValueError(
            f"unknown sparsity schedule {name!r}; choose one of {sorted(SPARSITY_SCHEDULES)}"
        ) from None


def sparsity_targets(
    initial: float, final: float, steps: int, schedule: str = DEFAULT_SCHEDULE
) -> list[float]:
    """The sparsity target of each of ``steps`` pruning steps (fractions in [0, 1]).

    Args:
        initial: s_i, the sparsity before the first step (0 = dense).
        final: s_f (>= ``initial``); the last target equals it exactly.
        steps: n, pruning steps (>= 1).
        schedule: a name in ``SPARSITY_SCHEDULES`` (default ``"agp"``).

    Returns:
        n targets, non-decreasing (masks only grow), the last one ``final``.
    """
    initial = check_amount(initial, "initial sparsity")
    final = check_amount(final, "final sparsity")
    if initial > final:
        raise ValueError(
            f"the initial sparsity {initial:g} is above the final one {final:g}: pruning only "
            "removes weights"
        )
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    targets = get_schedule(schedule).targets(initial, final, steps)
    clean, previous = [], initial
    for target in targets[:-1]:
        previous = min(max(previous, target), final)  # float rounding never un-prunes
        clean.append(previous)
    return [*clean, final]


# --- masks that only grow -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MaskSet:
    """Masks of a plan's method, as keep-vectors per unit and 0/1 masks per parameter.

    Attributes:
        keeps: bool (unit.size,) per unit that lost anything; absent = the unit is whole.
        masks: 0/1 float mask per masked parameter name, on the CPU (``PrunedState.masks``).
        pruned: elements (weights, channels, heads, blocks) pruned over all the method's units.
        total: elements of all the method's units.
        warnings: the pruner's warnings for the plan.
    """

    keeps: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    pruned: int
    total: int
    warnings: tuple[str, ...] = ()

    @property
    def sparsity(self) -> float:
        """Fraction of the units' elements pruned, in [0, 1]."""
        return self.pruned / self.total if self.total else 0.0


def grow_masks(pruner: Pruner, plan: PruningPlan, previous: MaskSet | None = None) -> MaskSet:
    """``plan`` resolved on ``pruner``'s model, intersected with ``previous``: what was pruned
    stays pruned.

    Intersection is per unit (keep-vectors), and the parameter masks are rebuilt from the kept
    sets with the method's own ``masks`` (multiplied where units share a parameter, as the
    pruner does). When the new keeps already lie inside the previous ones (the usual case, see
    the module docstring) the pruner's masks are returned as they are.

    Args:
        pruner: a pruner on the *current* weights; only read (its caches fill).
        plan: the plan at this step's amount.
        previous: the previous step's masks, or None for the first step.
    """
    state = pruner.resolve(plan)
    method = get_method(plan.method)
    units = pruner.units(plan.method)
    keeps = dict(state.keeps)
    changed = False
    for name, old in (previous.keeps if previous is not None else {}).items():
        new = keeps.get(name)
        merged = old.clone() if new is None else new & old
        if new is None or not torch.equal(merged, new):
            keeps[name] = merged
            changed = True
    masks = dict(state.masks)
    if changed:
        masks = {}
        for unit in units:
            if unit.name not in keeps:
                continue
            for param, mask in method.masks(pruner.structure, unit, keeps[unit.name]).items():
                masks[param] = mask if param not in masks else masks[param] * mask
    pruned = sum(int((~keep).sum()) for keep in keeps.values())
    return MaskSet(keeps, masks, pruned, sum(u.size for u in units), tuple(state.warnings))


def mask_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of zeros over all the masked parameters' entries."""
    total = sum(m.numel() for m in masks.values())
    return sum(int((m == 0).sum()) for m in masks.values()) / total if total else 0.0


# --- progress -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepProgress:
    """Where a multi-step experiment stands (gradual pruning, lottery-ticket rounds).

    Attributes:
        stage: the current step or round, 1-based (0 = before the first).
        stages: steps or rounds in all.
        phase: what is happening, e.g. ``"prune"``, ``"fine-tune"``, ``"ticket"``, ``"done"``.
        message: one sentence for people saying what happens and why.
        training: the training loop's progress inside the stage, if training.
        runs: the trajectories so far, as (label, points) pairs (``GradualPoint``s of the
            runs of ``gradual_prune`` / ``one_shot_vs_gradual``; empty for other experiments),
            so that a poller can draw them as they grow.
    """

    stage: int
    stages: int
    phase: str
    message: str
    training: TrainingProgress | None = None
    runs: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def fraction(self) -> float:
        """Share of the whole experiment done, in [0, 1] (stages count equally)."""
        if self.stages == 0 or self.phase == "done":
            return 1.0
        inside = self.training.fraction if self.training is not None else 0.0
        return min(1.0, (max(self.stage, 1) - 1 + inside) / self.stages)


Progress = Callable[[StepProgress], None]


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


# --- gradual pruning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradualPoint:
    """One point of a pruning trajectory: the state after a step.

    Attributes:
        step: pruning step, 1-based; 0 = the dense starting point.
        target: the schedule's sparsity target of the step, a fraction.
        actual: the pruned fraction of the plan's units reached (equals ``target`` as the
            engine rounds it, unless layers are dense or overridden).
        train_steps: optimizer steps done since the start, after this step's fine-tuning
            (the x axis that puts one-shot and gradual runs on one budget).
        accuracy_pruned: eval accuracy right after pruning, before fine-tuning (None without
            an eval set); for reporting only.
        accuracy: eval accuracy after this step's fine-tuning (None without an eval set).
        loss: the training loss of the step's last batch, nats (None before any training).
    """

    step: int
    target: float
    actual: float
    train_steps: int
    accuracy_pruned: float | None
    accuracy: float | None
    loss: float | None


@dataclass(frozen=True, eq=False)
class GradualResult:
    """A gradual-pruning run: the trajectory as plain data, the final weights and masks.

    Attributes:
        schedule: the sparsity schedule's name.
        plan: the plan at the final amount (overrides at their final values).
        points: the trajectory, step 0 (dense) first.
        state_dict: the final fine-tuned weights, on the CPU; pruned weights exactly zero.
        masks: the final 0/1 masks per parameter name.
        losses: the training loss of every optimizer step, nats, in order.
        seen_indices: int64, sorted: every fit index any fine-tuning step drew.
        stopped: the run was stopped before its last step ended.
        seconds: wall-clock time.
    """

    schedule: str
    plan: PruningPlan
    points: list[GradualPoint]
    state_dict: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    losses: list[float]
    seen_indices: torch.Tensor
    stopped: bool
    seconds: float

    @property
    def final(self) -> GradualPoint:
        return self.points[-1]

    def rows(self, label: str | None = None) -> list[dict[str, Any]]:
        """The trajectory as records (one per point) for a dataframe or a plotly chart."""
        name = label or self.schedule
        return [{"run": name, **asdict(point)} for point in self.points]


def source_pruner(source: Workbench | Pruner) -> Pruner:
    """The pruner of a ``Workbench`` (anything with ``.pruner``), or ``source`` itself."""
    pruner = source if isinstance(source, Pruner) else getattr(source, "pruner", None)
    if not isinstance(pruner, Pruner):
        raise TypeError(f"expected a Workbench or a Pruner, got {type(source).__name__}")
    return pruner


def source_eval_set(
    source: Workbench | Pruner, eval_set: ImageDataset | None
) -> ImageDataset | None:
    """``eval_set``, else the workbench's eval split, else None (a bare pruner)."""
    return eval_set if eval_set is not None else getattr(source, "eval_set", None)


def source_fit(source: Workbench | Pruner, fit: ImageDataset | None) -> ImageDataset:
    """``fit``, else the workbench's whole fit split; a ValueError for a bare pruner."""
    if fit is not None:
        return fit
    if hasattr(source, "fit_set"):
        return source.fit_set
    raise ValueError("give the fit split to train on (a Pruner does not know its data)")


def with_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` holding ``state_dict``, in eval mode (``model`` is untouched)."""
    copied = copy_model(model)
    copied.load_state_dict(state_dict)
    return copied.eval()


def _scaled_plan(plan: PruningPlan, amount: float, final: float, last: bool) -> PruningPlan:
    """``plan`` at global ``amount``, each override scaled by amount / final (exact at the end)."""
    fraction = 1.0 if last or final == 0 else amount / final
    layers = tuple((name, min(1.0, value * fraction)) for name, value in plan.unit_amounts)
    return replace(plan, amount=amount, unit_amounts=layers)


def _accuracy(model: nn.Module, eval_set: ImageDataset | None) -> float | None:
    return None if eval_set is None else evaluate(model, eval_set).accuracy


def gradual_prune(
    source: Workbench | Pruner,
    plan: PruningPlan,
    final_amount: float | None = None,
    steps: int = 5,
    recipe_per_step: Recipe | None = None,
    *,
    schedule: str = DEFAULT_SCHEDULE,
    initial_amount: float = 0.0,
    fit: ImageDataset | None = None,
    eval_set: ImageDataset | None = None,
    progress: Progress | None = None,
    stop: StopFlag | None = None,
    device: torch.device | str | None = None,
) -> GradualResult:
    """Prune along a sparsity schedule, fine-tuning with the masks held after every step (see
    the module docstring). The dense model and the source's pruner are only read.

    Args:
        source: a ``Workbench`` (its model, pruner, fit split and eval split are used) or a
            ``Pruner`` (then give ``fit``; ``eval_set`` is optional).
        plan: method, criterion, scope, overrides and dense layers to keep; its amount is
            replaced at each step. N:M plans are refused (the pattern fixes the sparsity).
        final_amount: s_f, the global amount of the last step; None = ``plan.amount``.
        steps: n, pruning steps (>= 1); each is followed by one fine-tuning run.
        recipe_per_step: the fine-tuning recipe of every step; None = ``Recipe()`` (1 epoch).
        schedule: a name in ``SPARSITY_SCHEDULES`` (default ``"agp"``).
        initial_amount: s_i of the schedule (default 0, dense).
        fit: the fit split to train on; None = the workbench's ``fit_set``.
        eval_set: data to *report* accuracy on (never trained on); None = the workbench's eval
            split, or no accuracy for a bare pruner.
        progress: called on the calling thread with a ``StepProgress`` before each pruning,
            during each fine-tuning (every 10 optimizer steps) and at the end.
        stop: checked between and during steps; once set, the run ends with what it has.
        device: where to train; None = CUDA when present, else the CPU.

    Returns:
        A ``GradualResult``: ``points`` (step 0 = dense, then one per step), final weights and
        masks.
    """
    start = time.perf_counter()
    pruner = source_pruner(source)
    fit = source_fit(source, fit)
    eval_set = source_eval_set(source, eval_set)
    final = plan.amount if final_amount is None else check_amount(final_amount, "final amount")
    method = get_method(plan.method)
    if method.amount_is_switch:
        raise ValueError(
            f"{method.title} fixes the sparsity by its pattern: there is no amount to raise "
            "step by step; choose an unstructured or structured method"
        )
    recipe = recipe_per_step or Recipe()
    targets = sparsity_targets(initial_amount, final, steps, schedule)
    pruner.check(_scaled_plan(plan, final, final, last=True))  # a bad plan fails before training
    title = get_schedule(schedule).title
    dense = pruner.model
    points = [GradualPoint(0, 0.0, 0.0, 0, None, _accuracy(dense, eval_set), None)]
    current_model, current_pruner = dense, pruner
    masks: MaskSet | None = None
    state = {k: v.detach().cpu().clone() for k, v in dense.state_dict().items()}
    losses: list[float] = []
    seen = torch.zeros(len(fit), dtype=torch.bool)
    train_steps, stopped = 0, False

    def report(step: int, phase: str, message: str, training: TrainingProgress | None) -> None:
        if progress is not None:
            trajectory = ((schedule, tuple(points)),)
            progress(StepProgress(step, steps, phase, message, training, trajectory))

    for step, target in enumerate(targets, start=1):
        if stop is not None and stop.is_set():
            stopped = True
            break
        step_plan = _scaled_plan(plan, target, final, last=step == steps)
        already = masks.sparsity if masks is not None else 0.0
        if step > 1 and target == targets[step - 2]:
            message = (
                f"Step {step}/{steps} ({title}): the target stays at {_percent(target)}: "
                "nothing new is pruned, fine-tuning goes on."
            )
        else:
            message = (
                f"Step {step}/{steps} ({title}): pruning to {_percent(target)} by "
                f"{plan.criterion} scores of the "
                + ("dense weights" if step == 1 else f"weights fine-tuned after step {step - 1}")
                + (f"; the {_percent(already)} pruned before stay pruned." if already else ".")
            )
        report(step, "prune", message, None)
        # 1-2. score the current weights, prune to the target; masks only grow
        masks = grow_masks(current_pruner, step_plan, masks)
        accuracy_pruned = None
        if eval_set is not None:
            accuracy_pruned = _accuracy(_masked_copy(current_model, masks.masks), eval_set)

        # 3. fine-tune with the masks held (fit split only)
        def relay(
            update: TrainingProgress, step: int = step, sparsity: float = masks.sparsity
        ) -> None:
            report(
                step,
                "fine-tune",
                f"Step {step}/{steps}: fine-tuning at {_percent(sparsity)} sparsity with the "
                f"masks held, so pruned weights stay zero: step {update.step}/"
                f"{update.total_steps}, loss {update.loss:.3f}.",
                update,
            )

        result = fine_tune(
            current_model,
            masks.masks,
            fit,
            recipe,
            progress=relay if progress is not None else None,
            progress_every=10,
            stop=stop,
            device=device,
        )
        seen[result.seen_indices] = True
        losses.extend(result.history)
        train_steps += result.steps
        state = result.state_dict
        current_model = with_weights(dense, state)
        # 4. record (eval accuracy for reporting only)
        points.append(
            GradualPoint(
                step,
                target,
                masks.sparsity,
                train_steps,
                accuracy_pruned,
                _accuracy(current_model, eval_set),
                result.history[-1] if result.history else None,
            )
        )
        if result.stopped:
            stopped = True
            break
        if step < steps:
            current_pruner = Pruner(
                current_model, pruner.structure.input_shape, pruner.context.calibration
            )
    last = points[-1]
    report(
        len(points) - 1,
        "done",
        ("Stopped" if stopped else "Done")
        + f": {_percent(last.actual)} pruned"
        + (f", accuracy {_percent(last.accuracy)}." if last.accuracy is not None else "."),
        None,
    )
    return GradualResult(
        schedule=schedule,
        plan=_scaled_plan(plan, final, final, last=True),
        points=points,
        state_dict=state,
        masks=dict(masks.masks) if masks is not None else {},
        losses=losses,
        seen_indices=torch.nonzero(seen).flatten(),
        stopped=stopped,
        seconds=time.perf_counter() - start,
    )


@torch.no_grad()
def _masked_copy(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` (eval mode) with every masked parameter multiplied by its mask."""
    copied = copy_model(model).eval()
    params = dict(copied.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device, params[name].dtype))
    return copied


@dataclass(frozen=True, eq=False)
class ScheduleComparison:
    """One-shot against gradual pruning at the same final target and training budget.

    Attributes:
        one_shot: the run whose every target is the final sparsity.
        gradual: the run along the gradual schedule.
    """

    one_shot: GradualResult
    gradual: GradualResult

    def rows(self) -> list[dict[str, Any]]:
        """Both trajectories as records (column ``run`` tells them apart), for one chart."""
        return self.one_shot.rows("one-shot") + self.gradual.rows(self.gradual.schedule)


def one_shot_vs_gradual(
    source: Workbench | Pruner,
    plan: PruningPlan,
    final_amount: float | None = None,
    steps: int = 5,
    recipe_per_step: Recipe | None = None,
    *,
    schedule: str = DEFAULT_SCHEDULE,
    fit: ImageDataset | None = None,
    eval_set: ImageDataset | None = None,
    progress: Progress | None = None,
    stop: StopFlag | None = None,
    device: torch.device | str | None = None,
) -> ScheduleComparison:
    """One-shot and gradual pruning to the same target with the same budget, for one chart.

    Both runs fine-tune ``steps`` times with ``recipe_per_step`` (the same optimizer steps in
    all, the same learning-rate restarts): one-shot prunes to the final amount at its first
    step and only fine-tunes after that; the gradual run follows ``schedule`` from dense.

    Args:
        as for ``gradual_prune``; ``progress`` sees the one-shot run as stages 1 .. n and the
        gradual one as n+1 .. 2n.
    """

    def shifted(offset: int, label: str, before: tuple = ()) -> Progress | None:
        if progress is None:
            return None
        return lambda p: progress(
            StepProgress(
                p.stage + offset,
                2 * steps,
                p.phase,
                f"{label}: {p.message}",
                p.training,
                before + tuple((label, points) for _, points in p.runs),
            )
        )

    common = dict(fit=fit, eval_set=eval_set, stop=stop, device=device)
    one_shot = gradual_prune(
        source,
        plan,
        final_amount,
        steps,
        recipe_per_step,
        schedule="one-shot",
        progress=shifted(0, "One-shot"),
        **common,
    )
    gradual = gradual_prune(
        source,
        plan,
        final_amount,
        steps,
        recipe_per_step,
        schedule=schedule,
        progress=shifted(steps, "Gradual", (("One-shot", tuple(one_shot.points)),)),
        **common,
    )
    return ScheduleComparison(one_shot, gradual)


# --- a run in the background ----------------------------------------------------------------------

T = TypeVar("T")


class ProgressJob(BackgroundJob[T]):
    """Any ``run(progress=..., stop=...)`` in a background thread (``BackgroundJob``), whose
    ``progress`` is the latest ``StepProgress``. The callable must only read shared models
    (``gradual_prune`` and the ``explorer.recovery.tickets`` experiments do: they train deep
    copies)."""


class GradualJob(ProgressJob[GradualResult]):
    """``gradual_prune`` in a background thread (arguments as for ``gradual_prune``)."""

    def __init__(self, source: Workbench | Pruner, plan: PruningPlan, **options: Any) -> None:
        source_pruner(source)  # a wrong source fails on the caller's thread
        super().__init__(
            lambda progress, stop: gradual_prune(
                source, plan, progress=progress, stop=stop, **options
            ),
            name="gradual-prune",
        )


__all__ = [
    "DEFAULT_SCHEDULE",
    "SPARSITY_SCHEDULES",
    "GradualJob",
    "GradualPoint",
    "GradualResult",
    "MaskSet",
    "ProgressJob",
    "ScheduleComparison",
    "SparsitySchedule",
    "StepProgress",
    "agp_targets",
    "get_schedule",
    "gradual_prune",
    "grow_masks",
    "linear_targets",
    "mask_sparsity",
    "one_shot_targets",
    "one_shot_vs_gradual",
    "source_eval_set",
    "source_fit",
    "source_pruner",
    "sparsity_targets",
    "with_weights",
]
