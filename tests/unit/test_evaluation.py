"""Evaluation: metrics by hand, and incremental re-evaluation bit-identical to a full pass."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from explorer.engine.evaluation import (
    IncrementalEvaluator,
    evaluate,
    metrics_from_logits,
    predict,
)
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.zoo.models import load_model
from tests.unit.conftest import INPUT_SHAPE, assert_unchanged, snapshot


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    return load_model("lenet300")


@pytest.fixture(scope="module")
def mlp_pruner(mlp) -> Pruner:
    return Pruner(mlp, INPUT_SHAPE)


def test_metrics_from_logits_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 4.0]])
    labels = torch.tensor([0, 2, 0, 2])
    result = metrics_from_logits(logits, labels, 3)
    assert result.predictions.tolist() == [0, 1, 0, 2]
    assert result.accuracy == 0.75
    expected_loss = 0.0
    for row, label in zip(logits.tolist(), labels.tolist(), strict=True):
        expected_loss -= row[label] - math.log(sum(math.exp(v) for v in row))
    assert result.loss == pytest.approx(expected_loss / 4, rel=1e-6)
    assert result.finite
    assert result.confusion.tolist() == [[2, 0, 0], [0, 0, 0], [0, 1, 1]]
    per_class = result.per_class_accuracy
    assert per_class[0] == 1.0 and per_class[2] == 0.5
    assert math.isnan(per_class[1])  # no sample of class 1


def test_non_finite_logits_are_flagged_and_give_a_nan_loss():
    logits = torch.tensor([[0.0, float("nan")], [1.0, 0.0]])
    result = metrics_from_logits(logits, torch.tensor([1, 0]), 2)
    assert not result.finite
    assert math.isnan(result.loss)


def test_per_class_accuracy_confusion_and_changed_by_hand(mlp, mlp_pruner, eval_set):
    dense = evaluate(mlp, eval_set)
    result = evaluate(mlp_pruner.pruned_model(PruningPlan(amount=0.95)), eval_set)
    preds, labels = result.predictions.tolist(), eval_set.labels.tolist()
    confusion = [[0] * 10 for _ in range(10)]
    for true, pred in zip(labels, preds, strict=True):
        confusion[true][pred] += 1
    assert result.confusion.tolist() == confusion
    assert result.accuracy == pytest.approx(sum(confusion[c][c] for c in range(10)) / len(labels))
    expected = [confusion[c][c] / sum(confusion[c]) for c in range(10)]
    assert result.per_class_accuracy.tolist() == pytest.approx(expected)
    changed = [
        i for i, (a, b) in enumerate(zip(preds, dense.predictions.tolist(), strict=True)) if a != b
    ]
    assert changed  # 95% sparsity changes something, so the check is not vacuous
    assert result.changed_vs(dense).tolist() == changed
    assert dense.changed_vs(dense).tolist() == []


def test_evaluate_is_predict_then_metrics(mlp, eval_set):
    result = evaluate(mlp, eval_set)
    logits = predict(mlp, eval_set.images)
    assert logits.shape == (len(eval_set), 10)
    assert torch.equal(result.predictions, logits.argmax(1))
    assert result.labels is eval_set.labels


def full_pass(pruner: Pruner, plan: PruningPlan, images: torch.Tensor, batch: int) -> torch.Tensor:
    return predict(pruner.pruned_model(plan), images, batch)


def test_incremental_evaluation_equals_full_passes_and_resumes_late(mlp, mlp_pruner, eval_set):
    before = snapshot(mlp)
    data = eval_set.subset(range(2500))
    evaluator = IncrementalEvaluator(mlp, data, batch_size=600)  # 4 chunks of 600 and one of 100
    stage = {name: i for i, name in enumerate(evaluator.stage_names)}
    assert list(stage) == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]
    assert torch.equal(evaluator.dense.logits, predict(mlp, data.images, 600))
    last_only = PruningPlan(scope="layer", unit_amounts=(("fc3", 0.6),))
    early = PruningPlan(scope="layer", unit_amounts=(("fc3", 0.6), ("fc1", 0.9)))
    last_again = PruningPlan(scope="layer", unit_amounts=(("fc3", 0.95), ("fc1", 0.9)))
    steps = [
        (last_only, stage["fc3"]),
        (early, stage["fc1"]),  # flatten has no parameters: its output is reused
        (last_again, stage["fc3"]),
        (last_again, stage["fc3"]),  # unchanged: only the last stage runs again
        (PruningPlan(), 6),  # back to dense: its logits are kept, no stage runs
        (PruningPlan(amount=0.8), stage["fc1"]),  # fc1's input is still the stored one
    ]
    accuracies = set()
    for plan, resumed in steps:
        outcome = evaluator.evaluate_state(mlp_pruner.resolve(plan))
        assert outcome.resumed_from == resumed, plan
        assert outcome.resumed_from > 0
        assert outcome.stages == 6
        expected = full_pass(mlp_pruner, plan, data.images, 600)
        assert torch.equal(outcome.logits, expected), plan
        correct = sum(
            int(p == y)
            for p, y in zip(expected.argmax(1).tolist(), data.labels.tolist(), strict=True)
        )
        assert outcome.result.accuracy == pytest.approx(correct / len(data), abs=1e-6)
        accuracies.add(outcome.result.accuracy)
    assert len(accuracies) > 2  # the plans really differ in what they compute
    assert_unchanged(mlp, before)


def test_incremental_evaluation_on_a_resnet_with_nested_stages(eval_set):
    model = load_model("resnet_mini")
    data = eval_set.subset(range(64))
    pruner = Pruner(model, INPUT_SHAPE)
    evaluator = IncrementalEvaluator(model, data, batch_size=24)  # 3 strided chunks: 22, 21, 21
    stage = {name: i for i, name in enumerate(evaluator.stage_names)}
    plans = [
        (PruningPlan(scope="layer", unit_amounts=(("fc", 0.7),)), stage["fc"]),
        (PruningPlan(scope="layer", unit_amounts=(("fc", 0.7), ("block2.conv1", 0.8))), 2),
        (PruningPlan(scope="layer", unit_amounts=(("fc", 0.9), ("block2.conv1", 0.8))), 6),
        (PruningPlan(scope="layer", unit_amounts=(("stem.conv", 0.5),)), 0),
    ]
    assert stage["block2"] == 2 and stage["fc"] == 6
    for plan, resumed in plans:
        outcome = evaluator.evaluate_state(pruner.resolve(plan))
        assert outcome.resumed_from == resumed
        # Resuming is bit-identical to a fresh pass in the same layout (channels_last) ...
        fresh = IncrementalEvaluator(pruner.pruned_model(plan), data, batch_size=24).dense
        assert fresh.resumed_from == 0
        assert torch.equal(outcome.logits, fresh.logits)
        # ... which differs from the plain contiguous model by float rounding only.
        reference = full_pass(pruner, plan, data.images, 24)
        assert torch.allclose(outcome.logits, reference, rtol=0, atol=1e-4)
        assert torch.equal(outcome.result.predictions, reference.argmax(1))
    assert evaluator.channels_last


def test_steps_preview_a_strided_subset_then_complete(mlp, mlp_pruner, eval_set):
    data = eval_set.subset(range(1000))
    evaluator = IncrementalEvaluator(mlp, data, batch_size=300, first_chunk_s=None)  # 0::4, ...
    plan = PruningPlan(amount=0.9)
    state = mlp_pruner.resolve(plan)
    steps = list(evaluator.steps_for_state(state))
    assert [s.covered for s in steps] == [250, 500, 750, 1000]
    assert [s.complete for s in steps] == [False, False, False, True]
    full = full_pass(mlp_pruner, plan, data.images, 1000)
    dense_logits = predict(mlp, data.images)
    first = steps[0]
    assert first.samples.tolist() == list(range(0, 1000, 4))  # spread over the whole split
    assert torch.equal(first.logits, full[first.samples])
    labels = data.labels[first.samples]
    by_hand = sum(int(p == y) for p, y in zip(full[first.samples].argmax(1), labels, strict=True))
    assert first.result.accuracy == pytest.approx(by_hand / 250)
    # the dense reference covers the same samples, so the delta compares like with like
    dense_hand = (dense_logits[first.samples].argmax(1) == labels).float().mean()
    assert first.dense.accuracy == pytest.approx(float(dense_hand))
    assert first.dense.loss == pytest.approx(
        float(torch.nn.functional.cross_entropy(dense_logits[first.samples], labels)), rel=1e-5
    )
    assert first.result.accuracy != first.dense.accuracy  # 90% sparsity shows in the preview
    last = steps[-1]
    assert torch.equal(last.logits, full)
    assert last.dense is evaluator.dense.result
    assert last.result.accuracy == evaluator.evaluate_state(state).result.accuracy


def test_abandoned_steps_leave_the_evaluator_consistent(mlp, mlp_pruner, eval_set):
    data = eval_set.subset(range(1000))
    evaluator = IncrementalEvaluator(mlp, data, batch_size=250)
    early = mlp_pruner.resolve(PruningPlan(scope="layer", unit_amounts=(("fc1", 0.95),)))
    late = mlp_pruner.resolve(PruningPlan(scope="layer", unit_amounts=(("fc3", 0.9),)))
    steps = evaluator.steps_for_state(early)
    assert next(steps).covered == 250
    steps.close()  # a newer slider value interrupted the page after the first chunk
    for state in (late, early, early):
        outcome = evaluator.evaluate_state(state)
        assert torch.equal(outcome.logits, full_pass(mlp_pruner, state.plan, data.images, 250))
    assert outcome.resumed_from == 5  # the same plan again: only the last stage reruns


def test_parameters_without_signatures_are_recomputed(mlp, eval_set):
    data = eval_set.subset(range(300))
    evaluator = IncrementalEvaluator(mlp, data)
    zero_fc2 = {"fc2.weight": torch.zeros_like(mlp.fc2.weight)}
    outcome = evaluator.evaluate(zero_fc2)
    reference = copy.deepcopy(mlp)
    with torch.no_grad():
        reference.fc2.weight.zero_()
    assert torch.equal(outcome.logits, predict(reference, data.images))
    assert outcome.resumed_from == 3  # fc2 is stage 3
    for scale in (0.5, 2.0, 0.5):  # unsigned tensors, created and freed one after the other
        scaled = {"fc2.weight": mlp.fc2.weight.detach() * scale}
        with torch.no_grad():
            reference.fc2.weight.copy_(scaled["fc2.weight"])
        assert torch.equal(evaluator.evaluate(scaled).logits, predict(reference, data.images))


class _Wrapped(nn.Module):
    """lenet300 inside a plain module: not a Sequential, so it needs the traced graph."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _full_pass_of(
    evaluator: IncrementalEvaluator, pruner: Pruner, plan: PruningPlan, **layout: object
) -> torch.Tensor:
    """A full pass in the same layout: a fresh evaluator of the pruned model, from stage 0."""
    fresh = IncrementalEvaluator(pruner.pruned_model(plan), evaluator.dataset, **layout).dense
    assert fresh.resumed_from == 0
    return fresh.logits


