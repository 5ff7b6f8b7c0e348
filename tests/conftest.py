"""Shared helpers for the integration tests: temp projects, an in-process supervisor
session with a bounded event reader, a CLI subprocess with a bounded JSON-line reader,
and checks that no process is left behind.

Nothing here synchronises with sleeps: every wait is for an event (or a process state)
with a deadline, and a wait that expires fails with the events seen so far.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from pivot_supervise._config import load_config
from pivot_supervise.supervisor._bus import Subscription
from pivot_supervise.supervisor._core import OnError, RunOptions
from pivot_supervise.supervisor._events import Event
from pivot_supervise.supervisor._supervisor import Service, Supervisor
from pivot_supervise.supervisor.backends import LoadGate, LokyBackend
from pivot_supervise.supervisor.backends._loky import LOADERS_GRACE_S

#: Upper bound of any single wait for an event; generous for a loaded 2-core CI box.
TIMEOUT_S = 20.0
#: How long processes may take to disappear once they were told to.
GONE_TIMEOUT_S = 5.0

Predicate = Callable[[Event], bool]


# ------------------------------------------------------------------ projects


def python_json(
    code: str, *args: str, options: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Any:
    """Run ``code`` in a fresh interpreter (``python [options] -c code args``, writing no
    bytecode, ``env`` added to ours) and return what it printed, read as JSON."""
    done = subprocess.run(
        [sys.executable, *options, "-c", code, *args],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


#: The start of a project module whose code cannot be fingerprinted: a global named like
#: no other but hashed like ``len``.  Fingerprinting looks up every global the code names,
#: ``len`` included, and that lookup compares the two names, which raises; running code
#: that never reaches ``len`` works.
LOUD_GLOBAL = """\
class Loud(str):
    def __eq__(self, other):
        raise ValueError("compared")

    def __hash__(self):
        return hash("len")


globals()[Loud("loud")] = None
"""


def write_files(root: Path, files: Mapping[str, str]) -> None:
    """Write ``files`` (relative path -> text, dedented) under ``root``."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[[Mapping[str, str]], Path]:
    """Create a project directory from a dict of files; returns its root."""
    counter = iter(range(1000))

    def make(files: Mapping[str, str]) -> Path:
        root = tmp_path / f"project{next(counter)}"
        root.mkdir()
        write_files(root, files)
        return root

    return make


# ------------------------------------------------------------------ processes


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs; a zombie (state Z or X) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in (b"Z", b"X")


def alive(pids: Iterable[int]) -> set[int]:
    return {pid for pid in pids if not process_gone(pid)}


