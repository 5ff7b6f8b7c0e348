"""Capture what a stage prints, in the two ways a stage can run.

In a worker process a stage owns the whole process for its duration, so the honest
capture is at the file-descriptor level: fds 1 and 2 are pointed at a temporary file,
which catches ``print``, C extensions and child processes alike.

In the in-process ``--no-parallel`` mode several stages run on threads of the one
supervisor process, which shares its fds with the supervisor's own terminal output.
There we can only route Python-level writes: ``sys.stdout``/``sys.stderr`` are replaced
once by proxies that send a write to the buffer of the stage running on the calling
thread, and everything else to the real stream.  Output written to the fds directly
(``os.write``, subprocesses, C code), by threads a stage starts itself, or through a
stream object saved before the proxies were installed (e.g. a logging handler) is not
captured in that mode.

Either way at most :data:`OUTPUT_LIMIT` bytes are kept: the tail, which is where the
error usually is.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Generator, Iterable
from typing import TextIO, cast

__all__ = ["OUTPUT_LIMIT", "capture_fds", "capture_thread", "install_thread_capture"]

#: The most output kept per stage run, in bytes (the tail is kept).
OUTPUT_LIMIT = 64 * 1024


class CapturedOutput:
    """Filled in when the capture context exits."""

    __slots__ = ("text",)

    def __init__(self) -> None:
        self.text = ""


def _tail(data: bytes, total: int) -> str:
    """Decode the kept tail and say so when output was dropped."""
    text = data[-OUTPUT_LIMIT:].decode("utf-8", errors="replace")
    if total > OUTPUT_LIMIT:
        return (
            f"[output truncated: showing the last {OUTPUT_LIMIT // 1024} KiB "
            f"of {total} bytes]\n{text}"
        )
    return text


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # pyright: ignore[reportUnnecessaryComparison]
            with contextlib.suppress(Exception):
                stream.flush()


def _dup_or_none(fd: int) -> int | None:
    """A copy of ``fd``, or ``None`` if it is closed (a daemonised supervisor's stdout)."""
    try:
        return os.dup(fd)
    except OSError:
        return None


@contextlib.contextmanager
def capture_fds() -> Generator[CapturedOutput]:
    """Point fds 1 and 2 at a fresh anonymous file for the duration of the block.

    A fresh file per stage, so that a process a stage left behind writes into that
    stage's file, never into a later stage's output.
    """
    captured = CapturedOutput()
    _flush_std_streams()
    sink = _anonymous_file()
    try:
        saved = {fd: _dup_or_none(fd) for fd in (1, 2)}
        try:
            for fd in saved:
                os.dup2(sink, fd)
            yield captured
        finally:
            _flush_std_streams()
            for fd, copy in saved.items():
                if copy is None:  # it was closed before: leave it closed
                    os.close(fd)
                else:
                    os.dup2(copy, fd)
                    os.close(copy)
            total = os.lseek(sink, 0, os.SEEK_END)
            start = max(0, total - OUTPUT_LIMIT)
            captured.text = _tail(os.pread(sink, total - start, start), total) if total else ""
    finally:
        os.close(sink)


def _anonymous_file() -> int:
    """A read-write descriptor of a file that no other process can open by name.

    In memory where the platform has ``memfd_create`` (Linux): creating a file on a
    journaling file system costs some 35 us here, ten times a quick stage's own
    overhead.  The memory is the output's size, for the stage's duration only (the tail
    that is kept is copied out).  Elsewhere, an unlinked temporary file.
    """
    if hasattr(os, "memfd_create"):
        try:
            return os.memfd_create("pivot-supervise-stage-output", os.MFD_CLOEXEC)
        except OSError:  # e.g. a seccomp profile that forbids it
            pass
    fd, name = tempfile.mkstemp(prefix="pivot-supervise-output-")
    os.unlink(name)
    return fd


class _TailBuffer:
    """Text written by one stage, bounded to roughly the last OUTPUT_LIMIT bytes."""

    __slots__ = ("_chunks", "_kept", "total")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._kept = 0
        self.total = 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8", errors="replace")
        self._chunks.append(data)
        self._kept += len(data)
        self.total += len(data)
        if self._kept > 2 * OUTPUT_LIMIT:
            joined = b"".join(self._chunks)[-OUTPUT_LIMIT:]
            self._chunks = [joined]
            self._kept = len(joined)

    def getvalue(self) -> str:
        return _tail(b"".join(self._chunks), self.total)


_local = threading.local()


def _current_buffer() -> _TailBuffer | None:
    return cast("_TailBuffer | None", getattr(_local, "buffer", None))


class _RoutingStream:
    """Stands in for ``sys.stdout``/``sys.stderr``; routes writes by calling thread."""

    def __init__(self, real: TextIO) -> None:
        self._real = real

    def write(self, text: str) -> int:
        buffer = _current_buffer()
        if buffer is None:
            return self._real.write(text)
        buffer.write(text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _current_buffer() is None:
            self._real.flush()

    def __getattr__(self, name: str) -> object:
        # encoding, fileno, isatty, buffer...: whatever the real stream answers.
        return getattr(self._real, name)


_install_lock = threading.Lock()


def install_thread_capture() -> None:
    """Replace ``sys.stdout``/``sys.stderr`` with routing proxies (idempotent)."""
    with _install_lock:
        if not isinstance(sys.stdout, _RoutingStream):
            sys.stdout = cast("TextIO", _RoutingStream(sys.stdout))
        if not isinstance(sys.stderr, _RoutingStream):
            sys.stderr = cast("TextIO", _RoutingStream(sys.stderr))


@contextlib.contextmanager
def capture_thread() -> Generator[CapturedOutput]:
    """Route this thread's Python-level writes into a buffer for the block."""
    install_thread_capture()
    captured = CapturedOutput()
    buffer = _TailBuffer()
    previous = _current_buffer()
    _local.buffer = buffer
    try:
        yield captured
    finally:
        _local.buffer = previous
        captured.text = buffer.getvalue()
