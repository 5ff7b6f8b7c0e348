"""Content hashes of deps and outs, and the stat cache that avoids re-reading them."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pivot_supervise.pipeline._hashing import RACY_WINDOW_NS, ContentHasher

SECOND = 1_000_000_000


class Clock:
    """A settable wall clock (nanoseconds), to place hashing relative to mtimes."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def write(path: Path, text: str, *, mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_a_file_hash_depends_on_content_only(tmp_path: Path) -> None:
    hasher = ContentHasher(tmp_path)
    write(tmp_path / "a.txt", "same")
    write(tmp_path / "b.txt", "same")
    write(tmp_path / "c.txt", "other")
    assert hasher.hash_path("a.txt") == hasher.hash_path("b.txt")
    assert hasher.hash_path("a.txt") != hasher.hash_path("c.txt")
    assert hasher.hash_path(tmp_path / "a.txt") == hasher.hash_path("a.txt")
    assert hasher.hash_path("missing.txt") is None
    assert hasher.hash_file("missing/deeper.txt") is None


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    old = 1_600_000_000 * SECOND
    write(tmp_path / "a.txt", "data", mtime_ns=old)
    hasher = ContentHasher(tmp_path)
    first = hasher.hash_path("a.txt")
    assert hasher.hash_path("a.txt") == first
    assert hasher.hash_path("a.txt") == first
    assert (hasher.stats.reads, hasher.stats.hits) == (1, 2)


def test_a_touched_file_is_read_again_and_keeps_its_hash(tmp_path: Path) -> None:
    old = 1_600_000_000 * SECOND
    path = write(tmp_path / "a.txt", "data", mtime_ns=old)
    hasher = ContentHasher(tmp_path)
    before = hasher.hash_path("a.txt")
    os.utime(path, ns=(old + 10 * SECOND, old + 10 * SECOND))
    assert hasher.hash_path("a.txt") == before
    assert hasher.stats.reads == 2
    assert hasher.hash_path("a.txt") == before
    assert hasher.stats.reads == 2


def test_an_entry_hashed_within_the_racy_window_is_not_trusted(tmp_path: Path) -> None:
    mtime = 1_700_000_000 * SECOND
    path = write(tmp_path / "a.txt", "aaaa", mtime_ns=mtime)
    clock = Clock(mtime + RACY_WINDOW_NS // 4)  # hashed right after the write
    hasher = ContentHasher(tmp_path, clock=clock)
    first = hasher.hash_path("a.txt")
    # Same size, same mtime (a second write within the timestamp granularity): the
    # signature is unchanged, yet the entry was too young to trust, so it is re-read.
    write(path, "bbbb", mtime_ns=mtime)
    second = hasher.hash_path("a.txt")
    assert second != first
    assert hasher.stats.reads == 2
    # Once hashed well after the mtime, the entry is trusted.
    clock.now = mtime + RACY_WINDOW_NS + 1
    assert hasher.hash_path("a.txt") == second
    assert hasher.hash_path("a.txt") == second
    assert (hasher.stats.reads, hasher.stats.hits) == (3, 1)


def test_a_directory_hash_covers_its_files_recursively(tmp_path: Path) -> None:
    hasher = ContentHasher(tmp_path)
    write(tmp_path / "d/x.txt", "x")
    write(tmp_path / "d/sub/y.txt", "y")
    base = hasher.hash_path("d")
    assert base is not None and base != hasher.hash_path("d/x.txt")

    (tmp_path / "d/__pycache__").mkdir()
    write(tmp_path / "d/__pycache__/m.cpython-311.pyc", "bytecode")
    (tmp_path / "d/empty").mkdir()
    assert hasher.hash_path("d") == base, "__pycache__ and empty directories do not count"

    write(tmp_path / "d/sub/y.txt", "Y")
    edited = hasher.hash_path("d")
    assert edited != base
    (tmp_path / "d/sub/y.txt").rename(tmp_path / "d/sub/z.txt")
    assert hasher.hash_path("d") not in (base, edited)
    (tmp_path / "d/sub/z.txt").rename(tmp_path / "d/sub/y.txt")
    assert hasher.hash_path("d") == edited


def test_directory_hashes_do_not_depend_on_creation_order(tmp_path: Path) -> None:
    hasher = ContentHasher(tmp_path)
    for name in ("b", "a", "c/d"):
        write(tmp_path / "one" / name, name)
    for name in ("c/d", "a", "b"):
        write(tmp_path / "two" / name, name)
    assert hasher.hash_path("one") == hasher.hash_path("two")
    assert hasher.hash_path("one") != ContentHasher(tmp_path).hash_path("one/a")


def test_an_empty_directory_has_a_hash_and_a_missing_one_has_none(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    hasher = ContentHasher(tmp_path)
    assert hasher.hash_path("empty") is not None
    assert hasher.hash_path("gone") is None


def test_the_cache_survives_a_round_trip_through_rows(tmp_path: Path) -> None:
    old = 1_600_000_000 * SECOND
    write(tmp_path / "a.txt", "a", mtime_ns=old)
    write(tmp_path / "d/b.txt", "b", mtime_ns=old)
    first = ContentHasher(tmp_path)
    digests = (first.hash_path("a.txt"), first.hash_path("d"))
    rows = first.to_rows()
    assert len(rows) == 2
    second = ContentHasher.from_rows(tmp_path, rows)
    assert (second.hash_path("a.txt"), second.hash_path("d")) == digests
    assert (second.stats.reads, second.stats.hits) == (0, 2)


def test_untrusted_entries_are_not_persisted(tmp_path: Path) -> None:
    mtime = 1_700_000_000 * SECOND
    write(tmp_path / "a.txt", "a", mtime_ns=mtime)
    hasher = ContentHasher(tmp_path, clock=Clock(mtime + 1))
    hasher.hash_path("a.txt")
    assert hasher.to_rows() == []


def test_concurrent_hashing_from_threads_agrees(tmp_path: Path) -> None:
    old = 1_600_000_000 * SECOND
    for i in range(50):
        write(tmp_path / "d" / f"f{i}.txt", str(i) * 1000, mtime_ns=old)
    hasher = ContentHasher(tmp_path)
    expected = ContentHasher(tmp_path).hash_path("d")
    results: list[str | None] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            digest = hasher.hash_path("d")
            with lock:
                results.append(digest)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [expected] * 20
