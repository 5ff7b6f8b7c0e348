"""What the supervisor remembers between runs: a SQLite database in the project.

``<project>/.pivot-supervise/state.db`` holds the last successful record of each stage
(its code fingerprint, params digest, dep hashes and output states: what "up to date"
is decided against) and the history of runs (``history``, ``explain``).

Why it is built the way it is:

- Every write is one transaction, so a SIGKILL at any instant leaves the previous or
  the next consistent state, never a half.  A stage's record is *dropped* before the
  stage starts (:meth:`StateStore.drop`): a crash mid-stage means it runs again.
- WAL mode with a busy timeout: readers (``explain``, ``history`` in another terminal)
  never block the writer (``watch``) and are not refused while it writes.  WAL keeps
  ``state.db-wal`` and ``state.db-shm`` next to the database: the watcher must ignore
  this directory (it holds a ``.gitignore`` of ``*`` so that nobody commits it).
- The file says what it is: SQLite's ``application_id`` header field and a ``meta``
  table with the schema version.  A foreign SQLite file, a newer schema, a garbage or a
  corrupt file is never written into: it is moved aside to ``state.db.corrupt-<time>``
  (with its ``-wal``/``-shm``), a fresh store is built, and :attr:`StateStore.warnings`
  says so in a sentence the caller shows to the user.  Losing the state only costs a
  full run; silently trusting a damaged one could skip a stage that must run.

Thread-safe (one connection behind a lock), synchronous, no trio: call it off the loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, cast

from pivot_supervise.pipeline._hashing import CacheRow
from pivot_supervise.pipeline._model import FileSignature

from .._state_dir import STATE_DIR, make_state_dir

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "STATE_DIR",
    "OutputState",
    "RunRecord",
    "StageRecord",
    "StageRunRecord",
    "StateStore",
    "StateStoreError",
]

DB_NAME = "state.db"
#: "PVSU" in the SQLite header: a file without it is not ours.
APPLICATION_ID = 0x50565355
SCHEMA_VERSION = 1
_MARKER = "pivot-supervise state"
#: How long a statement waits for another process's write lock before failing.
BUSY_TIMEOUT_S = 10.0
#: Runs kept in the history; older ones (and their stage rows) are pruned.
KEEP_RUNS = 1000
#: SQLite primary result codes that mean "this file is damaged or not a database".
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE stage_state (
    stage TEXT PRIMARY KEY,
    code TEXT NOT NULL,
    code_parts TEXT NOT NULL,
    params TEXT NOT NULL,
    deps TEXT NOT NULL,
    outs TEXT NOT NULL,
    generation INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    finished_at REAL NOT NULL
);
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    generation INTEGER NOT NULL,
    outcome TEXT
);
CREATE TABLE stage_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    stage TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    duration_ms REAL,
    pid INTEGER,
    generation INTEGER NOT NULL,
    error TEXT,
    finished_at REAL NOT NULL
);
CREATE INDEX stage_runs_by_run ON stage_runs(run_id);
CREATE INDEX stage_runs_by_stage ON stage_runs(stage, run_id);
CREATE TABLE hash_cache (
    path TEXT PRIMARY KEY,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    hashed_at_ns INTEGER NOT NULL,
    digest TEXT NOT NULL
);
"""


class StateStoreError(Exception):
    """The state store cannot be used (permissions, disk full, damage found mid-run).

    The message is one sentence for the user, naming the file.
    """


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class OutputState:
    """An output after a successful run: its content hash and stat signature."""

    hash: str | None
    signature: FileSignature | None = None


@dataclass(frozen=True, slots=True)
class StageRecord:
    """The last successful run of a stage: what it ran with and what it produced.

    ``code`` is the stage's code fingerprint and ``code_parts`` the per-function digests
    behind it (to name the function that changed); ``params`` the params digest; ``deps``
    maps each declared dep to its content hash (``None``: it did not exist); ``outs``
    each declared out to its state.
    """

    stage: str
    code: str
    params: str
    deps: Mapping[str, str | None] = field(default_factory=dict[str, "str | None"])
    outs: Mapping[str, OutputState] = field(default_factory=dict[str, OutputState])
    generation: int = 0
    run_id: int = 0
    finished_at: float = 0.0
    code_parts: Mapping[str, str] = field(default_factory=dict[str, str])


