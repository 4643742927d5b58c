"""A timm model through the app's "Bring your own" section: checked on the user's images with
the dense accuracy the original model gives (the oracle), and a clear message without timm."""

from __future__ import annotations

import io
import sys

import pytest

from tests.app.test_app import assert_clean, metric, start

timm = pytest.importorskip("timm")


def _rgb_npz(count: int = 80, classes: int = 4) -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    images = rng.integers(0, 255, (count, 32, 32, 3), dtype=np.uint8)
    np.savez(buffer, images=images, labels=np.arange(count) % classes)
    return buffer.getvalue()


def test_a_timm_architecture_with_weights_is_checked_on_the_users_images(tmp_path, monkeypatch):
    import torch

    from explorer.engine.evaluation import evaluate
    from explorer.engine.subject import DataSpec
    from explorer.loading.data import load_data
    from explorer.loading.store import default_store

    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path))
    torch.manual_seed(0)
    original = timm.create_model("resnet18", num_classes=4).eval()
    weights = io.BytesIO()
    torch.save(original.state_dict(), weights)
    data = _rgb_npz()

    at = start("home", model="lenet5")
    at.radio(key="byo_kind").set_value("timm").run()
    at.text_input(key="byo_timm_name").set_value("resnet18").run()
    at.file_uploader(key="byo_timm_weights").upload(
        "r18.pt", weights.getvalue(), "application/octet-stream"
    )
    at.radio(key="byo_data_kind").set_value("upload").run()
    at.file_uploader(key="byo_data").upload("photos.npz", data, "application/octet-stream")
    at.run()
    at.selectbox(key="byo_size_from").set_value("custom").run()
    at.number_input(key="byo_size").set_value(64).run()
    at.button(key="byo_check").click().run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    # The oracle: the original model on the same held-out part at 64 px, normalised as timm
    # declares (ImageNet mean and std).
    preprocessing = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    spec = DataSpec(default_store().put(data, ".npz"), size=(64, 64))
    held_out = load_data(spec, preprocessing=preprocessing).eval
    # the current model's card shows its accuracy first; the candidate's comes last
    accuracies = [m.value for m in at.metric if m.label == "Eval accuracy"]
    assert accuracies[-1] == f"{evaluate(original, held_out).accuracy:.2%}"
    assert metric(at, "Input") == "3×64×64"
    assert [m.value for m in at.metric if m.label == "Classes"][-1] == "4"
    at.button(key="byo_use").click().run()
    assert_clean(at)
    subject = at.session_state["model"]
    assert str(subject.model) == "timm:resnet18" and subject.weights.startswith("sha256:")
    assert at.query_params["model"] == "timm:resnet18"


def test_without_timm_the_choice_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if it were not installed
    at = start("home", model="lenet5")
    at.radio(key="byo_kind").set_value("timm").run()
    assert_clean(at)
    assert any("pip install -e '.[timm]'" in i.value for i in at.info)
    assert at.button(key="byo_check").disabled


def test_a_timm_model_from_the_command_line_gets_explorers_flips(tmp_path, monkeypatch):
    """As the torchvision one in test_app_decisions: the operator starts the app on a timm
    ResNet-18 (4 classes) and RGB images; the Decisions page shows explorer's flips."""
    import torch

    from explorer.app import ui
    from explorer.engine.plan import PruningPlan
    from explorer.engine.workbench import open_workbench
    from explorer.inside.flips import flips_for_plan, sort_flips
    from tests.app.test_app import started_with

    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    weights = tmp_path / "r18.pt"
    torch.save(timm.create_model("resnet18", num_classes=4).state_dict(), weights)
    data = tmp_path / "photos.npz"
    data.write_bytes(_rgb_npz())
    argv = ("--model", "timm:resnet18", "--weights", str(weights), "--data", str(data))
    with started_with(monkeypatch, *argv, "--size", "64"):
        subject = ui.app_settings().subject
        assert str(subject.model) == "timm:resnet18"
        at = start("decisions", method="filters", amount="0.5")
        assert_clean(at)
        assert not at.error, [e.value for e in at.error]
        flips = flips_for_plan(open_workbench(subject), PruningPlan(method="filters", amount=0.5))
        assert metric(at, "Predictions flipped") == f"{len(flips.flips):,}"
        assert flips.flips  # half the filters of a random network change some predictions
        assert at.dataframe[0].value["index"].tolist()[0] == sort_flips(flips.flips)[0].index
