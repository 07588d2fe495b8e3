"""The gateway's wire protocol as data: message shapes, argument rules, error codes
(the ops themselves, their arguments and handlers, are the table in ``ops.py``).

Pure and free of I/O, so it is tested without sockets. docs/gateway.md describes the same
protocol for people writing clients in other languages; keep the two in step.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, Final, final

import attrs

from actorflow._model.codec import converter, structure_json
from actorflow._model.errors import (
    ActorflowError,
    CallbackError,
    GatewayError,
    InvalidArgument,
    InvalidTransition,
    Lagged,
    RunNotFound,
    StatusNotReached,
    StoreError,
    WorkflowInProgress,
)
from actorflow._model.record import Record
from actorflow._model.run_state import RunState
from actorflow._model.statuses import member_of, parse_status
from actorflow._model.text import INVALID_TEXT, find_unrepresentable, is_valid_text

RequestId = int | str
"""A request id: a JSON integer or string, chosen by the client, unique among its
requests in flight on one connection."""

MAX_LIST_LIMIT: Final = 1000
"""The largest page ``list_runs`` serves over the gateway."""


@final
class ErrorCode(enum.StrEnum):
    """The ``error.code`` values of error replies (and of :class:`GatewayError`)."""

    BAD_JSON = "bad_json"
    INVALID_ARGUMENT = "invalid_argument"
    UNKNOWN_OP = "unknown_op"
    UNKNOWN_WORKFLOW = "unknown_workflow"
    NOT_FOUND = "not_found"
    IN_PROGRESS = "in_progress"
    INVALID_TRANSITION = "invalid_transition"
    STATUS_NOT_REACHED = "status_not_reached"
    CALLBACK_FAILED = "callback_failed"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    BUSY = "busy"
    FORBIDDEN = "forbidden"
    INTERNAL = "internal"
    # Raised by the client only; never in an error reply.
    UNAUTHORIZED = "unauthorized"
    CONNECTION_FAILED = "connection_failed"
    CONNECTION_CLOSED = "connection_closed"
    LAGGED = "lagged"


@final
class ProtocolError(Exception):
    """A request the gateway refuses before doing anything; becomes an error reply."""

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def error_code(exc: BaseException) -> ErrorCode:
    """The error code an exception raised while serving a request is reported as."""
    if isinstance(exc, ProtocolError):
        return exc.code
    if isinstance(exc, GatewayError):
        return _known_code(exc.code)
    table: tuple[tuple[type[BaseException], ErrorCode], ...] = (
        (RunNotFound, ErrorCode.NOT_FOUND),
        (WorkflowInProgress, ErrorCode.IN_PROGRESS),
        (InvalidTransition, ErrorCode.INVALID_TRANSITION),
        (InvalidArgument, ErrorCode.INVALID_ARGUMENT),
        (StatusNotReached, ErrorCode.STATUS_NOT_REACHED),
        (CallbackError, ErrorCode.CALLBACK_FAILED),
        (Lagged, ErrorCode.LAGGED),
        (TimeoutError, ErrorCode.TIMEOUT),
    )
    for kind, code in table:
        if isinstance(exc, kind):
            return code
    return ErrorCode.INTERNAL


def _known_code(code: str) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL


def error_message(exc: BaseException, code: ErrorCode) -> str:
    """The message of an error reply; internal errors do not leak their details.

    actorflow's own errors without a code of their own (a workflow that is not running
    anywhere, say) keep their message, written for the caller; a store's error is told
    only in the gateway's log (it may name hosts and files)."""
    if code is ErrorCode.INTERNAL:
        if isinstance(exc, ActorflowError) and not isinstance(exc, StoreError) and str(exc):
            return str(exc)
        return f"internal error ({type(exc).__name__}); the gateway log has the details"
    return str(exc) or type(exc).__name__


# -- requests ------------------------------------------------------------------------------


