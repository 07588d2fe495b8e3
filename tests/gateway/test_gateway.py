"""The websocket gateway, end to end: a real server on 127.0.0.1 driven by real clients.

These tests use the real clock (sockets are involved). They wait on replies and events,
never on sleeps; each takes well under a second.
"""

from __future__ import annotations

import base64
import enum
import functools
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket

import actorflow as af
from actorflow.gateway import GatewayClient, open_gateway_client

TOKEN = "s3cret"
LIMIT = 5.0  # seconds: a hang fails the test instead of stalling the suite


class Status(enum.IntEnum):
    STARTED = 1
    MIDDLE = 2
    END = 3


@attrs.define
class YinYang:
    yin: bool = False
    yang: bool = False
    count: int = 0
    note: str = ""


def build_workflow(name: str = "yinyang") -> af.Workflow[YinYang, Status]:
    builder = af.Builder(name, YinYang, Status)

    @builder.step(Status.STARTED, to=Status.MIDDLE)
    async def start(run: af.Run[YinYang, Status]) -> Status:
        run.object.yin = True
        return Status.MIDDLE

    async def got_payment(run: af.Run[YinYang, Status], payload: bytes) -> Status:
        run.object.yang = True
        run.object.note = payload.decode()
        return Status.END

    builder.add_callback(Status.MIDDLE, got_payment, to=[Status.END])
    return builder.build(af.MemoryStore())


async def start_gateway(
    nursery: trio.Nursery, *workflows: af.Workflow[Any, Any], **options: Any
) -> str:
    options.setdefault("token", TOKEN)
    port: int = await nursery.start(
        functools.partial(af.serve_gateway, list(workflows), "127.0.0.1", 0, **options)
    )
    return f"ws://127.0.0.1:{port}/"


@pytest.fixture
async def workflow(nursery: trio.Nursery) -> af.Workflow[YinYang, Status]:
    wf = build_workflow()
    await nursery.start(wf.run)
    return wf


@pytest.fixture
async def url(nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]) -> str:
    return await start_gateway(nursery, workflow)


@asynccontextmanager
async def client_at(url: str, token: str | None = TOKEN) -> AsyncIterator[GatewayClient]:
    async with open_gateway_client(url, token=token) as client:
        yield client


