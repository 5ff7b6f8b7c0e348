"""The SQLite state store: records, history, crash safety and damaged files."""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pivot_supervise.supervisor._state import (
    OutputState,
    StageRecord,
    StateStore,
    StateStoreError,
)

TIMEOUT_S = 20.0


def a_record(stage: str = "train", *, run_id: int = 1, code: str = "c1") -> StageRecord:
    return StageRecord(
        stage=stage,
        code=code,
        params="p1",
        deps={"data/raw.csv": "h-raw", "data/missing.csv": None},
        outs={
            "model.pkl": OutputState(hash="h-model", signature=(1_700_000_000_000, 42, 7)),
            "reports": OutputState(hash=None),
        },
        generation=3,
        run_id=run_id,
        finished_at=1234.5,
        code_parts={"pipeline:train": "d1", "helpers:fit": "d2"},
    )


def test_a_stage_record_round_trips(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        assert store.warnings == ()
        assert store.record("train") is None
        store.save_success(a_record())
        store.save_success(a_record("clean", code="c2"))
    with StateStore.open(tmp_path) as store:
        assert store.record("train") == a_record()
        assert set(store.records()) == {"train", "clean"}
        store.drop("train")
        assert store.record("train") is None
        assert store.record("clean") == a_record("clean", code="c2")


def test_saving_a_record_replaces_the_previous_one(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        store.save_success(a_record(code="old"))
        store.save_success(a_record(code="new", run_id=2))
        record = store.record("train")
        assert record is not None and (record.code, record.run_id) == ("new", 2)


def test_a_transaction_commits_several_writes_together_or_none(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        with store.transaction():
            store.save_success(a_record("a"))
            run = store.start_run("test", generation=1)
            store.finish_stage(run, "a", "ok", generation=1)
            assert store.record("a") == a_record("a"), "reads inside see the open writes"
        with pytest.raises(RuntimeError), store.transaction():
            store.save_success(a_record("b"))
            store.drop("a")
            raise RuntimeError("a failure half-way")
        assert set(store.records_of(["a", "b", "c"])) == {"a"}
        assert [s.stage for s in store.history()[0].stages] == ["a"]
    with StateStore.open(tmp_path) as store:
        assert set(store.records()) == {"a"}


def test_the_store_and_its_wal_files_live_in_a_private_state_directory(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        store.save_success(a_record())
        directory = tmp_path / ".pivot-supervise"
        assert store.path == directory / "state.db"
        assert {p.name for p in tmp_path.iterdir()} == {".pivot-supervise"}
        assert {"state.db", "state.db-wal", "state.db-shm"} <= {p.name for p in directory.iterdir()}
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE((directory / "state.db").stat().st_mode) == 0o600
        assert (directory / ".gitignore").read_text().splitlines()[-1] == "*"
        mode = sqlite3.connect(directory / "state.db").execute("PRAGMA journal_mode").fetchone()
        assert mode == ("wal",)


def test_history_lists_runs_newest_first_with_their_stages(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        first = store.start_run("run", generation=1, started_at=10.0)
        store.finish_stage(first, "clean", "ok", generation=1, duration_ms=5.0, pid=11)
        store.finish_stage(first, "train", "failed", generation=1, error="boom")
        store.finish_run(first, outcome="failed", finished_at=20.0)
        second = store.start_run("watch: data/raw.csv", generation=2, started_at=30.0)
        store.finish_stage(second, "clean", "skipped", generation=2, reason="unchanged")
        # No finish_run: the supervisor was killed during this run.

        runs = store.history()
        assert [r.run_id for r in runs] == [second, first]
        assert runs[0].finished_at is None and runs[0].trigger == "watch: data/raw.csv"
        assert [(s.stage, s.status, s.reason) for s in runs[0].stages] == [
            ("clean", "skipped", "unchanged")
        ]
        assert runs[1].outcome == "failed" and runs[1].finished_at == 20.0
        assert [(s.stage, s.status, s.error, s.pid) for s in runs[1].stages] == [
            ("clean", "ok", None, 11),
            ("train", "failed", "boom", None),
        ]
        assert [r.run_id for r in store.history(limit=1)] == [second]
        train = store.history(stage="train")
        assert [r.run_id for r in train] == [first]
        assert [s.stage for s in train[0].stages] == ["train"]
        assert store.history(stage="nope") == []


def test_finishing_a_stage_can_save_its_record_in_the_same_transaction(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        run = store.start_run("run", generation=3)
        store.finish_stage(run, "train", "ok", generation=3, record=a_record(run_id=run))
        assert store.record("train") == a_record(run_id=run)


def test_history_is_pruned_to_the_latest_runs(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        ids = []
        for i in range(6):
            run = store.start_run("run", generation=i)
            store.finish_stage(run, "s", "ok", generation=i)
            store.finish_run(run, keep_runs=3)
            ids.append(run)
        assert [r.run_id for r in store.history(limit=10)] == ids[:-4:-1]
        assert [r.run_id for r in store.history(stage="s", limit=10)] == ids[:-4:-1]
        assert store.start_run("run", generation=9) > ids[-1], "ids are never reused"


def test_the_hash_cache_can_be_persisted(tmp_path: Path) -> None:
    rows = [("/p/a", 1, 2, 3, 4, "d1"), ("/p/b", 5, 6, 7, 8, "d2")]
    with StateStore.open(tmp_path) as store:
        store.save_hash_cache(rows)
        store.save_hash_cache(rows[1:])
    with StateStore.open(tmp_path) as store:
        assert store.load_hash_cache() == rows[1:]


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path)
    store.close()
    store.close()
    with pytest.raises(StateStoreError, match="closed"):
        store.record("x")


# ------------------------------------------------------------------ damaged files


def moved_aside(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / ".pivot-supervise").glob("state.db.corrupt-*"))


def test_a_foreign_sqlite_file_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    (tmp_path / ".pivot-supervise").mkdir()
    path = tmp_path / ".pivot-supervise/state.db"
    foreign = sqlite3.connect(path)
    foreign.execute("PRAGMA journal_mode = WAL")
    foreign.execute("CREATE TABLE notes (text TEXT)")
    foreign.execute("INSERT INTO notes VALUES ('precious')")
    foreign.commit()
    foreign.close()
    with StateStore.open(tmp_path) as store:
        (warning,) = store.warnings
        assert "another application" in warning and "notes" in warning
        assert "moved it aside" in warning and str(path) in warning
        store.save_success(a_record())
        assert store.record("train") == a_record()
    (kept,) = [n for n in moved_aside(tmp_path) if not n.endswith(("-wal", "-shm"))]
    rows = sqlite3.connect(path.parent / kept).execute("SELECT text FROM notes").fetchall()
    assert rows == [("precious",)]
    with StateStore.open(tmp_path) as store:
        assert store.warnings == ()


def test_a_garbage_file_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    (tmp_path / ".pivot-supervise").mkdir()
    path = tmp_path / ".pivot-supervise/state.db"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    (tmp_path / ".pivot-supervise/state.db-wal").write_bytes(b"junk")
    with StateStore.open(tmp_path) as store:
        (warning,) = store.warnings
        assert "not a readable SQLite database" in warning
        assert store.records() == {}
    # (SQLite itself discards a -wal with an invalid header, so only the file may be left.)
    names = moved_aside(tmp_path)
    assert (path.parent / names[0]).read_bytes().startswith(b"this is not a database")
    assert all(name.startswith(names[0]) for name in names)


def test_a_store_with_a_newer_schema_is_moved_aside(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        store.save_success(a_record())
    db = sqlite3.connect(tmp_path / ".pivot-supervise/state.db")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with StateStore.open(tmp_path) as store:
        (warning,) = store.warnings
        assert "schema version 99" in warning
        assert store.record("train") is None


def test_a_store_damaged_inside_is_moved_aside(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        for i in range(300):
            store.save_success(a_record(f"stage-{i}", code="x" * 200))
    path = tmp_path / ".pivot-supervise/state.db"
    data = bytearray(path.read_bytes())
    page = 4096
    data[page * 2 : page * 4] = b"\xff" * (page * 2)  # clobber two b-tree pages
    path.write_bytes(bytes(data))
    with StateStore.open(tmp_path) as store:
        (warning,) = store.warnings
        assert "moved it aside" in warning
        assert store.records() == {}


# ------------------------------------------------------------------ processes

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pivot_supervise.supervisor._state import OutputState, StageRecord, StateStore

    store = StateStore.open(Path(sys.argv[1]))
    print("open", flush=True)
    generation = 0
    while True:
        generation += 1
        run = store.start_run("loop", generation=generation)
        for stage in ("a", "b", "c"):
            store.drop(stage)
            record = StageRecord(
                stage=stage, code=f"code-{generation}", params="p",
                deps={f"dep-{i}": f"h{generation}" for i in range(20)},
                outs={"out": OutputState(hash=f"o{generation}", signature=(1, 2, 3))},
                generation=generation, run_id=run, finished_at=float(generation),
            )
            store.finish_stage(run, stage, "ok", generation=generation, record=record)
        store.finish_run(run, outcome="ok")
        print(run, flush=True)
    """
)


@contextmanager
def writer_process(root: Path) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """A subprocess writing runs in a loop; yields it and a queue of its stdout lines."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT_S)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def wait_for_runs(proc: subprocess.Popen[str], lines: queue.Queue[str], count: int) -> int:
    """Wait (bounded) until the writer reported ``count`` finished runs; return the last."""
    deadline = time.monotonic() + TIMEOUT_S
    seen = 0
    last = 0
    while seen < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            stderr = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            pytest.fail(f"writer reported {seen}/{count} runs; exit {proc.poll()}: {stderr}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line.isdigit():
            seen += 1
            last = int(line)
    return last


def check_consistent(root: Path, at_least_run: int) -> None:
    """Every committed run is whole; every record agrees with its history line."""
    with StateStore.open(root) as store:
        assert store.warnings == ()
        runs = store.history(limit=10_000)
        records = store.records()
    db = sqlite3.connect(root / ".pivot-supervise/state.db")
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    db.close()
    finished = [r for r in runs if r.finished_at is not None]
    assert max(r.run_id for r in finished) >= at_least_run
    assert len([r for r in runs if r.finished_at is None]) <= 3, "one per kill at most"
    for run in finished:
        assert [s.stage for s in run.stages] == ["a", "b", "c"]
    by_run = {r.run_id: r for r in runs}
    for stage, record in records.items():
        assert record.code == f"code-{record.generation}"
        assert record.deps == {f"dep-{i}": f"h{record.generation}" for i in range(20)}
        line = [s for s in by_run[record.run_id].stages if s.stage == stage]
        assert line and line[0].status == "ok", "record saved without its history line"


def test_a_sigkill_during_writes_leaves_a_consistent_store(tmp_path: Path) -> None:
    last = 0
    for count in (3, 15, 40):
        with writer_process(tmp_path) as (proc, lines):
            last = wait_for_runs(proc, lines, count)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=TIMEOUT_S)
        assert proc.returncode == -signal.SIGKILL
        check_consistent(tmp_path, last)


def test_a_reader_works_while_another_process_writes(tmp_path: Path) -> None:
    with writer_process(tmp_path) as (proc, lines):
        wait_for_runs(proc, lines, 1)
        with StateStore.open(tmp_path) as reader:
            assert reader.warnings == ()
            newest = 0
            reads = 0
            deadline = time.monotonic() + TIMEOUT_S
            while reads < 200 and time.monotonic() < deadline:
                runs = reader.history(limit=5)
                records = reader.records()
                assert runs and runs[0].run_id >= newest
                newest = runs[0].run_id
                assert set(records) <= {"a", "b", "c"}
                reads += 1
            assert reads == 200
        wait_for_runs(proc, lines, 5)
        assert proc.poll() is None, "the writer kept writing"
