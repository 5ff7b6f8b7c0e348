"""Make a worker exit when its supervisor dies.

loky has no parent-death check: if the supervisor is SIGKILLed (or crashes hard), its
workers, and their imported user code, stay alive indefinitely.  ``prctl``'s
``PR_SET_PDEATHSIG`` would be Linux-only and fires when the *thread* that forked the
worker exits, which with loky can be any thread that called ``submit``.  Polling
``os.getppid()`` from a daemon thread is portable and exact: when the parent dies the
worker is re-parented, its parent pid changes, and we leave at once with ``os._exit``
(no atexit handlers, no joining of loky's threads that wait for a parent who is gone).
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["start_parent_watchdog"]

_lock = threading.Lock()
_started: list[int] = []  # the parent pid watched, once started


def _watch(parent_pid: int, interval_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    os._exit(1)


def start_parent_watchdog(parent_pid: int, interval_s: float = 0.25) -> None:
    """Start (once per process) a daemon thread that exits when the parent changes."""
    with _lock:
        if _started:
            return
        _started.append(parent_pid)
    if os.getppid() != parent_pid:
        os._exit(1)
    thread = threading.Thread(
        target=_watch,
        args=(parent_pid, interval_s),
        name="pivot-supervise-parent-watchdog",
        daemon=True,
    )
    thread.start()