@dataclass(frozen=True, slots=True)
class StageRunRecord:
    """One stage's line in the history of a run."""

    run_id: int
    stage: str
    status: str
    reason: str | None
    duration_ms: float | None
    pid: int | None
    generation: int
    error: str | None
    finished_at: float


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run: why it started, when, and what each stage did.

    ``finished_at`` is ``None`` for a run still going, or one that never finished (the
    supervisor was killed).
    """

    run_id: int
    trigger: str
    started_at: float
    finished_at: float | None
    generation: int
    outcome: str | None
    stages: tuple[StageRunRecord, ...] = ()


# ---------------------------------------------------------------------------- store


class StateStore:
    """The project's state database.  Open it with :meth:`open`.

    Example::

        store = StateStore.open(project_root)
        for warning in store.warnings:
            log.warning(warning)
        run_id = store.start_run("watch: data change", generation=3)
        store.drop("train")                      # before it starts
        store.finish_stage(run_id, "train", "ok", generation=3, record=record)
        store.finish_run(run_id, outcome="ok")
    """

    def __init__(
        self, connection: sqlite3.Connection, path: Path, warnings: tuple[str, ...]
    ) -> None:
        self._db = connection
        self._lock = threading.RLock()
        #: How deep in :meth:`transaction` the lock's owner is (0: none is open).
        self._depth = 0
        self._closed = False
        self.path = path
        #: Sentences for the user about a damaged or foreign file that was replaced.
        self.warnings = warnings

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, project_root: Path) -> StateStore:
        """Open (creating if needed) ``<project_root>/.pivot-supervise/state.db``.

        A file that is not a healthy store of ours is moved aside and replaced; the
        reason is in :attr:`warnings`.  Raises :class:`StateStoreError` when the store
        cannot be opened at all.
        """
        directory = project_root / STATE_DIR
        path = directory / DB_NAME
        try:
            _prepare_directory(directory, path)
        except OSError as exc:
            raise StateStoreError(f"cannot create the state store {path}: {exc}") from exc
        warnings: list[str] = []
        try:
            connection = _connect_checked(path)
        except _Unusable as problem:
            moved = _move_aside(path)
            shown = ", ".join(p.name for p in moved) or "nothing"
            warnings.append(
                f"state store {path} {problem}; moved it aside ({shown}) and started a "
                "fresh one: every stage will run once"
            )
            try:
                connection = _connect_checked(path)
            except _Unusable as again:
                raise StateStoreError(f"state store {path} {again} even after a rebuild") from again
        return cls(connection, path, tuple(warnings))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ stage records

    def record(self, stage: str) -> StageRecord | None:
        """The last successful record of ``stage``, or ``None``."""
        with self._read() as db:
            row = db.execute(f"SELECT {_RECORD_COLUMNS} WHERE stage = ?", (stage,)).fetchone()
        return None if row is None else _stage_record(row)

    def records(self) -> dict[str, StageRecord]:
        """Every stage's last successful record, by stage name."""
        with self._read() as db:
            rows = db.execute(f"SELECT {_RECORD_COLUMNS} ORDER BY stage").fetchall()
        return {r.stage: r for r in map(_stage_record, rows)}

    def save_success(self, record: StageRecord) -> None:
        """Store ``record`` as the stage's last success (replacing the previous one)."""
        with self._write() as db:
            _upsert_record(db, record)

    def drop(self, *stages: str) -> None:
        """Forget the records of ``stages``: call it before they start."""
        with self._write() as db:
            db.executemany("DELETE FROM stage_state WHERE stage = ?", [(s,) for s in stages])

    # ------------------------------------------------------------------ history

    def start_run(self, trigger: str, generation: int, *, started_at: float | None = None) -> int:
        """Begin a run; returns its id (ids only grow, even after pruning)."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO runs (trigger, started_at, generation) VALUES (?, ?, ?)",
                (trigger, time.time() if started_at is None else started_at, generation),
            )
            run_id = cursor.lastrowid
        assert run_id is not None
        return run_id

    def finish_stage(
        self,
        run_id: int,
        stage: str,
        status: str,
        *,
        generation: int,
        reason: str | None = None,
        duration_ms: float | None = None,
        pid: int | None = None,
        error: str | None = None,
        finished_at: float | None = None,
        record: StageRecord | None = None,
    ) -> None:
        """Add a stage's line to the run's history; with ``record``, also store it as
        the stage's last success, in the same transaction."""
        when = time.time() if finished_at is None else finished_at
        with self._write() as db:
            db.execute(
                "INSERT INTO stage_runs (run_id, stage, status, reason, duration_ms, pid,"
                " generation, error, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, stage, status, reason, duration_ms, pid, generation, error, when),
            )
            if record is not None:
                _upsert_record(db, record)

    def finish_run(
        self,
        run_id: int,
        *,
        outcome: str | None = None,
        finished_at: float | None = None,
        keep_runs: int = KEEP_RUNS,
    ) -> None:
        """Mark a run finished and prune the history to the last ``keep_runs`` runs."""
        with self._write() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, outcome = ? WHERE run_id = ?",
                (time.time() if finished_at is None else finished_at, outcome, run_id),
            )
            db.execute(
                "DELETE FROM runs WHERE run_id <= "
                "(SELECT run_id FROM runs ORDER BY run_id DESC LIMIT 1 OFFSET ?)",
                (keep_runs,),
            )

    def history(self, stage: str | None = None, limit: int = 20) -> list[RunRecord]:
        """The latest ``limit`` runs, newest first; with ``stage``, only the runs in which
        that stage has a line, and only its line."""
        with self._read() as db:
            if stage is None:
                runs = db.execute(
                    f"SELECT {_RUN_COLUMNS} ORDER BY run_id DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                runs = db.execute(
                    f"SELECT {_RUN_COLUMNS} WHERE run_id IN "
                    "(SELECT run_id FROM stage_runs WHERE stage = ?) "
                    "ORDER BY run_id DESC LIMIT ?",
                    (stage, limit),
                ).fetchall()
            ids = [cast("int", r[0]) for r in runs]
            lines: dict[int, list[StageRunRecord]] = {i: [] for i in ids}
            marks = ",".join("?" * len(ids))
            query = (
                "SELECT run_id, stage, status, reason, duration_ms, pid, generation, error,"
                f" finished_at FROM stage_runs WHERE run_id IN ({marks})"
            )
            params: list[object] = list(ids)
            if stage is not None:
                query += " AND stage = ?"
                params.append(stage)
            for row in db.execute(query + " ORDER BY id", params):
                lines[row[0]].append(StageRunRecord(*row))
        return [
            RunRecord(*cast("tuple[Any, ...]", run), stages=tuple(lines[run[0]])) for run in runs
        ]

    # ------------------------------------------------------------------ hash cache

    def load_hash_cache(self) -> list[CacheRow]:
        """Rows for :meth:`ContentHasher.load_rows`."""
        with self._read() as db:
            rows = db.execute(
                "SELECT path, mtime_ns, size, inode, hashed_at_ns, digest FROM hash_cache"
            ).fetchall()
        return [cast("CacheRow", tuple(r)) for r in rows]

    def save_hash_cache(self, rows: Iterable[CacheRow]) -> None:
        """Replace the persisted cache with ``rows`` (from :meth:`ContentHasher.to_rows`)."""
        with self._write() as db:
            db.execute("DELETE FROM hash_cache")
            db.executemany("INSERT INTO hash_cache VALUES (?, ?, ?, ?, ?, ?)", list(rows))

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def transaction(self) -> Generator[None, None, None]:
        """One write transaction around several calls: all of them or none.

        A quick stage is over sooner than a commit; a batch of records and history
        lines is one commit.  Calls inside it join it rather than opening their own.
        """
        with self._write():
            yield

    def records_of(self, stages: Iterable[str]) -> dict[str, StageRecord]:
        """The last successful records of ``stages`` that exist, in one read."""
        found: dict[str, StageRecord] = {}
        with self._read() as db:
            for stage in stages:
                row = db.execute(f"SELECT {_RECORD_COLUMNS} WHERE stage = ?", (stage,)).fetchone()
                if row is not None:
                    found[stage] = _stage_record(row)
        return found

    @contextlib.contextmanager
    def _write(self) -> Generator[sqlite3.Connection, None, None]:
        """One write transaction: all of it or none of it (joins an open one)."""
        with self._lock, self._errors():
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Generator[sqlite3.Connection, None, None]:
        """A read transaction: several queries see one snapshot (or the open write's)."""
        with self._lock, self._errors():
            if self._depth:
                yield self._db
                return
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _errors(self) -> Generator[None, None, None]:
        if self._closed:
            raise StateStoreError(f"state store {self.path} is closed")
        try:
            yield
        except sqlite3.Error as exc:
            if _is_damage(exc):
                raise StateStoreError(
                    f"state store {self.path} is damaged ({exc}); open it again to "
                    "move it aside and start fresh"
                ) from exc
            raise StateStoreError(f"state store {self.path}: {exc}") from exc


