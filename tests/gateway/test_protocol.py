"""The gateway's wire protocol, without sockets."""

from __future__ import annotations

import base64
import enum
import json
from datetime import UTC, datetime

import attrs
import pytest

import actorflow as af
from actorflow.gateway.access import (
    Access,
    RefusalLimiter,
    TokenBucket,
    check_access,
    check_token,
    check_token_text,
)
from actorflow.gateway.ops import OPS, STEERING_OPS, check_args, parse_request
from actorflow.gateway.protocol import (
    ErrorCode,
    Event,
    ProtocolError,
    Reply,
    Request,
    coerce_run_states,
    coerce_status,
    coerce_statuses,
    encode,
    error_code,
    error_message,
    event_lagged,
    event_record,
    parse_server_message,
    record_to_json,
    reply_error,
    reply_ok,
    structure_object,
)


class Status(enum.IntEnum):
    STARTED = 1
    MIDDLE = 2
    END = 3


@attrs.define
class Order:
    count: int = 0
    note: str = ""
    when: datetime | None = None


def _refused(data: str | bytes, max_bytes: int = 1000) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request(data, max_bytes)
    return info.value


def test_parse_request_reads_id_op_and_arguments() -> None:
    request = parse_request('{"id": 7, "op": "lookup", "workflow": "w", "run_id": "r"}', 1000)
    assert request == Request(7, "lookup", {"workflow": "w", "run_id": "r"})
    assert parse_request(b'{"id": "a", "op": "ping"}', 1000).id == "a"


def test_parse_request_refusals_carry_a_code_and_the_id_when_known() -> None:
    assert _refused("{nope").code is ErrorCode.BAD_JSON
    assert _refused(b"\xff\xfe").code is ErrorCode.BAD_JSON
    assert _refused("[1, 2]").code is ErrorCode.INVALID_ARGUMENT
    for bad_id in ("true", "1.5", "null", "[1]"):
        error = _refused(f'{{"id": {bad_id}, "op": "ping"}}')
        assert (error.code, error.request_id) == (ErrorCode.INVALID_ARGUMENT, None)
    error = _refused('{"id": 3, "op": 5}')
    assert (error.code, error.request_id) == (ErrorCode.INVALID_ARGUMENT, 3)
    error = _refused('{"id": 3, "op": "explode"}')
    assert (error.code, error.request_id) == (ErrorCode.UNKNOWN_OP, 3)
    assert "known ops" in error.message


def test_deeply_nested_json_is_bad_json_not_a_recursion_error() -> None:
    depth = 200_000
    for data in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        error = _refused(data, max_bytes=10 * depth)
        assert error.code is ErrorCode.BAD_JSON
        assert "nested too deeply" in error.message


def test_parse_request_measures_utf8_bytes() -> None:
    assert _refused("x" * 1001).code is ErrorCode.TOO_LARGE
    # 300 characters, 1200 bytes in UTF-8
    assert _refused('{"id":1,"op":"ping","x":"' + "\U0001f600" * 300 + '"}').code is (
        ErrorCode.TOO_LARGE
    )


def _checked(op: str, **args: object) -> dict[str, object]:
    return check_args(Request(1, op, args))


def _invalid(op: str, **args: object) -> str:
    with pytest.raises(ProtocolError) as info:
        _checked(op, **args)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert info.value.request_id == 1
    return info.value.message


def test_check_args_converts_and_drops_null_optionals() -> None:
    payload = base64.b64encode(b"\x00paid").decode()
    assert _checked("callback", workflow="w", foreign_id="f", status="MIDDLE", payload=payload) == {
        "workflow": "w",
        "foreign_id": "f",
        "status": "MIDDLE",
        "payload": b"\x00paid",
    }
    assert _checked("trigger", workflow="w", foreign_id="f", start=None, initial={"a": 1}) == {
        "workflow": "w",
        "foreign_id": "f",
        "initial": {"a": 1},
    }
    assert _checked(
        "await_status", workflow="w", foreign_id="f", run_id="r", status=2, timeout=1
    ) == {"workflow": "w", "foreign_id": "f", "run_id": "r", "status": 2, "timeout": 1.0}
    assert _checked("list_runs", workflow="w", status=[1, "END"], run_state="RUNNING", limit=5)[
        "status"
    ] == [1, "END"]


