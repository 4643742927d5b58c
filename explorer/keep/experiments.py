"""Saved experiments: a subject, a plan and the numbers measured for it, kept in SQLite.

One file, ``experiments.sqlite3`` under the same home as the store (``PRUNING_EXPLORER_HOME``
overrides it). The design goal is that *nothing is lost*:

* every write is one transaction (``BEGIN IMMEDIATE``) in WAL journal mode with
  ``synchronous=FULL``: a crash or power cut leaves the file as it was before or after a save,
  never half of one; readers never block the writer;
* several threads and processes may save at the same moment: each waits its turn (a busy
  timeout of ``BUSY_TIMEOUT_S``) instead of failing;
* the file is only ever written once it is known to be ours: a corrupt file, another program's
  database, or one written by a newer version of this code raises ``ExperimentsError`` naming
  the file, and is left byte for byte as it was;
* the layout has a version (``PRAGMA user_version``, with ``PRAGMA application_id`` marking the
  file as ours); an older file is upgraded by ``MIGRATIONS``, one step at a time, in a single
  transaction, after a copy of the old file was written beside it.

Metrics are stored as a JSON object, so a new metric needs no change of the layout.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import io
import json
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from explorer.engine.plan import PruningPlan
from explorer.engine.subject import Subject
from explorer.loading.store import HOME_ENV, home

if TYPE_CHECKING:
    from explorer.engine.workbench import Report

FILE_NAME = "experiments.sqlite3"
#: "PEXP": marks a SQLite file as this project's, so another program's database is recognised.
APPLICATION_ID = 0x50455850
#: The layout this code reads and writes.
SCHEMA_VERSION = 2
#: How long a save waits for another writer (thread or process) before giving up.
BUSY_TIMEOUT_S = 10.0
MAX_NAME_LENGTH = 100
MAX_NOTE_LENGTH = 10_000
#: A metrics object is a few kilobytes; far more is a mistake (a tensor's values, a dataset).
MAX_METRICS_BYTES = 1 << 20
#: Shortest id prefix that ``get`` accepts (the CLI shows 8 characters).
MIN_ID_PREFIX = 6
SQLITE_MAGIC = b"SQLite format 3\x00"

#: The scalar metrics ``from_report`` keeps, in the order tables and the CSV show them.
REPORT_METRICS = (
    "accuracy",
    "dense_accuracy",
    "loss",
    "dense_loss",
    "changed",
    "eval_samples",
    "sparsity",
    "prunable_sparsity",
    "flops_dense",
    "flops_effective",
    "flops_compacted",
    "params_total",
    "params_nonzero",
    "params_compacted",
    "size_dense",
    "size_sparse",
    "size_compacted",
)
#: Per latency row, the figures the CSV gets a column for (the raw samples stay in the JSON).
LATENCY_FIELDS = ("median_ms", "spread_ms", "p25_ms", "p75_ms", "repeats", "threads")
#: Columns of ``to_csv`` before the metrics; the subject and plan as JSON come last.
CSV_COLUMNS = ("id", "name", "created", "subject_label", "subject_key", "plan_label", "note")


class ExperimentsError(ValueError):
    """The experiments database cannot do what was asked; the message says why, in one line."""


class ExperimentNotFound(ExperimentsError):
    """No experiment has that name or id."""


class ExperimentExists(ExperimentsError):
    """An experiment of that name exists already (and ``replace`` was not asked for)."""


@dataclass(frozen=True)
class Experiment:
    """One saved experiment, as plain data.

    Attributes:
        id: 32 hex digits, unique; stays with the experiment while it exists.
        name: unique in its database, chosen by the user.
        created: when it was saved, UTC, ISO 8601 (``2025-01-31T12:00:00.123456+00:00``).
        subject: the model, weights and data it was measured on.
        plan: what was pruned.
        metrics: the numbers, as JSON data (``from_report`` makes them from a ``Report``).
        note: free text.
    """

    id: str
    name: str
    created: str
    subject: Subject
    plan: PruningPlan
    metrics: dict[str, Any] = field(hash=False)
    note: str = ""

    @property
    def subject_key(self) -> str:
        return self.subject.key

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the CLI's ``--json``)."""
        return {
            "id": self.id,
            "name": self.name,
            "created": self.created,
            "subject_key": self.subject.key,
            "subject_label": self.subject.label,
            "subject": self.subject.to_dict(),
            "plan": self.plan.to_dict(),
            "metrics": self.metrics,
            "note": self.note,
        }


