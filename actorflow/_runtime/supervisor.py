"""Supervisor: one per running workflow. Spawns run actors, arms timers, recovers runs.

Structure (all inside ``Workflow.run``)::

    services nursery: timer loop · event-log tail · hooks · connectors · relay
      actors nursery: one RunActor per active run (bounded by max_active_runs)

A graceful stop stops new work, interrupts idle waits, gives steps in flight the grace
period, then cancels; the services go last.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import functools
import logging
import math
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar, final

import trio

from actorflow._model.clock import trio_deadline
from actorflow._model.errors import ActorflowError, lone_build_error
from actorflow._model.evolution import CheckReport
from actorflow._model.process import ProcessState
from actorflow._model.record import Event, RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow._runtime.actor import Ask, Op, Reply, RunActor, Stopped
from actorflow._runtime.engine import Engine
from actorflow._runtime.evolution import check
from actorflow._runtime.ports import Leadership, Ownership, Service
from actorflow._runtime.retry import retrying
from actorflow._runtime.timers import TimerWindow
from actorflow.stores.feed import ChangeFeed
from actorflow.stores.filters import RunFilter

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

RECOVERY_PAGE = 500
TAIL_BATCH = 1000
RETRY_DELAY = timedelta(seconds=5)
SEEN_LIMIT = 100_000
WAITING_FROM_BACKFILL = 4
"""trigger_many queues at most this many times max_active_runs runs for a slot; a
recovery pass finds the others in the store."""
TIMER_HORIZON = timedelta(hours=1)
"""Stored timers due within this are held in memory; later ones are paged in."""
TIMER_CAPACITY = 10_000
"""About how many stored timers memory holds at most."""

R = TypeVar("R")


def _same_context(one: contextvars.Context, other: contextvars.Context) -> bool:
    """Whether two contexts hold the same variables with the same values."""
    if len(one) != len(other):
        return False
    return all(var in other and other[var] is value for var, value in one.items())


@final
class Supervisor(Generic[T, S]):
    def __init__(
        self,
        engine: Engine[T, S],
        *,
        grace_period: timedelta,
        poll_interval: timedelta,
        max_active_runs: int,
        services: list[Service],
        ownership: Ownership | None = None,
        on_stranded: str | None = "pause",
    ) -> None:
        self.engine = engine
        self.on_stranded = on_stranded
        """None: no check at start; else what the check does with stranded runs."""
        self.last_check: CheckReport | None = None
        self._to_migrate: set[str] = set()
        """Runs the check found to migrate or park, woken once this process owns them."""
        self.grace_period = grace_period
        self.poll_interval = poll_interval
        self.max_active_runs = max_active_runs
        self._waiting: OrderedDict[str, tuple[RawRecord | None, list[Timer] | None]] = OrderedDict()
        """Runs to wake when an actor slot frees up (insertion order: first in, first out).
        A waiting run costs a dict entry, not a task: memory stays flat under bursts."""
        self._room = trio.lowlevel.ParkingLot()
        self.actors: dict[str, RunActor[T, S]] = {}
        self._seen: OrderedDict[str, int] = OrderedDict()
        """run id -> the version its last actor knew (bounded; see ``_remember``)."""
        self.stopping = False
        self._stop = trio.Event()
        self.timers = TimerWindow(TIMER_HORIZON, TIMER_CAPACITY)
        """Wake-ups due soon; the rest of the stored timers are paged in as time passes."""
        self.retry_at: dict[str, float] = {}
        """Backoff deadlines of passivated runs, for the actor that picks them up again."""
        self.snoozed: dict[str, dict[Timer, datetime]] = {}
        """Skipped timeouts of passivated runs and when each may fire again (likewise)."""
        self._heap_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._services = services
        self.ownership = ownership
        self._services_nursery: trio.Nursery | None = None
        self._leader_changed = trio.Event()
        self._leader_scopes: set[trio.CancelScope] = set()
        self._recovering = False
        self._recover_again = False
        self.serving = False
        """True from the started report until the stop: taking work (timers are paged in)."""
        self.recovered = False
        """True once every unfinished run found at start (or at a shard change) was woken."""

    # -- lifecycle -----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._serve_locked(task_status)
        except BaseExceptionGroup as group:
            # A refusal at start comes alone: raise it as itself, not in a group.
            refused = lone_build_error(group)
            if refused is not None:
                raise refused from None
            raise

    async def _serve_locked(self, task_status: trio.TaskStatus[None]) -> None:
        engine = self.engine
        # SQLiteStore: one process runs workflows on a file (StoreError for a second one).
        worker_lock = getattr(engine.store, "worker_lock", None)
        with worker_lock() if worker_lock is not None else contextlib.nullcontext():
            await self._serve(task_status)

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        engine = self.engine
        engine.on_timers = self.schedule_run
        try:
            async with trio.open_nursery() as services:
                self._services_nursery = services
                if self.ownership is not None:
                    await services.start(self.ownership.serve, self._ownership_changed)
                async with trio.open_nursery() as actors:
                    self._nursery = actors
                    shared = getattr(engine.store, "shared", False)
                    # SQLiteStore: which other connections' commits are behind us (read
                    # before the log position, so every one of them is at or before it).
                    data_version = getattr(engine.store, "data_version", None)
                    version = await data_version() if shared and data_version else None
                    # Read the log position first: what is written after it, the tail sees.
                    after = await engine.store.last_event_id() if shared else 0
                    to_wake: list[str] = []
                    if self.on_stranded is not None:
                        result = await check(engine, on_stranded=self.on_stranded, owns=self.owns)
                        self.last_check = result.report
                        to_wake = result.to_wake
                    elif not engine.registered:
                        await engine.register()
                    self._to_migrate.update(to_wake)
                    self._wake_to_migrate()
                    # Nothing pageable is waited for: timers are read by the timer loop
                    # and runs by recovery, in short steps, after ready is reported.
                    services.start_soon(self._timer_loop)
                    self._request_recovery()
                    if shared:
                        services.start_soon(self._tail, after, version)
                    for service in self._services:
                        services.start_soon(self._singleton, service)
                    self.serving = True
                    task_status.started()
                    await self._stop.wait()
                    self.stopping = True
                    self.serving = False
                    for actor in list(self.actors.values()):
                        actor.interrupt()
                    actors.cancel_scope.deadline = (
                        trio.current_time() + self.grace_period.total_seconds()
                    )
                services.cancel_scope.cancel()
            if not self._stop.is_set():
                # Only a trio.Cancelled that nothing cancelled (swallowed by a nursery it
                # made cancel itself) gets here: never return as if stopped.
                raise ActorflowError(
                    f"workflow {engine.name!r} stopped unexpectedly: one of its tasks raised "
                    "trio.Cancelled while nothing had cancelled it"
                )
        finally:
            self.stopping = True
            self.serving = False
            self._nursery = None
            self._services_nursery = None
            engine.on_timers = None

    def stop(self) -> None:
        self._stop.set()

    # -- health ------------------------------------------------------------------------------

    def states(self) -> dict[str, ProcessState]:
        """The state of the step and timeout consumers, the timers and shard ownership,
        worked out now from what the supervisor holds (no bookkeeping on the hot path)."""
        engine = self.engine
        if not self.serving:
            return _all_stopped(self.process_names())
        erroring = engine.erroring()
        busy: set[int] = set()
        for actor in self.actors.values():
            status = actor.active_status
            if status is not None:
                busy.add(status)
        for known, _ in self._waiting.values():
            if known is not None:
                busy.add(known.status)
        found: dict[str, ProcessState] = {}
        for processes in (engine.step_processes, engine.timeout_processes):
            for status, process in processes.items():
                if process.name in erroring:
                    found[process.name] = ProcessState.ERRORING
                elif status in busy:
                    found[process.name] = ProcessState.RUNNING
                else:
                    found[process.name] = ProcessState.IDLE
        found["timers"] = ProcessState.RUNNING if len(self.timers) else ProcessState.IDLE
        if self.ownership is not None:
            found["shard-ownership"] = (
                ProcessState.RUNNING if self.has_share() else ProcessState.IDLE
            )
        return found

    def counts(self) -> tuple[int, int, int]:
        """(run actors, runs waiting for a slot, runs with an armed timer)."""
        return len(self.actors), len(self._waiting), len(self.timers)

    def process_names(self) -> list[str]:
        """The names :meth:`states` reports."""
        engine = self.engine
        names = [p.name for p in engine.step_processes.values()]
        names += [p.name for p in engine.timeout_processes.values()]
        names.append("timers")
        if self.ownership is not None:
            names.append("shard-ownership")
        return names

    def has_share(self) -> bool:
        """Whether this process holds its fair share of shard leases (always, without
        scale-out)."""
        ownership = self.ownership
        if ownership is None:
            return True
        held = getattr(ownership, "held", None)
        target = getattr(ownership, "target", 0)
        if held is None:
            return True
        return len(held()) >= int(target)

    @property
    def ready(self) -> bool:
        """Recovered and taking work (and, with scale-out, holding its share of shards)."""
        return self.serving and self.recovered and self.has_share()

    def leads(self) -> bool:
        """Whether this process runs the workflow's singleton services now."""
        return self._leads()

    # -- ownership ---------------------------------------------------------------------------

    def owns(self, run_id: str) -> bool:
        return self.ownership is None or self.ownership.owns(run_id)

    def _ownership_changed(self) -> None:
        """Shards moved: let go of runs we lost, pick up runs and timers of shards we got."""
        for actor in list(self.actors.values()):
            if not self.owns(actor.run_id):
                actor.interrupt()
        if not self._leads():
            for scope in self._leader_scopes:
                scope.cancel()
        self._leader_changed.set()
        self._leader_changed = trio.Event()
        if self._nursery is not None and self._services_nursery is not None and not self.stopping:
            self._wake_to_migrate()
            self.timers.reset()  # timers of the shards we got are read page by page
            self._heap_changed.set()
            self._request_recovery()

    def _wake_to_migrate(self) -> None:
        """Wake the runs to migrate that this process owns: each migrates as it loads."""
        for run_id in [r for r in self._to_migrate if self.owns(r)]:
            self._to_migrate.discard(run_id)
            self.wake(run_id)

    def _leads(self) -> bool:
        ownership = self.ownership
        return not isinstance(ownership, Leadership) or ownership.leader

    async def _singleton(self, service: Service) -> None:
        """Run ``service`` while this process leads the workflow (always, without leader
        election); stop it when the leadership moves away, start it again when it is back."""
        while True:
            while not self._leads():
                await self._leader_changed.wait()
            with trio.CancelScope() as scope:
                self._leader_scopes.add(scope)
                try:
                    await service()
                    return
                finally:
                    self._leader_scopes.discard(scope)
            log.info(
                "workflow %r: not the leader any more: service stopped",
                self.engine.name,
                extra={"workflow_name": self.engine.name},
            )

    # -- actors --------------------------------------------------------------------------------

    def wake(
        self, run_id: str, known: RawRecord | None = None, timers: list[Timer] | None = None
    ) -> None:
        """Make sure an actor looks at the run now (spawning one if needed).

        ``known`` (with its ``timers``) is the run as the caller just stored it: a new
        actor starts from it instead of reading the run back from the store.
        """
        if self.stopping or self._nursery is None or not self.owns(run_id):
            return
        actor = self.actors.get(run_id)
        if actor is not None:
            actor.poke()
        elif len(self.actors) >= self.max_active_runs:
            if known is not None or run_id not in self._waiting:
                self._waiting[run_id] = (known, timers)
        else:
            self._spawn(run_id, known, timers)

    def wake_new(self, known: RawRecord, timers: list[Timer]) -> None:
        """A run was just created here by trigger_many: start it from ``known``.

        When more runs wait for a slot than could start soon, the run is left to a
        recovery pass instead, which reads them back page by page: a backfill of a
        million runs costs no memory per run here."""
        if len(self._waiting) < WAITING_FROM_BACKFILL * self.max_active_runs:
            self.wake(known.run_id, known, timers)
        else:
            self._request_recovery()

    def _spawn(
        self, run_id: str, known: RawRecord | None = None, timers: list[Timer] | None = None
    ) -> RunActor[T, S]:
        assert self._nursery is not None
        actor = self._actor(run_id, known, timers)
        self._nursery.start_soon(self._drive, actor)
        return actor

    def _actor(
        self, run_id: str, known: RawRecord | None, timers: list[Timer] | None
    ) -> RunActor[T, S]:
        actor: RunActor[T, S] = RunActor(self, run_id)
        if known is not None and timers is not None:
            actor.start_from(known, timers)
        self.actors[run_id] = actor
        return actor

    async def _drive(self, actor: RunActor[T, S]) -> None:
        """The task of ``actor`` and, when it is done, of the runs waiting for a slot, one
        after another: a burst of runs reuses tasks instead of spawning one per run.

        A run's steps never see context variables that another run's steps set: once a
        step has set one, the next waiting run gets a new task, started in the context
        this task started with.
        """
        start = contextvars.copy_context()
        current: RunActor[T, S] | None = actor
        while current is not None:
            await current.main()
            current = self._next_waiting()
            if current is not None and not _same_context(start, contextvars.copy_context()):
                assert self._nursery is not None  # _next_waiting checked it
                start.run(self._nursery.start_soon, self._drive, current)
                return

    def _next_waiting(self) -> RunActor[T, S] | None:
        """An actor for the longest-waiting run, when there is one and room for it."""
        while self._waiting and len(self.actors) < self.max_active_runs:
            if self.stopping or self._nursery is None:
                self._waiting.clear()
                return None
            run_id, (known, timers) = self._waiting.popitem(last=False)
            if run_id not in self.actors:
                return self._actor(run_id, known, timers)
        return None

    def forget(self, actor: RunActor[T, S]) -> None:
        """``actor`` stopped: its slot is free (its task takes the next waiting run)."""
        if self.actors.get(actor.run_id) is actor:
            del self.actors[actor.run_id]
            self._remember(actor.run_id, actor.known_version)
        if self._room:
            self._room.unpark_all()

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

    def _remember(self, run_id: str, version: int) -> None:
        """Keep the version a finished actor last knew: the tail then does not wake the
        run for events up to it (mostly this process's own writes, read back)."""
        if version:
            seen = self._seen
            seen[run_id] = version
            seen.move_to_end(run_id)
            if len(seen) > SEEN_LIMIT:
                seen.popitem(last=False)  # the oldest; forgetting is safe

    async def ask(self, run_id: str, op: Op) -> Any:
        """Have the run's actor perform ``op``; raises Stopped when stopping."""
        while True:
            if self.stopping or self._nursery is None:
                raise Stopped("the workflow is stopping")
            actor = self.actors.get(run_id) or self._spawn(run_id)
            if actor.task is not None and actor.task is trio.lowlevel.current_task():
                raise ActorflowError(
                    f"workflow {self.engine.name!r} run {run_id}: a step cannot pause, resume, "
                    "cancel or call back its own run through the workflow (it would wait for "
                    "itself); return run.pause(), run.cancel() or a status instead"
                )
            reply = Reply()
            try:
                await actor.send.send(Ask(op, reply))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue  # that actor just passivated: spawn a new one
            return await reply.wait()

    def retry_later(self, run_id: str) -> None:
        self._arm(run_id, self.engine.now() + RETRY_DELAY, pinned=True)

    def wake_later(self, run_id: str, deadline: float, retry_at: float) -> None:
        """A passivating actor's long wait: wake the run at trio time ``deadline``."""
        if retry_at > trio.current_time():
            self.retry_at[run_id] = retry_at
        wait = timedelta(seconds=max(0.0, deadline - trio.current_time()))
        self._arm(run_id, self.engine.now() + wait, pinned=True)

    # -- timers --------------------------------------------------------------------------------

    def schedule(self, timers: list[Timer]) -> None:
        """Arm the timers of each run in ``timers`` (replacing what was armed for them)."""
        by_run: dict[str, datetime] = {}
        for timer in timers:
            earliest = by_run.get(timer.run_id)
            if earliest is None or timer.fire_at < earliest:
                by_run[timer.run_id] = timer.fire_at
        for run_id, when in by_run.items():
            self.timers.disarm(run_id)
            self.arm(run_id, when)

    def schedule_run(self, run_id: str, timers: list[Timer]) -> None:
        """The run's timers are now exactly ``timers`` (called on every commit that sets them)."""
        self.timers.disarm(run_id)
        if timers:
            self.arm(run_id, min(t.fire_at for t in timers))

    def arm(self, run_id: str, when: datetime, *, pinned: bool = False) -> None:
        """Wake the run at ``when`` unless it is already due to be woken earlier. A stored
        timer's time is held in memory only inside the timer window; a ``pinned`` one
        (in memory only: backoff, a snoozed timeout) always."""
        self._arm(run_id, when, pinned=pinned)

    def _arm(self, run_id: str, when: datetime, *, pinned: bool) -> None:
        if self.timers.arm(run_id, when, self.engine.now(), pinned=pinned):
            self._heap_changed.set()

    async def _timer_loop(self) -> None:
        engine = self.engine
        clock = engine.clock
        window = self.timers
        failures = 0
        while True:
            request = window.page_request(clock.now())
            if request is not None:
                after, limit = request
                try:
                    rows = await engine.store.timers_after(engine.name, after, limit)
                except Exception as exc:
                    window.page_failed(clock.now())
                    failures += 1
                    log.warning("workflow %r: reading timers failed: %s", engine.name, exc)
                    await trio.sleep(
                        max(engine.default_options.backoff(failures).total_seconds(), 0.01)
                    )
                    continue
                failures = 0
                window.page_read(rows, limit, clock.now(), self.owns)
                await trio.lowlevel.checkpoint()
                continue
            self._heap_changed = trio.Event()
            when = window.next_wake(clock.now())
            deadline = math.inf if when is None else trio_deadline(clock, when)
            with trio.move_on_at(deadline):
                await self._heap_changed.wait()
            for run_id in window.pop_due(clock.now()):
                self.wake(run_id)
            await trio.lowlevel.checkpoint()

    # -- recovery and other processes' writes ----------------------------------------------

    def _request_recovery(self) -> None:
        """Have a recovery pass run (again, after the one under way)."""
        if self._recovering:
            self._recover_again = True
        elif self._services_nursery is not None and not self.stopping:
            self._recovering = True
            self._services_nursery.start_soon(self._recovery)

    async def _recovery(self) -> None:
        try:
            while True:
                self._recover_again = False
                await self._recover()
                if not self._recover_again or self.stopping:
                    return
        finally:
            self._recovering = False

    async def _recover(self) -> None:
        """Spawn an actor for every unfinished run that has a step to run.

        One status at a time: each page is then a range of the store's (workflow, status,
        creation) index, however many runs wait at other statuses (a query for several
        statuses at once may walk every run of the workflow in creation order instead)."""
        for status in self.engine.definition.steps:
            if not await self._recover_status(int(status)):
                return
        self.recovered = True

    async def _recover_status(self, status: int) -> bool:
        """Recover the runs at ``status``; False when stopping."""
        engine = self.engine
        after: str | None = None
        while not self.stopping:
            page = await retrying(
                functools.partial(
                    engine.store.list_runs,
                    engine.name,
                    RunFilter(
                        statuses=frozenset([status]),
                        run_states=frozenset([RunState.INITIATED, RunState.RUNNING]),
                    ),
                    limit=RECOVERY_PAGE,
                    after=after,
                ),
                options=engine.default_options,
                what=f"workflow {engine.name!r}: recovering runs",
                log=log,
            )
            for raw in page:
                if self.stopping:
                    return False
                if raw.run_id in self.actors or not self.owns(raw.run_id):
                    continue
                while len(self.actors) + len(self._waiting) >= self.max_active_runs:
                    await self._room.park()  # recovery goes no faster than runs finish
                    if self.stopping:
                        return False
                self.wake(raw.run_id)
            if len(page) < RECOVERY_PAGE:
                return True
            after = page[-1].run_id
        return False

    async def _tail(self, after: int, seen_version: object = None) -> None:
        """Follow the store's event log for changes made by other processes (the safety
        net behind in-process wake-ups; with several processes it is how work is found).

        ``seen_version``: the store's ``data_version`` when ``after`` was read (SQLite);
        the log is read again only once another connection has committed since."""
        engine = self.engine
        # The safety-net poll is measured in real time: other processes live in real
        # time, and a poll on a virtual clock would spin while a test jumps a year.
        interval = self.poll_interval.total_seconds()
        # LISTEN/NOTIFY (PostgresStore): woken as soon as another process writes work for
        # this one; the poll stays the safety net.
        changes = getattr(engine.store, "changes", None)
        mark = 0 if changes is None else changes.mark()
        # SQLiteStore: ``data_version`` changes only when another connection commits; a
        # watcher thread looks at it in real time and wakes us only when it changed.
        data_version = getattr(engine.store, "data_version", None)
        feed = engine.store.feed
        external = feed.external
        failures = 0
        while True:
            if failures:
                # The last read failed: read again after the back-off, on trio's clock (a
                # failing read is retried soon whether or not anybody writes again).
                await trio.sleep(engine.default_options.retry_seconds(failures))
            elif changes is None:
                await feed.wait_external(external, interval)
                external = feed.external
            else:
                await changes.wait(mark, interval)
                mark = changes.mark()
            if data_version is not None:
                try:
                    # The log's end first: whatever was written up to it, if nobody else
                    # committed since the last look, was written by this store instance
                    # and woke its runs in-process already.
                    last = await engine.store.last_event_id()
                    version = await data_version()
                except Exception as exc:
                    failures += 1
                    log.warning(
                        "workflow %r: reading the event log failed: %s",
                        engine.name,
                        exc,
                        extra={"workflow_name": engine.name},
                    )
                    failures += 1
                    continue
                if version == seen_version:
                    after = max(after, last)
                    failures = 0
                    continue
            else:
                version = None
            while True:
                try:
                    events = await engine.store.read_events(after, TAIL_BATCH, engine.name)
                except Exception as exc:
                    # Not read to its end: the next look reads from ``after`` again.
                    failures += 1
                    log.warning(
                        "workflow %r: reading the event log failed: %s",
                        engine.name,
                        exc,
                        extra={"workflow_name": engine.name},
                    )
                    failures += 1
                    break
                failures = 0
                for event in events:
                    after = event.id
                    await self._noticed(event)
                if len(events) < TAIL_BATCH:
                    seen_version = version  # read to its end as of that version
                    break

    async def _noticed(self, event: Event) -> None:
        await self._relay_to_feed(event)
        if event.run_state.finished or not self.owns(event.run_id):
            return
        definition = self.engine.definition
        actor = self.actors.get(event.run_id)
        known = actor.known_version if actor is not None else self._seen.get(event.run_id, 0)
        if known >= event.version:
            return  # nothing new: our own write, or a version an actor here has seen
        if event.status in definition.timeouts or event.run_state is RunState.PAUSED:
            try:
                self.schedule(await self.engine.store.list_timers(self.engine.name, event.run_id))
            except Exception as exc:
                log.warning(
                    "workflow %r: reading timers failed: %s",
                    self.engine.name,
                    exc,
                    extra={"workflow_name": self.engine.name, "run_id": event.run_id},
                )
        if actor is not None:
            actor.poke()
        elif event.status in definition.steps and event.run_state.active:
            self.wake(event.run_id)


def _all_stopped(names: list[str]) -> dict[str, ProcessState]:
    return dict.fromkeys(names, ProcessState.STOPPED)
