"""``pruning-explorer finetune``: writes weights ``--weights`` reads, reports dense / pruned /
fine-tuned accuracy, registers variants, and every bad input is one line with exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from explorer.cli import main as cli
from explorer.cli.recovery import add_finetune_parser, build_parser, cmd_finetune, finetune_output
from explorer.cli.recovery import main as finetune_main
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.engine.subject import file_digest
from explorer.loading.store import HOME_ENV
from explorer.recovery.variants import get_variant, list_variants
from explorer.zoo.models import load_model
from tests.unit.conftest import INPUT_SHAPE, require_trained

#: A short fine-tune: 20 steps of 64 images.
QUICK = ("--steps", "20", "--batch-size", "64")


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(folder))
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = finetune_main(["finetune", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_finetune_writes_weights_that_eval_reads_back(capsys, tmp_path):
    require_trained("lenet5")
    out = tmp_path / "tuned.pt"
    code, stdout, stderr = run(
        capsys, "lenet5", "--amount", "0.8", *QUICK, "--out", str(out), "--json"
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["written"] == {"weights": str(out)} and report["masks_held"] is True
    assert report["steps"] == 20 and report["plan"] == PruningPlan(amount=0.8).to_dict()
    assert report["pruned"]["accuracy"] < report["dense"]["accuracy"]
    assert report["finetuned"]["accuracy"] > report["pruned"]["accuracy"]
    assert "fine-tuning: step 20/20" in stderr  # progress on stderr, not in the JSON
    # the file: a plain state_dict, pruned weights exactly zero (the plan's masks as oracle)
    state = torch.load(out, weights_only=True)
    model = load_model("lenet5")
    assert set(state) == set(model.state_dict())
    masks = Pruner(model, INPUT_SHAPE).resolve(PruningPlan(amount=0.8)).masks
    for name, mask in masks.items():
        assert bool((state[name][mask == 0] == 0).all())
        assert bool((state[name][mask == 1] != 0).any())
    # eval with --weights and a dense plan measures the fine-tuned model
    assert cli.main(["eval", "lenet5", "--weights", str(out), "--no-latency", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == evaluated["dense_accuracy"] == report["finetuned"]["accuracy"]
    assert evaluated["loss"] == pytest.approx(report["finetuned"]["loss"], rel=1e-5)


def test_finetune_text_report_and_a_named_variant(capsys, tmp_path):
    require_trained("resnet_mini")
    out = tmp_path / "resnet.safetensors"
    argv = ("resnet_mini", "--method", "filters", "--scope", "layer", "--amount", "0.3", *QUICK)
    code, stdout, stderr = run(capsys, *argv, "--out", str(out), "--name", "rn 30%", "--quiet")
    assert code == 0, stderr
    assert stderr == ""  # --quiet
    rows = {line.split("  ")[0]: line for line in stdout.splitlines()}
    assert {"dense", "pruned", "pruned + fine-tuned"} <= set(rows)
    pruned, tuned = (
        float(re.search(r"([\d.]+)%", rows[k]).group(1)) for k in ("pruned", "pruned + fine-tuned")
    )
    assert pruned < 25 and tuned > 80  # recovery from a broken model
    assert "pruned weights held at zero: yes" in stdout
    assert "saved variant 'rn 30%'" in stdout
    (variant,) = list_variants("resnet_mini")
    assert variant.name == "rn 30%" and variant.metrics["finetuned_accuracy"] == pytest.approx(
        tuned / 100, abs=5e-5
    )
    assert variant.pruning_plan == PruningPlan(method="filters", scope="layer", amount=0.3)
    assert get_variant(variant.weights) == variant
    # the same name again fails before any training, in one line
    code, stdout, stderr = run(capsys, *argv, "--name", "rn 30%")
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: --name: a variant named 'rn 30%' exists already")


def test_the_out_file_and_the_variant_hold_the_same_bytes(capsys, tmp_path):
    require_trained("lenet300")
    out = tmp_path / "mlp.pt"
    code, stdout, _ = run(
        capsys, "lenet300", "--amount", "0.9", *QUICK, "--out", str(out), "--name", "mlp", "--json"
    )
    assert code == 0
    report = json.loads(stdout)
    assert report["variant"]["weights"] == file_digest(out)
    assert report["recipe"]["optimizer"] == "adam"  # the MLP's default recipe


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ("lenet5", "--epochs", "-1", "--out", "{tmp}/x.pt"),
            "--epochs must be a whole number >= 1, got -1",
        ),
        (("lenet5", "--steps", "0", "--out", "{tmp}/x.pt"), "--steps must be a whole number >= 1"),
        (("lenet5", "--optimizer", "lbfgs", "--out", "{tmp}/x.pt"), "invalid choice: 'lbfgs'"),
        (("lenet5", "--lr", "-1", "--out", "{tmp}/x.pt"), "--lr must be a number > 0, got -1"),
        (
            ("lenet5", "--alpha", "0.5", "--out", "{tmp}/x.pt"),
            "--alpha only applies with --distill",
        ),
        (
            ("lenet5", "--distill", "--alpha", "2", "--out", "{tmp}/x.pt"),
            "--alpha must be a number",
        ),
        (
            ("lenet5", "--out", "{tmp}/no-such-dir/x.pt"),
            "directory {tmp}/no-such-dir does not exist",
        ),
        (("lenet5", "--out", "{tmp}"), "is a directory"),
        (("lenet5", "--out", "{tmp}/file.txt/x.pt"), "file.txt is not a directory"),
        (("lenet5", "--out", "{tmp}/x.txt"), "must end in .pt"),
        (("lenet5",), "give --out FILE, --name NAME or both"),
        (("lenet5", "--name", " ", "--out", "{tmp}/x.pt"), "--name: a variant needs a name"),
        (("lenet6", "--out", "{tmp}/x.pt"), "unknown model 'lenet6' (did you mean 'lenet5'?)"),
        (("lenet5", "--weights", "{tmp}/missing.pt", "--out", "{tmp}/x.pt"), "does not exist"),
        (
            ("{tmp}/missing.onnx", "--out", "{tmp}/x.pt"),
            "ONNX model {tmp}/missing.onnx does not exist",
        ),
        (
            ("{tmp}/net.py:Net", "--out", "{tmp}/x.pt"),
            "Python model file {tmp}/net.py does not exist",
        ),
        (("lenet5", "--layer", "fc9=0.5", "--out", "{tmp}/x.pt"), "unknown unit 'fc9'"),
        (("lenet5", "--plan", "{tmp}/nope.json", "--out", "{tmp}/x.pt"), "plan file"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, tmp_path, argv, message):
    argv = tuple(a.replace("{tmp}", str(tmp_path)) for a in argv)
    (tmp_path / "file.txt").write_text("a file, not a folder")
    code, stdout, stderr = run(capsys, *argv)
    assert code == 2
    assert stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    assert message.replace("{tmp}", str(tmp_path)) in stderr
    assert not (tmp_path / "x.pt").exists()


def test_an_unwritable_out_is_refused_before_training(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if _can_write(locked):
            pytest.skip("this user can write into a read-only folder (root)")
        code, stdout, stderr = run(capsys, "lenet5", *QUICK, "--out", str(locked / "x.pt"))
    finally:
        locked.chmod(0o700)
    assert code == 2 and stdout == ""
    assert "permission denied" in stderr and "fine-tuning" not in stderr


def _can_write(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


def test_cmd_finetune_takes_a_namespace(capsys, tmp_path):
    parser = argparse.ArgumentParser(prog="x")
    add_finetune_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["finetune", "lenet300", "--amount", "0.5", "--steps", "2", "--name", "ns", "--quiet"]
    )
    assert cmd_finetune(args) == 0
    assert "saved variant 'ns'" in capsys.readouterr().out
    bad = argparse.Namespace(**{**vars(args), "model": "missing.pt"})
    assert cmd_finetune(bad) == 2
    assert capsys.readouterr().err.startswith("error: model 'missing.pt'")


def test_registered_in_the_main_cli(capsys, tmp_path, monkeypatch):
    """The two lines proposed for explorer/cli/main.py, applied by monkeypatching: ``finetune`` runs
    through cli.main's own error handling and printing."""
    build = cli.build_parser

    def with_finetune() -> argparse.ArgumentParser:
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "finetune" not in sub.choices:  # once explorer/cli/main.py registers it, as is
            add_finetune_parser(sub)
        return parser

    monkeypatch.setattr(cli, "build_parser", with_finetune)
    if "finetune" not in cli.COMMANDS:
        monkeypatch.setitem(cli.COMMANDS, "finetune", finetune_output)
    out = tmp_path / "w.pt"
    assert (
        cli.main(
            [
                "finetune",
                "lenet300",
                "--amount",
                "0.5",
                "--steps",
                "2",
                "--out",
                str(out),
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["written"] == {"weights": str(out)}
    assert cli.main(["finetune", "lenet300", "--epochs", "-3", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: --epochs must be a whole number >= 1")
    assert build_parser().parse_args(["finetune", "lenet5", "--name", "a"]).command == "finetune"


@pytest.mark.skipif(
    "finetune" not in cli.COMMANDS, reason="explorer/cli/main.py does not register it yet"
)
def test_python_m_explorer_cli_finetune(tmp_path):
    """As a user runs it (``python -m`` loads explorer.cli.main as __main__, a second copy of the
    module beside the one explorer.cli.recovery imports): errors still exit 2 in one line."""
    env = {**os.environ, HOME_ENV: str(tmp_path / "home")}
    out = tmp_path / "w.pt"
    argv = ["finetune", "lenet300", "--amount", "0.5", "--steps", "2", "--out", str(out), "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "explorer.cli.main", *argv], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert out.is_file() and "pruned + fine-tuned" in done.stdout
    argv = ["finetune", "lenet300", "--out", str(tmp_path / "none" / "w.pt")]
    done = subprocess.run(
        [sys.executable, "-m", "explorer.cli.main", *argv], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: --out")
