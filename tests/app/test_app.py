"""The app driven through Streamlit's AppTest: every page renders, and what the widgets show
agrees with ``explorer`` evaluated directly (the oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.plan import PruningPlan
from explorer.workbench import open_workbench

ROOT = Path(__file__).resolve().parents[2]
PAGES_DIR = "pages"
PAGES = ("home", "prune", "weights", "activations", "saliency")
TIMEOUT = 120


@pytest.fixture(scope="module")
def lenet5():
    return open_workbench("lenet5")


def start(page: str = "home", **query: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params.update(query)
    at.run()
    if page != "home":
        at.switch_page(f"{PAGES_DIR}/{page}.py").run()
    return at


def keyed(widgets, prefix: str):
    """The widget whose key starts with ``prefix`` (per-layer keys carry a plan version)."""
    matches = [w for w in widgets if w.key and w.key.startswith(prefix)]
    assert len(matches) == 1, [w.key for w in widgets]
    return matches[0]


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def expected_accuracy(bench, plan: PruningPlan) -> str:
    return f"{bench.evaluate(plan)[1].accuracy:.2%}"


def assert_clean(at: AppTest) -> None:
    """No exception, and no unexpected error caught by the pages' last line of defence."""
    assert not at.exception, [e.value for e in at.exception]
    crashes = [e.value for e in at.error if e.value.startswith("Something went wrong")]
    assert not crashes, crashes


@pytest.mark.parametrize("model", ["lenet300", "lenet5", "resnet_mini", "vit_tiny"])
@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_exception(page, model):
    method = {"resnet_mini": "filters", "vit_tiny": "heads"}.get(model, "unstructured")
    at = start(page, model=model, method=method, amount="0.5")
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert at.title, f"{page} shows no title"


def test_global_slider_changes_accuracy_as_explorer_says(lenet5):
    at = start("prune", model="lenet5")
    assert metric(at, "Accuracy") == expected_accuracy(lenet5, PruningPlan())
    at.slider(key="ctl_amount").set_value(90).run()
    assert_clean(at)
    plan = PruningPlan(amount=0.9)
    assert at.session_state["plan"] == plan
    assert metric(at, "Accuracy") == expected_accuracy(lenet5, plan)
    assert metric(at, "Accuracy") != expected_accuracy(lenet5, PruningPlan())
    assert at.query_params["amount"] == "0.9"


def test_a_previewed_evaluation_ends_with_the_exact_numbers(lenet5, monkeypatch):
    # Every pass takes the slow path: first chunk shown (marked ≈), per-layer sliders drawn
    # once in between, then the exact figures replace the preview in place.
    monkeypatch.setenv("PRUNING_EXPLORER_PREVIEW_AFTER_S", "0")
    at = start("prune", model="lenet5", amount="0.8")
    assert_clean(at)
    plan = PruningPlan(amount=0.8)
    assert metric(at, "Accuracy") == expected_accuracy(lenet5, plan)
    assert not any(m.value.startswith(("≈", "…")) for m in at.metric if m.label != "Latency")
    captions = [c.value for c in at.caption]
    assert any(c.startswith("Re-evaluated in") for c in captions)
    assert not any(c.startswith("Refining") for c in captions)
    layer_sliders = [s for s in at.slider if s.key and s.key.startswith("amount::")]
    assert len(layer_sliders) == 5  # drawn once: conv1, conv2, fc1, fc2, fc3
    at.slider(key="ctl_amount").set_value(60).run()
    assert_clean(at)
    assert metric(at, "Accuracy") == expected_accuracy(lenet5, PruningPlan(amount=0.6))


def test_layer_slider_overrides_one_layer(lenet5):
    at = start("prune", model="lenet5", amount="0.5", scope="layer")
    keyed(at.slider, "amount::lenet5::unstructured::fc1::").set_value(95).run()
    assert_clean(at)
    plan = PruningPlan(scope="layer", amount=0.5, layer_amounts=(("fc1", 0.95),))
    assert at.session_state["plan"] == plan
    assert metric(at, "Accuracy") == expected_accuracy(lenet5, plan)
    assert at.query_params["layers"] == "fc1:0.95"
    # Reset brings the layer back to the global amount.
    at.button(key="reset::lenet5::unstructured::fc1").click().run()
    assert at.session_state["plan"] == PruningPlan(scope="layer", amount=0.5)


