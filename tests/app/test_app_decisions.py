"""The Decisions page through AppTest: its numbers are explorer's flips (the oracle), its
filters and sorting select the flips they say."""

from __future__ import annotations

import pytest

from explorer.engine.plan import PruningPlan
from explorer.inside.flips import filter_flips, flips_for_plan, sort_flips
from tests.app.test_app import assert_clean, metric, start


@pytest.fixture(scope="module")
def flips_at_80(lenet5_bench):
    return flips_for_plan(lenet5_bench, PruningPlan(amount=0.8))


@pytest.fixture(scope="module")
def lenet5_bench():
    from explorer.engine.workbench import open_workbench

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


def test_the_selected_flip_shows_both_maps_and_both_paths(flips_at_80, lenet5_bench):
    from explorer.inside.decision_paths import compare_paths

    at = start("decisions", model="lenet5", amount="0.8")
    first = sort_flips(flips_at_80.flips)[0]
    plan = PruningPlan(amount=0.8)
    state = lenet5_bench.resolve(plan)
    x = lenet5_bench.eval_set.images[first.index : first.index + 1]
    expected = compare_paths(
        lenet5_bench.model,
        lenet5_bench.pruner.pruned_model(state),
        state,
        x,
        first.dense_prediction,
        lenet5_bench.pruner.structure,
    )
    assert metric(at, "Dense path units kept") == f"{expected.total_survival:.0%}"
    assert metric(at, "Still on the path") == f"{expected.total_still_on_path:.0%}"
    assert metric(at, "Dense predicts") == str(first.dense_prediction)
    assert metric(at, "Pruned predicts") == str(first.pruned_prediction)
    # an expensive method waits for the button, then draws
    at.selectbox(key="dec_method").set_value("integrated").run()
    assert_clean(at)
    assert [b for b in at.button if b.label == "Compute Integrated Gradients"]
    assert "Rank correlation" not in [m.label for m in at.metric]
    at.button(key="dec_compute").click().run()
    assert_clean(at)
    assert "Rank correlation" in [m.label for m in at.metric]
    # any class can be explained
    at.selectbox(key="dec_target").set_value("other").run()
    at.selectbox(key="dec_target_class").set_value(3).run()
    assert_clean(at)


def test_units_by_class_lists_the_carriers_the_plan_cut():
    import numpy as np

    from explorer.engine.workbench import open_workbench
    from explorer.inside.decision_paths import class_unit_map, removed_units
    from explorer.recovery.jobs import balanced_indices

    bench = open_workbench("resnet_mini")
    at = start("decisions", model="resnet_mini", method="filters", amount="0.5")
    at.segmented_control(key="dec_view").set_value("Units × classes").run()
    assert_clean(at)
    layer = "block3.conv2"
    rows = at.dataframe[0].value
    chosen = balanced_indices(bench.eval_set.labels, 1000)
    matrix = class_unit_map(
        bench.model, bench.eval_set.images[chosen], bench.eval_set.labels[chosen], layer, 10
    )
    removed = removed_units(bench.resolve(PruningPlan(method="filters", amount=0.5)), {layer: 64})
    for c in range(10):
        carriers = np.flatnonzero(matrix[c] >= 0.5)
        cut = [u for u in carriers if removed[layer][u]]
        assert rows["carried by"][c] == (", ".join(map(str, carriers)) or "—")
        assert rows["cut by the plan"][c] == (", ".join(map(str, cut)) or "—")


def test_dynamic_pruning_reports_what_explorer_measures():
    from explorer.engine.workbench import open_workbench
    from explorer.inside.dynamic import dynamic_predict, gate_points
    from explorer.recovery.jobs import balanced_indices

    bench = open_workbench("lenet300")
    at = start("decisions", model="lenet300")
    at.segmented_control(key="dec_view").set_value("Dynamic pruning").run()
    at.slider(key="dec_dyn_keep").set_value(25).run()
    assert_clean(at)
    chosen = balanced_indices(bench.eval_set.labels, 2000)
    layers = ["fc1", "fc2"]
    result = dynamic_predict(
        bench.model,
        bench.eval_set.images[chosen],
        bench.eval_set.labels[chosen],
        0.25,
        layers,
        10,
        points=gate_points(bench.model, layers, bench.eval_set.input_shape),
    )
    assert metric(at, "Accuracy") == f"{result.accuracy:.2%}"
    assert metric(at, "Units computed") == "25%"
    assert metric(at, "Faster here") == "no"
    assert any("Nothing here runs faster" in i.value for i in at.info)
    # beside it, the same share of units removed for every input
    assert any(c.value.startswith("Dashed: the same share of units") for c in at.caption)


