"""Helpers for the live-API tests: a supervisor with its API server on a temp project,
raw WebSocket exchanges, and bounded waits (no sleeps as synchronisation)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from conftest import TIMEOUT_S, Session, supervising
from pivot_supervise.supervisor._server import ApiServer
from pivot_supervise.supervisor._server_file import ServerInfo

#: ``produce`` -> ``copy``, reading a helper module the tests may edit.
PROJECT = {
    "pipeline.py": """
        from pathlib import Path

        from pivot_supervise import stage

        import value

        @stage(deps=["data/in.txt"], outs=["out.txt"])
        def produce():
            Path("out.txt").write_text(value.VALUE + Path("data/in.txt").read_text())

        @stage(deps=["out.txt"], outs=["copy.txt"])
        def copy():
            Path("copy.txt").write_text(Path("out.txt").read_text())
    """,
    "value.py": 'VALUE = "aaa"\n',
    "data/in.txt": "x",
}


@asynccontextmanager
async def serving(
    project: Path,
    *,
    max_workers: int = 2,
    server: ApiServer | None = None,
    first: str = "run_finished",
) -> AsyncGenerator[tuple[Session, ApiServer]]:
    """A watching supervisor with its API server, once the event ``first`` happened.

    On the way out: stopped, every event read, every worker gone, server.json removed.
    """
    server = server if server is not None else ApiServer()
    async with supervising(
        project, max_workers=max_workers, incremental=True, services=[server]
    ) as session:
        await session.events.wait_for(first)
        assert server.info is not None
        yield session, server
    assert not (project / ".pivot-supervise" / "server.json").exists()


def bearer(info: ServerInfo) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + info.token.encode())]


@asynccontextmanager
async def raw_connection(info: ServerInfo, **kwargs: Any) -> AsyncGenerator[WebSocketConnection]:
    async with open_websocket_url(
        info.url, extra_headers=bearer(info), connect_timeout=5, **kwargs
    ) as ws:
        yield ws


async def next_reply(ws: WebSocketConnection, timeout: float = TIMEOUT_S) -> Any:
    """The next message that is not an event notification."""
    with trio.fail_after(timeout):
        while True:
            message = json.loads(await ws.get_message())
            if not (isinstance(message, dict) and message.get("method") == "event"):
                return message


async def exchange(ws: WebSocketConnection, message: Any) -> Any:
    """Send ``message`` (a str is sent as is) and return the reply."""
    await ws.send_message(message if isinstance(message, str | bytes) else json.dumps(message))
    return await next_reply(ws)


async def eventually(check: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    """Poll a state condition with a deadline (for state no event announces)."""
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"waited {timeout}s for {what}")