def test_check_args_refuses_missing_unknown_and_ill_typed_arguments() -> None:
    assert "needs 'run_id'" in _invalid("lookup", workflow="w")
    assert "takes no argument 'runid'" in _invalid("lookup", workflow="w", runid="r")
    assert "non-empty string" in _invalid("lookup", workflow="w", run_id="")
    assert "not a number" in _invalid("lookup", workflow="w", run_id=5)
    assert "base64" in _invalid("callback", workflow="w", foreign_id="f", status=2, payload="!!")
    _invalid("callback", workflow="w", foreign_id="f", status=True, payload="")
    _invalid("trigger", workflow="w", foreign_id="f", initial=[1])
    for timeout in (-1, "1", True, float("inf")):
        _invalid(
            "await_status", workflow="w", foreign_id="f", run_id="r", status=2, timeout=timeout
        )
    for limit in (0, 1001, 2.5, False):
        _invalid("list_runs", workflow="w", limit=limit)
    _invalid("list_runs", workflow="w", status=[])
    _invalid("list_runs", workflow="w", descending="yes")
    _invalid("unsubscribe", subscription=None)
    _invalid("pause", workflow="w", run_id="r", reason=3)


def test_every_op_documents_its_arguments() -> None:
    for op, spec in OPS.items():
        assert len({arg.name for arg in spec.args}) == len(spec.args), op


def test_every_op_has_a_handler_or_is_served_by_the_connection() -> None:
    """One table: an op has a handler, or is inline, or is the subscription stream."""
    for op, spec in OPS.items():
        served_by_connection = spec.inline or op == "subscribe"
        assert (spec.handler is None) == served_by_connection, op
        assert not (spec.inline and spec.steering), op


def test_statuses_are_values_or_names() -> None:
    assert coerce_status(Status, 2) == 2
    assert coerce_status(Status, "END") == 3
    assert coerce_status(Status, "middle") == 2
    assert coerce_statuses(Status, ["STARTED", 3]) == [1, 3]
    assert coerce_run_states(["PAUSED", 2]) == [af.RunState.PAUSED, af.RunState.RUNNING]
    assert coerce_run_states("COMPLETED") is af.RunState.COMPLETED
    for bad in (0, 9, "NOPE", True, 2.0):
        with pytest.raises(ProtocolError, match="STARTED=1, MIDDLE=2, END=3") as info:
            coerce_status(Status, bad)
        assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_structure_object_uses_the_codec_converter() -> None:
    order = structure_object(Order, {"count": 2, "when": "2026-01-01T09:00:00+00:00"})
    assert order == Order(count=2, when=datetime(2026, 1, 1, 9, tzinfo=UTC))
    for bad in ({"count": "many"}, [1], "x"):
        with pytest.raises(ProtocolError, match="initial") as info:
            structure_object(Order, bad)
        assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_record_to_json_has_the_documented_fields() -> None:
    at = datetime(2026, 1, 1, 9, tzinfo=UTC)
    record: af.Record[Order, Status] = af.Record(
        workflow_name="orders",
        foreign_id="o-1",
        run_id="r1",
        status=Status.MIDDLE,
        run_state=af.RunState.RUNNING,
        object=Order(count=3, when=at),
        version=2,
        created_at=at,
        updated_at=at,
        meta=af.Meta(status_description="MIDDLE"),
    )
    data = record_to_json(record, Order)
    assert data == {
        "workflow_name": "orders",
        "foreign_id": "o-1",
        "run_id": "r1",
        "status": 2,
        "status_name": "MIDDLE",
        "run_state": "RUNNING",
        "version": 2,
        "object": {"count": 3, "note": "", "when": "2026-01-01T09:00:00+00:00"},
        "created_at": "2026-01-01T09:00:00+00:00",
        "updated_at": "2026-01-01T09:00:00+00:00",
        "meta": {
            "run_state_reason": "",
            "status_description": "MIDDLE",
            "error_count": 0,
            "error_message": "",
            "definition": "",
        },
    }
    assert json.loads(encode(event_record(4, data))) == {"id": 4, "event": "record", "record": data}


def test_errors_map_to_codes() -> None:
    cases: list[tuple[BaseException, ErrorCode]] = [
        (af.RunNotFound("x"), ErrorCode.NOT_FOUND),
        (af.WorkflowInProgress("x"), ErrorCode.IN_PROGRESS),
        (af.InvalidTransition("x"), ErrorCode.INVALID_TRANSITION),
        (af.InvalidArgument("x"), ErrorCode.INVALID_ARGUMENT),
        (af.StatusNotReached("x"), ErrorCode.STATUS_NOT_REACHED),
        (af.CallbackError("x"), ErrorCode.CALLBACK_FAILED),
        (TimeoutError("x"), ErrorCode.TIMEOUT),
        (ProtocolError(ErrorCode.UNKNOWN_WORKFLOW, "x"), ErrorCode.UNKNOWN_WORKFLOW),
        (af.StoreError("disk on fire"), ErrorCode.INTERNAL),
        (KeyError("x"), ErrorCode.INTERNAL),
    ]
    for exc, code in cases:
        assert error_code(exc) is code, exc
    assert error_message(af.RunNotFound("no run r1"), ErrorCode.NOT_FOUND) == "no run r1"
    secret = error_message(af.StoreError("password=hunter2"), ErrorCode.INTERNAL)
    assert "hunter2" not in secret and "StoreError" in secret


