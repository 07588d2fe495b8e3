"""Shard ownership for PostgresStore: worker registration, shard leases, failover.

Runs map to ``shards`` shards by ``crc32(run_id) % shards`` (stable across processes and
Python versions, unlike ``hash()``). Every worker process running a workflow registers
itself in ``workers`` and holds leases on a fair share of the workflow's shards in
``shard_leases``; it runs actors, timers and recovery only for runs of shards it holds
(:meth:`ShardOwnership.owns`), and the holder of shard 0 is the workflow's *leader*, the
one process that runs its singleton services (hooks, relay, connectors).

Why lease rows and not session advisory locks: an advisory lock lives as long as its
connection, so (1) a dead machine's locks are only freed when TCP notices, which can take
minutes, so takeover time would not be bounded by anything we choose; (2) a connection
blip frees them at once while the old holder still believes it holds them, and it can
only find out on its next query, so two owners would act at once; (3) each holder would
pin a dedicated connection per lock set, with no way to hand over gracefully. A lease row
with an expiry in database time bounds takeover (``lease`` + one renewal interval), lets
the holder stop *before* anyone else may start (it measures the lease on its own
monotonic clock from *before* the renewal was sent, minus a margin), and makes handover
explicit (release after draining).

The protocol (``lease`` = L; defaults L = 10 s):

- Every L/3 a worker runs one *tick*, one transaction on its own connection: refresh its
  ``workers`` row (expires L from now, database time), renew every lease it holds (expires
  L from now), read the live workers, compute its fair share (shards split evenly in
  worker-id order), and acquire free or expired leases up to it (``FOR UPDATE SKIP
  LOCKED``; ``epoch`` + 1). Shards it holds beyond its share are released: it stops
  acting on them at once (``owns`` turns False, the supervisor interrupts their actors),
  waits ``drain`` (L/3) for steps in flight, then frees them in the database (they are no
  longer renewed meanwhile, but cannot expire before the drain ends).
- ``owns`` is True for a shard only until ``sent + L - margin`` (``margin`` = L/5), where
  ``sent`` is the local monotonic time taken before the last successful renewal was sent.
  The database's expiry is at least ``sent + L``, so the holder stops acting at least
  ``margin`` before anybody else may take the shard, even when renewals fail because the
  database is unreachable.
- A dead worker's leases expire at most L after its last renewal; the others see them
  expired on their next tick (at most L/3 later) and take them over: takeover <= 4L/3
  (13.3 s at the default), then the supervisor recovers the runs and timers of the shards.
- A worker that joins registers, the others see it on their next tick and release what
  exceeds their new share (after the drain), and it acquires them on its next tick.

Fencing: two workers never act on one shard at the same time in normal operation. If
they ever did (a stalled process that lost its lease mid-step, a database clock jump),
the store's optimistic version check still admits exactly one of two transitions from the
same version, so the history stays exactly-once; only a step's external side effects
could happen twice, as after any crash.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, Protocol, final

import attrs
import trio

from actorflow._model.errors import InvalidArgument, StoreError
from actorflow._model.record import Event
from actorflow.stores import realtime
from actorflow.stores.postgres.connection import PgConnection
from actorflow.stores.postgres.listen import Notifications
from actorflow.stores.postgres.queries import EventLog
from actorflow.stores.postgres.schema import quote_schema

log = logging.getLogger(__name__)


MAX_SHARDS = 4096
WARN_EVERY = 30.0
"""Seconds between two warnings about the same ongoing database outage."""
EXIT_HOLD = 0.5
"""Seconds a cleanly exiting worker keeps its released leases blocked, for the database
writes of steps cancelled with it to land first."""
SHORT_TICK = 0.25
"""Seconds between two ticks of a worker that holds less than its fair share (at most
``renew_every``): leases another worker released come free EXIT_HOLD after its exit (a
restart) or after its drain, and waiting a whole renewal interval for them kept a
restarted worker idle for seconds."""


def shard_of(run_id: str, shards: int) -> int:
    """The shard of a run: a stable hash of its id (crc32), the same in every process."""
    return zlib.crc32(run_id.encode()) % shards


def fair_share(workers: Iterable[str], me: str, shards: int) -> int:
    """How many of ``shards`` the worker ``me`` should hold among the live ``workers``.

    The shards are split as evenly as possible; the first ``shards % n`` workers in id
    order hold one more. Every worker computes the same split from the same list.
    """
    ordered = sorted({*workers, me})
    base, extra = divmod(shards, len(ordered))
    return base + (1 if ordered.index(me) < extra else 0)


@attrs.frozen
class Timings:
    """The lease protocol's timings, in seconds, derived from the lease."""

    lease: float
    renew_every: float
    margin: float
    drain: float

    @classmethod
    def for_lease(cls, lease: float) -> Timings:
        return cls(lease=lease, renew_every=lease / 3, margin=lease / 5, drain=lease / 3)

    @property
    def takeover(self) -> float:
        """The longest time from a worker's death to its shards being taken over."""
        return self.lease + self.renew_every


