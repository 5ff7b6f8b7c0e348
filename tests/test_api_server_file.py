"""``.pivot-supervise/server.json``: private, atomic, one live supervisor per project,
stale files replaced, removed on exit only by its owner."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import trio

from api_helpers import PROJECT, serving
from pivot_supervise._config import load_config
from pivot_supervise.client import NoSupervisor, find_supervisor
from pivot_supervise.supervisor._core import RunOptions
from pivot_supervise.supervisor._server import ApiServer
from pivot_supervise.supervisor._server_file import (
    AlreadyRunning,
    ServerInfo,
    claim_server_file,
    read_server_file,
    release_server_file,
    server_file,
)
from pivot_supervise.supervisor._supervisor import Supervisor

ProjectFactory = Callable[[Mapping[str, str]], Path]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_server_json_is_private_names_this_process_and_is_removed_on_exit(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PROJECT)
    async with serving(project) as (_, server):
        path = server_file(project)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert json.loads(path.read_text()) == {
            "url": server.info.url if server.info else None,
            "token": server.info.token if server.info else None,
            "pid": os.getpid(),
        }
        assert server.info is not None and server.info.url.startswith("ws://127.0.0.1:")
        assert len(server.info.token) >= 40
        assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert not path.exists()  # (serving also checks it)


async def test_a_second_supervisor_on_the_same_project_refuses_to_start(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PROJECT)
    async with serving(project) as (_, server):
        second = Supervisor(
            load_config(project),
            RunOptions(max_workers=1),
            watch=True,
            handle_signals=False,
            services=[ApiServer()],
        )
        with (
            pytest.RaisesGroup(
                pytest.RaisesExc(AlreadyRunning, match="already running"), flatten_subgroups=True
            ),
            trio.fail_after(20),
        ):
            await second.run()
        # The first one's file is untouched.
        assert read_server_file(project) == server.info


def test_a_file_left_by_a_dead_pid_is_replaced_and_clients_ignore_it(tmp_path: Path) -> None:
    stale = ServerInfo("ws://127.0.0.1:9/", "old-token", dead_pid())
    claim_server_file(tmp_path, stale)
    with pytest.raises(NoSupervisor, match=f"pid {stale.pid}, which is gone"):
        find_supervisor(tmp_path)
    mine = ServerInfo("ws://127.0.0.1:10/", "new-token", os.getpid())
    claim_server_file(tmp_path, mine)
    assert read_server_file(tmp_path) == mine
    assert find_supervisor(tmp_path) == mine
    with pytest.raises(AlreadyRunning):
        claim_server_file(tmp_path, ServerInfo("ws://127.0.0.1:11/", "third", os.getpid()))


def test_release_removes_the_file_only_when_pid_and_token_are_ours(tmp_path: Path) -> None:
    mine = ServerInfo("ws://127.0.0.1:10/", "token-a", os.getpid())
    claim_server_file(tmp_path, mine)
    release_server_file(tmp_path, ServerInfo(mine.url, "token-b", mine.pid))
    assert read_server_file(tmp_path) == mine
    release_server_file(tmp_path, mine)
    assert read_server_file(tmp_path) is None


def test_the_temp_file_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    state = tmp_path / ".pivot-supervise"
    state.mkdir()
    target = tmp_path / "elsewhere"
    (state / "server.json").symlink_to(target)  # a planted link in place of the file
    claim_server_file(tmp_path, ServerInfo("ws://127.0.0.1:10/", "t", os.getpid()))
    assert not target.exists()
    assert not (state / "server.json").is_symlink()
