"""A client for a running supervisor's live API (WebSocket, JSON-RPC 2.0).

The supervisor of a project publishes its URL and token in
``<project>/.pivot-supervise/server.json``; :func:`connect` reads it, checks that the
process named there is alive, and connects with the token::

    async with connect(Path("my-project")) as client:
        print(await client.call("status"))
        await client.subscribe(["stage_finished"])
        async for event in client.events():
            print(event["stage"], event["status"])

:meth:`Client.events` ends when the connection closes (the supervisor stopped, or it
dropped this client); :attr:`Client.close_code` then says why.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from .supervisor._server_file import (
    ServerFileError,
    ServerInfo,
    pid_alive,
    read_server_file,
    server_file,
)

#: Largest message the client accepts (events carry stage output).
CLIENT_MAX_MESSAGE_SIZE = 2**24
CONNECT_TIMEOUT_S = 5.0

__all__ = [
    "CallError",
    "Client",
    "NoSupervisor",
    "ServerFileError",
    "ServerInfo",
    "connect",
    "find_supervisor",
]


class NoSupervisor(Exception):
    """No supervisor runs for the project (no server.json, a dead pid, or no answer)."""


class CallError(Exception):
    """The server answered a call with an error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def find_supervisor(project: Path) -> ServerInfo:
    """The live supervisor's server info; raises :class:`NoSupervisor` if there is none.

    A malformed server.json raises :class:`ServerFileError` (its message names the file).
    """
    root = project.resolve()
    info = read_server_file(root)
    if info is None:
        raise NoSupervisor(
            f"no supervisor is running for {root} (no {server_file(root).relative_to(root)}); "
            "start one with `pivot-supervise watch`"
        )
    if not pid_alive(info.pid):
        raise NoSupervisor(
            f"no supervisor is running for {root} (server.json names pid {info.pid}, which "
            "is gone); start one with `pivot-supervise watch`"
        )
    return info


class Client:
    """One connection.  Reads happen on demand: :meth:`call` reads until its response
    arrives, keeping the events it meets for :meth:`events`.  Use it from one task at
    a time."""

    def __init__(self, ws: WebSocketConnection, info: ServerInfo) -> None:
        self.ws = ws
        self.info = info
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._ids = itertools.count(1)
        self._events: deque[dict[str, Any]] = deque()
        self._responses: dict[int, dict[str, Any]] = {}

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call ``method``; its result, or :class:`CallError` for an error response.

        Raises ``trio_websocket.ConnectionClosed`` if the connection ends first.
        """
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.ws.send_message(json.dumps(message))
        while request_id not in self._responses:
            await self._read_one()
        response = self._responses.pop(request_id)
        if "error" in response:
            error = cast("dict[str, Any]", response["error"])
            raise CallError(int(error.get("code", 0)), str(error.get("message")), error.get("data"))
        return response.get("result")

    async def subscribe(self, events: Sequence[str] | None = None) -> Any:
        """Ask for event notifications (all, or the named ones); read them with :meth:`events`."""
        return await self.call("subscribe", {} if events is None else {"events": list(events)})

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Event objects (as ``--json`` prints them) until the connection closes."""
        while True:
            while self._events:
                yield self._events.popleft()
            try:
                await self._read_one()
            except ConnectionClosed:
                return

    async def _read_one(self) -> None:
        try:
            frame = await self.ws.get_message()
        except ConnectionClosed as closed:
            reason = closed.reason
            self.close_code = None if reason is None else reason.code
            self.close_reason = None if reason is None else reason.reason
            raise
        try:
            message = json.loads(frame)
        except ValueError:
            return
        self._deliver(message)

    def _deliver(self, message: Any) -> None:
        if isinstance(message, list):
            for item in cast("list[Any]", message):
                self._deliver(item)
            return
        if not isinstance(message, dict):
            return
        obj = cast("dict[str, Any]", message)
        if obj.get("method") == "event" and isinstance(obj.get("params"), dict):
            self._events.append(cast("dict[str, Any]", obj["params"]))
            return
        request_id = obj.get("id")
        if isinstance(request_id, int):
            self._responses[request_id] = obj


@asynccontextmanager
async def connect(
    project: Path | None = None,
    *,
    info: ServerInfo | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> AsyncGenerator[Client]:
    """Connect to the supervisor of ``project`` (or at ``info``), authenticated.

    Raises :class:`NoSupervisor` when none runs or it does not answer, and
    ``trio_websocket.ConnectionRejected`` when the handshake is refused (wrong token).
    """
    if info is None:
        info = find_supervisor(project if project is not None else Path("."))
    headers = [(b"authorization", b"Bearer " + info.token.encode("utf-8"))]
    connected = False
    try:
        async with open_websocket_url(
            info.url,
            extra_headers=headers,
            max_message_size=CLIENT_MAX_MESSAGE_SIZE,
            connect_timeout=connect_timeout,
            disconnect_timeout=connect_timeout,
        ) as ws:
            connected = True
            yield Client(ws, info)
    except (HandshakeError, OSError) as exc:
        if connected or isinstance(exc, ConnectionRejected):
            raise
        raise NoSupervisor(
            f"the supervisor (pid {info.pid}) does not answer at {info.url}: {exc!r}"
        ) from None
