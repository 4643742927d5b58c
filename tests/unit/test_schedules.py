"""Sparsity schedules and gradual pruning: exact targets, masks that only grow, scores on the
fine-tuned weights, fit-only training, an untouched dense model."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch

from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.recovery import schedules
from explorer.recovery.schedules import (
    SPARSITY_SCHEDULES,
    GradualJob,
    ProgressJob,
    gradual_prune,
    grow_masks,
    one_shot_vs_gradual,
    sparsity_targets,
    with_weights,
)
from explorer.recovery.training import Recipe, TrainingResult
from explorer.zoo.mnist import ImageDataset
from explorer.zoo.models import load_model
from tests.unit.conftest import INPUT_SHAPE, assert_unchanged, require_trained, snapshot

#: Two optimizer steps of 32 images: enough to move the weights, fast on a busy CPU.
TINY = Recipe(steps=2, batch_size=32, optimizer="adam", lr=1e-3)


@pytest.fixture(scope="module")
def lenet300() -> torch.nn.Module:
    require_trained("lenet300")
    return load_model("lenet300")


@pytest.fixture(scope="module")
def fit_small(fit_set: ImageDataset) -> ImageDataset:
    return fit_set.subset(range(256))


@pytest.fixture(scope="module")
def eval_small(eval_set: ImageDataset) -> ImageDataset:
    return eval_set.subset(range(200))


def _pruned(masks: dict[str, torch.Tensor]) -> int:
    return sum(int((m == 0).sum()) for m in masks.values())


# --- schedules ------------------------------------------------------------------------------------


def test_agp_is_zhu_and_gupta_cubic_and_ends_exactly_at_the_target():
    initial, final, n = 0.1, 0.9, 7
    targets = sparsity_targets(initial, final, n, "agp")
    expected = [final + (initial - final) * (1 - t / n) ** 3 for t in range(1, n + 1)]
    assert targets == pytest.approx(expected, abs=1e-15)
    assert targets[-1] == final  # exactly, not approximately
    assert all(a <= b for a, b in itertools.pairwise(targets))
    # the cubic cuts most early: the first step prunes more than a linear one
    assert targets[0] - initial > (final - initial) / n


def test_every_schedule_ends_exactly_at_final_even_where_floats_would_not():
    # 0.1 + (0.7 - 0.1) * 3 / 3 is 0.7000000000000001 in floating point
    for name in SPARSITY_SCHEDULES:
        targets = sparsity_targets(0.1, 0.7, 3, name)
        assert targets[-1] == 0.7, name
        assert len(targets) == 3
    assert sparsity_targets(0.0, 0.8, 4, "linear")[:3] == pytest.approx([0.2, 0.4, 0.6])
    assert sparsity_targets(0.0, 0.8, 3, "one-shot") == [0.8, 0.8, 0.8]


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match="agp"):
        sparsity_targets(0.0, 0.5, 3, "exponential")
    with pytest.raises(ValueError, match="only removes"):
        sparsity_targets(0.6, 0.5, 3)
    with pytest.raises(ValueError, match="steps"):
        sparsity_targets(0.0, 0.5, 0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        sparsity_targets(0.0, 1.5, 3)


# --- masks that only grow -------------------------------------------------------------------------


def test_grow_masks_never_revives_a_pruned_weight(lenet300):
    pruner = Pruner(lenet300, INPUT_SHAPE)
    first = grow_masks(pruner, PruningPlan(criterion="random", amount=0.5, seed=0))
    # another seed ranks the weights differently: only the intersection keeps the old zeros
    second = grow_masks(pruner, PruningPlan(criterion="random", amount=0.6, seed=1), first)
    fresh = pruner.resolve(PruningPlan(criterion="random", amount=0.6, seed=1))
    for name, mask in second.masks.items():
        assert torch.equal(mask, fresh.masks[name] * first.masks[name])
    assert second.pruned == _pruned(second.masks)
    assert second.pruned > _pruned(fresh.masks)  # the intersection pruned more than asked
    assert second.sparsity == pytest.approx(second.pruned / 266_200)


def test_grow_masks_is_the_plain_state_when_rankings_nest(lenet300):
    pruner = Pruner(lenet300, INPUT_SHAPE)
    first = grow_masks(pruner, PruningPlan(amount=0.5))
    second = grow_masks(pruner, PruningPlan(amount=0.8), first)
    state = pruner.resolve(PruningPlan(amount=0.8))
    assert second.pruned == sum(state.pruned.values()) == round(0.8 * 266_200)
    for name, mask in state.masks.items():
        assert torch.equal(second.masks[name], mask)


# --- gradual pruning ------------------------------------------------------------------------------


def test_agp_reaches_its_target_exactly_in_the_masks(lenet300, fit_small, eval_small):
    pruner = Pruner(lenet300, INPUT_SHAPE)
    final = 0.9
    before = snapshot(lenet300)
    result = gradual_prune(
        pruner, PruningPlan(amount=0.3), final, 3, TINY, fit=fit_small, eval_set=eval_small
    )
    assert_unchanged(lenet300, before)  # the dense model is only read
    targets = sparsity_targets(0.0, final, 3)
    assert [p.target for p in result.points] == [0.0, *targets]
    # every step's pruned count is the engine's rounding of its target ...
    for point in result.points[1:]:
        assert point.actual * 266_200 == round(point.target * 266_200)
    # ... and the final masks prune what the pruner's own one-shot state at that amount prunes
    one_shot = pruner.resolve(PruningPlan(amount=final))
    assert _pruned(result.masks) == sum(one_shot.pruned.values())
    assert result.final.target == final
    assert result.final.actual == round(final * 266_200) / 266_200
    # the fine-tuned weights keep every pruned weight at exactly zero
    for name, mask in result.masks.items():
        assert bool((result.state_dict[name][mask == 0] == 0).all())
    assert [p.train_steps for p in result.points] == [0, 2, 4, 6]
    assert len(result.losses) == 6
    assert all(0.0 <= p.accuracy <= 1.0 for p in result.points)


def test_masks_come_from_the_fine_tuned_weights_not_the_dense_ones(
    lenet300, fit_small, monkeypatch
):
    """A fake fine-tune inverts the survivors' magnitudes: step 2 must prune the survivors
    that were *largest* in the dense model, as the fine-tuned weights say."""
    calls = []

    def inverted(model, masks, fit, recipe, **_):
        calls.append(masks)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for name, mask in masks.items():
            w = state[name]
            state[name] = torch.where(mask != 0, 1.0 / (w.abs() + 1e-3), torch.zeros(()))
        return TrainingResult(state, [0.0], 1, 1, False, 0.0, recipe, torch.arange(4))

    monkeypatch.setattr(schedules, "fine_tune", inverted)
    pruner = Pruner(lenet300, INPUT_SHAPE)
    result = gradual_prune(pruner, PruningPlan(), 0.8, 2, TINY, fit=fit_small, schedule="linear")
    # the oracle: step 2 of 0.4 -> 0.8, resolved on the model holding step 1's "fine-tuned" weights
    after_step_1 = with_weights(lenet300, inverted(lenet300, calls[0], None, TINY).state_dict)
    expected = Pruner(after_step_1, INPUT_SHAPE).resolve(PruningPlan(amount=0.8))
    dense = pruner.resolve(PruningPlan(amount=0.8))
    for name, mask in result.masks.items():
        assert torch.equal(mask, expected.masks[name])
    assert any(not torch.equal(result.masks[n], dense.masks[n]) for n in result.masks)
    assert torch.equal(calls[1]["fc1.weight"], result.masks["fc1.weight"])


def test_training_sees_only_the_fit_split(lenet300, fit_small, eval_small, monkeypatch):
    seen_data = []
    real = schedules.fine_tune

    def spy(model, masks, fit, recipe, **options):
        seen_data.append(fit)
        return real(model, masks, fit, recipe, **options)

    monkeypatch.setattr(schedules, "fine_tune", spy)
    result = gradual_prune(
        Pruner(lenet300, INPUT_SHAPE),
        PruningPlan(),
        0.5,
        2,
        TINY,
        fit=fit_small,
        eval_set=eval_small,
    )
    assert len(seen_data) == 2
    assert all(data is fit_small and data.split == "fit" for data in seen_data)
    assert len(result.seen_indices) > 0
    assert int(result.seen_indices.max()) < len(fit_small)
    with pytest.raises(ValueError, match="fit split"):
        gradual_prune(Pruner(lenet300, INPUT_SHAPE), PruningPlan(), 0.5, 1, TINY, fit=eval_small)


def test_overrides_are_scaled_to_their_own_amount_and_dense_layers_stay_dense(lenet300, fit_small):
    plan = PruningPlan(amount=0.8, unit_amounts=(("fc1", 0.6),), dense_units=("fc3",))
    result = gradual_prune(Pruner(lenet300, INPUT_SHAPE), plan, None, 3, TINY, fit=fit_small)
    fc1 = result.masks["fc1.weight"]
    assert int((fc1 == 0).sum()) == round(0.6 * fc1.numel())
    assert "fc3.weight" not in result.masks
    assert dict(result.plan.unit_amounts) == {"fc1": 0.6}
    fc2 = result.masks["fc2.weight"]
    assert int((fc2 == 0).sum()) == round(0.8 * fc2.numel())  # the only global participant


def test_one_shot_vs_gradual_share_target_and_budget(lenet300, fit_small, eval_small):
    pruner = Pruner(lenet300, INPUT_SHAPE)
    comparison = one_shot_vs_gradual(
        pruner, PruningPlan(), 0.9, 2, TINY, fit=fit_small, eval_set=eval_small
    )
    one, grad = comparison.one_shot, comparison.gradual
    assert [p.target for p in one.points[1:]] == [0.9, 0.9]
    assert grad.points[1].target < 0.9 == grad.points[2].target
    assert one.final.actual == grad.final.actual
    assert one.final.train_steps == grad.final.train_steps == 4
    assert _pruned(one.masks) == _pruned(grad.masks) == round(0.9 * 266_200)
    rows = comparison.rows()
    assert {row["run"] for row in rows} == {"one-shot", "agp"}
    assert len(rows) == 6
    assert set(rows[0]) >= {"step", "target", "actual", "train_steps", "accuracy"}


def test_nm_plans_are_refused(lenet300, fit_small):
    with pytest.raises(ValueError, match="no amount"):
        gradual_prune(
            Pruner(lenet300, INPUT_SHAPE), PruningPlan(method="nm"), 0.5, 2, TINY, fit=fit_small
        )


def test_stop_ends_the_run_with_what_it_has_and_progress_teaches(lenet300, fit_small):
    stop = threading.Event()
    updates = []

    def progress(update):
        updates.append(update)
        if update.phase == "fine-tune":
            stop.set()

    result = gradual_prune(
        Pruner(lenet300, INPUT_SHAPE),
        PruningPlan(),
        0.9,
        3,
        Recipe(steps=30, batch_size=32),
        fit=fit_small,
        progress=progress,
        stop=stop,
    )
    assert result.stopped
    assert len(result.points) == 2  # dense + the interrupted first step
    assert result.final.train_steps < 30
    assert updates[0].phase == "prune" and "dense weights" in updates[0].message
    assert updates[-1].phase == "done" and updates[-1].fraction == 1.0
    for name, mask in result.masks.items():  # what it has is still masked
        assert bool((result.state_dict[name][mask == 0] == 0).all())


def test_second_step_scores_the_fine_tuned_weights_says_progress(lenet300, fit_small):
    messages = []
    gradual_prune(
        Pruner(lenet300, INPUT_SHAPE),
        PruningPlan(),
        0.5,
        2,
        TINY,
        fit=fit_small,
        progress=lambda u: messages.append((u.phase, u.stage, u.message, u.fraction)),
    )
    prune_2 = next(m for phase, stage, m, _ in messages if phase == "prune" and stage == 2)
    assert "fine-tuned after step 1" in prune_2 and "stay pruned" in prune_2
    fractions = [f for *_, f in messages]
    assert fractions == sorted(fractions)


def test_gradual_job_runs_in_the_background(lenet300, fit_small):
    job = GradualJob(
        Pruner(lenet300, INPUT_SHAPE),
        PruningPlan(),
        final_amount=0.5,
        steps=2,
        recipe_per_step=TINY,
        fit=fit_small,
    )
    assert not job.started
    job.start()
    assert job.join(timeout=60)
    assert job.error is None and job.result is not None
    assert job.result.final.target == 0.5
    assert job.progress is not None and job.progress.phase == "done"
    with pytest.raises(RuntimeError, match="started already"):
        job.start()


def test_a_failing_job_keeps_its_error():
    def broken(progress, stop):
        raise ValueError("the plan is wrong")

    job = ProgressJob(broken).start()
    assert job.join(timeout=10)
    assert job.result is None
    assert job.error == "the plan is wrong"
    assert isinstance(job.exception, ValueError)


def test_progress_carries_the_trajectories_so_far(lenet300, fit_small, eval_small):
    pruner = Pruner(lenet300, INPUT_SHAPE)
    seen = []
    comparison = one_shot_vs_gradual(
        pruner,
        PruningPlan(),
        0.9,
        2,
        TINY,
        fit=fit_small,
        eval_set=eval_small,
        progress=seen.append,
    )
    last = seen[-1].runs
    # the last report holds both finished runs, point for point, one-shot first
    assert [label for label, _ in last] == ["One-shot", "Gradual"]
    assert list(last[0][1]) == comparison.one_shot.points
    assert list(last[1][1]) == comparison.gradual.points
    # and the trajectory grew while it ran: never fewer points than the report before
    lengths = [sum(len(points) for _, points in p.runs) for p in seen]
    assert lengths == sorted(lengths) and lengths[0] <= 1
