"""Messages name a setting the way their reader can change it, and a slider says what its
amount counts."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.engine.methods import get_method, plan_label, short_plan_label
from explorer.engine.plan import PruningPlan
from explorer.loading.errors import LoadError
from explorer.loading.options import allow, option, read_by, reader
from tests.unit.test_loading_data import load, write_npz


def test_a_setting_is_a_flag_on_the_command_line_and_a_field_in_the_app():
    assert reader() == "cli" and option("mean") == "--mean"
    with read_by("app"):
        assert reader() == "app" and option("mean") == "Preprocessing › Mean and std (custom)"
        # an operator's setting: a visitor is told the operator must restart the app
        assert option("trust_pickle") == "--trust-pickle"
        assert allow("trust_pickle") == "the operator must restart the app with --trust-pickle"
    assert allow("trust_pickle") == "run with --trust-pickle" and reader() == "cli"
    with pytest.raises(ValueError, match="unknown reader"), read_by("browser"):
        pass
    with pytest.raises(ValueError, match="unknown option"):
        option("colour")


def test_a_loader_message_names_what_its_reader_can_change(tmp_path):
    images = np.zeros((20, 3, 6, 6), np.uint8)
    images[:, 0] = 9
    path = write_npz(tmp_path / "d.npz", images=images, labels=np.repeat([0, 1], 10))
    for who, named in (("cli", "--channels"), ("app", "Preprocessing › Channels")):
        with read_by(who), pytest.raises(LoadError) as caught:
            load(path, mean=(0.5, 0.5), std=(0.2, 0.2))  # two values for three channels
        assert named in str(caught.value)


@pytest.mark.parametrize(
    ("method", "slider", "phrase"),
    [
        ("unstructured", "Weights pruned (%)", "70% weights pruned"),
        ("filters", "Filters / neurons removed (%)", "70% filters / neurons removed"),
        ("channels", "Input channels removed (%)", "70% input channels removed"),
        ("heads", "Heads removed (%)", "70% heads removed"),
    ],
)
def test_a_slider_says_what_its_amount_counts(method, slider, phrase):
    found = get_method(method)
    assert found.amount_label() == slider
    assert found.amount_label("conv1").startswith("conv1 · ")
    assert found.amount_phrase(0.7) == phrase
    assert phrase in plan_label(PruningPlan(method=method, amount=0.7))
    assert short_plan_label(PruningPlan(method=method, amount=0.7)).startswith(
        f"70% {found.amount_counts}"
    )
