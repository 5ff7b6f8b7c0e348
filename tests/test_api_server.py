"""The live API with a real server, real clients on 127.0.0.1 and a real supervisor with
real worker processes: authentication, every method, every error code, limits."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    open_websocket_url,
    wrap_client_stream,
)

from api_helpers import PROJECT, eventually, exchange, next_reply, raw_connection, serving
from conftest import TIMEOUT_S, assert_gone, named
from pivot_supervise.client import CallError, connect
from pivot_supervise.supervisor._events import Event
from pivot_supervise.supervisor._rpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    UNKNOWN_STAGE,
)

ProjectFactory = Callable[[Mapping[str, str]], Path]

SLOW_PROJECT = {
    "pipeline.py": """
        import time
        from pathlib import Path

        from pivot_supervise import stage

        @stage(deps=["data/in.txt"], outs=["slow.txt"])
        def slow():
            Path("started.txt").write_text("yes")
            time.sleep(60)
            Path("slow.txt").write_text("done")
    """,
    "data/in.txt": "x",
}


# ------------------------------------------------------------------ authentication


async def test_a_handshake_without_the_token_or_with_a_wrong_one_is_refused_with_401(
    make_project: ProjectFactory,
) -> None:
    async with serving(make_project(PROJECT)) as (_, server):
        assert server.info is not None
        for headers in ([], [(b"authorization", b"Bearer wrong-token")]):
            with pytest.raises(ConnectionRejected) as caught:
                async with open_websocket_url(server.info.url, extra_headers=headers):
                    pass
            assert caught.value.status_code == 401
        with pytest.raises(ConnectionRejected) as caught:
            async with open_websocket_url(server.info.url + "?token=wrong"):
                pass
        assert caught.value.status_code == 401
        assert server.connections == 0


async def test_the_token_is_accepted_as_a_bearer_header_or_a_query_parameter(
    make_project: ProjectFactory,
) -> None:
    async with serving(make_project(PROJECT)) as (_, server):
        info = server.info
        assert info is not None
        status = {"jsonrpc": "2.0", "method": "status", "id": 1}
        for url, headers in (
            (info.url, [(b"authorization", b"bearer  " + info.token.encode())]),
            (f"{info.url}?token={info.token}", []),
        ):
            async with open_websocket_url(url, extra_headers=headers) as ws:
                reply = await exchange(ws, status)
                assert reply["result"]["state"] == "idle"


async def test_a_web_page_from_a_foreign_origin_is_refused_with_403_even_with_the_token(
    make_project: ProjectFactory,
) -> None:
    async with serving(make_project(PROJECT)) as (_, server):
        info = server.info
        assert info is not None
        token = [(b"authorization", b"Bearer " + info.token.encode())]
        for origin in (b"http://evil.example", b"null", b"http://127.0.0.1.evil.example:80"):
            with pytest.raises(ConnectionRejected) as caught:
                async with open_websocket_url(
                    info.url, extra_headers=[*token, (b"origin", origin)]
                ):
                    pass
            assert caught.value.status_code == 403
        local = [*token, (b"origin", b"http://localhost:3000")]
        async with open_websocket_url(info.url, extra_headers=local) as ws:
            reply = await exchange(ws, {"jsonrpc": "2.0", "method": "status", "id": 1})
            assert "result" in reply


# ------------------------------------------------------------------ methods


async def test_every_method_answers_with_real_values(make_project: ProjectFactory) -> None:
    project = make_project(PROJECT)
    async with serving(project) as (session, server), connect(project) as client:
        events = session.events
        ready = next(e for e in events.seen if e.name == "generation_ready")

        status = await client.call("status")
        assert status["state"] == "idle"
        assert status["generation"] == 1
        assert status["workers"] == ready.get("workers")
        assert status["run"] is None
        assert status["last_error"] is None
        assert status["counts"]["ok"] == 2

        stages = await client.call("stages")
        assert [s["name"] for s in stages] == ["produce", "copy"]
        assert stages[0]["deps"] == ["data/in.txt"]
        assert stages[0]["outs"] == ["out.txt"]
        assert {s["last_status"] for s in stages} == {"ok"}
        assert all(s["last_duration_ms"] >= 0 for s in stages)

        subscribed = await client.subscribe(["run_started", "run_finished", "generation_ready"])
        assert subscribed["events"] == ["generation_ready", "run_started", "run_finished"]

        result = await client.call("run", {"stages": ["copy"], "force": True})
        assert result["stages"] == ["produce", "copy"]
        run_id = result["run_id"]
        started = await session.events.wait_for(named("run_started", run_id=run_id))
        assert started.get("trigger") == "api"
        copied = await session.events.wait_for(named("stage_finished", stage="copy", run_id=run_id))
        assert copied.get("status") == "ok"  # forced, though up to date
        await session.events.wait_for(named("run_finished", run_id=run_id))

        result = await client.call("run", {"on_error": "keep-going"})
        assert result["stages"] == ["produce", "copy"]
        await session.events.wait_for(named("run_finished", run_id=result["run_id"]))

        restarted = await client.call("restart")
        assert restarted == {"generation": 2}
        await session.events.wait_for(named("generation_ready", generation=2, trigger="restart"))

        # The subscription delivered exactly the events asked for, in order.
        names: list[str] = []
        with trio.fail_after(TIMEOUT_S):
            async for event in client.events():
                names.append(event["event"])
                if event["event"] == "run_finished" and names.count("run_finished") == 3:
                    break
        assert names == [
            "run_started",
            "run_finished",
            "run_started",
            "run_finished",
            "generation_ready",
            "run_started",
            "run_finished",
        ]
        assert await client.call("unsubscribe") == {"subscribed": False}
        assert server.dropped == 0


async def test_cancel_stops_a_running_stage_for_real(make_project: ProjectFactory) -> None:
    project = make_project(SLOW_PROJECT)
    async with (
        serving(project, max_workers=1, first="stage_started") as (session, _),
        connect(project) as client,
    ):
        started = project / "started.txt"
        await eventually(started.exists, "the slow stage to start")
        status = await client.call("status")
        assert status["state"] == "running"
        assert status["run"]["running"] == ["slow"]
        workers = set(session.events.worker_pids())

        assert await client.call("cancel") == {"run_id": status["run"]["id"]}
        finished = await session.events.wait_for(named("stage_finished", stage="slow"))
        assert finished.get("status") == "cancelled"
        await session.events.wait_for(named("run_finished", run_id=status["run"]["id"]))
        await session.events.wait_for(named("generation_ready", trigger="cancel"))
        await assert_gone(workers)  # the worker running the stage was stopped for real
        assert not (project / "slow.txt").exists()
        assert await client.call("cancel") == {"run_id": None}


async def test_every_error_code_is_answered_as_the_specification_says(
    make_project: ProjectFactory,
) -> None:
    async with serving(make_project(PROJECT)) as (_, server):
        assert server.info is not None
        async with raw_connection(server.info) as ws:
            reply = await exchange(ws, "{not json")
            assert reply["error"]["code"] == PARSE_ERROR and reply["id"] is None

            reply = await exchange(ws, {"jsonrpc": "2.0", "method": "status", "id": True})
            assert reply["error"]["code"] == INVALID_REQUEST and reply["id"] is None

            reply = await exchange(ws, {"jsonrpc": "2.0", "method": "launch", "id": "m"})
            assert reply["error"]["code"] == METHOD_NOT_FOUND and reply["id"] == "m"
            assert "launch" in reply["error"]["message"]

            reply = await exchange(
                ws, {"jsonrpc": "2.0", "method": "run", "params": {"force": "yes"}, "id": 4}
            )
            assert reply["error"]["code"] == INVALID_PARAMS
            assert "'force'" in reply["error"]["message"]

            reply = await exchange(
                ws,
                {"jsonrpc": "2.0", "method": "subscribe", "params": {"events": ["nope"]}, "id": 5},
            )
            assert reply["error"]["code"] == INVALID_PARAMS
            assert "'nope'" in reply["error"]["message"]

            reply = await exchange(
                ws, {"jsonrpc": "2.0", "method": "run", "params": {"stages": ["trian"]}, "id": 6}
            )
            assert reply["error"]["code"] == UNKNOWN_STAGE
            assert "'trian'" in reply["error"]["message"]
            assert reply["error"]["data"] == {"unknown": ["trian"]}

            reply = await exchange(ws, "[]")
            assert isinstance(reply, dict) and reply["error"]["code"] == INVALID_REQUEST

            # A notification is never answered, even a failing one: the next reply is
            # the status request's.
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "method": "launch"}))
            reply = await exchange(ws, {"jsonrpc": "2.0", "method": "status", "id": 8})
            assert reply["id"] == 8 and "result" in reply

            batch = [
                {"jsonrpc": "2.0", "method": "status", "id": 1},
                {"jsonrpc": "2.0", "method": "status"},
                {"foo": "boo"},
                {"jsonrpc": "2.0", "method": "nope", "id": "5"},
                7,
            ]
            reply = await exchange(ws, json.dumps(batch))
            assert [r.get("id") for r in reply] == [1, None, "5", None]
            assert [r.get("error", {}).get("code") for r in reply] == [
                None,
                INVALID_REQUEST,
                METHOD_NOT_FOUND,
                INVALID_REQUEST,
            ]

            # A batch of notifications only gets no reply at all.
            await ws.send_message(json.dumps([{"jsonrpc": "2.0", "method": "status"}] * 3))
            reply = await exchange(ws, {"jsonrpc": "2.0", "method": "status", "id": 9})
            assert reply["id"] == 9

            reply = await exchange(ws, b'{"jsonrpc": "2.0", "method": "status", "id": 10}')
            assert reply["error"]["code"] == PARSE_ERROR


async def test_a_message_over_1_mib_closes_that_connection_with_1009_only(
    make_project: ProjectFactory,
) -> None:
    async with serving(make_project(PROJECT)) as (_, server):
        assert server.info is not None
        async with raw_connection(server.info) as big, raw_connection(server.info) as other:
            await big.send_message(json.dumps({"jsonrpc": "2.0", "method": "x" * 2**20, "id": 1}))
            with pytest.raises(ConnectionClosed) as caught:
                await next_reply(big)
            assert caught.value.reason is not None
            assert caught.value.reason.code == 1009
            reply = await exchange(other, {"jsonrpc": "2.0", "method": "status", "id": 2})
            assert reply["result"]["state"] == "idle"


# ------------------------------------------------------------------ events


async def test_a_subscriber_that_never_reads_does_not_delay_5000_events_to_one_that_does(
    make_project: ProjectFactory,
) -> None:
    total = 5000
    padding = "p" * 4000  # 20 MB in all: far more than socket buffers and the outbox
    async with serving(make_project(PROJECT)) as (session, server):
        info = server.info
        assert info is not None
        async with raw_connection(info) as slow, connect(info=info) as fast:
            subscribe = {
                "jsonrpc": "2.0",
                "method": "subscribe",
                "params": {"events": ["pipeline_warning"]},
                "id": 1,
            }
            assert "result" in await exchange(slow, subscribe)
            await fast.subscribe(["pipeline_warning"])
            received: list[int] = []
            all_received = trio.Event()

            async def read_fast() -> None:
                async for event in fast.events():
                    received.append(event["seq"])
                    if len(received) == total:
                        all_received.set()
                        return

            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_fast)
                for seq in range(total):
                    session.supervisor.bus.publish(
                        Event("pipeline_warning", {"message": padding, "seq": seq})
                    )
                    if seq % 100 == 99:
                        # Pace the publisher on the reader only (never on the slow one).
                        with trio.fail_after(TIMEOUT_S):
                            while len(received) < seq - 500:
                                await trio.sleep(0)
                with trio.fail_after(TIMEOUT_S):
                    await all_received.wait()
            elapsed = trio.current_time() - start
            assert received == list(range(total))
            assert elapsed < 15, f"5,000 events took {elapsed:.1f}s to reach the reader"
            await eventually(lambda: server.dropped == 1, "the slow subscriber to be dropped")
            await eventually(lambda: server.connections == 1, "its connection to be closed")
            assert (await fast.call("status"))["state"] == "idle"


async def test_a_code_edit_pushes_generation_ready_then_the_rerun_events_in_order(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PROJECT)
    async with serving(project) as (_, server), connect(project) as client:
        await client.subscribe()
        (project / "value.py").write_text('VALUE = "a longer value"\n')
        seen: list[dict[str, Any]] = []
        with trio.fail_after(TIMEOUT_S):
            async for event in client.events():
                seen.append(event)
                if event["event"] == "run_finished":
                    break
        names = [e["event"] for e in seen]
        assert names == [
            "files_changed",
            "reload_started",
            "generation_ready",
            "run_started",
            "stage_started",
            "stage_finished",
            "stage_started",
            "stage_finished",
            "run_finished",
        ], names
        assert seen[0]["kind"] == "code" and seen[0]["paths"] == ["value.py"]
        assert seen[2]["generation"] == 2 and seen[2]["trigger"] == "code change"
        finished = [e for e in seen if e["event"] == "stage_finished"]
        assert [(e["stage"], e["status"], e["generation"]) for e in finished] == [
            ("produce", "ok", 2),
            ("copy", "ok", 2),
        ]
        assert all(isinstance(e["ts"], str) for e in seen)
        assert (project / "copy.txt").read_text() == "a longer valuex"
        assert server.dropped == 0


async def test_a_client_that_disconnects_mid_stream_is_cleaned_up(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PROJECT)
    async with serving(project) as (session, server):
        info = server.info
        assert info is not None
        port = urlsplit(info.url).port
        assert port is not None
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                stream,
                "127.0.0.1",
                "/",
                extra_headers=[(b"authorization", b"Bearer " + info.token.encode())],
            )
            assert "result" in await exchange(
                ws, {"jsonrpc": "2.0", "method": "subscribe", "id": 1}
            )
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "method": "run", "id": 2}))
            await next_reply(ws)
            with trio.fail_after(TIMEOUT_S):
                while True:  # events are flowing
                    message = json.loads(await ws.get_message())
                    if message.get("method") == "event":
                        break
            assert server.connections == 1
            await stream.aclose()  # abrupt: no close handshake
            nursery.cancel_scope.cancel()
        await eventually(lambda: server.connections == 0, "the server to drop the connection")
        # The supervisor goes on: the run finishes and a new client is served.
        await session.events.wait_for("run_finished")
        async with connect(project) as client:
            assert (await client.call("status"))["state"] in ("idle", "running")


async def test_explain_and_history_answer_from_the_state_store(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PROJECT)
    async with serving(project) as (session, _), connect(project) as client:
        explained = await client.call("explain")
        assert [e["stage"] for e in explained] == ["produce", "copy"]
        assert [e["would_run"] for e in explained] == [False, False]

        # A hand edit of the intermediate output: the producer is left alone.
        ran = session.events.mark()
        (project / "out.txt").write_text("edited by hand, longer than before")
        await session.events.wait_for(named("run_finished"), since=ran)
        after = {e["stage"]: e for e in await client.call("explain", {"stages": ["produce"]})}
        assert after["produce"]["would_run"] is False
        assert after["produce"]["hand_edited"] == ["out.txt"]

        history = await client.call("history", {"limit": 2})
        assert len(history) == 2
        newest, first = history
        assert {line["stage"]: line["status"] for line in first["stages"]} == {
            "produce": "ok",
            "copy": "ok",
        }
        assert [line["stage"] for line in newest["stages"]] == ["copy"]
        only_copy = await client.call("history", {"stage": "produce", "limit": 5})
        assert [run["run_id"] for run in only_copy] == [first["run_id"]]

        with pytest.raises(CallError) as bad_limit:
            await client.call("history", {"limit": 0})
        assert bad_limit.value.code == -32602 and "'limit'" in str(bad_limit.value)
        with pytest.raises(CallError) as unknown:
            await client.call("explain", {"stages": ["nope"]})
        assert "'nope'" in str(unknown.value)
