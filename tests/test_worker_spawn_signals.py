"""Workers are born with SIGINT blocked, so a Ctrl-C while they start kills none of them.

A terminal's Ctrl-C reaches the whole process group; a worker still importing loky
would die of it with a traceback on the user's terminal.  Runs in a fresh interpreter:
the trap is the FIRST spawn of a process, when the resource trackers get launched (and
launching one unblocks SIGINT in the spawning thread).
"""

from __future__ import annotations

import signal
import subprocess
import sys

SCRIPT = """
import signal, threading

from loky.backend.context import get_context
import loky

from pivot_supervise.supervisor.backends._procs import sigint_blocked

def mask():
    return sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))

result = {}

def spawn():
    with sigint_blocked():
        executor = loky.ProcessPoolExecutor(max_workers=1, context=get_context("loky"))
        result["future"] = executor.submit(mask)
    result["executor"] = executor
    result["thread_after"] = mask()

thread = threading.Thread(target=spawn)
thread.start()
thread.join()
print("worker", result["future"].result(timeout=60))
print("thread", result["thread_after"])
result["executor"].shutdown(kill_workers=True)
"""


def test_a_worker_spawned_first_in_a_process_starts_with_sigint_blocked() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    sigint = str(int(signal.SIGINT))
    assert sigint in lines["worker"], f"SIGINT not blocked in the worker: {done.stdout}"
    assert lines["thread"] == "[]", "the spawning thread's mask was not restored"
