"""``open_gateway_client``: a trio client of the websocket gateway.

One connection per client. A reader task, in a nursery owned by the client's context
manager, routes replies to the waiting requests by id and pushes events into bounded
subscription buffers; a writer task sends, so a cancelled request never cuts a frame in
half. When the connection ends, every pending request and subscription fails with
:class:`GatewayError`.
"""

from __future__ import annotations

import base64
import enum
import itertools
import logging
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from datetime import datetime
from typing import Any, Final, NoReturn, final
from urllib.parse import urlsplit

import trio
import trio_websocket

from actorflow._model.codec import converter
from actorflow._model.errors import GatewayError, InvalidArgument
from actorflow._model.text import find_unrepresentable, is_valid_text
from actorflow.gateway.protocol import (
    ErrorCode,
    Event,
    Reply,
    RequestId,
    check_token_text,
    encode,
    parse_server_message,
)

log = logging.getLogger(__name__)

Status = int | str
"""A status as its integer value (an IntEnum member will do) or its name."""

OUTGOING_QUEUE: Final = 64
CONTROL_TIMEOUT: Final = 1.0
"""How long closing a subscription or abandoning a request may wait to tell the server."""


def _status(value: Status | enum.IntEnum) -> Status:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise GatewayError(
            f"a status must be an int, an IntEnum member or a name, not {value!r}",
            ErrorCode.INVALID_ARGUMENT,
        )
    return int(value)


def _statuses(value: Status | Sequence[Status]) -> Status | list[Status]:
    if isinstance(value, int | str):
        return _status(value)
    return [_status(v) for v in value]


def _run_states(value: Status | Sequence[Status]) -> Status | list[Status]:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, int | str):
        return value
    return [v.name if isinstance(v, enum.Enum) else v for v in value]


def _filters(
    foreign_id: str | Sequence[str] | None,
    status: Status | Sequence[Status] | None,
    run_state: Status | Sequence[Status] | None,
    foreign_id_prefix: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
) -> dict[str, Any]:
    """The JSON arguments of list_runs/count_runs filters (None: not sent)."""
    for name, moment in (("created_after", created_after), ("created_before", created_before)):
        if moment is not None and (not isinstance(moment, datetime) or moment.utcoffset() is None):
            raise GatewayError(
                f"{name} must be a timezone-aware datetime, not {moment!r}",
                ErrorCode.INVALID_ARGUMENT,
            )
    return {
        "foreign_id": foreign_id
        if foreign_id is None or isinstance(foreign_id, str)
        else list(foreign_id),
        "foreign_id_prefix": foreign_id_prefix,
        "status": None if status is None else _statuses(status),
        "run_state": None if run_state is None else _run_states(run_state),
        "created_after": None if created_after is None else created_after.isoformat(),
        "created_before": None if created_before is None else created_before.isoformat(),
    }


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


