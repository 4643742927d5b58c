"""The Pareto front of saved experiments, against fronts worked out by hand and a brute-force
oracle; the axes read the metrics ``from_report`` saves."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.keep.pareto import (
    AXES,
    Point,
    deployed_bytes,
    latency_ms,
    latency_speed,
    pareto_figure,
    pareto_front,
    speed_up,
)

# (cost, accuracy), worked out by hand:
#   5 (0.5, 0.50)  cheapest of all                              -> front
#   0 (1.0, 0.90)  more accurate than anything cheaper           -> front
#   1 (2.0, 0.95)  likewise                                      -> front
#   3 (2.0, 0.80)  as costly as 1, less accurate                 -> dominated by 1 (and 0)
#   2 (3.0, 0.93)  costlier than 1, less accurate                -> dominated by 1
#   4 (4.0, 0.99)  most accurate                                 -> front
#   6 (4.0, 0.99)  the same point again: neither is better       -> front
#   7 (None, 1.0)  no cost stored (latency not measured)         -> never on the front
#   8 (5.0, nan)   an undefined accuracy                         -> never on the front
POINTS = [
    (1.0, 0.90),
    (2.0, 0.95),
    (3.0, 0.93),
    (2.0, 0.80),
    (4.0, 0.99),
    (0.5, 0.50),
    (4.0, 0.99),
    (None, 1.0),
    (5.0, math.nan),
]


def test_front_of_costs_by_hand():
    assert pareto_front(POINTS) == [5, 0, 1, 4, 6]


def test_front_when_more_x_is_better_by_hand():
    # Sparsity: more is better. (4, 0.99) is at least as sparse and as accurate as every other
    # usable point, so only it (twice) is left.
    assert pareto_front(POINTS, maximize_x=True) == [4, 6]
    # 0.3 sparse at 97%, 0.5 at 96%, 0.8 at 90%, 0.8 at 85% (dominated), 0.2 at 96% (dominated)
    sparsity = [(0.3, 0.97), (0.5, 0.96), (0.8, 0.90), (0.8, 0.85), (0.2, 0.96)]
    assert pareto_front(sparsity, maximize_x=True) == [0, 1, 2]


@pytest.mark.parametrize(
    ("points", "front"),
    [
        ([], []),
        ([(1.0, 0.5)], [0]),
        ([(1.0, 0.9), (2.0, 0.9)], [0]),  # as accurate, but costlier
        ([(1.0, 0.9), (1.0, 0.8)], [0]),  # as costly, but less accurate
        ([(2.0, 0.9), (1.0, 0.8)], [1, 0]),  # a trade-off: both, cheapest first
        ([(None, None), (math.inf, 0.9)], []),
        ([(1, 1), (True, 1.0)], [0]),  # a bool is not a number here
    ],
)
def test_small_fronts(points, front):
    assert pareto_front(points) == front


def _dominates(a, b, maximize_x):
    ax, bx = (-a[0], -b[0]) if maximize_x else (a[0], b[0])
    return ax <= bx and a[1] >= b[1] and (ax < bx or a[1] > b[1])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6).map(float), st.integers(0, 6).map(lambda v: v / 6)),
        max_size=25,
    ),
    st.booleans(),
)
def test_front_is_exactly_the_undominated_points(points, maximize_x):
    front = pareto_front(points, maximize_x)
    expected = [
        i for i, p in enumerate(points) if not any(_dominates(q, p, maximize_x) for q in points)
    ]
    assert sorted(front) == expected
    assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)


def test_axes_read_saved_metrics():
    metrics = {
        "prunable_sparsity": 0.8,
        "flops_effective": 1000,
        "size_sparse": 2048,
        "size_compacted": None,
        "latency": [
            {"model": "dense", "batch": 32, "median_ms": 2.0},
            {"model": "masked", "batch": 1, "median_ms": 0.5},
            {"model": "masked", "batch": 32, "median_ms": 1.9},
        ],
    }
    metrics = json.loads(json.dumps(metrics))  # as it comes back from the database
    assert AXES["sparsity"].value(metrics) == 0.8
    assert AXES["FLOPs"].value(metrics) == 1000
    assert deployed_bytes(metrics) == 2048  # no compacted model: the sparse encoding
    assert deployed_bytes({**metrics, "size_compacted": 1024}) == 1024
    assert latency_ms(metrics) == 1.9  # masked, batch 32
    compacted = {"model": "compacted", "batch": 32, "median_ms": 1.1}
    assert latency_ms({**metrics, "latency": [*metrics["latency"], compacted]}) == 1.1
    assert latency_ms({"accuracy": 0.9}) is None  # saved without latency
    assert AXES["latency"].value({}) is None


def test_figure_draws_every_point_and_marks_the_front():
    points = [
        Point("a", "lenet5", 0.5, 0.98),
        Point("b", "lenet5", 0.9, 0.95),
        Point("c", "lenet5", 0.4, 0.90),  # less sparse and less accurate than a
        Point("d", "lenet5", None, 0.99),  # nothing to draw it at
    ]
    fig = pareto_figure(points, AXES["sparsity"], dense={"lenet5": 0.99})
    markers = [t for t in fig.data if t.mode == "markers"]
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(markers) == 1 and len(markers[0].x) == 3
    assert list(markers[0].marker.symbol) == ["diamond", "diamond", "circle"]
    assert list(lines[0].x) == pytest.approx([50.0, 90.0])  # the front, by sparsity
    assert list(lines[0].y) == pytest.approx([98.0, 95.0])


def _saved(form: str, dense_ms: list[float], form_ms: list[float], **more: object) -> dict:
    """Metrics as a save stores them: the dense model and the deployable form, batch 32,
    timed in the same rounds (medians in ms, every round's sample)."""

    def row(model: str, samples: list[float]) -> dict:
        ordered = sorted(samples)
        return {
            "model": model,
            "batch": 32,
            "median_ms": ordered[len(ordered) // 2],
            "p25_ms": ordered[0],
            "p75_ms": ordered[-1],
            "repeats": len(samples),
            "threads": 2,
            "samples_ms": samples,
            "notes": [],
            "spread_ms": ordered[-1] - ordered[0],
        }

    rows = [row("dense", dense_ms), row(form, form_ms)]
    return json.loads(json.dumps({"params_total": 100, **more, "latency": rows}))


def test_the_speed_up_compares_plans_saved_at_different_times():
    # issue 18, item 5: a compacted plan saved while the machine was slow (its dense 1.91 ms)
    # shows more ms than a masked plan saved later (1.42 ms), yet it is the faster one
    compacted = _saved("compacted", [1.91, 1.92, 1.90], [1.50, 1.48, 1.49], params_compacted=40)
    masked = _saved("masked", [1.42, 1.41, 1.43], [1.42, 1.43, 1.41])
    assert latency_ms(compacted) > latency_ms(masked)  # milliseconds mislead across runs
    speed = latency_speed(compacted)
    assert speed.ratio == pytest.approx(1.91 / 1.49, rel=0.01) and not speed.same_kernels
    assert speed_up(speed) == pytest.approx(1.28, abs=0.01)
    assert latency_speed(masked).same_kernels and speed_up(latency_speed(masked)) == 1.0
    # a compacted model that lost no unit runs the dense kernels too
    unchanged = _saved("compacted", [1.0, 1.0, 1.0], [0.9, 0.9, 0.9], params_compacted=100)
    assert speed_up(latency_speed(unchanged)) == 1.0
    assert AXES["speed-up"].value(compacted) == speed_up(speed)
    # no dense timing stored (or none at all): no ratio, never one against another run
    alone = {"latency": [r for r in compacted["latency"] if r["model"] != "dense"]}
    assert latency_speed(alone) is None and latency_speed({}) is None
    assert speed_up(None) is None


def test_sizes_are_drawn_in_human_units():
    fig = pareto_figure([Point("a", "lenet5", 250_309.0, 0.98)], AXES["size"])
    assert fig.layout.xaxis.tickformat == "~s" and fig.layout.xaxis.ticksuffix == "B"
    assert "KiB" not in fig.layout.xaxis.title.text
    assert "%{x:.3~s}B" in fig.data[-1].hovertemplate  # 250kB, not 244.4 KiB