# ---------------------------------------------------------------------------- helpers

_RECORD_COLUMNS = (
    "stage, code, params, deps, outs, generation, run_id, finished_at, code_parts FROM stage_state"
)
_RUN_COLUMNS = "run_id, trigger, started_at, finished_at, generation, outcome FROM runs"


def _upsert_record(db: sqlite3.Connection, record: StageRecord) -> None:
    outs = {
        path: {"hash": state.hash, "signature": list(state.signature) if state.signature else None}
        for path, state in record.outs.items()
    }
    db.execute(
        "INSERT OR REPLACE INTO stage_state (stage, code, code_parts, params, deps, outs,"
        " generation, run_id, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.stage,
            record.code,
            json.dumps(dict(record.code_parts), sort_keys=True),
            record.params,
            json.dumps(dict(record.deps)),
            json.dumps(outs),
            record.generation,
            record.run_id,
            record.finished_at,
        ),
    )


def _stage_record(row: tuple[Any, ...]) -> StageRecord:
    stage, code, params, deps, outs, generation, run_id, finished_at, parts = row
    raw_outs = cast("dict[str, dict[str, Any]]", json.loads(outs))
    return StageRecord(
        stage=stage,
        code=code,
        params=params,
        deps=cast("dict[str, str | None]", json.loads(deps)),
        outs={
            path: OutputState(
                hash=value.get("hash"),
                signature=cast("FileSignature", tuple(value["signature"]))
                if value.get("signature")
                else None,
            )
            for path, value in raw_outs.items()
        },
        generation=generation,
        run_id=run_id,
        finished_at=finished_at,
        code_parts=cast("dict[str, str]", json.loads(parts)),
    )