def test_a_model_that_is_not_sequential_resumes_from_its_traced_stages(mlp, eval_set):
    model = _Wrapped(mlp).eval()
    data = eval_set.subset(range(200))
    evaluator = IncrementalEvaluator(model, data)
    # a boundary before each layer with parameters: a change resumes right before it
    assert evaluator.stage_names == ["inner.flatten", "inner.fc1", "inner.fc2", "inner.fc3"]
    pruner = Pruner(model, INPUT_SHAPE)
    plan = PruningPlan(scope="layer", unit_amounts=(("inner.fc3", 0.5),))
    state = pruner.resolve(plan)
    outcome = evaluator.evaluate_state(state)
    assert outcome.resumed_from == len(evaluator.stages) - 1  # only fc3's stage ran
    assert torch.equal(outcome.logits, _full_pass_of(evaluator, pruner, plan))
    assert torch.equal(outcome.logits, predict(pruner.pruned_model(plan), data.images))


def _torchvision_resnet() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the stages really differ
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def colour_data(eval_set):
    """40 MNIST digits as 3 x 32 x 32 images (what a user's RGB data looks like here)."""
    data = eval_set.subset(range(40))
    images = torch.nn.functional.interpolate(data.images, size=32).repeat(1, 3, 1, 1)
    return dataclasses.replace(data, images=images)


