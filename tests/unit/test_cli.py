"""The command line: listing, inspecting, pruning and evaluating; errors as one line, exit 2."""

from __future__ import annotations

import json
import re

import pytest
import torch

from explorer.cli import main
from explorer.data import load_mnist
from explorer.evaluation import evaluate
from explorer.models import ZOO, lenet5, lenet_300_100, load_card, load_model
from explorer.plan import PruningPlan
from explorer.pruning import Pruner
from tests.unit.conftest import INPUT_SHAPE

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
    small = torch.load(small_file, weights_only=False).eval()  # a whole (trusted) nn.Module
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
    plan = PruningPlan(scope="layer", amount=0.8, layer_amounts=(("fc3", 0.5),))
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
        (["prune", "lenet300", "--layer", "nosuch=0.5"], "unknown layer 'nosuch'"),
        (["prune", "lenet300", "--method", "filters", "--layer", "fc3=0.5"], "classes"),
        (["prune", "lenet300", "--nm", "2-4"], "--nm must look like 2:4"),
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


def test_a_malformed_layer_flag_is_an_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["prune", "lenet300", "--layer", "fc1"])
    assert info.value.code == 2
    assert "expected NAME=AMOUNT" in capsys.readouterr().err