def from_report(report: Report, int8: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metrics of a ``Workbench.report`` to save: the scalars of ``REPORT_METRICS`` and,
    when latency was measured, its rows (``latency``) as the report has them; with ``int8``
    (``Int8Report.metrics()`` of the same plan) the int8 variant's figures under ``"int8"``."""
    data = report.to_dict()
    metrics = {key: data[key] for key in REPORT_METRICS}
    if data.get("latency"):
        metrics["latency"] = data["latency"]
    if int8 is not None:
        metrics["int8"] = dict(int8)
    return metrics


# --- names ----------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    """``name`` without surrounding blanks, or an ``ExperimentsError`` that says what is wrong."""
    if not isinstance(name, str):
        raise ExperimentsError(f"an experiment's name is text, got {type(name).__name__}")
    name = name.strip()
    if not name:
        raise ExperimentsError("an experiment needs a name (it was empty)")
    if len(name) > MAX_NAME_LENGTH:
        raise ExperimentsError(
            f"an experiment's name has at most {MAX_NAME_LENGTH} characters, "
            f"this one has {len(name)}"
        )
    # A line break or tab in a name would break one-line messages, tables and the CSV.
    if any(not c.isprintable() for c in name):
        raise ExperimentsError(
            f"an experiment's name may not contain control characters, got {name!r}"
        )
    return name


def _check_note(note: str) -> str:
    if not isinstance(note, str):
        raise ExperimentsError(f"a note is text, got {type(note).__name__}")
    if len(note) > MAX_NOTE_LENGTH:
        raise ExperimentsError(
            f"a note has at most {MAX_NOTE_LENGTH:,} characters, this one has {len(note):,}"
        )
    return note


def _metrics_json(metrics: Mapping[str, Any]) -> str:
    if not isinstance(metrics, Mapping):
        raise ExperimentsError(f"metrics are a dict of JSON values, got {type(metrics).__name__}")
    if not all(isinstance(key, str) for key in metrics):
        raise ExperimentsError("metric names must be text")
    try:
        text = json.dumps(dict(metrics))
    except (TypeError, ValueError) as err:
        raise ExperimentsError(f"metrics must be JSON data (numbers, text, lists): {err}") from None
    if len(text) > MAX_METRICS_BYTES:
        raise ExperimentsError(
            f"the metrics are {len(text):,} bytes of JSON, over the limit of "
            f"{MAX_METRICS_BYTES:,}: keep the numbers, not the data they came from"
        )
    return text


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


# --- the layout and its migrations ----------------------------------------------------------------


def _create_v1(conn: sqlite3.Connection) -> None:
    """Version 0 (an empty database) to 1: the experiments table."""
    conn.execute(
        """
        CREATE TABLE experiments (
            id TEXT PRIMARY KEY,              -- 32 hex digits (uuid4)
            name TEXT NOT NULL UNIQUE,
            created TEXT NOT NULL,            -- UTC, ISO 8601: sorts as text
            subject_key TEXT NOT NULL,        -- Subject.key, for listing by subject
            subject TEXT NOT NULL,            -- Subject.to_json()
            plan TEXT NOT NULL,               -- PruningPlan.to_json()
            metrics TEXT NOT NULL,            -- a JSON object: new metrics need no new column
            note TEXT NOT NULL DEFAULT ''
        )
        """
    )
    conn.execute("CREATE INDEX experiments_by_subject ON experiments (subject_key, created)")


def _plans_v2(conn: sqlite3.Connection) -> None:
    """Version 1 to 2: each saved plan in plan format 2, whose per-unit amounts are "units"
    (format 1 said "layers"). Written out here rather than through ``PruningPlan``, so that
    this step stays what it is when the plan format moves on; a plan that is not a JSON object
    is left as it is (reading it reports it, as before)."""
    rows = conn.execute("SELECT id, plan FROM experiments").fetchall()
    for row_id, text in rows:
        try:
            plan = json.loads(text)
        except ValueError:
            continue
        if not isinstance(plan, dict) or plan.get("version", 1) != 1:
            continue
        if "layers" in plan:
            plan["units"] = plan.pop("layers")
        plan["version"] = 2
        conn.execute("UPDATE experiments SET plan = ? WHERE id = ?", (json.dumps(plan), row_id))


#: ``MIGRATIONS[n]`` turns a version-n file into version n + 1. All steps from a file's version
#: to ``SCHEMA_VERSION`` run in one transaction: a failure anywhere leaves the file as it was.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _create_v1, 1: _plans_v2}

_COLUMNS = "id, name, created, subject, plan, metrics, note"


def _connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) that waits for other writers
    up to ``BUSY_TIMEOUT_S`` instead of failing at once."""
    return sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )


def _errorname(err: sqlite3.Error) -> str:
    return getattr(err, "sqlite_errorname", "") or ""  # Python >= 3.11 names SQLite's code


class ExperimentStore:
    """Saved experiments in one SQLite file; safe to share between threads and processes.

    Each operation opens its own short-lived connection: no connection is shared between
    threads, and a file replaced or damaged between two calls is noticed on the next one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()
        self._checked = False  # whether the integrity check ran on this file
        self._lock = threading.Lock()
        with self._connection(""):  # refuse a bad file now, not at the first save
            pass

    def __repr__(self) -> str:
        return f"ExperimentStore({str(self.path)!r})"

    # --- public API ------------------------------------------------------------------------------

    def save(
        self,
        name: str,
        subject: Subject,
        plan: PruningPlan,
        metrics: Mapping[str, Any],
        note: str = "",
        *,
        replace: bool = False,
    ) -> Experiment:
        """Save an experiment under ``name`` and return it as stored.

        An existing name is an ``ExperimentExists`` error unless ``replace``: then the old
        experiment is replaced, in the same transaction, by the new one (with a new id).
        """
        name = check_name(name)
        note = _check_note(note)
        if not isinstance(subject, Subject):
            raise ExperimentsError(f"subject must be a Subject, got {type(subject).__name__}")
        if not isinstance(plan, PruningPlan):
            raise ExperimentsError(f"plan must be a PruningPlan, got {type(plan).__name__}")
        metrics_text = _metrics_json(metrics)
        experiment = Experiment(
            id=uuid.uuid4().hex,
            name=name,
            created=_now(),
            subject=subject,
            plan=plan,
            # What comes back from the file: tuples become lists, as JSON has only lists.
            metrics=json.loads(metrics_text),
            note=note,
        )
        with self._connection("save to") as conn, _transaction(conn):
            row = conn.execute("SELECT created FROM experiments WHERE name = ?", (name,)).fetchone()
            if row is not None:
                if not replace:
                    raise ExperimentExists(
                        f"an experiment named {name!r} exists already (saved {row[0][:19]}Z); "
                        "replace it explicitly (replace=True, --replace) or choose another name"
                    )
                conn.execute("DELETE FROM experiments WHERE name = ?", (name,))
            conn.execute(
                "INSERT INTO experiments (id, name, created, subject_key, subject, plan, "
                "metrics, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    experiment.id,
                    name,
                    experiment.created,
                    subject.key,
                    subject.to_json(),
                    plan.to_json(indent=None),
                    metrics_text,
                    note,
                ),
            )
        return experiment

    def list(self, subject_key: str | None = None) -> list[Experiment]:
        """Every experiment (or those of one subject), newest first."""
        query = f"SELECT {_COLUMNS} FROM experiments"
        params: tuple[str, ...] = ()
        if subject_key is not None:
            query += " WHERE subject_key = ?"
            params = (subject_key,)
        # rowid breaks ties: saves within one microsecond still list in the order they landed.
        query += " ORDER BY created DESC, rowid DESC"
        with self._connection("read") as conn:
            rows = conn.execute(query, params).fetchall()
        return [self._experiment(row) for row in rows]

    def get(self, name_or_id: str) -> Experiment:
        """The experiment with this name, else this id (or an unambiguous id prefix of at least
        ``MIN_ID_PREFIX`` hex digits); ``ExperimentNotFound`` naming close matches otherwise."""
        with self._connection("read") as conn:
            row = self._find(conn, name_or_id)
        return self._experiment(row)

    def delete(self, name_or_id: str) -> Experiment:
        """Delete an experiment (found as ``get`` finds it) and return what was deleted."""
        with self._connection("delete from") as conn, _transaction(conn):
            row = self._find(conn, name_or_id)
            conn.execute("DELETE FROM experiments WHERE id = ?", (row[0],))
        return self._experiment(row)

    def to_csv(self, target: str | Path | IO[str], subject_key: str | None = None) -> int:
        """Write one row per experiment (newest first) to a path or a text file; returns the
        number of rows.

        Columns: ``CSV_COLUMNS``, then one per metric (nested values flattened with ``_``;
        each latency row becomes ``latency_<model>_b<batch>_<field>``), then ``subject`` and
        ``plan`` as JSON, which is everything needed to measure the experiment again.
        """
        experiments = self.list(subject_key)
        flat = [_flatten(e.metrics) for e in experiments]
        metric_columns = _metric_columns(flat)
        header = [*CSV_COLUMNS, *metric_columns, "subject", "plan"]
        rows = [
            {
                "id": e.id,
                "name": e.name,
                "created": e.created,
                "subject_label": e.subject.label,
                "subject_key": e.subject.key,
                "plan_label": _plan_label(e.plan),
                "note": e.note,
                **{k: _csv_value(v) for k, v in metrics.items()},
                "subject": e.subject.to_json(),
                "plan": e.plan.to_json(indent=None),
            }
            for e, metrics in zip(experiments, flat, strict=True)
        ]
        if isinstance(target, str | Path):
            with open(target, "w", newline="", encoding="utf-8") as handle:
                _write_csv(handle, header, rows)
        else:
            _write_csv(target, header, rows)
        return len(rows)

    # --- internals -------------------------------------------------------------------------------

    def _find(self, conn: sqlite3.Connection, name_or_id: str) -> tuple[Any, ...]:
        key = str(name_or_id).strip()
        select = f"SELECT {_COLUMNS} FROM experiments"
        row = conn.execute(f"{select} WHERE name = ?", (key,)).fetchone()
        if row is None:
            row = conn.execute(f"{select} WHERE id = ?", (key.lower(),)).fetchone()
        if row is None and len(key) >= MIN_ID_PREFIX and all(c in "0123456789abcdef" for c in key):
            rows = conn.execute(f"{select} WHERE id LIKE ?", (key.lower() + "%",)).fetchall()
            if len(rows) > 1:
                raise ExperimentNotFound(
                    f"{len(rows)} experiments have ids starting with {key!r}: give more digits"
                )
            row = rows[0] if rows else None
        if row is None:
            names = [n for (n,) in conn.execute("SELECT name FROM experiments")]
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            where = f"{len(names)} saved" if names else "none saved yet"
            raise ExperimentNotFound(f"no experiment named {key!r} in {self.path} ({where}){hint}")
        return row

    def _experiment(self, row: tuple[Any, ...]) -> Experiment:
        id_, name, created, subject, plan, metrics, note = row
        try:
            return Experiment(
                id=id_,
                name=name,
                created=created,
                subject=Subject.from_json(subject),
                plan=PruningPlan.from_json(plan),
                metrics=json.loads(metrics),
                note=note,
            )
        except ValueError as err:  # json.JSONDecodeError is a ValueError too
            raise ExperimentsError(
                f"experiment {name!r} in {self.path} cannot be read: {err}"
            ) from None

    @contextlib.contextmanager
    def _connection(self, doing: str) -> Iterator[sqlite3.Connection]:
        """A checked, up-to-date connection; SQLite's errors become ``ExperimentsError``."""
        conn: sqlite3.Connection | None = None
        try:
            self._check_file()
            conn = _connect(self.path)
            self._prepare(conn)
            yield conn
        except sqlite3.Error as err:
            raise self._explain(err, doing) from None
        finally:
            if conn is not None:
                conn.close()

    def _check_file(self) -> None:
        """Refuse what is plainly not a SQLite file before SQLite opens (and maybe writes) it."""
        path = self.path
        if path.is_dir():
            raise ExperimentsError(f"{path} is a directory, not an experiments database")
        if not path.exists():
            parent = path.parent
            if not parent.is_dir():
                raise ExperimentsError(
                    f"cannot create the experiments database {path}: "
                    f"directory {parent} does not exist"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise self._read_only()
            return
        try:
            with open(path, "rb") as handle:
                head = handle.read(len(SQLITE_MAGIC))
        except OSError as err:
            raise ExperimentsError(
                f"cannot read the experiments database {path}: {err.strerror or err}"
            ) from None
        if head and head != SQLITE_MAGIC:  # an empty file is an empty database
            raise self._damaged("it is not a SQLite database")

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check that the file is ours (reading only), then bring it to ``SCHEMA_VERSION``."""
        version = self._inspect(conn)
        if not self._checked and version > 0:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise self._damaged(f"integrity check: {problems[0]}")
            self._checked = True
        # Only now, with the file known to be ours (or empty), may anything be written.
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            self._use_wal(conn)
        # FULL: a committed save survives a power cut too (WAL's default only survives a crash).
        conn.execute("PRAGMA synchronous = FULL")
        if version < SCHEMA_VERSION:
            self._upgrade(conn)

    def _inspect(self, conn: sqlite3.Connection) -> int:
        """The file's layout version; ``ExperimentsError`` for another program's or a newer
        database. Reads only."""
        # One statement, so one read transaction: three separate reads could see the header
        # before and the tables after another process's first set-up committed (and take the
        # half-seen file for another program's).
        app_id, version, names = conn.execute(
            "SELECT (SELECT application_id FROM pragma_application_id), "
            "(SELECT user_version FROM pragma_user_version), "
            "(SELECT group_concat(name, char(31)) FROM sqlite_master "
            "WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' ESCAPE '!')"
        ).fetchone()
        tables = sorted(names.split("\x1f")) if names else []
        if app_id != APPLICATION_ID:
            if app_id == 0 and version == 0 and not tables:
                return 0  # an empty database: ours to set up
            shown = ", ".join(tables[:5]) + (", …" if len(tables) > 5 else "")
            raise ExperimentsError(
                f"{self.path} is another program's SQLite database"
                + (f" (tables: {shown})" if tables else "")
                + f", not pruning-explorer's experiments; it was left as it is: move it away "
                f"or set {HOME_ENV} to another folder"
            )
        if version > SCHEMA_VERSION:
            raise ExperimentsError(
                f"{self.path} was written by a newer pruning-explorer (layout version "
                f"{version}; this one reads up to {SCHEMA_VERSION}); it was left as it is: "
                "upgrade pruning-explorer to use it"
            )
        if version == SCHEMA_VERSION and "experiments" not in tables:
            raise self._damaged("its experiments table is missing")
        return version

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL. Another process doing the same at the same moment can make the switch
        report "locked" without waiting, so it is retried until the busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                # A filesystem without shared memory (some network drives) stays in its old
                # mode: still correct with the busy timeout, only readers then wait for writers.
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Run ``MIGRATIONS`` from the file's version to ``SCHEMA_VERSION`` in one transaction,
        after keeping a copy of a non-empty file beside it."""
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Another thread or process may have upgraded it while this one waited.
                version = self._inspect(conn)
                if version > 0 and version < SCHEMA_VERSION:
                    self._backup(version)
                for step in range(version, SCHEMA_VERSION):
                    if step not in MIGRATIONS:
                        raise RuntimeError(f"this code has no migration from layout version {step}")
                    MIGRATIONS[step](conn)
                conn.execute(f"PRAGMA user_version = {int(SCHEMA_VERSION)}")
                conn.execute(f"PRAGMA application_id = {int(APPLICATION_ID)}")
                conn.execute("COMMIT")
            except BaseException as err:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(err, ExperimentsError) or not isinstance(err, Exception):
                    raise
                raise ExperimentsError(
                    f"could not upgrade {self.path} to layout version {SCHEMA_VERSION}: "
                    f"{err}; the file was left as it was"
                ) from None
            self._checked = True

    def _backup(self, version: int) -> None:
        """A copy of the file as it is, ``<stem>.v<version>.backup<suffix>``, before upgrading.

        Called while holding the write lock: a second connection reads the last committed
        state (WAL lets readers in), so no other writer can change it between copy and upgrade.
        """
        target = self.path.with_name(f"{self.path.stem}.v{version}.backup{self.path.suffix}")
        if target.exists():  # never overwrite an earlier backup
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            target = target.with_name(f"{target.stem}.{stamp}{target.suffix}")
        source, copy = _connect(self.path), sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
            source.close()

    def _explain(self, err: sqlite3.Error, doing: str) -> ExperimentsError:
        text, code = str(err), _errorname(err)
        if code.startswith("SQLITE_READONLY") or "readonly" in text or "read-only" in text:
            return self._read_only()
        if code.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
            if not os.access(self.path.parent, os.W_OK | os.X_OK):
                return self._read_only()
            return ExperimentsError(f"cannot open the experiments database {self.path}: {text}")
        if code.startswith("SQLITE_BUSY") or "locked" in text:
            return ExperimentsError(
                f"the experiments database {self.path} is busy: another program held it for "
                f"over {BUSY_TIMEOUT_S:g} s; try again"
            )
        if isinstance(err, sqlite3.DatabaseError) and (
            code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
            or "malformed" in text
            or "not a database" in text
        ):
            return self._damaged(text)
        what = f"could not {doing} " if doing else ""
        return ExperimentsError(f"{what}the experiments database {self.path}: {text}")

    def _damaged(self, why: str) -> ExperimentsError:
        return ExperimentsError(
            f"the experiments database {self.path} is damaged ({why}); it was left as it is: "
            f"move it away to start a new one, or set {HOME_ENV} to another folder"
        )

    def _read_only(self) -> ExperimentsError:
        return ExperimentsError(
            f"cannot use the experiments database {self.path}: its location is read-only "
            f"(SQLite writes beside the file, even to read it); set {HOME_ENV} to a writable "
            "folder"
        )


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: ``BEGIN IMMEDIATE`` takes the write lock at once (waiting up to
    the busy timeout), so two writers never both read-then-write and collide at commit."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# --- CSV ------------------------------------------------------------------------------------------


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Metrics as one level of columns: dicts joined with ``_``, latency rows by model and
    batch; other lists stay whole (as JSON text in the cell)."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}_"))
        elif key == "latency" and isinstance(value, list) and all(_is_timing(v) for v in value):
            for row in value:
                for part in LATENCY_FIELDS:
                    if part in row:
                        flat[f"{name}_{row['model']}_b{row['batch']}_{part}"] = row[part]
        else:
            flat[name] = value
    return flat