def test_server_messages_parse_into_replies_and_events() -> None:
    assert parse_server_message(encode(reply_ok(1, {"a": 1}))) == Reply(1, True, {"a": 1})
    refused = parse_server_message(encode(reply_error(None, ErrorCode.BAD_JSON, "bad")))
    assert refused == Reply(None, False, None, "bad_json", "bad")
    assert isinstance(refused, Reply)
    error = refused.error()
    assert isinstance(error, af.GatewayError) and error.code == "bad_json"
    assert parse_server_message(encode(event_lagged("s"))) == Event("s", "lagged")
    for bad in ("[]", '{"id": 1}', '{"event": "record"}', '{"id": [1], "ok": true}'):
        with pytest.raises(ValueError):
            parse_server_message(bad)


def test_check_token_accepts_bearer_header_or_query_parameter() -> None:
    bearer = [(b"authorization", b"Bearer s3cret")]
    assert check_token(None, [], "/") is Access.GRANTED
    assert check_token("s3cret", bearer, "/") is Access.GRANTED
    assert check_token("s3cret", [(b"Authorization", b"bearer  s3cret ")], "/") is Access.GRANTED
    assert check_token("s3cret", [], "/?token=s3cret") is Access.GRANTED
    assert check_token("s e/cret", [], "/x?a=1&token=s%20e%2Fcret") is Access.GRANTED
    assert check_token("s3cret", [], "/") is Access.MISSING
    assert check_token("s3cret", [(b"authorization", b"Basic czNjcmV0")], "/") is Access.MISSING
    assert check_token("s3cret", [(b"authorization", b"Bearer nope")], "/") is Access.WRONG
    assert check_token("s3cret", [], "/?token=") is Access.WRONG
    assert check_token("s3cret", [], "/?token=s3cre") is Access.WRONG


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.4)  # 0.8 tokens
    assert bucket.take(100.5)  # 1.0 token
    assert not bucket.take(100.5)
    assert [bucket.take(200.0) for _ in range(4)] == [True, True, True, False]  # capped at burst
    assert not bucket.take(50.0)  # a clock going backwards adds nothing


def test_check_access_tells_the_read_only_token_apart() -> None:
    def access(target: str) -> Access:
        return check_access("s3cret", "look", [], target)

    assert access("/?token=s3cret") is Access.GRANTED
    assert access("/?token=look") is Access.READ_ONLY
    assert access("/?token=nope") is Access.WRONG
    assert access("/") is Access.MISSING
    assert check_access("s3cret", None, [], "/?token=look") is Access.WRONG
    bearer = [(b"authorization", b"Bearer look")]
    assert check_access("s3cret", "look", bearer, "/") is Access.READ_ONLY
    assert set(OPS) >= STEERING_OPS
    assert {"trigger", "callback", "pause", "resume", "cancel", "delete_data"} == STEERING_OPS


def test_console_filters_convert_dates_and_foreign_ids() -> None:
    def list_runs(**args: object) -> dict[str, object]:
        return check_args(Request(1, "list_runs", {"workflow": "wf", **args}))

    checked = list_runs(
        created_after="2026-01-01T09:00:00+02:00",
        created_before="2026-01-02T00:00:00Z",
        foreign_id=["a", "b"],
        foreign_id_prefix="or",
    )
    assert checked["created_after"] == datetime(2026, 1, 1, 7, tzinfo=UTC)
    assert checked["created_before"] == datetime(2026, 1, 2, tzinfo=UTC)
    assert checked["foreign_id"] == ["a", "b"]
    assert list_runs(foreign_id="a")["foreign_id"] == "a"
    for bad in (
        {"created_after": "2026-01-01T09:00:00"},  # no offset
        {"created_after": "soon"},
        {"created_before": 1767225600},
        {"foreign_id": ["a", ""]},
        {"foreign_id": [1]},
        {"foreign_id_prefix": ""},
    ):
        with pytest.raises(ProtocolError) as info:
            list_runs(**bad)
        assert info.value.code is ErrorCode.INVALID_ARGUMENT
    counted = check_args(Request(2, "count_runs", {"workflow": "wf", "run_state": "PAUSED"}))
    assert counted == {"workflow": "wf", "run_state": "PAUSED"}


