"""At least 1,000 generated malformed or odd messages through one real connection: the
server answers each exactly as the JSON-RPC layer says it must, and keeps serving.

The supervisor, its server and the client connection live in one trio run on a
background thread for the whole module; hypothesis runs in the test thread and sends
each message through ``trio.from_thread.run``.  After every message a ``status`` probe
is sent: everything before its reply is the reply to the message (a notification gets
nothing), so no wait depends on time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import WebSocketConnection

from api_helpers import PROJECT, raw_connection
from conftest import TIMEOUT_S, EventLog, kill_survivors, wait_gone_blocking, write_files
from pivot_supervise._config import load_config
from pivot_supervise.supervisor._core import RunOptions
from pivot_supervise.supervisor._events import EVENT_NAMES
from pivot_supervise.supervisor._rpc import MAX_BATCH, Request, parse_frame
from pivot_supervise.supervisor._server import ApiServer
from pivot_supervise.supervisor._supervisor import Supervisor

PROBE = "\x00probe"


@dataclass
class Harness:
    token: trio.lowlevel.TrioToken
    ws: WebSocketConnection
    server: ApiServer
    supervisor: Supervisor
    stop: trio.Event

    def exchange(self, frame: str | bytes, probe: int) -> list[Any]:
        return trio.from_thread.run(self._exchange, frame, probe, trio_token=self.token)

    async def _exchange(self, frame: str | bytes, probe: int) -> list[Any]:
        probe_id = f"{PROBE}{probe}"
        await self.ws.send_message(frame)
        await self.ws.send_message(
            json.dumps({"jsonrpc": "2.0", "method": "status", "id": probe_id})
        )
        replies: list[Any] = []
        with trio.fail_after(TIMEOUT_S):
            while True:
                message = json.loads(await self.ws.get_message())
                if isinstance(message, dict) and message.get("method") == "event":
                    continue
                if isinstance(message, dict) and message.get("id") == probe_id:
                    assert message["result"]["state"] in ("idle", "running", "reloading")
                    return replies
                replies.append(message)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    project = tmp_path_factory.mktemp("fuzz")
    write_files(project, PROJECT)
    box: dict[str, Any] = {}
    ready = threading.Event()
    workers: set[int] = set()

    async def main() -> None:
        server = ApiServer()
        supervisor = Supervisor(
            load_config(project),
            RunOptions(max_workers=1),
            watch=True,
            handle_signals=False,
            services=[server],
        )
        events = EventLog(supervisor.bus.subscribe())
        stop = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(supervisor.run)
                await events.wait_for("run_finished")
                assert server.info is not None
                async with raw_connection(server.info) as ws:
                    box["harness"] = Harness(
                        trio.lowlevel.current_trio_token(), ws, server, supervisor, stop
                    )
                    ready.set()
                    await stop.wait()
                supervisor.stop()
            await events.drain()
        finally:
            workers.update(events.worker_pids())
            ready.set()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported by the fixture
            box["error"] = exc

    thread = threading.Thread(target=run, name="api-fuzz-supervisor", daemon=True)
    thread.start()
    try:
        assert ready.wait(TIMEOUT_S), "the supervisor did not come up"
        if "error" in box:
            raise box["error"]
        harness: Harness = box["harness"]
        yield harness
        trio.from_thread.run_sync(harness.stop.set, trio_token=harness.token)
        thread.join(TIMEOUT_S)
        assert not thread.is_alive(), "the supervisor did not stop"
        if "error" in box:
            raise box["error"]
        assert not wait_gone_blocking(workers), "workers outlived the supervisor"
    finally:
        kill_survivors(workers)


# ------------------------------------------------------------------ messages

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
methods = st.sampled_from(
    ["status", "stages", "subscribe", "unsubscribe", "run", "nope", "rpc.discover", "", "STATUS"]
)
params = st.one_of(
    values,
    st.fixed_dictionaries(
        {},
        optional={
            "stages": st.lists(st.sampled_from(["produce", "copy", "nope"]), max_size=3) | values,
            "force": st.booleans() | values,
            "on_error": st.sampled_from(["fail", "keep-going", "x"]) | values,
            "events": st.lists(st.sampled_from([*EVENT_NAMES, "nope"]), max_size=3) | values,
        },
    ),
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0", 2]) | values,
        "method": methods | values,
        "params": params,
        "id": st.integers() | st.text(max_size=8) | st.none() | st.booleans() | st.floats(),
        "extra": values,
    },
)
odd_texts = st.sampled_from(
    [
        "NaN",
        "[Infinity]",
        '{"jsonrpc": "2.0", "method": "status", "id": 1e999}',
        "[" * 50_000,
        "[" * 3000 + "]" * 3000,
        '{"jsonrpc": "2.0", "method": "status", "id": ' + "7" * 5000 + "}",
        '"\\ud800"',
        '{"jsonrpc": "2.0", "method": "\\ud800", "id": "\\udfff"}',
        "[]",
        "[[]]",
        "",
        " ",
        "\x00",
    ]
)
frames: st.SearchStrategy[str | bytes] = st.one_of(
    requests.map(json.dumps),
    requests.map(json.dumps),
    st.lists(requests | values, min_size=1, max_size=6).map(json.dumps),
    values.map(json.dumps),
    st.text(max_size=100),
    st.binary(max_size=40),
    odd_texts,
    st.lists(requests, min_size=MAX_BATCH + 1, max_size=MAX_BATCH + 3).map(json.dumps),
)


def expected_ids(frame: str | bytes) -> tuple[bool, list[Any]] | None:
    """What the reply must be: ``(is_array, ids in order)``, or ``None`` for no reply."""
    incoming = parse_frame(frame)
    ids: list[Any] = []
    for item in incoming.items:
        if isinstance(item, Request):
            if not item.notification:
                ids.append(item.id)
        else:
            ids.append(item["id"])
    return (incoming.batch, ids) if ids else None


def check_response(response: Any) -> None:
    assert isinstance(response, dict), response
    assert response["jsonrpc"] == "2.0"
    assert ("result" in response) != ("error" in response), response
    if "error" in response:
        error = response["error"]
        assert isinstance(error["code"], int) and not isinstance(error["code"], bool)
        assert isinstance(error["message"], str) and error["message"]


def test_1000_generated_malformed_or_odd_messages_leave_the_server_answering(
    harness: Harness,
) -> None:
    sent: list[int] = []

    @settings(
        max_examples=1000,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(frames)
    def one_message(frame: str | bytes) -> None:
        sent.append(1)
        replies = harness.exchange(frame, len(sent))
        expected = expected_ids(frame)
        if expected is None:
            assert replies == [], f"a notification was answered: {replies!r}"
            return
        assert len(replies) == 1, replies
        reply = replies[0]
        is_array, ids = expected
        responses = reply if is_array else [reply]
        assert isinstance(responses, list)
        for response in responses:
            check_response(response)
        assert [r["id"] for r in responses] == ids

    one_message()
    assert len(sent) >= 1000
    assert harness.server.connections == 1
    assert harness.server.dropped == 0
    assert harness.supervisor.exit_code is None  # still supervising
