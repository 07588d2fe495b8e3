"""LISTEN/NOTIFY for PostgresStore: other processes' writes wake this one at once.

One channel per schema. Two kinds of notification, each carrying the writing store
instance's ``origin`` so a process ignores its own:

- ``r`` (routing), sent *inside* the write's own statement (``pg_notify`` in a CTE, so it
  is delivered only if the write commits, and only after it): a trigger, callback or
  control written by a process that does not own the run's shard. It names the run
  (:func:`routing_payload`), and only the process whose workflow owns the run's shard
  bumps :attr:`Notifications.routing`: the owner's event-log tail wakes and hands the run
  to its actor, the other workers sleep on (each woken tail would read the log under its
  exclusive lock, stalling every writer: measured, that fan-out was most of the extra CPU
  per transition with 4 workers). A process not running the workflow under shard leases
  is woken for every run, as before.
- ``f`` (feed), sent by :meth:`Notifications.owner_wrote` at most every ``FEED_NOTIFY_GAP``
  seconds, *after* commits made by a run's owner. Nobody needs those to route work; they
  only let other processes' ``subscribe``/``await_status`` see the change quickly.

Why not NOTIFY on every write: PostgreSQL serialises the commits of notifying transactions
on one database-wide lock (measured here: 16 concurrent single-row writers drop from
~7.7k to ~3.5k commits/s when each one notifies). Owner commits are the bulk of the
writes and need no routing, so they do not notify in-statement; a coalesced NOTIFY costs
at most a few statements a second.

The listener holds one dedicated connection, waits on its socket with
``trio.lowlevel.wait_readable`` (cancellable, no thread parked), reconnects with backoff
when it is lost, and wakes everybody after a reconnect (notifications may have been
missed). Polling stays the safety net: nothing is lost when the listener is down, it is
only slower.

The feed follower publishes other processes' stored versions into the store's change
feed, while anybody in this process subscribes: it reads the history (full records) after
its position, with the event log's gapless bound, skipping rows whose ``origin`` is this
store (those were published at commit). While nobody subscribes it only notes the log's
position once a second; a first subscriber starts it from the last position noted before
the subscription, so nothing committed after the subscription began is missed (a second's
worth of slightly older versions may be delivered too).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, final

import trio

from actorflow._model.record import RawRecord
from actorflow.stores import realtime
from actorflow.stores.feed import ChangeFeed, Subscription
from actorflow.stores.postgres.connection import PgConnection

log = logging.getLogger(__name__)


FEED_NOTIFY_GAP = 0.05
"""Seconds: the shortest gap between two coalesced ``f`` notifications of one process."""
SETTLE = 0.005
"""Seconds a woken waiter waits before reading, so a burst of notifications is one read."""
KEEPALIVE = 15.0
"""Seconds without traffic after which the listener checks its connection."""
FOLLOW_POLL = 1.0
"""Seconds: the feed follower's safety-net poll while somebody subscribes."""
POSITIONS_KEPT = 4
MAX_PAYLOAD = 7000
"""Characters: a longer routing payload (PostgreSQL allows under 8000 bytes) names no
run, so it wakes every listening worker."""
FOLLOW_BATCH = 1000
MAX_TOLD = 10_000
"""Routing notices told by siblings kept to skip their NOTIFY (past it: forgotten)."""
MAX_BACKOFF = 5.0


@final
class ChangeSignal:
    """A counter of notifications with a parking lot: ``wait(mark)`` returns as soon as
    anything was counted after ``mark`` was taken (or when ``poll`` seconds passed)."""

    def __init__(self) -> None:
        self._count = 0
        self._lot = trio.lowlevel.ParkingLot()

    def mark(self) -> int:
        """The current count; pass it to :meth:`wait` after reading what it covers."""
        return self._count

    def bump(self) -> None:
        self._count += 1
        self._lot.unpark_all()

    async def wait(self, mark: int, poll: float) -> None:
        """Wait until a change was counted after ``mark`` (at most ``poll`` seconds of real
        time: the safety net must not spin while a virtual clock jumps)."""
        if self._count == mark:
            with realtime.move_on_after(poll):
                await self._lot.park()
        # Let a burst of notifications arrive, so it costs one read, not one each.
        await trio.sleep(SETTLE)


