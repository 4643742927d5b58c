"""Pruning *before* training: SNIP and lottery tickets.

Both start from the network's **initial weights**, the values it had before training:

- a bundled model ships them: ``sample_models/<name>/init.pt``, saved by
  ``sample_models/train.py`` just before training (``load_model(name, "init")``); they are the
  init of the committed trained weights, so a mask found on the trained weights can be rewound
  to them;
- any other model (an upload, torchvision, a fine-tuned variant) gets a **fresh**
  initialisation: a deep copy on which every module's ``reset_parameters()`` is called under a
  fixed seed. Its trained weights did not grow from that init, so for a lottery ticket the
  experiments below train their own dense network from it first (round 0). Parameters that
  no module resets (e.g. a custom position embedding) keep their values and are listed.

``initial_weights`` says which one was used (``InitialWeights.origin``).

**SNIP** (Lee et al. 2019, "Single-shot network pruning based on connection sensitivity"):
score each prunable weight by ``|dL/dw * w|`` at the initial weights on one mini-batch of the
fit split (the change of the loss if the connection were removed, to first order), keep the
global top ``1 - s`` of the prunable layers' weights, then train the sparse network from the
initial weights with the mask held.

**Lottery tickets** (Frankle & Carbin 2019, "The lottery ticket hypothesis"): a trained
network's magnitude mask, applied to its *initial* weights, gives a subnetwork (a "winning
ticket") that trains to the dense accuracy as fast or faster; the same mask with a *fresh random
init* does not. ``rewind`` resets the survivors to their initial values bit for bit (or to an
early checkpoint, ``capture_checkpoint``, as Frankle et al. 2020 do for larger networks);
``iterative_ticket`` repeats train -> prune p% of the survivors (global magnitude) -> rewind ->
retrain, and trains the random re-init baseline with every round's mask.

All training goes through ``explorer.recovery.training.fine_tune`` (fit split only, masks held, deep
copies: the dense model is never changed). Eval-split accuracy is measured for *reporting*: the
curves, the best step and the first-epoch accuracy are read off it; nothing is selected by it
(the returned weights are those at the end of training).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.evaluation import evaluate
from explorer.engine.inspection import copy_model, prunable_layers
from explorer.engine.plan import PruningPlan, check_amount
from explorer.engine.pruning import Pruner
from explorer.engine.subject import Subject
from explorer.recovery.schedules import (
    MaskSet,
    Progress,
    StepProgress,
    grow_masks,
    source_eval_set,
    source_fit,
    source_pruner,
    with_weights,
)
from explorer.recovery.training import (
    Recipe,
    StopFlag,
    TrainingProgress,
    TrainingResult,
    fine_tune,
    steps_per_epoch,
)
from explorer.zoo.mnist import ImageDataset, calibration_batch
from explorer.zoo.models import get_spec, weights_path

if TYPE_CHECKING:
    from explorer.engine.workbench import Workbench

#: Where initial weights can come from.
INIT_ORIGINS = {
    "init.pt": "the bundled model's committed initial weights (the init its trained weights "
    "grew from)",
    "reset_parameters": "a fresh, seeded initialisation (reset_parameters() on every module)",
}

# --- initial weights ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class InitialWeights:
    """Initial weights of a model, and where they came from.

    Attributes:
        state_dict: every parameter and buffer, on the CPU.
        origin: a key of ``INIT_ORIGINS``: ``"init.pt"`` or ``"reset_parameters"``.
        seed: the seed of a fresh initialisation (None for ``init.pt``).
        not_reset: parameters no ``reset_parameters`` covers: they keep the model's values.
    """

    state_dict: dict[str, torch.Tensor]
    origin: str
    seed: int | None = None
    not_reset: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        """One sentence for people."""
        text = INIT_ORIGINS[self.origin]
        if self.seed is not None:
            text += f", seed {self.seed}"
        if self.not_reset:
            text += f"; not re-initialised (no reset_parameters): {', '.join(self.not_reset)}"
        return text


def fresh_initialization(model: nn.Module, seed: int = 0) -> InitialWeights:
    """A new random init of ``model``'s architecture; ``model`` is untouched.

    A deep copy (on the CPU) has ``reset_parameters()`` called on every module that defines it
    (``_reset_parameters()`` where only that exists, as in ``nn.MultiheadAttention``), in
    ``modules()`` order, with torch's CPU generator seeded by ``seed`` inside ``fork_rng``: the
    global random state is left as it was.

    Args:
        model: the architecture (its weights are not read, except where nothing resets them).
        seed: the seed; the same seed gives the same weights.
    """
    fresh = copy_model(model).cpu()
    params = dict(fresh.named_parameters())
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        # NaN first: whatever is still NaN afterwards, no reset touched
        before = {name: p.detach().clone() for name, p in params.items()}
        for p in params.values():
            p.fill_(float("nan"))
        torch.manual_seed(seed)
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None) or getattr(
                module, "_reset_parameters", None
            )
            if callable(reset):
                reset()
        not_reset = []
        for name, p in params.items():
            if bool(torch.isnan(p).any()):
                p.copy_(before[name])
                not_reset.append(name)
    state = {k: v.detach().clone() for k, v in fresh.state_dict().items()}
    return InitialWeights(state, "reset_parameters", seed, tuple(not_reset))


def initial_weights(
    source: Workbench | Subject | str | Pruner, model: nn.Module | None = None, seed: int = 0
) -> InitialWeights:
    """The initial weights of a subject's model: the bundled ``init.pt`` when there is one,
    else a fresh initialisation (see the module docstring).

    ``init.pt`` is used for a bundled architecture with its committed weights (``subject.weights``
    is None): those weights were trained from it. Any other subject, and a bare ``Pruner``, gets
    ``fresh_initialization(model, seed)``.

    Args:
        source: a ``Workbench``, a ``Subject``, a model-source text (``"lenet5"``) or a
            ``Pruner``.
        model: the architecture; None = the workbench's or pruner's model, or the zoo's.
        seed: seed of a fresh initialisation (unused for ``init.pt``).
    """
    if isinstance(source, Pruner):
        return fresh_initialization(model or source.model, seed)
    subject = Subject.of(source.subject if hasattr(source, "subject") else source)
    model = model or getattr(source, "model", None)
    if subject.model.kind == "zoo" and subject.weights is None:
        path = weights_path(subject.model.ref, "init")
        if path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            return InitialWeights(dict(state), "init.pt")
    if model is None:
        if subject.model.kind != "zoo":
            raise ValueError(f"give the model of {subject.label} to initialise it afresh")
        model = get_spec(subject.model.ref).build()
    return fresh_initialization(model, seed)


def _init_of(source: Workbench | Pruner, init: InitialWeights | None, seed: int) -> InitialWeights:
    if init is not None:
        return init
    return initial_weights(source, source_pruner(source).model, seed)


# --- rewinding ------------------------------------------------------------------------------------


@torch.no_grad()
def rewind(
    model: nn.Module, masks: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]
) -> nn.Module:
    """A deep copy of ``model`` holding ``weights`` (every parameter and buffer), each masked
    parameter's pruned entries set to exactly +0.0: the survivors carry their values in
    ``weights`` bit for bit. ``model`` is untouched.

    Args:
        model: the architecture.
        masks: 0/1 mask per parameter name (shaped like the parameter).
        weights: a full state_dict, e.g. ``InitialWeights.state_dict`` or a checkpoint.
    """
    rewound = with_weights(model, weights)
    params = dict(rewound.named_parameters())
    for name, mask in masks.items():
        param = params[name]
        keep = mask.to(param.device) != 0
        param.copy_(torch.where(keep, param, torch.zeros((), dtype=param.dtype)))
    return rewound


def capture_checkpoint(
    model: nn.Module,
    init: InitialWeights | Mapping[str, torch.Tensor],
    fit: ImageDataset,
    steps: int,
    recipe: Recipe | None = None,
    *,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """The weights after ``steps`` optimizer steps of dense training from ``init``: a rewind
    point for ``rewind_to`` (Frankle et al. 2020 rewind to early training, not to init).

    Trains with ``fine_tune`` and no masks, ``recipe`` at its peak learning rate (schedule
    ``"constant"``, warm-up kept): the first steps of a long run, where a cosine schedule has
    barely moved.

    Args:
        model: the architecture (untouched).
        init: the initial weights.
        fit: the fit split.
        steps: optimizer steps (>= 1).
        recipe: batch size, optimizer, lr, seed; None = ``Recipe()``.
        device: where to train.

    Returns:
        A state_dict on the CPU.
    """
    state = init.state_dict if isinstance(init, InitialWeights) else init
    recipe = replace(recipe or Recipe(), steps=steps, schedule="constant")
    return fine_tune(with_weights(model, state), {}, fit, recipe, device=device).state_dict


# --- training runs as plain data ------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainingCurve:
    """One training run, as plain data for a chart.

    Attributes:
        label: e.g. ``"dense"``, ``"ticket"``, ``"random re-init"``, ``"snip"``.
        accuracy: eval accuracy at the end of training (None without an eval set).
        eval_history: (optimizer step, eval accuracy) pairs; reporting only.
        losses: the training loss of each step, nats.
        steps: optimizer steps done.
        steps_per_epoch: steps in one pass over the fit data.
        seen_indices: int64, sorted: every fit index a batch drew.
        stopped: the run was stopped early.
    """

    label: str
    accuracy: float | None
    eval_history: list[tuple[int, float]]
    losses: list[float]
    steps: int
    steps_per_epoch: int
    seen_indices: torch.Tensor
    stopped: bool = False

    @property
    def best(self) -> tuple[int, float] | None:
        """(step, accuracy) of the highest eval accuracy (the earliest of ties), or None."""
        if not self.eval_history:
            return None
        return max(self.eval_history, key=lambda item: (item[1], -item[0]))

    @property
    def first_epoch_accuracy(self) -> float | None:
        """The first eval accuracy measured at or after one epoch of steps (None if none)."""
        after = [acc for step, acc in self.eval_history if step >= self.steps_per_epoch]
        return after[0] if after else None

    def summary(self) -> dict[str, Any]:
        """Plain numbers (no tensors): label, accuracy, best step and accuracy, first epoch."""
        best = self.best
        return {
            "label": self.label,
            "accuracy": self.accuracy,
            "best_step": best[0] if best else None,
            "best_accuracy": best[1] if best else None,
            "first_epoch_accuracy": self.first_epoch_accuracy,
            "steps": self.steps,
            "stopped": self.stopped,
        }


def _train(
    label: str,
    start: nn.Module,
    masks: Mapping[str, torch.Tensor],
    fit: ImageDataset,
    recipe: Recipe,
    eval_set: ImageDataset | None,
    eval_every: int | None,
    relay: Callable[[TrainingProgress], None] | None,
    stop: StopFlag | None,
    device: torch.device | str | None,
) -> tuple[TrainingCurve, TrainingResult]:
    """``fine_tune`` from ``start`` with ``masks`` held; the curve and the raw result."""
    measure = None if eval_set is None else (lambda m: evaluate(m, eval_set).accuracy)
    result = fine_tune(
        start,
        masks,
        fit,
        recipe,
        progress=relay,
        progress_every=10,
        stop=stop,
        evaluate=measure,
        eval_every=eval_every,
        device=device,
    )
    history = list(result.eval_history)
    accuracy = None
    if eval_set is not None:
        if history and history[-1][0] == result.steps:
            accuracy = history[-1][1]
        else:  # stopped between two measurements
            accuracy = evaluate(result.load_into(start), eval_set).accuracy
    curve = TrainingCurve(
        label,
        accuracy,
        history,
        list(result.history),
        result.steps,
        steps_per_epoch(len(fit), recipe.batch_size),
        result.seen_indices,
        result.stopped,
    )
    return curve, result


def _weight_counts(pruner: Pruner, masks: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(pruned, total) entries of the prunable layers' weights under ``masks``."""
    total = sum(layer.weight_numel for layer in pruner.structure.layers)
    pruned = 0
    for layer in pruner.structure.layers:
        mask = masks.get(f"{layer.name}.weight")
        if mask is not None:
            pruned += int((mask == 0).sum())
    return pruned, total