@asynccontextmanager
async def raw_at(url: str) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A plain websocket, to send what GatewayClient never would."""
    headers = [(b"authorization", f"Bearer {TOKEN}".encode())]
    async with trio_websocket.open_websocket_url(url, extra_headers=headers) as ws:
        yield ws


async def exchange(ws: trio_websocket.WebSocketConnection, data: str) -> dict[str, Any]:
    await ws.send_message(data)
    reply: dict[str, Any] = json.loads(await ws.get_message())
    return reply


def error_of(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    code: str = reply["error"]["code"]
    assert reply["error"]["message"]
    return code


# -- requests ------------------------------------------------------------------------------


async def test_round_trip(url: str, workflow: af.Workflow[YinYang, Status]) -> None:
    with trio.fail_after(LIMIT):
        async with client_at(url) as client:
            assert await client.workflows() == [
                {
                    "name": "yinyang",
                    "statuses": {"STARTED": 1, "MIDDLE": 2, "END": 3},
                    "start": "STARTED",
                }
            ]
            run_id = await client.trigger("yinyang", "f1")
            middle = await client.await_status("yinyang", "f1", run_id, "MIDDLE")
            assert middle["run_id"] == run_id
            assert (middle["status"], middle["status_name"], middle["run_state"]) == (
                2,
                "MIDDLE",
                "RUNNING",
            )
            assert middle["object"] == {"yin": True, "yang": False, "count": 0, "note": ""}
            assert middle["version"] == 2
            assert middle["meta"]["status_description"] == "MIDDLE"

            done = await client.callback("yinyang", "f1", Status.MIDDLE, b"paid")
            assert done is not None
            assert (done["status_name"], done["run_state"]) == ("END", "COMPLETED")
            assert done["object"]["note"] == "paid"
            assert await client.callback("yinyang", "f1", 2, b"again") is None
            assert (await client.await_status("yinyang", "f1", run_id, 3))["version"] == 3
            # the status was passed long ago: await_status still answers
            assert (await client.await_status("yinyang", "f1", run_id, 1))["version"] == 1

            assert await client.lookup("yinyang", run_id) == done
            assert await client.latest("yinyang", "f1") == done
            assert [r["version"] for r in await client.history("yinyang", run_id)] == [1, 2, 3]
            stored = await workflow.lookup(run_id)
            assert done["updated_at"] == stored.updated_at.isoformat()

            other = await client.trigger("yinyang", "f2", initial={"count": 7})
            await client.await_status("yinyang", "f2", other, Status.MIDDLE)
            assert [r["run_id"] for r in await client.list_runs("yinyang")] == [run_id, other]
            assert [r["run_id"] for r in await client.list_runs("yinyang", status="END")] == [
                run_id
            ]
            assert [
                r["run_id"]
                for r in await client.list_runs("yinyang", run_state=af.RunState.RUNNING)
            ] == [other]
            page = await client.list_runs("yinyang", limit=1, descending=True)
            assert [r["run_id"] for r in page] == [other]
            assert [r["run_id"] for r in await client.list_runs("yinyang", after=run_id)] == [other]

            paused = await client.pause("yinyang", other, "hold on")
            assert (paused["run_state"], paused["meta"]["run_state_reason"]) == (
                "PAUSED",
                "hold on",
            )
            assert (await client.resume("yinyang", other))["run_state"] == "RUNNING"
            cancelled = await client.cancel("yinyang", other, "changed my mind")
            assert cancelled["run_state"] == "CANCELLED"
            assert cancelled["object"]["count"] == 7
            assert (await workflow.lookup(other)).run_state is af.RunState.CANCELLED


async def test_engine_errors_become_codes(url: str) -> None:
    with trio.fail_after(LIMIT):
        async with client_at(url) as client:
            run_id = await client.trigger("yinyang", "f1")
            await client.await_status("yinyang", "f1", run_id, "MIDDLE")

            async def code_of(call: Any) -> str:
                with pytest.raises(af.GatewayError) as info:
                    await call
                return info.value.code

            assert await code_of(client.trigger("yinyang", "f1")) == "in_progress"
            assert await code_of(client.lookup("yinyang", "no-such-run")) == "not_found"
            assert await code_of(client.resume("yinyang", run_id)) == "invalid_transition"
            assert await code_of(client.trigger("nope", "f1")) == "unknown_workflow"
            assert await code_of(client.trigger("yinyang", "f3", start=9)) == "invalid_argument"
            assert await code_of(client.callback("yinyang", "f1", 1, b"")) == "invalid_argument"
            assert await code_of(client.request("explode")) == "unknown_op"
            assert (
                await code_of(client.await_status("yinyang", "f1", run_id, "END", timeout=0.05))
                == "timeout"
            )
            await client.cancel("yinyang", run_id)
            assert (
                await code_of(client.await_status("yinyang", "f1", run_id, "END"))
                == "status_not_reached"
            )
            # initial is structured into the object type with the workflow's converter
            wrong = client.trigger("yinyang", "f4", initial={"count": "many"})
            assert await code_of(wrong) == "invalid_argument"
            assert await code_of(
                client.request("trigger", workflow="yinyang", foreign_id="f4", initial=[1])
            ) == ("invalid_argument")
            with pytest.raises(af.GatewayError) as info:
                await client.trigger("yinyang", "f5", initial={"note": {1, 2}})
            assert info.value.code == "invalid_argument"  # not JSON: refused by the client
            await client.ping()  # the connection survived every refusal


async def test_a_long_await_does_not_block_other_requests(url: str) -> None:
    with trio.fail_after(LIMIT):
        async with client_at(url) as client, trio.open_nursery() as nursery:
            run_id = await client.trigger("yinyang", "f1")
            await client.await_status("yinyang", "f1", run_id, "MIDDLE")
            reached = trio.Event()

            async def wait_for_end() -> None:
                await client.await_status("yinyang", "f1", run_id, "END")
                reached.set()

            nursery.start_soon(wait_for_end)
            await client.ping()
            assert (await client.lookup("yinyang", run_id))["status_name"] == "MIDDLE"
            assert not reached.is_set()
            await client.callback("yinyang", "f1", "MIDDLE", b"paid")
            await reached.wait()


async def test_the_client_hands_back_exceptions_bare_and_obeys_cancellation(url: str) -> None:
    with trio.fail_after(LIMIT):
        with pytest.raises(KeyError, match="mine"):
            async with client_at(url):
                raise KeyError("mine")
        with trio.move_on_after(0.05) as scope:
            async with client_at(url) as client:
                run_id = await client.trigger("yinyang", "f1")
                await client.await_status("yinyang", "f1", run_id, "END")
        assert scope.cancelled_caught


# -- subscriptions -------------------------------------------------------------------------


async def test_subscribe_sees_every_version_in_order(
    url: str, workflow: af.Workflow[YinYang, Status]
) -> None:
    with trio.fail_after(LIMIT):
        async with client_at(url) as client:
            async with (
                client.subscribe("yinyang", foreign_id="f1") as by_foreign,
                client.subscribe("yinyang") as everything,
            ):
                run_id = await client.trigger("yinyang", "f1")
                await client.await_status("yinyang", "f1", run_id, "MIDDLE")
                async with client.subscribe("yinyang", run_id=run_id) as by_run:
                    await client.callback("yinyang", "f1", "MIDDLE", b"paid")
                    other = await client.trigger("yinyang", "f2")
                    await client.await_status("yinyang", "f2", other, "MIDDLE")
                    seen = [await by_foreign.receive() for _ in range(3)]
                    assert [(r["version"], r["status_name"]) for r in seen] == [
                        (1, "STARTED"),
                        (2, "MIDDLE"),
                        (3, "END"),
                    ]
                    history = await workflow.history(run_id)
                    assert [r["updated_at"] for r in seen] == [
                        h.updated_at.isoformat() for h in history
                    ]
                    assert (await by_run.receive())["version"] == 3  # subscribed after 2
                    seen_all = [await everything.receive() for _ in range(5)]
                    assert [(r["foreign_id"], r["version"]) for r in seen_all] == [
                        ("f1", 1),
                        ("f1", 2),
                        ("f1", 3),
                        ("f2", 1),
                        ("f2", 2),
                    ]
            with pytest.raises(af.GatewayError) as info:
                await client.request("subscribe", workflow="yinyang", run_id=5)
            assert info.value.code == "invalid_argument"


async def test_unsubscribe_frees_the_subscription(
    nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]
) -> None:
    url = await start_gateway(nursery, workflow, max_subscriptions=1)
    with trio.fail_after(LIMIT):
        async with client_at(url) as client:
            async with client.subscribe("yinyang"):
                with pytest.raises(af.GatewayError) as info:
                    async with client.subscribe("yinyang"):
                        pass
                assert info.value.code == "busy"
            async with client.subscribe("yinyang") as changes:
                await client.trigger("yinyang", "f1")
                assert (await changes.receive())["version"] == 1


async def test_a_subscriber_that_does_not_read_gets_lagged_and_the_workflow_goes_on(
    nursery: trio.Nursery,
) -> None:
    """The peer stops reading: the gateway keeps a bounded buffer, tells it it lagged, and
    the workflow never waits for it."""
    wf = build_workflow()  # not running: triggered runs stay put, one version each
    url = await start_gateway(nursery, wf, subscription_buffer=4)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    runs, size = 100, 128 * 1024  # 12.5 MiB: more than any socket buffers hold
    with trio.fail_after(LIMIT):
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        async with trio.open_nursery() as client_nursery:
            ws = await trio_websocket.wrap_client_stream(
                client_nursery,
                trio.SocketStream(sock),
                "127.0.0.1",
                "/",
                extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
                max_message_size=1 << 30,
            )
            ack = await exchange(ws, '{"id": "s", "op": "subscribe", "workflow": "yinyang"}')
            assert ack == {"id": "s", "ok": True, "result": {"subscription": "s"}}
            # nobody reads now; every trigger still completes at once
            for index in range(runs):
                await wf.trigger(f"f{index}", initial=YinYang(note="x" * size))
            received: list[int] = []
            while True:
                message = json.loads(await ws.get_message())
                if message.get("event") != "record":
                    break
                received.append(int(message["record"]["foreign_id"][1:]))
            assert message == {"id": "s", "event": "lagged", "missed": True}
            assert received == list(range(len(received)))  # in order, a prefix
            assert len(received) < runs // 2  # bounded: most changes were never queued
            assert await exchange(ws, '{"id": 1, "op": "ping"}') == {
                "id": 1,
                "ok": True,
                "result": "pong",
            }
            await ws.aclose()
            client_nursery.cancel_scope.cancel()


async def test_a_client_that_does_not_iterate_gets_lagged(
    url: str, workflow: af.Workflow[YinYang, Status]
) -> None:
    with trio.fail_after(LIMIT):
        async with client_at(url) as client:
            async with client.subscribe("yinyang", buffer=2) as changes:
                for index in range(4):
                    await client.trigger("yinyang", f"f{index}")
                while not changes.lagged:
                    await client.ping()
                first = [await changes.receive(), await changes.receive()]
                assert [r["foreign_id"] for r in first] == ["f0", "f0"]
                with pytest.raises(af.GatewayError) as info:
                    await changes.receive()
                assert info.value.code == "lagged"
            await client.ping()


# -- protocol errors and limits --------------------------------------------------------------


async def test_malformed_requests_get_error_replies_and_the_connection_lives(url: str) -> None:
    with trio.fail_after(LIMIT):
        async with raw_at(url) as ws:
            reply = await exchange(ws, "{not json")
            assert (reply["id"], error_of(reply)) == (None, "bad_json")
            reply = await exchange(ws, '"just a string"')
            assert (reply["id"], error_of(reply)) == (None, "invalid_argument")
            reply = await exchange(ws, '{"id": 1, "op": "fly"}')
            assert (reply["id"], error_of(reply)) == (1, "unknown_op")
            reply = await exchange(
                ws, '{"id": 2, "op": "lookup", "workflow": "yinyang", "run_id": 7}'
            )
            assert (reply["id"], error_of(reply)) == (2, "invalid_argument")
            reply = await exchange(
                ws, '{"id": 3, "op": "lookup", "workflow": "nope", "run_id": "r"}'
            )
            assert (reply["id"], error_of(reply)) == (3, "unknown_workflow")
            reply = await exchange(
                ws,
                '{"id": 4, "op": "callback", "workflow": "yinyang", "foreign_id": "f", '
                '"status": 2, "payload": "not base64!"}',
            )
            assert (reply["id"], error_of(reply)) == (4, "invalid_argument")
            await ws.send_message(b'{"id": "b", "op": "ping"}')  # binary frames work too
            assert json.loads(await ws.get_message()) == {"id": "b", "ok": True, "result": "pong"}


async def test_deeply_nested_json_gets_bad_json_and_the_connection_lives(url: str) -> None:
    depth = 200_000  # under the size limit, far over Python's recursion limit
    with trio.fail_after(LIMIT):
        async with raw_at(url) as ws:
            reply = await exchange(ws, "[" * depth + "]" * depth)
            assert (reply["id"], error_of(reply)) == (None, "bad_json")
            assert await exchange(ws, '{"id": 1, "op": "ping"}') == {
                "id": 1,
                "ok": True,
                "result": "pong",
            }


async def test_request_ids_and_in_flight_requests_are_bounded(
    nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]
) -> None:
    url = await start_gateway(nursery, workflow, max_in_flight=2)
    run_id = await workflow.trigger("f1")

    def wait(request_id: int) -> str:
        return json.dumps(
            {
                "id": request_id,
                "op": "await_status",
                "workflow": "yinyang",
                "foreign_id": "f1",
                "run_id": run_id,
                "status": "END",
            }
        )

    with trio.fail_after(LIMIT):
        async with raw_at(url) as ws:
            await ws.send_message(wait(1))
            reply = await exchange(ws, wait(1))
            assert (reply["id"], error_of(reply)) == (1, "invalid_argument")  # id in use
            await ws.send_message(wait(2))
            reply = await exchange(ws, wait(3))
            assert (reply["id"], error_of(reply)) == (3, "busy")
            assert await exchange(ws, '{"id": 4, "op": "abort", "request": 1}') == {
                "id": 4,
                "ok": True,
                "result": True,
            }
            await ws.send_message(wait(3))  # the aborted request's slot is free
            await workflow.callback("f1", Status.MIDDLE, b"paid")
            replies = [json.loads(await ws.get_message()) for _ in range(2)]
            assert sorted((r["id"], r["result"]["status_name"]) for r in replies) == [
                (2, "END"),
                (3, "END"),
            ]


async def test_a_cancelled_client_call_frees_its_server_slot(
    nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]
) -> None:
    url = await start_gateway(nursery, workflow, max_in_flight=1)
    with trio.fail_after(LIMIT):
        async with client_at(url) as client:
            run_id = await client.trigger("yinyang", "f1")
            with trio.move_on_after(0.05):
                await client.await_status("yinyang", "f1", run_id, "END")
            # the abort went out first, so this request finds the slot free
            assert (await client.await_status("yinyang", "f1", run_id, "MIDDLE"))["version"] == 2


async def test_rate_limit(nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]) -> None:
    url = await start_gateway(nursery, workflow, rate=0.5, burst=3)
    with trio.fail_after(LIMIT):
        async with client_at(url) as client:
            for _ in range(3):
                await client.ping()
            with pytest.raises(af.GatewayError) as info:
                await client.ping()
            assert info.value.code == "rate_limited"


async def test_malformed_messages_count_against_the_rate_limit(
    nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]
) -> None:
    url = await start_gateway(nursery, workflow, rate=0.5, burst=3)
    with trio.fail_after(LIMIT):
        async with raw_at(url) as ws:
            for _ in range(3):
                assert error_of(await exchange(ws, "{not json")) == "bad_json"
            reply = await exchange(ws, '{"id": 9, "op": "ping"}')
            assert (reply["id"], error_of(reply)) == (9, "rate_limited")
        async with raw_at(url) as ws:
            for n in range(3):
                assert (await exchange(ws, f'{{"id": {n}, "op": "ping"}}'))["ok"]
            for bad in ("{not json", '"a string"', '{"id": 5, "op": "fly"}'):
                reply = await exchange(ws, bad)
                assert error_of(reply) == "rate_limited", bad  # not served past the limit
            assert reply["id"] == 5


async def test_an_oversized_frame_closes_that_connection_only(
    nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]
) -> None:
    url = await start_gateway(nursery, workflow, max_message_bytes=64 * 1024)
    with trio.fail_after(LIMIT):
        async with client_at(url) as bystander:
            async with raw_at(url) as ws:
                await ws.send_message(json.dumps({"id": 1, "op": "ping", "pad": "x" * 200_000}))
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason is not None
                assert closed.value.reason.code == 1009
            async with client_at(url) as client:
                with pytest.raises(af.GatewayError) as info:
                    await client.request("ping", pad="x" * 200_000)
                assert info.value.code == "too_large"
                with pytest.raises(af.GatewayError) as info:
                    await client.ping()
                assert info.value.code == "too_large"  # the connection is gone
            await bystander.ping()
            async with client_at(url) as client:
                await client.ping()


async def test_connections_are_bounded(
    nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]
) -> None:
    url = await start_gateway(nursery, workflow, max_connections=1)
    with trio.fail_after(LIMIT):
        async with client_at(url) as client:
            with pytest.raises(af.GatewayError) as info:
                async with client_at(url):
                    pass
            assert info.value.code == "busy"
            await client.ping()
        await trio.testing.wait_all_tasks_blocked(0.01)  # the server let the first one go
        async with client_at(url) as client:
            await client.ping()


async def test_idle_connections_in_their_handshake_cannot_lock_clients_out(
    nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]
) -> None:
    """Slowloris: TCP connections that never send a handshake neither count toward
    max_connections nor hold handshake slots for handshake_timeout: past max_handshakes the
    oldest pending one that sent nothing is refused (HTTP 503)."""
    url = await start_gateway(
        nursery, workflow, max_connections=2, max_handshakes=4, handshake_timeout=60
    )
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with trio.fail_after(LIMIT):
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(10)]
        async with client_at(url) as first, client_at(url) as second:
            await first.ping()
            await second.ping()
            with pytest.raises(af.GatewayError) as info:
                async with client_at(url):
                    pass
            assert info.value.code == "busy"  # max_connections counts accepted ones only
        # The oldest idle connections were refused, explicitly.
        assert (await idle[0].receive_some(4096)).startswith(b"HTTP/1.1 503 ")
        for stream in idle:
            await stream.aclose()


# -- tokens --------------------------------------------------------------------------------


async def test_a_wrong_or_missing_token_is_refused_at_the_handshake(url: str) -> None:
    with trio.fail_after(LIMIT):
        for token, status in (("wrong", "403"), (None, "401")):
            with pytest.raises(af.GatewayError) as info:
                async with client_at(url, token=token):
                    pass
            assert info.value.code == "unauthorized"
            assert status in str(info.value)
        with pytest.raises(af.GatewayError) as info:
            async with client_at(url + "?token=wrong", token=None):
                pass
        assert info.value.code == "unauthorized"


async def test_a_token_query_parameter_is_accepted(url: str) -> None:
    with trio.fail_after(LIMIT):
        async with client_at(url + f"?token={TOKEN}", token=None) as client:
            await client.ping()
        async with trio_websocket.open_websocket_url(url + f"?token={TOKEN}") as ws:
            assert (await exchange(ws, '{"id": 1, "op": "ping"}'))["ok"] is True


async def test_no_token_configured_lets_everyone_in(
    nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]
) -> None:
    url = await start_gateway(nursery, workflow, token=None)
    with trio.fail_after(LIMIT):
        async with client_at(url, token=None) as client:
            await client.ping()


async def test_without_a_token_browser_pages_of_other_sites_are_refused(
    nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]
) -> None:
    """A tokenless gateway on 127.0.0.1 trusts whoever reaches it, and a browser lets any
    site's page open a websocket to it: a handshake whose Origin is not this machine's
    loopback name is refused (403), and does not count against the address's refusals.
    With a token the origin does not matter (a page of another site cannot know it)."""
    tokenless = await start_gateway(nursery, workflow, token=None)
    with trio.fail_after(LIMIT):
        for origin in (
            b"https://evil.example",
            b"http://127.0.0.1.evil.example:8765",
            b"null",
            b"http://\xff",
        ):
            for _ in range(12):  # past the refusals allowed per address
                with pytest.raises(trio_websocket.ConnectionRejected) as info:
                    async with trio_websocket.open_websocket_url(
                        tokenless, extra_headers=[(b"origin", origin)]
                    ):
                        pass
                assert info.value.status_code == 403
                assert b"Origin" in (info.value.body or b"")
        for origin in (b"http://localhost:3000", b"http://127.0.0.1:8080", b"http://[::1]"):
            async with trio_websocket.open_websocket_url(
                tokenless, extra_headers=[(b"origin", origin)]
            ) as ws:
                assert (await exchange(ws, '{"id": 1, "op": "ping"}'))["ok"] is True
        async with client_at(tokenless, token=None) as client:  # no Origin: not a browser
            await client.ping()
        with_token = await start_gateway(nursery, workflow)
        async with trio_websocket.open_websocket_url(
            with_token + f"?token={TOKEN}", extra_headers=[(b"origin", b"https://app.example")]
        ) as ws:
            assert (await exchange(ws, '{"id": 1, "op": "ping"}'))["ok"] is True


async def test_an_internal_error_of_actorflow_keeps_its_message(nursery: trio.Nursery) -> None:
    """A workflow on a MemoryStore that is not running: nothing can ever answer a callback
    or an await, and actorflow says so in its error. The gateway's reply keeps that
    message (it said only "internal error (ActorflowError)")."""
    workflow = build_workflow()  # on a MemoryStore, and not started
    url = await start_gateway(nursery, workflow, token=None)
    run_id = await workflow.trigger("idle")
    with trio.fail_after(LIMIT):
        async with client_at(url, token=None) as client:
            for op, args in (
                ("callback", {"foreign_id": "idle", "status": "MIDDLE", "payload": "eA=="}),
                ("await_status", {"foreign_id": "idle", "run_id": run_id, "status": "MIDDLE"}),
            ):
                with pytest.raises(af.GatewayError) as info:
                    await client.request(op, workflow="yinyang", **args)
                assert info.value.code == "internal"
                assert "is not running in this process" in str(info.value), info.value


# -- disconnects and robustness ------------------------------------------------------------


async def raw_handshake(port: int) -> trio.SocketStream:
    """A websocket handshake by hand, so the test can reset the TCP connection."""
    return await handshake_on(await trio.open_tcp_stream("127.0.0.1", port))


async def handshake_on(
    stream: trio.SocketStream, path: str = "/", host: str = "127.0.0.1", token: str | None = TOKEN
) -> trio.SocketStream:
    """A websocket handshake by hand on ``stream`` (a socket set up by the test)."""
    key = base64.b64encode(os.urandom(16)).decode()
    credential = "" if token is None else f"Authorization: Bearer {token}\r\n"
    await stream.send_all(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{credential}\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += await stream.receive_some(4096)
    assert response.startswith(b"HTTP/1.1 101"), response
    return stream


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 65536
    if len(payload) < 126:
        header = bytes([0x81, 0x80 | len(payload)])
    else:
        header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    return header + b"\0\0\0\0" + payload  # a zero mask leaves the payload as it is


async def reset(stream: trio.SocketStream) -> None:
    """Close with a TCP reset: the abrupt end of a crashed or unplugged peer."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def test_an_abrupt_disconnect_mid_await_does_not_hurt_the_server(
    url: str, workflow: af.Workflow[YinYang, Status]
) -> None:
    port = int(url.rsplit(":", 1)[1].strip("/"))
    run_id = await workflow.trigger("f1")
    with trio.fail_after(LIMIT):
        await workflow.await_status("f1", run_id, Status.MIDDLE)
        stream = await raw_handshake(port)
        await stream.send_all(
            masked_text_frame(
                json.dumps(
                    {
                        "id": 1,
                        "op": "await_status",
                        "workflow": "yinyang",
                        "foreign_id": "f1",
                        "run_id": run_id,
                        "status": 3,
                    }
                )
            )
            + masked_text_frame('{"id": 2, "op": "ping"}')
        )
        received = b""
        while b"pong" not in received:  # requests are dispatched in order: 1 is waiting
            received += await stream.receive_some(4096)
        feed = workflow.store.feed
        assert run_id in feed._by_run
        await reset(stream)
        while run_id in feed._by_run:  # the gateway's waiter is cancelled and unsubscribed
            await trio.testing.wait_all_tasks_blocked(0.01)
        async with client_at(url) as client:
            done = await client.callback("yinyang", "f1", 2, b"paid")
            assert done is not None and done["status_name"] == "END"