class FollowedFeed(ChangeFeed):
    """PostgresStore's change feed: it tells the follower when somebody subscribes."""

    def __init__(self) -> None:
        super().__init__()
        self.first_subscribed: float | None = None
        """Trio time of the first subscription since the follower last went idle."""
        self.subscribed = trio.Event()

    @contextmanager
    def subscribe(
        self,
        *,
        workflow_name: str | None = None,
        foreign_id: str | None = None,
        run_id: str | None = None,
        buffer: int = 1024,
    ) -> Iterator[Subscription]:
        if self.first_subscribed is None:
            self.first_subscribed = trio.current_time()
        self.subscribed.set()
        with super().subscribe(
            workflow_name=workflow_name, foreign_id=foreign_id, run_id=run_id, buffer=buffer
        ) as sub:
            yield sub


def routing_payload(origin: str, workflow_name: str, run_id: str) -> str:
    """The ``r`` notification of a write to one run: ``origin:r:LEN:WORKFLOWRUN_ID``
    (the workflow name's length first, so names may hold any character)."""
    payload = f"{origin}:r:{len(workflow_name)}:{workflow_name}{run_id}"
    return payload if len(payload) <= MAX_PAYLOAD else f"{origin}:r"


def _routed_run(rest: str) -> tuple[str, str] | None:
    """(workflow name, run id) from what follows ``origin:r:``; None when it names none."""
    length, colon, names = rest.partition(":")
    if not colon or not length.isdigit() or int(length) > len(names):
        return None
    return names[: int(length)], names[int(length) :]


class ChangeReader(Protocol):
    """The store's reads of the event log that following other processes needs."""

    async def last_event_id(self) -> int: ...

    async def others_changes(self, after: int, limit: int) -> tuple[list[RawRecord], int]:
        """Versions other processes stored after event id ``after`` and the next position."""
        ...


_SERVING: dict[tuple[str, str], weakref.WeakSet[Notifications]] = {}
"""Notifications being served, by (DSN, channel): see :meth:`Notifications.tell_siblings`."""
_TELLERS: dict[tuple[str, str], weakref.WeakSet[Notifications]] = {}
"""Stores that told served siblings of their writes directly, by (DSN, channel), serving
or not (a handle that only triggers and controls, as another process would): their
NOTIFYs reach those siblings a second time (see :meth:`Notifications._is_sibling`)."""


