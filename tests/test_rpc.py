"""The JSON-RPC 2.0 layer without sockets: every rule of the specification and every JSON
edge case Python's ``json`` lets through, plus generated input that must never break it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pivot_supervise.supervisor._rpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_BATCH,
    PARSE_ERROR,
    Params,
    Request,
    RpcError,
    dumps,
    encode_reply,
    error_response,
    parse_frame,
    result_response,
)


def only_error(frame: str | bytes) -> dict[str, Any]:
    """The single ready error response a frame produced."""
    incoming = parse_frame(frame)
    assert not incoming.batch
    assert len(incoming.items) == 1
    item = incoming.items[0]
    assert isinstance(item, dict), item
    return item


def only_request(frame: str) -> Request:
    incoming = parse_frame(frame)
    assert len(incoming.items) == 1
    item = incoming.items[0]
    assert isinstance(item, Request), item
    return item


# ------------------------------------------------------------------ -32700


@pytest.mark.parametrize(
    "frame",
    [
        "{",
        "",
        "not json",
        '{"jsonrpc": "2.0", "method": "status", "id": 1',
        "[" * 100_000 + "]" * 100_000,
        "1" * 5000,
        '{"jsonrpc": "2.0", "method": "status", "id": ' + "9" * 4301 + "}",
        "NaN",
        '{"jsonrpc": "2.0", "method": "run", "params": {"force": Infinity}, "id": 1}',
        "-Infinity",
        '{"jsonrpc": "2.0", "method": "status", "id": 1e400}',
    ],
    ids=[
        "truncated",
        "empty",
        "text",
        "unclosed object",
        "deep nesting",
        "huge integer",
        "huge integer id",
        "NaN",
        "Infinity",
        "-Infinity",
        "overflowing float",
    ],
)
def test_not_json_is_a_parse_error_with_null_id(frame: str) -> None:
    response = only_error(frame)
    assert response["id"] is None
    assert response["error"]["code"] == PARSE_ERROR
    assert response["error"]["message"].startswith("parse error")


def test_a_binary_frame_is_a_parse_error_that_says_to_send_text() -> None:
    response = only_error(b'{"jsonrpc": "2.0", "method": "status", "id": 1}')
    assert response["error"]["code"] == PARSE_ERROR
    assert "text frames" in response["error"]["message"]


# ------------------------------------------------------------------ -32600


@pytest.mark.parametrize(
    ("message", "expected_id", "names"),
    [
        (1, None, "request object"),
        ("status", None, "request object"),
        (None, None, "request object"),
        ({"jsonrpc": "2.0", "method": "status", "id": True}, None, "'id'"),
        ({"jsonrpc": "2.0", "method": "status", "id": 1.5}, None, "'id'"),
        ({"jsonrpc": "2.0", "method": "status", "id": [1]}, None, "'id'"),
        ({"jsonrpc": "2.0", "method": "status", "id": {}}, None, "'id'"),
        ({"method": "status", "id": 7}, 7, "'jsonrpc'"),
        ({"jsonrpc": "1.0", "method": "status", "id": 7}, 7, "'jsonrpc'"),
        ({"jsonrpc": 2.0, "method": "status", "id": 7}, 7, "'jsonrpc'"),
        ({"jsonrpc": "2.0", "id": "a"}, "a", "'method'"),
        ({"jsonrpc": "2.0", "method": 5, "id": "a"}, "a", "'method'"),
        ({"jsonrpc": "2.0", "method": "run", "params": 3, "id": 2}, 2, "'params'"),
        ({"jsonrpc": "2.0", "method": "run", "params": "x", "id": 2}, 2, "'params'"),
        ({"jsonrpc": "2.0", "method": "run", "param": {}, "id": 2}, 2, "'param'"),
        # Invalid requests are answered even without an id: they are not notifications.
        ({"jsonrpc": "2.0", "method": 5}, None, "'method'"),
    ],
)
def test_an_invalid_request_is_always_answered_naming_what_is_wrong(
    message: Any, expected_id: Any, names: str
) -> None:
    response = only_error(json.dumps(message))
    assert response["error"]["code"] == INVALID_REQUEST
    assert response["id"] == expected_id
    assert names in response["error"]["message"]


def test_an_empty_batch_is_one_error_object_not_an_array() -> None:
    response = only_error("[]")
    assert response["error"]["code"] == INVALID_REQUEST
    reply = encode_reply([response], batch=parse_frame("[]").batch)
    assert reply is not None
    assert isinstance(json.loads(reply), dict)


def test_a_batch_longer_than_the_cap_is_one_error() -> None:
    request = {"jsonrpc": "2.0", "method": "status", "id": 1}
    response = only_error(json.dumps([request] * (MAX_BATCH + 1)))
    assert response["error"]["code"] == INVALID_REQUEST
    assert str(MAX_BATCH) in response["error"]["message"]
    assert len(parse_frame(json.dumps([request] * MAX_BATCH)).items) == MAX_BATCH


def test_a_batch_keeps_its_order_and_answers_invalid_members_in_place() -> None:
    frame = json.dumps(
        [
            {"jsonrpc": "2.0", "method": "status", "id": 1},
            1,
            {"jsonrpc": "2.0", "method": "status"},
            {"jsonrpc": "2.0", "method": "stages", "id": "x"},
        ]
    )
    incoming = parse_frame(frame)
    assert incoming.batch
    first, second, third, fourth = incoming.items
    assert isinstance(first, Request) and first.id == 1 and not first.notification
    assert isinstance(second, dict) and second["error"]["code"] == INVALID_REQUEST
    assert isinstance(third, Request) and third.notification
    assert isinstance(fourth, Request) and fourth.id == "x"


# ------------------------------------------------------------------ requests


def test_a_request_without_id_is_a_notification_but_a_null_id_is_not() -> None:
    assert only_request('{"jsonrpc": "2.0", "method": "status"}').notification
    request = only_request('{"jsonrpc": "2.0", "method": "status", "id": null}')
    assert not request.notification
    assert request.id is None


def test_string_and_integer_ids_come_back_unchanged() -> None:
    for request_id in ("abc", "", 0, -5, 2**80, "\ud800"):
        frame = dumps({"jsonrpc": "2.0", "method": "status", "id": request_id})
        request = only_request(frame)
        assert request.id == request_id
        reply = encode_reply([result_response(request.id, 1)], batch=False)
        assert reply is not None
        assert json.loads(reply)["id"] == request_id


def test_a_batch_of_notifications_gets_no_reply_at_all() -> None:
    assert encode_reply([], batch=True) is None
    assert encode_reply([], batch=False) is None


def test_output_is_ascii_and_never_nan() -> None:
    text = dumps(result_response("\ud800", {"x": "é\ud800"}))
    assert text.isascii()
    with pytest.raises(ValueError):
        dumps({"x": float("nan")})


# ------------------------------------------------------------------ params


def request_with(params: Any) -> Request:
    return Request("run", params, 1)


def invalid_params_message(params: Any, allowed: tuple[str, ...]) -> str:
    with pytest.raises(RpcError) as caught:
        checked = Params(request_with(params), allowed)
        checked.str_list("stages")
        checked.bool("force")
        checked.choice("on_error", ("fail", "keep-going"))
    assert caught.value.code == INVALID_PARAMS
    return caught.value.message


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"forse": True}, "'forse'"),
        ({"force": 1}, "'force'"),
        ({"force": "yes"}, "'force'"),
        ({"stages": "train"}, "'stages'"),
        ({"stages": ["a", 3]}, "'stages[1]'"),
        ({"on_error": "sometimes"}, "'on_error'"),
        (["a"], "named params"),
    ],
)
def test_invalid_params_name_the_bad_field(params: Any, names: str) -> None:
    assert names in invalid_params_message(params, ("stages", "force", "on_error"))


def test_a_method_without_params_accepts_none_or_empty_and_refuses_others() -> None:
    for params in (None, {}, []):
        Params(Request("status", params, 1))
    with pytest.raises(RpcError, match="unknown param 'x'"):
        Params(Request("status", {"x": 1}, 1))
    with pytest.raises(RpcError, match="takes no params"):
        Params(Request("status", [1], 1))


# ------------------------------------------------------------------ generated


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children)
    ),
    max_leaves=20,
)
member_values = json_values | st.sampled_from(["2.0", "status", "run", "subscribe", "rpc.x"])
request_like = st.dictionaries(
    st.sampled_from(["jsonrpc", "method", "params", "id", "extra"]), member_values, max_size=5
)
frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=50),
    json_values.map(json.dumps),
    request_like.map(json.dumps),
    st.lists(request_like | json_values, max_size=8).map(json.dumps),
)


def well_formed_error(response: Any) -> None:
    assert set(response) == {"jsonrpc", "id", "error"}
    assert response["jsonrpc"] == "2.0"
    assert response["error"]["code"] in (PARSE_ERROR, INVALID_REQUEST)
    assert isinstance(response["error"]["message"], str)


@settings(max_examples=400, deadline=None)
@given(frames)
def test_any_frame_parses_into_requests_and_well_formed_errors(frame: str | bytes) -> None:
    incoming = parse_frame(frame)
    assert incoming.items, "every frame owes at least one answer or holds a request"
    for item in incoming.items:
        if isinstance(item, dict):
            well_formed_error(item)
            assert dumps(item).isascii()
        else:
            assert isinstance(item.method, str)
            assert item.params is None or isinstance(item.params, dict | list)
            assert not isinstance(item.id, bool | float)
    errors = [item for item in incoming.items if isinstance(item, dict)]
    answers = errors + [
        error_response(item.id, RpcError(1, "x"))
        for item in incoming.items
        if isinstance(item, Request) and not item.notification
    ]
    reply = encode_reply(answers, batch=incoming.batch)
    if reply is not None:
        decoded = json.loads(reply)
        assert isinstance(decoded, list) == incoming.batch


@settings(max_examples=100, deadline=None)
@given(st.lists(request_like, min_size=1, max_size=20))
def test_a_batch_yields_one_item_per_member_in_order(batch: list[dict[str, Any]]) -> None:
    incoming = parse_frame(json.dumps(batch))
    assert incoming.batch
    assert len(incoming.items) == len(batch)
    for member, item in zip(batch, incoming.items, strict=True):
        if isinstance(item, Request):
            assert item.method == member["method"]
            assert item.notification == ("id" not in member)
