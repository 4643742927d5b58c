"""Plans saved before per-layer amounts became per-unit amounts (plan format 1, "layers") still
read: a plan file, a link and an experiments database, each written by the code of that time
(tests/fixtures/v1)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from explorer.cli.main import main
from explorer.engine.plan import PLAN_VERSION, PruningPlan, plan_from_query, plan_to_query
from explorer.keep.experiments import ExperimentStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v1"
#: What the version-1 files hold, written out by hand.
SAVED = PruningPlan(scope="layer", amount=0.4, unit_amounts=(("fc1", 0.9),), dense_units=("fc3",))


def test_a_version_1_plan_file_reads_as_the_same_plan_and_writes_as_version_2():
    text = (FIXTURES / "plan.json").read_text()
    assert json.loads(text)["version"] == 1 and "layers" in json.loads(text)
    plan = PruningPlan.from_json(text)
    assert plan == SAVED
    assert plan.amount_for("fc1") == 0.9 and plan.amount_for("fc3") == 0.0
    data = plan.to_dict()
    assert data["version"] == PLAN_VERSION == 2
    assert data["units"] == {"fc1": 0.9} and "layers" not in data


def test_a_hand_written_plan_without_a_version_may_use_the_old_name():
    assert PruningPlan.from_dict({"scope": "layer", "layers": {"fc1": 0.9}}).overrides == {
        "fc1": 0.9
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": 2, "layers": {"fc1": 0.9}}, '"layers" is "units" since plan version 2'),
        ({"layers": {"fc1": 0.9}, "units": {"fc2": 0.5}}, 'give "units" or its old name'),
        ({"version": 3}, "version 3 is not supported"),
    ],
)
def test_mixed_names_are_refused_in_one_line(data, message):
    with pytest.raises(ValueError, match=message):
        PruningPlan.from_dict(data)


def test_a_link_made_with_layers_opens_the_same_plan_and_new_links_say_units():
    old_link = {"scope": "layer", "amount": "0.4", "layers": "fc1:0.9", "dense": "fc3"}
    assert plan_from_query(old_link) == SAVED
    query = plan_to_query(SAVED)
    assert query["units"] == "fc1:0.9" and "layers" not in query
    assert plan_from_query(query) == SAVED


def test_a_version_1_experiments_database_is_migrated_and_its_plan_reads(tmp_path):
    path = tmp_path / "experiments.sqlite3"
    shutil.copy(FIXTURES / "experiments.sqlite3", path)
    saved = ExperimentStore(path).get("per-layer, saved before units")
    assert saved.plan == SAVED
    assert saved.note == "written by the plan format of version 1"
    assert 0 < saved.metrics["accuracy"] <= 1
    # the rows now hold format 2, and the old file is kept beside it
    conn = sqlite3.connect(path)
    (text,) = conn.execute("SELECT plan FROM experiments").fetchone()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()
    assert json.loads(text)["version"] == 2 and json.loads(text)["units"] == {"fc1": 0.9}
    backup = sqlite3.connect(tmp_path / "experiments.v1.backup.sqlite3")
    (old,) = backup.execute("SELECT plan FROM experiments").fetchone()
    backup.close()
    assert json.loads(old)["layers"] == {"fc1": 0.9}


def test_the_cli_reads_the_old_plan_file_and_keeps_layer_as_an_alias(capsys, tmp_path):
    out = {}
    for flag in ("--unit", "--layer"):
        plan_flags = ["--scope", "layer", "--amount", "0.4", "--dense", "fc3", flag, "fc1=0.9"]
        assert main(["prune", "lenet5", *plan_flags, "--save-plan", f"{tmp_path}/{flag}.json"]) == 0
        out[flag] = PruningPlan.from_json((tmp_path / f"{flag}.json").read_text())
    assert out["--unit"] == out["--layer"] == SAVED
    assert main(["prune", "lenet5", "--plan", str(FIXTURES / "plan.json"), "--json"]) == 0
    capsys.readouterr()
