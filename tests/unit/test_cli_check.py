"""`pruning-explorer check MODEL`: every step of the tool on a user's model, each with its
verdict; what explorer cannot do on it is a refusal with the reason, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from explorer.cli.main import main
from tests import idiom_models

MODELS = Path(idiom_models.__file__).resolve()


def test_check_reports_every_step_of_a_tutorial_model(capsys):
    assert main(["check", f"{MODELS}:ClassicLeNet", "--eval-images", "16", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    cells = row["cells"]
    assert list(cells) == [
        "load", "eval", "unstructured", "filters", "heads",
        "onnx", "pt2", "saliency", "path", "finetune",
    ]  # fmt: skip
    assert cells["heads"]["status"] == "n/a"
    assert all(cells[s]["status"] == "ok" for s in cells if s != "heads"), cells


def test_check_gives_one_line_for_a_model_it_cannot_open(capsys):
    assert main(["check", f"{MODELS}:NoSuchClass"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "NoSuchClass" in err[0]
