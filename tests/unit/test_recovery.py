"""The app's wiring of fine-tuning: the probe, the curve's steps, before / after numbers."""

from __future__ import annotations

import torch

from explorer.engine.evaluation import evaluate
from explorer.engine.plan import PruningPlan
from explorer.engine.workbench import open_workbench
from explorer.recovery.jobs import balanced_indices, finetune_job, finetune_outcome, masks_held
from explorer.recovery.training import Recipe


def test_balanced_indices_take_as_many_of_each_class():
    labels = torch.tensor([0] * 50 + [1] * 5 + [2] * 50)
    picked = balanced_indices(labels, 30)
    counts = torch.bincount(labels[picked], minlength=3).tolist()
    assert counts == [10, 5, 10]  # a rare class gives what it has
    assert picked.tolist() == sorted(set(picked.tolist()))


def test_a_job_records_its_probe_at_the_right_steps_and_its_outcome_is_measured_honestly():
    bench = open_workbench("lenet300")
    plan = PruningPlan(amount=0.9)
    recipe = Recipe(steps=20, batch_size=64, optimizer="adam", lr=1e-3)
    job, curve = finetune_job(bench, plan, recipe, probe_size=500)
    assert len(curve.probe) == 500
    job.start().join(120)
    assert job.error is None and job.result.steps == 20
    # eval every 20 // 8 = 2 steps, and once at the end: the loop's own record agrees
    assert curve.points == job.result.eval_history
    assert [step for step, _ in curve.points] == list(range(2, 21, 2))
    outcome = finetune_outcome(bench, plan, job.result)
    tuned = evaluate(job.result.load_into(bench.model), bench.eval_set)
    assert outcome.finetuned_accuracy == tuned.accuracy
    assert outcome.pruned_accuracy == bench.report(plan).accuracy
    assert outcome.revived == 0 and outcome.finetuned_accuracy > outcome.pruned_accuracy
    # the oracle of masks_held: a revived weight is counted
    state = dict(job.result.state_dict)
    mask = bench.resolve(plan).masks["fc1.weight"]
    broken = state["fc1.weight"].clone()
    broken[mask == 0] = 1.0
    assert masks_held({**state, "fc1.weight": broken}, {"fc1.weight": mask}) == int(
        (mask == 0).sum()
    )
