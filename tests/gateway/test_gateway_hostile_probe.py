"""A hostile probe of the gateway, written from docs/gateway.md: clients that ask for more
than can be sent, that stop reading or vanish without a word, and many subscribers of one
change. Real sockets on 127.0.0.1 and the real clock; waits are on replies, events and
the end of connections, each under a ``fail_after``.

Defects this probe found (each has a test below that failed before its fix):

- a reply had no size cap: a ``list_runs`` or ``history`` of big objects was sent as one
  frame of any size (over the Python client's 64 MiB it closed the client's connection,
  failing every other request and subscription on it), and each of up to ``max_in_flight``
  such replies was held in the gateway's memory; now a reply over ``max_reply_bytes`` is a
  ``too_large`` error reply, and a record event over it ends its subscription with a
  ``too_large`` error event (never a silent drop);
- a connection had no keep-alive: a peer that vanished without a word (unplugged, a
  half-open TCP connection) or that stopped reading held its connection slot, its
  subscriptions and their buffers for ever; now the gateway pings a connection quiet for
  ``ping_interval`` and closes one that shows no life for twice as long (a slow reader
  that keeps taking a long reply is alive);
- every stored change was encoded once per subscription that followed it (a thousand
  browser tabs on one workflow: a thousand encodings of each change); now once for all;
- a client that sent many ``list_runs`` and never read had each reply made and held:
  4 such connections of 64 requests for 1,000 records of 1 KB held 771 MB of the
  gateway's memory; now at most 4 such replies per connection are being made or wait to
  be written (29 MB);
- error messages quoted what the caller sent whole: a megabyte of run id, foreign id,
  op or argument name came back in the reply; now at most 2,000 characters.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

import actorflow as af
import actorflow.gateway.connection
from tests.gateway.test_gateway import (
    LIMIT,
    TOKEN,
    error_of,
    handshake_on,
    masked_text_frame,
    raw_handshake,
)
from tests.gateway.test_gateway_probe import (
    Stage,
    Ticket,
    bystander_works,
    ping_works,
    reply_to,
    serve,
    server_frames,
    socket_at,
)
from tests.gateway.test_gateway_probe import port as port
from tests.gateway.test_gateway_probe import registry as registry
from tests.gateway.test_gateway_probe import tickets as tickets

PING_OPCODE = 0x9
URL = "ws://127.0.0.1:{}/"


def first_frame(data: bytearray) -> tuple[int, bytes, int] | None:
    """The opcode, payload and end of the first whole frame the gateway sent, if any."""
    if len(data) < 2:
        return None
    size, start = data[1] & 0x7F, 2
    if size >= 126:
        width = 2 if size == 126 else 8
        if len(data) < 2 + width:
            return None
        size, start = int.from_bytes(data[2 : 2 + width], "big"), 2 + width
    if len(data) < start + size:
        return None
    return data[0] & 0x0F, bytes(data[start : start + size]), start + size


async def slowly_read_reply(stream: trio.SocketStream) -> bytes:
    """Read 32 KiB every 10 ms, answering the pings read, until a text frame is whole."""
    data = bytearray()
    while True:
        frame = first_frame(data)
        if frame is None:
            chunk = await stream.receive_some(1 << 15)
            assert chunk, "the gateway closed the connection of a slow reader"
            data += chunk
            await trio.sleep(0.01)  # a slow reader, e.g. on a slow link
            continue
        opcode, payload, end = frame
        del data[:end]
        if opcode == PING_OPCODE:
            await stream.send_all(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
        elif opcode == 0x1:
            return payload


async def request(ws: trio_websocket.WebSocketConnection, **message: Any) -> dict[str, Any]:
    await ws.send_message(json.dumps(message))
    return await reply_to(ws, message["id"])


# -- reply size cap ----------------------------------------------------------------------------


async def test_a_reply_over_max_reply_bytes_is_too_large_and_the_connection_lives(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any]
) -> None:
    port = await serve(nursery, tickets, max_reply_bytes=6_000)
    with trio.fail_after(LIMIT):
        run_ids = [
            await tickets.trigger(f"big-{n}", initial=Ticket(note="é" * 1500)) for n in range(4)
        ]
        for n, run_id in enumerate(run_ids):
            await tickets.await_status(f"big-{n}", run_id, Stage.WAITING)
        async with socket_at(port) as ws:
            # records of ~3.4 KB in UTF-8 (1.5k characters each): 2 are over 6 KB in bytes only
            listed = await request(ws, id="list", op="list_runs", workflow="tickets")
            assert error_of(listed) == "too_large"
            assert "max_reply_bytes" in listed["error"]["message"]
            history = await request(ws, id=7, op="history", workflow="tickets", run_id=run_ids[0])
            assert error_of(history) == "too_large"
            # what fits is served, on the same connection
            page = await request(ws, id="page", op="list_runs", workflow="tickets", limit=1)
            assert [r["foreign_id"] for r in page["result"]] == ["big-0"]
            await ping_works(ws)
        async with af.open_gateway_client(URL.format(port), token=TOKEN) as client:
            with pytest.raises(af.GatewayError) as raised:
                await client.list_runs("tickets")
            assert raised.value.code == "too_large"
            assert (await client.lookup("tickets", run_ids[3]))["foreign_id"] == "big-3"


async def test_a_record_event_over_the_limit_ends_its_subscription_with_too_large(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any]
) -> None:
    port = await serve(nursery, tickets, max_reply_bytes=4_000)
    with trio.fail_after(LIMIT):
        async with (
            af.open_gateway_client(URL.format(port), token=TOKEN) as client,
            client.subscribe("tickets", foreign_id="small") as small,
            client.subscribe("tickets", foreign_id="huge") as huge,
        ):
            await client.trigger("tickets", "huge", initial={"note": "x" * 5_000})
            with pytest.raises(af.GatewayError) as raised:
                await huge.receive()
            assert raised.value.code == "too_large"
            assert "max_reply_bytes" in str(raised.value)
            # the other subscription, the connection and the run go on
            await client.trigger("tickets", "small")
            assert (await small.receive())["version"] == 1
            assert (await small.receive())["status_name"] == "WAITING"
            with pytest.raises(af.GatewayError) as raised:
                await client.latest("tickets", "huge")
            assert raised.value.code == "too_large"
            assert (await client.count_runs("tickets"))["total"] == 2


async def test_serve_gateway_refuses_unusable_reply_caps_and_ping_intervals(
    tickets: af.Workflow[Any, Any],
) -> None:
    for options in (
        {"max_reply_bytes": 0},
        {"max_reply_bytes": 1.5},
        {"max_reply_bytes": True},
        {"ping_interval": 0},
        {"ping_interval": -1.0},
        {"ping_interval": float("nan")},
        {"ping_interval": float("inf")},
        {"ping_interval": "30"},
    ):
        with pytest.raises(af.InvalidArgument):
            await af.serve_gateway([tickets], **options)


# -- keep-alive ----------------------------------------------------------------------------------


async def test_a_peer_that_answers_no_ping_is_closed_and_a_live_one_stays(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any]
) -> None:
    port = await serve(nursery, tickets, ping_interval=0.5)
    with trio.fail_after(LIMIT):
        async with af.open_gateway_client(URL.format(port), token=TOKEN) as live:
            silent = await raw_handshake(port)  # a websocket that never answers a ping
            # it subscribed, as a browser tab would, and then its machine went away
            subscribe = {"id": 1, "op": "subscribe", "workflow": "tickets"}
            await silent.send_all(masked_text_frame(json.dumps(subscribe)))
            received = b""
            while chunk := await silent.receive_some(65536):
                received += chunk
            opcodes = [opcode for opcode, _ in server_frames(received)]
            assert PING_OPCODE in opcodes, opcodes
            # the live client (trio-websocket answers pings) was pinged as long and stays
            await live.ping()
            assert await live.trigger("tickets", "after-the-silent-one")
        await silent.aclose()


async def test_a_subscriber_that_stops_reading_is_closed_and_its_slot_freed(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any]
) -> None:
    port = await serve(nursery, tickets, ping_interval=0.5, max_connections=2)
    with trio.fail_after(3 * LIMIT):
        stalled = await raw_handshake(port)
        subscribe = {"id": 1, "op": "subscribe", "workflow": "tickets"}
        await stalled.send_all(masked_text_frame(json.dumps(subscribe)))
        async with af.open_gateway_client(URL.format(port), token=TOKEN) as client:
            # changes pile up for the stalled reader until its socket buffers are full
            for n in range(200):
                await client.trigger("tickets", f"t{n}", initial={"note": "y" * 4000})
            # it never reads, so never answers a ping: the gateway closes it (what it
            # sent is read now, to the end of the connection)...
            with contextlib.suppress(trio.BrokenResourceError):
                while await stalled.receive_some(1 << 20):
                    pass
            # ...and its connection slot is free for a newcomer (max_connections=2)
            async with af.open_gateway_client(URL.format(port), token=TOKEN) as other:
                await other.ping()
            await client.ping()
        await stalled.aclose()


async def test_a_slow_reader_of_a_long_reply_is_not_taken_for_dead(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any]
) -> None:
    """It answers no ping while the reply is in its way, but it takes the reply piece by
    piece: alive. (Pings alone would have closed it mid-reply.)"""
    port = await serve(nursery, tickets, ping_interval=0.2)
    for n in range(150):
        await tickets.trigger(f"slow-{n}", initial=Ticket(note="n" * 50_000))
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)  # no room to hide 7.5 MB
    await sock.connect(("127.0.0.1", port))
    stream = await handshake_on(trio.SocketStream(sock))
    listing = {"id": 1, "op": "list_runs", "workflow": "tickets", "limit": 150}
    await stream.send_all(masked_text_frame(json.dumps(listing)))
    with trio.fail_after(12 * LIMIT):
        text = await slowly_read_reply(stream)
    assert len(json.loads(text)["result"]) == 150
    await stream.aclose()


async def test_a_client_that_asks_for_many_pages_and_never_reads_costs_little(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    made = 0
    real = af.MemoryStore.list_runs

    async def counting(self: af.MemoryStore, *args: Any, **kwargs: Any) -> Any:
        nonlocal made
        made += 1
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(af.MemoryStore, "list_runs", counting)
    port = await serve(nursery, tickets)
    for n in range(200):
        await tickets.trigger(f"page-{n}", initial=Ticket(note="p" * 10_000))
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    greedy = await handshake_on(trio.SocketStream(sock))
    with trio.fail_after(LIMIT):
        for n in range(40):  # 40 pages of 2 MB, none of them read
            page = {"id": n, "op": "list_runs", "workflow": "tickets", "limit": 200}
            await greedy.send_all(masked_text_frame(json.dumps(page)))
        await trio.testing.wait_all_tasks_blocked(0.2)
        # 4 being made or waiting to be written, and the few the kernel took whole
        assert made <= 10, f"{made} pages made for a client that reads none"
        await bystander_works(port)
        async with socket_at(port) as ws:  # another client's pages are not held up
            page = await request(ws, id="p", op="list_runs", workflow="tickets", limit=3)
            assert len(page["result"]) == 3
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await greedy.aclose()


# -- one encoding per change ---------------------------------------------------------------------


async def test_a_change_is_encoded_once_for_all_its_subscribers(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[str] = []
    real = actorflow.gateway.connection.record_to_json

    def counting(record: Any, object_type: type[Any]) -> dict[str, Any]:
        encoded.append(f"{record.run_id}/{record.version}")
        return real(record, object_type)

    monkeypatch.setattr(actorflow.gateway.connection, "record_to_json", counting)
    port = await serve(nursery, tickets)
    with trio.fail_after(LIMIT):
        async with (
            af.open_gateway_client(URL.format(port), token=TOKEN) as one,
            af.open_gateway_client(URL.format(port), token=TOKEN) as two,
            one.subscribe("tickets") as a,
            one.subscribe("tickets", foreign_id="shared") as b,
            two.subscribe("tickets") as c,
            two.subscribe("tickets", foreign_id="shared") as d,
        ):
            run_id = await one.trigger("tickets", "shared")
            await one.await_status("tickets", "shared", run_id, "WAITING")
            for stream in (a, b, c, d):
                seen = [await stream.receive(), await stream.receive()]
                assert [r["version"] for r in seen] == [1, 2]
                assert seen[1]["object"] == {"note": "", "count": 1}
    assert sorted(encoded) == [f"{run_id}/1", f"{run_id}/2"]


# -- hostile frames --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code", "echoed"),
    [
        (b"\xff\xfe{}", "bad_json", None),  # a binary frame that is not UTF-8
        (b'{"id": 3, "op": "ping"}', None, 3),  # binary frames holding JSON are served
        ('{"id": ' + "9" * 5000 + ', "op": "ping"}', "bad_json", None),  # int too long
        ('{"id": 1.0, "op": "ping"}', "invalid_argument", None),
        ('{"id": [1], "op": "ping"}', "invalid_argument", None),
        ('{"id": {"a": 1}, "op": "ping"}', "invalid_argument", None),
        ('{"id": "n", "op": "' + "p" * 100_000 + '"}', "unknown_op", "n"),
        ('{"id": "n", "op": "ping\\u0000"}', "unknown_op", "n"),
        ('{"id": "n", "op": "PING"}', "unknown_op", "n"),
        (
            '{"id": "n", "op": "subscribe", "workflow": "tickets", "run_id": 5}',
            "invalid_argument",
            "n",
        ),
        (
            '{"id": "n", "op": "subscribe", "workflow": "tickets", "foreign_id": ""}',
            "invalid_argument",
            "n",
        ),
        ('{"id": "n", "op": "subscribe", "workflow": "nope"}', "unknown_workflow", "n"),
        ('{"id": "n", "op": "unsubscribe", "subscription": null}', "invalid_argument", "n"),
        ('{"id": "n", "op": "abort", "request": [1]}', "invalid_argument", "n"),
        (
            '{"id": "n", "op": "latest", "workflow": "tickets", "foreign_id": "'
            + "\\u0000" * 3
            + '"}',
            "invalid_argument",
            "n",
        ),
        (
            '{"id": "n", "op": "latest", "workflow": "tickets", "foreign_id": "'
            + "\U0001f600" * 50_000
            + '"}',
            "invalid_argument",
            "n",
        ),
        ("[" * 100_000 + "]" * 100_000, "bad_json", None),
        ("", "bad_json", None),
        ("null", "invalid_argument", None),
        ('"ping"', "invalid_argument", None),
    ],
)
async def test_hostile_frames_get_one_clear_reply_and_the_connection_lives(
    port: int, frame: str | bytes, code: str | None, echoed: object
) -> None:
    with trio.fail_after(LIMIT):
        async with socket_at(port) as ws:
            await ws.send_message(frame)
            reply = json.loads(await ws.get_message())
            assert reply["id"] == echoed
            if code is None:
                assert reply["ok"] is True, reply
            else:
                assert error_of(reply) == code
                assert "Traceback" not in reply["error"]["message"]
            await ping_works(ws)


async def test_a_flood_of_subscribes_and_unsubscribes_leaves_nothing_behind(
    nursery: trio.Nursery, tickets: af.Workflow[Any, Any]
) -> None:
    port = await serve(nursery, tickets, max_subscriptions=8)
    with trio.fail_after(3 * LIMIT):
        async with socket_at(port) as ws:
            frames = []
            for n in range(2000):
                frames.append({"id": n, "op": "subscribe", "workflow": "tickets"})
                frames.append({"id": f"u{n}", "op": "unsubscribe", "subscription": n})
            for message in frames:
                await ws.send_message(json.dumps(message))
            answered: dict[object, dict[str, Any]] = {}
            while len(answered) < len(frames):
                message = json.loads(await ws.get_message())
                assert "event" not in message, message
                assert message["id"] not in answered, message
                answered[message["id"]] = message
            for n in range(2000):
                assert answered[n]["result"] == {"subscription": n}
                assert answered[f"u{n}"]["result"] is True
            # past the limit: busy, and the limit frees as subscriptions end
            for n in range(8):
                ack = await request(ws, id=f"s{n}", op="subscribe", workflow="tickets")
                assert ack["ok"] is True
            busy = await request(ws, id="s8", op="subscribe", workflow="tickets")
            assert error_of(busy) == "busy"
            gone = await request(ws, id="u0", op="unsubscribe", subscription="s0")
            assert gone["result"] is True
            again = await request(ws, id="s8", op="subscribe", workflow="tickets")
            assert again["ok"] is True


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"op": "lookup", "workflow": "tickets", "run_id": "r" * 500_000}, "not_found"),
        ({"op": "latest", "workflow": "tickets", "foreign_id": "f" * 500_000}, "invalid_argument"),
        ({"op": "p" * 500_000}, "unknown_op"),
        ({"op": "describe", "workflow": "w" * 500_000}, "unknown_workflow"),
        ({"op": "ping", "x" * 500_000: 1}, "invalid_argument"),
    ],
)
async def test_error_messages_quoting_huge_input_are_cut(
    port: int, message: dict[str, Any], code: str
) -> None:
    """An error message quotes what was sent (an id, a name); a megabyte of it came back
    whole in the reply. Now at most 2,000 characters, its start and end kept."""
    with trio.fail_after(LIMIT):
        async with socket_at(port) as ws:
            reply = await request(ws, id="huge", **message)
            assert error_of(reply) == code
            text = reply["error"]["message"]
            assert len(text) <= 2000, len(text)
            assert "characters cut" in text
            await ping_works(ws)
