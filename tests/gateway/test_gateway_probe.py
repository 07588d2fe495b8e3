"""An adversarial probe of the websocket gateway, written from docs/gateway.md: whatever a
client sends, it gets a clear error reply (or that one connection is closed with a code),
nothing crashes or hangs the gateway, and every other client is served on.

Real sockets on 127.0.0.1 and the real clock; waits are on replies and events, each under
a ``fail_after``. Defects this probe found (each has a test below that failed before its
fix):

- a ``subscribe`` followed at once by its ``unsubscribe`` (sent together, as a browser may)
  got no reply at all when the unsubscribe was read before the subscription was set up,
  and a client waiting for it waited forever; the unsubscribe said ``true`` all the same;
- frames a client sent in the same write as its handshake (before the gateway's answer,
  as raw clients and some libraries do) were not read until the client sent more, so
  their replies never came;
- ``client.request(op, id=...)`` sent the caller's id instead of the client's own, so the
  reply found nobody waiting and the call waited forever;
- a message within ``max_message_bytes`` in characters but over it in UTF-8 (emoji, say)
  got a ``too_large`` reply with ``"id": null``: the Python client's call, and any
  client's request, waited forever for its reply.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import prometheus_client
import pytest
import trio
import trio.testing
import trio_websocket

import actorflow as af
from tests.gateway.test_gateway import (
    LIMIT,
    TOKEN,
    error_of,
    masked_text_frame,
    raw_handshake,
    reset,
)


class Stage(enum.IntEnum):
    OPEN = 1
    WAITING = 2
    DONE = 3


@attrs.define
class Ticket:
    note: str = ""
    count: int = 0


def build(registry: prometheus_client.CollectorRegistry | None = None) -> af.Workflow[Any, Any]:
    builder = af.Builder("tickets", Ticket, Stage)

    @builder.step(Stage.OPEN, to=Stage.WAITING)
    async def open_(run: af.Run[Ticket, Stage]) -> Stage:
        run.object.count += 1
        return Stage.WAITING

    async def answered(run: af.Run[Ticket, Stage], payload: bytes) -> Stage:
        run.object.note = payload.decode()
        return Stage.DONE

    builder.add_callback(Stage.WAITING, answered, to=[Stage.DONE])
    return builder.build(af.MemoryStore(), metrics=registry)


@pytest.fixture
def registry() -> prometheus_client.CollectorRegistry:
    return prometheus_client.CollectorRegistry()


@pytest.fixture
async def tickets(
    nursery: trio.Nursery, registry: prometheus_client.CollectorRegistry
) -> af.Workflow[Any, Any]:
    wf = build(registry)
    await nursery.start(wf.run)
    return wf


async def serve(nursery: trio.Nursery, wf: af.Workflow[Any, Any], **options: Any) -> int:
    options.setdefault("token", TOKEN)
    options.setdefault("rate", 1e6)  # the probes send fast; the rate limit has its own tests
    options.setdefault("burst", 1_000_000)
    port: int = await nursery.start(
        functools.partial(af.serve_gateway, [wf], "127.0.0.1", 0, **options)
    )
    return port


@pytest.fixture
async def port(nursery: trio.Nursery, tickets: af.Workflow[Any, Any]) -> int:
    return await serve(nursery, tickets)


@asynccontextmanager
async def socket_at(port: int) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    headers = [(b"authorization", f"Bearer {TOKEN}".encode())]
    async with trio_websocket.open_websocket_url(
        f"ws://127.0.0.1:{port}/", extra_headers=headers, max_message_size=1 << 26
    ) as ws:
        yield ws


async def reply_to(ws: trio_websocket.WebSocketConnection, request_id: object) -> dict[str, Any]:
    """The reply to ``request_id``, skipping subscription events."""
    while True:
        message: dict[str, Any] = json.loads(await ws.get_message())
        if "event" not in message and message["id"] == request_id:
            return message


async def ping_works(ws: trio_websocket.WebSocketConnection, request_id: object = "ping") -> None:
    await ws.send_message(json.dumps({"id": request_id, "op": "ping"}))
    assert (await reply_to(ws, request_id))["result"] == "pong"


async def bystander_works(port: int) -> None:
    async with af.open_gateway_client(f"ws://127.0.0.1:{port}/", token=TOKEN) as client:
        await client.ping()


def gauge(registry: prometheus_client.CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(f"actorflow_gateway_{name}")
    assert value is not None
    return value


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each whole frame the gateway sent (frames are unmasked)."""
    frames = []
    at = 0
    while at + 2 <= len(data):
        opcode, size, start = data[at] & 0x0F, data[at + 1] & 0x7F, at + 2
        if size == 126:
            size, start = int.from_bytes(data[start : start + 2], "big"), start + 2
        elif size == 127:
            size, start = int.from_bytes(data[start : start + 8], "big"), start + 8
        if start + size > len(data):
            break
        frames.append((opcode, data[start : start + size]))
        at = start + size
    return frames