# --- SNIP -----------------------------------------------------------------------------------------


def snip_scores(
    model: nn.Module,
    fit: ImageDataset,
    *,
    batch_size: int = 128,
    batches: int = 1,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Connection sensitivity ``|dL/dw * w|`` of every prunable layer's weight (Lee et al.
    2019), at ``model``'s current weights (give it the *initial* ones).

    L is the mean cross-entropy over a fixed random batch of ``batch_size * batches`` fit
    images (``calibration_batch(fit, ..., seed)``), cut into ``batches`` mini-batches whose
    gradients are averaged (the paper uses one mini-batch: the default). The gradient is taken
    on a private copy in training mode (batch statistics for BatchNorm, as in the first step of
    training); ``model`` is untouched and gets no gradient.

    Args:
        model: the network at its initial weights.
        fit: the fit split (any other split is a ValueError).
        batch_size: images per mini-batch (default 128).
        batches: mini-batches averaged (default 1).
        seed: which images (``calibration_batch``'s seed).
        device: where to compute; None = the model's device.

    Returns:
        Scores per parameter name ``"<layer>.weight"``, shaped like the weight, on the CPU.
    """
    if fit.split != "fit":
        raise ValueError(f"SNIP scores use the fit split only, got the {fit.split!r} split")
    if batch_size < 1 or batches < 1:
        raise ValueError(f"batch_size and batches must be >= 1, got {batch_size}, {batches}")
    private = copy_model(model)
    layers = prunable_layers(private, fit.input_shape)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    private.to(device).train()
    params = dict(private.named_parameters())
    names = [f"{layer.name}.weight" for layer in layers]
    data = calibration_batch(fit, batch_size * batches, seed)
    grads = {name: torch.zeros_like(params[name]) for name in names}
    chunks = torch.arange(len(data)).split(batch_size)
    with torch.enable_grad():
        for chunk in chunks:
            images, labels = data.images[chunk].to(device), data.labels[chunk].to(device)
            loss = F.cross_entropy(private(images), labels)
            parts = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            for name, grad in zip(names, parts, strict=True):
                if grad is not None:
                    grads[name] += grad
    return {name: (grads[name] / len(chunks) * params[name].detach()).abs().cpu() for name in names}


def global_top_masks(
    scores: Mapping[str, torch.Tensor], sparsity: float
) -> dict[str, torch.Tensor]:
    """0/1 masks keeping the highest scores over all ``scores`` together.

    ``round(sparsity x N)`` of the N entries are pruned (the engine's rounding): the lowest,
    ties broken by position (a stable sort over the parameters in order).

    Args:
        scores: per parameter name, scores (any shape); higher = keep.
        sparsity: fraction to prune, in [0, 1].
    """
    sparsity = check_amount(sparsity, "sparsity")
    flat = torch.cat([s.detach().flatten().float().cpu() for s in scores.values()])
    pruned = round(sparsity * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:pruned]] = False
    masks, start = {}, 0
    for name, value in scores.items():
        masks[name] = keep[start : start + value.numel()].reshape(value.shape).float()
        start += value.numel()
    return masks


@dataclass(frozen=True, eq=False)
class SnipResult:
    """A SNIP run: the mask found at init and the sparse network trained from init.

    Attributes:
        sparsity: the pruned fraction of the prunable layers' weights.
        masks: 0/1 mask per ``"<layer>.weight"``.
        scores: the connection sensitivities the masks came from.
        curve: the training run of the sparse network.
        state_dict: its trained weights (CPU); pruned weights exactly zero.
        init: where the initial weights came from (``InitialWeights.description``).
    """

    sparsity: float
    masks: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]
    curve: TrainingCurve
    state_dict: dict[str, torch.Tensor]
    init: str


def snip(
    source: Workbench | Pruner,
    sparsity: float,
    recipe: Recipe | None = None,
    *,
    fit: ImageDataset | None = None,
    init: InitialWeights | None = None,
    init_seed: int = 0,
    batch_size: int = 128,
    batches: int = 1,
    eval_set: ImageDataset | None = None,
    eval_every: int | None = None,
    progress: Progress | None = None,
    stop: StopFlag | None = None,
    device: torch.device | str | None = None,
) -> SnipResult:
    """SNIP: score connections at init, keep the global top ``1 - sparsity`` of the prunable
    layers' weights, train the sparse network from init with the mask held.

    Args:
        source: a ``Workbench`` (model, fit and eval splits, ``init.pt`` for bundled models) or
            a ``Pruner`` (then give ``fit``; the init is fresh).
        sparsity: fraction of the prunable layers' weights to prune, in [0, 1].
        recipe: the training recipe; None = ``Recipe()`` (one epoch).
        fit: the fit split; None = the workbench's.
        init: the initial weights; None = ``initial_weights(source, seed=init_seed)``.
        init_seed: seed of a fresh initialisation.
        batch_size, batches: the scoring batch (see ``snip_scores``).
        eval_set: data to report accuracy on; None = the workbench's eval split.
        eval_every: optimizer steps between eval measurements; None = once per epoch.
        progress: called with ``StepProgress`` (stage 1: scoring, stage 2: training).
        stop: ends the training early.
        device: where to train.
    """
    pruner = source_pruner(source)
    fit = source_fit(source, fit)
    eval_set = source_eval_set(source, eval_set)
    init = _init_of(source, init, init_seed)
    recipe = recipe or Recipe()
    report = _reporter(progress, 2)
    report(1, "score", f"Scoring connections |dL/dw x w| at the initial weights ({init.origin}).")
    at_init = with_weights(pruner.model, init.state_dict)
    scores = snip_scores(at_init, fit, batch_size=batch_size, batches=batches, device=device)
    masks = global_top_masks(scores, sparsity)
    pruned, total = _weight_counts(pruner, masks)
    message = f"Training the SNIP network ({100 * pruned / total:.1f}% pruned) from init"
    curve, result = _train(
        "snip",
        rewind(pruner.model, masks, init.state_dict),
        masks,
        fit,
        recipe,
        eval_set,
        eval_every,
        _relay(report, 2, "train", message),
        stop,
        device,
    )
    report(2, "done", f"Done: SNIP at {100 * pruned / total:.1f}%.")
    return SnipResult(pruned / total, masks, scores, curve, result.state_dict, init.description)


# --- lottery tickets ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TicketRound:
    """One round of a lottery-ticket experiment.

    Attributes:
        round: 0 = the dense network trained from the rewind point; k = after k prunings.
        pruned: pruned entries of the prunable layers' weights.
        total: entries of the prunable layers' weights.
        ticket: the winning-ticket run: the mask with the rewound initial weights.
        random: the baseline run: the same mask, a fresh random init (None in round 0, or when
            the baseline was not asked for).
    """

    round: int
    pruned: int
    total: int
    ticket: TrainingCurve
    random: TrainingCurve | None = None

    @property
    def remaining(self) -> float:
        """Fraction of the prunable weights left, in [0, 1]."""
        return 1 - self.pruned / self.total if self.total else 1.0

    @property
    def weights_remaining(self) -> int:
        return self.total - self.pruned

    def row(self) -> dict[str, Any]:
        """Plain numbers of the round, for a table or a chart."""
        ticket, random = self.ticket.summary(), self.random.summary() if self.random else {}
        return {
            "round": self.round,
            "sparsity": 1 - self.remaining,
            "remaining": self.remaining,
            "weights_remaining": self.weights_remaining,
            **{f"ticket_{k}": v for k, v in ticket.items() if k != "label"},
            **{f"random_{k}": v for k, v in random.items() if k != "label"},
        }


@dataclass(frozen=True, eq=False)
class TicketResult:
    """A lottery-ticket experiment: its rounds as plain data, the last ticket's weights.

    Attributes:
        rounds: round 0 (dense; omitted by ``lottery_ticket``), then one per pruning.
        masks: the last round's masks.
        state_dict: the last ticket's trained weights (CPU).
        init: where the initial weights came from (one sentence).
        rewind_to: ``"init"`` or ``"checkpoint"``.
        stopped: the run was stopped early.
        seconds: wall-clock time.
    """

    rounds: list[TicketRound]
    masks: dict[str, torch.Tensor]
    state_dict: dict[str, torch.Tensor]
    init: str
    rewind_to: str
    stopped: bool
    seconds: float

    def rows(self) -> list[dict[str, Any]]:
        """One record per round (``TicketRound.row``)."""
        return [r.row() for r in self.rounds]

    def curves(self) -> list[dict[str, Any]]:
        """Every eval measurement as a record (round, run, remaining, step, accuracy), for a
        "learns faster" chart."""
        records = []
        for r in self.rounds:
            for curve in (r.ticket, r.random):
                if curve is None:
                    continue
                for step, accuracy in curve.eval_history:
                    records.append(
                        {
                            "round": r.round,
                            "run": curve.label,
                            "remaining": r.remaining,
                            "step": step,
                            "accuracy": accuracy,
                        }
                    )
        return records


def _reporter(progress: Progress | None, stages: int) -> Callable[..., None]:
    def report(stage: int, phase: str, message: str, training: Any = None) -> None:
        if progress is not None:
            progress(StepProgress(stage, stages, phase, message, training))

    return report


def _relay(
    report: Callable[..., None], stage: int, phase: str, message: str
) -> Callable[[TrainingProgress], None]:
    def relay(update: TrainingProgress) -> None:
        report(
            stage,
            phase,
            f"{message}: step {update.step}/{update.total_steps}, loss {update.loss:.3f}.",
            update,
        )

    return relay


def _rewind_point(
    init: InitialWeights, rewind_to: str | Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(rewind_to, str):
        if rewind_to != "init":
            raise ValueError(
                f"rewind_to must be 'init' or a checkpoint state_dict (capture_checkpoint), "
                f"got {rewind_to!r}"
            )
        return init.state_dict, "init"
    return dict(rewind_to), "checkpoint"


def _random_init(pruner: Pruner, init: InitialWeights, reinit_seed: int) -> dict[str, torch.Tensor]:
    """A fresh init with ``reinit_seed``; a ValueError if it reproduces ``init`` (a bundled
    ``init.pt`` was drawn the same way, with seed 0)."""
    fresh = fresh_initialization(pruner.model, reinit_seed).state_dict
    if all(torch.equal(fresh[k], v) for k, v in init.state_dict.items() if k in fresh):
        raise ValueError(
            f"a fresh init with seed {reinit_seed} reproduces the initial weights: the random "
            "re-init baseline would be the ticket itself; choose another reinit_seed"
        )
    return fresh


def _ticket_round(
    index: int,
    pruner: Pruner,
    masks: Mapping[str, torch.Tensor],
    start: Mapping[str, torch.Tensor],
    random_start: Mapping[str, torch.Tensor] | None,
    fit: ImageDataset,
    recipe: Recipe,
    eval_set: ImageDataset | None,
    eval_every: int | None,
    report: Callable[..., None],
    stage: int,
    stop: StopFlag | None,
    device: torch.device | str | None,
) -> tuple[TicketRound, TrainingResult]:
    """Train the rewound ticket, then (optionally) the random re-init with the same mask."""
    pruned, total = _weight_counts(pruner, masks)
    left = f"{100 * (1 - pruned / total):.1f}% of weights left"
    report(
        stage,
        "ticket",
        f"Round {index}: {left}; the survivors are rewound to their initial values.",
    )
    ticket, result = _train(
        "ticket",
        rewind(pruner.model, masks, start),
        masks,
        fit,
        recipe,
        eval_set,
        eval_every,
        _relay(report, stage, "ticket", f"Round {index}: training the ticket ({left})"),
        stop,
        device,
    )
    random = None
    if random_start is not None and not result.stopped:
        report(
            stage + 1,
            "random",
            f"Round {index}: the same mask with a fresh random init, trained the same way.",
        )
        random, _ = _train(
            "random re-init",
            rewind(pruner.model, masks, random_start),
            masks,
            fit,
            recipe,
            eval_set,
            eval_every,
            _relay(report, stage + 1, "random", f"Round {index}: training the random re-init"),
            stop,
            device,
        )
    return TicketRound(index, pruned, total, ticket, random), result


def lottery_ticket(
    source: Workbench | Pruner,
    masks: Mapping[str, torch.Tensor] | MaskSet | PruningPlan,
    recipe: Recipe | None = None,
    *,
    fit: ImageDataset | None = None,
    init: InitialWeights | None = None,
    init_seed: int = 0,
    rewind_to: str | Mapping[str, torch.Tensor] = "init",
    random_baseline: bool = True,
    reinit_seed: int = 1,
    eval_set: ImageDataset | None = None,
    eval_every: int | None = None,
    progress: Progress | None = None,
    stop: StopFlag | None = None,
    device: torch.device | str | None = None,
) -> TicketResult:
    """One-shot lottery ticket: a mask of the trained model, the survivors rewound, retrained.

    Args:
        source: a ``Workbench`` or a ``Pruner`` (then give ``fit``).
        masks: 0/1 masks per parameter name (or a ``MaskSet``), or a plan resolved on the
            source's (trained) model, e.g. ``PruningPlan(amount=0.8)`` = global magnitude at
            80%.
        recipe: the training recipe (ticket and baseline alike); None = ``Recipe()``.
        fit: the fit split; None = the workbench's.
        init: the initial weights; None = ``initial_weights(source, seed=init_seed)``. For a
            meaningful ticket they must be the init the trained weights grew from (a bundled
            model's ``init.pt``); use ``iterative_ticket`` otherwise.
        init_seed: seed of a fresh initialisation.
        rewind_to: ``"init"`` or a state_dict from ``capture_checkpoint``.
        random_baseline: also train the same mask from a fresh random init.
        reinit_seed: seed of that random init; one that reproduces ``init`` (the init's own
            seed; 0 for the bundled models) is a ValueError.
        eval_set: data to report accuracy on; None = the workbench's eval split.
        eval_every: optimizer steps between eval measurements; None = once per epoch.
        progress: called with ``StepProgress`` (stage 1: ticket, 2: random re-init).
        stop: ends the run early.
        device: where to train.
    """
    start_time = time.perf_counter()
    pruner = source_pruner(source)
    fit = source_fit(source, fit)
    eval_set = source_eval_set(source, eval_set)
    init = _init_of(source, init, init_seed)
    recipe = recipe or Recipe()
    start, kind = _rewind_point(init, rewind_to)
    if isinstance(masks, PruningPlan):
        masks = pruner.resolve(masks).masks
    elif isinstance(masks, MaskSet):
        masks = masks.masks
    random_start = _random_init(pruner, init, reinit_seed) if random_baseline else None
    report = _reporter(progress, 2 if random_baseline else 1)
    ticket_round, result = _ticket_round(
        1,
        pruner,
        masks,
        start,
        random_start,
        fit,
        recipe,
        eval_set,
        eval_every,
        report,
        1,
        stop,
        device,
    )
    report(2 if random_baseline else 1, "done", "Done.")
    return TicketResult(
        [ticket_round],
        dict(masks),
        result.state_dict,
        init.description,
        kind,
        result.stopped,
        time.perf_counter() - start_time,
    )


def iterative_ticket(
    source: Workbench | Pruner,
    rounds: int = 5,
    prune_fraction_per_round: float = 0.2,
    recipe: Recipe | None = None,
    *,
    fit: ImageDataset | None = None,
    init: InitialWeights | None = None,
    init_seed: int = 0,
    rewind_to: str | Mapping[str, torch.Tensor] = "init",
    random_baseline: bool = True,
    reinit_seed: int = 1,
    eval_set: ImageDataset | None = None,
    eval_every: int | None = None,
    progress: Progress | None = None,
    stop: StopFlag | None = None,
    device: torch.device | str | None = None,
) -> TicketResult:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019).

    Round 0 trains the dense network from the rewind point with ``recipe`` (the reference
    accuracy, and the weights the first mask comes from: a fresh init has no trained weights of
    its own). Round k = 1 .. ``rounds`` prunes ``prune_fraction_per_round`` of the survivors by
    global magnitude of the weights retrained in round k-1 (the engine's unstructured global
    plan at amount ``1 - (1 - p)^k``, its masks intersected with the previous ones, so
    ``round((1 - (1 - p)^k) x N)`` weights are pruned), rewinds the survivors, and retrains
    them with the mask held; the random re-init baseline trains the same mask from a fresh init.

    Args:
        source: a ``Workbench`` or a ``Pruner`` (then give ``fit``).
        rounds: pruning rounds (>= 1).
        prune_fraction_per_round: p, the share of the remaining weights pruned each round,
            in (0, 1) (Frankle & Carbin: 0.2 for fully connected layers).
        recipe: the training recipe of every run; None = ``Recipe()`` (one epoch).
        fit, init, init_seed, rewind_to, random_baseline, reinit_seed, eval_set, eval_every,
        progress, stop, device: as for ``lottery_ticket``; ``progress`` counts training runs
        as stages.
    """
    start_time = time.perf_counter()
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds must be a whole number >= 1, got {rounds!r}")
    p = check_amount(prune_fraction_per_round, "prune fraction per round")
    if not 0 < p < 1:
        raise ValueError(f"the prune fraction per round must be in (0, 1), got {p:g}")
    pruner = source_pruner(source)
    fit = source_fit(source, fit)
    eval_set = source_eval_set(source, eval_set)
    init = _init_of(source, init, init_seed)
    recipe = recipe or Recipe()
    start, kind = _rewind_point(init, rewind_to)
    random_start = _random_init(pruner, init, reinit_seed) if random_baseline else None
    per_round = 2 if random_baseline else 1
    report = _reporter(progress, 1 + rounds * per_round)
    total_weights = _weight_counts(pruner, {})[1]

    # round 0: the dense network from the rewind point
    dense, result = _train(
        "dense",
        with_weights(pruner.model, start),
        {},
        fit,
        recipe,
        eval_set,
        eval_every,
        _relay(report, 1, "dense", "Round 0: training the dense network from init"),
        stop,
        device,
    )
    history = [TicketRound(0, 0, total_weights, dense)]
    masks: MaskSet | None = None
    stopped = result.stopped
    for index in range(1, rounds + 1):
        if stopped:
            break
        # prune p of the survivors: global magnitude on the weights retrained last round
        trained = with_weights(pruner.model, result.state_dict)
        plan = PruningPlan(
            method="unstructured",
            criterion="magnitude",
            scope="global",
            amount=1 - (1 - p) ** index,
        )
        masks = grow_masks(Pruner(trained, pruner.structure.input_shape), plan, masks)
        ticket_round, result = _ticket_round(
            index,
            pruner,
            masks.masks,
            start,
            random_start,
            fit,
            recipe,
            eval_set,
            eval_every,
            report,
            2 + (index - 1) * per_round,
            stop,
            device,
        )
        history.append(ticket_round)
        stopped = result.stopped or (
            ticket_round.random is not None and ticket_round.random.stopped
        )
    report(1 + rounds * per_round, "done", "Stopped." if stopped else "Done.")
    return TicketResult(
        history,
        dict(masks.masks) if masks is not None else {},
        result.state_dict,
        init.description,
        kind,
        stopped,
        time.perf_counter() - start_time,
    )


__all__ = [
    "INIT_ORIGINS",
    "InitialWeights",
    "SnipResult",
    "TicketResult",
    "TicketRound",
    "TrainingCurve",
    "capture_checkpoint",
    "fresh_initialization",
    "global_top_masks",
    "initial_weights",
    "iterative_ticket",
    "lottery_ticket",
    "rewind",
    "snip",
    "snip_scores",
]
