"""The command line: listing, inspecting, pruning and evaluating; errors as one line, exit 2."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from explorer.cli import common
from explorer.cli import main as cli
from explorer.cli.common import DEBUG_ENV
from explorer.cli.main import main
from explorer.engine.compaction import compact
from explorer.engine.evaluation import evaluate
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.engine.subject import Subject
from explorer.engine.workbench import Workbench
from explorer.zoo.mnist import ImageDataset, load_mnist
from explorer.zoo.models import ZOO, lenet5, lenet_300_100, list_models, load_card, load_model
from tests.unit.conftest import INPUT_SHAPE

ROOT = Path(__file__).resolve().parents[2]

LENET5_LAYERS = {  # name: (weights, params, FLOPs per image), by hand
    "conv1": (6 * 25, 6 * 25 + 6, 2 * 6 * 28 * 28 * 25),
    "conv2": (16 * 6 * 25, 16 * 6 * 25 + 16, 2 * 16 * 10 * 10 * 6 * 25),
    "fc1": (400 * 120, 400 * 120 + 120, 2 * 400 * 120),
    "fc2": (120 * 84, 120 * 84 + 84, 2 * 120 * 84),
    "fc3": (84 * 10, 84 * 10 + 10, 2 * 84 * 10),
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_lists_every_model_with_its_accuracy(capsys):
    code, out, err = run(capsys, "models")
    assert code == 0 and err == ""
    for name in ZOO:
        card = load_card(name)
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        if "eval_accuracy" in card:
            assert f"{card['eval_accuracy']:.2%}" in row
        else:
            assert "untrained" in row


def test_models_json(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    assert [card["name"] for card in json.loads(out)] == list(ZOO)


def test_info_lenet5_shows_each_layer_with_params_and_flops(capsys):
    code, out, err = run(capsys, "info", "lenet5")
    assert code == 0 and err == ""
    total = sum(flops for _, _, flops in LENET5_LAYERS.values())
    for name, (_, params, flops) in LENET5_LAYERS.items():
        row = next(line.split() for line in out.splitlines() if line.startswith(name + " "))
        assert f"{params:,}" in row and f"{flops:,}" in row
        assert f"{flops / total:.2%}" in row
    assert f"{total:,}" in out  # the card's FLOPs per image


def test_info_json_shares_sum_to_one(capsys):
    code, out, _ = run(capsys, "info", "lenet5", "--json")
    data = json.loads(out)
    assert code == 0
    assert [layer["name"] for layer in data["layers"]] == list(LENET5_LAYERS)
    assert sum(layer["flops_share"] for layer in data["layers"]) == pytest.approx(1.0)
    assert {layer["name"]: layer["params"] for layer in data["layers"]} == {
        name: params for name, (_, params, _) in LENET5_LAYERS.items()
    }


def test_prune_writes_weights_with_exactly_the_reported_sparsity(capsys, tmp_path):
    out_file, plan_file = tmp_path / "tmp.pt", tmp_path / "plan.json"
    code, out, err = run(
        capsys,
        "prune",
        "lenet5",
        "--amount",
        "0.5",
        "--method",
        "l1",
        "--out",
        str(out_file),
        "--save-plan",
        str(plan_file),
    )
    assert code == 0, err
    state_dict = torch.load(out_file, weights_only=True)
    fresh = lenet5()
    fresh.load_state_dict(state_dict, strict=True)  # plain architecture, no *_orig / *_mask

    zeros = {name: int((state_dict[f"{name}.weight"] == 0).sum()) for name in LENET5_LAYERS}
    weights = sum(n for n, _, _ in LENET5_LAYERS.values())
    assert sum(zeros.values()) == round(0.5 * weights)
    reported = re.search(r"sparsity: ([0-9.]+)% of prunable weights", out)
    assert reported is not None
    assert reported.group(1) == f"{100 * sum(zeros.values()) / weights:.2f}"
    for name in LENET5_LAYERS:  # the per-unit table: unit, kind, size, pruned, sparsity
        row = next(line.split() for line in out.splitlines() if line.startswith(name + " "))
        assert row[3] == f"{zeros[name]:,}"
    # Biases are not touched by unstructured pruning.
    dense = load_model("lenet5").state_dict()
    assert all(torch.equal(state_dict[k], dense[k]) for k in dense if k.endswith("bias"))

    assert PruningPlan.from_json(plan_file.read_text()) == PruningPlan(amount=0.5)
    assert f"wrote weights: {out_file}" in out


def test_prune_torch_prune_format_writes_orig_and_mask(capsys, tmp_path):
    out_file = tmp_path / "masked.pt"
    code, _, err = run(
        capsys,
        "prune",
        "lenet300",
        "--amount",
        "0.3",
        "--format",
        "torch_prune",
        "--out",
        str(out_file),
    )
    assert code == 0, err
    state_dict = torch.load(out_file, weights_only=True)
    dense = load_model("lenet300")
    pruned = 0
    for layer in ("fc1", "fc2", "fc3"):
        # The untouched weights plus a 0/1 mask, as torch.nn.utils.prune stores them.
        assert f"{layer}.weight" not in state_dict
        assert torch.equal(state_dict[f"{layer}.weight_orig"], dense.get_submodule(layer).weight)
        mask = state_dict[f"{layer}.weight_mask"]
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        pruned += int((mask == 0).sum())
    assert pruned == round(0.3 * (784 * 300 + 300 * 100 + 100 * 10))


def test_prune_compact_out_writes_a_smaller_model_with_the_same_outputs(capsys, tmp_path):
    weights, small_file = tmp_path / "masked.pt", tmp_path / "small.pt"
    argv = ["prune", "lenet300", "--method", "filters", "--amount", "0.5", "--json"]
    code, out, err = run(capsys, *argv, "--out", str(weights), "--compact-out", str(small_file))
    assert code == 0, err
    assert json.loads(out)["written"] == {
        "weights": str(weights),
        "compacted_model": str(small_file),
    }
    masked = lenet_300_100().eval()
    masked.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    small = torch.export.load(small_file).module()  # no class, no pickle: a torch.export program
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in masked.parameters())
    images = load_mnist("eval").images[:32]
    with torch.no_grad():
        torch.testing.assert_close(small(images), masked(images), atol=1e-5, rtol=1e-4)


def test_eval_json_accuracy_equals_evaluate_of_the_pruned_model(capsys, tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"scope": "layer", "amount": 0.3, "layers": {"fc3": 0.5}}))
    # Flags override what the plan file says.
    code, out, err = run(
        capsys,
        "eval",
        "lenet300",
        "--plan",
        str(plan_file),
        "--amount",
        "0.8",
        "--method",
        "l1",
        "--no-latency",
        "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    plan = PruningPlan(scope="layer", amount=0.8, unit_amounts=(("fc3", 0.5),))
    assert PruningPlan.from_dict(report["plan"]) == plan
    eval_set = load_mnist("eval")
    model = load_model("lenet300")
    expected = evaluate(Pruner(model, INPUT_SHAPE).pruned_model(plan), eval_set)
    dense = evaluate(model, eval_set)
    assert report["accuracy"] == expected.accuracy
    assert report["dense_accuracy"] == dense.accuracy
    assert report["changed"] == len(expected.changed_vs(dense))
    assert report["eval_samples"] == 5000
    assert report["latency"] == []
    units = {u["name"]: u["pruned"] for u in report["units"]}
    assert units == {"fc1": round(0.8 * 784 * 300), "fc2": round(0.8 * 300 * 100), "fc3": 500}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "alexnet"], "unknown model 'alexnet'"),
        (["eval", "resnet", "--no-latency"], "unknown model 'resnet'"),
        (["prune", "lenet5", "--amount", "1.5"], "between 0 and 1"),
        (["eval", "lenet300", "--amount", "-0.5", "--no-latency"], "between 0 and 1"),
        (["prune", "lenet300", "--layer", "nosuch=0.5"], "unknown unit 'nosuch'"),
        (["prune", "lenet300", "--method", "filters", "--layer", "fc3=0.5"], "classes"),
        (["prune", "lenet300", "--nm", "2-4"], "--nm must be N:M"),
        (["prune", "lenet300", "--plan", "{missing}"], "does not exist"),
        (["prune", "lenet300", "--plan", "{malformed}"], "not valid JSON"),
        (["prune", "lenet300", "--plan", "{unknown_field}"], "unknown plan field"),
        (["prune", "lenet300", "--amount", "0.5", "--compact-out", "{out}"], "structured plan"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_code_2(capsys, tmp_path, argv, message):
    files = {
        "missing": tmp_path / "missing.json",
        "malformed": tmp_path / "malformed.json",
        "unknown_field": tmp_path / "unknown.json",
        "out": tmp_path / "small.pt",
    }
    files["malformed"].write_text('{"amount": 0.5,')
    files["unknown_field"].write_text('{"amont": 0.5}')
    argv = [arg.format(**files) for arg in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in err
    assert not files["out"].exists()


# --- the error convention: one line on stderr, exit code 2, never a traceback ------------------


def error_line(code: int, out: str, err: str) -> str:
    """The single ``error: ...`` line of a failed command (exit code 2, nothing on stdout)."""
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


class EvaluationStarted(Exception):
    """Raised by a stand-in for ``open_workbench``: the command got as far as evaluating."""


@pytest.fixture
def no_evaluation(monkeypatch) -> list[str]:
    """Models the command tried to open (and evaluate); an empty list if it stopped before."""
    opened: list[str] = []

    def open_workbench(subject: Subject, **_: object) -> Workbench:
        opened.append(str(subject.model))
        raise EvaluationStarted(str(subject.model))

    monkeypatch.setattr(common, "open_workbench", open_workbench)
    return opened


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "{tmp}/no/such/dir/p.pt"], "--out {tmp}/no/such/dir/p.pt: directory "),
        (["--out", "{tmp}"], "--out {tmp} is a directory"),
        (["--out", "{tmp}/"], "--out {tmp}/ names a directory"),
        (["--save-plan", "{file}/plan.json"], "--save-plan {file}/plan.json: {file} is not a"),
        (["--method", "filters", "--compact-out", "{tmp}"], "--compact-out {tmp} is a directory"),
        (["--out", "{tmp}/p.pt", "--save-plan", "{tmp}/./p.pt"], "--out and --save-plan both"),
        (["--compact-out", "{tmp}/small.pt2"], "--compact-out needs a structured plan"),
    ],
)
def test_output_paths_are_checked_before_any_evaluation(
    capsys, tmp_path, no_evaluation, argv, message
):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    names = {"tmp": tmp_path, "file": a_file}
    argv = [arg.format(**names) for arg in argv]
    line = error_line(*run(capsys, "prune", "lenet5", "--amount", "0.5", *argv))
    assert message.format(**names) in line
    assert no_evaluation == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing written


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_directory_without_write_permission_is_refused_up_front(
    capsys, tmp_path, no_evaluation
):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        line = error_line(*run(capsys, "prune", "lenet5", "--out", str(locked / "p.pt")))
    finally:
        locked.chmod(0o700)
    assert f"--out {locked / 'p.pt'}: cannot create a file in {locked}" in line
    assert no_evaluation == []


def test_a_failed_write_is_one_line_and_leaves_no_half_file(capsys, tmp_path, monkeypatch):
    target = tmp_path / "p.pt"
    save = torch.save

    def full_disk(obj: object, file: object, *args: object, **kwargs: object) -> None:
        if getattr(file, "name", None) != str(target):  # the report sizes models in memory
            return save(obj, file, *args, **kwargs)
        file.write(b"PK\x03\x04")  # type: ignore[attr-defined]
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    line = error_line(*run(capsys, "prune", "lenet5", "--amount", "0.5", "--out", str(target)))
    assert line.startswith(f"error: --out: could not write {target}: [enforce fail")
    assert not target.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "lenet5", "--threads", "0"], "--threads must be a whole number >= 1, got 0"),
        (["eval", "lenet5", "--threads", "-2"], "--threads must be a whole number >= 1, got -2"),
        (["eval", "lenet5", "--threads", "two"], "--threads must be a whole number >= 1"),
        (["eval", "lenet5", "--repeats", "0"], "--repeats must be a whole number >= 1, got 0"),
        (["eval", "lenet5", "--repeats", "-1"], "--repeats must be a whole number >= 1, got -1"),
        (["eval", "lenet5", "--amount", "nan"], "--amount must be a number between 0 and 1"),
        (["eval", "lenet5", "--amount", "inf"], "--amount must be a number between 0 and 1"),
        (["prune", "lenet5", "--amount", "1.5"], "--amount must be a number between 0 and 1"),
        (["prune", "lenet5", "--layer", "fc1"], "--unit expects NAME=AMOUNT (e.g. fc1=0.9)"),
        (["prune", "lenet5", "--layer", "fc1=x"], "--unit fc1=x: the amount must be a number"),
        (["prune", "lenet5", "--layer", "fc1=2"], "--unit fc1=2: the amount must be a number"),
        (["prune", "lenet5", "--nm", "3:2"], "--nm must be N:M with whole numbers 0 < N < M"),
        (["prune", "lenet5", "--nm", "\u00b2:4"], "--nm must be N:M"),  # "²".isdigit() is True
        (["prune", "lenet5", "--seed", "1.5"], "--seed must be a whole number, got 1.5"),
        (["prune", "lenet5", "--norm", "0"], "--norm must be a positive number"),
        (["prune", "lenet5", "--method", "l2"], "argument --method: invalid choice: 'l2'"),
        (["prune"], "the following arguments are required: model"),
        (["prune", "lenet5", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_a_bad_flag_is_one_line_naming_the_flag(capsys, no_evaluation, argv, message):
    line = error_line(*run(capsys, *argv))
    assert message in line
    assert "--help" in line  # the usage block is one flag away, not printed every time
    assert no_evaluation == []


def test_help_still_exits_0(capsys):
    code, out, _ = run(capsys, "prune", "--help")
    assert code == 0
    assert "torch.export.load(FILE).module()" in out  # how to load what --compact-out wrote


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nm", "2:8", "--amount", "0.5"], "--nm only applies to --method nm"),
        (["--method", "nm", "--amount", "0.5", "--layer", "conv1=0.3"], "unit 'conv1' cannot"),
        (["--layer", "nosuch=0.5"], "unknown unit 'nosuch'"),
    ],
)
def test_contradicting_plan_flags_are_one_line(capsys, argv, message):
    assert message in error_line(*run(capsys, "prune", "lenet5", *argv))


PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes(range(256)), "is not JSON text: byte 128 is not UTF-8"),
        (PNG_HEADER, "is not JSON text: byte 0 is not UTF-8"),
        (b'{"amount": 0.5,', ": the plan is not valid JSON"),
        (b"", ": the plan is not valid JSON"),
        (b'{"amont": 0.5}', ": unknown plan field(s) ['amont']"),
        (b'{"amount": 1.5}', ": global amount must be between 0 and 1"),
        (b'{"method": "bogus"}', ": unknown method 'bogus'"),
        (b'{"criterion": "bogus"}', ": unknown criterion 'bogus'"),
        (b"[0.5]", ": a plan must be a JSON object"),
    ],
)
def test_every_complaint_about_a_plan_file_names_the_file(
    capsys, tmp_path, no_evaluation, content, message
):
    plan_file = tmp_path / "plan.json"
    plan_file.write_bytes(content)
    line = error_line(*run(capsys, "eval", "lenet5", "--plan", str(plan_file)))
    assert line.startswith(f"error: plan file {plan_file}")
    assert message in line
    assert no_evaluation == []


def test_a_plan_directory_is_called_a_directory(capsys, tmp_path, no_evaluation):
    line = error_line(*run(capsys, "eval", "lenet5", "--plan", str(tmp_path)))
    assert line == f"error: --plan {tmp_path} is a directory, not a plan file"
    assert no_evaluation == []


def test_a_plan_file_with_a_byte_order_mark_is_read(capsys, tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_bytes(b"\xef\xbb\xbf" + json.dumps({"amount": 0.25}).encode())
    code, out, err = run(capsys, "prune", "lenet300", "--plan", str(plan_file), "--json")
    assert code == 0, err
    assert PruningPlan.from_dict(json.loads(out)["plan"]) == PruningPlan(amount=0.25)


def test_an_unexpected_exception_is_one_internal_error_line_with_exit_code_1(capsys, monkeypatch):
    def broken(args: object) -> None:
        raise TypeError("unsupported operand type(s)\nfor +: 'int' and 'str'")

    monkeypatch.setitem(cli.COMMANDS, "models", broken)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    code, out, err = run(capsys, "models")
    assert code == 1
    assert out == ""
    assert err == (
        "internal error: TypeError: unsupported operand type(s) "
        "(run with PRUNING_EXPLORER_DEBUG=1 for the traceback)\n"
    )
    # ... and the traceback is there for whoever asks for it.
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["models"])


def test_ctrl_c_exits_130_without_a_word(capsys, monkeypatch):
    def interrupted(args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "models", interrupted)
    assert run(capsys, "models") == (130, "", "")


# --- a reader that stops early -----------------------------------------------------------------


def cli_into_pipe(argv: list[str], read_one_line: bool) -> tuple[int, bytes, str]:
    """Run the CLI in a subprocess whose stdout is a pipe that the reader closes early.

    ``read_one_line=False``: the reader end is closed before the CLI writes anything, so its
    first write fails. ``True``: like ``| head -1``, through a pipe shrunk to one page so that
    the output cannot fit in it. Returns (exit code, the line read, stderr).
    """
    import fcntl  # POSIX only; the callers skip elsewhere

    read_fd, write_fd = os.pipe()
    if read_one_line:
        size = fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
        assert len(json.dumps(list_models(), indent=2)) > 2 * size  # it will not fit
    else:
        os.close(read_fd)
    with subprocess.Popen(
        [sys.executable, "-m", "explorer.cli.main", *argv],
        stdout=write_fd,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    ) as proc:
        os.close(write_fd)
        line = b""
        if read_one_line:
            while not line.endswith(b"\n") and (byte := os.read(read_fd, 1)):
                line += byte
            os.close(read_fd)
        _, err = proc.communicate(timeout=120)
    return proc.returncode, line, err.decode()


@pytest.mark.skipif(not hasattr(os, "pipe") or sys.platform != "linux", reason="Linux pipes")
@pytest.mark.parametrize("read_one_line", [False, True], ids=["closed", "head-1"])
def test_a_closed_pipe_ends_quietly_with_exit_code_0(read_one_line):
    code, line, err = cli_into_pipe(["models", "--json"], read_one_line)
    assert "Traceback" not in err
    assert "BrokenPipeError" not in err
    assert err == ""
    assert code == 0
    assert line == (b"[\n" if read_one_line else b"")


# --- --compact-out: a torch.export program ------------------------------------------------------


@pytest.fixture
def quick_benches(monkeypatch, eval_set: ImageDataset) -> dict[str, Workbench]:
    """The CLI's workbenches, on the first 64 eval images (the file is under test here, not
    the accuracy), kept so that a test can compact the very same pruner."""
    few = dataclasses.replace(eval_set, images=eval_set.images[:64], labels=eval_set.labels[:64])
    benches: dict[str, Workbench] = {}

    def open_workbench(subject: Subject, **_: object) -> Workbench:
        name = subject.model.ref
        benches[name] = Workbench(subject, load_model(name), few, None, load_card(name))
        return benches[name]

    monkeypatch.setattr(common, "open_workbench", open_workbench)
    return benches


@pytest.mark.parametrize(
    ("model", "method", "file_name"),
    [("lenet5", "filters", "small.pt2"), ("resnet_mini", "filters", "small.pt")],
)
def test_compact_out_loads_with_torch_export_and_equals_the_compacted_model(
    capsys, tmp_path, quick_benches, eval_set, model, method, file_name
):
    target = tmp_path / file_name
    argv = ["prune", model, "--method", method, "--amount", "0.5", "--compact-out", str(target)]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert f"wrote compacted_model: {target} (a torch.export program; load: " in out
    assert f"torch.export.load({str(target)!r}).module()" in out

    program = torch.export.load(target).module()  # no model class, nothing unpickled
    reference = compact(quick_benches[model].pruner, PruningPlan(method=method, amount=0.5))
    dense_params = sum(p.numel() for p in load_model(model).parameters())
    assert sum(p.numel() for p in program.parameters()) < dense_params
    images = eval_set.images[:64]
    with torch.no_grad():
        expected = reference.cpu().eval()(images)
        assert torch.allclose(program(images), expected, atol=1e-5)
        assert torch.allclose(program(images[:1]), expected[:1], atol=1e-5)  # any batch size
    with pytest.raises(RuntimeError, match=r"data\.pkl"):  # not a pickle: torch.load cannot read it
        torch.load(target, weights_only=False)


def test_compact_out_of_a_transformer_with_heads_removed(capsys, tmp_path, quick_benches, eval_set):
    # vit_tiny's len(x) defeats non-strict tracing with a dynamic batch; strict tracing copes.
    target = tmp_path / "vit.pt2"
    argv = ["prune", "vit_tiny", "--method", "heads", "--amount", "0.5", "--compact-out"]
    code, _, err = run(capsys, *argv, str(target))
    assert code == 0, err
    reference = compact(quick_benches["vit_tiny"].pruner, PruningPlan(method="heads", amount=0.5))
    images = eval_set.images[:33]
    with torch.no_grad():
        actual = torch.export.load(target).module()(images)
        assert torch.allclose(actual, reference.cpu().eval()(images), atol=1e-5)


def test_a_model_torch_export_cannot_capture_is_one_line(
    capsys, tmp_path, quick_benches, monkeypatch
):
    def refuse(*args: object, **kwargs: object) -> None:
        raise torch._dynamo.exc.UserError(
            torch._dynamo.exc.UserErrorType.CONSTRAINT_VIOLATION, "Constraints violated!\nmore"
        )

    monkeypatch.setattr(torch.export, "export", refuse)
    weights, target = tmp_path / "w.pt", tmp_path / "small.pt2"
    argv = ["prune", "lenet5", "--method", "filters", "--amount", "0.5", "--out", str(weights)]
    line = error_line(*run(capsys, *argv, "--compact-out", str(target)))
    assert line.startswith("error: --compact-out: torch.export cannot capture the compacted model")
    assert "UserError: Constraints violated!" in line
    assert not target.exists() and not weights.exists()  # all files or none


def test_app_starts_streamlit_on_the_given_files(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(load_model("lenet5").state_dict(), weights)
    args = cli.build_parser().parse_args(
        ["app", "lenet5", "--weights", str(weights), "--port", "8700"]
    )
    command = cli.app_command(args)
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("app.py")
    assert command[5:7] == ["--server.port", "8700"]
    end = command.index("--")  # streamlit's own options, then the app's
    assert command[end : end + 3] == ["--", "--model", "lenet5"]
    assert command[command.index("--weights") + 1] == str(weights)
    assert command[command.index("--data") + 1] == "mnist"


def test_app_checks_its_files_before_starting(capsys):
    code, _, err = run(capsys, "app", "lenet5", "--weights", "/nonexistent/w.pt")
    assert code == 2 and err.strip() == "error: weights file /nonexistent/w.pt does not exist"


def test_method_nm_alone_applies_the_pattern_rather_than_pruning_nothing():
    def plan_of(*flags: str) -> PruningPlan:
        return cli.plan_from_args(cli.build_parser().parse_args(["eval", "lenet5", *flags]))

    alone = plan_of("--method", "nm")
    assert alone.amount > 0  # on: the pattern's switch, not a default of 0
    assert plan_of("--method", "nm", "--amount", "0").amount == 0  # off, when asked for
    assert "off" in cli.plan_label(plan_of("--method", "nm", "--amount", "0"))
    state = Pruner(load_model("lenet5"), (1, 28, 28)).resolve(alone)
    fc1 = state.masks["fc1.weight"].reshape(-1, 4)
    # the oracle: 2 of every 4 consecutive inputs kept, no more, no fewer
    assert torch.equal(fc1.sum(dim=1), torch.full((fc1.shape[0],), 2.0))