async def until(condition: Any) -> None:
    """Wait (under the caller's fail_after) until ``condition()`` holds."""
    while not condition():
        await trio.testing.wait_all_tasks_blocked(0.01)


# -- the fix: a subscription always gets its one reply -----------------------------------------


async def test_pipelined_subscribe_and_unsubscribe_each_get_their_reply(port: int) -> None:
    stream = await raw_handshake(port)
    frames = b""
    for n in range(40):
        frames += masked_text_frame(
            json.dumps({"id": f"s{n}", "op": "subscribe", "workflow": "tickets"})
        )
        frames += masked_text_frame(
            json.dumps({"id": f"u{n}", "op": "unsubscribe", "subscription": f"s{n}"})
        )
    frames += masked_text_frame('{"id": "end", "op": "ping"}')
    with trio.fail_after(LIMIT):
        await stream.send_all(frames)  # in one write: the gateway reads them back to back
        received = b""
        while b'"id":"end"' not in received:
            received += await stream.receive_some(65536)
    await stream.aclose()
    order = [json.loads(payload)["id"] for opcode, payload in server_frames(received)]
    for n in range(40):
        assert f"s{n}" in order and f"u{n}" in order, n  # every request got its reply
        assert order.index(f"s{n}") < order.index(f"u{n}")  # the ack comes first
    assert b'"result":false' not in received  # each was active when unsubscribed


