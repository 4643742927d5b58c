"""Saved experiments in SQLite: exact round trips, restarts, concurrent writers, files that are
not ours (left untouched), migrations, CSV."""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import plan_label
from explorer.engine.subject import DataSpec, ModelSource, Subject
from explorer.keep import experiments as ex
from explorer.keep.experiments import (
    ExperimentExists,
    ExperimentNotFound,
    ExperimentsError,
    ExperimentStore,
    default_experiments,
    from_report,
)
from explorer.loading.store import HOME_ENV

ROOT = Path(__file__).resolve().parents[2]

SUBJECT = Subject(
    ModelSource.parse("torchvision:resnet18", {"num_classes": 10}),
    "sha256:" + "ab" * 32,
    DataSpec(
        source="/data/shapes.npz",
        size=(32, 32),
        channels=3,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        eval_fraction=0.25,
        seed=3,
    ),
)
PLAN = PruningPlan(
    method="filters",
    criterion="magnitude",
    scope="layer",
    amount=0.35,
    unit_amounts=(("layer1.0.conv1", 0.9), ("conv1", 0.1)),
    dense_units=("fc",),
    norm=2.0,
    seed=7,
)
LATENCY = [
    {
        "model": model,
        "batch": batch,
        "median_ms": 1.25 * batch,
        "p25_ms": 1.0,
        "p75_ms": 1.5,
        "repeats": 30,
        "threads": 4,
        "samples_ms": [1.0, 1.25, 1.5],
        "spread_ms": 0.5,
    }
    for model in ("dense", "masked")
    for batch in (1, 32)
]
METRICS = {
    "accuracy": 0.1 + 0.2,  # not a short decimal: must come back bit for bit
    "dense_accuracy": 0.9847999811172485,
    "loss": 0.06256023049354553,
    "sparsity": 1 / 3,
    "prunable_sparsity": 0.35,
    "flops_dense": 1_818_000_000,
    "flops_effective": 1_200_000_000,
    "flops_compacted": None,
    "params_total": 11_689_512,
    "params_nonzero": 7_600_000,
    "size_dense": 46_827_520,
    "size_sparse": 30_000_000,
    "size_compacted": None,
    "latency": LATENCY,
}


@pytest.fixture
def store(tmp_path: Path) -> ExperimentStore:
    return ExperimentStore(tmp_path / "experiments.sqlite3")


def _save(store: ExperimentStore, name: str, amount: float = 0.5, **metrics: float):
    return store.save(name, Subject.bundled("lenet5"), PruningPlan(amount=amount), metrics)


def _closed_bytes(path: Path) -> bytes:
    """The file's bytes once every connection is closed (WAL content checkpointed into it)."""
    assert not Path(f"{path}-wal").exists(), "a connection was left open"
    return path.read_bytes()


# --- round trips ----------------------------------------------------------------------------------


def test_save_then_get_round_trips_subject_plan_metrics_exactly(store):
    saved = store.save("resnet filters", SUBJECT, PLAN, METRICS, note="line one\nline two")
    got = store.get("resnet filters")
    assert got == saved
    assert got.subject == SUBJECT and got.subject.key == SUBJECT.key
    assert got.plan == PLAN and got.plan.unit_amounts == PLAN.unit_amounts
    assert got.metrics == METRICS
    assert got.metrics["accuracy"] == 0.1 + 0.2  # exact, not approximately
    assert type(got.metrics["flops_dense"]) is int
    assert got.note == "line one\nline two"
    assert len(got.id) == 32 and got.created.endswith("+00:00")


def test_reopening_the_file_is_a_restart_that_keeps_everything(tmp_path):
    path = tmp_path / "experiments.sqlite3"
    saved = ExperimentStore(path).save("kept", SUBJECT, PLAN, METRICS)
    reopened = ExperimentStore(path)
    assert reopened.get("kept") == saved
    assert reopened.list() == [saved]


def test_get_by_id_and_id_prefix_and_close_matches(store):
    saved = _save(store, "baseline")
    assert store.get(saved.id) == saved
    assert store.get(saved.id[:8]) == saved
    with pytest.raises(ExperimentNotFound, match=r"did you mean 'baseline'\?") as err:
        store.get("basline")
    assert str(store.path) in str(err.value) and "\n" not in str(err.value)


def test_list_is_newest_first_and_filters_by_subject(store):
    first = _save(store, "one")
    second = store.save("two", SUBJECT, PLAN, {})
    third = _save(store, "three")
    assert [e.name for e in store.list()] == ["three", "two", "one"]
    lenet = Subject.bundled("lenet5").key
    assert store.list(subject_key=lenet) == [third, first]
    assert store.list(subject_key=SUBJECT.key) == [second]
    assert store.list(subject_key="0" * 16) == []


