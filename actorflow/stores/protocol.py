"""The store seam: one Protocol that every store implements and one contract suite tests.

Stores keep raw records (object as JSON, status as int) for any number of workflows,
each scoped by ``workflow_name``. A transition is one atomic :meth:`Store.commit`: the
new latest version (optimistic version check), its history row (which is also the
event-log entry), and the run's timers replaced when asked. Every successful write is
published on :attr:`Store.feed` after it is durable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import trio

from actorflow._model.errors import ActorflowError
from actorflow._model.record import Event, RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow.stores.feed import ChangeFeed
from actorflow.stores.filters import ANY_RUN, RunFilter


@runtime_checkable
class Store(Protocol):
    """What a workflow needs from durable storage."""

    shared: bool
    """True when other processes may write to the same storage (SQLite file, PostgreSQL)."""

    @property
    def feed(self) -> ChangeFeed:
        """The in-process change feed this store publishes every durable write to."""
        ...

    async def create_run(self, record: RawRecord, timers: Sequence[Timer] = ()) -> RawRecord:
        """Store the first version (``version == 1``) of a new run, with its timers.

        Raises:
            WorkflowInProgress: the latest run of ``(workflow_name, foreign_id)`` has a run
                state that is not finished (INITIATED, RUNNING or PAUSED).
        """
        ...

    async def create_runs(
        self, items: Sequence[tuple[RawRecord, Sequence[Timer]]]
    ) -> list[RawRecord | ActorflowError]:
        """Store the first versions of many new runs (with their timers) in as few
        transactions as the store can; the answer per item is the stored record or the
        error that refused it (``WorkflowInProgress``, a run id that exists), in order.

        The in-progress rule is that of :meth:`create_run`, applied item by item in order:
        a second item of a foreign id in one call is refused when the first was stored.
        """
        ...

    async def commit(
        self,
        record: RawRecord,
        *,
        timers: Sequence[Timer] | None = None,
        scrub_history: bool = False,
    ) -> RawRecord:
        """Store ``record`` as the next version of its run, atomically with its history row.

        ``record.version`` must be the stored version + 1. ``timers=None`` leaves the run's
        timers as they are; a sequence replaces all of them. ``scrub_history=True`` also
        overwrites the object of every earlier version with ``record.object``.

        Raises:
            VersionConflict: the stored version is not ``record.version - 1``.
            RunNotFound: no such run.
        """
        ...

    async def lookup(self, workflow_name: str, run_id: str) -> RawRecord:
        """The latest version of a run. Raises RunNotFound."""
        ...

    async def latest(self, workflow_name: str, foreign_id: str) -> RawRecord:
        """The latest version of the most recently created run of a foreign id.

        Raises RunNotFound."""
        ...

    async def list_runs(
        self,
        workflow_name: str,
        flt: RunFilter = ANY_RUN,
        *,
        limit: int = 25,
        after: str | None = None,
        descending: bool = False,
    ) -> list[RawRecord]:
        """The latest version of each run that ``flt`` matches (checked by whoever made
        it, see :meth:`RunFilter.make`), in creation order (or reversed).

        ``limit`` is the page size (1 to ``MAX_PAGE``, else InvalidArgument); ``after`` is
        the run id of the last record of the previous page (keyset pagination); an unknown
        ``after`` raises RunNotFound."""
        ...

    async def count_runs(
        self, workflow_name: str, flt: RunFilter = ANY_RUN
    ) -> dict[tuple[int, RunState], int]:
        """How many runs ``flt`` matches, by (status, run state); pairs with no run are
        left out."""
        ...

    async def history(self, workflow_name: str, run_id: str) -> list[RawRecord]:
        """Every stored version of a run, oldest first. Raises RunNotFound."""
        ...

    async def list_timers(self, workflow_name: str, run_id: str | None = None) -> list[Timer]:
        """Pending timers of one run, or of the whole workflow, earliest first."""
        ...

    async def timers_after(
        self, workflow_name: str, after: tuple[datetime, int] | None, limit: int
    ) -> list[tuple[int, Timer]]:
        """The next ``limit`` pending timers of the workflow in ``(fire_at, id)`` order,
        after the key ``after`` (None: from the first), each with its id.

        The id is the store's own number for the timer (positive, unique within the
        workflow); the supervisor pages through timers by this key, from the ``fire_at``
        index, instead of loading all of them."""
        ...

    async def prune_history(
        self,
        workflow_name: str,
        *,
        keep_last: int | None,
        before: datetime | None,
        finished_before: datetime,
        after_id: int,
        scan: int,
    ) -> tuple[int, int | None]:
        """Delete old versions of finished runs (history retention), one slice at a time.

        Looks at the history rows (versions) with ids in ``(after_id, after_id + scan]``
        and deletes those of runs that finished (COMPLETED, CANCELLED, DATA_DELETED) before
        ``finished_before``, that are not the run's latest version, and that both rules
        given let go: not among the run's ``keep_last`` latest versions, and stored before
        ``before``. Returns (rows deleted, the next ``after_id``, or None past the end)."""
        ...

    async def read_events(
        self, after: int, limit: int = 100, workflow_name: str | None = None
    ) -> list[Event]:
        """Event-log entries with ``id > after``, in commit order (ids strictly increase)."""
        ...

    async def last_event_id(self) -> int:
        """The id of the newest event-log entry (0 when the log is empty)."""
        ...

    async def get_cursor(self, name: str) -> str | None:
        """A durable named cursor (connectors, relays, hooks), or None if never set."""
        ...

    async def set_cursor(self, name: str, value: str) -> None:
        """Durably set a named cursor."""
        ...

    async def claim_schedule(self, key: str, fire_at: datetime) -> bool:
        """Atomically record ``fire_at`` as the last fired time of schedule ``key``.

        Returns False (and changes nothing) when ``fire_at`` is not later than the time
        already recorded: that cron time has fired before."""
        ...

    async def last_schedule(self, key: str) -> datetime | None:
        """The last fired time of schedule ``key``, or None."""
        ...

    async def aclose(self) -> None:
        """Release connections and files. The store must not be used afterwards."""
        ...


@runtime_checkable
class Ownership(Protocol):
    """Which runs this process may work on (scale-out: shard leases). Without one, all."""

    def owns(self, run_id: str) -> bool:
        """True while this process holds the lease of the run's shard."""
        ...

    async def serve(
        self,
        on_change: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hold and renew leases until cancelled; call ``on_change()`` whenever the set of
        owned shards changes. Reports started once the first leases are held."""
        ...


@runtime_checkable
class OwnedEvents(Protocol):
    """An Ownership that reads the event log for its process's tail: the events that
    other processes wrote to runs it may own (a superset is fine), so a worker does not
    read every other worker's commits. Runs of shards gained later are found by recovery."""

    async def owned_events(self, after: int, limit: int) -> tuple[list[Event], int]:
        """Such events with ``id > after`` in id order, with none skipped (as
        ``Store.read_events``), and the position to read from next (past the events
        that were left out)."""
        ...


@runtime_checkable
class RunWithTimers(Protocol):
    """A store that reads a run and its timers in one request: for a store whose every
    read is a thread hop and a round trip (PostgreSQL), an actor taking up a run that
    another process wrote reads both at once."""

    async def lookup_with_timers(
        self, workflow_name: str, run_id: str
    ) -> tuple[RawRecord, list[Timer]]:
        """``lookup(workflow_name, run_id)`` and ``list_timers(workflow_name, run_id)``."""
        ...


@runtime_checkable
class Leadership(Protocol):
    """An Ownership that also elects one process per workflow to run its singleton
    services (hooks, relay, connectors: two copies would deliver twice and race on their
    durable cursors). ``leader`` may only change together with an ``on_change()`` call
    (or turn False by the passing of time, which ``owns`` does as well)."""

    @property
    def leader(self) -> bool:
        """True while this process runs the workflow's singleton services."""
        ...


@runtime_checkable
class ShardedStore(Protocol):
    """A store that splits each workflow's runs into shards leased by worker processes
    (PostgreSQL): ``Workflow.run`` serves the ownership it makes."""

    def shard_ownership(
        self, workflow_name: str, *, shards: int = 16, lease: timedelta = timedelta(seconds=10)
    ) -> Ownership:
        """The shard leases of this process for ``workflow_name`` (also a Leadership)."""
        ...


@runtime_checkable
class DefinitionRegistry(Protocol):
    """Stores that remember which workflow definitions ran on them (all built-in stores).

    A worker processes runs last written by its own definition or by one registered
    before it, never by a newer one: that keeps an old worker off runs a new one wrote
    during a rolling deploy (docs/upgrading.md). A store without it: every fingerprint
    other than the worker's own counts as newer.
    """

    async def register_definition(
        self, workflow_name: str, fingerprint: str, summary: str, now: datetime
    ) -> list[tuple[str, str, datetime]]:
        """Record ``fingerprint`` (with its ``summary`` JSON) for the workflow unless it is
        known; return every known definition as ``(fingerprint, summary, registered_at)``,
        in the order they were first registered."""
        ...
