"""The headline metrics as plain data: quality of a (partial) evaluation, footprint, latency
verdict; each against hand-computed values or an independent computation."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from explorer.engine.compaction import compact
from explorer.engine.cost import size_report
from explorer.engine.evaluation import EvalResult, IncrementalEvaluator, IncrementalResult, evaluate
from explorer.engine.latency import Latency, compare_speed
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.engine.summary import (
    Quality,
    against_dense,
    flipped_estimate,
    human_bytes,
    latency_verdict,
    progressive,
    runs_dense_kernels,
    short_count,
    short_flops,
    three_digits,
    time_side_by_side,
    timings_from_rows,
)
from explorer.engine.workbench import Workbench
from explorer.zoo.models import get_spec, load_model
from tests.unit.conftest import seeded

# --- quality ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changed", "covered", "total", "expected"),
    [
        (3, 100, 1000, 30),
        (1, 3, 10, 3),  # 3.33 rounds down
        (2, 3, 10, 7),  # 6.67 rounds up
        (0, 50, 1000, 0),
        (17, 1000, 1000, 17),  # complete: exact
    ],
)
def test_flipped_estimate_scales_the_preview_by_hand(changed, covered, total, expected):
    assert flipped_estimate(changed, covered, total) == expected


@pytest.mark.parametrize(("covered", "total"), [(0, 10), (11, 10)])
def test_flipped_estimate_refuses_an_impossible_coverage(covered, total):
    with pytest.raises(ValueError, match="covered"):
        flipped_estimate(0, covered, total)


def test_quality_of_every_step_matches_the_models_on_the_covered_samples(eval_set, calibration):
    dense_model = load_model("lenet300")
    data = eval_set.subset(range(300))
    pruner = Pruner(dense_model, data.input_shape, calibration)
    plan = PruningPlan(amount=0.9)
    evaluator = IncrementalEvaluator(dense_model, data, batch_size=100, first_chunk_s=None)
    steps = list(evaluator.steps_for_state(pruner.resolve(plan)))
    assert [step.covered for step in steps] == [100, 200, 300]  # three strided chunks
    masked = pruner.pruned_model(plan)
    for step in steps:
        quality = Quality.of(step)
        seen = data.subset(step.samples)
        pruned, dense = evaluate(masked, seen), evaluate(dense_model, seen)
        changed = int((pruned.predictions != dense.predictions).sum())
        assert quality.accuracy == pytest.approx(pruned.accuracy)
        assert quality.dense_accuracy == pytest.approx(dense.accuracy)
        assert quality.loss == pytest.approx(pruned.loss, rel=1e-5)
        assert quality.dense_loss == pytest.approx(dense.loss, rel=1e-5)
        assert (quality.changed, quality.covered, quality.total) == (changed, step.covered, 300)
        assert quality.flipped == round(changed * 300 / step.covered)
        assert quality.complete == (step.covered == 300)
        assert quality.interval == step.accuracy_interval() and quality.finite
    low, high = Quality.of(steps[0]).interval
    assert low < Quality.of(steps[0]).accuracy < high  # a preview: a real interval
    final = Quality.of(steps[-1])
    assert final.interval == pytest.approx((final.accuracy, final.accuracy))  # complete: a point
    assert final.flipped == final.changed


def _step(covered: int, total: int = 4) -> IncrementalResult:
    """A stand-in evaluation step covering the first ``covered`` of ``total`` samples."""
    labels = torch.zeros(covered, dtype=torch.int64)
    result = EvalResult(1.0, 0.0, labels, labels, 10)
    return IncrementalResult(result, result, torch.zeros(0), torch.arange(covered), total, 0, 1)


def test_progressive_shows_a_fast_pass_once_complete():
    clock = iter([0.01, 0.02, 0.03])  # every chunk done before the preview is due
    shown = list(progressive([_step(n) for n in (1, 2, 3, 4)], 0.0, 0.12, lambda: next(clock)))
    assert [step.covered for step in shown] == [4]


def test_progressive_previews_every_chunk_of_a_slow_pass_after_the_delay():
    clock = iter([0.05, 0.2, 0.3])  # the first chunk came early, the second late
    shown = list(progressive([_step(n) for n in (1, 2, 3, 4)], 0.0, 0.12, lambda: next(clock)))
    assert [step.covered for step in shown] == [2, 3, 4]


def test_progressive_with_no_delay_shows_every_step():
    shown = list(progressive([_step(n) for n in (1, 2, 3, 4)], 0.0, 0.0))
    assert [step.covered for step in shown] == [1, 2, 3, 4]


# --- footprint ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(eval_set, calibration) -> Workbench:
    return Workbench("lenet5", load_model("lenet5"), eval_set.subset(range(64)), calibration)


def test_an_unstructured_footprint_is_masked_with_the_dense_kernels(bench):
    state = bench.resolve(PruningPlan(amount=0.7))
    footprint = bench.footprint(state)
    assert footprint.compacted is None and footprint.same_kernels
    assert footprint.sizes == size_report(bench.model, state)
    assert footprint.deployed_bytes == footprint.sizes.sparse < footprint.sizes.dense


def test_a_compacted_footprint_has_its_own_kernels_and_bytes(bench):
    plan = PruningPlan(method="filters", amount=0.5)
    state = bench.resolve(plan)
    footprint = bench.footprint(state)
    small = compact(bench.pruner, plan)
    assert [p.shape for p in footprint.compacted.parameters()] == [
        p.shape for p in small.parameters()
    ]
    assert not footprint.same_kernels
    assert footprint.sizes == size_report(bench.model, state, small)
    assert footprint.deployed_bytes == footprint.sizes.compacted < footprint.sizes.dense


def test_a_compacted_model_that_lost_nothing_runs_the_dense_kernels(bench):
    footprint = bench.footprint(bench.resolve(PruningPlan(method="filters", amount=0.0)))
    assert footprint.compacted is not None and footprint.same_kernels


def test_runs_dense_kernels_by_architecture(bench):
    assert runs_dense_kernels(None, bench.model)
    assert runs_dense_kernels(seeded(get_spec("lenet5").build), bench.model)  # other values
    assert not runs_dense_kernels(load_model("lenet300"), bench.model)


# --- latency verdict ----------------------------------------------------------------------------


def _timing(model: str, batch: int, samples: list[float]) -> Latency:
    ordered = sorted(samples)
    return Latency(model, batch, ordered[1], ordered[0], ordered[-1], len(samples), 1, (*samples,))


def _timings(compacted: bool) -> list[Latency]:
    timings = [
        _timing("dense", 1, [1.0, 1.0, 1.0, 1.0]),
        _timing("masked", 1, [1.0, 1.1, 0.9, 1.0]),
        _timing("dense", 32, [10.0, 10.0, 10.0, 10.0]),
        _timing("masked", 32, [10.0, 10.0, 10.0, 10.0]),
    ]
    if compacted:
        timings += [_timing("compacted", 1, [0.5] * 4), _timing("compacted", 32, [4.0] * 4)]
    return timings


def test_the_verdict_times_the_compacted_model_when_there_is_one():
    timings = _timings(compacted=True)
    verdict = latency_verdict(timings, same_kernels=False)
    assert (verdict.form, verdict.dense.model, verdict.timed.model) == (
        "compacted",
        "dense",
        "compacted",
    )
    assert verdict.dense.batch == verdict.timed.batch == 32
    assert verdict.speed.ratio == pytest.approx(2.5)  # 10 ms / 4 ms in every round
    assert verdict.speed.summary() == "2.50x faster" and not verdict.speed.same_speed


def test_the_verdict_of_a_masked_model_is_the_same_speed_by_construction():
    verdict = latency_verdict(_timings(compacted=False), same_kernels=True)
    assert verdict.form == "masked" and verdict.timed.median_ms == 10.0
    assert verdict.speed.same_speed and verdict.speed.summary() == "same speed (same kernels)"


def test_the_verdict_needs_a_dense_timing():
    with pytest.raises(ValueError, match="dense timing at batch 32"):
        latency_verdict([_timing("masked", 32, [1.0, 1.0])], same_kernels=True)


def test_every_timing_is_compared_with_dense_at_its_batch():
    timings = _timings(compacted=True)
    rows = against_dense(timings, same_kernels=False)
    assert [t for t, _ in rows] == timings
    dense = {t.batch: t for t in timings if t.model == "dense"}
    for timing, speed in rows:
        if timing.model == "dense":
            assert speed is None
        elif timing.model == "masked":  # dense kernels on zeros: never faster, by construction
            assert speed == compare_speed(dense[timing.batch], timing, same_kernels=True)
            assert speed.summary() == "same speed (same kernels)"
        else:
            assert speed == compare_speed(dense[timing.batch], timing)
    ratios = {(t.model, t.batch): s.ratio for t, s in rows if s is not None}
    assert ratios[("compacted", 1)] == pytest.approx(2.0)
    assert ratios[("compacted", 32)] == pytest.approx(2.5)


# --- tile text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0"), (9_999, "9,999"), (10_000, "10.0k"), (121_500, "121.5k"), (12_345_678, "12.35M")],
)
def test_short_count_by_hand(n, text):
    assert short_count(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (999, "999"),
        (1_000, "1.00 k"),
        (833_000, "833.0 k"),
        (20_160_000, "20.16 M"),
        (1_820_000_000, "1.82 G"),
        (182_000_000_000, "182.0 G"),
    ],
)
def test_short_flops_by_hand(n, text):
    assert short_flops(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (812, "812 B"),
        (1_000, "1 KB"),
        (25_029, "25 KB"),
        (353_119, "353.1 KB"),
        (999_960, "1 MB"),  # rounds up into the next unit, never "1000 KB"
        (27_031 * 1024, "27.7 MB"),  # the "27,031 KiB" of a 26-MiB model (issue 18, item 16)
        (1_400_000_000, "1.4 GB"),
    ],
)
def test_human_bytes_by_hand(n, text):
    assert human_bytes(n) == text


# --- latency as an experiment stores it, and timed side by side --------------------------------


def test_stored_latency_rows_read_back_as_the_timings_they_were():
    timings = _timings(compacted=True)
    rows = [{**asdict(t), "spread_ms": t.spread_ms} for t in timings]
    rows[0]["samples_ms"] = list(rows[0]["samples_ms"])  # as JSON gives them back
    assert timings_from_rows([*rows, "not a row", {"model": "dense"}]) == timings


def test_plans_timed_side_by_side_share_every_round_with_dense(bench):
    plans = {
        "masked": PruningPlan(amount=0.7),
        "small": PruningPlan(method="filters", amount=0.5),
    }
    timing = time_side_by_side(bench, plans, batch=4, repeats=6)
    assert set(timing.timed) == set(plans) and timing.dense.model == "dense"
    for key, timed in timing.timed.items():
        # one measurement: as many rounds as dense, so the ratios pair run i with run i
        assert timed.batch == timing.dense.batch == 4
        assert len(timed.samples_ms) == len(timing.dense.samples_ms) == 6
        assert timing.speed[key] == compare_speed(
            timing.dense, timed, timing.speed[key].same_kernels
        )
    assert timing.speed["masked"].same_kernels  # masked: the dense kernels
    assert not timing.speed["small"].same_kernels  # compacted: smaller kernels
    with pytest.raises(ValueError, match="dense"):
        time_side_by_side(bench, {"dense": PruningPlan()})


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (7.0, "7.00"),
        (7.004, "7.00"),
        (1.114, "1.11"),
        (12.34, "12.3"),
        (143.2, "143"),
        (1234.5, "1,234"),
    ],
)
def test_a_measured_value_keeps_three_significant_digits_with_its_trailing_zeros(value, shown):
    assert three_digits(value) == shown
