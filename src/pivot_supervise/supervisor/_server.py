"""The live API: a WebSocket endpoint speaking JSON-RPC 2.0, as a supervisor service.

::

    ApiServer (service in the session nursery)
     |- serve_websocket          trio-websocket; connect_timeout lowered to 10 s
     '- one handler per connection, never raising into the server:
         |- reader     frames -> parse (sans-IO, _rpc) -> methods -> reply into the outbox
         |- writer     outbox -> socket
         |- forwarder  bus subscription (bounded) -> event notifications into the outbox
         '- pinger     ping every 20 s, fail_after(20 s): a dead peer is dropped

Safety by default:

* **Authentication**: a random token per start, published in ``server.json`` (0600).
  The handshake must carry ``Authorization: Bearer <token>`` (scheme matched
  case-insensitively) or ``?token=<token>``; tokens are compared as bytes with
  ``hmac.compare_digest``.  Otherwise: HTTP 401.
* **Origin**: any web page can open a WebSocket to 127.0.0.1, and browsers send
  ``Origin`` with it (scripts and the CLI do not).  A handshake whose ``Origin`` is
  present and is not a loopback http(s) origin (``localhost``, ``127.0.0.0/8``,
  ``[::1]``) is refused with 403, token or not: this stops DNS-rebinding pages and any
  page that obtained the token.  ``Origin: null`` (sandboxed frames, ``file:`` pages) is
  refused too.
* **Limits**: messages over 1 MiB close the connection with 1009 (trio-websocket).  Each
  connection has a bounded outbox (:data:`OUTBOX` frames) that events enter with
  ``send_nowait``: a subscriber that falls that far behind is dropped with 1008 instead
  of slowing the supervisor or other clients; the event bus never waits on anyone.  A
  peer that stops answering pings is dropped.  (A peer that reads nothing at all cannot
  receive the close frame either: after :data:`CLOSE_TIMEOUT_S` its TCP connection is
  simply closed, and it sees 1006.)
* **Isolation**: anything a handler raises is answered as ``-32603`` (a method) or ends
  that connection (the socket); nothing reaches the server's nursery, so one client can
  never take the server or the supervisor down.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import structlog
import trio
from trio_websocket import (
    ConnectionClosed,
    Endpoint,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    serve_websocket,
)

from ._bus import Subscription
from ._events import EVENT_NAMES
from ._methods import Methods
from ._rpc import (
    INTERNAL_ERROR,
    Params,
    Request,
    RpcError,
    dumps,
    encode_reply,
    error_response,
    invalid_params,
    notification,
    parse_frame,
    result_response,
)
from ._server_file import ServerInfo, claim_server_file, new_token, release_server_file

if TYPE_CHECKING:
    from ._supervisor import Supervisor

log = structlog.get_logger("pivot_supervise.api")

DEFAULT_HOST = "127.0.0.1"
#: Largest message accepted; a bigger one closes the connection with 1009.
MAX_MESSAGE_SIZE = 2**20
#: Frames (replies and events) waiting for the socket, per connection: a subscriber
#: with this many events unsent is too slow and is dropped (1008).
OUTBOX = 1000
#: Events waiting for a connection's forwarder (which never waits, so this only fills
#: if the whole server falls behind); overflowing it also drops the subscriber.
EVENT_QUEUE = 1000
#: A client must finish the opening handshake within this time (library default: 60 s).
CONNECT_TIMEOUT_S = 10.0
DISCONNECT_TIMEOUT_S = 5.0
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
#: How long a close handshake may take before the TCP connection is simply closed.
CLOSE_TIMEOUT_S = 1.0

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL_ERROR = 1011

_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) only reaches this machine."""
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_handshake(
    headers: Sequence[tuple[bytes, bytes]], path: str, token: str
) -> tuple[int, str] | None:
    """``None`` to accept the handshake, else ``(HTTP status, reason)`` to refuse it."""
    expected = token.encode("utf-8")
    presented: list[bytes] = []
    origins: list[bytes] = []
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                presented.append(credentials.strip())
        elif name.lower() == b"origin":
            origins.append(value.strip())
    for candidate in parse_qs(urlsplit(path).query).get("token", []):
        presented.append(candidate.encode("utf-8", "replace"))
    if not any(hmac.compare_digest(candidate, expected) for candidate in presented):
        why = "wrong token" if presented else "no token"
        return 401, (
            f"{why}: send 'Authorization: Bearer <token>' (or ?token=<token>) with the token "
            "from .pivot-supervise/server.json"
        )
    for origin in origins:
        if not _loopback_origin(origin):
            shown = origin[:100].decode("latin-1")
            return 403, f"origin {shown!r} is not allowed: only loopback origins may connect"
    return None