@final
class ArgKind(enum.Enum):
    """How one request argument is checked and converted."""

    STR = "a non-empty string"
    STATUS = "a status (integer value or name)"
    STATUSES = "a status or a list of statuses"
    RUN_STATES = "a run state (name or integer) or a list of them"
    OBJECT = "a JSON object"
    BASE64 = "a base64 string"
    TIMEOUT = "a non-negative number of seconds"
    LIMIT = f"an integer from 1 to {MAX_LIST_LIMIT}"
    BOOL = "true or false"
    REQUEST_ID = "a request id (integer or string)"
    TEXT = "a string"
    FOREIGN_IDS = "a non-empty string or a list of them"
    DATETIME = "an ISO 8601 date-time with a UTC offset"


@final
@attrs.frozen
class Arg:
    """One argument of an op."""

    name: str
    kind: ArgKind
    required: bool = True


@final
@attrs.frozen
class Request:
    """A parsed request: its id, op and raw arguments (everything but ``id`` and ``op``)."""

    id: RequestId
    op: str
    args: Mapping[str, Any]


def is_request_id(value: object) -> bool:
    """True for a JSON integer (not a boolean) or string."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def read_request(data: str | bytes, max_bytes: int, ops: Collection[str]) -> Request:
    """Parse one incoming message into a :class:`Request` for one of ``ops``.

    Raises:
        ProtocolError: ``too_large``, ``bad_json``, ``invalid_argument`` (not an object, bad
            id or op) or ``unknown_op``; ``request_id`` is set when the id could be read.
    """
    if isinstance(data, str):
        size = len(data) if len(data) * 4 <= max_bytes else len(data.encode("utf-8", "replace"))
    else:
        size = len(data)
    if size > max_bytes:
        # Over the limit in UTF-8 yet within it in characters, which is what the websocket
        # layer bounds (so at most 4 times the limit): the reply carries the id when it can
        # be read, so that the caller's request ends.
        try:
            request_id = _request_id(_loads(data))
        except ProtocolError:
            request_id = None
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"message of {size} bytes is over the limit of {max_bytes}",
            request_id,
        )
    message = _loads(data)
    if not isinstance(message, dict):
        raise ProtocolError(
            ErrorCode.INVALID_ARGUMENT,
            f"a request must be a JSON object, not {_json_type(message)}",
        )
    request_id = message.get("id")
    if not is_request_id(request_id):
        raise ProtocolError(
            ErrorCode.INVALID_ARGUMENT,
            f'"id" must be an integer or a string, not {_json_type(request_id)}',
        )
    assert isinstance(request_id, int | str)
    if isinstance(request_id, str) and not is_valid_text(request_id):
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f'"id" {INVALID_TEXT}')
    found = find_unrepresentable(message, "request")
    if found is not None:
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, found, request_id)
    op = message.get("op")
    if not isinstance(op, str):
        raise ProtocolError(
            ErrorCode.INVALID_ARGUMENT, f'"op" must be a string, not {_json_type(op)}', request_id
        )
    if op not in ops:
        known = ", ".join(sorted(ops))
        raise ProtocolError(
            ErrorCode.UNKNOWN_OP, f"unknown op {op!r}; known ops: {known}", request_id
        )
    args = {k: v for k, v in message.items() if k not in ("id", "op")}
    return Request(request_id, op, args)


def _loads(data: str | bytes) -> object:
    """The JSON value of a message. Raises ProtocolError ``bad_json``."""
    try:
        if not isinstance(data, str):
            data = data.decode("utf-8")  # strictly: json.loads would pass surrogates through
        return json.loads(data, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"message is not valid JSON: {exc}") from None
    except RecursionError:
        # e.g. '[' * 200_000 + ']' * 200_000: small enough to pass the size limit.
        raise ProtocolError(
            ErrorCode.BAD_JSON, "message is nested too deeply to be a request"
        ) from None


def _request_id(message: object) -> RequestId | None:
    """The request id of a decoded message, or None when it has no readable one."""
    if not isinstance(message, dict):
        return None
    request_id = message.get("id")
    if not is_request_id(request_id):
        return None
    assert isinstance(request_id, int | str)
    if isinstance(request_id, str) and not is_valid_text(request_id):
        return None
    return request_id


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def check_arguments(request: Request, spec: tuple[Arg, ...]) -> dict[str, Any]:
    """The request's arguments checked against its op's ``spec`` and converted.

    Omitted and null optional arguments are left out; ``BASE64`` arguments become bytes.
    Statuses stay as sent (int or name): only the workflow knows its enum.

    Raises:
        ProtocolError: ``invalid_argument`` for a missing, unknown or ill-typed argument.
    """
    names = {arg.name for arg in spec}
    unknown = sorted(set(request.args) - names)
    if unknown:
        allowed = ", ".join(sorted(names)) or "none"
        raise ProtocolError(
            ErrorCode.INVALID_ARGUMENT,
            f"op {request.op!r} takes no argument {unknown[0]!r} (arguments: {allowed})",
            request.id,
        )
    checked: dict[str, Any] = {}
    for arg in spec:
        value = request.args.get(arg.name)
        if value is None:
            if arg.required:
                raise ProtocolError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"op {request.op!r} needs {arg.name!r}: {arg.kind.value}",
                    request.id,
                )
            continue
        converted = _convert(arg.kind, value)
        if converted is _INVALID:
            raise ProtocolError(
                ErrorCode.INVALID_ARGUMENT,
                f"op {request.op!r}: {arg.name!r} must be {arg.kind.value}, "
                f"not {_json_type(value)} {_short(value)}",
                request.id,
            )
        checked[arg.name] = converted
    return checked


_INVALID: Final = object()


def _is_status(value: object) -> bool:
    return (isinstance(value, str) and bool(value)) or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def _convert(kind: ArgKind, value: object) -> object:
    if kind is ArgKind.STR:
        return value if isinstance(value, str) and value else _INVALID
    if kind is ArgKind.TEXT:
        return value if isinstance(value, str) else _INVALID
    if kind is ArgKind.STATUS:
        return value if _is_status(value) else _INVALID
    if kind in (ArgKind.STATUSES, ArgKind.RUN_STATES):
        if _is_status(value):
            return value
        if isinstance(value, list) and value and all(_is_status(v) for v in value):
            return value
        return _INVALID
    if kind is ArgKind.OBJECT:
        return value if isinstance(value, dict) else _INVALID
    if kind is ArgKind.BASE64:
        if not isinstance(value, str):
            return _INVALID
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return _INVALID
    if kind is ArgKind.TIMEOUT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _INVALID
        try:
            seconds = float(value)  # an int too large for a float is no timeout either
        except OverflowError:
            return _INVALID
        return seconds if math.isfinite(seconds) and seconds >= 0 else _INVALID
    if kind is ArgKind.LIMIT:
        if isinstance(value, bool) or not isinstance(value, int):
            return _INVALID
        return value if 1 <= value <= MAX_LIST_LIMIT else _INVALID
    if kind is ArgKind.BOOL:
        return value if isinstance(value, bool) else _INVALID
    if kind is ArgKind.REQUEST_ID:
        return value if is_request_id(value) else _INVALID
    if kind is ArgKind.FOREIGN_IDS:
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            return value
        return _INVALID
    if kind is ArgKind.DATETIME:
        if not isinstance(value, str):
            return _INVALID
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return _INVALID
        return moment if moment.utcoffset() is not None else _INVALID
    raise AssertionError(kind)  # pragma: no cover


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def coerce_status(status_type: type[enum.IntEnum], value: object, what: str = "status") -> int:
    """A status sent as its integer value or its name, as the enum's int value.

    Raises:
        ProtocolError: ``invalid_argument`` when it is not a member of ``status_type``.
    """
    try:
        return int(parse_status(status_type, value, by_name=True))
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"{what} {exc}") from None


def coerce_statuses(status_type: type[enum.IntEnum], value: object) -> int | list[int]:
    """One status or a list of statuses (see :func:`coerce_status`)."""
    if isinstance(value, list):
        return [coerce_status(status_type, v) for v in value]
    return coerce_status(status_type, value)


def coerce_run_states(value: object) -> RunState | list[RunState]:
    """One run state or a list of them, each as a name or an integer."""
    if isinstance(value, list):
        return [RunState(coerce_status(RunState, v, "run_state")) for v in value]
    return RunState(coerce_status(RunState, value, "run_state"))


def structure_object(object_type: type[Any], data: object) -> Any:
    """Build a workflow object from its JSON form, strictly (see ``structure_json``).

    Raises:
        ProtocolError: ``invalid_argument`` when ``data`` does not fit ``object_type``;
            the message names the field path (``initial.customer``).
    """
    try:
        return structure_json(data, object_type, "initial")
    except InvalidArgument as exc:
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None


# -- replies and events ------------------------------------------------------------------------


def record_to_json(record: Record[Any, Any], object_type: type[Any]) -> dict[str, Any]:
    """A record as the JSON object the gateway sends."""
    status = record.status
    obj = record.object
    # A stranded run's object that no longer structures is read as its stored JSON data.
    data = converter.unstructure(obj, object_type) if isinstance(obj, object_type) else obj
    return {
        "workflow_name": record.workflow_name,
        "foreign_id": record.foreign_id,
        "run_id": record.run_id,
        "status": int(status),
        "status_name": status.name if isinstance(status, enum.Enum) else str(int(status)),
        "run_state": record.run_state.name,
        "version": record.version,
        "object": data,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "meta": record.meta.to_dict(),
    }


def describe_workflow(name: str, status_type: type[enum.IntEnum], start: int) -> dict[str, Any]:
    """What the ``workflows`` op reports about one workflow."""
    return {
        "name": name,
        "statuses": {member.name: int(member) for member in status_type},
        "start": getattr(member_of(status_type, start), "name", str(start)),
    }


def describe_definition(definition: Any, graph: str, object_type: type[Any]) -> dict[str, Any]:
    """What the ``describe`` op reports about one workflow: its statuses, where runs may
    start, which statuses take callbacks or have timeouts, the terminal ones, the Mermaid
    graph, and the object type with its default value (``null`` when the type has no
    default construction)."""
    status_type: type[enum.IntEnum] = definition.status_type
    names = [member.name for member in definition.declared]
    try:
        initial = converter.unstructure(object_type(), object_type)
    except Exception:
        initial = None
    return {
        "name": definition.name,
        "statuses": {member.name: int(member) for member in status_type},
        "start": definition.start.name,
        "starts": [m.name for m in definition.declared if m in definition.starts],
        "callbacks": [n for n in names if int(status_type[n]) in definition.callbacks],
        "timeouts": [n for n in names if int(status_type[n]) in definition.timeouts],
        "terminal": [n for n in names if definition.is_terminal(int(status_type[n]))],
        "graph": graph,
        "object_type": getattr(object_type, "__name__", str(object_type)),
        "initial": initial,
    }


def count_to_json(counts: Mapping[tuple[Any, RunState], int]) -> dict[str, Any]:
    """The ``count_runs`` result: the total, counts by status name, by run state, and
    by both (``[status_name, run_state, count]`` triples)."""
    by_status: dict[str, int] = {}
    by_run_state: dict[str, int] = {}
    pairs: list[list[Any]] = []
    for (status, run_state), count in counts.items():
        name = status.name if isinstance(status, enum.Enum) else str(int(status))
        by_status[name] = by_status.get(name, 0) + count
        by_run_state[run_state.name] = by_run_state.get(run_state.name, 0) + count
        pairs.append([name, run_state.name, count])
    return {
        "total": sum(counts.values()),
        "by_status": by_status,
        "by_run_state": by_run_state,
        "by_status_and_run_state": pairs,
    }


def timer_to_json(timer: Any, status_type: type[enum.IntEnum]) -> dict[str, Any]:
    """A pending timer as the ``timers`` op sends it."""
    member = member_of(status_type, timer.status)
    name = str(timer.status) if member is None else member.name
    return {
        "status": int(timer.status),
        "status_name": name,
        "kind": timer.kind,
        "fire_at": timer.fire_at.isoformat(),
    }


def reply_ok(request_id: RequestId, result: object) -> dict[str, Any]:
    return {"id": request_id, "ok": True, "result": result}


MAX_ERROR_MESSAGE: Final = 2000
"""The longest error message sent, in characters; longer ones keep their start and end."""


def bounded_message(message: str) -> str:
    """``message`` cut to :data:`MAX_ERROR_MESSAGE` characters (its start and its end
    kept): messages quote what the caller sent, which may be a megabyte of foreign id."""
    if len(message) <= MAX_ERROR_MESSAGE:
        return message
    head, tail = message[: MAX_ERROR_MESSAGE - 400], message[-300:]
    cut = len(message) - len(head) - len(tail)
    return f"{head} [... {cut} characters cut ...] {tail}"


def reply_error(request_id: RequestId | None, code: ErrorCode, message: str) -> dict[str, Any]:
    error = {"code": str(code), "message": bounded_message(message)}
    return {"id": request_id, "ok": False, "error": error}


def event_record(subscription: RequestId, record: dict[str, Any]) -> dict[str, Any]:
    return {"id": subscription, "event": "record", "record": record}


def event_record_text(subscription: RequestId, record_text: str) -> str:
    """The text of a record event around a record already encoded (see :func:`encode`):
    the same as ``encode(event_record(subscription, record))``."""
    return f'{{"id":{encode_id(subscription)},"event":"record","record":{record_text}}}'


def encode_id(request_id: RequestId) -> str:
    """JSON text of a request id, as :func:`encode` writes it."""
    return json.dumps(request_id, ensure_ascii=False)


def size_over(text: str, limit: int) -> int | None:
    """The size of ``text`` in UTF-8 when that is over ``limit`` bytes, else None."""
    if len(text) * 4 <= limit:
        return None  # cannot be over it: nothing to count
    size = len(text.encode("utf-8", "surrogatepass"))
    return size if size > limit else None


def event_lagged(subscription: RequestId) -> dict[str, Any]:
    return {"id": subscription, "event": "lagged", "missed": True}


def event_error(subscription: RequestId, code: ErrorCode, message: str) -> dict[str, Any]:
    return {
        "id": subscription,
        "event": "error",
        "error": {"code": str(code), "message": bounded_message(message)},
    }


def encode(message: Mapping[str, Any]) -> str:
    """JSON text of an outgoing message."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# -- what the client reads ---------------------------------------------------------------------


