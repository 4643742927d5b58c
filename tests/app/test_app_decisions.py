"""The Decisions page through AppTest: its numbers are explorer's flips (the oracle), its
filters and sorting select the flips they say."""

from __future__ import annotations

import pytest

from explorer.flips import filter_flips, flips_for_plan, sort_flips
from explorer.plan import PruningPlan
from tests.app.test_app import assert_clean, metric, start


@pytest.fixture(scope="module")
def flips_at_80(lenet5_bench):
    return flips_for_plan(lenet5_bench, PruningPlan(amount=0.8))


@pytest.fixture(scope="module")
def lenet5_bench():
    from explorer.workbench import open_workbench

    return open_workbench("lenet5")


def table(at):
    """The flip table (the only dataframe on the page)."""
    assert len(at.dataframe) == 1
    return at.dataframe[0].value


def test_headline_and_table_are_the_flips_explorer_finds(flips_at_80):
    at = start("decisions", model="lenet5", amount="0.8")
    assert_clean(at)
    summary = flips_at_80.summary()
    assert summary["flipped"] > 0
    assert metric(at, "Predictions flipped") == f"{summary['flipped']:,}"
    assert metric(at, "Broken") == f"{summary['broken']:,}"
    assert metric(at, "Fixed · changed") == f"{summary['fixed']:,} · {summary['changed']:,}"
    assert metric(at, "Pruned accuracy") == f"{summary['pruned_accuracy']:.2%}"
    rows = table(at)
    expected = sort_flips(flips_at_80.flips)[: len(rows)]
    assert rows["index"].tolist() == [f.index for f in expected]
    # the default order: the largest drop in the true class's probability first
    assert rows["drop"].is_monotonic_decreasing
    # the first sample opens below the table
    assert at.subheader[0].value == f"Eval image #{expected[0].index}"


def test_filters_and_sorting_select_what_they_say(flips_at_80):
    at = start("decisions", model="lenet5", amount="0.8")
    at.pills(key="dec_kinds").set_value(["broken"]).run()
    at.selectbox(key="dec_true").set_value(7).run()
    at.selectbox(key="dec_sort").set_value("index").run()
    at.toggle(key="dec_desc").set_value(False).run()
    assert_clean(at)
    expected = filter_flips(flips_at_80.flips, true_class=7, kinds=["broken"])
    assert expected, "the oracle has no broken 7s at 80%: pick another class"
    rows = table(at)
    assert rows["index"].tolist() == sorted(f.index for f in expected)
    assert set(rows["kind"]) == {"broken"} and set(rows["true"]) == {"7"}
    # predicted as: a class nobody predicts among these leaves a message, not an empty table
    at.selectbox(key="dec_pred").set_value(7).run()
    assert_clean(at)
    assert any("No flip matches" in i.value for i in at.info)


def test_a_dense_plan_says_nothing_flipped():
    at = start("decisions", model="lenet5")
    assert_clean(at)
    assert metric(at, "Predictions flipped") == "0"
    assert any("No eval prediction changed" in i.value for i in at.info)
