"""The store's own event log as a stream (reflex-like): a durable cursor per consumer name.

Every commit writes an event-log entry in the same transaction as the record, so the
log needs no relay: readers follow :meth:`Store.read_events` after a cursor kept with
:meth:`Store.get_cursor` / :meth:`Store.set_cursor`, woken by the store's change feed
(and polling, for stores that other processes write to).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import final

import trio

from actorflow._model.errors import InvalidArgument, StoreError
from actorflow._model.record import Event
from actorflow._model.text import key_part
from actorflow.stores import Store
from actorflow.streaming._protocol import (
    ConnectorEvent,
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

BATCH = 200


def transition_event(event: Event) -> ConnectorEvent:
    """The ConnectorEvent of one event-log entry (one stored version of a run)."""
    return ConnectorEvent(
        id=str(event.id),
        foreign_id=event.foreign_id,
        type=str(event.status),
        headers={
            "workflow_name": event.workflow_name,
            "foreign_id": event.foreign_id,
            "run_id": event.run_id,
            "status": str(event.status),
            "run_state": str(int(event.run_state)),
            "version": str(event.version),
        },
        created_at=event.created_at,
    )


def poll_seconds(store: Store, poll_interval: timedelta) -> float:
    """How long (real seconds) to wait on the change feed before reading again: other
    processes' writes reach this process's feed only as notices (SQLite's watcher,
    PostgreSQL's NOTIFY), so shared stores are also polled, as a safety net."""
    return poll_interval.total_seconds() if store.shared else float("inf")


@final
class LogFollower:
    """Reads one workflow's event log in batches after a position, waiting for more."""

    def __init__(
        self,
        store: Store,
        workflow_name: str | None,
        after: int,
        *,
        poll_interval: timedelta = timedelta(seconds=1),
        batch: int = BATCH,
    ) -> None:
        self.store = store
        self.workflow_name = workflow_name
        self.after = after
        self._poll = poll_seconds(store, poll_interval)
        self._batch = batch

    async def next_batch(self) -> list[Event]:
        """The next entries after :attr:`after` (at least one), advancing it."""
        feed = self.store.feed
        while True:
            mark = feed.mark()
            events = await self.store.read_events(self.after, self._batch, self.workflow_name)
            if events:
                self.after = events[-1].id
                return events
            # An in-process commit, another process's write (noticed by the store), or
            # the safety-net poll in real time; a commit after ``mark`` returns at once.
            await feed.wait_change(mark, self._poll)


def parse_cursor(value: str | None, name: str) -> int:
    """A stored log cursor as an event id (0 when unset). Raises StoreError if corrupt."""
    if value is None:
        return 0
    try:
        position = int(value)
    except ValueError:
        raise StoreError(
            f"cursor {name!r} holds {value!r}, which is not an event id; delete or fix it"
        ) from None
    if position < 0:
        raise StoreError(f"cursor {name!r} holds a negative event id {position}")
    return position


@final
class _StoreLogReceiver:
    def __init__(
        self,
        follower: LogFollower,
        convert: Callable[[Event], ConnectorEvent | None],
        commit: Callable[[int], Awaitable[None]] | None,
    ) -> None:
        self._follower = follower
        self._convert = convert
        self._commit = commit
        self._buffer: list[tuple[int, ConnectorEvent]] = []
        self._inflight = LogInflight()

    async def receive(self) -> ConnectorEvent:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._buffer:
            batch = await self._follower.next_batch()
            self._buffer = [
                (entry.id, event)
                for entry in reversed(batch)
                if (event := self._convert(entry)) is not None
            ]
        position, event = self._buffer.pop()
        self._inflight.add(event, position)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return event

    async def ack(self, event: ConnectorEvent) -> None:
        position = self._inflight.take(event)
        if self._commit is not None:
            await self._commit(position)
        else:
            await trio.lowlevel.checkpoint()


@final
class StoreLogStreamer:
    """An :class:`EventStreamer` over a store's own event log (SQLite, PostgreSQL, memory).

    Topics are workflow names; a receiver delivers every stored transition of that
    workflow (see :data:`TRANSITION_HEADERS`) after the cursor of its consumer name,
    kept in the store as ``stream:<topic>:<consumer>``. The log is written by the commits
    themselves, so :meth:`open_sender` gives a sender that only checks its input: as a
    workflow's ``streamer=``, the relay has nothing to do. It must then be over the
    workflow's own store: ``build`` refuses one over another store, whose sender would
    drop every event.

    Args:
        store: the store whose log to read.
        poll_interval: how often to look for entries written by other processes
            (stores with ``shared = True``); in-process commits wake receivers at once.
    """

    def __init__(self, store: Store, *, poll_interval: timedelta = timedelta(seconds=1)) -> None:
        if not isinstance(store, Store):
            raise InvalidArgument(f"StoreLogStreamer needs a store, not {store!r}")
        if not isinstance(poll_interval, timedelta) or poll_interval <= timedelta(0):
            raise InvalidArgument(f"poll_interval must be a timedelta > 0, not {poll_interval!r}")
        self.store = store
        self._poll_interval = poll_interval

    def __repr__(self) -> str:
        return f"StoreLogStreamer({self.store!r})"

    @staticmethod
    def cursor_name(topic: str, consumer: str) -> str:
        """The store cursor of ``consumer`` on ``topic`` (escaped by ``key_part``, so no
        two topics' consumers share one)."""
        return f"stream:{key_part(topic)}:{consumer}"

    @asynccontextmanager
    async def open_sender(self, topic: str) -> AsyncIterator[EventSender]:
        """A sender that accepts events without storing them (commits write the log)."""
        check_topic(topic)
        await trio.lowlevel.checkpoint()
        with closing_sender(_NoSender(), topic) as sender:
            yield sender

    @asynccontextmanager
    async def open_receiver(
        self, topic: str, consumer: str, *, start: Start = "earliest"
    ) -> AsyncIterator[EventReceiver]:
        """Every stored transition of workflow ``topic`` after ``consumer``'s cursor."""
        topic = check_topic(topic)
        consumer = check_topic(consumer, "consumer")
        start = check_start(start)
        store = self.store
        name = self.cursor_name(topic, consumer)
        stored = await store.get_cursor(name)
        if stored is None:
            position = 0 if start == "earliest" else await store.last_event_id()
            await store.set_cursor(name, str(position))
        else:
            position = parse_cursor(stored, name)
        follower = LogFollower(store, topic, position, poll_interval=self._poll_interval)
        cursor = position

        async def commit(acked: int) -> None:
            nonlocal cursor
            if acked > cursor:
                await store.set_cursor(name, str(acked))
                cursor = acked
            else:
                await trio.lowlevel.checkpoint()

        receiver = _StoreLogReceiver(follower, transition_event, commit)
        with closing_receiver(receiver, topic, consumer) as closing:
            yield closing


def reads_log_of(streamer: StoreLogStreamer, store: Store) -> bool:
    """True if ``streamer`` reads the event log that ``store``'s commits write: the same
    store object, or two SQLite stores on the same file."""
    if streamer.store is store:
        return True
    from actorflow.stores import SQLiteStore

    mine = streamer.store
    if isinstance(mine, SQLiteStore) and isinstance(store, SQLiteStore):
        return mine.path.resolve() == store.path.resolve()
    return False


def check_relay_streamer(streamer: object, store: Store) -> str | None:
    """Why ``streamer`` cannot be the ``streamer=`` of a workflow on ``store`` (None: it can)."""
    from actorflow.streaming._protocol import EventStreamer

    if not isinstance(streamer, EventStreamer):
        return (
            "streamer= must be an af.EventStreamer (MemoryStreamer, StoreLogStreamer, "
            f"RedisStreamer), not {streamer!r}"
        )
    if isinstance(streamer, StoreLogStreamer) and not reads_log_of(streamer, store):
        return (
            f"streamer={streamer!r} reads the event log of another store than the "
            f"workflow's ({store!r}); a StoreLogStreamer cannot copy events into another "
            "store, so they would be dropped. Give it the workflow's own store "
            "(af.StoreLogStreamer(store), its readers then follow that log directly) or use "
            "a streamer that stores what it is sent (RedisStreamer, MemoryStreamer)"
        )
    return None


@final
class _NoSender:
    async def send(self, event: ConnectorEvent) -> None:
        await self.send_many([event])

    async def send_many(self, events: Sequence[ConnectorEvent]) -> None:
        check_events(events)
        await trio.lowlevel.checkpoint()