def test_a_torchvision_resnet_resumes_after_the_first_changed_block_bit_identically(
    colour_data,
):
    model = _torchvision_resnet()
    before = snapshot(model)
    evaluator = IncrementalEvaluator(model, colour_data, batch_size=16, first_chunk_s=None)
    stage = {name: i for i, name in enumerate(evaluator.stage_names)}
    assert {"layer3.0.conv1", "layer4.1.conv1", "fc"} <= set(stage)  # block boundaries
    pruner = Pruner(model, (3, 32, 32))
    plans = [
        (PruningPlan(scope="layer", unit_amounts=(("fc", 0.7),)), stage["fc"]),
        (
            PruningPlan(scope="layer", unit_amounts=(("fc", 0.7), ("layer4.1.conv2", 0.5))),
            stage["layer4.1.conv1"],
        ),
        (
            PruningPlan(scope="layer", unit_amounts=(("layer3.0.downsample.0", 0.5),)),
            stage["layer3.0.conv1"],
        ),
        (PruningPlan(method="filters", amount=0.3), 0),
    ]
    for plan, resumed in plans:
        state = pruner.resolve(plan)
        outcome = evaluator.evaluate_state(state)
        assert outcome.resumed_from == resumed, plan
        assert torch.equal(
            outcome.logits,
            _full_pass_of(evaluator, pruner, plan, batch_size=16, first_chunk_s=None),
        ), plan
        reference = predict(pruner.pruned_model(plan), colour_data.images)
        assert torch.allclose(outcome.logits, reference, rtol=0, atol=1e-4)
        assert torch.equal(outcome.result.predictions, reference.argmax(1))
    assert_unchanged(model, before)


