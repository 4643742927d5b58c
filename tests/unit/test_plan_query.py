"""Plans in URLs: a link must reopen exactly the same plan; a bad link names the bad part."""

from __future__ import annotations

import pytest

from explorer.engine.plan import PruningPlan, plan_from_query, plan_to_query

PLANS = [
    PruningPlan(),
    PruningPlan(
        method="filters",
        criterion="taylor",
        scope="layer",
        amount=0.35,
        unit_amounts=(("block1.conv1", 0.5), ("stem.conv", 0.125)),
        dense_units=("fc",),
        norm=2.0,
    ),
    PruningPlan(method="nm", n=1, m=4, amount=1.0, dense_units=("conv1", "fc3")),
    PruningPlan(criterion="random", seed=7, amount=0.9999),
]


@pytest.mark.parametrize("plan", PLANS)
def test_round_trip_is_exact(plan):
    assert plan_from_query(plan_to_query(plan)) == plan


def test_defaults_stay_out_of_the_url():
    query = plan_to_query(PruningPlan(amount=0.5))
    assert set(query) == {"method", "criterion", "scope", "amount"}
    assert query["amount"] == "0.5"


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ({"amount": "lots"}, "amount"),
        ({"amount": "1.5"}, "between 0 and 1"),
        ({"layers": "fc1=0.5"}, "fc1:0.9"),
        ({"layers": "fc1:x"}, "fc1"),
        ({"nm": "2-4"}, "2:4"),
        ({"scope": "everywhere"}, "global"),
        ({"seed": "1.5"}, "seed"),
    ],
)
def test_bad_links_say_what_is_wrong(query, names):
    with pytest.raises(ValueError, match=names):
        plan_from_query(query)
