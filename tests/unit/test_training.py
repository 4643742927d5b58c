"""Fine-tuning with the masks held: no pruned weight revives, accuracy recovers, the eval split
is never seen, distillation at alpha 0 is plain fine-tuning, jobs run in the background."""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.evaluation import evaluate
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.recovery.training import (
    FAMILY_RECIPES,
    Recipe,
    TrainingJob,
    TrainingProgress,
    batches,
    default_recipe,
    distillation_loss,
    fine_tune,
    make_optimizer,
    model_family,
)
from explorer.zoo.mnist import ImageDataset
from explorer.zoo.models import get_spec, load_model
from tests.unit.conftest import INPUT_SHAPE, assert_unchanged, require_trained, snapshot

#: Plans of every kind of mask: unstructured, structured channels (with BatchNorm), N:M, heads.
MASK_CASES = {
    "lenet5 magnitude 70%": ("lenet5", PruningPlan(amount=0.7)),
    "resnet_mini filters 30%": (
        "resnet_mini",
        PruningPlan(method="filters", scope="layer", amount=0.3),
    ),
    "resnet_mini channels 50%": ("resnet_mini", PruningPlan(method="channels", amount=0.5)),
    "lenet300 2:4": ("lenet300", PruningPlan(method="nm", amount=1.0)),
    "vit_tiny heads 50%": ("vit_tiny", PruningPlan(method="heads", scope="layer", amount=0.5)),
}


def pruned_setup(name: str, plan: PruningPlan, calibration: ImageDataset):
    require_trained(name)
    model = load_model(name)
    state = Pruner(model, INPUT_SHAPE, calibration).resolve(plan)
    return model, state


def short(recipe: Recipe, steps: int = 4, batch_size: int = 32) -> Recipe:
    return replace(recipe, steps=steps, batch_size=batch_size)


def assert_masks_held(state_dict: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        pruned = state_dict[name][mask == 0]
        assert pruned.numel() > 0 or bool(mask.all())
        assert bool((pruned == 0).all()), (
            f"{name}: {int((pruned != 0).sum())} pruned weights revived"
        )


# --- the recipe -----------------------------------------------------------------------------------


def test_recipe_round_trips_through_plain_data():
    recipe = Recipe(epochs=3, optimizer="adamw", lr=2e-3, schedule="step", distill=True, alpha=0.3)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe.from_dict({}) == Recipe()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lr": -1}, "lr must be > 0, got -1"),
        ({"lr": float("nan")}, "lr must be > 0"),
        ({"epochs": 0}, "epochs must be a whole number >= 1, got 0"),
        ({"epochs": True}, "epochs must be a whole number >= 1, got True"),
        ({"steps": -5}, "steps must be a whole number >= 1"),
        ({"batch_size": 2.5}, "batch_size must be a whole number >= 1"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
        ({"alpha": 1.5}, "alpha must be in [0, 1], got 1.5"),
        ({"temperature": 0}, "temperature must be > 0, got 0"),
        ({"warmup": 1}, "warmup must be in [0, 1)"),
        (
            {"optimizer": "lbfgs"},
            "unknown optimizer 'lbfgs'; choose one of ['adam', 'adamw', 'sgd']",
        ),
        ({"schedule": "linear"}, "unknown schedule 'linear'; choose one of"),
        ({"bn": "off"}, "unknown bn mode 'off'; choose one of ['freeze', 'train']"),
        ({"distill": "yes"}, "distill must be true or false"),
        ({"learning_rate": 0.1}, "unknown recipe field(s) ['learning_rate']"),
    ],
)
def test_recipe_says_what_is_wrong(data, message):
    with pytest.raises(ValueError) as err:
        Recipe.from_dict(data)
    assert message in str(err.value)