async def test_frames_sent_with_the_handshake_are_served(port: int) -> None:
    head = (
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    frames = masked_text_frame('{"id": 1, "op": "ping"}') + masked_text_frame(
        '{"id": 2, "op": "workflows"}'
    )
    with trio.fail_after(LIMIT):
        for split in (None, len(head) + 30, len(head) + 42):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            data = (head + f"Authorization: Bearer {TOKEN}\r\n\r\n").encode() + frames
            if split is None:
                await stream.send_all(data)  # all in one write
            else:  # the blank line ending the head, or the first frame, cut in two
                await stream.send_all(data[:split])
                await trio.testing.wait_all_tasks_blocked(0.01)
                await stream.send_all(data[split:])
            received = b""
            while received.count(b'"ok":true') < 2:
                received += await stream.receive_some(65536)
            assert received.startswith(b"HTTP/1.1 101 ")
            replies = server_frames(received.split(b"\r\n\r\n", 1)[1])
            assert [json.loads(payload)["id"] for _, payload in replies] == [1, 2]
            await stream.aclose()
        # Refused with frames attached: the refusal, then the end, at once.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all((head + "\r\n").encode() + frames)
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 401 ")
        await stream.aclose()


# -- malformed messages -------------------------------------------------------------------------

BAD_MESSAGES: list[tuple[str | bytes, object, str]] = [
    ("", None, "bad_json"),
    ("   ", None, "bad_json"),
    ("\ufeff{}", None, "bad_json"),
    ('{"id": 1, "op": "ping"} trailing', None, "bad_json"),
    ('{"id": 1, "op": "ping"}{"id": 2, "op": "ping"}', None, "bad_json"),
    ('{"id": 1, "op": "ping", "note": "raw\x01control"}', None, "bad_json"),
    ('{"id": NaN, "op": "ping"}', None, "bad_json"),
    ('{"id": 1, "op": "ping", "x": -Infinity}', None, "bad_json"),
    ("null", None, "invalid_argument"),
    ("[]", None, "invalid_argument"),
    ('[{"id": 1, "op": "ping"}]', None, "invalid_argument"),
    ("17", None, "invalid_argument"),
    ('"ping"', None, "invalid_argument"),
    ('{"op": "ping"}', None, "invalid_argument"),
    ('{"id": null, "op": "ping"}', None, "invalid_argument"),
    ('{"id": true, "op": "ping"}', None, "invalid_argument"),
    ('{"id": 1.5, "op": "ping"}', None, "invalid_argument"),
    ('{"id": 1e999, "op": "ping"}', None, "invalid_argument"),
    ('{"id": [1], "op": "ping"}', None, "invalid_argument"),
    ('{"id": {"a": 1}, "op": "ping"}', None, "invalid_argument"),
    ('{"id": "\\ud800", "op": "ping"}', None, "invalid_argument"),
    ('{"id": 7}', 7, "invalid_argument"),
    ('{"id": 7, "op": null}', 7, "invalid_argument"),
    ('{"id": 7, "op": 5}', 7, "invalid_argument"),
    ('{"id": 7, "op": ["ping"]}', 7, "invalid_argument"),
    ('{"id": 7, "op": ""}', 7, "unknown_op"),
    ('{"id": 7, "op": "PING"}', 7, "unknown_op"),
    ('{"id": 7, "op": "ping\\u0000"}', 7, "unknown_op"),
    ('{"id": 7, "op": "__class__"}', 7, "unknown_op"),
    ('{"id": 7, "op": "ping", "extra": 1}', 7, "invalid_argument"),
    ('{"id": 7, "op": "ping", "\\udfff": 1}', 7, "invalid_argument"),
    ('{"id": 7, "op": "ping", "x": 1e400}', 7, "invalid_argument"),
    ('{"id": "x", "op": "lookup", "workflow": "tickets"}', "x", "invalid_argument"),
    ('{"id": -0, "op": "lookup", "workflow": "nope", "run_id": "r"}', 0, "unknown_workflow"),
    (b'{"id": 8, "op": "\xff"}', None, "bad_json"),
    (b"\xef\xbb\xbf\x00", None, "bad_json"),
    ("[" * 50_000 + "]" * 50_000, None, "bad_json"),
    ('{"id": 9, "op": "ping", "x": ' + "[" * 5_000 + "]" * 5_000 + "}", None, "bad_json"),
]


async def test_malformed_messages_get_an_error_reply_and_the_connection_lives(port: int) -> None:
    with trio.fail_after(LIMIT):
        async with socket_at(port) as ws:
            for n, (data, request_id, code) in enumerate(BAD_MESSAGES):
                await ws.send_message(data)
                reply = json.loads(await ws.get_message())
                assert (reply["id"], error_of(reply)) == (request_id, code), (n, data)
            await ping_works(ws)
        await bystander_works(port)


# -- every op, every argument, values of every kind ---------------------------------------------

ODD_VALUES: list[object] = [
    None,
    True,
    0,
    -1,
    2**63,
    10**30,
    1.5,
    -0.0,
    1e308,
    "",
    " ",
    "\x00",
    "\u2028",
    "x" * 20_000,
    [],
    [None],
    ["OPEN", 99],
    [[]],
    {},
    {"note": 1},
    "OPEN",
    "done",
    "-7",
    "99999999999999999999999999",
    "_member_map_",
    "2026-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59-05:00",
    "AAAA",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
]
ARGUMENTS = [
    "workflow",
    "foreign_id",
    "run_id",
    "status",
    "start",
    "initial",
    "payload",
    "timeout",
    "reason",
    "limit",
    "after",
    "descending",
    "foreign_id_prefix",
    "run_state",
    "created_after",
    "created_before",
    "subscription",
    "request",
    "traceparent",
    "unknown",
]
OPS = [
    "ping",
    "workflows",
    "trigger",
    "await_status",
    "callback",
    "lookup",
    "latest",
    "history",
    "list_runs",
    "count_runs",
    "timers",
    "describe",
    "states",
    "pause",
    "resume",
    "cancel",
    "delete_data",
    "subscribe",
    "unsubscribe",
    "abort",
]


WF = {"workflow": "tickets"}
RUN = {**WF, "run_id": "no-such-run"}
BASE: dict[str, dict[str, object]] = {
    "ping": {},
    "workflows": {},
    "trigger": {**WF, "foreign_id": "f"},
    "await_status": {**RUN, "foreign_id": "f", "status": 2},
    "callback": {**WF, "foreign_id": "f", "status": 2, "payload": ""},
    "lookup": RUN,
    "latest": {**WF, "foreign_id": "f"},
    "history": RUN,
    "list_runs": WF,
    "count_runs": WF,
    "timers": RUN,
    "describe": WF,
    "states": WF,
    "pause": RUN,
    "resume": RUN,
    "cancel": RUN,
    "delete_data": RUN,
    "subscribe": WF,
    "unsubscribe": {"subscription": "s"},
    "abort": {"request": "r"},
}
"""Each op with its required arguments (docs/gateway.md, Ops), to which one odd one is
added or set."""


@pytest.mark.parametrize("op", OPS)
async def test_every_op_answers_odd_arguments_with_a_reply_never_internal(
    port: int, op: str
) -> None:
    base = BASE[op]
    request_id = 0
    with trio.fail_after(3 * LIMIT):
        async with socket_at(port) as ws:
            for name in ARGUMENTS:
                for value in ODD_VALUES:
                    request_id += 1
                    await ws.send_message(
                        json.dumps({"id": request_id, "op": op, **base, name: value})
                    )
                    reply = await reply_to(ws, request_id)
                    if not reply["ok"]:
                        assert reply["error"]["code"] != "internal", (name, value, reply)
                        assert reply["error"]["message"]
            await ping_works(ws)


# -- the websocket protocol itself ----------------------------------------------------------------


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """One client frame, its payload masked with a zero key (so left as it is)."""
    size = len(payload)
    flag = 0x80 if mask else 0
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    if size < 126:
        head += bytes([flag | size])
    elif size < 65536:
        head += bytes([flag | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([flag | 127]) + size.to_bytes(8, "big")
    return head + (b"\0\0\0\0" if mask else b"") + payload


PING = b'{"id": 1, "op": "ping"}'
VIOLATIONS: list[tuple[str, bytes, int]] = [
    ("unmasked", frame(1, PING, mask=False), 1002),
    ("reserved bit", frame(1, PING, rsv=0x40), 1002),
    ("reserved opcode", frame(3, b"x"), 1002),
    ("reserved control opcode", frame(0xB, b"x"), 1002),
    ("ping over 125 bytes", frame(9, b"x" * 200), 1002),
    ("fragmented ping", frame(9, b"x", fin=False), 1002),
    ("continuation without a start", frame(0, b"x"), 1002),
    ("text inside a fragmented text", frame(1, b'{"id":', fin=False) + frame(1, b"1}"), 1002),
    ("close with one byte", frame(8, b"\x03"), 1002),
    ("close with code 999", frame(8, (999).to_bytes(2, "big")), 1002),
    ("close with code 1005", frame(8, (1005).to_bytes(2, "big")), 1002),
    ("close reason not UTF-8", frame(8, (1000).to_bytes(2, "big") + b"\xff"), 1007),
    ("length with its top bit set", b"\x81\xff" + b"\xff" * 8 + b"\0\0\0\0", 1002),
    ("UTF-8 broken across fragments", frame(1, b'"\xc3', fin=False) + frame(0, b'("'), 1007),
    (
        "a frame that claims 2**62 bytes",
        b"\x81\xff" + (2**62).to_bytes(8, "big") + b"\0" * 4 + b"x" * (70 * 1024),
        1009,
    ),
    (
        "many fragments over the limit",
        b"".join(frame(1 if n == 0 else 0, b"x" * 1024, fin=False) for n in range(70)),
        1009,
    ),
]


@pytest.mark.parametrize(("name", "data", "code"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
async def test_protocol_violations_close_that_connection_with_a_code(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any], name: str, data: bytes, code: int
) -> None:
    port = await serve(nursery, tickets, max_message_bytes=64 * 1024)
    with trio.fail_after(LIMIT):
        async with af.open_gateway_client(f"ws://127.0.0.1:{port}/", token=TOKEN) as bystander:
            stream = await raw_handshake(port)
            await stream.send_all(data)
            received = b""
            while chunk := await stream.receive_some(65536):
                received += chunk
            await stream.aclose()
            closes = [payload for opcode, payload in server_frames(received) if opcode == 8]
            assert closes, received  # a close frame, not a bare end of the connection
            assert int.from_bytes(closes[0][:2], "big") == code, closes
            await bystander.ping()


async def test_well_formed_oddities_are_served(port: int) -> None:
    stream = await raw_handshake(port)
    data = (
        frame(1, b'{"id": 1, "op"', fin=False)
        + frame(9, b"mid-message ping")  # control frames may come between fragments
        + frame(0, b': "ping"}')
        + frame(0xA, b"unsolicited pong")
        + frame(2, b'{"id": 2, "op": "ping"}')  # binary frames of UTF-8 JSON
        + b"".join(frame(1 if n == 0 else 0, b" ", fin=False) for n in range(2000))
        + frame(0, b'{"id": 3, "op": "ping"}')
        + frame(1, '{"id": "\u00e9\U0001f600", "op": "ping"}'.encode())
    )
    with trio.fail_after(LIMIT):
        await stream.send_all(data)
        received = b""
        while received.count(b'"pong"') < 4:
            received += await stream.receive_some(65536)
    await stream.aclose()
    assert b"mid-message ping" in received  # answered with a pong frame
    assert '"\u00e9\U0001f600"'.encode() in received


# -- floods, slow readers, many clients --------------------------------------------------------


async def test_a_client_that_floods_and_never_reads_is_held_back(
    port: int, tickets: af.Workflow[Any, Any]
) -> None:
    """Back-pressure: the gateway stops reading a connection whose replies are not read,
    so the flood waits in the kernel's buffers, not in the gateway's memory."""
    stream = await raw_handshake(port)
    request = masked_text_frame(json.dumps({"id": "x" * 900, "op": "ping"}))  # ~1 KB replies
    burst = request * 64
    sent = 0
    with trio.fail_after(3 * LIMIT):
        while sent < 256 << 20:
            with trio.move_on_after(0.5) as blocked:
                await stream.send_all(burst)
            if blocked.cancelled_caught:
                break
            sent += len(burst)
        assert sent < 32 << 20, f"{sent} bytes were taken without a reply being read"
        await bystander_works(port)
        run_id = await tickets.trigger("during-the-flood")
        assert (await tickets.await_status("during-the-flood", run_id, Stage.WAITING)).version
    await reset(stream)


async def test_subscribers_that_never_read_do_not_slow_the_workflow(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any]
) -> None:
    port = await serve(nursery, tickets, subscription_buffer=8)
    silent = []
    with trio.fail_after(3 * LIMIT):
        for n in range(5):
            stream = await raw_handshake(port)
            await stream.send_all(
                masked_text_frame(json.dumps({"id": n, "op": "subscribe", "workflow": "tickets"}))
            )
            silent.append(stream)
        async with af.open_gateway_client(f"ws://127.0.0.1:{port}/", token=TOKEN) as client:
            run_ids = [
                await client.trigger("tickets", f"t{n}", initial={"note": "x" * 2000})
                for n in range(150)
            ]
            for n in range(len(run_ids)):
                await client.callback("tickets", f"t{n}", "WAITING", b"answer")
            for n, run_id in enumerate(run_ids):
                done = await client.await_status("tickets", f"t{n}", run_id, "DONE", timeout=LIMIT)
                assert done["object"]["note"] == "answer"
    for stream in silent:
        await reset(stream)


async def test_many_clients_at_once_some_vanishing_mid_request(
    port: int, tickets: af.Workflow[Any, Any], registry: prometheus_client.CollectorRegistry
) -> None:
    url = f"ws://127.0.0.1:{port}/"
    served = 0

    async def good(n: int) -> None:
        nonlocal served
        async with af.open_gateway_client(url, token=TOKEN) as client:
            run_id = await client.trigger("tickets", f"good-{n}")
            async with client.subscribe("tickets", run_id=run_id) as changes:
                await client.await_status("tickets", f"good-{n}", run_id, "WAITING")
                await client.callback("tickets", f"good-{n}", "WAITING", b"ok")
                async for record in changes:
                    if record["status_name"] == "DONE":
                        break
        served += 1

    async def vanishing(n: int) -> None:
        stream = await raw_handshake(port)
        await stream.send_all(
            masked_text_frame(json.dumps({"id": 1, "op": "subscribe", "workflow": "tickets"}))
            + masked_text_frame(
                json.dumps(
                    {
                        "id": 2,
                        "op": "await_status",
                        "workflow": "tickets",
                        "foreign_id": "f",
                        "run_id": "r",
                        "status": "DONE",
                    }
                )
            )
            + masked_text_frame(json.dumps({"id": 3, "op": "ping"}))[:9]  # half a frame
        )
        await reset(stream)

    with trio.fail_after(3 * LIMIT):
        async with trio.open_nursery() as crowd:
            for n in range(40):
                crowd.start_soon(good, n)
                crowd.start_soon(vanishing, n)
        assert served == 40
        await until(lambda: gauge(registry, "connections") == 0)
        await until(lambda: gauge(registry, "subscriptions") == 0)


async def test_abrupt_disconnects_in_every_phase_leave_nothing_behind(
    port: int, tickets: af.Workflow[Any, Any], registry: prometheus_client.CollectorRegistry
) -> None:
    run_id = await tickets.trigger("held")
    waiting = {
        "op": "await_status",
        "workflow": "tickets",
        "foreign_id": "held",
        "run_id": run_id,
        "status": "DONE",
    }
    with trio.fail_after(3 * LIMIT):
        # In the handshake: before a byte, mid-request line, mid-headers.
        for data in (b"", b"GET / HT", b"GET / HTTP/1.1\r\nHost: x\r\nUpgr"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            if data:
                await stream.send_all(data)
            await reset(stream)
        # Accepted: idle, mid-frame, with a request in flight, with subscriptions, and with
        # the gateway's writer stuck on a peer that stopped reading.
        phases: list[bytes] = [
            b"",
            masked_text_frame('{"id": 1, "op": "ping"}')[:5],
            masked_text_frame(json.dumps({"id": 1, **waiting})),
            masked_text_frame('{"id": 1, "op": "subscribe", "workflow": "tickets"}')
            + masked_text_frame(json.dumps({"id": 2, **waiting})),
        ]
        for data in phases:
            stream = await raw_handshake(port)
            await stream.send_all(data)
            await trio.testing.wait_all_tasks_blocked(0.01)
            await reset(stream)
        stuck = await raw_handshake(port)
        await stuck.send_all(
            masked_text_frame('{"id": 1, "op": "subscribe", "workflow": "tickets"}')
            + b"".join(
                masked_text_frame(
                    json.dumps(
                        {
                            "id": f"p{n}",
                            "op": "ping",
                        }
                    )
                )
                for n in range(50)
            )
        )
        for n in range(100):  # changes to push to a reader that is not there
            await tickets.trigger(f"push-{n}", initial=Ticket(note="x" * 4000))
        await reset(stuck)
        await until(lambda: gauge(registry, "connections") == 0)
        await until(lambda: gauge(registry, "subscriptions") == 0)
        await bystander_works(port)
        done = await tickets.callback("held", Stage.WAITING, b"after all that")
        assert done is not None and done.status is Stage.DONE


# -- the gateway going away ---------------------------------------------------------------------


async def test_cancelling_the_gateway_with_busy_clients_ends_it_at_once(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any]
) -> None:
    scope = trio.CancelScope()

    async def gateway(port: int, task_status: trio.TaskStatus[int]) -> None:
        with scope:
            await af.serve_gateway(
                [tickets], "127.0.0.1", port, token=TOKEN, rate=1e6, task_status=task_status
            )

    port = await nursery.start(gateway, 0)
    url = f"ws://127.0.0.1:{port}/"
    run_id = await tickets.trigger("f")
    errors: list[str] = []

    async def waiting_client(task_status: trio.TaskStatus[None]) -> None:
        async with (
            af.open_gateway_client(url, token=TOKEN) as client,
            client.subscribe("tickets"),
        ):
            task_status.started()
            try:  # in flight when the gateway goes away
                await client.await_status("tickets", "f", run_id, "DONE")
            except af.GatewayError as exc:
                errors.append(exc.code)
            try:  # and one sent after
                await client.ping()
            except af.GatewayError as exc:
                errors.append(exc.code)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as clients:
            await clients.start(waiting_client)
            stuck = await raw_handshake(port)  # subscribed, never reads, its writer stuck
            await stuck.send_all(
                masked_text_frame('{"id": 1, "op": "subscribe", "workflow": "tickets"}')
            )
            for n in range(60):
                await tickets.trigger(f"push-{n}", initial=Ticket(note="x" * 8000))
            half = await trio.open_tcp_stream("127.0.0.1", port)
            await half.send_all(b"GET / HTTP/1.1\r\n")  # mid-handshake
            idle = await trio.open_tcp_stream("127.0.0.1", port)  # said nothing yet
            await trio.testing.wait_all_tasks_blocked(0.01)
            scope.cancel()  # serve_gateway must end now, whatever its clients do
        assert errors == ["connection_closed", "connection_closed"]
        for stream in (stuck, half, idle):
            await stream.aclose()
        # Nothing of it is left listening or serving: the port can be served again.
        await nursery.start(_again, tickets, port)
        async with af.open_gateway_client(url, token=TOKEN) as client:
            assert (await client.lookup("tickets", run_id))["run_id"] == run_id


async def _again(wf: af.Workflow[Any, Any], port: int, task_status: trio.TaskStatus[int]) -> None:
    await af.serve_gateway([wf], "127.0.0.1", port, token=TOKEN, task_status=task_status)


async def test_a_gateway_cancelled_while_starting_raises_nothing_and_holds_no_port(
    tickets: af.Workflow[Any, Any],
) -> None:
    with trio.fail_after(LIMIT):
        for _ in range(3):
            with trio.CancelScope() as scope:
                scope.cancel()
                async with trio.open_nursery() as nursery:
                    await nursery.start(
                        functools.partial(af.serve_gateway, [tickets], "127.0.0.1", 0)
                    )
            assert scope.cancelled_caught


# -- handshakes and tokens ----------------------------------------------------------------------


async def handshake_status(port: int, target: str, headers: str = "") -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        (
            f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"{headers}\r\n"
        ).encode("utf-8", "surrogateescape")
    )
    response = b""
    while b"\r\n" not in response:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        response += chunk
    await stream.aclose()
    return int(response.split()[1])


HANDSHAKES: list[tuple[str, str, int]] = [
    ("/", f"Authorization: Bearer {TOKEN}\r\n", 101),
    ("/any/path", f"authorization: bearer {TOKEN}\r\n", 101),
    (f"/?token={TOKEN}", "", 101),
    (f"/?other=1&token={TOKEN}", "", 101),
    ("/", "", 401),
    ("/", "Authorization: \r\n", 401),
    ("/", f"Authorization: Basic {TOKEN}\r\n", 401),
    ("/", "Authorization: Bearer\r\n", 403),
    ("/", f"Authorization: Bearer {TOKEN}x\r\n", 403),
    ("/", f"Authorization: Bearer {TOKEN.upper()}\r\n", 403),
    ("/", "Authorization: Bearer \udcff\udcfe\r\n", 403),
    ("/?token=", "", 403),
    ("/?token=%ff%00", "", 403),
    (f"/{TOKEN}", "", 401),
    (f"/?token={TOKEN}&token={TOKEN}", "", 400),
    (f"/?token={TOKEN}", f"Authorization: Bearer {TOKEN}\r\n", 400),
]


async def test_handshake_credentials(nursery: trio.Nursery, tickets: af.Workflow[Any, Any]) -> None:
    port = await serve(nursery, tickets, max_refused_handshakes=1000)
    with trio.fail_after(LIMIT):
        for target, headers, status in HANDSHAKES:
            assert await handshake_status(port, target, headers) == status, (target, headers)
        await bystander_works(port)


async def test_a_read_only_connection_cannot_steer_but_may_cancel_its_own_requests(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any]
) -> None:
    port = await serve(nursery, tickets, read_only_token="looker")
    run_id = await tickets.trigger("f")
    steering = [
        {"op": "trigger", "workflow": "tickets", "foreign_id": "g"},
        {"op": "callback", "workflow": "tickets", "foreign_id": "f", "status": 2, "payload": ""},
        {"op": "pause", "workflow": "tickets", "run_id": run_id},
        {"op": "resume", "workflow": "tickets", "run_id": run_id},
        {"op": "cancel", "workflow": "tickets", "run_id": run_id},
        {"op": "delete_data", "workflow": "tickets", "run_id": run_id},
    ]
    headers = [(b"authorization", b"Bearer looker")]
    with trio.fail_after(LIMIT):
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}/", extra_headers=headers
        ) as ws:
            for n, request in enumerate(steering):
                await ws.send_message(json.dumps({"id": n, **request}))
                assert error_of(await reply_to(ws, n)) == "forbidden"
            await ws.send_message(
                json.dumps(
                    {
                        "id": "w",
                        "op": "await_status",
                        "workflow": "tickets",
                        "foreign_id": "f",
                        "run_id": run_id,
                        "status": "DONE",
                    }
                )
            )
            await ws.send_message('{"id": "a", "op": "abort", "request": "w"}')
            assert (await reply_to(ws, "a"))["result"] is True
            await ping_works(ws)
    assert (await tickets.lookup(run_id)).run_state is af.RunState.RUNNING


