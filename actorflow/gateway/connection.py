"""``Connection``: one accepted websocket served by the op table.

One task tree per connection: our reader (parses requests and answers the inline ops),
one task per request in flight, one per subscription, and a single writer, so no frame is
ever cut in half by a cancelled sender. The gateway (``server.py``) and the web console
accept connections; both serve them with this class.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Final, Protocol, final

import trio
import trio_websocket

from actorflow._model.errors import Lagged
from actorflow._model.record import Record
from actorflow.gateway.access import TokenBucket
from actorflow.gateway.ops import INLINE_OPS, OPS, STEERING_OPS, check_args, parse_request
from actorflow.gateway.protocol import (
    ErrorCode,
    ProtocolError,
    Request,
    RequestId,
    describe_workflow,
    encode,
    error_code,
    error_message,
    event_error,
    event_lagged,
    event_record_text,
    record_to_json,
    reply_error,
    reply_ok,
    size_over,
)
from actorflow.gateway.settings import GatewaySettings
from actorflow.workflow import Workflow

log = logging.getLogger(__name__)

OUTGOING_QUEUE: Final = 16
"""Messages waiting for the writer of one connection; producers wait when it is full."""
LARGE_REPLIES: Final = 4
"""Replies of ops that may be large (``Op.large``: pages of records, a run's history) being
made or waiting to be written at once on one connection; more such requests wait their
turn. A client that sends many and never reads costs the gateway at most these."""
RECORD_TEXTS_BYTES: Final = 8 << 20
"""How much encoded record text a gateway keeps for its subscriptions to share."""


@final
class RecordTexts:
    """The JSON text of the records published lately, shared by all subscriptions of one
    gateway: a change that many subscriptions follow is encoded once, not once each.

    A stored version never changes, so (workflow, run id, version) names its text. The
    texts kept add up to at most ``max_bytes`` (characters), the oldest dropped first; a
    text over an eighth of that is not kept.
    """

    def __init__(self, max_bytes: int = RECORD_TEXTS_BYTES) -> None:
        self._texts: OrderedDict[tuple[str, str, int], str] = OrderedDict()
        self._size = 0
        self._max = max_bytes

    def text(self, record: Record[Any, Any], object_type: type[Any]) -> str:
        """The JSON text of ``record`` (see :func:`record_to_json`)."""
        key = (record.workflow_name, record.run_id, record.version)
        text = self._texts.get(key)
        if text is None:
            text = encode(record_to_json(record, object_type))
            if len(text) <= self._max // 8:
                self._texts[key] = text
                self._size += len(text)
                while self._size > self._max:
                    self._size -= len(self._texts.popitem(last=False)[1])
        return text


class ConnectionHost(Protocol):
    """What a :class:`Connection` uses of the server that accepted it."""

    workflows: dict[str, Workflow[Any, Any]]
    settings: GatewaySettings
    subscriptions: int
    """Live subscriptions over all connections (a metric)."""
    record_texts: RecordTexts
    """Encoded records shared by the subscriptions of all connections."""


class MessageChannel(Protocol):
    """The two calls a :class:`Connection` makes on its websocket."""

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str) -> None: ...


@final
class Connection:
    """One accepted websocket: requests in, replies and events out.

    ``ws`` is a trio-websocket connection, or anything with its ``get_message`` and
    ``send_message`` that ends with ``trio_websocket.ConnectionClosed`` (the web console
    serves this protocol over Starlette's websocket)."""

    def __init__(
        self, gateway: ConnectionHost, ws: MessageChannel, *, read_only: bool = False
    ) -> None:
        self._gateway = gateway
        self._read_only = read_only
        self._settings = gateway.settings
        self._ws = ws
        # Each message goes with the permit to release once it is written (a large reply).
        self._outgoing, self._to_write = trio.open_memory_channel[
            tuple[str, trio.Semaphore | None]
        ](OUTGOING_QUEUE)
        self._large = trio.Semaphore(LARGE_REPLIES)
        self._requests: dict[RequestId, trio.CancelScope] = {}
        self._subscriptions: dict[RequestId, trio.CancelScope] = {}
        self._bucket = TokenBucket(self._settings.rate, self._settings.burst, trio.current_time())

    async def serve(self) -> None:
        """Serve until the peer goes away; then stop everything of this connection."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write, nursery.cancel_scope)
            try:
                await self._read(nursery)
            finally:
                nursery.cancel_scope.cancel()

    async def _write(self, done: trio.CancelScope) -> None:
        try:
            async for text, permit in self._to_write:
                try:
                    await self._ws.send_message(text)
                finally:
                    if permit is not None:
                        permit.release()
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            done.cancel()

    async def _send(self, message: dict[str, Any]) -> None:
        await self._outgoing.send((encode(message), None))

    async def _read(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                data = await self._ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            # Every frame spends a token, well-formed or not, and over the limit every frame
            # gets rate_limited (with its id when it has one, so the caller's request ends),
            # never a full answer: malformed messages are no way around the limit.
            allowed = self._bucket.take(trio.current_time())
            try:
                request = parse_request(data, self._settings.max_message_bytes)
            except ProtocolError as exc:
                if allowed:
                    await self._send(reply_error(exc.request_id, exc.code, exc.message))
                else:
                    await self._send(self._rate_limited(exc.request_id))
                continue
            if not allowed:
                await self._send(self._rate_limited(request.id))
                continue
            await self._dispatch(request, nursery)

    def _rate_limited(self, request_id: RequestId | None) -> dict[str, Any]:
        return reply_error(
            request_id,
            ErrorCode.RATE_LIMITED,
            f"over {self._settings.rate:g} messages per second; slow down",
        )

    async def _dispatch(self, request: Request, nursery: trio.Nursery) -> None:
        if request.id in self._requests or request.id in self._subscriptions:
            await self._send(
                reply_error(
                    request.id,
                    ErrorCode.INVALID_ARGUMENT,
                    f"request id {request.id!r} is already in use on this connection",
                )
            )
            return
        if request.op in INLINE_OPS:
            await self._send(self._answer_inline(request))
            return
        if self._read_only and request.op in STEERING_OPS:
            await self._send(
                reply_error(
                    request.id,
                    ErrorCode.FORBIDDEN,
                    f"op {request.op!r} changes runs; this connection's token is read-only",
                )
            )
            return
        scope = trio.CancelScope()
        if request.op == "subscribe":
            if len(self._subscriptions) >= self._settings.max_subscriptions:
                await self._send(
                    reply_error(
                        request.id,
                        ErrorCode.BUSY,
                        f"at most {self._settings.max_subscriptions} subscriptions per "
                        "connection; unsubscribe first",
                    )
                )
                return
            self._subscriptions[request.id] = scope
            # Started once answered (acknowledged or refused): a request read after it,
            # such as its unsubscribe, finds it answered, so it gets its one reply.
            await nursery.start(self._subscribe, request, scope)
            return
        if len(self._requests) >= self._settings.max_in_flight:
            await self._send(
                reply_error(
                    request.id,
                    ErrorCode.BUSY,
                    f"at most {self._settings.max_in_flight} requests in flight per "
                    "connection; wait for replies",
                )
            )
            return
        self._requests[request.id] = scope
        nursery.start_soon(self._serve_request, request, scope)

    def _answer_inline(self, request: Request) -> dict[str, Any]:
        try:
            args = check_args(request)
        except ProtocolError as exc:
            return reply_error(request.id, exc.code, exc.message)
        if request.op == "ping":
            return reply_ok(request.id, "pong")
        if request.op == "workflows":
            described = [
                describe_workflow(name, wf.status_type, int(wf.definition.start))
                for name, wf in self._gateway.workflows.items()
            ]
            return reply_ok(request.id, described)
        table = self._subscriptions if request.op == "unsubscribe" else self._requests
        key = "subscription" if request.op == "unsubscribe" else "request"
        scope = table.pop(args[key], None)
        if scope is not None:
            scope.cancel()
        return reply_ok(request.id, scope is not None)

    @staticmethod
    def _forget(
        table: dict[RequestId, trio.CancelScope], key: RequestId, scope: trio.CancelScope
    ) -> None:
        if table.get(key) is scope:
            del table[key]

    async def _serve_request(self, request: Request, scope: trio.CancelScope) -> None:
        permit = self._large if OPS[request.op].large else None
        try:
            with scope:
                if permit is not None:
                    await permit.acquire()  # released by the writer, once it is written
                handed = False
                try:
                    text = await self._reply_text(request)
                    await self._outgoing.send((text, permit))
                    handed = True
                finally:
                    if permit is not None and not handed:
                        permit.release()
        finally:
            self._forget(self._requests, request.id, scope)

    async def _reply_text(self, request: Request) -> str:
        """The text of the reply to ``request`` (its result is dropped once encoded)."""
        try:
            text = encode(reply_ok(request.id, await self._perform(request)))
        except Exception as exc:
            text = encode(reply_error(request.id, *self._describe_error(request, exc)))
        size = size_over(text, self._settings.max_reply_bytes)
        if size is None:
            return text
        message = self._too_large(
            f"the reply to {request.op!r}",
            size,
            "ask for less (a smaller list_runs limit, lookup instead of history)",
        )
        return encode(reply_error(request.id, ErrorCode.TOO_LARGE, message))

    def _too_large(self, what: str, size: int, advice: str) -> str:
        limit = self._settings.max_reply_bytes
        return f"{what} is {size} bytes, over the limit of {limit} (max_reply_bytes); {advice}"

    def _describe_error(self, request: Request, exc: Exception) -> tuple[ErrorCode, str]:
        code = error_code(exc)
        if code is ErrorCode.INTERNAL:
            log.error("gateway op %r failed", request.op, exc_info=exc)
        return code, error_message(exc, code)

    def _workflow(self, request: Request, name: str) -> Workflow[Any, Any]:
        try:
            return self._gateway.workflows[name]
        except KeyError:
            known = ", ".join(sorted(self._gateway.workflows))
            raise ProtocolError(
                ErrorCode.UNKNOWN_WORKFLOW,
                f"no workflow named {name!r} is served here; served: {known}",
                request.id,
            ) from None

    async def _perform(self, request: Request) -> object:
        args = check_args(request)
        traceparent = args.pop("traceparent", None)
        if traceparent:
            # The caller's W3C trace context: the run's trace continues the caller's.
            try:
                from actorflow._observe.tracing import continue_trace
            except ImportError:  # no actorflow[otel] here: nothing to continue
                pass
            else:
                with continue_trace(traceparent):
                    return await self._perform_op(request, args)
        return await self._perform_op(request, args)

    async def _perform_op(self, request: Request, args: dict[str, Any]) -> object:
        handler = OPS[request.op].handler
        assert handler is not None, f"op {request.op!r} has no handler"
        return await handler(self._workflow(request, args["workflow"]), args)

    async def _forward(
        self,
        subscription: RequestId,
        stream: AsyncIterator[Record[Any, Any]],
        object_type: type[Any],
    ) -> None:
        """Send a record event per change of ``stream``; raise ProtocolError
        ``too_large`` for a record the gateway may not send (the subscription ends)."""
        limit = self._settings.max_reply_bytes
        texts = self._gateway.record_texts
        async for record in stream:
            text = event_record_text(subscription, texts.text(record, object_type))
            size = size_over(text, limit)
            if size is not None:
                message = self._too_large(
                    f"version {record.version} of run {record.run_id}",
                    size,
                    "the subscription ended (a gateway with a larger max_reply_bytes can send it)",
                )
                raise ProtocolError(ErrorCode.TOO_LARGE, message, subscription)
            await self._outgoing.send((text, None))

    async def _subscribe(
        self,
        request: Request,
        scope: trio.CancelScope,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        acknowledged = False
        try:
            with scope:
                try:
                    args = check_args(request)
                    wf = self._workflow(request, args["workflow"])
                    async with wf.subscribe(
                        foreign_id=args.get("foreign_id"),
                        run_id=args.get("run_id"),
                        buffer=self._settings.subscription_buffer,
                    ) as stream:
                        await self._send(reply_ok(request.id, {"subscription": request.id}))
                        acknowledged = True
                        task_status.started()
                        self._gateway.subscriptions += 1
                        try:
                            await self._forward(request.id, stream, wf.object_type)
                        finally:
                            self._gateway.subscriptions -= 1
                except Lagged:
                    await self._send(event_lagged(request.id))
                except Exception as exc:
                    code, message = self._describe_error(request, exc)
                    if acknowledged:
                        await self._send(event_error(request.id, code, message))
                    else:
                        await self._send(reply_error(request.id, code, message))
        finally:
            self._forget(self._subscriptions, request.id, scope)
        if not acknowledged:
            task_status.started()  # refused, and answered so
