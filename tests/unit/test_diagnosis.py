"""A dense model at chance is said loudly, with the causes to check."""

from __future__ import annotations

import pytest

from explorer.engine.diagnosis import chance_warning, near_chance
from explorer.engine.evaluation import evaluate
from explorer.engine.subject import DataSpec, ModelSource, Subject
from explorer.zoo.models import load_model


def test_chance_bounds_by_hand():
    # 10 classes on 10,000 images: chance 10%, guessing spread 2·sqrt(0.09/10^4) = 0.6%,
    # the bound 10% + 10% of the remaining 90% = 19%
    assert near_chance(0.19, 10, 10_000) and not near_chance(0.20, 10, 10_000)
    # 2 classes on 100 images: chance 50%, spread 2·sqrt(0.25/100) = 10% > 5%: bound 60%
    assert near_chance(0.59, 2, 100) and not near_chance(0.61, 2, 100)


def test_untrained_weights_are_warned_about_and_trained_ones_are_not(eval_set):
    untrained = evaluate(load_model("lenet5", "init"), eval_set).accuracy
    trained = evaluate(load_model("lenet5"), eval_set).accuracy
    assert untrained < 0.2 < 0.9 < trained  # the oracle: what the two models really score
    mine = Subject(ModelSource("zoo", "lenet5"), "sha256:" + "0" * 64, DataSpec())
    text = chance_warning(untrained, eval_set, mine)
    assert text is not None and f"{untrained:.1%}" in text and "(10.0%)" in text
    for cause in ("weights: ", "preprocessing: ", "channels: ", "labels: "):
        assert cause in text
    assert "28×28" in text and "0, 1, 2, 3, 4, 5…" in text
    assert chance_warning(trained, eval_set, Subject.bundled("lenet5")) is None


def test_a_library_model_without_weights_is_told_it_is_random(eval_set):
    subject = Subject(ModelSource.parse("torchvision:resnet18"), None, DataSpec(size=(32, 32)))
    text = chance_warning(0.1, eval_set, subject)
    assert "none were given, so the model has its random initial weights" in text


@pytest.fixture(scope="module")
def eval_set():
    from explorer.zoo.mnist import load_dataset

    return load_dataset("mnist", "eval")


def test_the_cli_eval_of_untrained_weights_warns(capsys, tmp_path):
    from explorer.zoo.models import weights_path
    from tests.unit.test_cli import run

    code, out, _ = run(
        capsys, "eval", "lenet5", "--weights", str(weights_path("lenet5", "init")), "--no-latency"
    )
    assert code == 0
    assert "warning: The dense model scores" in out and "about chance for 10 classes" in out
    code, out, _ = run(capsys, "eval", "lenet5", "--no-latency")
    assert code == 0 and "about chance" not in out


def test_a_preview_is_said_as_one(eval_set):
    text = chance_warning(0.084, eval_set, Subject.bundled("lenet5"), so_far=True)
    assert text.startswith("The dense model scores ≈8.4% on the eval images so far: about chance")
