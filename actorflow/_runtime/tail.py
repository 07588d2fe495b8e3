"""The store tail: following the store's event log for changes other processes made (the
safety net behind in-process wake-ups; with several processes, how work is found), and
relaying their versions to this process's change feed."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Protocol, final

import trio

from actorflow._model.record import Event, RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow._runtime.actor import RunActor
from actorflow._runtime.engine import Engine
from actorflow._runtime.ports import OwnedEvents
from actorflow.stores.feed import ChangeFeed

log = logging.getLogger(__name__)

TAIL_BATCH = 1000
SEEN_LIMIT = 100_000


class TailHost(Protocol):
    """What the tail needs from the supervisor."""

    @property
    def actors(self) -> Mapping[str, RunActor[Any, Any]]: ...

    def owns(self, run_id: str) -> bool: ...

    def wake_now(
        self, run_id: str, known: RawRecord | None = None, timers: list[Timer] | None = None
    ) -> None: ...

    def wake_for_timers(self, run_id: str, timers: list[Timer]) -> None: ...


@final
class StoreTail:
    """Follows the event log from a position; wakes the runs whose new versions this
    process has not seen."""

    def __init__(
        self,
        engine: Engine[Any, Any],
        host: TailHost,
        poll_interval: timedelta,
        owned: OwnedEvents | None = None,
    ) -> None:
        self.engine = engine
        self.host = host
        self.poll_interval = poll_interval
        self._owned = owned
        """An ownership that reads the log for this process (PostgreSQL shard leases):
        then only other processes' events of the shards held are read."""
        self._seen: OrderedDict[str, int] = OrderedDict()
        """run id -> the version its last actor knew (bounded; see :meth:`remember`)."""
        self._after = 0
        self._seen_version: object = None
        self._failures = 0

    def remember(self, run_id: str, version: int) -> None:
        """Keep the version a finished actor last knew: the tail then does not wake the
        run for events up to it (mostly this process's own writes, read back)."""
        if version:
            seen = self._seen
            seen[run_id] = version
            seen.move_to_end(run_id)
            if len(seen) > SEEN_LIMIT:
                seen.popitem(last=False)  # the oldest; forgetting is safe

    async def follow(self, after: int, seen_version: object = None) -> None:
        """Follow the log from event ``after`` until cancelled.

        ``seen_version``: the store's ``data_version`` when ``after`` was read (SQLite);
        the log is read again only once another connection has committed since."""
        self._after, self._seen_version = after, seen_version
        store = self.engine.store
        # The safety-net poll is measured in real time: other processes live in real
        # time, and a poll on a virtual clock would spin while a test jumps a year.
        interval = self.poll_interval.total_seconds()
        # LISTEN/NOTIFY (PostgresStore): woken as soon as another process writes work for
        # this one; the poll stays the safety net.
        changes = getattr(store, "changes", None)
        mark = 0 if changes is None else changes.mark()
        feed = store.feed
        external = feed.external
        while True:
            if self._failures:
                # The last read failed: read again after the back-off, on trio's clock (a
                # failing read is retried soon whether or not anybody writes again).
                await trio.sleep(self.engine.default_options.retry_seconds(self._failures))
            elif changes is None:
                await feed.wait_external(external, interval)
                external = feed.external
            else:
                await changes.wait(mark, interval)
                mark = changes.mark()
            await self._read_news()

    async def _read_news(self) -> None:
        """Read what was logged since the last look (nothing, on SQLite, when no other
        connection committed since)."""
        store = self.engine.store
        # SQLiteStore: ``data_version`` changes only when another connection commits.
        data_version = getattr(store, "data_version", None)
        version: object = None
        if data_version is not None:
            try:
                # The log's end first: whatever was written up to it, if nobody else
                # committed since the last look, was written by this store instance
                # and woke its runs in-process already.
                last = await store.last_event_id()
                version = await data_version()
            except Exception as exc:
                self._read_failed(exc)
                return
            if version == self._seen_version:
                self._after = max(self._after, last)
                self._failures = 0
                return
        while True:
            try:
                events, position = await self._read()
            except Exception as exc:
                # Not read to its end: the next look reads from ``_after`` again.
                self._read_failed(exc)
                return
            self._failures = 0
            for event in events:
                self._after = event.id
                await self._noticed(event)
            self._after = max(self._after, position)
            if len(events) < TAIL_BATCH:
                self._seen_version = version  # read to its end as of that version
                return

    async def _read(self) -> tuple[list[Event], int]:
        """The next events after ``_after`` and the position after them. With an
        ownership that reads for itself (``OwnedEvents``) only other processes' events
        of the shards held; runs of shards gained later are found by the recovery that
        follows the gain."""
        if self._owned is not None:
            return await self._owned.owned_events(self._after, TAIL_BATCH)
        store = self.engine.store
        return await store.read_events(self._after, TAIL_BATCH, self.engine.name), self._after

    def _read_failed(self, exc: Exception) -> None:
        self._failures += 1
        name = self.engine.name
        log.warning(
            "workflow %r: reading the event log failed: %s",
            name,
            exc,
            extra={"workflow_name": name},
        )

    async def _noticed(self, event: Event) -> None:
        """Another process wrote ``event``: wake the run unless this process saw it."""
        await self._relay_to_feed(event)
        host = self.host
        # A deletion another process asked for and did not finish (it was cancelled or
        # died between the request and the scrub) is finished here, as recovery would.
        deleting = event.run_state is RunState.REQUESTED_DATA_DELETED
        if (event.run_state.finished and not deleting) or not host.owns(event.run_id):
            return
        definition = self.engine.definition
        actor = host.actors.get(event.run_id)
        known = actor.known_version if actor is not None else self._seen.get(event.run_id, 0)
        if known >= event.version:
            return  # nothing new: our own write, or a version an actor here has seen
        if event.status in definition.timeouts or event.run_state is RunState.PAUSED:
            try:
                timers = await self.engine.store.list_timers(self.engine.name, event.run_id)
            except Exception as exc:
                log.warning(
                    "workflow %r: reading timers failed: %s",
                    self.engine.name,
                    exc,
                    extra={"workflow_name": self.engine.name, "run_id": event.run_id},
                )
            else:
                host.wake_for_timers(event.run_id, timers)
        if actor is not None:
            actor.look_again()
        elif deleting or (event.status in definition.steps and event.run_state.active):
            host.wake_now(event.run_id)

    async def _relay_to_feed(self, event: Event) -> None:
        """Publish another process's version on this process's change feed, so subscribers
        here (subscribe, the gateway, watch) see it too. Stores that follow other processes
        themselves (PostgreSQL) have a feed of their own kind and are left to it."""
        store = self.engine.store
        feed = store.feed
        if type(feed) is not ChangeFeed or not feed.has_subscribers:
            return
        if feed.was_published(event.run_id, event.version):
            return  # written through this store instance: published at commit
        try:
            history = await store.history(self.engine.name, event.run_id)
        except Exception as exc:
            log.warning(
                "workflow %r: reading run %s failed: %s",
                self.engine.name,
                event.run_id,
                exc,
                extra={"workflow_name": self.engine.name, "run_id": event.run_id},
            )
            return
        for raw in history:
            if raw.version == event.version and not feed.was_published(raw.run_id, raw.version):
                feed.publish(raw)
