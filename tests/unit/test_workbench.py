"""The workbench report: every number it shows, recomputed independently."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from explorer.engine.compaction import compact
from explorer.engine.evaluation import evaluate
from explorer.engine.inspection import model_flops
from explorer.engine.plan import PruningPlan
from explorer.engine.workbench import Workbench
from explorer.zoo.models import load_model
from tests.unit.conftest import INPUT_SHAPE, assert_unchanged, snapshot


@pytest.fixture(scope="module")
def bench(eval_set, calibration) -> Workbench:
    model = load_model("resnet_mini")
    return Workbench("resnet_mini", model, eval_set.subset(range(200)), calibration)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def test_structured_report_matches_independent_computations(bench):
    before = snapshot(bench.model)
    plan = PruningPlan(method="filters", criterion="taylor", amount=0.4)
    report = bench.report(plan)
    pruner = bench.pruner
    masked = pruner.pruned_model(plan)
    small = compact(pruner, plan)
    dense = evaluate(bench.model, bench.eval_set)
    result = evaluate(masked, bench.eval_set)

    assert report.plan == plan.to_dict()
    assert report.accuracy == result.accuracy
    assert report.dense_accuracy == dense.accuracy
    assert report.accuracy_delta == pytest.approx(result.accuracy - dense.accuracy)
    assert report.changed == int((result.predictions != dense.predictions).sum())
    assert report.eval_samples == 200
    assert report.params_total == n_params(bench.model)
    assert report.params_nonzero == nonzero(masked)
    assert report.params_compacted == n_params(small) < report.params_total
    assert report.flops_dense == model_flops(bench.model, INPUT_SHAPE)
    assert report.flops_compacted == model_flops(small, INPUT_SHAPE) < report.flops_dense
    assert report.size_compacted is not None and report.size_compacted < report.size_dense
    units = {u["name"]: u["pruned"] for u in report.units}
    state = pruner.resolve(plan)
    assert units == state.pruned
    total = sum(u.size for u in state.units)
    assert sum(units.values()) == round(0.4 * total)
    json.dumps(report.to_dict())  # plain data, ready for --json
    assert_unchanged(bench.model, before)


def test_unstructured_report_has_no_compacted_model_and_warns_at_100_percent(bench):
    # The evaluator now holds the stage inputs of a plan that changed nothing before fc.
    bench.evaluate(PruningPlan(scope="layer", unit_amounts=(("fc", 0.5),)))
    plan = PruningPlan(scope="layer", unit_amounts=(("fc", 1.0),))
    report = bench.report(plan)
    assert report.params_compacted is None and report.flops_compacted is None
    assert report.size_compacted is None
    assert any(w.startswith("fc is pruned 100%") for w in report.warnings)
    fc = next(layer for layer in report.layers if layer["name"] == "fc")
    assert fc["nonzero"] == 0 and fc["sparsity"] == 1.0
    # Only the classifier changed, so evaluation resumed at the last stage (fc is stage 6).
    assert report.resumed_from_stage == 6
    # With a zero classifier every logit is the bias: the prediction is its argmax.
    fc_bias = bench.model.fc.bias.detach()
    expected = (bench.eval_set.labels == fc_bias.argmax()).float().mean()
    assert report.accuracy == pytest.approx(float(expected))


def test_latency_rows_are_reported_for_each_model_and_batch(bench):
    plan = PruningPlan(method="filters", amount=0.5)
    report = bench.report(plan, latency=True, latency_repeats=3, batch_sizes=(1, 4), threads=1)
    rows = {(row["model"], row["batch"]): row for row in report.latency}
    assert set(rows) == {(m, b) for m in ("dense", "masked", "compacted") for b in (1, 4)}
    for row in rows.values():
        assert row["repeats"] == 3 and row["threads"] == 1
        assert row["p25_ms"] <= row["median_ms"] <= row["p75_ms"]
        assert row["spread_ms"] == pytest.approx(row["p75_ms"] - row["p25_ms"])


def test_latency_is_timed_once_per_architecture_and_a_disturbed_one_a_few_times(
    eval_set, calibration, monkeypatch
):
    from explorer.engine.latency import Latency
    from explorer.engine.workbench import RETIME_ATTEMPTS

    bench = Workbench("lenet300", load_model("lenet300"), eval_set.subset(range(50)), calibration)
    spreads = iter([0.9, 0.7, 0.8, 0.1])  # IQR / median of successive timings
    calls = []

    def fake_latency(state, compacted=None, **options):
        spread = next(spreads)
        calls.append(spread)
        return [Latency(m, 32, 1.0, 1.0 - spread / 2, 1.0 + spread / 2, 12, 2) for m in "dm"]

    monkeypatch.setattr(bench, "latency", fake_latency)
    masked = [bench.resolve(PruningPlan(amount=a)) for a in (0.3, 0.6, 0.9, 0.2, 0.5)]
    # masked models all run the dense kernels: one architecture, whatever the amount
    results = [bench.latency_by_architecture(state) for state in masked]
    assert len(calls) == RETIME_ATTEMPTS == 3  # disturbed (spread > 50%): re-timed, 3 tries
    assert [cached for _, cached in results] == [False, False, False, True, True]
    kept = results[-1][0]
    assert kept[0].spread_ms == pytest.approx(0.7)  # the steadiest of the three is kept

    structured = bench.resolve(PruningPlan(method="filters", scope="layer", amount=0.5))
    timings, cached = bench.latency_by_architecture(structured)  # a new architecture
    assert not cached and timings[0].spread_ms == pytest.approx(0.1) and len(calls) == 4
    assert bench.latency_by_architecture(structured) == (timings, True)  # steady: reused
    assert len(calls) == 4


def test_a_users_torchvision_model_prunes_as_torch_nn_utils_prune_does(tmp_path, monkeypatch):
    """From the user's files to the numbers: the masks are torch's global L1 masks on the same
    weights, and the accuracy is that of the torch-pruned model evaluated directly."""
    import copy

    import numpy as np
    import torchvision
    from torch.nn.utils import prune

    from explorer.engine.evaluation import evaluate, predict
    from explorer.engine.subject import DataSpec, ModelSource, Subject
    from explorer.engine.workbench import open_workbench
    from explorer.loading.store import default_store

    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path))
    torch.manual_seed(0)
    network = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    torch.save(network.state_dict(), tmp_path / "r18.pt")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (120, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "own.npz", images=images, labels=np.arange(120) % 4)
    subject = Subject(
        ModelSource.parse("torchvision:resnet18"),
        default_store().register(tmp_path / "r18.pt"),
        DataSpec(str(tmp_path / "own.npz")),
    )
    bench = open_workbench(subject)
    plan = PruningPlan(amount=0.4)
    state, result, _ = bench.evaluate(plan)
    oracle = copy.deepcopy(network)
    layers = [
        (name, m)
        for name, m in oracle.named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    prune.global_unstructured(
        [(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured, amount=0.4
    )
    for name, module in layers:
        assert torch.equal(state.masks[f"{name}.weight"], module.weight_mask), name
    direct = evaluate(oracle, bench.eval_set)
    logits = bench.evaluator.evaluate_state(state).logits
    reference = predict(oracle, bench.eval_set.images)
    assert torch.allclose(logits, reference, rtol=0, atol=1e-4)  # channels_last rounding only
    top2 = reference.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3  # no near-tie a rounding could flip
    assert torch.equal(result.predictions[clear], direct.predictions[clear])
    assert clear.float().mean() > 0.9
    assert result.accuracy == pytest.approx(direct.accuracy, abs=(~clear).sum().item() / len(clear))