@final
@attrs.frozen
class Reply:
    """A reply to request ``id``: ``result`` when ``ok``, else ``code`` and ``message``."""

    id: RequestId | None
    ok: bool
    result: Any = None
    code: str = ""
    message: str = ""

    def error(self) -> GatewayError:
        return GatewayError(self.message or self.code, self.code or "error")


@final
@attrs.frozen
class Event:
    """A message pushed for subscription ``id``: ``record``, ``lagged`` or ``error``."""

    id: RequestId
    event: str
    record: dict[str, Any] | None = None
    code: str = ""
    message: str = ""


def parse_server_message(data: str | bytes) -> Reply | Event:
    """Parse a message from the gateway (for clients).

    Raises:
        ValueError: the message is not one the protocol defines.
    """
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("a gateway message must be a JSON object")
    message_id = message.get("id")
    error = message.get("error")
    code, text = "", ""
    if isinstance(error, dict):
        code, text = str(error.get("code", "")), str(error.get("message", ""))
    if "event" in message:
        if not isinstance(message_id, int | str) or isinstance(message_id, bool):
            raise ValueError("an event needs a subscription id")
        record = message.get("record")
        return Event(
            message_id,
            str(message["event"]),
            record if isinstance(record, dict) else None,
            code,
            text,
        )
    if message_id is not None and not is_request_id(message_id):
        raise ValueError("a reply id must be an integer, a string or null")
    ok = message.get("ok")
    if not isinstance(ok, bool):
        raise ValueError('a reply needs "ok": true or false')
    return Reply(message_id, ok, message.get("result"), code, text)