def children_of(pid: int) -> set[int]:
    """Direct children of ``pid`` that are still running."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
            found.add(int(entry))
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def resource_trackers(pids: Iterable[int]) -> set[int]:
    """loky's and multiprocessing's resource tracker processes among ``pids``."""
    return {pid for pid in pids if "resource_tracker import main" in cmdline(pid)}


def wait_gone_blocking(pids: Iterable[int], timeout: float = GONE_TIMEOUT_S) -> set[int]:
    """Poll until every pid is gone or ``timeout`` passes; return the survivors."""
    deadline = time.monotonic() + timeout
    left = alive(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = alive(left)
    return left


async def assert_gone(pids: Iterable[int], timeout: float = GONE_TIMEOUT_S) -> None:
    wanted = set(pids)
    left = await trio.to_thread.run_sync(wait_gone_blocking, wanted, timeout)
    described = {pid: cmdline(pid)[:200] for pid in left}
    assert not left, f"processes still alive {timeout}s after the supervisor stopped: {described}"


def kill_survivors(pids: Iterable[int]) -> None:
    """Last-resort cleanup of processes a failing test left (only pids we know)."""
    for pid in alive(pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------ events


def named(name: str, **fields: Any) -> Predicate:
    """Match an event by name and (optionally) exact field values."""

    def match(event: Event) -> bool:
        return event.name == name and all(event.get(k) == v for k, v in fields.items())

    match.__name__ = f"{name}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"
    return match


def _describe(events: Iterable[Event]) -> str:
    lines: list[str] = []
    for event in events:
        shown = {k: v for k, v in event.fields.items() if k not in ("traceback", "output")}
        lines.append(f"  {event.name} {shown}")
    return "\n".join(lines) or "  (none)"


class EventLog:
    """The events of one subscription, read with a cursor and bounded waits.

    :meth:`wait_for` returns the first event after the cursor that matches and moves
    the cursor past it, so a test reads the story in order.  :attr:`seen` keeps all.
    """

    def __init__(self, subscription: Subscription) -> None:
        self._events = subscription.events
        self.seen: list[Event] = []
        self.cursor = 0
        self.closed = False

    async def _receive(self) -> bool:
        try:
            self.seen.append(await self._events.receive())
        except trio.EndOfChannel:
            self.closed = True
            return False
        return True

    async def wait_for(
        self, what: str | Predicate, timeout: float = TIMEOUT_S, *, since: int | None = None
    ) -> Event:
        """The first matching event after the cursor (or after ``since``, a :meth:`mark`,
        for events whose order relative to the cursor does not matter)."""
        match = named(what) if isinstance(what, str) else what
        if since is not None:
            self.cursor = min(self.cursor, since)
        with trio.move_on_after(timeout):
            while True:
                for index in range(self.cursor, len(self.seen)):
                    if match(self.seen[index]):
                        self.cursor = index + 1
                        return self.seen[index]
                self.cursor = len(self.seen)
                if self.closed or not await self._receive():
                    break
        label = getattr(match, "__name__", repr(match))
        why = "the event stream ended" if self.closed else f"{timeout}s passed"
        raise AssertionError(f"waited for {label}, but {why}; events seen:\n{_describe(self.seen)}")

    def catch_up(self) -> None:
        """Move the cursor past every event received so far."""
        self.cursor = len(self.seen)

    def mark(self) -> int:
        """A position to look back from with :meth:`since`."""
        return self.cursor

    def since(self, mark: int, name: str | None = None) -> list[Event]:
        """Events between ``mark`` and the cursor, optionally of one name."""
        return [e for e in self.seen[mark : self.cursor] if name is None or e.name == name]

    async def drain(self, timeout: float = TIMEOUT_S) -> None:
        """Read everything up to the end of the stream."""
        with trio.fail_after(timeout):
            while not self.closed:
                await self._receive()
        self.cursor = len(self.seen)

    def worker_pids(self) -> set[int]:
        """Every worker pid any generation_ready of this session announced."""
        return {pid for e in self.seen if e.name == "generation_ready" for pid in e.get("workers")}

    def describe(self) -> str:
        return _describe(self.seen)


# ------------------------------------------------------------------ sessions


@dataclass
class Session:
    supervisor: Supervisor
    events: EventLog
    done: trio.Event = field(default_factory=trio.Event)
    exit_code: int | None = None

    async def wait_exit(self, timeout: float = TIMEOUT_S) -> int:
        with trio.move_on_after(timeout):
            await self.done.wait()
        if self.exit_code is None:
            raise AssertionError(
                f"the supervisor did not exit within {timeout}s; events:\n{self.events.describe()}"
            )
        return self.exit_code


@asynccontextmanager
async def supervising(
    project: Path,
    *,
    watch: bool = True,
    parallel: bool = True,
    max_workers: int = 2,
    on_error: OnError = "fail",
    targets: tuple[str, ...] | None = None,
    incremental: bool = False,
    force: bool | frozenset[str] = False,
    services: Sequence[Service] = (),
) -> AsyncIterator[Session]:
    """Run a supervisor on ``project`` in-process for the body of the ``async with``.

    ``incremental`` is off by default: most tests here state what runs when files change,
    whatever the state store remembers; the incremental-run tests turn it on.

    On the way out the supervisor is stopped (if it still runs), every event is read,
    and every worker pid it ever announced must be gone within a deadline.
    """
    children_before = children_of(os.getpid())
    config = load_config(project)
    options = RunOptions(parallel=parallel, max_workers=max_workers, on_error=on_error)
    supervisor = Supervisor(
        config,
        options,
        targets=targets,
        watch=watch,
        handle_signals=False,
        incremental=incremental,
        force=force,
        services=services,
    )
    session = Session(supervisor, EventLog(supervisor.bus.subscribe()))

    async def run() -> None:
        try:
            session.exit_code = await supervisor.run()
        finally:
            session.done.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            try:
                yield session
            finally:
                supervisor.stop()
                with trio.CancelScope(shield=True):
                    await session.wait_exit()
        await session.events.drain()
        assert session.events.seen[-1].name == "supervisor_stopped"
        await assert_gone(session.events.worker_pids())
        # Also workers never announced (a generation resized or a standby): no new
        # child process of ours may remain.  Resource trackers are per-process
        # singletons that loky may relaunch when a later finaliser unregisters a
        # semaphore, so they are left out here (test_supervisor_cleanup.py checks an
        # embedded supervisor in a fresh interpreter).
        new_children = children_of(os.getpid()) - children_before
        await assert_gone(new_children - resource_trackers(new_children))
    finally:
        kill_survivors(session.events.worker_pids())


@asynccontextmanager
async def serving_backend(
    project: Path,
    *,
    standby: bool,
    max_workers: int | None = None,
    load_gate: LoadGate | None = None,
    loaders_grace_s: float = LOADERS_GRACE_S,
) -> AsyncIterator[LokyBackend]:
    """A loky backend driven directly, its service running; all its processes gone after.

    The resource trackers (loky's, the standard library's) are per-process singletons
    that the first executor of a test process starts: not ours to stop here.
    """
    backend = LokyBackend(
        load_config(project),
        standby=standby,
        max_workers=max_workers,
        load_gate=load_gate,
        loaders_grace_s=loaders_grace_s,
    )
    before = children_of(os.getpid())
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            yield backend
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(TIMEOUT_S):
            await backend.aclose()
    new = children_of(os.getpid()) - before
    await assert_gone(new - resource_trackers(new))


# ------------------------------------------------------------------ CLI


class CliProcess:
    """``python -m pivot_supervise ...`` in its own session, stdout read line by line.

    A reader thread feeds a queue so that every wait is bounded; stderr goes to a file
    (a full pipe would block the supervisor).
    """

    def __init__(self, args: list[str], stderr_path: Path, cwd: Path | None = None) -> None:
        self._stderr_file = stderr_path.open("wb")
        self.stderr_path = stderr_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pivot_supervise", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
            env=cli_env(),
        )
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.cursor = 0
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._eof = False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._queue.put(raw.decode("utf-8", "replace"))
        self._queue.put(None)

    def _take(self, timeout: float) -> bool:
        if self._eof:
            return False
        try:
            line = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return False
        if line is None:
            self._eof = True
            return False
        self.lines.append(line)
        obj = json.loads(line)  # --json: every stdout line is one JSON object
        assert isinstance(obj, dict), line
        self.events.append(obj)
        return True

    def wait_for(self, event: str, timeout: float = TIMEOUT_S, **fields: Any) -> dict[str, Any]:
        """The next JSON event named ``event`` (with ``fields``) after the cursor."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(self.cursor, len(self.events)):
                obj = self.events[index]
                if obj.get("event") == event and all(obj.get(k) == v for k, v in fields.items()):
                    self.cursor = index + 1
                    return obj
            self.cursor = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (not self._take(remaining) and self._eof):
                break
        shown = "\n".join(f"  {line.rstrip()[:300]}" for line in self.lines) or "  (none)"
        raise AssertionError(
            f"waited for {event} {fields or ''} but "
            f"{'stdout ended' if self._eof else f'{timeout}s passed'}; stdout:\n{shown}\n"
            f"stderr:\n{self.stderr()}"
        )

    def read_to_end(self, timeout: float = TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self._eof and self._take(deadline - time.monotonic()):
            pass

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def worker_pids(self) -> set[int]:
        return {
            pid for e in self.events if e.get("event") == "generation_ready" for pid in e["workers"]
        }

    def stderr(self) -> str:
        self._stderr_file.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        """Kill whatever is left: the supervisor and any worker it announced."""
        with contextlib.suppress(ProcessLookupError):
            if self.proc.poll() is None:
                self.proc.kill()
        self.proc.wait(timeout=10)
        kill_survivors(self.worker_pids())
        self._stderr_file.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def cli(args: list[str], tmp_path: Path, cwd: Path | None = None) -> Iterator[CliProcess]:
    process = CliProcess(args, tmp_path / f"stderr-{time.monotonic_ns()}.txt", cwd=cwd)
    try:
        yield process
    finally:
        process.close()


def run_cli(
    args: list[str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "pivot_supervise", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