def test_switching_method_and_scope(lenet5):
    at = start("prune", model="lenet5", amount="0.5")
    at.selectbox(key="ctl_method").set_value("filters").run()
    assert_clean(at)
    assert at.session_state["plan"].method == "filters"
    assert metric(at, "Accuracy") == expected_accuracy(
        lenet5, PruningPlan(method="filters", amount=0.5)
    )
    at.radio(key="ctl_scope").set_value("layer").run()
    plan = PruningPlan(method="filters", scope="layer", amount=0.5)
    assert at.session_state["plan"] == plan
    assert metric(at, "Accuracy") == expected_accuracy(lenet5, plan)


def test_locking_a_layer_dense(lenet5):
    at = start("prune", model="lenet5", amount="0.8")
    keyed(at.checkbox, "dense::lenet5::unstructured::fc1::").check().run()
    plan = PruningPlan(amount=0.8, dense_layers=("fc1",))
    assert at.session_state["plan"] == plan
    assert metric(at, "Accuracy") == expected_accuracy(lenet5, plan)


def test_full_layer_gives_a_warning_not_an_exception():
    at = start("prune", model="lenet5", scope="layer", layers="fc2:1")
    assert_clean(at)
    assert any("100%" in w.value for w in at.warning)


def test_malformed_plan_upload_is_an_error_element_and_keeps_the_plan():
    at = start("prune", model="lenet5", amount="0.3")
    before = at.session_state["plan"]
    at.file_uploader(key="plan_upload").upload("bad.json", b"{not json", "application/json")
    at.run()
    assert_clean(at)
    assert any("not a usable plan" in e.value for e in at.error)
    assert at.session_state["plan"] == before


def test_valid_plan_upload_is_adopted():
    at = start("prune", model="lenet5")
    plan = PruningPlan(method="filters", scope="layer", amount=0.25)
    at.file_uploader(key="plan_upload").upload(
        "p.json", plan.to_json().encode(), "application/json"
    )
    at.run()
    assert_clean(at)
    assert at.session_state["plan"] == plan


def test_link_with_unknown_layer_falls_back_with_a_message():
    at = start("home", model="lenet5", amount="0.4", layers="nosuch:0.5")
    assert_clean(at)
    assert any("nosuch" in w.value for w in at.warning)
    assert at.session_state["plan"] == PruningPlan()


def test_link_with_unknown_model_falls_back_with_a_message():
    at = start("home", model="resnet9000")
    assert_clean(at)
    assert any("resnet9000" in w.value for w in at.warning)
    assert at.session_state["model"] == "lenet5"


def test_link_reopens_the_same_state():
    plan = PruningPlan(
        method="filters",
        scope="layer",
        amount=0.3,
        layer_amounts=(("conv2", 0.5),),
        dense_layers=("fc1",),
    )
    query = {"model": "lenet5", **json.loads(json.dumps(plan.to_dict()))}
    from explorer.plan import plan_to_query

    at = start("prune", model="lenet5", **plan_to_query(plan))
    assert_clean(at)
    assert at.session_state["plan"] == plan
    assert query["model"] == at.session_state["model"]


def test_switching_model_keeps_what_applies():
    at = start("prune", model="lenet5", amount="0.5", layers="fc1:0.9")
    at.sidebar.selectbox(key="model_picker").set_value("lenet300").run()
    assert_clean(at)
    plan = at.session_state["plan"]
    assert at.session_state["model"] == "lenet300"
    assert plan.amount == 0.5 and dict(plan.layer_amounts) == {"fc1": 0.9}


def test_curve_points_agree_with_explorer(lenet5):
    at = start("prune", model="lenet5", amount="0.3")
    at.toggle(key="show_curve").set_value(True).run()
    assert_clean(at)
    (points,) = at.session_state["curve_points"].values()
    assert len(points) == 20
    assert points[0.0][1] == pytest.approx(lenet5.dense.accuracy)
    _, result, _ = lenet5.evaluate(PruningPlan(amount=0.5))
    assert points[0.5][1] == pytest.approx(result.accuracy)
    assert points[0.5][0] == pytest.approx(0.5, abs=1e-4)  # global 50% = 50% of weights
