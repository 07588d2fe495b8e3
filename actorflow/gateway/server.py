"""``serve_gateway``: workflows served over a websocket (trio-websocket).

Accepting connections: handshakes (tokens, limits, shedding idle ones), then one
:class:`~actorflow.gateway.connection.Connection` per websocket. Every connection
runs under a guard that logs and contains what goes wrong in it: trio-websocket 0.12.2
lets an exception in a connection (its own reader task included) take the whole server
down, so we accept connections ourselves (``trio.serve_listeners`` and
``trio_websocket.wrap_server_stream``) rather than through ``serve_websocket``.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable
from contextlib import suppress
from typing import Any, Final, final

import attrs
import trio
import trio_websocket

from actorflow._model.errors import InvalidArgument
from actorflow._observe import live_gateways
from actorflow.gateway.access import Access, RefusalLimiter, check_access
from actorflow.gateway.connection import Connection as Connection
from actorflow.gateway.connection import RecordTexts
from actorflow.gateway.settings import GatewaySettings as GatewaySettings
from actorflow.workflow import Workflow

log = logging.getLogger(__name__)

LINGER_SECONDS: Final = 1.0
"""After closing a connection for a too-large message, how long we read and drop what the
peer still sends, so it gets our close frame rather than a TCP reset."""
MESSAGE_TOO_BIG: Final = 1009
PROTOCOL_ERRORS: Final = frozenset({1002, 1007, 1009})
"""Close codes of wsproto's parse failures (protocol error, invalid UTF-8, too big)."""
CLOSE_FRAME_START: Final = b"\x88"
SEND_CHUNK: Final = 1 << 16
"""Larger writes go out in pieces of this size, each noted as progress of the peer."""
MAX_CLOSE_REASON: Final = 120


