"""PruningPlan: validation, edits, and the JSON form people save, share and load."""

from __future__ import annotations

import json
import math

import pytest

from explorer.engine.plan import PLAN_VERSION, PruningPlan, check_amount


@pytest.mark.parametrize("amount", [0, 0.0, 0.25, 1, 1.0])
def test_check_amount_accepts_fractions_in_the_closed_unit_interval(amount):
    value = check_amount(amount)
    assert isinstance(value, float)
    assert value == float(amount)


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        (-0.01, "between 0 and 1"),
        (1.5, "between 0 and 1"),
        (50, "between 0 and 1"),
        (math.nan, "between 0 and 1"),
        (math.inf, "between 0 and 1"),
        ("0.5", "must be a number"),
        (None, "must be a number"),
        (True, "must be a number"),
    ],
)
def test_check_amount_rejects_everything_else_with_a_reason(amount, message):
    with pytest.raises(ValueError, match=message):
        check_amount(amount, "amount of unit 'fc1'")


def test_amounts_outside_0_1_are_rejected_globally_and_per_layer():
    with pytest.raises(ValueError, match="global amount"):
        PruningPlan(amount=1.2)
    with pytest.raises(ValueError, match="global amount"):
        PruningPlan(amount=-0.1)
    with pytest.raises(ValueError, match="amount of unit 'fc1'"):
        PruningPlan(unit_amounts=(("fc1", 2.0),))
    with pytest.raises(ValueError, match="amount of unit 'fc2'"):
        PruningPlan().with_unit("fc2", -0.5)


def test_unknown_scope_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown scope 'everywhere'.*'global', 'layer'"):
        PruningPlan(scope="everywhere")


@pytest.mark.parametrize("norm", [0, -1, math.nan, math.inf, "2", True])
def test_norm_must_be_a_finite_positive_number(norm):
    with pytest.raises(ValueError, match="norm must be a positive number"):
        PruningPlan(norm=norm)


@pytest.mark.parametrize(("n", "m"), [(0, 4), (4, 4), (3, 2), (2.0, 4), (True, 4), (2, "4")])
def test_nm_must_be_whole_numbers_with_n_below_m(n, m):
    with pytest.raises(ValueError, match="N:M needs whole numbers"):
        PruningPlan(n=n, m=m)


def test_amount_for_follows_override_then_dense_then_global():
    plan = PruningPlan(amount=0.3, unit_amounts=(("fc1", 0.9),), dense_units=("fc3",))
    assert plan.amount_for("fc1") == 0.9
    assert plan.amount_for("fc2") == 0.3
    assert plan.amount_for("fc3") == 0.0
    assert plan.unit_names() == {"fc1", "fc3"}


def test_a_dense_layer_wins_over_its_own_override():
    plan = PruningPlan(amount=0.3, unit_amounts=(("fc1", 0.9),), dense_units=("fc1",))
    assert plan.amount_for("fc1") == 0.0


def test_edits_return_new_plans_and_leave_the_original_alone():
    base = PruningPlan(amount=0.5)
    edited = base.with_unit("fc1", 0.9).with_dense("fc3").with_amount(0.7)
    assert base == PruningPlan(amount=0.5)
    assert edited.amount == 0.7
    assert edited.overrides == {"fc1": 0.9}
    assert edited.dense_units == ("fc3",)
    assert edited.without_unit("fc1").overrides == {}
    assert edited.with_dense("fc3", dense=False).dense_units == ()
    assert edited.with_unit("fc2", 0.1).with_global_everywhere().unit_amounts == ()
    with pytest.raises(AttributeError):
        base.amount = 0.1  # frozen


def test_with_layer_replaces_an_existing_override():
    plan = PruningPlan().with_unit("fc1", 0.9).with_unit("fc1", 0.2)
    assert plan.unit_amounts == (("fc1", 0.2),)


def test_plans_are_equal_and_hash_equal_regardless_of_listing_order():
    a = PruningPlan(unit_amounts=(("fc2", 0.1), ("fc1", 0.2)), dense_units=("b", "a", "b"))
    b = PruningPlan(unit_amounts=(("fc1", 0.2), ("fc2", 0.1)), dense_units=("a", "b"))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != b.with_unit("fc1", 0.3)


