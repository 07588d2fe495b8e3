"""The client's end of one gateway connection: requests routed to their replies by id,
events pushed into bounded subscription buffers.

A reader task, in a nursery owned by ``open_gateway_client``, routes replies to the
waiting requests and events to the subscriptions; a writer task sends, so a cancelled
request never cuts a frame in half. When the connection ends, every pending request and
subscription fails with :class:`GatewayError`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any, Final, final

import trio
import trio_websocket

from actorflow._model.errors import GatewayError
from actorflow._model.text import find_unrepresentable, is_valid_text
from actorflow.gateway.protocol import (
    ErrorCode,
    Event,
    Reply,
    RequestId,
    encode,
    parse_server_message,
)

log = logging.getLogger(__name__)

OUTGOING_QUEUE: Final = 64
CONTROL_TIMEOUT: Final = 1.0
"""How long closing a subscription or abandoning a request may wait to tell the server."""


@final
class _Pending:
    """A request waiting for its reply."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Reply | None = None
        self.error: GatewayError | None = None

    def resolve(self, reply: Reply) -> None:
        if not self.done.is_set():
            self.reply = reply
            self.done.set()

    def fail(self, error: GatewayError) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()

    def result(self) -> Any:
        if self.error is not None:
            raise GatewayError(str(self.error), self.error.code)
        assert self.reply is not None
        if not self.reply.ok:
            raise self.reply.error()
        return self.reply.result


@final
class GatewaySubscription:
    """A live stream of record dicts for one subscription; iterate it with ``async for``.

    At most ``buffer`` records wait unread; when more arrive (or the gateway reports that
    it had to drop changes), the stream delivers what it holds and then raises
    :class:`GatewayError` with code ``lagged``.
    """

    def __init__(self, subscription_id: RequestId, buffer: int) -> None:
        self.id = subscription_id
        self._send, self._receive = trio.open_memory_channel[dict[str, Any]](buffer)
        self._ended: GatewayError | None = None

    @property
    def lagged(self) -> bool:
        """True once records were dropped for this subscriber."""
        return self._ended is not None and self._ended.code == ErrorCode.LAGGED

    @property
    def ended(self) -> bool:
        """True once no more records will arrive."""
        return self._ended is not None

    def _push(self, record: dict[str, Any]) -> bool:
        """Buffer a record; False (and the stream ends lagged) when the buffer is full."""
        if self._ended is not None:
            return True
        try:
            self._send.send_nowait(record)
        except trio.WouldBlock:
            self._end(
                GatewayError(
                    f"subscription {self.id!r} fell behind: its buffer of "
                    f"{self._send.statistics().max_buffer_size} records overflowed",
                    ErrorCode.LAGGED,
                )
            )
            return False
        return True

    def _end(self, error: GatewayError) -> None:
        if self._ended is None:
            self._ended = error
            self._send.close()

    async def receive(self) -> dict[str, Any]:
        """The next record.

        Raises:
            GatewayError: the stream ended (``lagged``, ``connection_closed``, or the
                server's error) and every buffered record was delivered.
        """
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            error = self._ended or GatewayError("subscription closed", ErrorCode.CONNECTION_CLOSED)
            raise GatewayError(str(error), error.code) from None

    def __aiter__(self) -> GatewaySubscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.receive()


