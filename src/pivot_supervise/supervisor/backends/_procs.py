"""Worker processes: how a generation's executor is started, and how we make sure its
processes are gone.

Shared by the active generations (:mod:`._loky`) and the standby (:mod:`._standby`), so
that a standby worker is started exactly like any other: same environment, same
initializer with the parent watchdog (no orphans), same bytecode policy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Generator
from contextlib import contextmanager

import loky
import structlog
from loky.backend.context import get_context

from ...workers._tasks import initialize_worker

log = structlog.get_logger("pivot_supervise.pool")

#: Environment of every worker interpreter, set before it starts.  Project modules are
#: compiled from source by the workers' import hook; not writing bytecode at all keeps
#: third-party caches untouched by us and project ``__pycache__`` from growing.
WORKER_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}

#: How long a retired generation's workers get to disappear before we SIGKILL them.
KILL_GRACE_S = 2.0


def new_executor(workers: int, preload: tuple[str, ...] = ()) -> loky.ProcessPoolExecutor:
    """A fresh executor of ``workers`` processes (spawned on the first ``submit``).

    Always a plain executor of the "loky" context (fresh interpreters, never a fork or
    forkserver that could hold old project code) and never the reusable executor.
    """
    return loky.ProcessPoolExecutor(
        max_workers=workers,
        context=get_context("loky"),
        initializer=initialize_worker,
        initargs=(os.getpid(), preload),
        env=WORKER_ENV,
    )


@contextmanager
def sigint_blocked() -> Generator[None]:
    """Block SIGINT in the calling (non-main) thread while it spawns workers.

    A terminal's Ctrl-C reaches the whole process group.  A worker still starting up
    (importing loky, before its initializer ignores SIGINT) would die of it with a
    ``KeyboardInterrupt`` traceback on the user's terminal; with a standby refilling
    after every reload, that window is open often.  The signal mask is inherited across
    fork and exec, so a worker spawned from a thread that blocks SIGINT starts with it
    blocked: a Ctrl-C stays pending until :func:`initialize_worker` sets SIGINT to
    ``SIG_IGN`` (which discards it) and unblocks it.  The supervisor itself is unaffected:
    its main thread, where Python handles signals, never blocks SIGINT.

    The resource trackers are started first: launching one (the standard library's,
    which loky starts for every spawn) blocks and then *unblocks* SIGINT in the calling
    thread, which would silently undo this block for the workers spawned after it.
    """
    from multiprocessing import resource_tracker as stdlib_tracker

    from loky.backend import resource_tracker as loky_tracker

    loky_tracker.ensure_running()
    stdlib_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def shut_down(executor: loky.ProcessPoolExecutor) -> None:
    """Kill ``executor``'s workers and wait until loky let go of it (blocking).

    Waiting for loky's manager thread matters: it holds the executor's queues, whose
    named semaphores are unregistered from loky's resource tracker only once they are
    released.  Stopping the tracker before that makes it report them as leaked (and a
    late unregistration would start a new tracker).  With ``kill_workers`` the wait is
    short: the manager thread exits once the killed workers are reaped.
    """
    executor.shutdown(wait=True, kill_workers=True)


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for loky to reap it counts)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def reap(pids: set[int]) -> None:
    """Wait briefly for ``pids`` to exit; SIGKILL whatever is still there (blocking)."""
    deadline = time.monotonic() + KILL_GRACE_S
    alive = {pid for pid in pids if not process_gone(pid)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = {pid for pid in alive if not process_gone(pid)}
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        log.warning("worker did not exit after shutdown; killed it", pid=pid)
