"""The compacted model as a torch.export program, without the command line around it."""

from __future__ import annotations

import pytest
import torch

from explorer.engine.compaction import compact
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.keep.export import ExportError, export_program, first_line
from explorer.zoo.models import load_model
from tests.unit.conftest import INPUT_SHAPE


def test_a_program_of_the_compacted_model_takes_any_batch(calibration, eval_images):
    pruner = Pruner(load_model("lenet5"), INPUT_SHAPE, calibration)
    small = compact(pruner, PruningPlan(method="filters", amount=0.5))
    program = export_program(small, INPUT_SHAPE).module()
    with torch.no_grad():
        expected = small(eval_images)
        assert torch.allclose(program(eval_images), expected, atol=1e-5)
        assert torch.allclose(program(eval_images[:1]), expected[:1], atol=1e-5)


def test_a_model_export_cannot_capture_is_one_line_without_cli_flags(monkeypatch):
    tried = []

    def refuse(*args: object, strict: bool, **kwargs: object) -> None:
        tried.append(strict)
        raise RuntimeError("Constraints violated!\n  a long torch explanation")

    monkeypatch.setattr(torch.export, "export", refuse)
    with pytest.raises(ExportError) as caught:
        export_program(load_model("lenet300"), INPUT_SHAPE)
    assert tried == [False, True]  # non-strict first, then TorchDynamo
    assert str(caught.value) == (
        "torch.export cannot capture the compacted model (RuntimeError: Constraints violated!)"
    )
    assert isinstance(caught.value, ValueError)  # a user-facing error for every caller


def test_first_line_skips_blank_lines_and_names_an_empty_error():
    assert first_line(ValueError("\n\n  first\nsecond")) == "first"
    assert first_line(KeyboardInterrupt()) == "KeyboardInterrupt"