def test_delete_returns_the_experiment_and_removes_only_it(store):
    keep, gone = _save(store, "keep"), _save(store, "gone")
    assert store.delete("gone") == gone
    assert store.list() == [keep]
    with pytest.raises(ExperimentNotFound):
        store.delete("gone")


def test_from_report_keeps_the_scalar_metrics_and_latency_rows():
    from explorer.engine.workbench import open_workbench

    report = open_workbench("lenet300").report(PruningPlan(amount=0.5))
    metrics = from_report(report)
    for key in ex.REPORT_METRICS:
        assert metrics[key] == getattr(report, key)
    assert "latency" not in metrics  # not measured: no empty rows pretending it was
    timed = from_report(
        type(report)(**{**report.to_dict(), "latency": [dict(LATENCY[0])]})  # as if measured
    )
    assert timed["latency"] == [LATENCY[0]]


# --- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "needs a name"),
        ("   ", "needs a name"),
        ("x" * (ex.MAX_NAME_LENGTH + 1), f"at most {ex.MAX_NAME_LENGTH} characters"),
        ("two\nlines", "control characters"),
    ],
)
def test_bad_names_are_refused_with_a_clear_message(store, name, message):
    with pytest.raises(ExperimentsError, match=message):
        _save(store, name)
    assert store.list() == []


def test_an_existing_name_is_an_error_unless_replace_is_explicit(store):
    old = _save(store, "run", accuracy=0.5)
    with pytest.raises(ExperimentExists, match=r"'run' exists already.*replace"):
        _save(store, "run", accuracy=0.9)
    assert store.list() == [old]
    new = store.save(
        "run", Subject.bundled("lenet5"), PruningPlan(), {"accuracy": 0.9}, replace=True
    )
    assert store.list() == [new] and new.id != old.id and new.metrics == {"accuracy": 0.9}


def test_metrics_that_are_not_json_and_long_notes_are_refused(store):
    with pytest.raises(ExperimentsError, match="JSON data"):
        _save(store, "x", accuracy={1, 2})  # type: ignore[arg-type]
    with pytest.raises(ExperimentsError, match="at most"):
        store.save("x", SUBJECT, PLAN, {}, note="n" * (ex.MAX_NOTE_LENGTH + 1))
    assert store.list() == []


# --- concurrent writers ---------------------------------------------------------------------------


def test_threads_saving_at_the_same_moment_all_land(tmp_path):
    shared = ExperimentStore(tmp_path / "experiments.sqlite3")
    threads, per_thread = 8, 10
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(who: int) -> None:
        # Half share one store object, half open their own: both ways are used by the app.
        store = shared if who % 2 else ExperimentStore(shared.path)
        barrier.wait()
        try:
            for i in range(per_thread):
                _save(store, f"t{who}-{i}", accuracy=i / 10)
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    names = {e.name for e in shared.list()}
    assert names == {f"t{w}-{i}" for w in range(threads) for i in range(per_thread)}


