"""Supervisor: one per running workflow. Spawns run actors, arms timers, recovers runs.

Structure (all inside ``Workflow.run``)::

    services nursery: timer loop · event-log tail · hooks · connectors · relay
      actors nursery: one RunActor per active run (bounded by max_active_runs)

A graceful stop stops new work, interrupts idle waits, gives steps in flight the grace
period, then cancels; the services go last.

Having an actor look at a run, the four ways (each documented where it is defined):
``wake_now`` (now; spawns an actor or has the live one look again), ``wake_created`` (a
run trigger_many just stored), ``wake_at`` (at a wall time) and ``wake_for_timers`` (when
the earliest of the run's stored timers is due). Recovery (``recovery.py``) and the store
tail (``tail.py``) find runs to wake; ``health.py`` reports the processes' states.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar, final

import trio

from actorflow._model.clock import trio_deadline
from actorflow._model.errors import ActorflowError, lone_build_error
from actorflow._model.evolution import CheckReport
from actorflow._model.process import ProcessState
from actorflow._model.record import RawRecord, Timer
from actorflow._runtime.actor import ACTOR_RUN, RunActor
from actorflow._runtime.engine import Engine
from actorflow._runtime.evolution import check
from actorflow._runtime.health import (
    holds_share,
    process_names,
    process_states,
    stopped_states,
)
from actorflow._runtime.mailbox import Ask, Op, Reply, Stopped
from actorflow._runtime.ports import Leadership, OwnedEvents, Ownership, Service
from actorflow._runtime.recovery import Recovery
from actorflow._runtime.tail import StoreTail
from actorflow._runtime.timers import TimerWindow

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

WAITING_FROM_BACKFILL = 4
"""trigger_many queues at most this many times max_active_runs runs for a slot; a
recovery pass finds the others in the store."""
TIMER_HORIZON = timedelta(hours=1)
"""Stored timers due within this are held in memory; later ones are paged in."""
TIMER_CAPACITY = 10_000
"""About how many stored timers memory holds at most."""

R = TypeVar("R")


_RunKey = tuple[object, str]
"""A run in this process: (its workflow's supervisor, its run id)."""

_WAITING: dict[_RunKey, list[_RunKey]] = {}
"""Run -> the runs its user code is waiting on now (``Supervisor.waiting_on``), across the
workflows of the process: to refuse a cycle, where each run's user code waits for the
other's actor."""


_Turn = tuple[object, str]
"""A workflow on a storage in this process: (the store's ``storage_key``, else the store
object; the workflow's name)."""

_SERVING: dict[_Turn, Supervisor[Any, Any]] = {}
"""Workflow on a storage -> the supervisor working on its runs in this process, for the
workflows served without shard ownership. A second supervisor of the same workflow on the
same storage (another ``Workflow`` object of the same name, on the same MemoryStore or on
another SQLiteStore of the same file) stands by until this one stops: two would both run
steps and timers for the same runs."""

_STANDBYS: dict[_Turn, list[Supervisor[Any, Any]]] = {}
"""Workflow on a storage -> its standby supervisors, in the order they started."""

_SHARING: dict[_Turn, list[Supervisor[Any, Any]]] = {}
"""Workflow on a store object -> the supervisors serving it there in this process with shard
ownership (PostgreSQL): each works on the runs of its shards. A run woken through one that
does not own it (a trigger or control of its Workflow object) is woken in the one that
does: writes through the store object they share notify neither."""


def _waits_on(run: _RunKey, target: _RunKey) -> bool:
    """Whether user code of ``run`` waits (through the runs it waits on) on ``target``."""
    seen: set[_RunKey] = set()
    pending = [run]
    while pending:
        current = pending.pop()
        if current == target:
            return True
        if current not in seen:
            seen.add(current)
            pending.extend(_WAITING.get(current, ()))
    return False


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
        self.actors: dict[str, RunActor[T, S]] = {}
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
        self.serving = False
        """True from the started report until the stop: taking work (timers are paged in)."""
        self.standby = False
        """True while another supervisor of this workflow works on its runs on the same
        storage in this process: this one reported started and waits to take over."""
        self._standby_scope: trio.CancelScope | None = None
        self._turn: _Turn | None = None
        """Where this supervisor is the one that works on the workflow's runs (_SERVING)."""
        self._handed_over = trio.Event()
        """Set when the supervisor this one stands by for hands the runs over to it."""
        self.recovery = Recovery(engine, self)
        self.tail = StoreTail(
            engine,
            self,
            poll_interval,
            ownership if isinstance(ownership, OwnedEvents) else None,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the workflow until :meth:`stop`: take work, wake runs, run the services."""
        # SQLiteStore: one process runs workflows on a file (StoreError for a second one).
        worker_lock = getattr(self.engine.store, "worker_lock", None)
        try:
            with worker_lock() if worker_lock is not None else contextlib.nullcontext():
                status = await self._take_turn(task_status)
                if status is None:
                    return  # stopped while standing by
                try:
                    await self._serve(status)
                finally:
                    self._end_turn()
        except BaseExceptionGroup as group:
            # A refusal at start comes alone: raise it as itself, not in a group.
            refused = lone_build_error(group)
            if refused is not None:
                raise refused from None
            raise

    def _storage(self) -> _Turn:
        """This workflow on this storage (see _SERVING)."""
        store = self.engine.store
        return (getattr(store, "storage_key", store), self.engine.name)

    def _turn_key(self) -> _Turn | None:
        """This workflow on this storage, when one supervisor at a time works on its runs
        in this process (None with shard ownership: supervisors share the runs by shard)."""
        return None if self.ownership is not None else self._storage()

    async def _take_turn(self, task_status: trio.TaskStatus[None]) -> trio.TaskStatus[None] | None:
        """Become the supervisor that works on the workflow's runs on this storage in this
        process. While another one is (a second ``Workflow`` object of the same workflow
        on the same storage), report started and stand by until it stops, as a second
        worker on PostgreSQL waits for shard leases; standbys take over in the order they
        started. Returns the status still to report (None: stopped while standing by)."""
        key = self._turn_key()
        if key is not None:
            if key in _SERVING:
                self._turn = key
                try:
                    await self._stand_by(key, task_status)
                except BaseException:
                    # Cancelled while standing by: a turn handed over in the meantime
                    # (even at the moment the cancellation came) passes on to the next
                    # standby, or nobody would ever serve this workflow here again.
                    if _SERVING.get(key) is self:
                        self._end_turn()
                    self._turn = None
                    raise
                # Stopped while standing by: likewise.
                if _SERVING.get(key) is not self:
                    self._turn = None
                elif self._stop.is_set():
                    self._end_turn()
                if self._turn is None:
                    return None
                task_status = trio.TASK_STATUS_IGNORED
                log.info(
                    "workflow %r: the worker it stood by for stopped: taking over",
                    self.engine.name,
                    extra={"workflow_name": self.engine.name},
                )
            else:
                _SERVING[key] = self
            self._turn = key
        else:
            _SHARING.setdefault(self._storage(), []).append(self)
        # Other Workflow objects of this workflow on this store object (not running) hand
        # their triggers, callbacks and controls to this supervisor.
        self.engine.store.feed.supervisors.setdefault(self.engine.name, self)
        return task_status

    async def _stand_by(self, key: _Turn, task_status: trio.TaskStatus[None]) -> None:
        """Report started and wait until the supervisor before this one hands over the
        turn (``_SERVING[key]`` is this one then) or this one is stopped."""
        queue = _STANDBYS.setdefault(key, [])
        queue.append(self)
        self.standby = True
        try:
            task_status.started()
            log.info(
                "workflow %r: already served on this store in this process: standing by "
                "until that worker stops",
                self.engine.name,
                extra={"workflow_name": self.engine.name},
            )
            with trio.CancelScope() as scope:
                self._standby_scope = scope
                if self._stop.is_set():
                    scope.cancel()
                await self._handed_over.wait()
        finally:
            self._standby_scope = None
            self.standby = False
            if self in queue:
                queue.remove(self)
            if not queue and _STANDBYS.get(key) is queue:
                del _STANDBYS[key]

    def _end_turn(self) -> None:
        """This supervisor stopped working on the runs: the first standby takes over."""
        running = self.engine.store.feed.supervisors
        if running.get(self.engine.name) is self:
            del running[self.engine.name]
        sharing = _SHARING.get(self._storage(), [])
        if self in sharing:
            sharing.remove(self)
            if not sharing:
                del _SHARING[self._storage()]
        key, self._turn = self._turn, None
        if key is None or _SERVING.get(key) is not self:
            return
        queue = _STANDBYS.get(key)
        if queue:
            successor = queue.pop(0)
            _SERVING[key] = successor
            successor._handed_over.set()
        else:
            del _SERVING[key]

    def acting(self) -> Supervisor[Any, Any] | None:
        """The supervisor working on the runs for this one: itself, or while it stands
        by, the one it stands by for."""
        if not self.standby or self._turn is None:
            return self
        return _SERVING.get(self._turn)

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        engine = self.engine
        engine.on_timers = self.wake_for_timers
        try:
            async with trio.open_nursery() as services:
                self._services_nursery = self.recovery.nursery = services
                if self.ownership is not None:
                    await services.start(self.ownership.serve, self._ownership_changed)
                try:
                    async with trio.open_nursery() as actors:
                        self._nursery = actors
                        guard = await actors.start(self._closing_guard)
                        await self._start(services)
                        self.serving = True
                        task_status.started()
                        await self._stop.wait()
                        # A graceful stop: no new work, idle waits end, steps in flight get
                        # the grace period.
                        self.stopping = True
                        self.serving = False
                        guard.cancel()
                        for actor in list(self.actors.values()):
                            actor.interrupt()
                        actors.cancel_scope.deadline = (
                            trio.current_time() + self.grace_period.total_seconds()
                        )
                finally:
                    # However the actors' nursery ended (a stop, a cancellation, an error),
                    # it is closed now while the services still shut down: a run woken from
                    # here on (a trigger that just committed) is left to the next start.
                    self.stopping = True
                    self.serving = False
                    self._nursery = None
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
            self._services_nursery = self.recovery.nursery = None
            engine.on_timers = None

    async def _closing_guard(self, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        """Keep the actors' nursery open until it is cancelled or the stop cancels the
        scope handed back, and mark the supervisor stopping as this task ends.

        trio closes a nursery when its last task ends but resumes the code that opened it
        only later; a run woken in that window (a trigger that just committed, from any
        task) would start a task in a closed nursery. Since the nursery cannot close
        before this task ends, ``stopping`` is set before it closes."""
        try:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await trio.sleep_forever()
        finally:
            self.stopping = True
            self.serving = False

    async def _start(self, services: trio.Nursery) -> None:
        """Check the stored runs against the definition, then start the timer loop,
        recovery, the store tail and the services in ``services``."""
        engine = self.engine
        shared = getattr(engine.store, "shared", False)
        # SQLiteStore: which other connections' commits are behind us (read before the
        # log position, so every one of them is at or before it).
        data_version = getattr(engine.store, "data_version", None)
        version = await data_version() if shared and data_version else None
        # Read the log position first: what is written after it, the tail sees.
        after = await engine.store.last_event_id() if shared else 0
        if self.on_stranded is not None:
            result = await check(engine, on_stranded=self.on_stranded, owns=self.owns)
            self.last_check = result.report
            self._to_migrate.update(result.to_wake)
        elif not engine.lineage.registered:
            await engine.lineage.register()
        self._wake_to_migrate()
        # Nothing pageable is waited for: timers are read by the timer loop and runs by
        # recovery, in short steps, after ready is reported.
        services.start_soon(self._timer_loop)
        self.recovery.request()
        if shared:
            services.start_soon(self.tail.follow, after, version)
        for service in self._services:
            services.start_soon(self._singleton, service)

    def stop(self) -> None:
        self._stop.set()
        if self._standby_scope is not None:
            self._standby_scope.cancel()

    # -- health ------------------------------------------------------------------------------

    def states(self) -> dict[str, ProcessState]:
        """The state of the step and timeout consumers, the timers and shard ownership."""
        if self.standby:  # up, waiting to take over: idle, as luno's standbys
            return dict.fromkeys(process_names(self.engine, self.ownership), ProcessState.IDLE)
        if not self.serving:
            return stopped_states(self.engine, self.ownership)
        busy = {known.status for known, _ in self._waiting.values() if known is not None}
        for actor in self.actors.values():
            if (status := actor.active_status) is not None:
                busy.add(status)
        timers_armed = len(self.timers) > 0
        return process_states(self.engine, self.ownership, busy=busy, timers_armed=timers_armed)

    def counts(self) -> tuple[int, int, int]:
        """(run actors, runs waiting for a slot, runs with an armed timer)."""
        return len(self.actors), len(self._waiting), len(self.timers)

    @property
    def ready(self) -> bool:
        """Recovered and taking work (and, with scale-out, holding its share of shards)."""
        return self.serving and self.recovery.recovered and holds_share(self.ownership)

    def leads(self) -> bool:
        """Whether this process runs the workflow's singleton services now (always,
        without leader election)."""
        ownership = self.ownership
        return not isinstance(ownership, Leadership) or ownership.leader

    # -- ownership ---------------------------------------------------------------------------

    def owns(self, run_id: str) -> bool:
        return self.ownership is None or self.ownership.owns(run_id)

    def _ownership_changed(self) -> None:
        """Shards moved: let go of runs we lost, pick up runs and timers of shards we got."""
        for actor in list(self.actors.values()):
            if not self.owns(actor.run_id):
                actor.interrupt()
        if not self.leads():
            for scope in self._leader_scopes:
                scope.cancel()
        self._leader_changed.set()
        self._leader_changed = trio.Event()
        if self._nursery is not None and self._services_nursery is not None and not self.stopping:
            self._wake_to_migrate()
            self.timers.reset()  # timers of the shards we got are read page by page
            self._heap_changed.set()
            self.recovery.request()

    def _wake_to_migrate(self) -> None:
        """Wake the runs to migrate that this process owns: each migrates as it loads."""
        for run_id in [r for r in self._to_migrate if self.owns(r)]:
            self._to_migrate.discard(run_id)
            self.wake_now(run_id)

    async def _singleton(self, service: Service) -> None:
        """Run ``service`` while this process leads the workflow (always, without leader
        election); stop it when the leadership moves away, start it again when it is back."""
        while True:
            while not self.leads():
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

    def wake_now(
        self, run_id: str, known: RawRecord | None = None, timers: list[Timer] | None = None
    ) -> None:
        """Make sure an actor looks at the run now (spawning one if needed).

        ``known`` (with its ``timers``) is the run as the caller just stored it: a new
        actor starts from it instead of reading the run back from the store.
        """
        if self.stopping or self._nursery is None:
            return
        if not self.owns(run_id):
            self._wake_owner(run_id, known, timers)
            return
        actor = self.actors.get(run_id)
        if actor is not None:
            actor.look_again()
        elif len(self.actors) >= self.max_active_runs:
            if known is not None or run_id not in self._waiting:
                self._waiting[run_id] = (known, timers)
        else:
            self._spawn(run_id, known, timers)

    def _wake_owner(self, run_id: str, known: RawRecord | None, timers: list[Timer] | None) -> None:
        """Wake the run in the supervisor of this process that owns its shard, if any
        (see _SHARING)."""
        if self.ownership is None:
            return
        for other in _SHARING.get(self._storage(), ()):
            if other is not self and other.owns(run_id):
                if timers is not None:
                    other.wake_for_timers(run_id, timers)
                other.wake_now(run_id, known, timers)
                return

    def wake_created(self, known: RawRecord, timers: list[Timer]) -> None:
        """A run was just created here by trigger_many: start it from ``known``.

        When more runs wait for a slot than could start soon, the run is left to a
        recovery pass instead, which reads them back page by page: a backfill of a
        million runs costs no memory per run here."""
        if len(self._waiting) < WAITING_FROM_BACKFILL * self.max_active_runs:
            self.wake_now(known.run_id, known, timers)
        else:
            self.recovery.request()

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

    def has_free_slot(self) -> bool:
        """Whether a run woken now gets an actor without queueing behind waiting runs."""
        return len(self.actors) + len(self._waiting) < self.max_active_runs

    def forget(self, actor: RunActor[T, S]) -> None:
        """``actor`` stopped: its slot is free (its task takes the next waiting run)."""
        if self.actors.get(actor.run_id) is actor:
            del self.actors[actor.run_id]
            self.tail.remember(actor.run_id, actor.known_version)
        self.recovery.slot_freed()

    def within_actor(self, run_id: str) -> bool:
        """Whether the current task is the actor of ``run_id`` or a task started under it
        (user code of that run: its step, timeout or callback, or a nursery of theirs),
        which waiting on that run would deadlock."""
        actor = self.actors.get(run_id)
        if actor is None or actor.task is None:
            return False
        task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
        while task is not None:
            if task is actor.task:
                return True
            nursery = task.parent_nursery
            task = None if nursery is None else nursery.parent_task
        return False

    async def ask(self, run_id: str, op: Op, *, interrupt_after: float | None = None) -> Any:
        """Have the run's actor perform ``op``; raises Stopped when stopping.

        ``interrupt_after``: seconds after which a step or timeout function still in
        flight is cancelled so that ``op`` runs (a pause or cancel of a run whose step
        hangs); None: wait for it however long it takes.

        Raises ActorflowError when the caller is user code of another run that ``run_id``'s
        user code is waiting on (see :meth:`waiting_on`)."""
        with self.waiting_on(run_id):
            return await self._ask(run_id, op, interrupt_after)

    @contextlib.contextmanager
    def waiting_on(self, run_id: str) -> Iterator[None]:
        """Around a wait of the caller on run ``run_id`` (an ``ask``, an ``await_status``).

        When the caller is user code of another run (its step, timeout or callback, or a
        task they started; of this workflow or another one in this process), the wait is
        noted, and refused with ActorflowError when ``run_id``'s own user code is waiting
        (directly or through other runs) on the caller's run: A's step calling back B,
        whose callback calls back or awaits A, would have each wait for the other forever."""
        asker = ACTOR_RUN.get()
        if asker is None:
            yield
            return
        host, asker_run = asker
        if (
            (host is self and asker_run == run_id)
            or not isinstance(host, Supervisor)
            or not host.within_actor(asker_run)
        ):
            yield
            return
        waiter: _RunKey = (host, asker_run)
        if _waits_on((self, run_id), waiter):
            raise ActorflowError(
                f"workflow {host.engine.name!r} run {asker_run}: its user code waits on "
                f"workflow {self.engine.name!r} run {run_id}, whose own user code is waiting "
                f"on run {asker_run}: each would wait for the other forever (a deadlock); "
                "refused"
            )
        asked = _WAITING.setdefault(waiter, [])
        asked.append((self, run_id))
        try:
            yield
        finally:
            asked.remove((self, run_id))
            if not asked and _WAITING.get(waiter) is asked:
                del _WAITING[waiter]

    async def _ask(self, run_id: str, op: Op, interrupt_after: float | None) -> Any:
        while True:
            if self.stopping or self._nursery is None:
                raise Stopped("the workflow is stopping")
            actor = self.actors.get(run_id) or self._spawn(run_id)
            if self.within_actor(run_id):
                raise ActorflowError(
                    f"workflow {self.engine.name!r} run {run_id}: a step, timeout or callback "
                    "cannot pause, resume, cancel or call back its own run through the workflow "
                    "(it would wait for itself); return run.pause(), run.cancel() or a status "
                    "instead"
                )
            reply = Reply()
            try:
                await actor.mailbox.send.send(Ask(op, reply))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue  # that actor just passivated: spawn a new one
            try:
                if interrupt_after is not None:
                    with trio.move_on_after(interrupt_after):
                        return await reply.wait()
                    actor.interrupt_step()
                return await reply.wait()
            except trio.Cancelled:
                # Never an op that takes effect after its caller was cancelled: one not
                # taken yet is withdrawn; one under way is waited for (the grace period,
                # then it is interrupted), and its value returned when it was done.
                if not reply.withdraw():
                    with trio.CancelScope(shield=True):
                        with trio.move_on_after(self.grace_period.total_seconds()):
                            await reply.outcome()
                        reply.interrupt()
                        done, value = await reply.outcome()
                    if done:
                        return value
                raise

    # -- timers --------------------------------------------------------------------------------

    def wake_at(self, run_id: str, when: datetime, *, pinned: bool = False) -> None:
        """Have an actor look at the run at wall time ``when``, unless it is already due to
        be woken earlier. A stored timer's time is held in memory only inside the timer
        window (later ones are paged in from the store); a ``pinned`` one, which exists in
        memory only (a back-off, a snoozed timeout), always."""
        if self.timers.arm(run_id, when, self.engine.now(), pinned=pinned):
            self._heap_changed.set()

    def wake_for_new_timers(self, runs: list[tuple[RawRecord, list[Timer]]]) -> None:
        """Runs were just created with these timers (trigger_many): as
        :meth:`wake_for_timers` for each, with one look at the clock (new runs have no
        wake-up to forget)."""
        window, now, changed = self.timers, self.engine.now(), False
        for stored, timers in runs:
            if timers:
                when = min(t.fire_at for t in timers)
                changed = window.arm(stored.run_id, when, now) or changed
        if changed:
            self._heap_changed.set()

    def wake_for_timers(self, run_id: str, timers: list[Timer]) -> None:
        """The run's stored timers are now exactly ``timers`` (every commit that sets them
        calls this): have an actor look at the run when the earliest is due, forgetting
        the wake-up of its earlier timers."""
        self.timers.disarm(run_id)
        if timers:
            self.wake_at(run_id, min(t.fire_at for t in timers))

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
                self.wake_now(run_id)
            await trio.lowlevel.checkpoint()
