"""Awaiting a ``concurrent.futures.Future`` from trio without a thread per future.

loky hands back standard futures.  Parking a trio worker thread on each one would cost a
thread per running stage; instead a done-callback wakes the trio task through the run's
token.  The callback can fire on loky's manager thread after the trio run has ended, so
it swallows :class:`trio.RunFinishedError`; and it must never raise inside
``run_sync_soon`` (that would be a ``TrioInternalError``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from typing import TypeVar

import trio

T = TypeVar("T")


async def wait_future(future: concurrent.futures.Future[T]) -> T:
    """Wait for ``future`` without blocking the trio thread; return or raise its result.

    Cancelling the waiting task stops the wait, not the work: the caller decides what
    happens to work nobody waits for (for a retired generation, its workers are killed).
    """
    if not future.done():
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        await done.wait()
    return future.result()
