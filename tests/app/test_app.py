"""The app driven through Streamlit's AppTest: every page renders, and what the widgets show
agrees with ``explorer`` evaluated directly (the oracle)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from explorer.app.pages import PAGES as APP_PAGES
from explorer.engine.plan import PruningPlan
from explorer.engine.subject import DataSpec, Subject
from explorer.engine.workbench import open_workbench
from explorer.zoo.models import weights_path

ROOT = Path(__file__).resolve().parents[2]
PAGES_DIR = "pages"
#: Every page of the app's own list; Recover and Compare render here too (their flows have
#: their own tests).
PAGES = tuple(page.name for page in APP_PAGES)
TIMEOUT = 120
LENET5 = Subject.bundled("lenet5").to_json()  # what the app's caches are keyed by


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
    keyed(at.slider, "amount::lenet5::fc1::").set_value(95).run()
    assert_clean(at)
    plan = PruningPlan(scope="layer", amount=0.5, unit_amounts=(("fc1", 0.95),))
    assert at.session_state["plan"] == plan
    assert metric(at, "Accuracy") == expected_accuracy(lenet5, plan)
    assert at.query_params["units"] == "fc1:0.95"
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
    keyed(at.checkbox, "dense::lenet5::fc1::").check().run()
    plan = PruningPlan(amount=0.8, dense_units=("fc1",))
    assert at.session_state["plan"] == plan
    assert metric(at, "Accuracy") == expected_accuracy(lenet5, plan)


def test_full_layer_gives_a_warning_not_an_exception():
    at = start("prune", model="lenet5", scope="layer", units="fc2:1")
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
    assert at.session_state["model"] == Subject.bundled("lenet5")


def test_link_reopens_the_same_state():
    plan = PruningPlan(
        method="filters",
        scope="layer",
        amount=0.3,
        unit_amounts=(("conv2", 0.5),),
        dense_units=("fc1",),
    )
    query = {"model": "lenet5", **json.loads(json.dumps(plan.to_dict()))}
    from explorer.engine.plan import plan_to_query

    at = start("prune", model="lenet5", **plan_to_query(plan))
    assert_clean(at)
    assert at.session_state["plan"] == plan
    assert Subject.bundled(query["model"]) == at.session_state["model"]


def test_switching_model_keeps_what_applies():
    at = start("prune", model="lenet5", amount="0.5", units="fc1:0.9")
    keyed(at.sidebar.selectbox, "model_picker::").set_value(Subject.bundled("lenet300")).run()
    assert_clean(at)
    plan = at.session_state["plan"]
    assert at.session_state["model"] == Subject.bundled("lenet300")
    assert plan.amount == 0.5 and dict(plan.unit_amounts) == {"fc1": 0.9}


def test_curve_points_agree_with_explorer(lenet5):
    at = start("prune", model="lenet5", amount="0.3")
    at.toggle(key="show_curve").set_value(True).run()
    assert_clean(at)
    (curve,) = at.session_state["curves"][LENET5].values()
    points = curve["points"]
    assert len(points) == 20
    assert points[0.0][1] == pytest.approx(lenet5.dense.accuracy)
    _, result, _ = lenet5.evaluate(PruningPlan(amount=0.5))
    assert points[0.5][1] == pytest.approx(result.accuracy)
    assert points[0.5][0] == pytest.approx(0.5, abs=1e-4)  # global 50% = 50% of weights


def test_sweeps_of_a_session_are_overlaid_with_their_labels(lenet5):
    # A teacher puts magnitude and random (a chosen seed) on one chart.
    at = start("prune", model="lenet5", amount="0.3")
    at.toggle(key="show_curve").set_value(True).run()
    at.selectbox(key="ctl_criterion").set_value("random").run()
    assert_clean(at)
    at.number_input(key="ctl_seed").set_value(7).run()
    assert_clean(at)
    assert at.session_state["plan"] == PruningPlan(criterion="random", amount=0.3, seed=7)
    curves = at.session_state["curves"][LENET5]
    labels = sorted(c["label"] for c in curves.values())
    assert labels == [
        "Unstructured (weights), random (seed 0), global",
        "Unstructured (weights), random (seed 7), global",
        "Unstructured (weights), weight magnitude, global",
    ]
    random7 = PruningPlan(criterion="random", seed=7)
    _, result, _ = lenet5.evaluate(random7.with_amount(0.5))
    (seven,) = [c for c in curves.values() if "seed 7" in c["label"]]
    assert seven["points"][0.5][1] == pytest.approx(result.accuracy)
    (picker,) = [m for m in at.multiselect if m.key.startswith("curve_pick::")]
    assert len(picker.value) == 2  # the two earlier sweeps are shown next to this one
    picker.unselect(picker.value[0]).run()
    assert_clean(at)
    (picker,) = [m for m in at.multiselect if m.key.startswith("curve_pick::")]
    assert len(picker.value) == 1


def test_a_shared_link_redraws_the_sweeps_of_the_chart(lenet5):
    # A teacher's "step 3": magnitude against random on one chart, sent as a link.
    at = start("prune", model="lenet5", amount="0.3")
    at.toggle(key="show_curve").set_value(True).run()
    at.selectbox(key="ctl_criterion").set_value("random").run()
    assert_clean(at)
    link = dict(at.query_params)
    assert link["sweeps"] == (
        "method=unstructured;criterion=random;scope=global~"
        "method=unstructured;criterion=magnitude;scope=global"
    )
    student = start(
        "prune",
        **{key: value[0] if isinstance(value, list) else value for key, value in link.items()},
    )
    assert_clean(student)
    assert student.toggle(key="show_curve").value
    curves = student.session_state["curves"][LENET5]
    assert sorted(c["label"] for c in curves.values()) == [
        "Unstructured (weights), random (seed 0), global",
        "Unstructured (weights), weight magnitude, global",
    ]
    (magnitude,) = [c for c in curves.values() if "magnitude" in c["label"]]
    _, result, _ = lenet5.evaluate(PruningPlan(amount=0.5))
    assert magnitude["points"][0.5][1] == pytest.approx(result.accuracy)
    (picker,) = [m for m in student.multiselect if m.key.startswith("curve_pick::")]
    assert len(picker.value) == 1  # the other sweep is on the chart, not only computed
    # Turning the chart off takes the sweeps out of the link.
    student.toggle(key="show_curve").set_value(False).run()
    assert "sweeps" not in student.query_params


def test_a_link_with_a_bad_sweep_says_so_and_keeps_the_plan():
    link = {"model": "lenet5", "amount": "0.3", "sweeps": "method=unstructured;criterion=psychic"}
    at = start("home", **link)
    assert_clean(at)
    assert at.session_state["plan"] == PruningPlan(amount=0.3)
    warnings = [w.value for w in at.warning]
    assert any("sweeps cannot be drawn" in w and "psychic" in w for w in warnings), warnings
    at.switch_page("pages/prune.py").run()
    assert_clean(at)
    assert not at.toggle(key="show_curve").value


def test_nm_keeps_the_users_scope_and_has_its_own_controls(lenet5):
    at = start("prune", model="lenet5", amount="0.5", scope="global")
    at.selectbox(key="ctl_method").set_value("nm").run()
    assert_clean(at)
    plan = at.session_state["plan"]
    assert plan.method == "nm" and plan.scope == "global"  # not silently layer-wise
    assert not [r for r in at.radio if r.key == "ctl_scope"]  # no scope shown for N:M
    assert "global" not in at.sidebar.caption[-1].value  # the summary says what applies
    assert "2:4 on every layer" in at.sidebar.caption[-1].value
    # The pattern is chosen in the page and fixes the sparsity; conv1 (25 inputs per output)
    # cannot take groups of 4 and says so.
    at.selectbox(key="ctl_pattern").set_value((1, 4)).run()
    assert_clean(at)
    plan = at.session_state["plan"]
    assert (plan.n, plan.m, plan.amount) == (1, 4, 0.75)
    state = lenet5.resolve(plan)
    assert state.pruned["conv1"] == 0
    assert state.pruned["fc1"] == 120 * 400 * 3 // 4  # 400 inputs per output: 100 groups of 4
    texts = " ".join(m.value for m in at.markdown)
    assert "dense: its 25 inputs per output do not divide into groups of 4" in texts
    keyed(at.checkbox, "switch::lenet5::fc1::").uncheck().run()
    assert_clean(at)
    assert "fc1" in at.session_state["plan"].dense_units
    at.toggle(key="ctl_pattern_on").set_value(False).run()
    assert at.session_state["plan"].amount == 0
    # Back to unstructured: the user's global scope is still the plan's.
    at.selectbox(key="ctl_method").set_value("unstructured").run()
    assert_clean(at)
    assert at.session_state["plan"].scope == "global"
    assert at.query_params["scope"] == "global"
    assert at.radio(key="ctl_scope").value == "global"


def test_an_unchanged_model_shows_no_change_not_a_red_zero():
    at = start("prune", model="lenet5")
    assert_clean(at)
    deltas = {m.label: m.delta for m in at.metric}
    assert deltas["Loss"] == "no change"
    assert deltas["Accuracy"] == "no change"


def test_latency_of_an_unpruned_structured_plan_claims_no_speed_up():
    # At 0% the compacted model is the dense one: whatever the timer says, it is not faster.
    at = start("prune", model="lenet5", method="filters", amount="0")
    assert_clean(at)
    (latency,) = [m for m in at.metric if m.label == "Latency"]
    assert latency.delta == "same speed (same kernels)"


def test_lock_controls_have_a_real_label():
    at = start("prune", model="lenet5", amount="0.5")
    locks = [c for c in at.checkbox if c.key and c.key.startswith("dense::")]
    assert len(locks) == 5
    assert all(c.label == "Lock" for c in locks)


def test_a_plan_upload_confirms_itself():
    at = start("prune", model="lenet5")
    plan = PruningPlan(amount=0.4)
    at.file_uploader(key="plan_upload").upload("mine.json", plan.to_json().encode(), "text/json")
    at.run()
    assert_clean(at)
    assert at.session_state["plan"] == plan
    assert any("Loaded mine.json" in s.value for s in at.success)


# --- bring your own model and data ------------------------------------------------------------


def _mnist_npz(count: int = 300) -> bytes:
    import io

    import numpy as np

    from explorer.zoo.mnist import mnist_pixels

    images, labels = mnist_pixels("eval")
    buffer = io.BytesIO()
    np.savez(buffer, images=images[:count], labels=labels[:count])
    return buffer.getvalue()


def _upload_own(at: AppTest, weights: bytes, data: bytes) -> AppTest:
    at.radio(key="byo_kind").set_value("bundled").run()
    at.selectbox(key="byo_bundled").set_value("lenet5").run()
    at.file_uploader(key="byo_zoo_weights").upload("init.pt", weights, "application/octet-stream")
    at.radio(key="byo_data_kind").set_value("upload").run()
    at.file_uploader(key="byo_data").upload("digits.npz", data, "application/octet-stream")
    at.run()
    return at.button(key="byo_check").click().run()


def test_own_weights_and_data_are_checked_then_become_the_subject(tmp_path, monkeypatch):
    import torch

    from explorer.engine.evaluation import evaluate
    from explorer.loading.data import load_data
    from explorer.loading.store import default_store
    from explorer.zoo.models import load_model

    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path))
    weights = weights_path("lenet5", "init").read_bytes()  # the untrained initial weights
    data = _mnist_npz()
    at = _upload_own(start("home", model="lenet5"), weights, data)
    assert_clean(at)
    # The oracle: the same weights on the same held-out part, evaluated directly with torch.
    store = default_store()
    spec_source = store.put(data, ".npz")  # the same bytes: the same store reference
    held_out = load_data(DataSpec(spec_source)).eval
    expected = evaluate(load_model("lenet5", "init"), held_out).accuracy
    assert f"{expected:.2%}" in [m.value for m in at.metric if m.label == "Eval accuracy"]
    at.button(key="byo_use").click().run()
    assert_clean(at)
    subject = at.session_state["model"]
    assert subject.model.ref == "lenet5" and subject.weights.startswith("sha256:")
    assert subject.data.source == spec_source
    assert at.query_params["weights"] == subject.weights  # a link names the weights by hash
    assert torch.equal(
        load_model("lenet5", "init").conv1.weight,
        torch.load(store.path(subject.weights), weights_only=True)["conv1.weight"],
    )
    # The Model & data page describes the user's subject, not the bundled model and data.
    text = " ".join(m.value for m in at.markdown)
    assert "MNIST" not in text and "Split once by class (seed 0)" in text
    warnings = [w.value for w in at.warning]
    assert not any("train.py" in w for w in warnings)  # these are the user's weights
    # untrained weights score about chance: said loudly, with what to check, once
    (chance,) = [w for w in warnings if "about chance for 10 classes" in w]
    assert f"{expected:.1%}" in chance and "weights: are they the trained ones" in chance
    # whole, not cut short, and the uploads by the names they were uploaded as, not hashes
    assert "lenet5 · weights init.pt · data digits.npz" in [c.value for c in at.sidebar.caption]
    at.switch_page("pages/prune.py").run()
    assert_clean(at)
    assert metric(at, "Accuracy") == f"{expected:.2%}"


def test_a_corrupt_upload_is_an_error_and_the_subject_stays(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path))
    weights = weights_path("lenet5").read_bytes()
    at = _upload_own(start("home", model="lenet5"), weights, b"PK\x03\x04 not really a zip")
    assert_clean(at)
    assert any("Not usable" in e.value for e in at.error), [e.value for e in at.error]
    assert at.session_state["model"] == Subject.bundled("lenet5")


@contextmanager
def started_with(monkeypatch, *argv: str) -> Iterator[None]:
    """The app as the operator started it: ``streamlit run app.py -- ARGV`` (settings re-read)."""
    import sys

    from explorer.app import ui

    monkeypatch.setattr(sys, "argv", ["app.py", *argv])
    ui.app_settings.clear()
    try:
        yield
    finally:
        ui.app_settings.clear()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--model", "lenet5", "--data", "/no/such/dir"), ("cannot be opened", "/no/such/dir")),
        (("--model", "lenet5", "--size", "huge"), ("cannot be used", "--size must be N or HxW")),
    ],
)
def test_a_bad_startup_model_says_why_and_shows_a_bundled_one(monkeypatch, argv, says):
    with started_with(monkeypatch, *argv):
        at = start("home")
        assert_clean(at)
        errors = [e.value for e in at.error]
        assert any(all(part in e for part in says) for e in errors), errors
        assert at.session_state["model"] == Subject.bundled("lenet5")


def test_the_app_reads_the_same_data_options_as_the_cli(tmp_path, monkeypatch):
    """`pruning-explorer app` hands its flags to the app's own parser: both must describe the
    same subject (preprocessing and split included)."""
    import numpy as np

    from explorer.app import ui
    from explorer.cli import main as cli

    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path / "home"))
    data = tmp_path / "digits.npz"
    np.savez(data, images=np.zeros((20, 8, 8), np.uint8), labels=np.arange(20) % 2)
    argv = ["app", "lenet5", "--data", str(data), "--size", "28x28", "--channels", "1"]
    argv += ["--mean", "0.5", "--std", "0.25", "--eval-fraction", "0.4", "--split-seed", "3"]
    args = cli.build_parser().parse_args(argv)
    command = cli.app_command(args)
    with started_with(monkeypatch, *command[command.index("--") + 1 :]):
        settings = ui.app_settings()
    assert settings.problem == ""
    assert settings.subject == cli.subject_from_args(args)
    assert settings.subject.data.size == (28, 28) and settings.subject.data.seed == 3
    assert settings.subject.data.mean == (0.5,) and settings.subject.data.eval_fraction == 0.4


def test_home_says_what_the_bundled_digits_become_for_a_model_fed_otherwise(tmp_path, monkeypatch):
    """MNIST is 28×28 grey; a torchvision model given --size 32 --channels 3 sees 32×32 RGB,
    and Home must not describe the digits as what this model is fed."""
    import torchvision

    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path / "home"))
    weights = tmp_path / "w.pt"
    torch.save(torchvision.models.squeezenet1_1(num_classes=10).state_dict(), weights)
    argv = ("--model", "torchvision:squeezenet1_1", "--weights", str(weights))
    with started_with(monkeypatch, *argv, "--size", "32", "--channels", "3"):
        at = start("home")
        assert_clean(at)
        text = " ".join(m.value for m in at.markdown)
        assert "28×28 grey, fed to this model as 32×32 with 3 channels" in text
    with started_with(monkeypatch):  # the bundled LeNet-5 is fed the digits as they are
        at = start("home")
    assert "28×28 grey. The" in " ".join(m.value for m in at.markdown)