def test_threads_racing_for_one_name_exactly_one_wins(store):
    barrier, outcomes = threading.Barrier(6), []

    def work() -> None:
        barrier.wait()
        try:
            _save(store, "contested")
            outcomes.append("saved")
        except ExperimentExists:
            outcomes.append("exists")

    workers = [threading.Thread(target=work) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(outcomes) == ["exists"] * 5 + ["saved"]
    assert len(store.list()) == 1


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from explorer.keep.experiments import ExperimentStore
    from explorer.engine.plan import PruningPlan
    from explorer.engine.subject import Subject

    path, who, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    Path(f"{go}.ready.{who}").touch()
    while not go.exists():  # every process starts writing at the same moment
        time.sleep(0.001)
    store = ExperimentStore(path)  # the first ones create the (new) file at the same time
    for i in range(count):
        store.save(f"p{who}-{i}", Subject.bundled("lenet5"), PruningPlan(amount=0.5), {"i": i})
    """
)


def test_processes_saving_at_the_same_moment_all_land(tmp_path):
    path, go = tmp_path / "experiments.sqlite3", tmp_path / "go"
    processes, per_process = 6, 5
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(n), str(per_process), str(go)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("go.ready.*"))) < processes:
            assert time.monotonic() < deadline, "the children did not start"
            assert all(c.poll() is None for c in children), children[0].communicate()[1]
            time.sleep(0.01)
        go.touch()
        for child in children:
            _, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    names = [e.name for e in ExperimentStore(path).list()]
    assert len(names) == processes * per_process
    assert set(names) == {f"p{w}-{i}" for w in range(processes) for i in range(per_process)}


# --- files that are not ours stay exactly as they were --------------------------------------------


def _assert_refused(path: Path, match: str) -> None:
    before = path.read_bytes()
    neighbours = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(ExperimentsError, match=match) as err:
        ExperimentStore(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == neighbours  # no backup, no journal


def test_a_file_that_is_not_sqlite_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "experiments.sqlite3"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    _assert_refused(path, "damaged.*not a SQLite database")


def test_a_sqlite_file_with_damaged_pages_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "experiments.sqlite3"
    store = ExperimentStore(path)
    for n in range(40):
        _save(store, f"e{n}")
    data = bytearray(_closed_bytes(path))
    page = int.from_bytes(data[16:18], "big")
    assert len(data) >= 3 * page
    data[page : 3 * page] = b"\xa5" * (2 * page)  # scribble over pages 2 and 3
    path.write_bytes(bytes(data))
    _assert_refused(path, "damaged")


def test_a_truncated_file_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "experiments.sqlite3"
    store = ExperimentStore(path)
    for n in range(40):
        _save(store, f"e{n}")
    data = _closed_bytes(path)
    path.write_bytes(data[: len(data) // 2 + 123])
    _assert_refused(path, "damaged")


def test_another_programs_database_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "experiments.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        conn.execute("INSERT INTO users (email) VALUES ('a@example.com')")
    conn.close()
    _assert_refused(path, r"another program's SQLite database \(tables: users\)")


def test_a_newer_layout_version_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "experiments.sqlite3"
    _save(ExperimentStore(path), "from the future")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {ex.SCHEMA_VERSION + 1}")
    conn.close()
    _closed_bytes(path)
    _assert_refused(path, f"newer pruning-explorer.*version {ex.SCHEMA_VERSION + 1}")


def test_a_file_damaged_after_opening_gives_the_same_clear_error(tmp_path):
    path = tmp_path / "experiments.sqlite3"
    store = ExperimentStore(path)
    _save(store, "before")
    path.write_bytes(b"overwritten by something else" * 100)
    before = path.read_bytes()
    with pytest.raises(ExperimentsError, match="damaged"):
        store.list()
    with pytest.raises(ExperimentsError, match="damaged"):
        _save(store, "after")
    assert path.read_bytes() == before


# --- migrations -----------------------------------------------------------------------------------


def test_an_empty_version_0_database_made_by_hand_is_set_up(tmp_path):
    path = tmp_path / "experiments.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE scratch (x)")  # leaves a real file with a header ...
    conn.execute("DROP TABLE scratch")  # ... and no tables: version 0, an empty database
    conn.commit()
    conn.close()
    assert path.stat().st_size > 0
    store = ExperimentStore(path)
    _save(store, "first")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == ex.SCHEMA_VERSION
    assert conn.execute("PRAGMA application_id").fetchone()[0] == ex.APPLICATION_ID
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert [e.name for e in store.list()] == ["first"]


def _version_1_by_hand(path: Path) -> None:
    """A version-1 file written with plain SQL (as an older release left it), one experiment."""
    conn = sqlite3.connect(path)
    conn.executescript(
        f"""
        CREATE TABLE experiments (
            id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created TEXT NOT NULL,
            subject_key TEXT NOT NULL, subject TEXT NOT NULL, plan TEXT NOT NULL,
            metrics TEXT NOT NULL, note TEXT NOT NULL DEFAULT ''
        );
        PRAGMA user_version = 1;
        PRAGMA application_id = {ex.APPLICATION_ID};
        """
    )
    conn.execute(
        "INSERT INTO experiments VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            "0123456789abcdef0123456789abcdef",
            "old one",
            "2024-05-01T10:00:00.000000+00:00",
            SUBJECT.key,
            SUBJECT.to_json(),
            PLAN.to_json(),
            '{"accuracy": 0.75}',
            "from version 1",
        ),
    )
    conn.commit()
    conn.close()


def test_a_version_1_database_is_migrated_in_a_transaction_after_a_backup(tmp_path, monkeypatch):
    path = tmp_path / "experiments.sqlite3"
    _version_1_by_hand(path)

    def add_tags(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE experiments ADD COLUMN tags TEXT NOT NULL DEFAULT ''")

    monkeypatch.setattr(ex, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(ex, "MIGRATIONS", {**ex.MIGRATIONS, 1: add_tags})
    store = ExperimentStore(path)
    old = store.get("old one")
    assert (old.subject, old.plan, old.metrics, old.note) == (
        SUBJECT,
        PLAN,
        {"accuracy": 0.75},
        "from version 1",
    )
    _save(store, "new one")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert "tags" in [row[1] for row in conn.execute("PRAGMA table_info(experiments)")]
    conn.close()
    backup = tmp_path / "experiments.v1.backup.sqlite3"
    conn = sqlite3.connect(backup)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT name FROM experiments").fetchall() == [("old one",)]
    conn.close()


def test_a_failing_migration_leaves_the_old_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "experiments.sqlite3"
    _version_1_by_hand(path)

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE experiments ADD COLUMN tags TEXT")
        conn.execute("DELETE FROM experiments")
        raise RuntimeError("disk full, say")

    monkeypatch.setattr(ex, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(ex, "MIGRATIONS", {**ex.MIGRATIONS, 1: half_done})
    with pytest.raises(ExperimentsError, match=r"could not upgrade.*disk full.*left as it was"):
        ExperimentStore(path)
    monkeypatch.undo()  # this code again: the file is still a good version 1
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "tags" not in [row[1] for row in conn.execute("PRAGMA table_info(experiments)")]
    conn.close()
    assert ExperimentStore(path).get("old one").note == "from version 1"


# --- read-only locations --------------------------------------------------------------------------


def _read_only_connect(path: Path) -> sqlite3.Connection:
    """What SQLite does on a read-only mount (which root, running these tests in a container,
    cannot get from chmod): open read-only, so that any write fails with SQLITE_READONLY."""
    return sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, timeout=1, isolation_level=None, check_same_thread=False
    )


def test_a_read_only_database_gives_a_clear_message(tmp_path, monkeypatch):
    path = tmp_path / "experiments.sqlite3"
    _save(ExperimentStore(path), "kept")
    before = _closed_bytes(path)
    monkeypatch.setattr(ex, "_connect", _read_only_connect)
    store = ExperimentStore(path)
    assert [e.name for e in store.list()] == ["kept"]  # reading still works
    with pytest.raises(ExperimentsError, match="location is read-only.*" + HOME_ENV) as err:
        _save(store, "new")
    assert str(path) in str(err.value)
    monkeypatch.undo()
    # (a read-only connection cannot tidy away its empty -wal file; the database is unchanged)
    assert path.read_bytes() == before


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere"
)
def test_a_read_only_folder_gives_a_clear_message(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ExperimentsError, match="location is read-only"):
            ExperimentStore(folder / "experiments.sqlite3")
    finally:
        folder.chmod(0o755)


# --- CSV ------------------------------------------------------------------------------------------


def test_csv_has_one_row_per_experiment_with_flattened_metrics(store, tmp_path):
    timed = store.save("timed", SUBJECT, PLAN, METRICS, note='says "hi", twice')
    plain = _save(store, "plain", accuracy=0.5)
    out = tmp_path / "experiments.csv"
    assert store.to_csv(out) == 2
    with open(out, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames, list(reader)
    assert header[: len(ex.CSV_COLUMNS)] == list(ex.CSV_COLUMNS)
    assert header[-2:] == ["subject", "plan"]
    assert header.index("accuracy") < header.index("latency_dense_b1_median_ms")
    assert [row["name"] for row in rows] == ["plain", "timed"]  # newest first
    second, first = rows
    assert first["id"] == timed.id and first["note"] == 'says "hi", twice'
    assert first["subject_label"] == SUBJECT.label and first["subject_key"] == SUBJECT.key
    assert first["plan_label"] == plan_label(PLAN)
    assert float(first["accuracy"]) == 0.1 + 0.2
    assert int(first["flops_dense"]) == METRICS["flops_dense"]
    assert first["flops_compacted"] == ""  # None
    assert float(first["latency_masked_b32_median_ms"]) == 40.0
    assert float(first["latency_dense_b1_spread_ms"]) == 0.5
    assert not any(column.endswith("samples_ms") for column in header)
    assert Subject.from_json(first["subject"]) == SUBJECT
    assert PruningPlan.from_json(first["plan"]) == PLAN
    assert second["id"] == plain.id and float(second["accuracy"]) == 0.5
    assert second["latency_dense_b1_median_ms"] == "" and second["loss"] == ""
    buffer = io.StringIO()
    assert store.to_csv(buffer, subject_key=SUBJECT.key) == 1
    assert [row["name"] for row in csv.DictReader(io.StringIO(buffer.getvalue()))] == ["timed"]


# --- the default database -------------------------------------------------------------------------


def test_default_experiments_live_under_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    store = default_experiments()
    assert store.path == tmp_path / "home" / ex.FILE_NAME
    assert default_experiments() is store
    _save(store, "here")
    assert (tmp_path / "home" / ex.FILE_NAME).is_file()
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "other"))
    assert default_experiments().list() == []


def test_a_home_that_cannot_be_made_gives_a_clear_message(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(HOME_ENV, str(blocker / "home"))
    with pytest.raises(ExperimentsError, match=HOME_ENV):
        default_experiments()