@final
class GatewayClient:
    """A connection to a gateway. Get one from :func:`open_gateway_client`.

    Every method raises :class:`GatewayError` (with ``.code``, see docs/gateway.md) when
    the gateway refuses the request, the request fails there, or the connection is gone.
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[RequestId, _Pending] = {}
        self._subscriptions: dict[RequestId, GatewaySubscription] = {}
        self._outgoing, self._to_write = trio.open_memory_channel[str](OUTGOING_QUEUE)
        self._closed: GatewayError | None = None

    # -- plumbing ----------------------------------------------------------------------------

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

    async def request(self, op: str, **args: Any) -> Any:
        """Send any op with JSON arguments and return its result (the raw protocol)."""
        return await self._call(op, **args)

    # -- the API -----------------------------------------------------------------------------

    async def ping(self) -> None:
        """A round trip to the gateway."""
        await self._call("ping")

    async def workflows(self) -> list[dict[str, Any]]:
        """The served workflows: name, statuses (name -> value) and start status."""
        result: list[dict[str, Any]] = await self._call("workflows")
        return result

    async def trigger(
        self,
        workflow: str,
        foreign_id: str,
        start: Status | None = None,
        initial: Mapping[str, Any] | object | None = None,
    ) -> str:
        """Start a run; returns its run id.

        ``initial`` is the object as a JSON object (dict), or an attrs/dataclass instance,
        which is unstructured with cattrs first.
        """
        args: dict[str, Any] = {"workflow": workflow, "foreign_id": foreign_id}
        if start is not None:
            args["start"] = _status(start)
        if initial is not None:
            args["initial"] = initial if isinstance(initial, Mapping) else _unstructure(initial)
        run_id: str = await self._call("trigger", **args, **_trace_context())
        return run_id

    async def await_status(
        self,
        workflow: str,
        foreign_id: str,
        run_id: str,
        status: Status,
        timeout: float | None = None,  # noqa: ASYNC109 (the API's name; the server times it)
    ) -> dict[str, Any]:
        """The record as it was when the run reached ``status`` (code ``timeout`` after
        ``timeout`` seconds, ``status_not_reached`` if it finished elsewhere)."""
        args: dict[str, Any] = {
            "workflow": workflow,
            "foreign_id": foreign_id,
            "run_id": run_id,
            "status": _status(status),
        }
        if timeout is not None:
            args["timeout"] = timeout
        record: dict[str, Any] = await self._call("await_status", **args)
        return record

    async def callback(
        self, workflow: str, foreign_id: str, status: Status, payload: bytes
    ) -> dict[str, Any] | None:
        """Hand ``payload`` to the callback at ``status``; the record after its transition,
        or None when the latest run is not at ``status``."""
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise GatewayError(
                f"payload must be bytes, not {type(payload).__name__}", ErrorCode.INVALID_ARGUMENT
            )
        record: dict[str, Any] | None = await self._call(
            "callback",
            workflow=workflow,
            foreign_id=foreign_id,
            status=_status(status),
            payload=base64.b64encode(bytes(payload)).decode("ascii"),
            **_trace_context(),
        )
        return record

    async def lookup(self, workflow: str, run_id: str) -> dict[str, Any]:
        """The latest version of a run (code ``not_found`` if there is none)."""
        record: dict[str, Any] = await self._call("lookup", workflow=workflow, run_id=run_id)
        return record

    async def latest(self, workflow: str, foreign_id: str) -> dict[str, Any]:
        """The latest version of the newest run of ``foreign_id``."""
        record: dict[str, Any] = await self._call(
            "latest", workflow=workflow, foreign_id=foreign_id
        )
        return record

    async def history(self, workflow: str, run_id: str) -> list[dict[str, Any]]:
        """Every stored version of a run, oldest first."""
        records: list[dict[str, Any]] = await self._call(
            "history", workflow=workflow, run_id=run_id
        )
        return records

    async def list_runs(
        self,
        workflow: str,
        *,
        foreign_id: str | Sequence[str] | None = None,
        status: Status | Sequence[Status] | None = None,
        run_state: Status | Sequence[Status] | None = None,
        limit: int | None = None,
        after: str | None = None,
        descending: bool | None = None,
        foreign_id_prefix: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """The latest version of each matching run, in creation order (keyset pages:
        ``after`` is the run id of the last record of the previous page)."""
        args = _filters(
            foreign_id, status, run_state, foreign_id_prefix, created_after, created_before
        )
        args.update(limit=limit, after=after, descending=descending)
        records: list[dict[str, Any]] = await self._call(
            "list_runs", workflow=workflow, **{k: v for k, v in args.items() if v is not None}
        )
        return records

    async def count_runs(
        self,
        workflow: str,
        *,
        foreign_id: str | Sequence[str] | None = None,
        status: Status | Sequence[Status] | None = None,
        run_state: Status | Sequence[Status] | None = None,
        foreign_id_prefix: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> dict[str, Any]:
        """How many runs match: ``{"total", "by_status", "by_run_state",
        "by_status_and_run_state"}`` (see docs/gateway.md)."""
        args = _filters(
            foreign_id, status, run_state, foreign_id_prefix, created_after, created_before
        )
        counts: dict[str, Any] = await self._call(
            "count_runs", workflow=workflow, **{k: v for k, v in args.items() if v is not None}
        )
        return counts

    async def timers(self, workflow: str, run_id: str) -> list[dict[str, Any]]:
        """The run's pending timers: status, status_name, kind and fire_at."""
        found: list[dict[str, Any]] = await self._call("timers", workflow=workflow, run_id=run_id)
        return found

    async def describe(self, workflow: str) -> dict[str, Any]:
        """A workflow's statuses, starts, callbacks, timeouts, graph and object type."""
        described: dict[str, Any] = await self._call("describe", workflow=workflow)
        return described

    async def pause(self, workflow: str, run_id: str, reason: str | None = None) -> dict[str, Any]:
        """Pause a run (code ``invalid_transition`` unless it is initiated or running)."""
        return await self._control("pause", workflow, run_id, reason)

    async def resume(self, workflow: str, run_id: str, reason: str | None = None) -> dict[str, Any]:
        """Resume a paused run."""
        return await self._control("resume", workflow, run_id, reason)

    async def cancel(self, workflow: str, run_id: str, reason: str | None = None) -> dict[str, Any]:
        """Cancel an unfinished run."""
        return await self._control("cancel", workflow, run_id, reason)

    async def delete_data(
        self, workflow: str, run_id: str, reason: str | None = None
    ) -> dict[str, Any]:
        """Scrub a finished run's object (ends in ``DATA_DELETED``)."""
        return await self._control("delete_data", workflow, run_id, reason)

    async def _control(
        self, op: str, workflow: str, run_id: str, reason: str | None
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"workflow": workflow, "run_id": run_id}
        if reason is not None:
            args["reason"] = reason
        record: dict[str, Any] = await self._call(op, **args)
        return record

    @asynccontextmanager
    async def subscribe(
        self,
        workflow: str,
        foreign_id: str | None = None,
        run_id: str | None = None,
        *,
        buffer: int = 256,
    ) -> AsyncIterator[GatewaySubscription]:
        """Every stored change of the matching runs from now on, live, as record dicts.

        ``async with client.subscribe("orders", foreign_id="o-1") as changes:`` then
        ``async for record in changes``. Leaving the block unsubscribes.
        """
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise GatewayError("buffer must be a positive int", ErrorCode.INVALID_ARGUMENT)
        self._check_open()
        request_id = next(self._ids)
        subscription = GatewaySubscription(request_id, buffer)
        self._subscriptions[request_id] = subscription
        args: dict[str, Any] = {"workflow": workflow}
        if foreign_id is not None:
            args["foreign_id"] = foreign_id
        if run_id is not None:
            args["run_id"] = run_id
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