def test_a_handshake_is_one_guess() -> None:
    """#13 item 1: every credential offered at once used to be tried."""
    right = (b"authorization", b"Bearer s3cret")
    wrong = (b"authorization", b"Bearer guess")
    assert check_token("s3cret", [wrong, right], "/") is Access.SEVERAL
    assert check_token("s3cret", [right, right], "/") is Access.SEVERAL
    assert check_token("s3cret", [right], "/?token=s3cret") is Access.SEVERAL
    assert check_token("s3cret", [], "/?token=guess&token=s3cret") is Access.SEVERAL
    assert check_token("s3cret", [(b"authorization", b"Basic x")], "/?token=s3cret") is (
        Access.SEVERAL
    )
    assert check_access("s3cret", "r3ad", [right], "/?token=r3ad") is Access.SEVERAL
    assert check_access("s3cret", "r3ad", [(b"authorization", b"Bearer r3ad")], "/") is (
        Access.READ_ONLY
    )
    assert check_token(None, [wrong, right], "/?token=x") is Access.GRANTED


def test_tokens_must_be_sendable() -> None:
    assert check_token_text("s3cret-ü ok") == "s3cret-ü ok"
    for bad in ("", "a\nb", "a\rb", "\tx", " x", "x ", "\ud800", None, 5):
        with pytest.raises(af.InvalidArgument, match="token"):
            check_token_text(bad)


def test_refused_handshakes_are_limited_per_address() -> None:
    limiter = RefusalLimiter(allowed=3, window=60.0, max_peers=2)
    for _ in range(3):
        assert limiter.wait("10.0.0.1", 100.0) == 0.0
        limiter.refused("10.0.0.1", 100.0)
    assert limiter.wait("10.0.0.1", 100.0) == pytest.approx(20.0)  # one per 60/3 s
    assert limiter.wait("10.0.0.2", 100.0) == 0.0  # per address
    assert limiter.wait("10.0.0.1", 110.0) == pytest.approx(10.0)
    assert limiter.wait("10.0.0.1", 120.0) == 0.0
    limiter.refused("10.0.0.1", 120.0)
    assert limiter.wait("10.0.0.1", 120.0) == pytest.approx(20.0)
    # Bounded memory: addresses with their whole allowance back go first, then the oldest.
    limiter.refused("10.0.0.2", 121.0)
    limiter.refused("10.0.0.3", 122.0)
    assert len(limiter) == 2
    assert limiter.wait("10.0.0.3", 122.0) == 0.0  # 2 of 3 left
    assert limiter.wait("10.0.0.1", 122.0) == 0.0  # forgotten: the oldest one


def test_requests_with_invalid_text_or_non_finite_numbers_are_refused() -> None:
    bad_id = _refused('{"id": "\\ud800", "op": "ping"}')
    assert (bad_id.code, bad_id.request_id) == (ErrorCode.INVALID_ARGUMENT, None)
    deep = _refused('{"id": 7, "op": "trigger", "initial": {"a": ["x", "\\udfff"]}}')
    assert (deep.code, deep.request_id) == (ErrorCode.INVALID_ARGUMENT, 7)
    assert "request.initial.a[1] is not valid Unicode" in deep.message
    key = _refused('{"id": 7, "op": "ping", "\\ud800": 1}')
    assert "member name" in key.message
    binary = _refused(b'{"id": 8, "op": "ping", "x": "\xed\xa0\x80"}')  # CESU surrogate
    assert binary.code is ErrorCode.BAD_JSON
    for literal in ("NaN", "Infinity", "-Infinity"):
        assert _refused(f'{{"id": 1, "op": "ping", "x": {literal}}}').code is ErrorCode.BAD_JSON
    huge = _refused('{"id": 9, "op": "ping", "x": 1e999}')
    assert (huge.code, huge.request_id) == (ErrorCode.INVALID_ARGUMENT, 9)
    assert parse_request('{"id": "ü", "op": "ping", "x": "\\u00fc"}', 1000).id == "ü"


def test_structure_object_is_strict_and_names_the_path() -> None:
    for data, path in (
        ({"count": "2"}, "initial.count"),
        ({"count": True}, "initial.count"),
        ({"note": 5}, "initial.note"),
        ({"colour": "red"}, "extra fields found (colour) @ initial"),
    ):
        with pytest.raises(ProtocolError) as info:
            structure_object(Order, data)
        assert info.value.code is ErrorCode.INVALID_ARGUMENT
        assert path in info.value.message