def test_a_layer_used_twice_is_substituted_in_every_stage_that_uses_it(eval_set):
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flatten = nn.Flatten()
            self.inp = nn.Linear(784, 32)
            self.shared = nn.Linear(32, 32)
            self.out = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.shared(torch.relu(self.inp(self.flatten(x)))))
            return self.out(torch.relu(self.shared(x)))  # the same weights again, later

    torch.manual_seed(0)
    model = Twice().eval()
    data = eval_set.subset(range(100))
    evaluator = IncrementalEvaluator(model, data)
    assert evaluator.stage_names.count("shared") == 2
    pruner = Pruner(model, INPUT_SHAPE)
    plan = PruningPlan(scope="layer", unit_amounts=(("shared", 0.6),))
    outcome = evaluator.evaluate_state(pruner.resolve(plan))
    assert outcome.resumed_from == evaluator.stage_names.index("shared")
    assert torch.equal(outcome.logits, predict(pruner.pruned_model(plan), data.images))


def test_a_model_fx_cannot_trace_is_one_stage_and_still_right(mlp, eval_set):
    class Branchy(_Wrapped):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: symbolic tracing fails
                return self.inner(x)
            return self.inner(-x)

    model = Branchy(mlp).eval()
    data = eval_set.subset(range(200))
    evaluator = IncrementalEvaluator(model, data)
    assert evaluator.stage_names == [""]
    pruner = Pruner(model, INPUT_SHAPE)
    plan = PruningPlan(scope="layer", unit_amounts=(("inner.fc3", 0.5),))
    outcome = evaluator.evaluate_state(pruner.resolve(plan))
    assert outcome.resumed_from == 0
    assert torch.equal(outcome.logits, predict(pruner.pruned_model(plan), data.images))


def _stored_bytes(evaluator: IncrementalEvaluator) -> int:
    return sum(
        entry[1].numel() * entry[1].element_size()
        for chunk in evaluator._inputs
        for entry in chunk
        if entry is not None and entry[1] is not None
    )


def test_stored_activations_stay_under_the_budget_and_change_no_result(colour_data):
    model = _torchvision_resnet()
    pruner = Pruner(model, (3, 32, 32))
    plans = [PruningPlan(method="filters", amount=0.3)] + [
        PruningPlan(scope="layer", unit_amounts=((layer, 0.5),))
        for layer in ("conv1", "layer2.0.conv1", "layer4.1.conv2")
    ]
    unbounded = IncrementalEvaluator(model, colour_data, batch_size=16, first_chunk_s=None)
    for plan in plans:
        unbounded.evaluate_state(pruner.resolve(plan))
    budget = _stored_bytes(unbounded) // 4
    bounded = IncrementalEvaluator(
        model, colour_data, batch_size=16, first_chunk_s=None, activation_budget=budget
    )
    assert 1 < len(bounded.stages) < len(unbounded.stages)  # fewer boundaries, not none
    for plan in plans:
        state = pruner.resolve(plan)
        assert torch.equal(
            bounded.evaluate_state(state).logits, unbounded.evaluate_state(state).logits
        )
        assert _stored_bytes(bounded) <= budget