def _loopback_origin(origin: bytes) -> bool:
    try:
        parts = urlsplit(origin.decode("ascii"))
        hostname = parts.hostname
    except (UnicodeDecodeError, ValueError):
        return False
    return parts.scheme in ("http", "https") and hostname is not None and is_loopback_host(hostname)


class ApiServer:
    """The WebSocket JSON-RPC endpoint of one supervisor: pass it in ``services=``.

    After it started, :attr:`info` holds the url, token and pid it published in the
    project's ``.pivot-supervise/server.json`` (removed again when it stops).
    ``on_ready`` is called with that info once the server listens.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        on_ready: Callable[[ServerInfo], None] | None = None,
        event_queue: int = EVENT_QUEUE,
        outbox: int = OUTBOX,
        max_message_size: int = MAX_MESSAGE_SIZE,
        ping_interval: float = PING_INTERVAL_S,
        ping_timeout: float = PING_TIMEOUT_S,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.host = host
        self.port = port
        self.on_ready = on_ready
        self.event_queue = event_queue
        self.outbox = outbox
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connect_timeout = connect_timeout
        self.info: ServerInfo | None = None
        #: Connections open now, and connections the server cut off (slow or dead peers).
        self.connections = 0
        self.dropped = 0

    async def __call__(
        self, supervisor: Supervisor, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        token = new_token()
        methods = Methods(supervisor)
        root = supervisor.config.project_root
        handler = partial(self._handle, token=token, methods=methods, supervisor=supervisor)
        async with trio.open_nursery() as nursery:
            server: WebSocketServer = await nursery.start(
                partial(
                    serve_websocket,
                    handler,
                    self.host,
                    self.port,
                    None,
                    max_message_size=self.max_message_size,
                    connect_timeout=self.connect_timeout,
                    disconnect_timeout=DISCONNECT_TIMEOUT_S,
                )
            )
            info = ServerInfo(_client_url(server.listeners), token, os.getpid())
            claim_server_file(root, info)
            try:
                self.info = info
                log.info("api listening", url=info.url)
                if self.on_ready is not None:
                    self.on_ready(info)
                task_status.started()
                await trio.sleep_forever()
            finally:
                release_server_file(root, info)

    async def _handle(
        self,
        request: WebSocketRequest,
        *,
        token: str,
        methods: Methods,
        supervisor: Supervisor,
    ) -> None:
        """One connection, start to end; nothing but cancellation escapes."""
        try:
            refusal = check_handshake(request.headers, request.path, token)
            if refusal is not None:
                status, reason = refusal
                log.info("api handshake refused", status=status, reason=reason)
                headers = [(b"content-type", b"text/plain; charset=utf-8")]
                if status == 401:
                    headers.append((b"www-authenticate", b"Bearer"))
                await request.reject(status, extra_headers=headers, body=reason.encode() + b"\n")
                return
            ws = await request.accept()
        except ConnectionClosed:
            return
        except Exception:
            log.exception("api handshake failed")
            return
        connection = _Connection(self, ws, methods, supervisor)
        self.connections += 1
        try:
            await connection.serve()
        except Exception:
            log.exception("api connection failed")
        finally:
            self.connections -= 1


class _Connection:
    """One client: its reader, writer, pinger and (once subscribed) event forwarder."""

    def __init__(
        self, server: ApiServer, ws: WebSocketConnection, methods: Methods, supervisor: Supervisor
    ) -> None:
        self.server = server
        self.ws = ws
        self.methods = methods
        self.supervisor = supervisor
        self._outbox, self._outbox_out = trio.open_memory_channel[str](server.outbox)
        self._subscription: Subscription | None = None
        self._filter: frozenset[str] | None = None
        self._forward_pending = False
        self._close: tuple[int, str] | None = None
        self._nursery: trio.Nursery | None = None

    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._guarded, self._writer)
                nursery.start_soon(self._guarded, self._reader)
                nursery.start_soon(self._guarded, self._pinger)
        except trio.Cancelled:
            self._close = self._close or (CLOSE_GOING_AWAY, "supervisor stopping")
            raise
        finally:
            self._unsubscribe()
            if self._close is not None:
                code, reason = self._close
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                    await self.ws.aclose(code, reason)

    def drop(self, code: int, reason: str) -> None:
        """End this connection with ``code`` (1008: too slow; 1011: our bug)."""
        if self._close is None:
            self._close = (code, reason)
            self.server.dropped += 1
            log.warning("api connection dropped", code=code, reason=reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _guarded(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run one of the connection's tasks; when it ends, for any reason, so does the
        connection.  ``ConnectionClosed`` is caught here, inside the task, so that it
        never reaches the nursery as an exception group."""
        try:
            await task()
        except ConnectionClosed:
            pass
        except Exception as exc:
            log.exception("api connection task failed")
            self.drop(CLOSE_INTERNAL_ERROR, f"internal error: {type(exc).__name__}")
        finally:
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()

    # -------------------------------------------------------------- tasks

    async def _writer(self) -> None:
        async for frame in self._outbox_out:
            await self.ws.send_message(frame)

    async def _reader(self) -> None:
        while True:
            frame = await self.ws.get_message()
            reply = await self._answer(frame)
            if reply is not None:
                await self._outbox.send(reply)
            if self._forward_pending:
                # Started after the subscribe reply was queued, so it comes first.
                self._forward_pending = False
                assert self._nursery is not None
                self._nursery.start_soon(self._guarded_forwarder)

    async def _pinger(self) -> None:
        while True:
            await trio.sleep(self.server.ping_interval)
            try:
                with trio.fail_after(self.server.ping_timeout):
                    await self.ws.ping()
            except trio.TooSlowError:
                self.drop(CLOSE_POLICY, f"no pong within {self.server.ping_timeout:g} s")
                return

    async def _guarded_forwarder(self) -> None:
        subscription = self._subscription
        if subscription is None:
            return
        try:
            await self._forward(subscription)
        except ConnectionClosed:
            pass
        except Exception as exc:
            log.exception("api event forwarder failed")
            self.drop(CLOSE_INTERNAL_ERROR, f"internal error: {type(exc).__name__}")

    async def _forward(self, subscription: Subscription) -> None:
        async for event in subscription.events:
            if subscription is not self._subscription:
                return
            if self._filter is not None and event.name not in self._filter:
                continue
            frame = dumps(notification("event", event.to_json_obj()))
            try:
                # Never wait on a slow client: a full outbox means it is too far behind.
                self._outbox.send_nowait(frame)
            except trio.WouldBlock:
                break
        else:
            if not subscription.overflowed:
                return  # unsubscribed, or the supervisor is stopping
        self.drop(CLOSE_POLICY, "subscriber too slow: too many events waiting for it")

    # ----------------------------------------------------------- requests

    async def _answer(self, frame: str | bytes) -> str | None:
        incoming = parse_frame(frame)
        responses: list[dict[str, Any]] = []
        for item in incoming.items:
            if not isinstance(item, Request):
                responses.append(item)
                continue
            response = await self._dispatch(item)
            if not item.notification:
                responses.append(response)
        try:
            return encode_reply(responses, batch=incoming.batch)
        except (TypeError, ValueError) as exc:
            log.exception("api reply not encodable")
            error = RpcError(INTERNAL_ERROR, f"internal error: reply not encodable: {exc}")
            return dumps(error_response(None, error))

    async def _dispatch(self, request: Request) -> dict[str, Any]:
        try:
            if request.method == "subscribe":
                result: Any = self._subscribe(request)
            elif request.method == "unsubscribe":
                Params(request)
                self._unsubscribe()
                result = {"subscribed": False}
            else:
                result = await self.methods.call(request)
        except RpcError as error:
            return error_response(request.id, error)
        except Exception as exc:
            log.exception("api method failed", method=request.method[:80])
            error = RpcError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")
            return error_response(request.id, error)
        return result_response(request.id, result)

    def _subscribe(self, request: Request) -> dict[str, Any]:
        params = Params(request, ("events",))
        names = params.str_list("events")
        if names is not None:
            for index, name in enumerate(names):
                if name not in EVENT_NAMES:
                    raise invalid_params(
                        f"'events[{index}]' is not an event name: {name[:80]!r}; "
                        f"known: {', '.join(EVENT_NAMES)}"
                    )
        self._filter = frozenset(names) if names is not None else None
        if self._subscription is None:
            self._subscription = self.supervisor.bus.subscribe(self.server.event_queue)
            self._forward_pending = True
        shown = [n for n in EVENT_NAMES if self._filter is None or n in self._filter]
        return {"subscribed": True, "events": shown}

    def _unsubscribe(self) -> bool:
        """Stop this connection's events; whether it was subscribed."""
        subscription, self._subscription = self._subscription, None
        self._forward_pending = False
        if subscription is None:
            return False
        self.supervisor.bus.unsubscribe(subscription)
        return True


def _client_url(listeners: Sequence[Endpoint | str]) -> str:
    """The URL a local client uses: the first listener, loopback for a wildcard bind."""
    for listener in listeners:
        if isinstance(listener, Endpoint):
            address = listener.address
            if address.is_unspecified:
                loopback = "127.0.0.1" if address.version == 4 else "[::1]"
                return f"ws://{loopback}:{listener.port}/"
            return listener.url + "/"
    raise RuntimeError(f"the API server has no TCP listener: {listeners!r}")


__all__ = ["DEFAULT_HOST", "ApiServer", "check_handshake", "is_loopback_host"]
