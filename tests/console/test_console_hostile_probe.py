"""A hostile probe of the web console's websocket: a page that stops reading.

Defect this probe found (the test below failed before its fix): hypercorn writes to a
socket shielded from cancellation, so a websocket client that stopped reading (its window
closed, a stuck tab, a vanished peer with data in flight) held its connection for ever,
and cancelling ``serve_console`` waited for it for ever: the console never stopped. Now
the console's sockets end a connection whose data stays unread for ``STALL_TIMEOUT``
(``TCP_USER_TIMEOUT``), and hypercorn pings idle websockets so that a vanished peer has
data in flight too.
"""

from __future__ import annotations

import functools
import json
import socket
import struct
import sys
from typing import Any

import pytest
import trio

import actorflow as af
import actorflow.console._server
from actorflow._observe import live_gateways
from tests.gateway.test_gateway import handshake_on
from tests.gateway.test_gateway_probe import Ticket, build, until

LIMIT = 20.0

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="TCP_USER_TIMEOUT is Linux's"
)


async def stalled_websocket(port: int) -> trio.SocketStream:
    """A websocket to the console's ``/ws`` that subscribes to every change and never reads
    (a small receive buffer: what it leaves unread soon fills the console's socket)."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = await handshake_on(
        trio.SocketStream(sock), "/ws", host=f"127.0.0.1:{port}", token=None
    )
    payload = json.dumps({"id": 1, "op": "subscribe", "workflow": "tickets"}).encode()
    await stream.send_all(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
    return stream


def reset(stream: trio.SocketStream) -> None:
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def test_a_websocket_that_stops_reading_is_dropped_and_the_console_stops(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actorflow.console._server, "STALL_TIMEOUT", 1.0, raising=False)
    wf = build()
    await nursery.start(wf.run)
    stalled: list[trio.SocketStream] = []
    fired = trio.Event()

    async def watchdog() -> None:
        """Before the fix, only ending the clients let the console's shielded send end:
        the test then fails instead of hanging."""
        await trio.sleep(LIMIT)
        fired.set()
        for stream in stalled:
            reset(stream)

    async with trio.open_nursery() as guard:
        guard.start_soon(watchdog)
        async with trio.open_nursery() as console:
            port = await console.start(functools.partial(af.serve_console, [wf], "127.0.0.1", 0))
            gateway: Any = next(g for g in list(live_gateways) if wf in g.workflows.values())
            stalled.append(await stalled_websocket(port))
            await until(lambda: gateway.connections == 1 or fired.is_set())
            for n in range(300):  # ~12 MB of changes for it, far over the buffers
                await wf.trigger(f"t{n}", initial=Ticket(note="s" * 40_000))
            # the console drops it (its connection ends) without being asked
            await until(lambda: gateway.connections == 0 or fired.is_set())
            assert not fired.is_set(), "the console kept a websocket that reads nothing"
            # and stops at once when cancelled with another such websocket connected
            stalled.append(await stalled_websocket(port))
            await until(lambda: gateway.connections == 1 or fired.is_set())
            for n in range(300, 600):
                await wf.trigger(f"t{n}", initial=Ticket(note="s" * 40_000))
            console.cancel_scope.cancel()
        assert not fired.is_set(), "the console did not stop: a websocket read nothing"
        guard.cancel_scope.cancel()
    for stream in stalled:
        reset(stream)