def test_learning_rate_schedules_against_their_formulas():
    total = 100
    cosine = Recipe(lr=0.1, schedule="cosine")
    assert cosine.lr_at(0, total) == pytest.approx(0.1)
    assert cosine.lr_at(50, total) == pytest.approx(0.05)
    assert cosine.lr_at(99, total) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.99)))
    step = Recipe(lr=0.1, schedule="step")
    assert [step.lr_at(s, total) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    assert {Recipe(lr=0.1, schedule="constant").lr_at(s, total) for s in range(total)} == {0.1}
    warm = Recipe(lr=0.1, schedule="constant", warmup=0.1)  # 10 steps rising linearly
    assert [warm.lr_at(s, total) for s in range(10)] == pytest.approx(
        [0.01 * (s + 1) for s in range(10)]
    )
    assert warm.lr_at(10, total) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("name", "family", "optimizer"),
    [
        ("lenet300", "mlp", "adam"),
        ("lenet5", "conv", "sgd"),
        ("resnet_mini", "conv", "sgd"),
        ("vit_tiny", "transformer", "adamw"),
    ],
)
def test_default_recipe_per_family(name, family, optimizer):
    model = get_spec(name).build()
    assert model_family(model) == family
    assert default_recipe(name, model) == default_recipe(name) == FAMILY_RECIPES[family]
    assert default_recipe(name).optimizer == optimizer


