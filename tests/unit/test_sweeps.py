"""Accuracy-vs-sparsity sweeps: labels, points and resumption, against independent evaluations
of the masked model and ``explorer.engine.cost.model_cost``."""

from __future__ import annotations

import pytest

from explorer.engine.cost import model_cost
from explorer.engine.evaluation import evaluate
from explorer.engine.plan import PruningPlan
from explorer.engine.sweeps import SWEEP_AMOUNTS, Sweeps, can_sweep, sweep_key, sweep_label
from explorer.engine.workbench import Workbench
from explorer.zoo.models import load_model

AMOUNTS = (0.0, 0.5, 0.9)  # a short sweep: the points are under test, not the resolution


@pytest.fixture(scope="module")
def bench(eval_set, calibration) -> Workbench:
    return Workbench("lenet300", load_model("lenet300"), eval_set.subset(range(200)), calibration)


def test_the_default_sweep_is_0_to_95_percent_in_steps_of_5():
    amounts = list(SWEEP_AMOUNTS)
    assert amounts == pytest.approx([step * 0.05 for step in range(20)])
    assert amounts[0] == 0.0 and 0.5 in amounts  # points are looked up by these exact floats


def test_a_sweep_is_named_by_the_plan_without_its_amount():
    plan = PruningPlan(criterion="random", seed=7, amount=0.3)
    assert sweep_key(plan) == sweep_key(plan.with_amount(0.8))
    assert sweep_key(plan) != sweep_key(PruningPlan(criterion="random", seed=8, amount=0.3))
    assert sweep_key(plan) != sweep_key(PruningPlan(criterion="random", seed=7, scope="layer"))
    assert sweep_label(plan) == "Unstructured (weights), random (seed 7), global"
    assert sweep_label(PruningPlan(method="filters", scope="layer", amount=0.4)) == (
        "Structured: filters / neurons, weight magnitude, layer-wise"
    )


def test_an_nm_pattern_has_no_amount_to_sweep():
    assert can_sweep(PruningPlan(amount=0.5))
    assert can_sweep(PruningPlan(method="filters"))
    assert not can_sweep(PruningPlan(method="nm", amount=0.5))


def test_sweeps_of_two_criteria_and_seeds_agree_with_independent_evaluations(bench):
    store: dict = {}
    sweeps = Sweeps(store, AMOUNTS)
    plans = [
        PruningPlan(amount=0.3),
        PruningPlan(criterion="random", amount=0.3, seed=0),
        PruningPlan(criterion="random", amount=0.6, seed=7),
    ]
    for plan in plans:
        assert list(sweeps.fill(bench, plan)) == [(1, 3), (2, 3), (3, 3)]
    keys = [sweep_key(plan) for plan in plans]
    assert list(sweeps.complete()) == keys  # in the order they were started
    assert [sweeps.label(key) for key in keys] == [
        "Unstructured (weights), weight magnitude, global",
        "Unstructured (weights), random (seed 0), global",
        "Unstructured (weights), random (seed 7), global",
    ]
    assert sweeps.others(plans[1]) == [keys[0], keys[2]]
    series = sweeps.series([keys[2], keys[0]])
    assert [line.label for line in series] == [sweeps.label(keys[2]), sweeps.label(keys[0])]
    for line, plan in zip(series, [plans[2], plans[0]], strict=True):
        for amount, sparsity, accuracy in zip(AMOUNTS, line.sparsity, line.accuracy, strict=True):
            at = plan.with_amount(amount)
            masked = bench.pruner.pruned_model(at)
            assert accuracy == pytest.approx(evaluate(masked, bench.eval_set).accuracy)
            expected = model_cost(bench.pruner, bench.resolve(at)).prunable_sparsity
            assert sparsity == pytest.approx(expected)
            assert sparsity == pytest.approx(amount, abs=1e-4)  # global x% = x% of weights
        assert line.accuracy[0] == pytest.approx(evaluate(bench.model, bench.eval_set).accuracy)
    # Different seeds rank differently, so their random plans remove different weights.
    assert store[keys[1]]["points"] != store[keys[2]]["points"]