def test_the_probe_covers_every_documented_op() -> None:
    from actorflow.gateway.ops import OPS as TABLE

    assert sorted(OPS) == sorted(TABLE)


async def test_the_client_refuses_an_id_among_request_arguments(port: int) -> None:
    async with af.open_gateway_client(f"ws://127.0.0.1:{port}/", token=TOKEN) as client:
        with trio.fail_after(LIMIT):
            for request_id in (99, 1, "x"):
                with pytest.raises(af.GatewayError) as info:
                    await client.request("ping", id=request_id)
                assert info.value.code == "invalid_argument"
            assert await client.request("ping") == "pong"
            with pytest.raises(af.GatewayError) as info:  # the gateway's own refusal
                await client.request("ping", note="x")
            assert info.value.code == "invalid_argument"


async def test_a_message_too_large_in_utf8_is_answered_with_its_id(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any]
) -> None:
    port = await serve(nursery, tickets, max_message_bytes=64 * 1024)
    wide = "\U0001f600" * 20_000  # 20,000 characters, 80,000 bytes in UTF-8
    with trio.fail_after(LIMIT):
        async with af.open_gateway_client(f"ws://127.0.0.1:{port}/", token=TOKEN) as client:
            for pad in (wide, "\u00e9" * 40_000):
                with pytest.raises(af.GatewayError) as info:
                    await client.request("ping", pad=pad)
                assert info.value.code == "too_large"
            await client.ping()  # the connection lives on
        async with socket_at(port) as ws:
            await ws.send_message(
                json.dumps({"id": "big", "op": "ping", "pad": wide}, ensure_ascii=False)
            )
            reply = await reply_to(ws, "big")
            assert error_of(reply) == "too_large"
            await ws.send_message('{"id": 5, "pad": "' + wide + '"')  # unreadable: id null
            assert error_of(await reply_to(ws, None)) == "too_large"
            await ping_works(ws)
