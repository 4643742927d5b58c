"""Saving experiments from the Prune page, comparing them on the Compare page, loading one back
onto the sliders, deleting, and exporting files: driven through AppTest, checked against
``explorer`` (the oracle) and the database itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.engine.plan import PruningPlan
from explorer.engine.subject import Subject
from explorer.engine.workbench import open_workbench
from explorer.keep.experiments import FILE_NAME, ExperimentStore
from explorer.keep.export import export_file_name

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120


def start(page: str = "home", **query: str) -> AppTest:
    """The app at ``page`` (as ``tests/app/test_app.py`` starts it)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params.update(query)
    at.run()
    if page != "home":
        at.switch_page(f"pages/{page}.py").run()
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def assert_clean(at: AppTest) -> None:
    """No exception, and no unexpected error caught by the pages' last line of defence."""
    assert not at.exception, [e.value for e in at.exception]
    crashes = [e.value for e in at.error if e.value.startswith("Something went wrong")]
    assert not crashes, crashes


@pytest.fixture(scope="module")
def lenet5():
    return open_workbench("lenet5")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh data directory: its own experiments database."""
    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path))
    return tmp_path


def save(at: AppTest, name: str, note: str = "") -> AppTest:
    at.text_input(key="save_name").input(name)
    at.text_input(key="save_note").input(note)
    return at.button(key="save_button").click().run()


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def compare_table(at: AppTest):
    (table,) = [d for d in at.dataframe if d.key and d.key.startswith("cmp_table::")]
    return table


def select_row(at: AppTest, name: str) -> AppTest:
    table = compare_table(at)
    row = list(table.value["name"]).index(name)
    at.session_state[table.key] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    return at.run()


def test_two_saved_plans_are_compared_loaded_back_and_deleted(home, lenet5):
    at = start("prune", model="lenet5", amount="0.3")
    save(at, "thirty", "magnitude, global")
    assert_clean(at)
    assert any(s.startswith("Saved 'thirty'") for s in texts(at.success)), texts(at.error)
    assert at.text_input(key="save_name").value == ""  # free for the next one
    at.slider(key="ctl_amount").set_value(90).run()
    save(at, "ninety")
    assert_clean(at)
    assert any(s.startswith("Saved 'ninety'") for s in texts(at.success))

    at.switch_page("pages/compare.py").run()
    assert_clean(at)
    assert not at.error, texts(at.error)
    frame = compare_table(at).value
    assert sorted(frame["name"]) == ["ninety", "thirty"]
    for name, amount in (("thirty", 0.3), ("ninety", 0.9)):
        row = frame[frame["name"] == name].iloc[0]
        report = lenet5.report(PruningPlan(amount=amount))
        assert row["accuracy"] == pytest.approx(report.accuracy * 100, abs=1e-9)
        assert row["Δ vs dense"] == pytest.approx(report.accuracy_delta * 100, abs=1e-9)
        assert row["sparsity"] == pytest.approx(report.prunable_sparsity * 100)
        assert row["subject"] == "lenet5"
        assert row["speed-up"] > 0  # the paired timing the page measured was stored with it
    # The scatter: both experiments, accuracy in percent.
    (chart,) = at.get("plotly_chart")
    markers = [t for t in json.loads(chart.proto.spec)["data"] if t.get("mode") == "markers"]
    assert sorted(markers[0]["y"]) == pytest.approx(sorted(frame["accuracy"]))
    # Nothing selected yet: no action to take.
    assert not [b for b in at.button if b.key == "cmp_load"]

    # The plan is now 90%: load the 30% one back onto the sliders.
    select_row(at, "thirty")
    assert_clean(at)
    at.button(key="cmp_load").click().run()
    assert_clean(at)
    assert [t.value for t in at.title] == ["Prune"]
    assert at.session_state["plan"] == PruningPlan(amount=0.3)
    assert at.session_state["model"] == Subject.bundled("lenet5")
    assert at.slider(key="ctl_amount").value == 30
    assert metric(at, "Accuracy") == f"{lenet5.report(PruningPlan(amount=0.3)).accuracy:.2%}"
    assert any("Loaded 'thirty'" in i for i in texts(at.info))

    # Delete "ninety": only after the confirmation is ticked.
    at.switch_page("pages/compare.py").run()
    select_row(at, "ninety")
    assert at.button(key="cmp_delete").disabled
    (confirm,) = [c for c in at.checkbox if c.key and c.key.startswith("cmp_confirm::")]
    confirm.check().run()
    at.button(key="cmp_delete").click().run()
    assert_clean(at)
    assert any("Deleted 'ninety'" in s for s in texts(at.success))
    assert list(compare_table(at).value["name"]) == ["thirty"]
    assert [e.name for e in ExperimentStore(home / FILE_NAME).list()] == ["thirty"]


def test_a_taken_name_says_so_and_replace_overwrites_it(home, lenet5):
    at = start("prune", model="lenet5", amount="0.5")
    save(at, "mine", "first")
    at.slider(key="ctl_amount").set_value(70).run()
    save(at, "mine", "second")
    assert_clean(at)
    errors = texts(at.error)
    assert any("'mine' exists already" in e and "Replace" in e for e in errors), errors
    assert at.text_input(key="save_name").value == "mine"  # the user's input is kept
    assert at.text_input(key="save_note").value == "second"
    stored = ExperimentStore(home / FILE_NAME).get("mine")
    assert stored.plan == PruningPlan(amount=0.5) and stored.note == "first"
    at.checkbox(key="save_replace::mine").check()
    at.button(key="save_button").click().run()
    assert_clean(at)
    assert any("replaced the old one" in s for s in texts(at.success))
    (stored,) = ExperimentStore(home / FILE_NAME).list()
    assert stored.plan == PruningPlan(amount=0.7) and stored.note == "second"
    assert stored.metrics["accuracy"] == lenet5.report(PruningPlan(amount=0.7)).accuracy


def test_an_empty_name_is_a_message_not_a_save(home):
    at = start("prune", model="lenet5", amount="0.5")
    save(at, "   ", "a note worth keeping")
    assert_clean(at)
    assert any("needs a name" in e for e in texts(at.error)), texts(at.error)
    assert at.text_input(key="save_note").value == "a note worth keeping"
    assert ExperimentStore(home / FILE_NAME).list() == []


def test_an_empty_database_says_how_to_save_one(home):
    at = start("compare", model="lenet5")
    assert_clean(at)
    assert [t.value for t in at.title] == ["Compare"]
    assert any("Save this experiment" in i for i in texts(at.info))
    assert not at.error


def test_a_corrupt_database_is_reported_and_the_app_keeps_running(home):
    (home / FILE_NAME).write_bytes(b"this is not a database, but someone's notes" * 100)
    at = start("compare", model="lenet5")
    assert_clean(at)
    assert any("damaged" in e for e in texts(at.error)), texts(at.error)
    at.switch_page("pages/prune.py").run()
    assert_clean(at)
    save(at, "kept", "my note")
    assert_clean(at)
    assert any(e.startswith("Not saved") and "damaged" in e for e in texts(at.error))
    assert at.text_input(key="save_name").value == "kept"  # nothing the user typed is lost
    assert at.text_input(key="save_note").value == "my note"
    assert metric(at, "Accuracy")  # the workbench still works
    # The file was left exactly as it was.
    assert (home / FILE_NAME).read_bytes().startswith(b"this is not a database")


@pytest.mark.parametrize("fmt", ["zeros", "pt2"])
def test_an_export_is_built_and_offered_for_download(home, fmt):
    at = start("prune", model="lenet5", amount="0.5")
    at.selectbox(key="export_format").set_value(fmt).run()
    at.button(key="export_button").click().run()
    assert_clean(at)
    suffix = {"zeros": ".pt", "pt2": ".pt2"}[fmt]
    # named after model, plan and format, as the CLI names it
    name = export_file_name("lenet5", PruningPlan(amount=0.5), fmt)
    assert name.endswith(suffix) and name.startswith("lenet5_unstructured50")
    # its size in human units (decimal KB / MB), as every size on the page
    assert any(
        s.startswith(f"{name} is ready") and re.search(r"\d(\.\d)? [KM]B on disk", s)
        for s in texts(at.success)
    )
    (download,) = [b for b in at.get("download_button") if b.key == "export_download"]
    assert download.label == f"Download {name}"
    # Another plan: the file built for the old one is no longer offered.
    at.slider(key="ctl_amount").set_value(60).run()
    assert not [b for b in at.get("download_button") if b.key == "export_download"]
    assert any("build the file again" in c.value for c in at.caption)


def test_formats_follow_the_method_and_an_unusable_one_is_a_message(home):
    at = start("prune", model="lenet5", method="filters", amount="0.5")
    ratios = "Torch-Pruning ratios (.json)"  # as the list shows tp-ratios
    assert ratios in at.selectbox(key="export_format").options
    at.selectbox(key="export_format").set_value("tp-ratios").run()
    at.selectbox(key="ctl_method").set_value("unstructured").run()
    assert ratios not in at.selectbox(key="export_format").options
    assert at.selectbox(key="export_format").value == "zeros"  # the first that applies
    # A format chosen from a list drawn for another method (the section had not rerun yet).
    at.session_state["export_request"] = "tp-ratios"
    at.run()
    assert_clean(at)
    assert any(e.startswith("Could not export: tp-ratios") for e in texts(at.error))
    assert not [b for b in at.get("download_button") if b.key == "export_download"]


def test_a_saved_model_that_cannot_be_opened_is_a_message_and_nothing_changes(home):
    gone = Subject.bundled("lenet5").with_weights("sha256:" + "0" * 64)  # weights not stored
    ExperimentStore(home / FILE_NAME).save("lost", gone, PruningPlan(amount=0.4), {})
    at = start("compare", model="lenet5", amount="0.2")
    select_row(at, "lost")
    at.button(key="cmp_load").click().run()
    assert_clean(at)
    assert [t.value for t in at.title] == ["Compare"]
    assert any("cannot be opened" in e for e in texts(at.error)), texts(at.error)
    assert at.session_state["plan"] == PruningPlan(amount=0.2)
    assert at.session_state["model"] == Subject.bundled("lenet5")


def test_subjects_are_filtered_and_missing_numbers_do_not_break_the_page(home):
    from explorer.keep.experiments import from_report

    store = ExperimentStore(home / FILE_NAME)
    for model, amount in (("lenet5", 0.5), ("lenet300", 0.5), ("lenet300", 0.8)):
        plan = PruningPlan(amount=amount)
        metrics = from_report(open_workbench(model).report(plan))
        store.save(f"{model} {amount:.0%}", Subject.bundled(model), plan, metrics)
    store.save("by hand", Subject.bundled("lenet5"), PruningPlan(), {"accuracy": 0.5})
    at = start("compare", model="lenet5")
    assert_clean(at)
    assert len(compare_table(at).value) == 4
    (chart,) = at.get("plotly_chart")
    markers = [t for t in json.loads(chart.proto.spec)["data"] if t.get("mode") == "markers"]
    assert sorted(len(t["x"]) for t in markers) == [1, 2]  # one colour per subject
    assert any("by hand" in c.value for c in at.caption)  # not drawn: no sparsity stored
    at.selectbox(key="cmp_subject").set_value(Subject.bundled("lenet300").key).run()
    assert_clean(at)
    assert sorted(compare_table(at).value["name"]) == ["lenet300 50%", "lenet300 80%"]
    at.selectbox(key="cmp_axis").set_value("latency").run()  # none stored: said, not drawn
    assert_clean(at)
    assert any("No shown experiment has a latency" in i for i in texts(at.info))


def test_a_snippet_with_its_masks_file_comes_as_one_zip(home):
    # Taylor-scored filters on LeNet-5: the snippet cannot recompute every choice, so the
    # masks it cannot rebuild are saved beside it (tests/unit/test_export_formats.py).
    at = start("prune", model="lenet5", method="filters", criterion="taylor", amount="0.3")
    at.selectbox(key="export_format").set_value("snippet").run()
    at.button(key="export_button").click().run()
    assert_clean(at)
    stem = export_file_name(
        "lenet5", PruningPlan(method="filters", criterion="taylor", amount=0.3), "snippet"
    ).removesuffix(".py")
    ready = [s for s in texts(at.success) if s.startswith(f"{stem}.zip is ready")]
    assert ready and f"A zip of {stem}.py and {stem}.masks.pt" in ready[0]
    (download,) = [b for b in at.get("download_button") if b.key == "export_download"]
    assert download.label == f"Download {stem}.zip"


def test_int8_figures_are_shown_next_to_fp32_and_saved_with_the_experiment(home, lenet5):
    from explorer.keep.quantize import int8_report

    at = start("prune", model="lenet5", method="filters", amount="0.3")
    labels = lambda: [m.label for m in at.metric]  # noqa: E731
    assert "int8 accuracy" not in labels()  # nothing is measured before the user asks
    at.button(key="int8_button").click().run()
    assert_clean(at)
    oracle = int8_report(lenet5, PruningPlan(method="filters", amount=0.3), latency=False)
    assert metric(at, "int8 accuracy") == f"{oracle.int8_accuracy:.2%}"
    assert metric(at, "Combined reduction") == f"{oracle.combined_reduction:.1f}× smaller"
    (table,) = [d for d in at.dataframe if "model" in d.value and "size" in d.value]
    assert list(table.value["model"]) == ["dense fp32", "pruned fp32 (compacted)", "pruned int8"]
    save(at, "filters-int8")
    assert_clean(at)
    stored = ExperimentStore(home / FILE_NAME).get("filters-int8").metrics["int8"]
    assert stored["accuracy"] == oracle.int8_accuracy and stored["bytes"] == oracle.int8_bytes
    # another plan: its figures are not the old ones; the button asks again
    at.slider(key="ctl_amount").set_value(50).run()
    assert_clean(at)
    assert "int8 accuracy" not in labels()
    assert at.button(key="int8_button").label == "Quantize and measure"
    # the Compare page shows the int8 columns of the saved experiment
    at.switch_page("pages/compare.py").run()
    assert_clean(at)
    row = compare_table(at).value.iloc[0]
    assert row["int8 accuracy"] == pytest.approx(oracle.int8_accuracy * 100)
    assert row["int8 ×"] == pytest.approx(oracle.combined_reduction)