class ClientWire:
    """Requests and subscriptions over one websocket (the plumbing of ``GatewayClient``)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[RequestId, _Pending] = {}
        self._subscriptions: dict[RequestId, GatewaySubscription] = {}
        self._outgoing, self._to_write = trio.open_memory_channel[str](OUTGOING_QUEUE)
        self._closed: GatewayError | None = None

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write)
            task_status.started()
            await self._read()
            nursery.cancel_scope.cancel()

    async def _write(self) -> None:
        try:
            async for text in self._to_write:
                await self._ws.send_message(text)
        except trio_websocket.ConnectionClosed:
            pass  # the reader notices too and fails everything
        finally:
            self._to_write.close()  # senders fail instead of waiting for room forever

    async def _put(self, message: Mapping[str, Any]) -> None:
        try:
            text = encode(message)
        except (TypeError, ValueError) as exc:
            raise GatewayError(
                f"op {message.get('op')!r}: the arguments are not JSON: {exc}",
                ErrorCode.INVALID_ARGUMENT,
            ) from None
        if not is_valid_text(text):
            found = find_unrepresentable(dict(message), "request")
            raise GatewayError(
                f"op {message.get('op')!r}: {found or 'the arguments hold invalid text'}",
                ErrorCode.INVALID_ARGUMENT,
            )
        try:
            await self._outgoing.send(text)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._check_open()
            raise GatewayError("connection closed", ErrorCode.CONNECTION_CLOSED) from None

    async def _read(self) -> None:
        error = GatewayError("connection closed", ErrorCode.CONNECTION_CLOSED)
        try:
            while True:
                self._route(await self._ws.get_message())
        except trio_websocket.ConnectionClosed as exc:
            error = _closed_error(exc.reason)
        finally:
            self._shut(error)

    def _shut(self, error: GatewayError) -> None:
        if self._closed is None:
            self._closed = error
        for pending in self._pending.values():
            pending.fail(error)
        for subscription in self._subscriptions.values():
            subscription._end(error)

    def _route(self, data: str | bytes) -> None:
        try:
            message = parse_server_message(data)
        except ValueError as exc:
            log.warning("gateway client: ignored a message it cannot read: %s", exc)
            return
        if isinstance(message, Event):
            subscription = self._subscriptions.get(message.id)
            if subscription is None:
                return
            if message.event == "record" and message.record is not None:
                if not subscription._push(message.record):
                    self._tell(
                        {"id": next(self._ids), "op": "unsubscribe", "subscription": message.id}
                    )
            elif message.event == "lagged":
                subscription._end(
                    GatewayError(
                        f"subscription {message.id!r} fell behind at the gateway and missed "
                        "changes",
                        ErrorCode.LAGGED,
                    )
                )
            elif message.event == "error":
                subscription._end(GatewayError(message.message, message.code or "internal"))
            return
        pending = self._pending.get(message.id) if message.id is not None else None
        if pending is not None:
            pending.resolve(message)
        elif not message.ok:
            log.warning("gateway client: error reply to no request: %s", message.message)

    def _tell(self, message: Mapping[str, Any]) -> None:
        """Send a message nobody waits for, if there is room; dropping it is harmless."""
        with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._outgoing.send_nowait(encode(message))

    def _check_open(self) -> None:
        if self._closed is not None:
            raise GatewayError(str(self._closed), self._closed.code)

    async def _call(self, op: str, **args: Any) -> Any:
        self._check_open()
        request_id = next(self._ids)
        pending = _Pending()
        self._pending[request_id] = pending
        try:
            await self._put({"id": request_id, "op": op, **args})
            await pending.done.wait()
        except trio.Cancelled:
            if not pending.done.is_set():
                self._tell({"id": next(self._ids), "op": "abort", "request": request_id})
            raise
        finally:
            del self._pending[request_id]
        return pending.result()

    @asynccontextmanager
    async def _subscribed(
        self, args: dict[str, Any], buffer: int
    ) -> AsyncIterator[GatewaySubscription]:
        """Subscribe with ``args``; leaving the block unsubscribes."""
        self._check_open()
        request_id = next(self._ids)
        subscription = GatewaySubscription(request_id, buffer)
        self._subscriptions[request_id] = subscription
        pending = _Pending()
        self._pending[request_id] = pending
        acknowledged = False
        try:
            try:
                await self._put({"id": request_id, "op": "subscribe", **args})
                await pending.done.wait()
            finally:
                del self._pending[request_id]
            pending.result()
            acknowledged = True
            yield subscription
        finally:
            del self._subscriptions[request_id]
            subscription._end(GatewayError("subscription closed", ErrorCode.CONNECTION_CLOSED))
            if acknowledged and self._closed is None:
                message = encode(
                    {"id": next(self._ids), "op": "unsubscribe", "subscription": request_id}
                )
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(CONTROL_TIMEOUT),
                    suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                ):
                    await self._outgoing.send(message)


def _closed_error(reason: trio_websocket.CloseReason | None) -> GatewayError:
    if reason is None:
        return GatewayError("connection closed", ErrorCode.CONNECTION_CLOSED)
    detail = f"connection closed (code {reason.code}"
    detail += f": {reason.reason})" if reason.reason else ")"
    if reason.code == 1009:
        return GatewayError(detail, ErrorCode.TOO_LARGE)
    return GatewayError(detail, ErrorCode.CONNECTION_CLOSED)
