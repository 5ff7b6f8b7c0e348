"""JSON-RPC 2.0 framing, as a sans-IO layer: frames in, requests and responses out.

The server's socket code stays small because everything the specification says about
*messages* lives here, tested without sockets: :func:`parse_frame` turns one WebSocket
frame into the valid requests it holds plus the error responses already owed for the
invalid parts; :func:`encode_reply` turns the answers back into one text frame (or into
nothing, when everything was a notification).

Strictness, per the specification (https://www.jsonrpc.org/specification) and the JSON
edge cases Python's ``json`` module lets through:

* a frame that is not JSON is ``-32700`` (id null); so are binary frames, ``NaN`` and
  ``Infinity`` (not JSON), numbers too large for Python (``1e400``, integers over 4,300
  digits) and nesting deep enough to exhaust the recursion limit;
* a JSON value that is not a request object is ``-32600`` and is always answered,
  also when it has no ``id``; ``id`` must be a string, an integer (not ``true``) or null;
  unknown members are rejected rather than silently ignored (a misspelt ``params``
  would otherwise be dropped);
* a batch is answered by an array in request order, without the notifications; an
  empty batch is one ``-32600`` error object (not an array); batches are capped at
  :data:`MAX_BATCH` requests;
* notifications (no ``id`` member) are never answered, even when they fail;
* output is ASCII JSON (lone surrogates are escaped) and never contains ``NaN``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

#: Application errors (outside the range the specification reserves).
UNKNOWN_STAGE = 1
NOT_READY = 2
NOT_SUPERVISED = 3

#: The most requests one batch may hold.
MAX_BATCH = 100

#: Request ids: what the specification allows (numbers without fractional parts).
RequestId = str | int | None

_REQUEST_MEMBERS = frozenset({"jsonrpc", "method", "params", "id"})


class RpcError(Exception):
    """An error response to a request: raise it from a method handler.

    ``data`` (optional) is any JSON value with details, e.g. the unknown stage names.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            obj["data"] = self.data
        return obj


def invalid_params(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"invalid params: {message}")


@dataclass(frozen=True, slots=True)
class Request:
    """A valid request.  ``params`` is ``None`` when absent; ``notification`` when the
    message had no ``id`` member (then it must not be answered)."""

    method: str
    params: dict[str, Any] | list[Any] | None = None
    id: RequestId = None
    notification: bool = False


@dataclass(frozen=True, slots=True)
class Incoming:
    """What one frame held, in order: requests to run and errors already owed.

    ``batch`` says whether the reply must be an array.  ``items`` mixes :class:`Request`
    objects and ready error responses (plain dicts), in the order of the batch.
    """

    items: tuple[Request | dict[str, Any], ...]
    batch: bool = False

    @property
    def requests(self) -> list[Request]:
        return [item for item in self.items if isinstance(item, Request)]


# ------------------------------------------------------------------ responses