class _Unusable(Exception):
    """The file at the store's path is not a healthy store of ours (says why)."""


def _is_damage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "not a database" in text or "malformed" in text


def _prepare_directory(directory: Path, path: Path) -> None:
    make_state_dir(directory)
    # Create the database file ourselves so that it is private from the start; SQLite
    # gives its -wal and -shm files the same permissions.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _connect_checked(path: Path) -> sqlite3.Connection:
    """Connect, recognise the file, create or verify the schema; raise _Unusable."""
    try:
        db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StateStoreError(f"cannot open the state store {path}: {exc}") from exc
    try:
        _check(db)
    except _Unusable:
        db.close()
        raise
    except sqlite3.Error as exc:
        db.close()
        if _is_damage(exc):
            raise _Unusable(f"is not a readable SQLite database ({exc})") from exc
        raise StateStoreError(f"cannot open the state store {path}: {exc}") from exc
    return db


def _check(db: sqlite3.Connection) -> None:
    db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    if not _is_ours(db):
        return _initialise(db)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")
    problems = [row[0] for row in db.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise _Unusable(f"is damaged ({'; '.join(map(str, problems[:3]))})")
    return None


def _is_ours(db: sqlite3.Connection) -> bool:
    """True for our store with our schema; False for an empty file; else _Unusable."""
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if app_id == 0 and not tables:
        return False
    if app_id != APPLICATION_ID:
        shown = ", ".join(sorted(tables)[:5]) or "none"
        raise _Unusable(
            f"is a SQLite database of another application (application id {app_id:#x}, "
            f"tables: {shown})"
        )
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row[0]) if row is not None else None
    if version != SCHEMA_VERSION:
        raise _Unusable(
            f"has schema version {version}, and this pivot-supervise reads version {SCHEMA_VERSION}"
        )
    return True


def _initialise(db: sqlite3.Connection) -> None:
    """Create the schema in an empty file (unless another process just did)."""
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("BEGIN IMMEDIATE")
    try:
        if _is_ours(db):  # another process initialised it while we waited for the lock
            db.execute("COMMIT")
            return
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("schema_version", str(SCHEMA_VERSION)), ("application", _MARKER)],
        )
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def _move_aside(path: Path) -> list[Path]:
    """Rename the database and its companions to ``<name>.corrupt-<UTC time>[-wal]``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while any(Path(f"{base}{s}").exists() for s in ("", "-wal", "-shm", "-journal")):
        base = path.with_name(f"{path.name}.corrupt-{stamp}.{counter}")
        counter += 1
    moved: list[Path] = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            target = Path(f"{base}{suffix}")
            try:
                source.rename(target)
            except OSError as exc:
                raise StateStoreError(
                    f"state store {path} is unusable and could not be moved aside: {exc}"
                ) from exc
            moved.append(target)
    if moved:
        _prepare_directory(path.parent, path)
    return moved
