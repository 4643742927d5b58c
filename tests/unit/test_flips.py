"""Flips: hand-counted on a tiny case, and the accuracy identity on a real pruned model."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from explorer.engine.evaluation import evaluate, metrics_from_logits
from explorer.engine.plan import PruningPlan
from explorer.inside.flips import (
    Flips,
    compute_flips,
    filter_flips,
    flips_for_plan,
    flips_for_state,
    flips_from_results,
    sort_flips,
)
from explorer.plots.flips import confusion_change_figure, flip_counts_figure
from tests.unit.conftest import assert_unchanged, require_trained, snapshot

# --- a tiny case counted by hand ------------------------------------------------------------
# Six samples, three classes. Logits are log-probabilities, so the softmax gives these back.
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
DENSE_PROBS = [
    [0.7, 0.2, 0.1],  # 0 right
    [0.3, 0.6, 0.1],  # 1 wrong
    [0.1, 0.8, 0.1],  # 1 right
    [0.2, 0.3, 0.5],  # 2 wrong
    [0.1, 0.1, 0.8],  # 2 right
    [0.5, 0.1, 0.4],  # 0 wrong
]
PRUNED_PROBS = [
    [0.4, 0.5, 0.1],  # 1: broken
    [0.2, 0.7, 0.1],  # 1: same wrong prediction, no flip
    [0.1, 0.8, 0.1],  # 1: same
    [0.6, 0.3, 0.1],  # 0: changed (wrong to another wrong)
    [0.1, 0.1, 0.8],  # 2: same
    [0.2, 0.2, 0.6],  # 2: fixed
]
CLASSES = ("a", "b", "c")


@pytest.fixture()
def tiny() -> Flips:
    dense = torch.tensor(DENSE_PROBS).log()
    pruned = torch.tensor(PRUNED_PROBS).log()
    return compute_flips(dense, pruned, LABELS, CLASSES)


def test_tiny_case_flips_match_hand_counts(tiny):
    assert [(f.index, f.kind) for f in tiny.flips] == [(0, "broken"), (3, "changed"), (5, "fixed")]
    broken, changed, fixed = tiny.flips
    assert (broken.true_class, broken.dense_prediction, broken.pruned_prediction) == (0, 0, 1)
    assert (changed.true_class, changed.dense_prediction, changed.pruned_prediction) == (1, 2, 0)
    assert (fixed.true_class, fixed.dense_prediction, fixed.pruned_prediction) == (2, 0, 2)
    expected = {  # (dense confidence, pruned confidence, dense true prob, pruned true prob, drop)
        0: (0.7, 0.5, 0.7, 0.4, 0.3),
        3: (0.5, 0.6, 0.3, 0.3, 0.0),
        5: (0.5, 0.6, 0.4, 0.6, -0.2),
    }
    for flip in tiny.flips:
        got = (
            flip.dense_confidence,
            flip.pruned_confidence,
            flip.dense_true_probability,
            flip.pruned_true_probability,
            flip.true_class_drop,
        )
        assert got == pytest.approx(expected[flip.index], abs=1e-6)
    assert (tiny.broken, tiny.fixed, tiny.changed) == (1, 1, 1)
    # The headline says nothing happened; three samples flipped.
    assert tiny.dense_correct == tiny.pruned_correct == 3
    assert tiny.accuracy_delta == 0.0
    assert tiny.summary()["flipped"] == 3


def test_tiny_case_per_class_and_confusion(tiny):
    per_class = tiny.per_class
    assert per_class["broken"].tolist() == [1, 0, 0]
    assert per_class["fixed"].tolist() == [0, 0, 1]
    assert per_class["changed"].tolist() == [0, 1, 0]
    assert tiny.dense_confusion.tolist() == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert tiny.pruned_confusion.tolist() == [[0, 2, 0], [1, 1, 0], [0, 0, 2]]
    assert tiny.confusion_change.tolist() == [[-1, 1, 0], [1, 0, -1], [-1, 0, 1]]


def test_sort_by_registry_keys(tiny):
    by_drop = sort_flips(tiny.flips, "true_class_drop")
    assert [f.index for f in by_drop] == [0, 3, 5]
    assert [f.index for f in sort_flips(tiny.flips, "true_class_drop", descending=False)] == [
        5,
        3,
        0,
    ]
    # 3 and 5 both have confidence 0.5 (up to float rounding: make it an exact tie), and
    # eval-index order breaks the tie in both directions.
    first, changed, fixed = tiny.flips
    tied = [first, replace(fixed, dense_confidence=changed.dense_confidence), changed]
    assert [f.index for f in sort_flips(tied, "dense_confidence")] == [0, 3, 5]
    assert [f.index for f in sort_flips(tied, "dense_confidence", False)] == [3, 5, 0]
    with pytest.raises(ValueError, match="dense_confidence"):
        sort_flips(tiny.flips, "loss")


def test_filter_by_true_and_predicted_class(tiny):
    def indices(**conditions):
        return [f.index for f in filter_flips(tiny.flips, **conditions)]

    assert indices() == [0, 3, 5]
    assert indices(true_class=1) == [3]
    assert indices(predicted_class=0, predicted_by="dense") == [0, 5]
    assert indices(predicted_class=0, predicted_by="pruned") == [3]
    assert indices(predicted_class=0) == [0, 3, 5]
    assert indices(predicted_class=2, predicted_by="dense") == [3]
    assert indices(predicted_class=2, predicted_by="pruned") == [5]
    assert indices(true_class=2, predicted_class=2, predicted_by="pruned") == [5]
    assert indices(kinds=("broken", "fixed")) == [0, 5]
    with pytest.raises(ValueError, match="either"):
        filter_flips(tiny.flips, predicted_class=0, predicted_by="both")
    with pytest.raises(ValueError, match="broken"):
        filter_flips(tiny.flips, kinds=("lost",))


def test_from_eval_results_counts_exactly_and_leaves_unknown_probabilities_nan(tiny):
    dense_logits = torch.tensor(DENSE_PROBS).log()
    pruned_logits = torch.tensor(PRUNED_PROBS).log()
    dense = metrics_from_logits(dense_logits, LABELS, 3)
    pruned = metrics_from_logits(pruned_logits, LABELS, 3)
    bare = flips_from_results(dense, pruned, CLASSES)
    assert [(f.index, f.kind) for f in bare.flips] == [(f.index, f.kind) for f in tiny.flips]
    assert np.array_equal(bare.dense_confusion, dense.confusion.numpy())
    assert np.array_equal(bare.pruned_confusion, pruned.confusion.numpy())
    assert all(math.isnan(f.dense_confidence) for f in bare.flips)
    # nan keys sort last without raising.
    assert len(sort_flips(bare.flips, "dense_confidence")) == 3
    full = flips_from_results(dense, pruned, CLASSES, dense_logits, pruned_logits)
    assert [f.to_dict() for f in full.flips] == [f.to_dict() for f in tiny.flips]
    with pytest.raises(ValueError, match="same samples"):
        flips_from_results(dense, metrics_from_logits(pruned_logits, LABELS.flip(0), 3))


# --- a real pruned model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench():
    require_trained("lenet5")
    from explorer.engine.workbench import open_workbench

    return open_workbench("lenet5", torch.device("cpu"))


def test_real_model_identity_and_oracles(bench):
    before = snapshot(bench.model)
    plan = PruningPlan(amount=0.7)
    flips = flips_for_plan(bench, plan)
    assert_unchanged(bench.model, before)

    # What the headline hides: the accuracy delta is exactly the net of the flips.
    n = len(bench.eval_set)
    assert flips.total == n
    assert flips.accuracy_delta == (flips.fixed - flips.broken) / n
    assert flips.pruned_correct - flips.dense_correct == flips.fixed - flips.broken
    state, result, _ = bench.evaluate(plan)
    assert flips.accuracy_delta == pytest.approx(result.accuracy - bench.dense.accuracy, abs=1e-6)
    assert len(flips.flips) > flips.broken - flips.fixed  # this plan does hide flips

    # Flipped samples are exactly the workbench's changed samples, and an independently
    # built pruned model predicts what the flips say.
    assert [f.index for f in flips.flips] == bench.changed_samples(state)
    oracle = evaluate(bench.pruner.pruned_model(state).eval(), bench.eval_set)
    assert all(f.pruned_prediction == int(oracle.predictions[f.index]) for f in flips.flips)
    assert np.array_equal(flips.pruned_confusion, oracle.confusion.numpy())
    assert np.array_equal(flips.dense_confusion, bench.dense.confusion.numpy())

    for confusion, correct in (
        (flips.dense_confusion, flips.dense_correct),
        (flips.pruned_confusion, flips.pruned_correct),
    ):
        assert confusion.sum() == n
        assert np.trace(confusion) == correct
    assert flips.confusion_change.sum() == 0
    assert sum(int(c.sum()) for c in flips.per_class.values()) == len(flips.flips)
    for flip in flips.flips:
        assert 0.0 <= flip.dense_confidence <= 1.0
        assert flip.dense_confidence >= flip.dense_true_probability
    assert flips_for_state(bench, state).to_dict() == flips.to_dict()
    assert_unchanged(bench.model, before)


# --- figures --------------------------------------------------------------------------------


def test_confusion_change_figure_holds_the_diff(tiny):
    diff = tiny.confusion_change
    fig = confusion_change_figure(diff, CLASSES)
    off, on = fig.data
    off_z, on_z = np.array(off.z, dtype=float), np.array(on.z, dtype=float)
    eye = np.eye(3, dtype=bool)
    assert np.array_equal(off_z[~eye], diff[~eye]) and np.isnan(off_z[eye]).all()
    assert np.array_equal(on_z[eye], diff[eye]) and np.isnan(on_z[~eye]).all()
    # Zero is white on both scales; added errors off the diagonal and lost correct
    # predictions on it are both red.
    assert off.zmid == on.zmid == 0 and off.zmin == -1 and off.zmax == 1
    assert not off.reversescale and on.reversescale
    assert off.colorscale[-1][1] == on.colorscale[-1][1] == "#d62728"
    assert off.text[0][1] == "+1" and on.text[0][0] == "-1" and off.text[0][2] == ""
    with pytest.raises(ValueError, match="shape"):
        confusion_change_figure(diff, CLASSES[:2])


def test_flip_counts_figure_stacks_kinds_per_class(tiny):
    fig = flip_counts_figure(tiny.per_class, CLASSES)
    assert fig.layout.barmode == "stack"
    bars = {bar.name: list(bar.y) for bar in fig.data}
    assert bars == {"broken": [1, 0, 0], "fixed": [0, 0, 1], "changed": [0, 1, 0]}
    assert all(list(bar.x) == list(CLASSES) for bar in fig.data)
    only_two = flip_counts_figure({"broken": [2, 0], "fixed": [0, 3]})
    assert [bar.name for bar in only_two.data] == ["broken", "fixed"]
    assert list(only_two.data[0].x) == ["0", "1"]


# --- right and wrong: one colour each, wherever a prediction is shown -------------------------


def test_flip_kinds_take_the_colour_of_what_the_pruned_model_now_says(tiny):
    from explorer.plots.common import RIGHT_COLOR, WRONG_COLOR

    assert RIGHT_COLOR != WRONG_COLOR
    fig = flip_counts_figure(tiny.per_class, CLASSES)
    colors = {bar.name: bar.marker.color for bar in fig.data}
    assert colors["broken"] == WRONG_COLOR and colors["fixed"] == RIGHT_COLOR
    # the confusion change: better (more right) is the right colour, worse the wrong one
    off, on = confusion_change_figure(tiny.confusion_change, CLASSES).data
    assert off.colorscale[0][1] == on.colorscale[0][1] == RIGHT_COLOR
    assert off.colorscale[-1][1] == WRONG_COLOR


@pytest.mark.parametrize(
    ("dense", "pruned", "colours"),
    [
        ("4", "9", ("wrong", "right")),  # fixed (issue 18, item 3: was grey and red)
        ("9", "4", ("right", "wrong")),  # broken
        ("4", "7", ("wrong", "wrong")),  # changed
        ("9", "9", ("right", "right")),  # not flipped
    ],
)
def test_the_saliency_titles_are_coloured_by_right_and_wrong(dense, pruned, colours):
    from explorer.plots.common import RIGHT_COLOR, WRONG_COLOR
    from explorer.plots.saliency import saliency_figure

    maps = np.zeros((4, 4))
    fig = saliency_figure(maps, maps, maps, maps, "9", "9", (dense, 0.6), (pruned, 0.7))
    expected = {"right": RIGHT_COLOR, "wrong": WRONG_COLOR}
    titles = fig.layout.annotations[1:3]
    assert "Dense" in titles[0].text and "Pruned" in titles[1].text
    assert (titles[0].font.color, titles[1].font.color) == tuple(expected[c] for c in colours)
