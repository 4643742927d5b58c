"""Fine-tuning a pruned model with its masks held: recovery without reviving zeros.

The loop trains a *copy* of the dense model, pruned by a ``PrunedState``'s masks, on the **fit**
split only, and keeps every pruned weight at exactly zero:

1. before the first step each masked parameter is multiplied by its mask;
2. after ``backward`` each masked parameter's gradient is multiplied by its mask;
3. after ``optimizer.step()`` each masked parameter is multiplied by its mask again: weight decay,
   momentum and Adam's moments could otherwise move a zero (belt and braces: with the masked
   gradient they stay zero in exact arithmetic for SGD, Adam and AdamW, but that is a property
   of today's optimizers, not something to rely on).

Masks are precomputed as (parameter, mask) pairs on the parameter's device (``HeldMasks``) and
applied with ``torch._foreach_mul_``, so holding them costs two fused multiplies per step; the
optimizers run fused (``make_optimizer``: the for-loop Adam is slow on the exact zeros of pruned
weights). With no masks the same function is the plain training loop (the benchmark compares
the two).

**BatchNorm.** The default ``bn="train"`` trains BatchNorm layers as usual: batch statistics
normalise, and the running statistics are re-estimated over the fit data. That is the point of
recovery for a BN network: pruning shifts every downstream activation distribution, so the
dense model's running statistics are stale (resnet_mini at 30% filters falls to chance mostly
for that reason) and re-estimating them is most of the recovery. It is also safe for
structured plans: a removed channel's BatchNorm weight and bias are masked too (``filters`` /
``channels`` masks include them), so the channel's output is ``0 * x_hat + 0 = 0`` whatever its
running statistics, and the masks keep weight and bias at zero. ``bn="freeze"`` keeps the
BatchNorm layers in eval mode instead (running statistics fixed, affine parameters still
trained under their masks): for tiny batches, where batch statistics are noise.

**Distillation.** With ``recipe.distill`` the dense model (a copy, in eval mode) is the teacher:
``loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student
/ T))``. With ``alpha = 0`` the teacher is not run at all and the loss *is* the cross-entropy, so
the run equals plain fine-tuning bit for bit.

**The eval split is never seen.** ``fine_tune`` refuses a dataset whose split is not ``"fit"``
and records which of its indices it drew (``TrainingResult.seen_indices``). An eval accuracy
during training comes only from a caller's ``evaluate`` function: the loop hands it the model,
never eval data.

**Threads.** ``TrainingJob`` runs the loop in a background thread (the app polls it): each job
trains its own deep copies, keeps its latest progress under a lock, and captures an exception
as a message. ``torch.set_num_threads`` is process-wide and is left alone.

**Reproducibility.** Batches are drawn from a private generator seeded by ``recipe.seed``, so two
runs of one recipe on one machine give identical weights; a model with dropout draws its masks
from torch's global generator (the zoo models have none).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Generic, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.inspection import copy_model
from explorer.engine.outputs import logits_of
from explorer.engine.subject import Subject
from explorer.zoo.mnist import ImageDataset

log = logging.getLogger(__name__)

# --- registries -----------------------------------------------------------------------------------

#: Optimizers by name: (class, its fixed keyword arguments); lr and weight decay come from the
#: recipe. ``make_optimizer`` builds one.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {}),
}


def make_optimizer(
    name: str, params: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The optimizer ``name`` (see ``OPTIMIZERS``) over ``params``, fused where torch can.

    A fused optimizer is one kernel per step, and it matters for pruned models: the for-loop
    Adam takes ``sqrt`` of the second moment, which for a pruned weight is exactly zero, and
    on x86 CPUs torch's ``sqrt`` of exact zeros is about 9x slower than of any other number
    (a 70% pruned MLP's Adam step took 2-3x as long). Where torch has no fused kernel for the
    parameters (a device or dtype it does not support), the plain implementation runs.
    """
    _choice(OPTIMIZERS, name, "optimizer")
    cls, fixed = OPTIMIZERS[name]
    kwargs = {"lr": lr, "weight_decay": weight_decay, **fixed}
    if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return cls(params, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # no fused kernel for these parameters
            pass
    return cls(params, **kwargs)


#: Learning-rate schedules by name: fraction of the post-warm-up steps done, in [0, 1) ->
#: factor of the base lr.
SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda done: 1.0,
    "cosine": lambda done: 0.5 * (1.0 + math.cos(math.pi * done)),
    "step": lambda done: 0.1 ** (int(done >= 0.5) + int(done >= 0.75)),
}