PLANS = [
    PruningPlan(),
    PruningPlan(amount=0.5),
    PruningPlan(
        method="filters",
        criterion="taylor",
        scope="layer",
        amount=0.25,
        unit_amounts=(("conv1", 0.5), ("fc2", 1.0)),
        dense_units=("fc3", "conv2"),
        norm=2.0,
        seed=7,
    ),
    PruningPlan(method="nm", n=1, m=8, amount=1.0),
    PruningPlan(method="heads", criterion="random", amount=0.1, seed=123, norm=0.5),
]


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("indent", [None, 2])
def test_json_round_trip_gives_an_equal_plan(plan, indent):
    text = plan.to_json(indent=indent)
    again = PruningPlan.from_json(text)
    assert again == plan
    assert again.to_dict() == plan.to_dict()
    assert PruningPlan.from_json(text.encode()) == plan  # bytes, as read from a file upload


def test_to_dict_is_plain_json_data_with_a_version():
    plan = PLANS[2]
    data = json.loads(plan.to_json())
    assert data == {
        "version": PLAN_VERSION,
        "method": "filters",
        "criterion": "taylor",
        "scope": "layer",
        "amount": 0.25,
        "units": {"conv1": 0.5, "fc2": 1.0},
        "dense": ["conv2", "fc3"],
        "norm": 2.0,
        "nm": [2, 4],
        "seed": 7,
    }


def test_every_field_is_optional_in_json():
    assert PruningPlan.from_json("{}") == PruningPlan()
    assert PruningPlan.from_json('{"amount": 1}') == PruningPlan(amount=1.0)


@pytest.mark.parametrize("text", ["{", "", "{'amount': 0.5}", '{"amount": 0.5,}', b"\xff\xfe\x00"])
def test_malformed_json_is_a_value_error_that_says_so(text):
    with pytest.raises(ValueError, match="not valid JSON"):
        PruningPlan.from_json(text)


def test_unknown_fields_are_named_along_with_the_known_ones():
    with pytest.raises(ValueError) as info:
        PruningPlan.from_json('{"amout": 0.5, "method": "filters"}')
    message = str(info.value)
    assert "'amout'" in message
    assert "'amount'" in message and "'units'" in message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([0.5], "must be a JSON object"),
        ("0.5", "must be a JSON object"),
        ({"version": 3}, "version 3 is not supported"),
        ({"amount": "0.5"}, "global amount must be a number"),
        ({"amount": None}, "global amount must be a number"),
        ({"amount": 3}, "global amount must be between 0 and 1"),
        ({"units": ["fc1"]}, '"units" must map unit names to amounts'),
        ({"units": {"fc1": "high"}}, "amount of unit 'fc1' must be a number"),
        ({"units": {"fc1": 1.5}}, "amount of unit 'fc1' must be between 0 and 1"),
        ({"dense": "fc3"}, '"dense" must be a list'),
        ({"dense": {"fc3": True}}, '"dense" must be a list'),
        ({"nm": [2]}, '"nm" must be a pair'),
        ({"nm": "2:4"}, '"nm" must be a pair'),
        ({"nm": ["2", 4]}, "N:M needs whole numbers"),
        ({"nm": [True, 4]}, "N:M needs whole numbers"),
        ({"nm": [4, 2]}, "N:M needs whole numbers"),
        ({"method": 3}, '"method" must be a string'),
        ({"criterion": ["magnitude"]}, '"criterion" must be a string'),
        ({"scope": None}, '"scope" must be a string'),
        ({"scope": "all"}, "unknown scope 'all'"),
        ({"seed": 1.5}, '"seed" must be a whole number'),
        ({"seed": True}, '"seed" must be a whole number'),
        ({"norm": "l2"}, "norm must be a positive number"),
        ({"norm": True}, "norm must be a positive number"),
        ({"norm": 0}, "norm must be a positive number"),
    ],
)
def test_wrong_types_and_values_give_a_helpful_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        PruningPlan.from_json(json.dumps(data))


def test_infinite_norm_from_json_is_rejected():
    # json.loads accepts the non-standard literal; a plan must not.
    with pytest.raises(ValueError, match="norm must be a positive number"):
        PruningPlan.from_json('{"norm": Infinity}')