def test_saliency_agreement_curve_is_measured_on_request():
    at = start("saliency", model="lenet5", amount="0.8")
    assert_clean(at)
    assert not [c for c in at.caption if c.value.startswith("Lines: the means")]
    at.button(key="sal_agree_go").click().run()
    assert_clean(at)
    assert [c for c in at.caption if c.value.startswith("Lines: the means")]
    # an expensive method waits for its button on the Saliency page too
    at.selectbox(key="sal_method").set_value("occlusion").run()
    assert "Rank correlation" not in [m.label for m in at.metric]
    at.button(key="sal_compute").click().run()
    assert_clean(at)
    assert "Rank correlation" in [m.label for m in at.metric]


def test_a_vision_transformer_shows_its_heads_and_rollout():
    at = start("saliency", model="vit_tiny", method="heads", amount="0.5")
    assert_clean(at)
    assert metric(at, "Heads pruned") == "6 of 12"
    assert float(metric(at, "Rollout rank correlation")) < 1


def test_units_by_class_counts_a_vits_heads_and_the_heads_the_plan_removed():
    import numpy as np

    from explorer.engine.workbench import open_workbench
    from explorer.inside.decision_paths import class_unit_map, removed_units
    from explorer.recovery.jobs import balanced_indices

    bench = open_workbench("vit_tiny")
    at = start("decisions", model="vit_tiny", method="heads", amount="0.5")
    at.segmented_control(key="dec_view").set_value("Units × classes").run()
    column = "block2.attn:heads"
    layer_box = next(s for s in at.selectbox if s.label == "Layer")
    assert "block2.attn · 4 heads" in layer_box.options
    layer_box.set_value(column).run()
    at.slider(key="dec_cu_top_k").set_value(1).run()
    assert_clean(at)
    rows = at.dataframe[0].value
    chosen = balanced_indices(bench.eval_set.labels, 1000)
    data = bench.eval_set
    matrix = class_unit_map(bench.model, data.images[chosen], data.labels[chosen], column, 10, 1)
    state = bench.resolve(PruningPlan(method="heads", amount=0.5))
    removed = removed_units(state, {column: 4}, bench.pruner.structure.heads)[column]
    assert removed.sum() >= 1  # the plan takes heads out of this block
    for c in range(10):
        carriers = np.flatnonzero(matrix[c] >= 0.5)
        cut = [u for u in carriers if removed[u]]
        assert rows["carried by"][c] == (", ".join(map(str, carriers)) or "—")
        assert rows["cut by the plan"][c] == (", ".join(map(str, cut)) or "—")


def test_a_users_torchvision_model_and_images_get_every_decisions_view(tmp_path, monkeypatch):
    """A torchvision ResNet-18 (4 classes) and the user's own RGB images, from the command
    line: the flips are explorer's for that subject, a flip opens with both paths, and the
    other views run on it."""
    import numpy as np
    import torch
    import torchvision

    from explorer.app import ui
    from explorer.engine.workbench import open_workbench
    from tests.app.test_app import started_with

    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), weights)
    rng = np.random.default_rng(0)
    data = tmp_path / "photos.npz"
    images = rng.integers(0, 255, (80, 32, 32, 3), dtype=np.uint8)
    np.savez(data, images=images, labels=np.arange(80) % 4)
    argv = ("--model", "torchvision:resnet18", "--weights", str(weights), "--data", str(data))
    with started_with(monkeypatch, *argv):
        subject = ui.app_settings().subject
        at = start("decisions", method="filters", amount="0.5")
        assert_clean(at)
        assert not at.error, [e.value for e in at.error]
        flips = flips_for_plan(open_workbench(subject), PruningPlan(method="filters", amount=0.5))
        assert metric(at, "Predictions flipped") == f"{len(flips.flips):,}"
        assert flips.flips  # half the filters of a random network change some predictions
        assert at.dataframe[0].value["index"].tolist()[0] == sort_flips(flips.flips)[0].index
        # the first flip is open: both maps and both paths, for a residual network's units
        assert "Dense path units kept" in [m.label for m in at.metric]
        assert "Rank correlation" in [m.label for m in at.metric]
        for view in ("Units × classes", "Dynamic pruning"):
            at.segmented_control(key="dec_view").set_value(view).run()
            assert_clean(at)
            assert not at.error, [e.value for e in at.error]
        assert metric(at, "Faster here") == "no"