def test_an_interrupted_sweep_resumes_where_it_was(bench, monkeypatch):
    store: dict = {}
    sweeps = Sweeps(store, AMOUNTS)
    plan = PruningPlan(amount=0.2)
    evaluated = []
    curve = bench.curve

    def counted(plan, amounts):
        evaluated.extend(amounts)
        return curve(plan, amounts)

    monkeypatch.setattr(bench, "curve", counted)
    for done, todo in sweeps.fill(bench, plan):
        assert (done, todo) == (1, 3)
        break  # the user moved on
    assert sweeps.missing(plan) == [0.5, 0.9] and sweeps.complete() == {}
    assert list(store[sweep_key(plan)]["points"]) == [0.0]  # kept as soon as known
    assert list(sweeps.fill(bench, plan)) == [(1, 2), (2, 2)]
    assert evaluated == [0.0, 0.5, 0.9]  # no point evaluated twice
    assert list(sweeps.fill(bench, plan)) == [] and sweeps.missing(plan) == []
    assert list(sweeps.complete()) == [sweep_key(plan)]


def test_forgetting_sweeps_keeps_the_others(bench):
    store: dict = {}
    sweeps = Sweeps(store, (0.0,))
    a, b = PruningPlan(), PruningPlan(scope="layer")
    for plan in (a, b):
        list(sweeps.fill(bench, plan))
    sweeps.forget([sweep_key(a), "no such sweep"])
    assert list(store) == [sweep_key(b)]


def test_a_link_carries_the_sweeps_of_a_chart_and_reads_them_back():
    from explorer.engine.sweeps import sweeps_from_query, sweeps_to_query

    plans = [
        PruningPlan(amount=0.7),
        PruningPlan(criterion="random", seed=7, amount=0.2),
        PruningPlan(method="filters", scope="layer", unit_amounts=(("conv1", 0.5),)),
    ]
    text = sweeps_to_query(plans)
    assert "amount" not in text  # a sweep varies the amount: the link does not fix one
    assert sweeps_from_query(text) == [plan.with_amount(0.0) for plan in plans]
    assert [sweep_key(p) for p in sweeps_from_query(text)] == [sweep_key(p) for p in plans]
    assert sweeps_from_query(text + "~" + text) == sweeps_from_query(text)  # no duplicates


def test_a_bad_sweep_in_a_link_is_named():
    from explorer.engine.sweeps import sweeps_from_query

    with pytest.raises(ValueError, match=r"sweep 1 .*unknown method 'magnitude'"):
        sweeps_from_query("method=magnitude")
    with pytest.raises(ValueError, match=r"sweep 2 .*nm must look like 2:4"):
        sweeps_from_query("method=unstructured~method=nm;nm=2-4")
    with pytest.raises(ValueError, match=r"sweep 1 .*not key=value"):
        sweeps_from_query("magnitude")
    with pytest.raises(ValueError, match="no amount to sweep"):
        sweeps_from_query("method=nm")


def test_a_sweep_keeps_its_colour_whichever_plan_is_current():
    from explorer.plots import CurveSeries, curve_figure
    from explorer.plots.common import SERIES_COLORS

    plans = [
        PruningPlan(),
        PruningPlan(criterion="random"),
        PruningPlan(method="filters"),
        PruningPlan(method="filters", scope="layer"),
        PruningPlan(criterion="taylor"),
    ]
    store: dict = {}
    sweeps = Sweeps(store, AMOUNTS)
    for plan in plans:
        sweeps.entry(plan)
    colors = {sweep_label(plan): store[sweep_key(plan)]["color"] for plan in plans}
    assert len(set(colors.values())) == len(plans)  # sweeps kept together never share one
    assert set(colors.values()) <= set(SERIES_COLORS)
    # the chart draws each sweep in its colour, first (the current plan) or not
    for plan in plans:
        store[sweep_key(plan)]["points"] = {a: (a, 1 - a) for a in AMOUNTS}
    for order in (plans[:2], plans[1::-1]):
        lines = sweeps.series([sweep_key(p) for p in order])
        fig = curve_figure(lines, (0.5, 0.5), 0.99)
        drawn = {t.name: t.line.color for t in fig.data if t.mode == "lines+markers"}
        assert drawn == {sweep_label(p): colors[sweep_label(p)] for p in order}
    # a series that brings no colour of its own gets the one of its label, never a position
    a, b = CurveSeries("a", [0.0], [1.0]), CurveSeries("b", [0.0], [1.0])
    first = {t.name: t.line.color for t in curve_figure([a, b], (0, 1), 1).data if t.name in "ab"}
    again = {t.name: t.line.color for t in curve_figure([b, a], (0, 1), 1).data if t.name in "ab"}
    assert first == again
    # a fresh session (a shared link) gives the first sweep the colour its label hashes to
    other: dict = {}
    Sweeps(other, AMOUNTS).entry(plans[0])
    assert other[sweep_key(plans[0])]["color"] == colors[sweep_label(plans[0])]
