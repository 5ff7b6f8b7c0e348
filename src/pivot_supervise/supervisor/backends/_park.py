"""A standby's workers, parked: each waits in a task of its own until a load lets it go.

At a restart one worker must validate the pipeline while the others wait; they used to
be sent their load tasks at once, each waking up only to wait at the generation's gate.
On a machine with fewer cores than workers those wake-ups took CPU from the validating
worker (a restart of 16 workers on 2 cores: ~9 ms instead of ~4).  A parked standby
already has every worker waiting in a task (:func:`...workers._tasks.park`), each on
a lock of its own held here: a load writes its request and lets go of exactly one lock
(that worker validates), and after the promotion of the others, a few at a time, as
earlier ones finish loading.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import os
import pickle
import shutil
from pathlib import Path

import loky
import trio

from ...workers._messages import (
    PARK_REQUEST_FILE,
    PARKED_FIFO,
    LoadReply,
    LoadRequest,
    ParkRequest,
)
from ...workers._tasks import park, park_lock_name

__all__ = ["Park"]


class Park:
    """The locks a standby's parked workers wait on, and the futures of their tasks."""

    def __init__(self, directory: Path, size: int) -> None:
        self.directory = directory
        self._locks: list[int | None] = []
        self._next = 0
        self.futures: list[concurrent.futures.Future[LoadReply]] = []
        self._parked_reader: int | None = None
        self._parked_holder: int | None = None
        try:
            for index in range(size):
                path = directory / park_lock_name(index)
                fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
                self._locks.append(fd)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Read end first (a writer cannot open a FIFO nobody reads), then a write end
            # of our own, so that the reader never sees end-of-file between the bytes.
            fifo = directory / PARKED_FIFO
            os.mkfifo(fifo, 0o600)
            self._parked_reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self._parked_holder = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise

    def submit(self, executor: loky.ProcessPoolExecutor) -> None:
        """Give each worker its park task (blocking: for a worker thread)."""
        directory = str(self.directory)
        self.futures = [
            executor.submit(park, ParkRequest(directory, index))
            for index in range(len(self._locks))
        ]

    async def wait_parked(self) -> None:
        """Until every worker is waiting in its park task (unbounded: wrap it in a
        timeout).  Before that, a load would compete with workers still waking up."""
        reader = self._parked_reader
        if reader is None:
            raise RuntimeError("the park is closed")
        said = 0
        while said < len(self._locks):
            await trio.lowlevel.wait_readable(reader)
            try:
                said += len(os.read(reader, len(self._locks)))
            except BlockingIOError:
                continue

    def start(self, request: LoadRequest) -> None:
        """Hand ``request`` to one parked worker: it validates the pipeline."""
        temporary = self.directory / f".{PARK_REQUEST_FILE}.tmp"
        temporary.write_bytes(pickle.dumps(request))
        os.replace(temporary, self.directory / PARK_REQUEST_FILE)
        self.release(1)

    def release(self, count: int) -> None:
        """Let ``count`` more parked workers go (fewer if fewer are left)."""
        for _ in range(count):
            if self._next >= len(self._locks):
                return
            fd, self._locks[self._next] = self._locks[self._next], None
            self._next += 1
            if fd is not None:
                os.close(fd)

    def release_all(self) -> None:
        self.release(len(self._locks))

    def close(self) -> None:
        """Let every worker go and remove the park (its standby is being shut down)."""
        fds, self._parked_reader, self._parked_holder = (
            (self._parked_reader, self._parked_holder),
            None,
            None,
        )
        for fd in fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        for index, fd in enumerate(self._locks):
            self._locks[index] = None
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        shutil.rmtree(self.directory, ignore_errors=True)
