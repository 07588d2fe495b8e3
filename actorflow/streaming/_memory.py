"""In-process streamer and source, for tests and demos. Nothing survives the process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import final

import attrs
import trio

from actorflow._model.errors import InvalidArgument
from actorflow.streaming._protocol import (
    CheckedSender,
    ConnectorEvent,
    EventError,
    EventReceiver,
    EventSender,
    LogInflight,
    Start,
    check_events,
    check_start,
    check_topic,
    closing_receiver,
    closing_sender,
)


@attrs.define(eq=False)
class _Log:
    """An append-only list of events that wakes its readers."""

    events: list[ConnectorEvent] = attrs.Factory(list)
    cursors: dict[str, int] = attrs.Factory(dict)
    lot: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)

    def append(self, events: Iterable[ConnectorEvent]) -> None:
        self.events.extend(events)
        self.lot.unpark_all()


@final
class _LogReceiver:
    """Reads a :class:`_Log` from a position; acknowledgements move a cursor."""

    def __init__(self, log: _Log, consumer: str | None, position: int) -> None:
        self._log = log
        self._consumer = consumer
        self._next = position
        self._inflight = LogInflight()

    async def receive(self) -> ConnectorEvent:
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._next >= len(self._log.events):
            await self._log.lot.park()
        event = self._log.events[self._next]
        self._next += 1
        self._inflight.add(event, self._next)
        # Taken: no cancellation may lose it between here and the caller.
        await trio.lowlevel.cancel_shielded_checkpoint()
        return event

    async def ack(self, event: ConnectorEvent) -> None:
        await trio.lowlevel.checkpoint()
        position = self._inflight.take(event)
        if self._consumer is not None:
            cursors = self._log.cursors
            cursors[self._consumer] = max(cursors.get(self._consumer, 0), position)


@final
class _MemorySender(CheckedSender):
    def __init__(self, log: _Log) -> None:
        self._log = log

    async def _send(self, events: list[ConnectorEvent]) -> None:
        await trio.lowlevel.checkpoint()
        self._log.append(events)


@final
class MemoryStreamer:
    """An :class:`EventStreamer` held in lists: topics and cursors live as long as it does.

    Every receiver of a consumer name reads the whole topic from that name's cursor
    (log semantics, like the store-log streamer); :meth:`EventReceiver.ack` moves the cursor.
    """

    def __init__(self) -> None:
        self._topics: dict[str, _Log] = {}

    def __repr__(self) -> str:
        return f"MemoryStreamer(topics={sorted(self._topics)})"

    def _topic(self, topic: str) -> _Log:
        return self._topics.setdefault(check_topic(topic), _Log())

    def events(self, topic: str) -> list[ConnectorEvent]:
        """Everything sent to ``topic`` so far, in order (for tests)."""
        return list(self._topic(topic).events)

    @asynccontextmanager
    async def open_sender(self, topic: str) -> AsyncIterator[EventSender]:
        """A sender appending to ``topic``."""
        log = self._topic(topic)
        await trio.lowlevel.checkpoint()
        with closing_sender(_MemorySender(log), topic) as sender:
            yield sender

    @asynccontextmanager
    async def open_receiver(
        self, topic: str, consumer: str, *, start: Start = "earliest"
    ) -> AsyncIterator[EventReceiver]:
        """A receiver of ``topic`` from the cursor of ``consumer``."""
        log = self._topic(topic)
        consumer = check_topic(consumer, "consumer")
        start = check_start(start)
        if consumer not in log.cursors:
            log.cursors[consumer] = 0 if start == "earliest" else len(log.events)
        await trio.lowlevel.checkpoint()
        receiver = _LogReceiver(log, consumer, log.cursors[consumer])
        with closing_receiver(receiver, topic, consumer) as closing:
            yield closing


@final
class MemorySource:
    """An :class:`EventSource` over a list of events, for tests; :meth:`append` adds more.

    Ids must be unique: the connector's cursor is the id of the last event it handled, and
    a receiver opened ``after`` an id starts at the event following it.
    """

    def __init__(self, events: Iterable[ConnectorEvent] = ()) -> None:
        if not isinstance(events, Iterable) or isinstance(events, str | bytes | Mapping):
            raise InvalidArgument(
                f"MemorySource takes an iterable of ConnectorEvents, not {events!r:.100}"
            )
        self._log = _Log()
        self._ids: dict[str, int] = {}
        self._add(list(events))

    def __repr__(self) -> str:
        return f"MemorySource(events={len(self._log.events)})"

    def _add(self, events: list[ConnectorEvent]) -> None:
        checked = check_events(events)
        for event in checked:
            if event.id in self._ids:
                raise InvalidArgument(f"MemorySource: event id {event.id!r} is used twice")
            self._ids[event.id] = len(self._ids) + 1
        self._log.append(checked)

    def append(self, *events: ConnectorEvent) -> None:
        """Add events at the end; waiting receivers get them."""
        self._add(list(events))

    @property
    def events(self) -> list[ConnectorEvent]:
        return list(self._log.events)

    @asynccontextmanager
    async def open(self, consumer: str, after: str | None) -> AsyncIterator[EventReceiver]:
        """A receiver starting after the event whose id is ``after`` (None: the first).

        Raises:
            EventError: ``after`` is not the id of an event of this source.
        """
        if after is None:
            position = 0
        elif after in self._ids:
            position = self._ids[after]
        else:
            raise EventError(
                f"MemorySource has no event with id {after!r} to resume after; the cursor "
                "belongs to other events"
            )
        await trio.lowlevel.checkpoint()
        receiver = _LogReceiver(self._log, None, position)
        with closing_receiver(receiver, "MemorySource", consumer) as closing:
            yield closing