async def serve_gateway(
    workflows: Iterable[Workflow[Any, Any]],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | None = None,
    read_only_token: str | None = None,
    max_message_bytes: int = 1 << 20,
    rate: float = 100.0,
    burst: int = 200,
    max_in_flight: int = 64,
    max_subscriptions: int = 64,
    subscription_buffer: int = 256,
    handshake_timeout: float = 10.0,
    max_connections: int = 1024,
    max_handshakes: int = 1024,
    max_refused_handshakes: int = 10,
    refused_handshake_window: float = 60.0,
    max_reply_bytes: int = 16 << 20,
    ping_interval: float = 30.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``workflows`` over a websocket until cancelled; use with ``nursery.start``.

    The started value is the bound port (``port=0`` picks a free one). The protocol is in
    docs/gateway.md.

    Args:
        workflows: the workflows to serve, addressed by their names.
        host: the address to bind; the default only accepts local connections.
        port: the port to bind, 0 for any free one.
        token: when set, a handshake must carry exactly one credential,
            ``Authorization: Bearer <token>`` or a ``token`` query parameter; others are
            refused with HTTP 401 (none), 403 (wrong) or 400 (several).
        read_only_token: a second token whose connections may read and subscribe but
            not steer: trigger, callback, pause, resume, cancel and delete_data are
            answered with ``forbidden``. Needs ``token``.
        max_message_bytes: larger incoming messages close the connection (code 1009).
        rate: incoming messages per second allowed per connection, on average.
        burst: how many messages a connection may send at once above ``rate``.
        max_in_flight: requests served at once per connection; more get ``busy``.
        max_subscriptions: subscriptions per connection; more get ``busy``.
        subscription_buffer: changes buffered per subscription before it is ``lagged``.
        handshake_timeout: seconds a new connection has to complete its handshake.
        max_connections: accepted connections served at once; more are refused with HTTP
            503. Connections still in their handshake do not count.
        max_handshakes: connections still in their handshake (not yet authenticated).
            When a new one would exceed it, the oldest pending one that has sent nothing
            is refused (HTTP 503) to make room, or else the newcomer is.
        max_refused_handshakes: refused handshakes (400/401/403) one peer address may
            have at once; past them, its handshakes get HTTP 429 without a look at their
            credential until ``refused_handshake_window`` lets one more through.
        refused_handshake_window: seconds in which an address regains all of its
            ``max_refused_handshakes`` (one every ``window / max`` seconds).
        max_reply_bytes: a reply or subscription event larger than this (in UTF-8) is
            not sent; the request gets a ``too_large`` error, the subscription ends with
            a ``too_large`` error event.
        ping_interval: a connection from which nothing came for this many seconds is
            pinged; one that shows no life for twice as long (no pong, no byte, no piece
            of a long reply taken: a vanished peer, a client that stopped reading) is
            closed.

    Raises:
        InvalidArgument: no workflows, two with one name, or an unusable setting.
        OSError: the address cannot be bound.
    """
    served = served_by_name(workflows)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        # trio would bind port % 65536 (70000: 4464) or fail deep in getaddrinfo
        raise InvalidArgument(f"port must be an int from 0 to 65535, not {port!r}")
    if not isinstance(host, str) or not host:
        raise InvalidArgument(f"host must be a non-empty string, not {host!r}")
    settings = GatewaySettings(
        token=token,
        max_message_bytes=max_message_bytes,
        rate=rate,
        burst=burst,
        max_in_flight=max_in_flight,
        max_subscriptions=max_subscriptions,
        subscription_buffer=subscription_buffer,
        handshake_timeout=handshake_timeout,
        max_connections=max_connections,
        max_handshakes=max_handshakes,
        max_refused_handshakes=max_refused_handshakes,
        refused_handshake_window=refused_handshake_window,
        read_only_token=read_only_token,
        max_reply_bytes=max_reply_bytes,
        ping_interval=ping_interval,
    )
    settings.check()
    gateway = Gateway(served, settings)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, gateway.handle_stream, listeners)
        log.info("gateway serving %s on %s:%d", ", ".join(served), host, bound)
        task_status.started(bound)


def served_by_name(
    workflows: Iterable[Workflow[Any, Any]], server: str = "serve_gateway"
) -> dict[str, Workflow[Any, Any]]:
    """The workflows to serve by name (the gateway's, the console's). Raises
    InvalidArgument, naming ``server``, for none, a non-workflow, or two with one name."""
    if isinstance(workflows, Workflow) or not isinstance(workflows, Iterable):
        raise InvalidArgument(
            f"{server} takes a list of workflows ([workflow, ...]), not {workflows!r:.100}"
        )
    served: dict[str, Workflow[Any, Any]] = {}
    for workflow in workflows:
        if not isinstance(workflow, Workflow):
            raise InvalidArgument(f"{server} serves Workflow objects, not {workflow!r}")
        if workflow.name in served:
            raise InvalidArgument(f"{server} got two workflows named {workflow.name!r}")
        served[workflow.name] = workflow
    if not served:
        raise InvalidArgument(f"{server} needs at least one workflow")
    return served


@final
class _PeerStream(trio.abc.HalfCloseableStream):
    """One TCP connection as trio-websocket sees it, with four additions.

    It notes whether the peer has sent anything (a pending handshake that sent nothing is
    the first to be shed) and when it last showed life (bytes from it, or a piece of a
    long write taken: the keep-alive closes connections that show none); it holds back
    the bytes that follow the handshake's request head until the handshake is accepted
    (frames a client sent without waiting for our answer: trio-websocket 0.12.2 would
    leave them unread until more came); and when trio-websocket ends a connection for a
    frame that breaks the protocol (wsproto: invalid UTF-8 in a text frame is 1007), it
    sends the close frame with that code before closing the TCP connection:
    trio-websocket 0.12.2 closes such connections without one, so the peer would only
    see 1006.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.received = False
        self.progress = trio.current_time()
        """When the peer last showed life: bytes from it, or a piece of a long write taken."""
        self.ws: trio_websocket.WebSocketConnection | None = None
        self._sent_close = False
        self.accepted = trio.Event()
        """Set once the handshake is accepted: the bytes after it may be read then."""
        self._head_read = False
        self._tail = b""
        self._held = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data[:1]) == CLOSE_FRAME_START:  # the server's frames are sent whole
            self._sent_close = True
        if len(data) <= SEND_CHUNK:
            await self.stream.send_all(data)
            return
        # A long message to a slow reader: each piece it takes shows it is alive.
        view = memoryview(data)
        for start in range(0, len(view), SEND_CHUNK):
            await self.stream.send_all(view[start : start + SEND_CHUNK])
            self.progress = trio.current_time()

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._held:
            # Frames a client sent along with its handshake, before our answer (a client
            # should wait for it; some do not). Read before the accept, they would sit in
            # wsproto's handshake, unread until the client sent more.
            await self.accepted.wait()
            size = len(self._held) if max_bytes is None else max_bytes
            data, self._held = self._held[:size], self._held[size:]
            return data
        data = await self.stream.receive_some(max_bytes)
        if data:
            self.received = True
            self.progress = trio.current_time()
            if not self._head_read:
                data = self._split_head(bytes(data))
        return data

    def _split_head(self, data: bytes) -> bytes:
        """``data`` up to the end of the handshake's request head; the rest is held."""
        window = self._tail + data
        end = window.find(b"\r\n\r\n")
        if end < 0:
            self._tail = window[-3:]
            return data
        self._head_read = True
        cut = end + 4 - len(self._tail)
        data, self._held = data[:cut], data[cut:]
        return data

    def sent_nothing(self) -> bool:
        """True while the peer has sent no byte (read by us or waiting in the kernel)."""
        return not self.received and _bytes_waiting(self.stream) == 0

    async def aclose(self) -> None:
        ws = self.ws
        reason = None if ws is None else ws.closed
        if reason is not None and reason.code in PROTOCOL_ERRORS and not self._sent_close:
            self._sent_close = True
            detail = (reason.reason or "").encode("utf-8", "replace")[:MAX_CLOSE_REASON]
            frame = bytes([0x88, 2 + len(detail)]) + reason.code.to_bytes(2, "big") + detail
            with (
                trio.move_on_after(LINGER_SECONDS),
                suppress(
                    trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError
                ),
            ):
                await self.stream.send_all(frame)
        await self.stream.aclose()


