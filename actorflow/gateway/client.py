"""``open_gateway_client``: a trio client of the websocket gateway.

One connection per client; ``GatewayClient`` is the API over it, ``_wire.ClientWire`` the
plumbing (a reader task routing replies and events, a writer task sending).
"""

from __future__ import annotations

import base64
import enum
import logging
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Any, NoReturn, final
from urllib.parse import urlsplit

import trio
import trio_websocket

from actorflow._model.codec import converter
from actorflow._model.errors import GatewayError, InvalidArgument
from actorflow.gateway._wire import ClientWire
from actorflow.gateway._wire import GatewaySubscription as GatewaySubscription
from actorflow.gateway.access import check_token_text
from actorflow.gateway.protocol import ErrorCode

log = logging.getLogger(__name__)

GatewaySubscription.__module__ = __name__  # public here; _wire (its plumbing) is private

Status = int | str
"""A status as its integer value (an IntEnum member will do) or its name."""


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


class GatewayTimeoutError(GatewayError, TimeoutError):
    """``await_status`` timed out at the gateway: a GatewayError (code ``timeout``) that is
    also the TimeoutError the in-process ``Workflow.await_status`` raises."""


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
class GatewayClient(ClientWire):
    """A connection to a gateway. Get one from :func:`open_gateway_client`.

    Every method raises :class:`GatewayError` (with ``.code``, see docs/gateway.md) when
    the gateway refuses the request, the request fails there, or the connection is gone.
    """

    async def request(self, op: str, **args: Any) -> Any:
        """Send any op with JSON arguments and return its result (the raw protocol)."""
        if "id" in args:
            # The client numbers its requests and matches replies by id: a reply to an id
            # of the caller's would find nobody waiting, and this call would wait forever.
            raise GatewayError(
                f"op {op!r}: 'id' is the client's own request id, not an argument",
                ErrorCode.INVALID_ARGUMENT,
            )
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
        try:
            record: dict[str, Any] = await self._call("await_status", **args)
        except GatewayError as exc:
            if exc.code != ErrorCode.TIMEOUT:
                raise
            raise GatewayTimeoutError(str(exc), exc.code) from None
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
        args: dict[str, Any] = {"workflow": workflow}
        if foreign_id is not None:
            args["foreign_id"] = foreign_id
        if run_id is not None:
            args["run_id"] = run_id
        async with self._subscribed(args, buffer) as subscription:
            yield subscription


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
    _check_settings(url, token, max_message_bytes, connect_timeout, close_timeout)
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    # trio-websocket's own connect_timeout ends the handshake, but then waits for the
    # connection's reader task, which a peer that accepted the TCP connection and never
    # answers keeps alive for ever: this scope bounds the whole connect, and is lifted
    # once connected.
    connected = False
    with trio.CancelScope(deadline=trio.current_time() + connect_timeout) as connecting:
        async with AsyncExitStack() as stack:
            ws = await _connect(
                stack,
                url,
                extra_headers=headers,
                max_message_size=max_message_bytes,
                connect_timeout=connect_timeout,
                disconnect_timeout=close_timeout,
            )
            connected = True
            connecting.deadline = math.inf
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
                # Our tasks never raise; a lone exception is the caller's own: hand it
                # back bare.
                if len(group.exceptions) != 1:
                    raise
                _reraise_bare(group.exceptions[0])
    if not connected:  # only our deadline can end the block before it connected
        raise GatewayError(
            f"cannot connect to the gateway at {url}: no websocket handshake within "
            f"{connect_timeout:g} s",
            ErrorCode.CONNECTION_FAILED,
        )


def _check_settings(
    url: object,
    token: object,
    max_message_bytes: object,
    connect_timeout: object,
    close_timeout: object,
) -> None:
    """Raise InvalidArgument for what ``open_gateway_client`` cannot use."""
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


async def _connect(
    stack: AsyncExitStack, url: str, **options: Any
) -> trio_websocket.WebSocketConnection:
    """The websocket to ``url``, entered on ``stack``; a refusal or failure to connect as
    GatewayError (only here: exceptions of the caller's block pass through untouched)."""
    try:
        return await stack.enter_async_context(_websocket(url, **options))
    except trio_websocket.ConnectionRejected as exc:
        raise _rejected_error(url, exc) from None
    except (trio_websocket.HandshakeError, OSError) as exc:
        raise GatewayError(
            f"cannot connect to the gateway at {url}: {exc!r}", ErrorCode.CONNECTION_FAILED
        ) from exc


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
