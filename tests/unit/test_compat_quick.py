"""The CI slice of the compatibility matrix (``benchmarks/compat.py --quick``): one model per
family through every step of ``explorer.engine.compat.check_model``, and no step may be a BUG."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from explorer.engine.compat import STEPS, Cell, CompatRow, check_model, classify, liven
from explorer.engine.subject import MODEL_KINDS, DataSpec, ModelSource, Subject
from explorer.loading.errors import LoadError
from explorer.loading.store import Store

EVAL_IMAGES = 32


def random_subject(tmp_path, kind: str, name: str, model: nn.Module, args: dict, size: int):
    """A subject of ``model``'s random weights (made live) saved to a store in ``tmp_path``."""
    store = Store(tmp_path / "store")
    path = tmp_path / "weights.pt"
    torch.save(liven(model).state_dict(), path)
    data = DataSpec("mnist", size=(size, size), channels=3)
    subject = Subject(ModelSource(kind, name, json.dumps(args)), store.register(path), data)
    return subject, store.path


def assert_no_bug(row: CompatRow) -> None:
    assert list(row.cells) == list(STEPS)
    assert not row.bugs, {step: cell.text for step, cell in row.bugs.items()}
    assert row.cells["load"].status == "ok", row.cells["load"].text


def check_torchvision(tmp_path, arch: str, size: int = 32, **extra) -> CompatRow:
    args = {"num_classes": 10, **extra}
    model = torchvision.models.get_model(arch, weights=None, **args)
    subject, resolve = random_subject(tmp_path, "torchvision", arch, model, args, size)
    return check_model(subject, eval_images=EVAL_IMAGES, resolve=resolve)


@pytest.mark.slow
def test_resnet18(tmp_path):
    row = check_torchvision(tmp_path, "resnet18")
    assert_no_bug(row)
    assert row.cells["heads"].status == "n/a"


@pytest.mark.slow
def test_mobilenet_v3_small(tmp_path):
    assert_no_bug(check_torchvision(tmp_path, "mobilenet_v3_small"))


@pytest.mark.slow
def test_a_torchvision_vit_at_32_pixels(tmp_path):
    row = check_torchvision(tmp_path, "vit_b_32", image_size=32)
    assert_no_bug(row)
    assert row.cells["heads"].status == "ok"


@pytest.mark.slow
def test_a_timm_model(tmp_path):
    timm = pytest.importorskip("timm")
    if "timm" not in MODEL_KINDS:
        pytest.skip("explorer has no timm model source yet")
    args = {"num_classes": 10, "img_size": 32}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)
    subject, resolve = random_subject(tmp_path, "timm", "vit_tiny_patch16_224", model, args, 32)
    assert_no_bug(check_model(subject, eval_images=EVAL_IMAGES, resolve=resolve))


def test_an_idiom_model_and_the_bundled_lenet5():
    assert_no_bug(check_model("lenet5", eval_images=EVAL_IMAGES))


def test_a_step_that_depends_on_a_failed_one_is_skipped_and_errors_are_classified():
    row = check_model("no_such_bundled_model", eval_images=8)
    assert row.cells["load"].status in ("refused", "BUG")
    assert {cell.status for step, cell in row.cells.items() if step != "load"} == {"skipped"}
    assert classify(LoadError("bad file"))[0] == "refused"
    assert classify(RuntimeError("boom")) == ("BUG", "RuntimeError: boom")
    assert classify(ValueError("raised outside explorer"))[0] == "BUG"
    round_trip = CompatRow.from_dict(CompatRow("m", {"load": Cell("ok", "", 1.0)}).to_dict())
    assert round_trip.cells["load"] == Cell("ok", "", 1.0)
