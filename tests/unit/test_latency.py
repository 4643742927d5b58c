"""Latency measurement: its bookkeeping (no timing assertions: the machine is shared)."""

from __future__ import annotations

import torch

from explorer.latency import fixed_threads, measure_latency
from explorer.models import lenet_300_100
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