@final
class LeaseBook:
    """What this worker holds, in local monotonic time: the rules, free of I/O."""

    def __init__(self, timings: Timings) -> None:
        self.timings = timings
        self.until: dict[int, float] = {}
        """Held shards and the local time up to which this worker may act on each."""
        self.epochs: dict[int, int] = {}
        self.releasing: set[int] = set()
        self.gains = 0
        """How many renewals gained shards so far (a read of the shards held can tell
        whether shards were gained while it was under way)."""

    def owns(self, shard: int, now: float) -> bool:
        until = self.until.get(shard)
        return until is not None and now < until and shard not in self.releasing

    def held(self, now: float) -> list[int]:
        return sorted(s for s in self.until if self.owns(s, now))

    def renewed(self, leases: dict[int, int], sent: float) -> tuple[list[int], list[int]]:
        """The tick that was sent at ``sent`` renewed or acquired exactly ``leases``
        (shard -> epoch) besides those being released. Returns (gained, lost)."""
        until = sent + self.timings.lease - self.timings.margin
        gained = [s for s in leases if not self.owns(s, sent)]
        lost = [s for s in self.until if s not in leases and s not in self.releasing]
        for shard in lost:
            self.until.pop(shard, None)
            self.epochs.pop(shard, None)
        for shard, epoch in leases.items():
            if shard in self.releasing:
                continue
            self.until[shard] = until
            self.epochs[shard] = epoch
        if gained:
            self.gains += 1
        return sorted(gained), sorted(lost)

    def expire(self, now: float) -> list[int]:
        """Forget the shards whose local deadline passed without a renewal."""
        expired = sorted(s for s, until in self.until.items() if until <= now)
        for shard in expired:
            self.until.pop(shard, None)
            self.epochs.pop(shard, None)
            self.releasing.discard(shard)
        return expired

    def next_deadline(self) -> float:
        return min(self.until.values(), default=math.inf)

    def extras(self, target: int, now: float) -> list[int]:
        """Shards to give up to come down to ``target``: the highest first, so shard 0
        (and with it the leadership) moves only when it must."""
        held = self.held(now)
        return sorted(held, reverse=True)[: max(0, len(held) - target)]

    def start_release(self, shards: Iterable[int]) -> None:
        self.releasing.update(shards)

    def released(self, shards: Iterable[int]) -> None:
        for shard in shards:
            self.releasing.discard(shard)
            self.until.pop(shard, None)
            self.epochs.pop(shard, None)


@attrs.frozen
class TickResult:
    leases: dict[int, int]
    """Every lease this worker holds after the tick (renewed or acquired): shard -> epoch."""
    workers: list[str]
    """The live workers of the workflow, this one included, in id order."""
    target: int