async def test_garbage_handshakes_that_reset_do_not_take_the_server_down(url: str) -> None:
    """trio-websocket's own reader task raises when it cannot answer a bad handshake;
    with serve_websocket that ends the whole server. Ours contains it."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with trio.fail_after(LIMIT):
        for _ in range(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GARBAGE\x00\x01 HTTP/9\r\n\r\n")
            await reset(stream)
        await trio.testing.wait_all_tasks_blocked(0.05)
        async with client_at(url) as client:
            await client.ping()


async def test_pending_requests_fail_when_the_gateway_goes_away(
    nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]
) -> None:
    server = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[int]) -> None:
        with server:
            await af.serve_gateway([workflow], token=TOKEN, task_status=task_status)

    port = await nursery.start(serve)
    closed_error = pytest.RaisesExc(af.GatewayError, check=lambda e: e.code == "connection_closed")
    with trio.fail_after(LIMIT):
        async with client_at(f"ws://127.0.0.1:{port}/") as client:
            run_id = await client.trigger("yinyang", "f1")
            async with client.subscribe("yinyang", run_id=run_id) as changes:
                with pytest.RaisesGroup(closed_error):
                    async with trio.open_nursery() as waiting:
                        waiting.start_soon(client.await_status, "yinyang", "f1", run_id, "END")
                        await trio.testing.wait_all_tasks_blocked()
                        await client.ping()  # sent after the await, so that is in flight
                        server.cancel()
                with pytest.raises(af.GatewayError) as sub_info:
                    while True:
                        await changes.receive()
                assert sub_info.value.code == "connection_closed"
            with pytest.raises(af.GatewayError) as closed:
                await client.ping()
            assert closed.value.code == "connection_closed"


async def test_serve_gateway_checks_its_arguments() -> None:
    wf = build_workflow()
    with pytest.raises(af.InvalidArgument, match="at least one"):
        await af.serve_gateway([])
    with pytest.raises(af.InvalidArgument, match="two workflows"):
        await af.serve_gateway([wf, wf])
    with pytest.raises(af.InvalidArgument, match="rate"):
        await af.serve_gateway([wf], rate=0)
    with pytest.raises(af.InvalidArgument, match="token"):
        await af.serve_gateway([wf], token="")
    with pytest.raises(af.InvalidArgument, match="max_handshakes"):
        await af.serve_gateway([wf], max_handshakes=0)


async def test_cannot_connect_is_a_gateway_error() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    with trio.fail_after(LIMIT), pytest.raises(af.GatewayError) as info:
        async with client_at(f"ws://127.0.0.1:{port}/"):
            pass
    assert info.value.code == "connection_failed"


def test_public_exports() -> None:
    assert af.serve_gateway is af.gateway.serve_gateway
    assert af.open_gateway_client is af.gateway.open_gateway_client


# -- what the web console reads: filters, counts, timers, descriptions; read-only tokens ---


async def test_list_and_count_runs_with_the_console_filters(url: str) -> None:
    with trio.fail_after(LIMIT):
        async with client_at(url) as client:
            ids = {}
            for foreign_id in ("order-1", "order-2", "refund-1"):
                ids[foreign_id] = await client.trigger("yinyang", foreign_id)
                await client.await_status("yinyang", foreign_id, ids[foreign_id], "MIDDLE")
            await client.pause("yinyang", ids["order-2"], "check the address")
            listed = await client.list_runs("yinyang", foreign_id_prefix="order-")
            assert [r["foreign_id"] for r in listed] == ["order-1", "order-2"]
            listed = await client.list_runs("yinyang", foreign_id=["refund-1", "order-1"])
            assert [r["foreign_id"] for r in listed] == ["order-1", "refund-1"]
            first = listed[0]["created_at"]
            after = await client.request(
                "list_runs", workflow="yinyang", created_after=first, descending=True
            )
            assert [r["foreign_id"] for r in after] == ["refund-1", "order-2", "order-1"]
            before = await client.list_runs("yinyang", created_before=datetime.fromisoformat(first))
            assert before == []
            counts = await client.count_runs("yinyang")
            assert counts["total"] == 3
            assert counts["by_status"] == {"MIDDLE": 3}
            assert counts["by_run_state"] == {"RUNNING": 2, "PAUSED": 1}
            assert sorted(counts["by_status_and_run_state"]) == [
                ["MIDDLE", "PAUSED", 1],
                ["MIDDLE", "RUNNING", 2],
            ]
            paused = await client.count_runs("yinyang", run_state="PAUSED")
            assert paused["total"] == 1
            for bad in ({"created_after": "yesterday"}, {"created_after": "2026-01-01T00:00"}):
                with pytest.raises(af.GatewayError) as info:
                    await client.request("list_runs", workflow="yinyang", **bad)
                assert info.value.code == "invalid_argument"


async def test_describe_timers_and_delete_data(nursery: trio.Nursery) -> None:
    builder = af.Builder("timed", YinYang, Status)

    @builder.step(Status.STARTED, to=Status.MIDDLE)
    async def start(run: af.Run[YinYang, Status]) -> Status:
        return Status.MIDDLE

    async def expire(run: af.Run[YinYang, Status], now: Any) -> Status:
        return Status.END

    builder.add_timeout(Status.MIDDLE, af.after(timedelta(hours=1)), expire, to=[Status.END])
    timed = builder.build(af.MemoryStore())
    await nursery.start(timed.run)
    url = await start_gateway(nursery, timed)
    with trio.fail_after(LIMIT):
        async with client_at(url) as client:
            described = await client.describe("timed")
            assert described["starts"] == ["STARTED"]
            assert described["timeouts"] == ["MIDDLE"]
            assert described["callbacks"] == []
            assert described["terminal"] == ["END"]
            assert described["graph"] == timed.graph()
            assert described["object_type"] == "YinYang"
            assert described["initial"] == {"yin": False, "yang": False, "count": 0, "note": ""}
            run_id = await client.trigger("timed", "t1")
            await client.await_status("timed", "t1", run_id, "MIDDLE")
            states = await client.request("states", workflow="timed")
            assert states["timers"] == {"state": "running"}
            assert set(states) == set(timed.states())
            timers = await client.timers("timed", run_id)
            assert [(t["status_name"], t["kind"]) for t in timers] == [("MIDDLE", "timeout:0")]
            due = datetime.fromisoformat(timers[0]["fire_at"])
            assert due - datetime.now(UTC) > timedelta(minutes=59)
            with pytest.raises(af.GatewayError) as info:
                await client.timers("timed", "no-such-run")
            assert info.value.code == "not_found"
            with pytest.raises(af.GatewayError) as info:
                await client.delete_data("timed", run_id)
            assert info.value.code == "invalid_transition"
            await client.cancel("timed", run_id, "not needed")
            deleted = await client.delete_data("timed", run_id, "customer asked")
            assert deleted["run_state"] == "DATA_DELETED"
            assert await client.timers("timed", run_id) == []


async def test_a_read_only_token_may_look_but_not_steer(
    nursery: trio.Nursery, workflow: af.Workflow[YinYang, Status]
) -> None:
    url = await start_gateway(nursery, workflow, read_only_token="peek")
    with trio.fail_after(LIMIT):
        async with client_at(url) as client:
            run_id = await client.trigger("yinyang", "f1")
            await client.await_status("yinyang", "f1", run_id, "MIDDLE")
        async with client_at(url, token="peek") as looker:
            assert (await looker.lookup("yinyang", run_id))["status_name"] == "MIDDLE"
            assert len(await looker.history("yinyang", run_id)) == 2
            assert (await looker.count_runs("yinyang"))["total"] == 1
            refused = [
                looker.trigger("yinyang", "f2"),
                looker.callback("yinyang", "f1", "MIDDLE", b"x"),
                looker.pause("yinyang", run_id),
                looker.resume("yinyang", run_id),
                looker.cancel("yinyang", run_id),
                looker.delete_data("yinyang", run_id),
            ]
            for call in refused:
                with pytest.raises(af.GatewayError) as info:
                    await call
                assert info.value.code == "forbidden"
            async with looker.subscribe("yinyang", run_id=run_id):
                pass
        assert (await workflow.lookup(run_id)).run_state is af.RunState.RUNNING
        with pytest.raises(af.GatewayError) as info:
            async with client_at(url, token="nope"):
                pass
        assert info.value.code == "unauthorized"
    with pytest.raises(af.InvalidArgument, match="needs token"):
        await nursery.start(functools.partial(af.serve_gateway, [workflow], read_only_token="peek"))
    with pytest.raises(af.InvalidArgument, match="differ"):
        await nursery.start(
            functools.partial(af.serve_gateway, [workflow], token="a", read_only_token="a")
        )