def test_default_recipe_of_a_file_model_needs_the_model():
    with pytest.raises(ValueError, match="give the model"):
        default_recipe("torchvision:resnet18")
    assert (
        default_recipe("torchvision:resnet18", nn.Sequential(nn.Conv2d(3, 4, 3))).optimizer == "sgd"
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_optimizers_are_fused_where_torch_can(name, kind):
    """Fused: the for-loop Adam is slow on the exact zeros of pruned weights (make_optimizer)."""
    cpu = make_optimizer(name, [nn.Parameter(torch.zeros(3))], 0.1, 0.01)
    assert isinstance(cpu, kind) and cpu.defaults["fused"] is True
    assert cpu.defaults["lr"] == 0.1 and cpu.defaults["weight_decay"] == 0.01
    if name == "sgd":
        assert cpu.defaults["momentum"] == 0.9 and cpu.defaults["nesterov"] is True
    elsewhere = make_optimizer(name, [nn.Parameter(torch.zeros(3, device="meta"))], 0.1, 0.0)
    assert not elsewhere.defaults.get("fused")  # no fused kernel there: the plain one
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop", [nn.Parameter(torch.zeros(3))], 0.1, 0.0)


# --- the loss -------------------------------------------------------------------------------------


def test_distillation_loss_against_the_formula():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(8, 10, generator=generator, dtype=torch.float64)
    teacher = torch.randn(8, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (8,), generator=generator)
    t, alpha = 3.0, 0.4
    # by hand: KL(p || q) = sum p (log p - log q), averaged over the batch
    p = torch.softmax(teacher / t, dim=1)
    q = torch.softmax(student / t, dim=1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    ce = -torch.log_softmax(student, dim=1)[torch.arange(8), labels].mean()
    expected = (1 - alpha) * ce + alpha * t**2 * kl
    assert distillation_loss(student, teacher, labels, t, alpha).item() == pytest.approx(
        expected.item(), rel=1e-12
    )
    # alpha 0 is exactly the cross-entropy, whatever the teacher
    assert torch.equal(
        distillation_loss(student, None, labels, t, 0.0), F.cross_entropy(student, labels)
    )
    # a student equal to its teacher gets no gradient from the soft term (autograd as oracle)
    same = teacher.clone().requires_grad_(True)
    distillation_loss(same, teacher, labels, t, 1.0).backward()
    assert same.grad.abs().max().item() < 1e-12


# --- masks held -----------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("case", list(MASK_CASES))
def test_fine_tuning_never_revives_a_pruned_weight(case, optimizer, fit_set, calibration):
    name, plan = MASK_CASES[case]
    model, state = pruned_setup(name, plan, calibration)
    assert state.masks and any(bool((m == 0).any()) for m in state.masks.values())
    # weight decay and momentum are what would revive zeros: both on
    recipe = Recipe(steps=3, batch_size=32, optimizer=optimizer, lr=0.01, weight_decay=0.05)
    result = fine_tune(model, state.masks, fit_set.subset(range(512)), recipe)
    assert result.steps == 3 and not result.stopped
    assert_masks_held(result.state_dict, state.masks)
    # ...and it did train: the kept weights moved
    dense = model.state_dict()
    moved = [
        key
        for key in state.masks
        if not torch.equal(result.state_dict[key], dense[key] * state.masks[key])
    ]
    assert moved, "no masked parameter changed: nothing was trained"
    assert all(v.device.type == "cpu" for v in result.state_dict.values())


def test_structured_masks_keep_batchnorm_of_removed_channels_at_zero(fit_set, calibration):
    model, state = pruned_setup(*MASK_CASES["resnet_mini filters 30%"], calibration)
    bn = [key for key in state.masks if ".bn" in key or key.startswith("stem.bn")]
    assert {"stem.bn.weight", "stem.bn.bias"} <= set(bn)
    result = fine_tune(model, state.masks, fit_set.subset(range(256)), short(Recipe()))
    for key in bn:
        removed = state.masks[key] == 0
        assert removed.any()
        assert bool((result.state_dict[key][removed] == 0).all())
    # so a removed channel's output is zero after the BatchNorm, whatever its running stats
    tuned = result.load_into(model)
    outputs = {}
    tuned.stem.register_forward_hook(lambda module, args, out: outputs.update(stem=out))
    tuned(fit_set.images[:8])
    removed = state.masks["stem.bn.weight"] == 0
    assert bool((outputs["stem"][:, removed] == 0).all())


def test_without_the_masks_the_zeros_would_revive(fit_set, calibration):
    """The oracle is not vacuous: training the same pruned start with no masks moves zeros."""
    model, state = pruned_setup("lenet5", PruningPlan(amount=0.7), calibration)
    pruned = Pruner(model, INPUT_SHAPE).pruned_model(state)
    result = fine_tune(pruned, {}, fit_set.subset(range(256)), short(Recipe(weight_decay=0.05)))
    revived = sum(int((result.state_dict[k][m == 0] != 0).sum()) for k, m in state.masks.items())
    assert revived > 0


def test_empty_masks_train_every_parameter(fit_set):
    require_trained("lenet300")
    model = load_model("lenet300")
    result = fine_tune(
        model, {}, fit_set.subset(range(256)), short(Recipe(optimizer="adam", lr=1e-3))
    )
    for key, value in model.state_dict().items():
        assert not torch.equal(result.state_dict[key], value), f"{key} did not train"


def test_a_mask_that_does_not_fit_is_refused(fit_set):
    model = load_model("lenet300")
    with pytest.raises(ValueError, match="no parameter of this model"):
        fine_tune(model, {"nope.weight": torch.ones(3)}, fit_set, short(Recipe()))
    with pytest.raises(ValueError, match="has shape"):
        fine_tune(model, {"fc1.weight": torch.ones(3)}, fit_set, short(Recipe()))


# --- recovery -------------------------------------------------------------------------------------


def test_fine_tuning_recovers_resnet_mini_from_30_percent_filters(fit_set, eval_set, calibration):
    model, state = pruned_setup(*MASK_CASES["resnet_mini filters 30%"], calibration)
    held_out = eval_set.subset(range(1000))
    pruned = evaluate(Pruner(model, INPUT_SHAPE).pruned_model(state), held_out).accuracy
    assert pruned < 0.25  # precondition: the plan breaks the model (about chance, 10%)
    recipe = short(default_recipe("resnet_mini", model), steps=20, batch_size=32)
    result = fine_tune(model, state.masks, fit_set, recipe)
    recovered = evaluate(result.load_into(model), held_out).accuracy
    assert recovered > 0.8, f"pruned {pruned:.1%} -> fine-tuned {recovered:.1%}"


# --- the eval split is never seen -----------------------------------------------------------------


def test_the_eval_split_is_refused(eval_set):
    with pytest.raises(ValueError, match="only the fit split"):
        fine_tune(load_model("lenet300"), {}, eval_set, short(Recipe()))
    with pytest.raises(ValueError, match="only the fit split"):
        TrainingJob(load_model("lenet300"), {}, eval_set)


def _fingerprints(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images}


def test_training_sees_only_fit_images_and_records_their_indices(fit_set, eval_set, calibration):
    model, state = pruned_setup("lenet5", PruningPlan(amount=0.5), calibration)
    subset = fit_set.subset(range(300))
    trained_on: list[torch.Tensor] = []

    def record(module, args):
        if module.training:  # the caller's eval callback below runs in eval mode
            trained_on.append(args[0].detach().cpu().clone())

    handle = model.register_forward_pre_hook(record)  # deep-copied into the student
    try:
        recipe = Recipe(epochs=2, batch_size=64, distill=True, alpha=0.5)
        result = fine_tune(
            model,
            state.masks,
            subset,
            recipe,
            evaluate=lambda m: evaluate(m, eval_set.subset(range(200))).accuracy,
        )
    finally:
        handle.remove()
    seen = _fingerprints(torch.cat(trained_on))
    assert seen <= _fingerprints(subset.images)
    assert not seen & _fingerprints(eval_set.images)
    # the recorded indices: exactly the batches' (2 epochs of 4 full batches of 64 out of 300)
    expected = torch.cat(list(batches(subset, recipe))).unique()
    assert torch.equal(result.seen_indices, expected)
    assert int(result.seen_indices.max()) < len(subset)
    assert result.steps == 8 and len(result.eval_history) == 2


# --- distillation ---------------------------------------------------------------------------------


def test_distillation_with_alpha_zero_is_plain_fine_tuning_bit_for_bit(fit_set, calibration):
    model, state = pruned_setup("lenet5", PruningPlan(amount=0.8), calibration)
    data = fit_set.subset(range(512))
    base = short(Recipe(seed=3), steps=6)
    plain = fine_tune(model, state.masks, data, base)
    zero = fine_tune(model, state.masks, data, replace(base, distill=True, alpha=0.0))
    soft = fine_tune(model, state.masks, data, replace(base, distill=True, alpha=0.7))
    assert plain.history == zero.history
    for key, value in plain.state_dict.items():
        assert torch.equal(value, zero.state_dict[key]), key
    assert plain.history != soft.history
    assert any(not torch.equal(v, soft.state_dict[k]) for k, v in plain.state_dict.items())
    assert_masks_held(soft.state_dict, state.masks)


def test_the_dense_model_is_never_modified(fit_set, calibration):
    model, state = pruned_setup(
        "resnet_mini", PruningPlan(method="filters", amount=0.3), calibration
    )
    before = snapshot(model)
    recipe = short(Recipe(distill=True, alpha=0.5, weight_decay=0.01))
    fine_tune(model, state.masks, fit_set.subset(range(128)), recipe)
    TrainingJob(model, state.masks, fit_set.subset(range(128)), recipe).start().join()
    assert_unchanged(model, before)
    assert not model.training


# --- progress, stop, errors, threads --------------------------------------------------------------


def test_progress_reports_every_step(fit_set):
    model = load_model("lenet300")
    updates: list[TrainingProgress] = []
    recipe = Recipe(epochs=2, batch_size=100, optimizer="adam", lr=1e-3)
    result = fine_tune(
        model,
        {},
        fit_set.subset(range(250)),  # 2 full batches per epoch
        recipe,
        progress=updates.append,
        evaluate=lambda m: 0.5,
        eval_every=3,
    )
    assert [u.step for u in updates] == [1, 2, 3, 4]
    assert [u.epoch for u in updates] == [1, 1, 2, 2]
    assert {u.total_steps for u in updates} == {4}
    assert [u.lr for u in updates] == pytest.approx([recipe.lr_at(s, 4) for s in range(4)])
    assert [u.loss for u in updates] == result.history
    assert [u.eval_accuracy for u in updates] == [None, None, 0.5, 0.5]
    assert result.eval_history == [(3, 0.5), (4, 0.5)]
    assert updates[-1].eta_s == 0 and updates[-1].fraction == 1.0


class StopAfter:
    """A stop flag that turns on after ``steps`` checks (one check per step)."""

    def __init__(self, steps: int) -> None:
        self.checks, self.steps = 0, steps

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.steps


def test_stop_ends_the_run_at_the_next_step_with_masked_weights(fit_set, calibration):
    model, state = pruned_setup("lenet5", PruningPlan(amount=0.7), calibration)
    result = fine_tune(model, state.masks, fit_set, Recipe(epochs=3), stop=StopAfter(5))
    assert result.stopped and result.steps == 5 and len(result.history) == 5
    assert result.total_steps == 3 * (len(fit_set) // 128)
    assert_masks_held(result.state_dict, state.masks)


def test_a_job_runs_in_the_background_and_stops(fit_set, calibration):
    model, state = pruned_setup("lenet5", PruningPlan(amount=0.7), calibration)
    job = TrainingJob(model, state.masks, fit_set, Recipe(epochs=50, batch_size=16))
    assert not job.started and job.progress is None and job.result is None
    job.start()
    with pytest.raises(RuntimeError, match="started already"):
        job.start()
    deadline = threading.Event()
    while job.progress is None or job.progress.step < 2:
        deadline.wait(0.01)
    job.stop()
    assert job.join(timeout=60)
    result = job.result
    assert job.done and not job.running and job.error is None
    assert result is not None and result.stopped and 2 <= result.steps < result.total_steps
    assert job.history == result.history
    assert_masks_held(result.state_dict, state.masks)


def test_an_exception_in_the_job_thread_is_reported(fit_set):
    model = load_model("lenet300")

    def broken(m: nn.Module) -> float:
        raise RuntimeError("the eval callback broke\nsecond line")

    job = TrainingJob(
        model, {}, fit_set.subset(range(64)), short(Recipe()), evaluate=broken, eval_every=1
    )
    assert job.start().join(timeout=60)
    assert job.result is None
    assert job.error == "RuntimeError: the eval callback broke"
    assert isinstance(job.exception, RuntimeError)
    # a check of the input reads as its own message
    bad = TrainingJob(
        model, {"fc1.weight": torch.ones(2)}, fit_set.subset(range(64)), short(Recipe())
    )
    assert bad.start().join(timeout=60)
    assert bad.error is not None and bad.error.startswith("the mask of fc1.weight has shape")


def test_a_diverging_run_says_to_lower_the_learning_rate(fit_set):
    model = load_model("lenet300")
    with torch.no_grad():
        model.fc3.bias[0] = float("nan")
    with pytest.raises(ValueError, match="lower the learning rate"):
        fine_tune(model, {}, fit_set.subset(range(64)), short(Recipe()))


def test_two_jobs_at_once_do_not_interfere(fit_set, calibration):
    model, state = pruned_setup("lenet5", PruningPlan(amount=0.6), calibration)
    data = fit_set.subset(range(512))
    recipes = [
        short(Recipe(seed=1), steps=8),
        short(Recipe(seed=2, optimizer="adam", lr=1e-3), steps=8),
    ]
    jobs = [TrainingJob(model, state.masks, data, r).start() for r in recipes]
    assert all(job.join(timeout=120) for job in jobs)
    for job, recipe in zip(jobs, recipes, strict=True):
        alone = fine_tune(model, state.masks, data, recipe)
        assert job.error is None and job.result is not None
        assert job.result.history == alone.history
        for key, value in alone.state_dict.items():
            assert torch.equal(job.result.state_dict[key], value), key
