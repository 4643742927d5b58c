"""``eval --save`` and ``experiments list | show | delete | export``: one-line errors, exit 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from explorer.cli import main as cli
from explorer.cli.main import main
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import plan_label
from explorer.engine.subject import Subject
from explorer.keep.experiments import ExperimentStore, default_experiments
from explorer.loading.store import HOME_ENV


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(folder))
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str) -> str:
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def seed(*names: str) -> ExperimentStore:
    """Experiments saved through the library: the CLI cases below need no evaluation."""
    store = default_experiments()
    for n, name in enumerate(names):
        store.save(
            name,
            Subject.bundled("lenet5" if n % 2 else "lenet300"),
            PruningPlan(amount=n / 10),
            {"accuracy": 0.9 - n / 100, "sparsity": n / 10},
            note=f"note {n}",
        )
    return store


def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(args):
        raise AssertionError("the model was loaded although the command had to fail first")

    monkeypatch.setattr(cli, "open_subject", fail)


def test_eval_save_then_list_show_export_delete(capsys, tmp_path, home):
    code, out, err = run(
        capsys,
        *("eval", "lenet300", "--amount", "0.5", "--no-latency", "--json"),
        *("--save", "lenet300 half", "--note", "first try"),
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["saved"]["name"] == "lenet300 half"
    assert report["saved"]["database"] == str(home / "experiments.sqlite3")

    code, out, _ = run(capsys, "experiments", "list", "--json")
    (listed,) = json.loads(out)
    assert code == 0 and listed["id"] == report["saved"]["id"]
    assert listed["note"] == "first try"
    assert listed["subject_key"] == Subject.bundled("lenet300").key
    assert listed["plan"] == report["plan"]
    for key in ("accuracy", "dense_accuracy", "loss", "sparsity", "flops_effective", "size_sparse"):
        assert listed["metrics"][key] == report[key]  # exactly what was printed
    assert "latency" not in listed["metrics"]

    code, out, _ = run(capsys, "experiments", "list")
    assert code == 0 and "lenet300 half" in out and f"{report['accuracy']:.2%}" in out

    code, out, _ = run(capsys, "experiments", "show", "lenet300 half", "--json")
    shown = json.loads(out)
    assert shown == {**listed, "plan_label": plan_label(PruningPlan(amount=0.5))}
    code, out, _ = run(capsys, "experiments", "show", "lenet300 half")
    assert code == 0 and "first try" in out and "plan as JSON" in out

    target = tmp_path / "out.csv"
    code, out, _ = run(capsys, "experiments", "export", "--out", str(target), "--json")
    assert code == 0 and json.loads(out) == {"written": str(target), "experiments": 1}
    with open(target, newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["name"] == "lenet300 half" and float(row["accuracy"]) == report["accuracy"]

    code, out, _ = run(capsys, "experiments", "delete", "lenet300 half")
    assert code == 0 and out.startswith("deleted experiment 'lenet300 half'")
    code, out, _ = run(capsys, "experiments", "list", "--json")
    assert json.loads(out) == []
    code, out, _ = run(capsys, "experiments", "list")
    assert "no saved experiments yet" in out


def test_eval_save_text_output_says_where_it_was_saved(capsys, home):
    code, out, err = run(capsys, "eval", "lenet300", "--no-latency", "--save", "dense")
    assert code == 0, err
    assert out.rstrip().splitlines()[-1].startswith("saved experiment 'dense' (id ")
    assert [e.name for e in default_experiments().list()] == ["dense"]


def test_eval_save_of_a_taken_name_fails_before_evaluating(capsys, monkeypatch):
    seed("taken")
    no_evaluation(monkeypatch)
    err = one_line_error(*run(capsys, "eval", "lenet300", "--save", "taken")[::2])
    assert "'taken' exists already" in err and "--replace" in err


def test_eval_save_replace_overwrites(capsys):
    old = seed("again").get("again")
    code, out, err = run(
        capsys, "eval", "lenet300", "--no-latency", "--save", "again", "--replace", "--json"
    )
    assert code == 0, err
    (new,) = default_experiments().list()
    assert new.name == "again" and new.id != old.id
    assert new.metrics["accuracy"] == json.loads(out)["accuracy"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--save", ""], "--save: an experiment needs a name"),
        (["--save", "x" * 101], "--save: an experiment's name has at most 100 characters"),
        (["--note", "hi"], "--note only applies with --save NAME"),
        (["--replace"], "--replace only applies with --save NAME"),
    ],
)
def test_eval_save_flag_mistakes_fail_before_evaluating(capsys, monkeypatch, flags, message):
    no_evaluation(monkeypatch)
    err = one_line_error(*run(capsys, "eval", "lenet300", *flags)[::2])
    assert message in err


def test_list_filters_by_subject(capsys):
    seed("a", "b", "c")
    key = Subject.bundled("lenet5").key
    code, out, _ = run(capsys, "experiments", "list", "--subject", key, "--json")
    assert code == 0 and [e["name"] for e in json.loads(out)] == ["b"]
    code, out, _ = run(capsys, "experiments", "list", "--subject", "0" * 16)
    assert code == 0 and "no saved experiments for subject" in out


def test_unknown_names_suggest_close_matches(capsys):
    seed("baseline", "pruned-50")
    for action in ("show", "delete"):
        err = one_line_error(*run(capsys, "experiments", action, "basline")[::2])
        assert "no experiment named 'basline'" in err and "did you mean 'baseline'?" in err
    assert len(default_experiments().list()) == 2


def test_show_and_delete_accept_an_id_prefix(capsys):
    experiment = seed("by id").get("by id")
    code, out, _ = run(capsys, "experiments", "show", experiment.id[:8], "--json")
    assert code == 0 and json.loads(out)["name"] == "by id"
    code, out, _ = run(capsys, "experiments", "delete", experiment.id, "--json")
    assert code == 0 and json.loads(out)["deleted"]["id"] == experiment.id


def test_export_checks_the_output_path_before_writing(capsys, tmp_path):
    seed("one")
    missing = tmp_path / "no-such-dir" / "out.csv"
    err = one_line_error(*run(capsys, "experiments", "export", "--out", str(missing))[::2])
    assert "directory" in err and "does not exist" in err
    err = one_line_error(*run(capsys, "experiments", "export", "--out", str(tmp_path))[::2])
    assert "is a directory" in err
    code, _, err = run(capsys, "experiments", "export")
    assert code == 2 and "--out" in err


def test_export_writes_every_experiment(capsys, tmp_path):
    seed("a", "b", "c")
    target = tmp_path / "all.csv"
    code, out, _ = run(capsys, "experiments", "export", "--out", str(target))
    assert code == 0 and out.startswith("wrote 3 experiment(s)")
    with open(target, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["c", "b", "a"]
    assert [r["note"] for r in rows] == ["note 2", "note 1", "note 0"]


def test_a_damaged_database_is_one_line_naming_the_file(capsys, home):
    home.mkdir(parents=True)
    database = home / "experiments.sqlite3"
    database.write_bytes(b"garbage" * 100)
    for argv in (["experiments", "list"], ["experiments", "show", "x"]):
        err = one_line_error(*run(capsys, *argv)[::2])
        assert str(database) in err and "damaged" in err
    assert database.read_bytes() == b"garbage" * 100


def test_eval_int8_reports_the_int8_variant_and_saves_its_figures(capsys, home, tmp_path):
    from explorer.engine.workbench import open_workbench
    from explorer.keep.quantize import int8_report

    argv = ["eval", "lenet300", "--amount", "0.6", "--int8", "--no-latency", "--json"]
    code, out, _ = run(capsys, *argv, "--save", "q60")
    assert code == 0
    data = json.loads(out)
    oracle = int8_report(open_workbench("lenet300"), PruningPlan(amount=0.6), latency=False)
    assert data["int8"]["int8_accuracy"] == oracle.int8_accuracy
    assert data["int8"]["combined_reduction"] == pytest.approx(oracle.combined_reduction)
    saved = default_experiments().get("q60").metrics["int8"]
    assert saved["accuracy"] == oracle.int8_accuracy and saved["bytes"] == oracle.int8_bytes
    # the CSV gets int8 columns next to the fp32 ones
    table = tmp_path / "all.csv"
    assert run(capsys, "experiments", "export", "--out", str(table))[0] == 0
    header = next(csv.reader(table.read_text().splitlines()))
    assert "int8_accuracy" in header and "int8_combined_reduction" in header
    code, shown, _ = run(capsys, "experiments", "show", "q60")
    assert code == 0 and "int8 variant" in shown and f"{oracle.int8_bytes:,}" in shown
    # and the text report shows the combined reduction users quote
    code, text, _ = run(capsys, "eval", "lenet300", "--amount", "0.6", "--int8", "--no-latency")
    assert code == 0 and "combined reduction (dense fp32 -> pruned int8):" in text
    assert f"{oracle.combined_reduction:.1f}x smaller" in text