def _unstructure(value: object) -> Any:
    try:
        return converter.unstructure(value)
    except Exception as exc:
        raise GatewayError(
            f"initial must be a JSON object or an attrs/dataclass instance: {exc}",
            ErrorCode.INVALID_ARGUMENT,
        ) from None


def _check_url(url: object) -> None:
    """Raise InvalidArgument unless ``url`` is a ``ws://`` or ``wss://`` URL we can send."""
    if not isinstance(url, str):
        raise InvalidArgument(f"url must be a string such as 'ws://127.0.0.1:8765/', not {url!r}")
    problem = ""
    if not url.isascii() or not url.isprintable() or " " in url:
        problem = "it may hold only printable ASCII without spaces (percent-encode the rest)"
    else:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises ValueError for a port that is not 0-65535)
        except ValueError as exc:
            problem = str(exc)
        else:
            if parts.scheme not in ("ws", "wss"):
                problem = "the scheme must be ws:// or wss://"
            elif not parts.hostname:
                problem = "it names no host"
    if problem:
        raise InvalidArgument(f"not a gateway URL: {url!r}: {problem}")


def _rejected_error(url: str, exc: trio_websocket.ConnectionRejected) -> GatewayError:
    body = (exc.body or b"").decode("utf-8", "replace").strip()
    detail = f"the gateway at {url} refused the connection (HTTP {exc.status_code}"
    detail += f": {body})" if body else ")"
    if exc.status_code in (400, 401, 403):
        return GatewayError(f"{detail}; check the token", ErrorCode.UNAUTHORIZED)
    if exc.status_code == 429:
        return GatewayError(detail, ErrorCode.RATE_LIMITED)
    if exc.status_code == 503:
        return GatewayError(detail, ErrorCode.BUSY)
    return GatewayError(detail, ErrorCode.CONNECTION_FAILED)


