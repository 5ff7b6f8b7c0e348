"""The cache of compiled project code: served only for the very bytes it was compiled from."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import supervising
from pivot_supervise._state_dir import STATE_DIR
from pivot_supervise.workers._bytecode import MAX_ENTRIES, cached_code, store_code, trim
from pivot_supervise.workers._imports import purge_project_modules
from pivot_supervise.workers._loader import load_pipeline

PIPELINE = """\
from pivot_supervise.pipeline._stage import stage

import helpers


@stage()
def show():
    return helpers.VALUE
"""


def project(root: Path, value: str = "aaaa") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.py").write_text(PIPELINE)
    (root / "helpers.py").write_text(f"VALUE = {value!r}\n")
    return root


def run_show(root: Path) -> object:
    purge_project_modules(root)
    loaded = load_pipeline(root, "pipeline.py", "params.toml", fingerprints=False)
    return loaded.functions["show"]()


def key(root: Path, name: str) -> tuple[Path, str, str]:
    path = root.resolve() / name
    return root.resolve(), str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def entries(root: Path) -> list[Path]:
    return sorted((root / STATE_DIR / "bytecode").glob("*.bin"))


def test_a_load_keeps_what_it_compiled_and_the_kept_code_is_the_compiled_code(
    tmp_path: Path,
) -> None:
    root = project(tmp_path / "p")
    assert run_show(root) == "aaaa"
    assert len(entries(root)) == 2, "pipeline.py and helpers.py"
    base, path, sha = key(root, "helpers.py")
    kept = cached_code(base, path, sha)
    assert kept is not None
    compiled = compile(Path(path).read_bytes(), path, "exec", dont_inherit=True)
    assert kept == compiled
    assert kept.co_filename == path
    state = root / STATE_DIR
    assert (state / ".gitignore").read_text().splitlines()[-1] == "*", "never committed"
    assert state.stat().st_mode & 0o777 == 0o700


def test_a_same_size_same_mtime_save_is_never_served_the_old_code(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    assert run_show(root) == "aaaa"
    helpers = root / "helpers.py"
    before = helpers.stat()
    helpers.write_text("VALUE = 'bbbb'\n")
    os.utime(helpers, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert helpers.stat().st_size == before.st_size
    assert run_show(root) == "bbbb"
    assert run_show(root) == "bbbb", "and served from the cache the second time"
    assert len(entries(root)) == 3


def test_a_damaged_entry_is_a_miss_and_is_rewritten(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    run_show(root)
    base, path, sha = key(root, "helpers.py")
    for entry in entries(root):
        data = bytearray(entry.read_bytes())
        data[-3] ^= 0xFF  # a flipped bit in the marshalled code
        entry.write_bytes(bytes(data))
    assert cached_code(base, path, sha) is None
    assert run_show(root) == "aaaa"
    assert cached_code(base, path, sha) is not None, "the load wrote it again"


def test_truncated_and_foreign_entries_are_misses(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    run_show(root)
    base, path, sha = key(root, "helpers.py")
    for entry in entries(root):
        entry.write_bytes(entry.read_bytes()[:40])
    assert cached_code(base, path, sha) is None
    for entry in entries(root):
        entry.write_bytes(b"not ours at all")
    assert cached_code(base, path, sha) is None
    assert run_show(root) == "aaaa"


def test_a_moved_project_is_compiled_for_its_new_place(tmp_path: Path) -> None:
    first = project(tmp_path / "first")
    run_show(first)
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    assert run_show(moved) == "aaaa"
    module = sys.modules["helpers"]
    assert module.__file__ is not None and Path(module.__file__).parent == moved.resolve()
    base, path, sha = key(moved, "helpers.py")
    kept = cached_code(base, path, sha)
    assert kept is not None and kept.co_filename == path, "tracebacks name the file as it is"


def test_an_unwritable_state_directory_only_costs_a_compile(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    (root / STATE_DIR).write_text("a file where the state directory should be\n")
    assert run_show(root) == "aaaa"
    assert run_show(root) == "aaaa"


def test_the_oldest_entries_go_once_there_are_too_many(tmp_path: Path) -> None:
    code = compile("x = 1", "x.py", "exec")
    sha = "0" * 64
    written: list[Path] = []
    for index in range(9):
        store_code(tmp_path, f"m{index}.py", sha, code)
        (new,) = set(entries(tmp_path)) - set(written)
        os.utime(new, ns=(index * 10**9, index * 10**9))  # distinct ages, oldest first
        written.append(new)
    assert trim(tmp_path, max_entries=9) == 0, "not more than the bound: nothing goes"
    assert trim(tmp_path, max_entries=8) == 5
    kept = [cached_code(tmp_path, f"m{index}.py", sha) is not None for index in range(9)]
    assert kept == [False] * 5 + [True] * 4, "the oldest five of nine go; four stay"


async def test_a_session_trims_an_overfull_cache_once_at_its_start(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    directory = root / STATE_DIR / "bytecode"
    directory.mkdir(parents=True)
    for index in range(MAX_ENTRIES + 1):  # older than anything the session stores
        (directory / f"old-{index}.bin").touch()
        os.utime(directory / f"old-{index}.bin", ns=(index, index))
    async with supervising(root, watch=False, max_workers=1) as session:
        assert await session.wait_exit() == 0
    old = list(directory.glob("old-*.bin"))
    assert len(old) <= MAX_ENTRIES // 2, f"{len(old)} old entries kept"
    assert cached_code(*key(root, "helpers.py")) is not None, "what the run compiled stays"


LOAD_IN_CHILD = """
import sys
from pathlib import Path
from pivot_supervise.workers._loader import load_pipeline
loaded = load_pipeline(Path(sys.argv[1]), "pipeline.py", "params.toml", fingerprints=False)
print(loaded.functions["show"]())
"""


def test_code_without_column_positions_is_kept_apart(tmp_path: Path) -> None:
    # -X no_debug_ranges compiles code without the columns tracebacks point with: such
    # code must not be served to a process that has them (nor the other way round).
    root = project(tmp_path / "p")
    child = subprocess.run(
        [sys.executable, "-X", "no_debug_ranges", "-c", LOAD_IN_CHILD, str(root)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "aaaa"
    assert len(entries(root)) == 2
    assert run_show(root) == "aaaa"
    assert len(entries(root)) == 4, "this process compiled its own"


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


async def test_a_session_drops_files_a_killed_writer_left_half_written(tmp_path: Path) -> None:
    """A worker killed while it wrote a cache behind its reply leaves its temporary file;
    the next session drops it, and never one whose writer is alive."""
    root = project(tmp_path / "p")
    state = root / STATE_DIR
    (state / "bytecode").mkdir(parents=True)
    dead, alive = dead_pid(), os.getpid()
    left = [
        state / f".code-analyses.cpython-311.bin.{dead}-1.tmp",
        state / "bytecode" / f".0123abcd.bin.{dead}-2.tmp",
    ]
    kept = [
        state / f".code-analyses.cpython-311.bin.{alive}-3.tmp",  # being written
        state / "notes.tmp",  # not a name write_atomically gives
    ]
    for path in (*left, *kept):
        path.write_bytes(b"half")
    async with supervising(root, watch=False, max_workers=1) as session:
        assert await session.wait_exit() == 0
    assert [path.exists() for path in left] == [False, False]
    assert [path.exists() for path in kept] == [True, True]
