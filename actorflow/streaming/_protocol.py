"""The event-streaming seam: one event type, the streamer and source protocols.

An :class:`EventStreamer` carries events on named topics: a sender per topic, and a
receiver per topic and consumer name with a durable cursor. An :class:`EventSource` is
what a connector consumes. Every streamer passes one contract test suite
(``tests/streamers/test_contract.py``).

Delivery is at-least-once everywhere: an event received and not acknowledged is received
again when a receiver with the same consumer name is opened again.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Protocol, TypeVar, final, runtime_checkable

import attrs
import trio

from actorflow._model.errors import ActorflowError, InvalidArgument
from actorflow._model.text import check_text

Start = Literal["earliest", "latest"]
"""Where a consumer name that has no cursor yet starts: the oldest event, or the next one."""

STARTS: tuple[Start, ...] = ("earliest", "latest")

#: Headers every transition event carries (``af.connect``, the relay, the store log).
TRANSITION_HEADERS = ("workflow_name", "foreign_id", "run_id", "status", "run_state", "version")


class StreamError(ActorflowError):
    """The event stream failed (connection lost, server error); retry after a back-off."""


class EventError(ActorflowError):
    """An event is malformed (a missing header, a payload that cannot be parsed)."""


def _text(_: Any, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise InvalidArgument(
            f"ConnectorEvent.{attribute.name} must be a string, not {type(value).__name__}"
        )


def _event_id(_: Any, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"ConnectorEvent.{attribute.name} must be a non-empty string")
    # A connector stores the id as its cursor: it must be text every store can hold.
    check_text(value, f"ConnectorEvent.{attribute.name}")


def _headers(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            f"ConnectorEvent.headers must be a dict of str to str, not {type(value).__name__}"
        )
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise InvalidArgument(
                f"ConnectorEvent.headers must map str to str; {key!r}: {item!r} does not"
            )
    return dict(value)


def _aware(value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(
            f"ConnectorEvent.created_at must be an aware datetime (tzinfo=UTC), not {value!r}"
        )
    return value.astimezone(UTC)


def _payload(value: object) -> bytes:
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if not isinstance(value, bytes):
        raise InvalidArgument(f"ConnectorEvent.payload must be bytes, not {type(value).__name__}")
    return value


@final
@attrs.frozen
class ConnectorEvent:
    """One event of a stream, as connectors see it.

    Attributes:
        id: unique in its source (for ``af.connect``: the store's event id as text); valid
            text without NUL characters, since a connector stores it as its cursor.
        foreign_id: the foreign id the event is about.
        type: what happened (for ``af.connect``: the status int as text).
        headers: string metadata (for ``af.connect`` at least ``workflow_name``,
            ``foreign_id``, ``run_id``, ``status``, ``run_state``, ``version``).
        created_at: when the event happened (aware UTC).
        payload: opaque data for external streams (empty for transitions).

    Events are hashable (on every field but ``headers``, which equality still compares),
    so a consumer can deduplicate redeliveries with a set.
    """

    id: str = attrs.field(validator=_event_id)
    foreign_id: str = attrs.field(validator=_text)
    type: str = attrs.field(validator=_text)
    # Compared, but left out of the hash (a dict is unhashable): equal events still hash
    # alike, and events can go in sets and dict keys, e.g. to deduplicate deliveries.
    headers: dict[str, str] = attrs.field(converter=_headers, factory=dict, hash=False)
    created_at: datetime = attrs.field(converter=_aware, factory=lambda: datetime.now(UTC))
    payload: bytes = attrs.field(converter=_payload, default=b"")

    def header(self, name: str) -> str:
        """The header ``name``. Raises EventError (naming the event) when it is missing."""
        try:
            return self.headers[name]
        except KeyError:
            raise EventError(
                f"event {self.id!r} (foreign id {self.foreign_id!r}, type {self.type!r}) has no "
                f"header {name!r}; it has {sorted(self.headers)}"
            ) from None


def transition_version(event: ConnectorEvent) -> tuple[str, int] | None:
    """``(run_id, version)`` of a transition event as the relay publishes it, or None.

    Only an event carrying every transition header, whose ``type`` and ``foreign_id``
    agree with them and whose version is ASCII decimal digits, is one: another
    producer's event with a ``run_id`` or ``version`` header of its own is not, and is
    never taken for a re-publication.
    """
    headers = event.headers
    if any(name not in headers for name in TRANSITION_HEADERS):
        return None
    version = headers["version"]
    if not (version.isascii() and version.isdecimal()) or len(version) > 19:
        return None
    if event.type != headers["status"] or event.foreign_id != headers["foreign_id"]:
        return None
    return headers["run_id"], int(version)


class HandedOut:
    """The latest version of each run a receiver handed out, to drop re-publications.

    The relay publishes at-least-once: after a failure it sends a batch again, so a
    transition can be on a stream twice. A receiver asks :meth:`is_repeat` before handing
    out an event; a transition event (see :func:`transition_version`) whose run it has
    already handed out at that version or a later one is a repeat. Other events never
    are. The most recently seen ``limit`` runs are remembered.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._versions: OrderedDict[str, int] = OrderedDict()
        self._limit = limit

    def is_repeat(self, event: ConnectorEvent) -> bool:
        key = transition_version(event)
        if key is None:
            return False
        run_id, version = key
        seen = self._versions.get(run_id)
        if seen is not None and version <= seen:
            return True
        self._versions[run_id] = version
        self._versions.move_to_end(run_id)
        if len(self._versions) > self._limit:
            self._versions.popitem(last=False)
        return False

    def forget(self) -> None:
        """Forget everything (what comes next may legitimately repeat what was seen)."""
        self._versions.clear()


@runtime_checkable
class EventSender(Protocol):
    """Publishes events to one topic, in order."""

    async def send(self, event: ConnectorEvent) -> None:
        """Publish one event; returns once the streamer has durably accepted it.

        Raises:
            StreamError: the streamer failed; the event may or may not have been stored.
        """
        ...

    async def send_many(self, events: Sequence[ConnectorEvent]) -> None:
        """Publish events in order (one round trip where the streamer allows it).

        Raises:
            StreamError: the streamer failed; any prefix of ``events`` may have been stored.
        """
        ...


@runtime_checkable
class EventReceiver(Protocol):
    """Receives the events of one topic for one consumer name."""

    async def receive(self) -> ConnectorEvent:
        """The next event, waiting for one. Raises StreamError when the streamer fails."""
        ...

    async def ack(self, event: ConnectorEvent) -> None:
        """Acknowledge a received event: it is not delivered to this consumer name again.

        Log-based streamers (memory, store log) keep one cursor per consumer name, so an
        acknowledgement also covers every event received before it; Redis acknowledges each
        entry. Acknowledge in the order received unless you know the streamer.

        Raises:
            EventError: ``event`` was not received through this receiver (or was acknowledged).
            StreamError: the streamer failed; the event will be delivered again.
        """
        ...


@runtime_checkable
class EventStreamer(Protocol):
    """Carries events on named topics (build option ``streamer=`` publishes transitions)."""

    def open_sender(self, topic: str) -> AbstractAsyncContextManager[EventSender]:
        """``async with streamer.open_sender(topic) as sender:``"""
        ...

    def open_receiver(
        self, topic: str, consumer: str, *, start: Start = "earliest"
    ) -> AbstractAsyncContextManager[EventReceiver]:
        """``async with streamer.open_receiver(topic, consumer) as receiver:``

        ``consumer`` names the durable cursor; ``start`` only matters the first time a
        consumer name is used (the cursor is created then, so nothing sent after that
        first open is missed).
        """
        ...


@runtime_checkable
class EventSource(Protocol):
    """What a connector consumes (``builder.add_connector(name, source, fn)``)."""

    def open(self, consumer: str, after: str | None) -> AbstractAsyncContextManager[EventReceiver]:
        """Open a receiver for ``consumer``.

        ``after`` is the id of the last event the caller acknowledged (its own durable
        cursor), or None. Positional sources (``af.connect``, ``af.MemorySource``) resume
        after it; sources backed by a streamer keep their own cursor per consumer name and
        may ignore it.
        """
        ...


def check_topic(topic: object, what: str = "topic") -> str:
    """``topic`` as a non-empty string, or InvalidArgument."""
    if not isinstance(topic, str) or not topic:
        raise InvalidArgument(f"{what} must be a non-empty string, not {topic!r}")
    return topic


def check_start(start: object) -> Start:
    """``start`` as ``"earliest"`` or ``"latest"``, or InvalidArgument."""
    if start not in STARTS:
        raise InvalidArgument(f"start must be 'earliest' or 'latest', not {start!r}")
    return start


def check_events(events: Sequence[object]) -> list[ConnectorEvent]:
    """``events`` as a list of ConnectorEvents, or InvalidArgument naming the first bad one."""
    checked: list[ConnectorEvent] = []
    for event in events:
        if not isinstance(event, ConnectorEvent):
            raise InvalidArgument(f"only ConnectorEvents can be sent, not {event!r}")
        checked.append(event)
    return checked


class CheckedSender:
    """The front every streamer's sender shares: ``send`` is ``send_many`` of one event,
    the events are checked, and sending none is only a checkpoint; a subclass sends the
    checked, non-empty batch in ``_send``."""

    async def send(self, event: ConnectorEvent) -> None:
        await self.send_many([event])

    async def send_many(self, events: Sequence[ConnectorEvent]) -> None:
        checked = check_events(events)
        if not checked:
            await trio.lowlevel.checkpoint()
            return
        await self._send(checked)

    async def _send(self, events: list[ConnectorEvent]) -> None:
        raise NotImplementedError


P = TypeVar("P")
R = TypeVar("R")
Inner = TypeVar("Inner", "EventReceiver", "EventSender")


class _Closing(Generic[Inner]):
    """What a sender or receiver handed out by ``async with`` does once its block has
    ended: every call is a StreamError saying so (never a hang, a library's own error, or
    an event sent or acknowledged on a connection that is gone), and calls still waiting
    when the block ends (in tasks outside it) get that error too."""

    def __init__(self, inner: Inner, what: str) -> None:
        self._inner: Inner = inner
        self._what = what
        self._closed = False
        self._waiting: set[trio.CancelScope] = set()

    def __getattr__(self, name: str) -> Any:
        # The streamer's own counters (receiver.duplicates, .dead_letters, ...) stay readable.
        if name.startswith("__") or name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def close(self) -> None:
        self._closed = True
        for scope in self._waiting:
            scope.cancel()

    def _refusal(self) -> StreamError:
        return StreamError(f"{self._what} is closed: it was used after its async with block ended")

    async def _call(self, call: Callable[[], Awaitable[R]]) -> R:
        if self._closed:
            raise self._refusal()
        with trio.CancelScope() as scope:
            self._waiting.add(scope)
            try:
                return await call()
            finally:
                self._waiting.discard(scope)
        raise self._refusal()  # cancelled by close(), not by the caller's own scopes


@final
class _ClosingReceiver(_Closing[EventReceiver]):
    async def receive(self) -> ConnectorEvent:
        return await self._call(self._inner.receive)

    async def ack(self, event: ConnectorEvent) -> None:
        await self._call(lambda: self._inner.ack(event))


@final
class _ClosingSender(_Closing[EventSender]):
    async def send(self, event: ConnectorEvent) -> None:
        await self._call(lambda: self._inner.send(event))

    async def send_many(self, events: Sequence[ConnectorEvent]) -> None:
        await self._call(lambda: self._inner.send_many(events))


@contextmanager
def closing_receiver(receiver: EventReceiver, topic: str, consumer: str) -> Iterator[EventReceiver]:
    """``receiver`` for the body of an ``open_receiver`` block; refused once it ended."""
    closing = _ClosingReceiver(receiver, f"the receiver of topic {topic!r} for {consumer!r}")
    try:
        yield closing
    finally:
        closing.close()


@contextmanager
def closing_sender(sender: EventSender, topic: str) -> Iterator[EventSender]:
    """``sender`` for the body of an ``open_sender`` block; refused once it ended."""
    closing = _ClosingSender(sender, f"the sender of topic {topic!r}")
    try:
        yield closing
    finally:
        closing.close()


class Inflight(Generic[P]):
    """Events handed out by a receiver and not yet acknowledged, with their positions."""

    def __init__(self) -> None:
        self._by_id: dict[str, deque[P]] = {}

    def __len__(self) -> int:
        return sum(len(positions) for positions in self._by_id.values())

    def add(self, event: ConnectorEvent, position: P) -> None:
        self._by_id.setdefault(event.id, deque()).append(position)

    def take(self, event: ConnectorEvent) -> P:
        """The position of the oldest unacknowledged delivery of ``event``; EventError if none."""
        positions = self._by_id.get(event.id) if isinstance(event, ConnectorEvent) else None
        if not positions:
            raise EventError(
                f"cannot acknowledge {event!r}: it was not received through this receiver, "
                "or it was acknowledged already"
            )
        position = positions.popleft()
        if not positions:
            del self._by_id[event.id]
        return position

    def positions(self) -> set[P]:
        return {p for positions in self._by_id.values() for p in positions}


class LogInflight:
    """Inflight deliveries of a log-based receiver, whose acknowledgements are cumulative.

    Positions are handed out in increasing order, and acknowledging one covers every
    delivery at or below it: they are all forgotten, so a consumer that acknowledges every
    Nth event holds at most N entries here, not every event it ever received.
    """

    def __init__(self) -> None:
        self._order: deque[tuple[int, str]] = deque()
        self._by_id: dict[str, deque[int]] = {}

    def __len__(self) -> int:
        return len(self._order)

    def add(self, event: ConnectorEvent, position: int) -> None:
        self._order.append((position, event.id))
        self._by_id.setdefault(event.id, deque()).append(position)

    def take(self, event: ConnectorEvent) -> int:
        """The position of the oldest unacknowledged delivery of ``event``, forgetting it and
        every delivery before it; EventError if there is none."""
        positions = self._by_id.get(event.id) if isinstance(event, ConnectorEvent) else None
        if not positions:
            raise EventError(
                f"cannot acknowledge {event!r}: it was not received through this receiver, "
                "or it was acknowledged already (an acknowledgement also covers every event "
                "received before it)"
            )
        position = positions[0]
        # Everything is removed in delivery order, so the oldest delivery of each id is
        # always at the front of that id's deque.
        order = self._order
        while order and order[0][0] <= position:
            _, event_id = order.popleft()
            earlier = self._by_id[event_id]
            earlier.popleft()
            if not earlier:
                del self._by_id[event_id]
        return position