def _closed_error(reason: trio_websocket.CloseReason | None) -> GatewayError:
    if reason is None:
        return GatewayError("connection closed", ErrorCode.CONNECTION_CLOSED)
    detail = f"connection closed (code {reason.code}"
    detail += f": {reason.reason})" if reason.reason else ")"
    if reason.code == 1009:
        return GatewayError(detail, ErrorCode.TOO_LARGE)
    return GatewayError(detail, ErrorCode.CONNECTION_CLOSED)


@asynccontextmanager
async def open_gateway_client(
    url: str,
    *,
    token: str | None = None,
    max_message_bytes: int = 64 << 20,
    connect_timeout: float = 10.0,
    close_timeout: float = 5.0,
) -> AsyncIterator[GatewayClient]:
    """Connect to a gateway: ``async with af.open_gateway_client(url, token=...) as client``.

    Args:
        url: ``ws://host:port/`` (or ``wss://``).
        token: sent as ``Authorization: Bearer <token>``.
        max_message_bytes: larger messages from the gateway close the connection.
        connect_timeout: seconds to connect and complete the handshake.
        close_timeout: seconds to wait for the closing handshake on exit.

    Raises:
        InvalidArgument: a URL that is not ``ws://`` or ``wss://`` with a host, a token
            that cannot be sent (empty, with a newline or other control character), or an
            unusable setting; nothing is sent then.
        GatewayError: ``unauthorized`` when the gateway refuses the token, ``busy`` when
            it serves too many connections or handshakes, ``rate_limited`` when it refused
            too many handshakes from this address, ``connection_failed`` when it cannot be
            reached.
    """
    _check_url(url)
    if token is not None:
        check_token_text(token)
    for name, value in (("max_message_bytes", max_message_bytes),):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"{name} must be a positive int, not {value!r}")
    for name, number in (("connect_timeout", connect_timeout), ("close_timeout", close_timeout)):
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not math.isfinite(number)
            or number <= 0
        ):
            raise InvalidArgument(f"{name} must be a positive number of seconds, not {number!r}")
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    async with AsyncExitStack() as stack:
        try:
            ws = await stack.enter_async_context(
                _websocket(
                    url,
                    extra_headers=headers,
                    max_message_size=max_message_bytes,
                    connect_timeout=connect_timeout,
                    disconnect_timeout=close_timeout,
                )
            )
        except trio_websocket.ConnectionRejected as exc:
            raise _rejected_error(url, exc) from None
        except (trio_websocket.HandshakeError, OSError) as exc:
            raise GatewayError(
                f"cannot connect to the gateway at {url}: {exc!r}", ErrorCode.CONNECTION_FAILED
            ) from exc
        client = GatewayClient(ws)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(client._run)
                try:
                    yield client
                finally:
                    client._shut(GatewayError("client closed", ErrorCode.CONNECTION_CLOSED))
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Our tasks never raise; a lone exception is the caller's own: hand it back bare.
            if len(group.exceptions) != 1:
                raise
            _reraise_bare(group.exceptions[0])


@asynccontextmanager
async def _websocket(url: str, **options: Any) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """``trio_websocket.open_websocket_url``, except that a closing handshake the gateway
    does not finish within ``close_timeout`` is no error: the connection is dropped then,
    and an exception of the caller's own is not replaced by trio-websocket's
    ``DisconnectionTimeout``."""
    own: BaseException | None = None
    try:
        async with trio_websocket.open_websocket_url(url, **options) as ws:
            try:
                yield ws
            except BaseException as exc:
                own = exc
                raise
    except trio_websocket.DisconnectionTimeout:
        log.debug("gateway client: the gateway did not finish the closing handshake in time")
        if own is not None:
            _reraise_bare(own)


def _reraise_bare(exc: BaseException) -> NoReturn:
    """Raise ``exc`` as it was, without the group it came in as its context."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


def _trace_context() -> dict[str, str]:
    """The caller's W3C ``traceparent`` (with actorflow[otel] and a span active), so the
    run's trace continues the caller's across the gateway."""
    try:
        from actorflow._observe.tracing import current_traceparent
    except ImportError:
        return {}
    traceparent = current_traceparent()
    return {"traceparent": traceparent} if traceparent else {}