def _is_timing(row: Any) -> bool:
    return isinstance(row, Mapping) and "model" in row and "batch" in row


def _metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Known metrics in their usual order, then every other column in the order first seen."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    known = [key for key in REPORT_METRICS if key in seen]
    return known + [key for key in seen if key not in known]


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": what float() reads back
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value  # a float is written as repr: it reads back exactly


def _write_csv(handle: IO[str], header: list[str], rows: list[dict[str, Any]]) -> None:
    writer = csv.DictWriter(handle, fieldnames=header, restval="")
    writer.writeheader()
    writer.writerows(rows)


def _plan_label(plan: PruningPlan) -> str:
    # Imported here: the method registry pulls in torch, which nothing else in this module
    # needs (a process that only reads or writes experiments starts in a fraction of a second).
    from explorer.engine.pruning import plan_label

    try:
        return plan_label(plan)
    except ValueError:  # a method or criterion this installation does not know
        return f"{plan.method}, {plan.criterion}, {plan.scope}, {plan.amount:.0%}"


def csv_text(store: ExperimentStore, subject_key: str | None = None) -> tuple[str, int]:
    """The CSV of ``store`` as text, and its number of rows."""
    buffer = io.StringIO()
    count = store.to_csv(buffer, subject_key)
    return buffer.getvalue(), count


# --- the default database -------------------------------------------------------------------------

_defaults: dict[Path, ExperimentStore] = {}
_defaults_lock = threading.Lock()


def default_path() -> Path:
    """``experiments.sqlite3`` in the project's data directory (``PRUNING_EXPLORER_HOME``)."""
    try:
        return home() / FILE_NAME
    except OSError as err:
        raise ExperimentsError(
            f"cannot use the data directory for experiments: {err.strerror or err}"
            f"{f' ({err.filename})' if err.filename else ''}; set {HOME_ENV} to a writable folder"
        ) from None


def default_experiments() -> ExperimentStore:
    """The process's experiments database (one per ``PRUNING_EXPLORER_HOME``)."""
    path = default_path().absolute()
    with _defaults_lock:
        store = _defaults.get(path)
        if store is None:
            store = _defaults[path] = ExperimentStore(path)
        return store