def _bytes_waiting(stream: trio.SocketStream) -> int:
    """Bytes received by the kernel and not read yet (0 where that cannot be asked)."""
    try:
        import fcntl
        import termios

        answer = fcntl.ioctl(stream.socket.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (ImportError, OSError, ValueError):
        return 0
    return int.from_bytes(answer, sys.byteorder)


@final
@attrs.define(eq=False)
class _Handshake:
    """A connection still in its handshake."""

    peer: _PeerStream
    scope: trio.CancelScope
    shed: bool = False


@final
class Gateway:
    """What all connections share: the workflows, the settings and the counters."""

    def __init__(self, workflows: dict[str, Workflow[Any, Any]], settings: GatewaySettings):
        self.workflows = workflows
        self.settings = settings
        self.connections = 0
        """Accepted websocket connections being served."""
        self.handshakes: dict[_Handshake, None] = {}
        """Connections still in their handshake, oldest first."""
        self.shed = 0
        """Handshakes refused with HTTP 503 because max_handshakes were pending."""
        self.refusals = RefusalLimiter(
            settings.max_refused_handshakes, settings.refused_handshake_window
        )
        self.subscriptions = 0
        """Live subscriptions over all connections (a metric)."""
        self.record_texts = RecordTexts()
        """Encoded records shared by the subscriptions of all connections."""
        live_gateways.add(self)

    async def handle_stream(self, stream: trio.SocketStream) -> None:
        """Serve one TCP connection; nothing that goes wrong in it escapes."""
        try:
            await self._serve_stream(stream)
        except* (
            trio_websocket.ConnectionClosed,
            trio_websocket.HandshakeError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
        ) as group:
            log.debug("gateway connection ended abruptly: %r", group.exceptions)
        except* Exception as group:
            log.error("gateway connection failed", exc_info=group)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        peer = _PeerStream(stream)
        address = str(stream.socket.getpeername()[0])
        ws: trio_websocket.WebSocketConnection | None = None
        handshake = self._admit(peer)
        if handshake is None:
            await _refuse(stream, 503, b"the gateway is busy with handshakes; try again\n")
            return
        async with trio.open_nursery() as nursery:
            try:
                accepted = await self._handshake(nursery, handshake, address)
                if accepted is not None:
                    ws, read_only = accepted
                    peer.ws = ws
                    peer.accepted.set()
                    try:
                        await self._serve_connection(peer, ws, read_only)
                    finally:
                        self.connections -= 1  # counted by _accept
            finally:
                nursery.cancel_scope.cancel()
        if handshake.shed:
            await _refuse(stream, 503, b"the gateway is busy with handshakes; try again\n")
        elif ws is not None and ws.closed is not None and ws.closed.code == MESSAGE_TOO_BIG:
            await _linger(stream)

    async def _serve_connection(
        self, peer: _PeerStream, ws: trio_websocket.WebSocketConnection, read_only: bool
    ) -> None:
        """Serve an accepted websocket, closing it when its peer shows no life."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_keep_alive, peer, ws, self.settings.ping_interval, nursery)
            await Connection(self, ws, read_only=read_only).serve()
            nursery.cancel_scope.cancel()

    def _admit(self, peer: _PeerStream) -> _Handshake | None:
        """A slot among the pending handshakes, or None: refuse this connection (503).

        When ``max_handshakes`` are pending, the oldest one whose peer has sent nothing
        yet is shed to make room (an idle TCP connection, a slowloris); when every pending
        one has sent something, the newcomer is refused instead. Nobody waits to learn it.
        """
        pending = self.handshakes
        if len(pending) >= self.settings.max_handshakes:
            idle = next((h for h in pending if h.peer.sent_nothing()), None)
            self.shed += 1
            if idle is None:
                log.warning("gateway refused a connection: %d handshakes pending", len(pending))
                return None
            del pending[idle]
            idle.shed = True
            idle.scope.cancel()
            log.debug("gateway shed an idle pending handshake to make room")
        handshake = _Handshake(peer, trio.move_on_after(self.settings.handshake_timeout))
        pending[handshake] = None
        return handshake

    async def _handshake(
        self, nursery: trio.Nursery, handshake: _Handshake, address: str
    ) -> tuple[trio_websocket.WebSocketConnection, bool] | None:
        """The accepted websocket and whether it is read-only, or None (refused, timed out,
        or shed)."""
        try:
            with handshake.scope:
                request = await trio_websocket.wrap_server_stream(
                    nursery, handshake.peer, max_message_size=self.settings.max_message_bytes
                )
                return await self._accept(request, address)
            return None
        finally:
            self.handshakes.pop(handshake, None)

    def access(self, headers: Iterable[tuple[bytes, bytes]], target: str) -> Access:
        """The access a handshake's credentials grant (see :func:`check_access`)."""
        settings = self.settings
        return check_access(settings.token, settings.read_only_token, headers, target)

    async def _accept(
        self, request: trio_websocket.WebSocketRequest, address: str
    ) -> tuple[trio_websocket.WebSocketConnection, bool] | None:
        """Accept (counted in :attr:`connections`) or refuse, by token and capacity."""
        settings = self.settings
        now = trio.current_time()
        wait = self.refusals.wait(address, now) if settings.token is not None else 0.0
        if wait > 0:
            log.info("gateway refused a connection from %s: too many refused handshakes", address)
            await request.reject(
                429,
                extra_headers=[
                    (b"content-type", b"text/plain"),
                    (b"retry-after", str(math.ceil(wait)).encode()),
                ],
                body=b"too many refused handshakes from this address; try again later\n",
            )
            return None
        access = self.access(request.headers, request.path)
        granted = access in (Access.GRANTED, Access.READ_ONLY)
        if granted and self.connections >= settings.max_connections:
            log.warning("gateway refused a connection: %d connections", self.connections)
            await request.reject(503, body=b"too many connections; try again later\n")
            return None
        if granted:
            self.connections += 1  # before the await, so two handshakes cannot both pass
            try:
                connection: trio_websocket.WebSocketConnection = await request.accept()
            except BaseException:
                self.connections -= 1
                raise
            return connection, access is Access.READ_ONLY
        if access is not Access.CROSS_SITE:  # a page cannot guess; no lock-out for it
            self.refusals.refused(address, now)
        status, body = {
            Access.MISSING: (401, b"a token is required: Authorization: Bearer <token>\n"),
            Access.WRONG: (403, b"wrong token\n"),
            Access.SEVERAL: (
                400,
                b"send exactly one credential: one Authorization header or one token "
                b"query parameter\n",
            ),
            Access.CROSS_SITE: (
                403,
                b"a gateway without a token refuses browser pages of other sites (the "
                b"Origin is not this machine's loopback address); serve it with a token\n",
            ),
        }[access]
        log.info("gateway refused a connection from %s: %s", address, access.value)
        await request.reject(
            status,
            extra_headers=[(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
            body=body,
        )
        return None


async def _keep_alive(
    peer: _PeerStream,
    ws: trio_websocket.WebSocketConnection,
    interval: float,
    nursery: trio.Nursery,
) -> None:
    """Ping a peer quiet for ``interval`` seconds; end the connection (cancel ``nursery``)
    when it has shown no life for twice that: no pong, no bytes, no piece of a long write
    taken (it is gone, or has stopped reading). A slow reader of a long reply is alive."""
    while True:
        await trio.sleep(interval)
        quiet = trio.current_time() - peer.progress
        if quiet >= 2 * interval:
            log.info("gateway closed a connection quiet for %.0f s (no pong)", quiet)
            nursery.cancel_scope.cancel()
            return
        if quiet >= interval:
            nursery.start_soon(_ping, ws)


async def _ping(ws: trio_websocket.WebSocketConnection) -> None:
    with suppress(trio_websocket.ConnectionClosed):
        await ws.ping()  # its pong is read as bytes from the peer: progress


async def _refuse(stream: trio.SocketStream, status: int, body: bytes) -> None:
    """Answer a connection whose handshake we will not read with an HTTP refusal, at once."""
    phrase = {503: b"Service Unavailable"}[status]
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
        b"retry-after: 1\r\nconnection: close\r\n\r\n" % (status, phrase, len(body))
    )
    with trio.move_on_after(LINGER_SECONDS):
        try:
            await stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            return
    await _linger(stream)


async def _linger(stream: trio.SocketStream) -> None:
    """Read and drop what the peer still sends, briefly, then let the caller close."""
    with trio.move_on_after(LINGER_SECONDS):
        try:
            await stream.send_eof()
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