def result_response(request_id: RequestId, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_response(request_id: RequestId, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_json_obj()}


def notification(method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def dumps(obj: Any) -> str:
    """Compact ASCII JSON; non-JSON values become strings; NaN is refused."""
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"), default=str)


def encode_reply(responses: Sequence[dict[str, Any]], *, batch: bool) -> str | None:
    """The reply frame: one object, an array for a batch, or ``None`` (nothing to send)."""
    if not responses:
        return None
    if batch:
        return dumps(list(responses))
    return dumps(responses[0])


# -------------------------------------------------------------------- parsing


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def loads(text: str) -> Any:
    """Strict JSON: raises :class:`RpcError` (``-32700``) for anything that is not."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise RpcError(PARSE_ERROR, "parse error: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, huge integers, NaN/Infinity
        raise RpcError(PARSE_ERROR, f"parse error: {_first_line(str(exc))}") from None


def parse_frame(frame: str | bytes) -> Incoming:
    """Split one WebSocket frame into requests and the error responses owed already."""
    if isinstance(frame, bytes):
        error = RpcError(
            PARSE_ERROR, "parse error: binary frame; send JSON-RPC messages as text frames"
        )
        return Incoming((error_response(None, error),))
    try:
        value = loads(frame)
    except RpcError as error:
        return Incoming((error_response(None, error),))
    if isinstance(value, list):
        items = cast("list[Any]", value)
        if not items:
            error = RpcError(INVALID_REQUEST, "invalid request: empty batch")
            return Incoming((error_response(None, error),))
        if len(items) > MAX_BATCH:
            error = RpcError(
                INVALID_REQUEST,
                f"invalid request: batch of {len(items)} requests; at most {MAX_BATCH} allowed",
            )
            return Incoming((error_response(None, error),))
        return Incoming(tuple(_parse_request(item) for item in items), batch=True)
    return Incoming((_parse_request(value),))


def _parse_request(value: Any) -> Request | dict[str, Any]:
    """A valid :class:`Request`, or the error response owed for ``value``."""
    if not isinstance(value, dict):
        return _invalid(None, f"expected a request object, got {_json_type(value)}")
    obj = cast("dict[str, Any]", value)
    request_id: RequestId = None
    has_id = "id" in obj
    if has_id:
        raw_id = obj["id"]
        if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)):
            return _invalid(
                None, f"'id' must be a string, an integer or null, got {_json_type(raw_id)}"
            )
        request_id = raw_id
    extra = sorted(set(obj) - _REQUEST_MEMBERS)
    if extra:
        return _invalid(request_id, f"unexpected member {_quote(extra[0])}")
    if obj.get("jsonrpc") != "2.0":
        return _invalid(request_id, "'jsonrpc' must be exactly \"2.0\"")
    method = obj.get("method")
    if not isinstance(method, str):
        what = "missing" if "method" not in obj else f"a {_json_type(method)}"
        return _invalid(request_id, f"'method' must be a string, got {what}")
    params: dict[str, Any] | list[Any] | None = None
    if "params" in obj:
        raw_params = obj["params"]
        if not isinstance(raw_params, dict | list):
            return _invalid(
                request_id, f"'params' must be an object or an array, got {_json_type(raw_params)}"
            )
        params = cast("dict[str, Any] | list[Any]", raw_params)
    return Request(method, params, request_id, notification=not has_id)


def _invalid(request_id: RequestId, message: str) -> dict[str, Any]:
    return error_response(request_id, RpcError(INVALID_REQUEST, f"invalid request: {message}"))


# ------------------------------------------------------------ params helpers


class Params:
    """Named params of one request, checked one by one with errors naming the field.

    >>> p = Params(Request("run", {"force": True}), allowed=("stages", "force"))
    >>> p.bool("force"), p.str_list("stages")
    (True, None)
    """

    def __init__(self, request: Request, allowed: Sequence[str] = ()) -> None:
        raw = request.params
        if raw is None or raw == []:
            raw = {}
        if isinstance(raw, list):
            if not allowed:
                raise invalid_params(f"'{request.method}' takes no params")
            raise invalid_params(f"'{request.method}' takes named params (an object), not an array")
        self._values: Mapping[str, Any] = raw
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            expected = ", ".join(allowed) if allowed else "none"
            raise invalid_params(f"unknown param {_quote(unknown[0])}; expected: {expected}")

    def bool(self, name: str, default: bool = False) -> bool:
        if name not in self._values:
            return default
        value = self._values[name]
        if not isinstance(value, bool):
            raise invalid_params(f"'{name}' must be true or false, got {_json_type(value)}")
        return value

    def str_list(self, name: str) -> list[str] | None:
        if name not in self._values:
            return None
        value = self._values[name]
        if value is None:
            return None
        if not isinstance(value, list):
            raise invalid_params(f"'{name}' must be an array of strings, got {_json_type(value)}")
        items = cast("list[Any]", value)
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise invalid_params(f"'{name}[{index}]' must be a string, got {_json_type(item)}")
        return cast("list[str]", items)

    def string(self, name: str) -> str | None:
        if name not in self._values or self._values[name] is None:
            return None
        value = self._values[name]
        if not isinstance(value, str):
            raise invalid_params(f"'{name}' must be a string, got {_json_type(value)}")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        if name not in self._values:
            return default
        value = self._values[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise invalid_params(
                f"'{name}' must be a whole number from {low} to {high}, got {_json_type(value)}"
                + (f" {value}" if isinstance(value, int) and not isinstance(value, bool) else "")
            )
        return value

    def choice(self, name: str, choices: Sequence[str]) -> str | None:
        if name not in self._values or self._values[name] is None:
            return None
        value = self._values[name]
        if not isinstance(value, str) or value not in choices:
            shown = _quote(value) if isinstance(value, str) else f"a {_json_type(value)}"
            raise invalid_params(f"'{name}' must be one of {', '.join(choices)}; got {shown}")
        return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _quote(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else "invalid JSON"
