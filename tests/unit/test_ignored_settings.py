"""Settings a plan's method or criterion ignores: named by the registry, checked against the
pruning itself, and said in one warning line by the CLI."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from explorer.engine.methods import METHODS, get_method, unused_settings
from explorer.engine.plan import PruningPlan
from explorer.engine.workbench import open_workbench
from tests.unit.test_cli import run

#: A value other than the default, for each setting a method can ignore.
OTHER_VALUE = {"norm": {"norm": 2.0}, "nm": {"n": 1, "m": 4}, "scope": {"scope": "layer"}}


@pytest.fixture(scope="module")
def bench():
    return open_workbench("lenet5")


def _masks(bench, plan: PruningPlan) -> dict[str, torch.Tensor]:
    return bench.resolve(plan).masks


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_setting_named_unused_changes_no_mask(bench, method):
    base = PruningPlan(method=method, amount=0.5)
    if bench.pruner.structure is not None and not get_method(method).units(bench.pruner.structure):
        pytest.skip(f"lenet5 has no unit of {method}")
    unused = unused_settings(base)
    assert "nm" in unused or method == "nm"  # only N:M plans have a pattern
    for setting, why in unused.items():
        assert why  # each with a reason for the user
        if setting not in OTHER_VALUE:
            continue
        changed = dataclasses.replace(base, **OTHER_VALUE[setting])
        before, after = _masks(bench, base), _masks(bench, changed)
        assert before.keys() == after.keys()
        for name in before:
            assert torch.equal(before[name], after[name]), (method, setting, name)


def test_a_setting_not_named_unused_does_change_the_masks(bench):
    # the oracle for the test above: the norm matters to filters, the pattern to N:M
    filters = PruningPlan(method="filters", amount=0.5)
    assert "norm" not in unused_settings(filters)
    l1, l2 = _masks(bench, filters), _masks(bench, dataclasses.replace(filters, norm=2.0))
    assert any(not torch.equal(l1[k], l2[k]) for k in l1)
    nm = PruningPlan(method="nm", amount=1.0)
    assert "nm" not in unused_settings(nm)
    two, one = _masks(bench, nm), _masks(bench, dataclasses.replace(nm, n=1, m=4))
    assert any(not torch.equal(two[k], one[k]) for k in two)
    assert "seed" in unused_settings(PruningPlan())  # magnitude is not random
    assert "seed" not in unused_settings(PruningPlan(criterion="random"))


def test_the_cli_names_every_ignored_flag_once_on_stderr(capsys, tmp_path):
    code, out, err = run(
        capsys, "prune", "lenet5", "--method", "unstructured", "--amount", "0.3",
        "--norm", "2", "--seed", "3",
    )  # fmt: skip
    assert code == 0 and out
    warnings = [line for line in err.splitlines() if line.startswith("warning: ignored:")]
    assert len(warnings) == 1, err
    assert "--norm (" in warnings[0] and "--seed (" in warnings[0]
    assert "--amount" not in warnings[0]


def test_used_flags_give_no_warning(capsys):
    code, _, err = run(capsys, "prune", "lenet5", "--method", "filters", "--amount", "0.3",
                       "--norm", "2")  # fmt: skip
    assert code == 0 and "warning: ignored" not in err


def test_app_flags_without_a_model_are_named(capsys, monkeypatch):
    from explorer.cli import main as cli

    started = []
    monkeypatch.setattr(cli.os, "execv", lambda *a: started.append(a))
    _, _, err = run(capsys, "app", "--size", "32")
    assert started, "the app was not started"
    assert "warning: ignored: --size (no MODEL is given" in err