@final
class LeaseQueries:
    """The SQL of the lease protocol for one schema (tables from migration 2)."""

    def __init__(self, schema: str) -> None:
        s = quote_schema(schema)

        def q(text: str) -> bytes:
            return text.replace("{s}", s).encode()

        self.setup = q(
            """
            INSERT INTO {s}.shard_leases (workflow_name, shard, shards)
            SELECT %(workflow)s, g, %(shards)s::int4 FROM generate_series(0, %(shards)s - 1) g
            ON CONFLICT DO NOTHING
            """
        )
        self.shard_sets = q(
            """
            SELECT shards, count(*), count(*) FILTER (WHERE expires_at > now())
              FROM {s}.shard_leases WHERE workflow_name = %(workflow)s GROUP BY shards
            """
        )
        self.reset = q("DELETE FROM {s}.shard_leases WHERE workflow_name = %(workflow)s")
        self.register = q(
            """
            INSERT INTO {s}.workers AS w
                   (workflow_name, worker_id, host, pid, heartbeat_at, expires_at)
            VALUES (%(workflow)s, %(me)s::uuid, %(host)s, %(pid)s, now(), now() + %(lease)s)
            ON CONFLICT (workflow_name, worker_id)
            DO UPDATE SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at
            """
        )
        self.forget_dead = q(
            "DELETE FROM {s}.workers WHERE workflow_name = %(workflow)s "
            "AND expires_at < now() - interval '1 hour'"
        )
        self.renew = q(
            """
            UPDATE {s}.shard_leases SET expires_at = now() + %(lease)s
             WHERE workflow_name = %(workflow)s AND owner = %(me)s::uuid
               AND NOT shard = ANY(%(releasing)s::int4[])
            RETURNING shard, epoch
            """
        )
        self.live_workers = q(
            "SELECT worker_id::text FROM {s}.workers "
            "WHERE workflow_name = %(workflow)s AND expires_at > now() ORDER BY worker_id"
        )
        # Expired leases only (a freed one has expired too): the previous holder stopped
        # acting at least ``margin`` before its lease expired.
        # (MATERIALIZED: as an IN (subquery) the planner may rescan it per row, and
        # every rescan locks and returns further rows, ignoring the LIMIT.)
        self.acquire = q(
            """
            WITH picked AS MATERIALIZED (
                SELECT shard FROM {s}.shard_leases
                 WHERE workflow_name = %(workflow)s AND expires_at < now()
                 ORDER BY shard LIMIT %(need)s
                   FOR UPDATE SKIP LOCKED
            )
            UPDATE {s}.shard_leases l
               SET owner = %(me)s::uuid, epoch = l.epoch + 1, acquired_at = now(),
                   expires_at = now() + %(lease)s
              FROM picked
             WHERE l.workflow_name = %(workflow)s AND l.shard = picked.shard
               AND l.expires_at < now()
            RETURNING l.shard, l.epoch
            """
        )
        self.release = q(
            """
            UPDATE {s}.shard_leases SET owner = NULL, expires_at = now() + %(hold)s
             WHERE workflow_name = %(workflow)s AND owner = %(me)s::uuid
               AND shard = ANY(%(shards)s::int4[])
            """
        )
        self.release_all = q(
            """
            UPDATE {s}.shard_leases SET owner = NULL, expires_at = now() + %(hold)s
             WHERE workflow_name = %(workflow)s AND owner = %(me)s::uuid
            """
        )
        self.unregister = q(
            "DELETE FROM {s}.workers "
            "WHERE workflow_name = %(workflow)s AND worker_id = %(me)s::uuid"
        )


@final
class Owners:
    """The shard ownerships served in one process, by workflow: whether a run's owner is
    right here (then its writes need no NOTIFY to be routed)."""

    def __init__(self) -> None:
        self._by_workflow: dict[str, list[ShardOwnership]] = {}

    def add(self, ownership: ShardOwnership) -> None:
        self._by_workflow.setdefault(ownership.workflow_name, []).append(ownership)

    def remove(self, ownership: ShardOwnership) -> None:
        found = self._by_workflow.get(ownership.workflow_name, [])
        if ownership in found:
            found.remove(ownership)
        if not found:
            self._by_workflow.pop(ownership.workflow_name, None)

    def here(self, workflow_name: str, run_id: str) -> bool:
        """Whether a workflow running in this process owns the run."""
        return any(o.owns(run_id) for o in self._by_workflow.get(workflow_name, ()))

    def wants(self, workflow_name: str, run_id: str) -> bool:
        """Whether another process's write to the run is work for this one: a workflow
        here owns the run, or the workflow runs here without shard leases (or not at
        all: a plain subscriber is woken for everything)."""
        found = self._by_workflow.get(workflow_name)
        return not found or any(o.owns(run_id) for o in found)