@final
class Notifications:
    """The store's LISTEN/NOTIFY side: signals for waiters, and the services behind them."""

    def __init__(
        self,
        db: PgConnection,
        reader: ChangeReader,
        feed: FollowedFeed,
        channel: str,
        origin: str,
        wants: Callable[[str, str], bool] = lambda workflow_name, run_id: True,
    ) -> None:
        self._db = db
        self._reader = reader
        self._followed = feed
        self.channel = channel
        self.origin = origin
        self._wants = wants
        """Whether a routing notification of (workflow name, run id) is for this process."""
        self.feed_payload = f"{origin}:f"
        self.routing = ChangeSignal()
        """Bumped by other processes' triggers, callbacks and controls (``r``)."""
        self.feed = ChangeSignal()
        """Bumped by any write of another process (``r`` or ``f``)."""
        self._feed_pending = trio.Event()
        self._lock = trio.Lock()
        self.listening = False
        """True while the listener connection is up (diagnostics and tests)."""
        self.connections = 0
        """How many times the listener connected (diagnostics and tests)."""
        self._token: trio.lowlevel.TrioToken | None = None
        """The trio run serving this (siblings are told only within one run)."""
        self._telling_in: trio.lowlevel.TrioToken | None = None
        """The trio run in which this store told siblings of its writes directly."""
        self._told: dict[str, int] = {}
        """Routing notices from siblings in this run that came one way (told directly:
        positive; NOTIFY: negative) and not yet the other."""

    # -- called by the store ------------------------------------------------------------

    def owner_wrote(self) -> None:
        """An owner's commit: let other processes' subscribers know, coalesced."""
        self._feed_pending.set()

    def tell_siblings(self, routed: list[RawRecord], owner_wrote: bool) -> None:
        """Writes just committed, told at once to the other stores on this database and
        schema served in this trio run: "processes" in one test under the autojump clock
        see each other's writes at the same virtual instant. Through PostgreSQL the
        NOTIFY takes real time, in which the clock jumped to the test's next deadline (an
        hour's scheduled run was still not worked on by the other worker when the test
        looked). The NOTIFY still comes; a second wake-up only costs a read."""
        key = (self._db.dsn, self.channel)
        serving = _SERVING.get(key)
        if not serving or (len(serving) == 1 and self in serving):
            return
        token = trio.lowlevel.current_trio_token()
        others = [other for other in list(serving) if other is not self and other._token is token]
        if not others:
            return
        if self._telling_in is not token:
            self._telling_in = token
            _TELLERS.setdefault(key, weakref.WeakSet()).add(self)
        payloads = [
            routing_payload(self.origin, record.workflow_name, record.run_id) for record in routed
        ]
        if owner_wrote:
            payloads.append(self.feed_payload)
        for other in others:
            for payload in payloads:
                other._told_directly(payload)

    def _told_directly(self, payload: str) -> None:
        if payload.partition(":")[2].startswith("r") and self._settle(payload, +1):
            return  # its NOTIFY came first and woke whom it concerns
        self.received(payload)

    def _heard(self, payload: str) -> None:
        """A NOTIFY arrived: handle it, unless a sibling in this run told of it already."""
        origin, _, rest = payload.partition(":")
        if rest.startswith("r") and self._is_sibling(origin) and self._settle(payload, -1):
            return
        self.received(payload)

    def _settle(self, payload: str, step: int) -> bool:
        """Count a routing notice from one of the two ways it comes (a sibling's word
        ``+1``, its NOTIFY ``-1``, in either order); True when the other way already
        brought it, so it wakes nobody twice (the feed's coalesced notices are not
        counted: one look more costs one read)."""
        balance = self._told.get(payload, 0)
        came = balance * step < 0  # the other way brought it (as many times as its sign)
        if balance + step == 0:
            del self._told[payload]
        else:
            if len(self._told) >= MAX_TOLD:
                self._told.clear()  # forgetting only costs a wake-up more
            self._told[payload] = balance + step
        return came

    def _is_sibling(self, origin: str) -> bool:
        """Whether ``origin`` is a store that tells this one of its writes directly (in
        this trio run): one serving here too, or one that told already without serving
        (a NOTIFY of its first write may come before its word: one wake-up more)."""
        key = (self._db.dsn, self.channel)
        token = self._token
        return any(
            other.origin == origin and other._token is token for other in _SERVING.get(key, ())
        ) or any(
            other.origin == origin and other._telling_in is token for other in _TELLERS.get(key, ())
        )

    def received(self, payload: str) -> None:
        origin, _, rest = payload.partition(":")
        if origin == self.origin:
            return  # our own write: published at commit, routed in process
        self.feed.bump()
        self._followed.notice_external()
        kind, _, rest = rest.partition(":")
        if kind == "f":
            return
        run = _routed_run(rest)
        if run is None or self._wants(*run):
            self.routing.bump()

    # -- the services -------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, follow and notify until cancelled. Several callers may run this at once
        (one per running workflow); one of them serves, the next one takes over."""
        task_status.started()
        async with self._lock, trio.open_nursery() as nursery:
            self._token = trio.lowlevel.current_trio_token()
            serving = _SERVING.setdefault((self._db.dsn, self.channel), weakref.WeakSet())
            serving.add(self)
            try:
                nursery.start_soon(self._listen)
                nursery.start_soon(self._follow)
                nursery.start_soon(self._send_feed_notifications)
                await trio.sleep_forever()
            finally:
                serving.discard(self)

    async def _listen(self) -> None:
        store = self._reader
        failures = 0
        while True:
            try:
                conn = await realtime.to_thread(self._db.listen_connect, self.channel)
            except Exception as exc:
                failures += 1
                delay = min(0.1 * 2**failures, MAX_BACKOFF)
                level = log.warning if failures in (1, 10) or failures % 100 == 0 else log.debug
                level(
                    "%r: LISTEN connection failed (attempt %d, retrying in %.1f s; polling "
                    "meanwhile): %s",
                    store,
                    failures,
                    delay,
                    self._db.describe(exc),
                )
                await trio.sleep(delay)
                continue
            if failures:
                log.warning("%r: LISTEN connection back after %d failed attempts", store, failures)
            failures = 0
            try:
                self.listening = True
                self.connections += 1
                self._told.clear()  # NOTIFYs sent while not listening never come
                # Anything may have happened while we were not listening.
                self.routing.bump()
                self.feed.bump()
                self._followed.notice_external()
                await self._receive(conn)
            except Exception as exc:
                log.warning(
                    "%r: LISTEN connection lost (reconnecting; polling meanwhile): %s",
                    store,
                    self._db.describe(exc),
                )
            finally:
                self.listening = False
                with trio.CancelScope(shield=True):
                    with contextlib.suppress(Exception):
                        trio.lowlevel.notify_closing(conn.pgconn.socket)
                    await realtime.to_thread(_close_quietly, conn)

    async def _receive(self, conn: Any) -> None:
        pgconn = conn.pgconn
        backlog: collections.deque[str] = collections.deque()
        # Notifications psycopg itself reads (during the keepalive query) arrive here.
        conn.add_notify_handler(lambda n: backlog.append(n.payload))
        fd = pgconn.socket
        while True:
            with realtime.move_on_after(KEEPALIVE) as idle:
                await trio.lowlevel.wait_readable(fd)
            if idle.cancelled_caught:
                await realtime.to_thread(conn.execute, b"SELECT 1")
            else:
                pgconn.consume_input()  # raises when the connection is gone
                while (notify := pgconn.notifies()) is not None:
                    backlog.append(notify.extra.decode())
            while backlog:
                self._heard(backlog.popleft())

    async def _send_feed_notifications(self) -> None:
        store = self._reader
        while True:
            await self._feed_pending.wait()
            self._feed_pending = trio.Event()
            try:
                await self._db.notify(self.channel, self.feed_payload)
            except Exception as exc:
                log.debug("%r: NOTIFY failed: %s", store, exc)
            await trio.sleep(FEED_NOTIFY_GAP)

    async def _follow(self) -> None:
        """Publish other processes' stored versions on the feed while anybody subscribes."""
        store = self._reader
        feed = self._followed
        after: int | None = None
        # (trio time when read, event-log position): everything committed after that time
        # has a higher id (the position is the log's gapless bound, see read_events).
        positions: collections.deque[tuple[float, int]] = collections.deque(maxlen=POSITIONS_KEPT)
        failures = 0
        while True:
            if not feed.has_subscribers:
                after = None
                feed.first_subscribed = None
                feed.subscribed = trio.Event()
                try:
                    position = await store.last_event_id()
                    positions.append((trio.current_time(), position))
                    failures = 0
                except Exception as exc:
                    failures += 1
                    if failures == 1:
                        log.warning("%r: reading the event log's position failed: %s", store, exc)
                if not feed.has_subscribers:
                    with realtime.move_on_after(FOLLOW_POLL):
                        await feed.subscribed.wait()
                continue
            mark = self.feed.mark()
            try:
                if after is None:
                    since = feed.first_subscribed
                    noted = [p for at, p in positions if since is not None and at <= since]
                    if noted:
                        after = noted[-1]
                    elif positions:
                        after = positions[0][1]  # just started: the oldest we know
                    else:  # subscribed before we ever looked: from now on
                        after = await store.last_event_id()
                records, after = await store.others_changes(after, FOLLOW_BATCH)
                failures = 0
            except Exception as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("%r: following other processes' changes failed: %s", store, exc)
                await trio.sleep(min(0.1 * 2**failures, MAX_BACKOFF))
                continue
            for record in records:
                feed.publish(record)
            if len(records) < FOLLOW_BATCH:
                await self.feed.wait(mark, FOLLOW_POLL)


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()