def test_a_slow_models_dense_pass_is_progressive_and_ends_equal_to_a_full_one(
    colour_data,
):
    model = _torchvision_resnet()
    evaluator = IncrementalEvaluator(model, colour_data, batch_size=16, first_chunk=4)
    assert evaluator.dense_done == 0  # opening it ran no dense pass
    pruner = Pruner(model, (3, 32, 32))
    state = pruner.resolve(PruningPlan(method="filters", amount=0.3))
    first = next(evaluator.steps_for_state(state))
    assert evaluator.dense_done == first.covered == 4
    reference = predict(model, colour_data.images)
    dense_hand = (reference[first.samples].argmax(1) == first.result.labels).float().mean()
    assert first.dense.accuracy == pytest.approx(float(dense_hand))
    covered = [step.covered for step in evaluator.dense_steps()]
    assert covered == sorted(covered) and covered[-1] == len(colour_data)
    assert evaluator.dense_done == len(colour_data)
    assert torch.allclose(evaluator.dense.logits, reference, rtol=0, atol=1e-4)
    assert torch.equal(evaluator.dense.result.predictions, reference.argmax(1))


def test_wilson_interval_by_hand_and_its_edges():
    from explorer.engine.evaluation import wilson_interval

    # 81 of 100 at z = 1.96, by the textbook formula
    p, n, z = 0.81, 100, 1.96
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    assert wilson_interval(81, 100) == pytest.approx((centre - half, centre + half))
    low, high = wilson_interval(100, 100)
    assert high == pytest.approx(1.0) and low < 0.99  # no zero-width claim from a perfect sample
    assert wilson_interval(40, 50, population=50) == (0.8, 0.8)  # the sample is everything
    wide, narrow = wilson_interval(900, 1000), wilson_interval(900, 1000, population=1200)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    with pytest.raises(ValueError):
        wilson_interval(5, 0)


def test_preview_intervals_cover_the_full_accuracy_about_95_percent_of_the_time():
    # The oracle is the population itself: draw many previews without replacement from a
    # fixed set of right / wrong answers and count how often the interval holds the truth.
    from explorer.engine.evaluation import wilson_interval

    generator = torch.Generator().manual_seed(0)
    population = (torch.rand(5000, generator=generator) < 0.93).int()
    truth = float(population.float().mean())
    hits, trials = 0, 400
    for _ in range(trials):
        sample = population[torch.randperm(5000, generator=generator)[:1000]]
        low, high = wilson_interval(int(sample.sum()), 1000, population=5000)
        hits += low <= truth <= high
    assert 0.91 <= hits / trials <= 0.99


def test_a_slow_model_previews_on_a_small_class_balanced_first_chunk(mlp, mlp_pruner, eval_set):
    from explorer.engine.evaluation import chunk_layout

    data = eval_set.subset(range(1000))
    chunks = chunk_layout(data.labels, batch_size=300, first=40)
    assert [len(c) for c in chunks] == [40, 80, 160, 300, 300, 120]
    everything = torch.cat(chunks)
    assert sorted(everything.tolist()) == list(range(1000))  # each sample exactly once
    # every prefix holds each class in proportion (within one image per class)
    share = torch.bincount(data.labels, minlength=10).double() / 1000
    for end in (40, 120, 280):
        counts = torch.bincount(data.labels[everything[:end]], minlength=10).double()
        assert torch.all((counts - share * end).abs() <= 1.0 + 1e-9), (end, counts)
    assert chunk_layout(data.labels, 300, 40)[0].tolist() == chunks[0].tolist()  # fixed seed
    # The evaluator with such a layout previews on the first chunk, then is exact.
    evaluator = IncrementalEvaluator(mlp, data, batch_size=300, first_chunk=40)
    steps = list(evaluator.steps_for_state(mlp_pruner.resolve(PruningPlan(amount=0.9))))
    assert [s.covered for s in steps] == [40, 120, 280, 580, 880, 1000]
    full = full_pass(mlp_pruner, PruningPlan(amount=0.9), data.images, 1000)
    assert torch.equal(steps[-1].logits, full)


def test_samples_within_a_time_are_all_for_a_fast_model_and_a_balanced_part_for_a_slow_one(
    mlp, eval_set
):
    data = eval_set.subset(range(1000))
    fast = IncrementalEvaluator(mlp, data, first_chunk_s=None)  # the bundled layout
    assert not fast.slow
    assert fast.samples_within(0.001).tolist() == list(range(1000))
    slow = IncrementalEvaluator(mlp, data, batch_size=400, first_chunk=50)
    slow.slow, slow.seconds_per_image = True, 0.01  # what a probe of a big model finds
    part = slow.samples_within(2.0)
    assert len(part) == 200 and len(set(part.tolist())) == 200
    counts = torch.bincount(data.labels[part], minlength=10).float()
    expected = torch.bincount(data.labels, minlength=10).float() * 200 / 1000
    assert (counts - expected).abs().max() <= 1.0  # every class in proportion
    assert len(slow.samples_within(0.0)) == 64  # never fewer than the minimum