#: What BatchNorm layers do while fine-tuning (see the module docstring).
BN_MODES = {
    "train": "batch statistics; running statistics re-estimated over the fit data",
    "freeze": "eval mode: running statistics fixed; weight and bias still trained",
}


def _choice(registry: Mapping[str, Any], name: str, what: str) -> None:
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}")


# --- the recipe -----------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Recipe:
    """How to fine-tune, as plain data (JSON, session state, a variant's record).

    Attributes:
        epochs: passes over the fit data (>= 1); ignored when ``steps`` is set.
        steps: optimizer steps in all (>= 1), drawing batches epoch after epoch; None = epochs.
        batch_size: images per step (>= 1). An epoch is ``len(fit) // batch_size`` steps (the
            last partial batch is left out; a dataset smaller than one batch is one step).
        optimizer: a name in ``OPTIMIZERS``: ``"sgd"`` (momentum 0.9, Nesterov), ``"adam"``,
            ``"adamw"``.
        lr: peak learning rate (> 0).
        weight_decay: L2 (sgd, adam) or decoupled (adamw) weight decay (>= 0).
        schedule: a name in ``SCHEDULES``: ``"constant"``, ``"cosine"`` (to 0 at the end),
            ``"step"`` (x0.1 at 50% and again at 75% of the steps).
        warmup: fraction of the steps (in [0, 1)) over which the lr rises linearly to ``lr``.
        seed: seed of the batch order.
        distill: learn from the dense model's outputs too (knowledge distillation).
        temperature: softmax temperature T of distillation (> 0).
        alpha: weight of the distillation term, in [0, 1] (0 = plain cross-entropy).
        bn: a name in ``BN_MODES``: ``"train"`` or ``"freeze"``.
    """

    epochs: int = 1
    steps: int | None = None
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: float = 0.0
    seed: int = 0
    distill: bool = False
    temperature: float = 4.0
    alpha: float = 0.5
    bn: str = "train"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not _is_whole(value) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.steps is not None and (not _is_whole(self.steps) or self.steps < 1):
            raise ValueError(f"steps must be a whole number >= 1 (or None), got {self.steps!r}")
        if not _is_whole(self.seed):
            raise ValueError(f"seed must be a whole number, got {self.seed!r}")
        for name, check, want in (
            ("lr", lambda v: v > 0, "> 0"),
            ("weight_decay", lambda v: v >= 0, ">= 0"),
            ("temperature", lambda v: v > 0, "> 0"),
            ("warmup", lambda v: 0 <= v < 1, "in [0, 1) (a fraction of the steps)"),
            ("alpha", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or not check(value):
                raise ValueError(f"{name} must be {want}, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.distill, bool):
            raise ValueError(f"distill must be true or false, got {self.distill!r}")
        _choice(OPTIMIZERS, self.optimizer, "optimizer")
        _choice(SCHEDULES, self.schedule, "schedule")
        _choice(BN_MODES, self.bn, "bn mode")

    @property
    def distills(self) -> bool:
        """Whether the teacher runs: distillation asked for with a weight above zero."""
        return self.distill and self.alpha > 0

    def total_steps(self, samples: int) -> int:
        """Optimizer steps of this recipe over ``samples`` fit images."""
        return (
            self.steps
            if self.steps is not None
            else self.epochs * steps_per_epoch(samples, self.batch_size)
        )

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of step ``step`` (0-based) of ``total``: warm-up, then schedule."""
        warm = round(self.warmup * total)
        if step < warm:
            return self.lr * (step + 1) / warm
        done = (step - warm) / max(1, total - warm)
        return self.lr * SCHEDULES[self.schedule](done)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """A recipe from ``to_dict`` output; every key optional; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a recipe must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown recipe field(s) {unknown}; a recipe has {sorted(known)}")
        return cls(**dict(data))


def steps_per_epoch(samples: int, batch_size: int) -> int:
    """Full batches in one pass over ``samples`` images (1 when there are fewer)."""
    return max(1, samples // batch_size)


#: Defaults per family of architecture, and why:
#:
#: - ``conv``: SGD with Nesterov momentum, lr 0.01, cosine: the usual fine-tuning recipe of the
#:   pruning literature for CNNs (Li et al. 2017, Torch-Pruning's examples); 0.01 is a tenth
#:   of a typical from-scratch lr, large enough to re-estimate BatchNorm and re-route around
#:   removed filters in one epoch, small enough not to undo the trained weights;
#: - ``mlp``: Adam, lr 1e-3, cosine: insensitive to the scale of fully connected layers, and
#:   a trained MLP recovers from magnitude pruning within one epoch with it;
#: - ``transformer``: AdamW, lr 5e-4, weight decay 0.05, cosine with 10% warm-up: transformers
#:   train poorly with SGD; warm-up lets Adam's moment estimates settle before full steps, and
#:   decoupled decay is how the zoo's ViT was trained (card: AdamW, wd 0.05).
FAMILY_RECIPES: dict[str, Recipe] = {
    "conv": Recipe(optimizer="sgd", lr=0.01, weight_decay=5e-4, schedule="cosine"),
    "mlp": Recipe(optimizer="adam", lr=1e-3, schedule="cosine"),
    "transformer": Recipe(
        optimizer="adamw", lr=5e-4, weight_decay=0.05, schedule="cosine", warmup=0.1
    ),
}


def model_family(model: nn.Module) -> str:
    """``"transformer"`` (attention or LayerNorm), ``"conv"`` (any convolution) or ``"mlp"``."""
    modules = list(model.modules())
    if any(
        isinstance(m, nn.LayerNorm | nn.MultiheadAttention) or hasattr(m, "num_heads")
        for m in modules
    ):
        return "transformer"
    if any(isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) for m in modules):
        return "conv"
    return "mlp"


def default_recipe(subject_or_model_name: Subject | str, model: nn.Module | None = None) -> Recipe:
    """A sane recipe for ``model`` (one epoch, batch 128; see ``FAMILY_RECIPES`` for why).

    Args:
        subject_or_model_name: the subject, or a model-source text such as ``"lenet5"``.
        model: the architecture; None builds a bundled model from the zoo to look at it.
    """
    if model is None:
        subject = Subject.of(subject_or_model_name)
        if subject.model.kind != "zoo":
            raise ValueError(
                f"give the model of {subject.label} to choose its recipe (only a bundled "
                "model can be looked up by name)"
            )
        from explorer.zoo.models import get_spec

        model = get_spec(subject.model.ref).build()
    return FAMILY_RECIPES[model_family(model)]


# --- progress and results -------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingProgress:
    """Where a run stands, after a step.

    Attributes:
        step: steps done (1-based: 1 after the first step).
        total_steps: steps the run will take.
        epoch: the epoch that step belongs to (1-based).
        loss: the training loss of that step (its batch), nats.
        lr: the learning rate that step used.
        elapsed_s: seconds since the run started.
        eta_s: seconds left, estimated from the mean step time so far.
        eval_accuracy: the latest accuracy the caller's ``evaluate`` returned, if any.
    """

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    elapsed_s: float
    eta_s: float
    eval_accuracy: float | None = None

    @property
    def fraction(self) -> float:
        """Share of the run done, in [0, 1]."""
        return self.step / self.total_steps if self.total_steps else 1.0


@dataclass(frozen=True, eq=False)
class TrainingResult:
    """What a fine-tuning run produced.

    Attributes:
        state_dict: the fine-tuned model's state_dict (parameters and buffers), on the CPU;
            every pruned weight is exactly zero. Keys are the trained module's own.
        history: training loss of each step, nats, in order.
        steps: steps done (fewer than ``total_steps`` when stopped).
        total_steps: steps the recipe asked for.
        stopped: the run was stopped early; the weights so far are still valid and masked.
        seconds: wall-clock time of the run.
        recipe: the recipe.
        seen_indices: int64, sorted: every index of the fit dataset a batch drew.
        eval_history: (step, accuracy) of each call of the caller's ``evaluate``.
        device: where it trained, e.g. ``"cpu"`` or ``"cuda:0"``.
    """

    state_dict: dict[str, torch.Tensor]
    history: list[float]
    steps: int
    total_steps: int
    stopped: bool
    seconds: float
    recipe: Recipe
    seen_indices: torch.Tensor
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    device: str = "cpu"

    def load_into(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` (the same architecture) with these weights, in eval mode."""
        trained = copy_model(model)
        trained.load_state_dict(self.state_dict)
        return trained.eval()

    def summary(self) -> dict[str, Any]:
        """Plain data about the run (no tensors)."""
        return {
            "steps": self.steps,
            "total_steps": self.total_steps,
            "stopped": self.stopped,
            "seconds": self.seconds,
            "final_loss": self.history[-1] if self.history else None,
            "recipe": self.recipe.to_dict(),
            "device": self.device,
        }


class StopFlag(Protocol):
    """What ``stop`` may be: a ``threading.Event`` or anything with ``is_set()``."""

    def is_set(self) -> bool: ...


#: The caller's eval function: the model (eval mode, on the training device) -> accuracy.
Evaluate = Callable[[nn.Module], float]

# --- the loss -------------------------------------------------------------------------------------


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher/T) ||
    softmax(student/T))`` (Hinton et al. 2015), averaged over the batch.

    Args:
        student: logits (N, classes) of the model being trained.
        teacher: logits (N, classes) of the teacher; unused (may be None) when ``alpha`` is 0.
        labels: int64 (N,).
        temperature: T (> 0); T^2 keeps the soft term's gradients on the scale of the hard one.
        alpha: weight of the soft term, in [0, 1]; 0 returns exactly the cross-entropy.
    """
    hard = F.cross_entropy(student, labels)
    if alpha == 0:
        return hard
    if teacher is None:
        raise ValueError("distillation with alpha > 0 needs the teacher's logits")
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * hard + alpha * temperature**2 * soft


# --- checks ---------------------------------------------------------------------------------------


def check_fit(dataset: ImageDataset) -> None:
    """A ValueError unless ``dataset`` is a non-empty fit split (training never sees eval)."""
    if dataset.split != "fit":
        raise ValueError(
            f"fine-tuning uses only the fit split, got the {dataset.split!r} split: the "
            "held-out eval data must never be trained on"
        )
    if len(dataset) == 0:
        raise ValueError("the fit dataset is empty: there is nothing to fine-tune on")


class HeldMasks:
    """The masks of one model, ready to hold: (parameter, mask) pairs, precomputed once, with the
    mask on the parameter's device and dtype; each hold is one fused multiply (``_foreach_mul_``).

    Args:
        model: the model being trained (its parameters are held in place).
        masks: 0/1 mask per parameter name, each of its parameter's shape; a ValueError names
            one that does not fit.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        self.params: list[nn.Parameter] = []
        self.masks: list[torch.Tensor] = []
        for name, mask in masks.items():
            if name not in params:
                raise ValueError(f"a mask names {name!r}, which is no parameter of this model")
            param = params[name]
            if tuple(mask.shape) != tuple(param.shape):
                raise ValueError(
                    f"the mask of {name} has shape {tuple(mask.shape)}, the parameter "
                    f"{tuple(param.shape)}"
                )
            self.params.append(param)
            self.masks.append(mask.detach().to(device=param.device, dtype=param.dtype))

    def __len__(self) -> int:
        return len(self.params)

    @torch.no_grad()
    def hold_parameters(self) -> None:
        """``param *= mask`` for every masked parameter: pruned weights back to exactly zero."""
        if self.params:
            torch._foreach_mul_(self.params, self.masks)

    def hold_gradients(self) -> None:
        """``param.grad *= mask`` for every masked parameter that has a gradient."""
        live = [
            (p.grad, m) for p, m in zip(self.params, self.masks, strict=True) if p.grad is not None
        ]
        if live:
            torch._foreach_mul_([g for g, _ in live], [m for _, m in live])


def _set_train_mode(model: nn.Module, bn: str) -> None:
    model.train()
    if bn == "freeze":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _default_device() -> torch.device:
    from explorer.engine.workbench import default_device

    return default_device()


# --- the loop -------------------------------------------------------------------------------------


def batches(fit: ImageDataset, recipe: Recipe) -> Iterator[torch.Tensor]:
    """The fit indices (int64, (batch,)) of each step of ``recipe``, in the loop's order:
    a fresh permutation per epoch from a generator seeded by ``recipe.seed``."""
    generator = torch.Generator().manual_seed(recipe.seed)
    samples = len(fit)
    per_epoch = steps_per_epoch(samples, recipe.batch_size)
    size = min(recipe.batch_size, samples)
    total, step = recipe.total_steps(samples), 0
    while step < total:
        order = torch.randperm(samples, generator=generator)
        for batch in range(per_epoch):
            if step >= total:
                return
            yield order[batch * size : (batch + 1) * size]
            step += 1


def fine_tune(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    fit: ImageDataset,
    recipe: Recipe | None = None,
    *,
    progress: Callable[[TrainingProgress], None] | None = None,
    progress_every: int = 1,
    stop: StopFlag | None = None,
    evaluate: Evaluate | None = None,
    eval_every: int | None = None,
    device: torch.device | str | None = None,
) -> TrainingResult:
    """Fine-tune a pruned copy of ``model`` on ``fit`` with the masks held (see the module
    docstring). ``model`` is only read (deep-copied, also as the distillation teacher).

    Args:
        model: the dense model.
        masks: 0/1 mask per masked parameter name (``PrunedState.masks``); empty = plain
            training of the whole model.
        fit: the fit split (``split == "fit"``; anything else is a ValueError).
        recipe: how to train; None = ``Recipe()``.
        progress: called with a ``TrainingProgress`` every ``progress_every`` steps and after
            the last one, on the training thread.
        progress_every: steps between progress calls (>= 1).
        stop: checked before every step; once set, the run ends cleanly (``stopped``).
        evaluate: the caller's eval function, model (eval mode) -> accuracy; it must not change
            the model. Called every ``eval_every`` steps and after the last step.
        eval_every: steps between ``evaluate`` calls; None = once per epoch.
        device: where to train; None = CUDA when present, else the CPU.
    """
    recipe = recipe or Recipe()
    check_fit(fit)
    student = copy_model(model)
    teacher = copy_model(model) if recipe.distills else None
    return _train(
        student,
        teacher,
        masks,
        fit,
        recipe,
        progress=progress,
        progress_every=progress_every,
        stop=stop,
        evaluate=evaluate,
        eval_every=eval_every,
        device=device,
    )


def _train(
    student: nn.Module,
    teacher: nn.Module | None,
    masks: Mapping[str, torch.Tensor],
    fit: ImageDataset,
    recipe: Recipe,
    *,
    progress: Callable[[TrainingProgress], None] | None,
    progress_every: int,
    stop: StopFlag | None,
    evaluate: Evaluate | None,
    eval_every: int | None,
    device: torch.device | str | None,
) -> TrainingResult:
    """The loop, on copies the caller owns (``student`` is trained in place)."""
    check_fit(fit)
    if not _is_whole(progress_every) or progress_every < 1:
        raise ValueError(f"progress_every must be a whole number >= 1, got {progress_every!r}")
    device = torch.device(device) if device is not None else _default_device()
    samples = len(fit)
    per_epoch = steps_per_epoch(samples, recipe.batch_size)
    total = recipe.total_steps(samples)
    if eval_every is None:
        eval_every = per_epoch
    if not _is_whole(eval_every) or eval_every < 1:
        raise ValueError(f"eval_every must be a whole number >= 1, got {eval_every!r}")

    # 1. the student: on the device, pruned; the teacher: frozen, eval mode
    student.to(device)
    held = HeldMasks(student, masks)
    held.hold_parameters()
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    trainable = [p for p in student.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    optimizer = make_optimizer(recipe.optimizer, trainable, recipe.lr, recipe.weight_decay)
    _set_train_mode(student, recipe.bn)

    seen = torch.zeros(samples, dtype=torch.bool)
    history: list[float] = []
    eval_history: list[tuple[int, float]] = []
    accuracy: float | None = None
    step, stopped = 0, False
    start = time.perf_counter()
    for index in batches(fit, recipe):
        if stop is not None and stop.is_set():
            stopped = True
            break
        # 2. a batch of the fit split
        seen[index] = True
        images = fit.images[index].to(device, non_blocking=True)
        labels = fit.labels[index].to(device, non_blocking=True)
        lr = recipe.lr_at(step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # 3. forward, loss (with the teacher's soft targets when distilling), backward
        try:
            logits = logits_of(student(images))  # a model may add aux outputs in training
        except RuntimeError as err:
            if step:
                raise
            # Evaluation ran, so this is a training-only part of the model (Inception's aux
            # classifier needs about 299 px): say so instead of a bare shape error.
            lines = str(err).strip().splitlines()
            raise ValueError(
                "the model fails in training mode on these images although it evaluates them "
                f"({lines[0][:200] if lines else type(err).__name__}): a training-only part "
                "(e.g. an auxiliary classifier) needs larger inputs; build it without it (e.g. "
                'model arguments {"aux_logits": false}) or use a larger image size'
            ) from None
        soft = None
        if teacher is not None:
            with torch.no_grad():
                soft = logits_of(teacher(images))
        loss = distillation_loss(
            logits, soft, labels, recipe.temperature, recipe.alpha if soft is not None else 0
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # 4. hold the masks: no gradient into a pruned weight, and no step revives one
        held.hold_gradients()
        optimizer.step()
        held.hold_parameters()
        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ValueError(
                f"the training loss became {value} at step {step}: lower the learning "
                f"rate (lr {recipe.lr:g})"
            )
        history.append(value)
        if evaluate is not None and (step % eval_every == 0 or step == total):
            accuracy = _call_evaluate(evaluate, student, recipe.bn)
            eval_history.append((step, accuracy))
        if progress is not None and (step % progress_every == 0 or step == total):
            elapsed = time.perf_counter() - start
            progress(
                TrainingProgress(
                    step=step,
                    total_steps=total,
                    epoch=(step - 1) // per_epoch + 1,
                    loss=value,
                    lr=lr,
                    elapsed_s=elapsed,
                    eta_s=elapsed / step * (total - step),
                    eval_accuracy=accuracy,
                )
            )
    student.eval()
    state = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}
    return TrainingResult(
        state_dict=state,
        history=history,
        steps=step,
        total_steps=total,
        stopped=stopped,
        seconds=time.perf_counter() - start,
        recipe=recipe,
        seen_indices=torch.nonzero(seen).flatten(),
        eval_history=eval_history,
        device=str(device),
    )


def _call_evaluate(evaluate: Evaluate, model: nn.Module, bn: str) -> float:
    model.eval()
    try:
        with torch.no_grad():  # not inference_mode: the callback may copy the model
            return float(evaluate(model))
    finally:
        _set_train_mode(model, bn)


# --- a run in the background ----------------------------------------------------------------------


def error_message(err: BaseException) -> str:
    """One line for people: a ValueError's own message (a check of the input), else the
    exception's type and the first line of its message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if isinstance(err, ValueError) and first:
        return first
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


T = TypeVar("T")


class BackgroundJob(Generic[T]):
    """A ``run(progress=..., stop=...)`` in a daemon thread, polled by the app (or anyone).

    ``start()`` returns at once; ``progress`` is the latest value the run reported, ``result``
    its return value once ``done``; an exception in the thread becomes ``error`` (one line) and
    ``exception``, never lost. ``stop()`` sets the event the run checks.

    Args:
        run: called as ``run(progress=callback, stop=event)`` on the thread.
        name: the thread's name.
    """

    def __init__(self, run: Callable[..., T], name: str = "background job") -> None:
        self._run_fn = run
        self._name = name
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False
        self._progress: Any = None
        self._result: T | None = None
        self._exception: BaseException | None = None

    def start(self) -> BackgroundJob[T]:
        """Start the run in a daemon thread; a job runs once."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this job was started already; make a new one")
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the run to end at its next step (what it has so far becomes the result)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: until done); returns ``done``."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.done

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def done(self) -> bool:
        """The run has ended: with a result, stopped, or with an error."""
        with self._lock:
            return self._finished

    @property
    def running(self) -> bool:
        return self.started and not self.done

    @property
    def progress(self) -> Any:
        """The latest progress the run reported (None before the first)."""
        with self._lock:
            return self._progress

    @property
    def result(self) -> T | None:
        with self._lock:
            return self._result

    @property
    def exception(self) -> BaseException | None:
        with self._lock:
            return self._exception

    @property
    def error(self) -> str | None:
        """What went wrong in the thread, one line; None while running or after success."""
        with self._lock:
            return None if self._exception is None else error_message(self._exception)

    def _record(self, update: Any) -> None:
        with self._lock:
            self._progress = update

    def _run(self) -> None:
        result, failure = None, None
        try:
            result = self._run_fn(progress=self._record, stop=self._stop)
        except Exception as err:  # kept for the poller; nothing may die silently in a thread
            log.warning("%s failed", self._name, exc_info=True)
            failure = err
        finally:
            with self._lock:
                self._result, self._exception, self._finished = result, failure, True


class TrainingJob(BackgroundJob[TrainingResult]):
    """``fine_tune`` in a background thread (``BackgroundJob``); ``history`` is the loss of
    every step so far.

    The dense model is deep-copied here, on the caller's thread, so it may be used (never
    changed) by others while the job runs.

    Args: as for ``fine_tune``.
    """

    def __init__(
        self,
        model: nn.Module,
        masks: Mapping[str, torch.Tensor],
        fit: ImageDataset,
        recipe: Recipe | None = None,
        *,
        evaluate: Evaluate | None = None,
        eval_every: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        check_fit(fit)
        super().__init__(self._fine_tune, name="fine-tune")
        self.recipe = recipe or Recipe()
        self.fit = fit
        self._masks = dict(masks)
        self._student: nn.Module | None = copy_model(model)
        self._teacher = copy_model(model) if self.recipe.distills else None
        self._evaluate = evaluate
        self._eval_every = eval_every
        self._device = device
        self._history: list[float] = []

    @property
    def history(self) -> list[float]:
        """The loss of every step so far (a copy)."""
        with self._lock:
            return list(self._history)

    def _record(self, update: TrainingProgress) -> None:
        with self._lock:
            self._progress = update
            self._history.append(update.loss)

    def _fine_tune(
        self, progress: Callable[[TrainingProgress], None], stop: StopFlag
    ) -> TrainingResult:
        try:
            assert self._student is not None
            return _train(
                self._student,
                self._teacher,
                self._masks,
                self.fit,
                self.recipe,
                progress=progress,
                progress_every=1,
                stop=stop,
                evaluate=self._evaluate,
                eval_every=self._eval_every,
                device=self._device,
            )
        finally:
            self._student = self._teacher = None  # the result holds the weights
