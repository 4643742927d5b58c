"""Latency measurement: its bookkeeping (no timing assertions: the machine is shared)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explorer.engine.latency import (
    Latency,
    compare_speed,
    fixed_threads,
    measure_latency,
    same_architecture,
)
from explorer.zoo.models import lenet_300_100
from tests.unit.conftest import INPUT_SHAPE, seeded


def test_fixed_threads_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    with fixed_threads(1) as used:
        assert used == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with fixed_threads(None) as used:
        assert used == before


def test_fixed_threads_restores_after_an_error():
    before = torch.get_num_threads()
    try:
        with fixed_threads(1):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == before


def test_measure_latency_reports_every_model_and_batch_with_its_repeats():
    models = {"a": seeded(lenet_300_100), "b": seeded(lenet_300_100, seed=1)}
    results = measure_latency(models, INPUT_SHAPE, batch_sizes=(1, 8), repeats=6, warmup=1)
    assert [(r.model, r.batch) for r in results] == [("a", 1), ("b", 1), ("a", 8), ("b", 8)]
    for r in results:
        assert r.repeats == 6
        assert r.threads == torch.get_num_threads()
        assert 0 < r.p25_ms <= r.median_ms <= r.p75_ms
        assert r.spread_ms == r.p75_ms - r.p25_ms


def test_a_budget_stops_early_but_keeps_at_least_five_repeats():
    models = {"a": seeded(lenet_300_100)}
    (result,) = measure_latency(models, INPUT_SHAPE, (2,), repeats=50, warmup=0, budget_s=0.0)
    assert result.repeats == 5


def _timing(samples: list[float], model: str = "m") -> Latency:
    ordered = sorted(samples)
    return Latency(
        model,
        32,
        ordered[len(ordered) // 2],
        ordered[0],
        ordered[-1],
        len(samples),
        1,
        tuple(samples),
    )


def test_a_drifting_machine_does_not_make_identical_models_differ():
    # Both models slow down together (another process took the cores mid-way): the medians
    # of the two differ by 2x by chance of which runs fell in the slow spell, but paired
    # per-round ratios stay near 1, so no speed-up is claimed.
    dense = _timing([10, 10, 10, 10, 20, 20, 20, 20, 20])
    other = _timing([10, 10, 10, 10, 10, 20, 20, 20, 20])
    speed = compare_speed(dense, other)
    assert speed.same_speed and speed.summary() == "same speed (within noise)"


def test_a_clear_speed_up_is_claimed_with_its_ratio():
    dense = _timing([10.0, 10.2, 9.9, 10.1, 10.0, 10.3])
    small = _timing([4.0, 4.1, 3.9, 4.0, 4.05, 4.1])
    speed = compare_speed(dense, small)
    assert not speed.same_speed
    assert speed.ratio == pytest.approx(2.5, rel=0.03)
    assert speed.summary() == f"{speed.ratio:.2f}x faster"
    assert compare_speed(small, dense).summary().endswith("x slower")


def test_same_kernels_are_the_same_speed_whatever_was_measured():
    dense = _timing([10.0, 10.2, 9.9, 10.1])
    masked = _timing([7.0, 7.1, 6.9, 7.0])  # a lucky measurement
    speed = compare_speed(dense, masked, same_kernels=True)
    assert speed.same_speed and speed.summary() == "same speed (same kernels)"


def test_same_architecture_compares_modules_and_shapes_not_values():
    a, b = seeded(lenet_300_100), seeded(lenet_300_100, seed=1)
    assert same_architecture(a, b)
    b.fc1 = nn.Linear(784, 299)
    assert not same_architecture(a, b)


def test_measurements_keep_paired_samples_in_alternating_order():
    calls: list[str] = []

    class Recorder(nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name, self.layer = name, nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(self.name)
            return self.layer(x.flatten(1)[:, :4])

    models = {"a": Recorder("a"), "b": Recorder("b")}
    results = measure_latency(models, (4,), (1,), repeats=4, warmup=0, deploy=False)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert all(len(r.samples_ms) == 4 for r in results)