class ShardHost(Protocol):
    """What shard leases need from their store."""

    @property
    def schema(self) -> str: ...

    @property
    def notifications(self) -> Notifications: ...

    @property
    def owners(self) -> Owners: ...

    @property
    def log(self) -> EventLog: ...


@final
class ShardOwnership:
    """The :class:`~actorflow._runtime.ports.Ownership` of one worker process for one workflow.

    Made by :meth:`PostgresStore.shard_ownership`; the supervisor runs :meth:`serve`.
    """

    def __init__(
        self,
        store: ShardHost,
        db: PgConnection,
        workflow_name: str,
        *,
        shards: int,
        lease: timedelta,
    ) -> None:
        if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
            raise InvalidArgument(f"shards must be an int from 1 to {MAX_SHARDS}, not {shards!r}")
        if not isinstance(lease, timedelta) or lease <= timedelta(0):
            raise InvalidArgument(f"lease must be a positive timedelta, not {lease!r}")
        self.store = store
        self.workflow_name = workflow_name
        self.shards = shards
        self.timings = Timings.for_lease(lease.total_seconds())
        self.worker_id = str(uuid.uuid4())
        self.book = LeaseBook(self.timings)
        self._queries = LeaseQueries(store.schema)
        self._params: dict[str, Any] = {
            "workflow": workflow_name,
            "me": self.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "lease": lease,
            "shards": shards,
        }
        self._pool = db
        self._db = db.dedicated(f"leases of {workflow_name!r}")
        self._changed = trio.Event()
        self.target = 0
        self.workers: list[str] = []
        self._warned = -math.inf

    def __repr__(self) -> str:
        return f"<ShardOwnership {self.workflow_name!r} worker {self.worker_id[:8]}>"

    # -- the Ownership protocol ---------------------------------------------------------

    def owns(self, run_id: str) -> bool:
        """True while this worker may act on the run (holds its shard's lease)."""
        return self.book.owns(shard_of(run_id, self.shards), realtime.now())

    @property
    def leader(self) -> bool:
        """True while this worker holds shard 0: it runs the workflow's singleton services."""
        return self.book.owns(0, realtime.now())

    def held(self) -> list[int]:
        """The shards this worker may act on now."""
        return self.book.held(realtime.now())

    async def owned_events(self, after: int, limit: int) -> tuple[list[Event], int]:
        """The OwnedEvents capability: other processes' events of the shards held now.

        Read again when shards were gained while the read was under way: the position it
        returns covers events committed up to its end, but only for the shards held at its
        start, and the recovery that followed the gain may have read the gained shards'
        runs before those events committed. Skipping them would leave such a run (a
        callback stored by another process as the shard moved) unnoticed for good."""
        while True:
            gains = self.book.gains
            held = self.held()
            events, position = await self.store.log.owned_events(
                self.workflow_name, self.shards, held, after, limit
            )
            if self.book.gains == gains:
                return events, position

    async def serve(
        self,
        on_change: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Register, hold a fair share of leases and renew them until cancelled.

        Reports started after the first successful tick (so a database that is down at
        start is waited for, with warnings, not failed on). Then, whenever the set of held
        shards changes, calls ``on_change()``. On exit, frees every lease it holds.

        Raises:
            StoreError: the database refused the worker for good (wrong database, user or
                password; a schema from a newer actorflow).
            InvalidArgument: other live workers run this workflow with another ``shards``.
        """
        store = self.store
        store.owners.add(self)
        started = False
        try:
            await self._start()
            started = True
            log.info(
                "workflow %r: worker %s (%s pid %d) holds shards %s of %d (%d live workers)",
                self.workflow_name,
                self.worker_id,
                self._params["host"],
                self._params["pid"],
                self.held(),
                self.shards,
                len(self.workers),
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(store.notifications.serve)
                task_status.started()
                nursery.start_soon(self._hold_virtual_time_until_share)
                nursery.start_soon(self._watch_expiry, on_change)
                await self._heartbeat(on_change, nursery)
        finally:
            store.owners.remove(self)
            self.book = LeaseBook(self.timings)
            with (
                trio.CancelScope(shield=True),
                realtime.move_on_after(min(5.0, self.timings.lease)),
            ):
                if started:
                    await self._exit()
                else:
                    await self._db.aclose()

    # -- the loop -----------------------------------------------------------------------

    def _warn(self, failures: int) -> Callable[..., None]:
        """``log.warning`` for the first failure in a row and then every WARN_EVERY
        seconds; ``log.debug`` in between, so an outage is reported, not flooded."""
        now = realtime.now()
        if failures == 1 or now - self._warned >= WARN_EVERY:
            self._warned = now
            return log.warning
        return log.debug

    async def _start(self) -> None:
        """Open the store (migrations), set up the shard rows, then tick once."""
        failures = 0
        while True:
            try:
                await self._pool.open()
                await self._db.run(self._setup)
                await self._tick()
                return
            except StoreError as exc:
                if not getattr(exc, "transient", False):
                    raise
                failures += 1
                delay = min(0.2 * 2**failures, self.timings.renew_every)
                self._warn(failures)(
                    "workflow %r: worker %s cannot reach the database yet (attempt %d, "
                    "retrying in %.1f s): %s",
                    self.workflow_name,
                    self.worker_id,
                    failures,
                    delay,
                    exc,
                )
                await realtime.sleep(delay)

    def _setup(self, conn: Any) -> None:
        q = self._queries
        params = self._params
        with conn.transaction():
            conn.execute(q.setup, params)
            sets = conn.execute(q.shard_sets, params).fetchall()
            if len(sets) == 1 and sets[0][0] == self.shards and sets[0][1] == self.shards:
                return
            if any(live for _, _, live in sets):
                found = sorted({n for n, _, _ in sets if n != self.shards})
                raise InvalidArgument(
                    f"workflow {self.workflow_name!r} is run with shards={found[0]} by other "
                    f"live workers, but this one has shards={self.shards}: every worker of a "
                    "workflow needs the same shards= (stop them all to change it)"
                )
            # Nobody holds a lease: the shard count may change.
            conn.execute(q.reset, params)
            conn.execute(q.setup, params)

    async def _tick(self) -> tuple[list[int], list[int]]:
        """One round of the protocol. Returns (gained, lost) shards."""
        releasing = sorted(self.book.releasing)
        sent = realtime.now()
        result: TickResult = await self._db.run(lambda conn: self._tick_sync(conn, releasing))
        self.workers = result.workers
        self.target = result.target
        gained, lost = self.book.renewed(result.leases, sent)
        self._changed.set()
        return gained, lost

    def _tick_sync(self, conn: Any, releasing: Sequence[int]) -> TickResult:
        q = self._queries
        params = {**self._params, "releasing": list(releasing)}
        with conn.transaction():
            conn.execute(q.register, params)
            leases = {int(s): int(e) for s, e in conn.execute(q.renew, params).fetchall()}
            workers = [str(w) for (w,) in conn.execute(q.live_workers, params).fetchall()]
            target = fair_share(workers, self.worker_id, self.shards)
            need = target - len(leases)
            if need > 0:
                params["need"] = need
                for shard, epoch in conn.execute(q.acquire, params).fetchall():
                    leases[int(shard)] = int(epoch)
            conn.execute(q.forget_dead, params)
        return TickResult(leases, sorted({*workers, self.worker_id}), target)

    async def _heartbeat(self, on_change: Callable[[], None], nursery: trio.Nursery) -> None:
        timings = self.timings
        failures = 0
        next_tick = realtime.now() + self._tick_interval()
        while True:
            await realtime.sleep_until(next_tick)
            started = realtime.now()
            try:
                gained, lost = await self._tick()
            except Exception as exc:
                failures += 1
                delay = min(0.1 * 2**failures, timings.renew_every)
                self._warn(failures)(
                    "workflow %r: worker %s could not renew its shard leases (attempt %d, "
                    "retrying in %.1f s; it stops working on shards %.1f s after the last "
                    "renewal): %s",
                    self.workflow_name,
                    self.worker_id,
                    failures,
                    delay,
                    timings.lease - timings.margin,
                    exc,
                )
                next_tick = realtime.now() + delay
                continue
            if failures:
                log.warning(
                    "workflow %r: worker %s renews its leases again (shards %s)",
                    self.workflow_name,
                    self.worker_id,
                    self.held(),
                )
            failures = 0
            next_tick = started + self._tick_interval()
            if lost:
                log.warning(
                    "workflow %r: worker %s lost shards %s (taken over after its lease expired)",
                    self.workflow_name,
                    self.worker_id,
                    lost,
                )
            if gained:
                log.info(
                    "workflow %r: worker %s acquired shards %s (now holds %s)",
                    self.workflow_name,
                    self.worker_id,
                    gained,
                    self.held(),
                )
            extras = self.book.extras(self.target, realtime.now())
            if extras:
                self.book.start_release(extras)
                nursery.start_soon(self._release, extras)
            if gained or lost or extras:
                on_change()

    def _tick_interval(self) -> float:
        """Seconds to the next tick: the renewal interval, shorter while this worker
        holds less than its fair share (see SHORT_TICK)."""
        if len(self.held()) < self.target:
            return min(SHORT_TICK, self.timings.renew_every)
        return self.timings.renew_every

    async def _release(self, shards: list[int]) -> None:
        """Give ``shards`` up: already not owned locally; drain, then free them."""
        log.info(
            "workflow %r: worker %s releases shards %s for a fair share (%d live workers)",
            self.workflow_name,
            self.worker_id,
            shards,
            len(self.workers),
        )
        await realtime.sleep(self.timings.drain)
        params = {**self._params, "shards": shards, "hold": timedelta(0)}
        try:
            await self._db.run(lambda conn: conn.execute(self._queries.release, params))
        except Exception as exc:
            # Not renewed any more: they expire on their own, a little later.
            log.warning(
                "workflow %r: worker %s could not release shards %s (they expire): %s",
                self.workflow_name,
                self.worker_id,
                shards,
                exc,
            )
        self.book.released(shards)
        self._changed.set()

    async def _hold_virtual_time_until_share(self) -> None:
        """Under trio's autojump clock, keep virtual time still from the start until this
        worker holds its fair share (for at most the takeover time, in real seconds).

        Leases come free in real time (a worker that just stopped holds them for a moment;
        one that died holds them until they expire; one with extras drains first), so a
        worker starting next to another waits real seconds for its shards. Meanwhile the
        autojump clock would jump to every virtual deadline of the program: a test's
        ``fail_after`` or ``await_status(timeout=...)`` would run out before the workflow
        could act. Under trio's own clock this does nothing.
        """
        if not realtime.is_virtual():
            return
        with realtime.holding_virtual_time(), realtime.move_on_after(self.timings.takeover):
            while len(self.held()) < self.target:
                await realtime.sleep(0.05)

    async def _watch_expiry(self, on_change: Callable[[], None]) -> None:
        """Tell the supervisor as soon as a lease ran out locally without a renewal."""
        while True:
            self._changed = trio.Event()
            with realtime.move_on_at(self.book.next_deadline()):
                await self._changed.wait()
            expired = self.book.expire(realtime.now())
            if expired:
                log.warning(
                    "workflow %r: worker %s stops working on shards %s: their leases were "
                    "not renewed in time (database unreachable?)",
                    self.workflow_name,
                    self.worker_id,
                    expired,
                )
                on_change()

    async def _exit(self) -> None:
        params = {**self._params, "hold": timedelta(seconds=EXIT_HOLD)}
        q = self._queries

        def leave(conn: Any) -> None:
            with conn.transaction():
                conn.execute(q.release_all, params)
                conn.execute(q.unregister, params)

        try:
            await self._db.run(leave, attempts=1)
        except Exception as exc:
            log.warning(
                "workflow %r: worker %s could not free its leases on exit (they expire "
                "within %.0f s): %s",
                self.workflow_name,
                self.worker_id,
                self.timings.lease,
                exc,
            )
        finally:
            await self._db.aclose()
