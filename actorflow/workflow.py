"""``Workflow``: a built workflow bound to a store; what users trigger, await and control."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any, Generic, NoReturn, TypeVar, cast, final, overload

import attrs
import trio

from actorflow._model.clock import Clock
from actorflow._model.codec import ObjectCodec
from actorflow._model.definition import Definition
from actorflow._model.errors import (
    ActorflowError,
    InvalidArgument,
    RunNotFound,
    SerializationError,
    StatusNotReached,
    StoreError,
    VersionConflict,
    lone_build_error,
)
from actorflow._model.evolution import CheckReport
from actorflow._model.options import Options
from actorflow._model.process import ProcessState
from actorflow._model.record import RawRecord, Record, Timer, new_run_id
from actorflow._model.run import Run
from actorflow._model.run_state import RunState
from actorflow._model.settings import BuildSettings
from actorflow._model.statuses import parse_status
from actorflow._model.text import check_text
from actorflow._runtime.actor import Op, Stopped
from actorflow._runtime.engine import NO_TIMERS, Engine, log
from actorflow._runtime.observe import Observer, process_name
from actorflow._runtime.ports import Ownership, Service
from actorflow._runtime.supervisor import Supervisor
from actorflow._services.context import ServiceContext
from actorflow.stores import Store
from actorflow.stores.feed import Subscription
from actorflow.stores.filters import RunFilter
from actorflow.stores.protocol import ShardedStore
from actorflow.streaming._source import check_reachable

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

INLINE_ATTEMPTS = 5
MAX_FOREIGN_ID = 512
TRIGGER_MANY_CHUNK = 10_000
"""Items per store call of trigger_many (the store splits further into transactions)."""

TriggerItem = str | Mapping[str, Any] | tuple[Any, ...]
"""An item of :meth:`Workflow.trigger_many`: a foreign id, a mapping or a tuple."""


@final
class Workflow(Generic[T, S]):
    """A workflow definition bound to a store. Built by :meth:`Builder.build`."""

    def __init__(
        self,
        definition: Definition,
        store: Store,
        *,
        codec: ObjectCodec[T],
        settings: BuildSettings,
    ) -> None:
        self._definition = definition
        self._store = store
        self._codec = codec
        self._settings = settings
        self._clock = settings.clock
        self._engine: Engine[T, S] = Engine(
            definition,
            store,
            codec,
            settings.clock,
            settings.resume_paused_after,
            settings.scrub,
            settings.default_options,
        )
        self._grace_period = settings.grace_period
        self._poll_interval = settings.poll_interval
        self._max_active_runs = settings.max_active_runs
        self._streamer = settings.streamer
        self._supervisor: Supervisor[T, S] | None = None
        self._last_check: CheckReport | None = None
        self._declare_services()
        from actorflow._observe import make_observer

        self._engine.observer = make_observer(self, settings.metrics, settings.tracing)

    def _declare_services(self) -> None:
        """Name the service processes ``states()`` reports before they first run."""
        engine = self._engine
        if self._definition.hooks:
            from actorflow._services.hooks import STATE_OF_HOOK, hook_process

            for kind in self._definition.hooks:
                if kind in STATE_OF_HOOK:
                    engine.service(hook_process(kind))
        for spec in self._definition.connectors:
            engine.service(
                process_name(spec.name, "connector-consumer"),
                spec.options.lag_alert.total_seconds(),
            )
        if self._streamer is not None:
            from actorflow._services.relay import PROCESS

            engine.service(PROCESS)

    # -- description -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The workflow's name."""
        return self._definition.name

    @property
    def store(self) -> Store:
        """The store this workflow keeps its runs in."""
        return self._store

    @property
    def clock(self) -> Clock:
        """The wall clock the workflow uses for timers and timestamps."""
        return self._clock

    @property
    def definition(self) -> Definition:
        """The validated graph."""
        return self._definition

    @property
    def object_type(self) -> type[T]:
        return cast(type[T], self._codec.object_type)

    @property
    def status_type(self) -> type[S]:
        return self._definition.status_type  # type: ignore[return-value]

    @property
    def streamer(self) -> Any:
        return self._streamer

    @property
    def running(self) -> bool:
        """True while ``run`` serves this workflow in this process."""
        return self._supervisor is not None and not self._supervisor.stopping

    def graph(self) -> str:
        """The workflow as a Mermaid ``stateDiagram-v2`` text."""
        return self._definition.mermaid()

    @property
    def observer(self) -> Observer | None:
        """Where the workflow reports metrics and spans (None: both off)."""
        return self._engine.observer

    def states(self) -> dict[str, ProcessState]:
        """Each process of the workflow in this process and its state, as luno/workflow's
        ``States()``: the step consumers (``<status>-consumer``), timeout consumers
        (``<status>-timeout-consumer``), ``timers``, hooks, connectors
        (``<name>-connector-consumer``), the relay (``outbox-consumer``), schedules
        (``<foreign id>-scheduler-<spec>``), with scale-out ``shard-ownership`` and, after
        the check at start, ``definition-check`` (erroring when it found stranded runs)."""
        engine = self._engine
        supervisor = self._supervisor
        if supervisor is None:
            found = dict.fromkeys(
                [p.name for p in engine.step_processes.values()]
                + [p.name for p in engine.timeout_processes.values()]
                + ["timers"],
                ProcessState.STOPPED,
            )
            standby = False
        else:
            found = supervisor.states()
            standby = supervisor.serving and not supervisor.leads()
        for name, process in engine.services.items():
            state = process.state
            if standby and state is ProcessState.STOPPED:
                state = ProcessState.IDLE  # another process leads: this one stands by
            found[name] = state
        report = self._last_check
        if report is not None:
            # The check at start (docs/upgrading.md): erroring while stored runs are
            # stranded (parked) for this definition; the report says which.
            if supervisor is None:
                found[DEFINITION_CHECK] = ProcessState.STOPPED
            elif report.stranded:
                found[DEFINITION_CHECK] = ProcessState.ERRORING
            else:
                found[DEFINITION_CHECK] = ProcessState.IDLE
        return found

    def _runtime_counts(self) -> tuple[int, int, int]:
        """(run actors, runs waiting for a slot, runs with an armed timer) in this process."""
        supervisor = self._supervisor
        return (0, 0, 0) if supervisor is None else supervisor.counts()

    @property
    def ready(self) -> bool:
        """True while :meth:`run` serves the workflow here, recovered and taking work (with
        scale-out: holding its share of shard leases). What ``/readyz`` reports."""
        supervisor = self._supervisor
        return supervisor is not None and supervisor.ready

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} on {self._store!r}>"

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the workflow until cancelled or :meth:`stop`; use with ``nursery.start``.

        Recovers unfinished runs and pending timers, then reports started.
        """
        if self._supervisor is not None:
            raise ActorflowError(f"workflow {self.name!r} is already running in this process")
        # A streamer or source that cannot be reached fails the start, after a bounded wait.
        await check_reachable([self._streamer, *(c.source for c in self._definition.connectors)])
        supervisor = Supervisor(
            self._engine,
            grace_period=self._grace_period,
            poll_interval=self._poll_interval,
            max_active_runs=self._max_active_runs,
            services=self._services(),
            ownership=self._ownership(),
            on_stranded=self._settings.on_stranded if self._settings.check_at_start else None,
        )
        self._supervisor = supervisor
        # Other Workflow objects of this workflow on the same store instance (in this
        # process) hand their triggers, callbacks and controls to this supervisor.
        running = self._store.feed.supervisors
        registered = running.setdefault(self.name, supervisor) is supervisor
        try:
            await supervisor.serve(task_status=_Started(task_status, supervisor, self))
        finally:
            self._supervisor = None
            if registered:
                del running[self.name]

    @property
    def fingerprint(self) -> str:
        """This definition's fingerprint: a short hash of its statuses, edges, object schema
        and status mappings, stored on every version it writes (``record.meta.definition``)."""
        return self._definition.fingerprint

    @property
    def last_check(self) -> CheckReport | None:
        """What the check at the last start of :meth:`run` found (None before)."""
        return self._last_check

    async def check(self) -> CheckReport:
        """Compare the stored unfinished runs with this definition and report, changing
        nothing: unknown statuses, statuses that lost their step/callback/timeout, objects
        that no longer fit, pending timers of removed timeouts, runs to migrate and runs a
        newer definition wrote, each with counts, example run ids and the definitions that
        wrote them (``actorflow runs check``)."""
        from actorflow._runtime.evolution import check

        return (await check(self._engine)).report

    async def migrate(
        self, *, dry_run: bool = False, progress: Callable[[int], None] | None = None
    ) -> CheckReport:
        """Apply the builder's ``rename_status``/``retire``/``upgrade_object`` to every
        unfinished run now, each run in its own transaction, and park the runs that cannot
        be migrated (``actorflow runs migrate``). Resumable: run it again after an
        interruption. ``dry_run`` reports what it would do; ``progress(n)`` is called as
        runs are handled."""
        from actorflow._runtime.evolution import migrate

        supervisor = self._local_supervisor()
        owns = supervisor.owns if supervisor is not None else (lambda run_id: True)
        return await migrate(self._engine, dry_run=dry_run, progress=progress, owns=owns)

    def _local_supervisor(self) -> Supervisor[T, S] | None:
        """The supervisor serving this workflow in this process: ours, or one running for
        another Workflow object of the same name on the same store instance."""
        supervisor = self._supervisor
        if supervisor is None:
            other: Supervisor[T, S] | None = self._store.feed.supervisors.get(self.name)
            supervisor = other
        if supervisor is None or supervisor.stopping:
            return None
        return supervisor

    def stop(self) -> None:
        """Graceful stop: take no new work, let steps in flight finish (up to the grace
        period), then make :meth:`run` return. Does nothing when not running."""
        if self._supervisor is not None:
            self._supervisor.stop()

    def _ownership(self) -> Ownership | None:
        if self._settings.ownership is not None:
            given: Ownership = self._settings.ownership
            return given
        if not isinstance(self._store, ShardedStore):
            return None
        return self._store.shard_ownership(
            self.name, shards=self._settings.shards, lease=self._settings.lease
        )

    def _services(self) -> list[Service]:
        services: list[Service] = []
        if self._definition.hooks:
            from actorflow._services.hooks import run_hooks

            services.append(lambda: run_hooks(self._engine, self._poll_interval))
        if self._definition.connectors:
            from actorflow._services.connectors import run_connectors

            services.append(lambda: run_connectors(self._service_context()))
        if self._streamer is not None:
            from actorflow._services.relay import run_relay

            services.append(lambda: run_relay(self._service_context(), self._streamer))
        refresh = getattr(self._engine.observer, "refresh_run_counts", None)
        for observer in getattr(self._engine.observer, "observers", ()):
            refresh = getattr(observer, "refresh_run_counts", refresh)
        if refresh is not None and hasattr(self._store, "count_runs"):
            services.append(refresh)
        retention = self._settings.history_retention
        if retention is not None:
            from actorflow._services.retention import run_retention

            services.append(lambda: run_retention(self._service_context(), retention))
        return services

    def _service_context(self) -> ServiceContext:
        return ServiceContext(
            name=self.name,
            store=self._store,
            clock=self._clock,
            definition=self._definition,
            default_options=self._engine.default_options,
            poll_interval=self._poll_interval,
            handle=self,
            check_trigger_args=self.check_trigger_args,
            observer=self._engine.observer,
            service=self._engine.service,
        )

    # -- argument checks -------------------------------------------------------------------------

    def _status_arg(self, status: object, what: str = "status") -> S:
        try:
            return parse_status(self._definition.status_type, status)  # type: ignore[return-value]
        except ValueError as exc:
            raise InvalidArgument(f"workflow {self.name!r}: {what} {exc}") from None

    def _foreign_id_arg(self, foreign_id: object) -> str:
        if not isinstance(foreign_id, str) or not foreign_id or len(foreign_id) > MAX_FOREIGN_ID:
            raise InvalidArgument(
                f"workflow {self.name!r}: foreign_id must be a non-empty string of at most "
                f"{MAX_FOREIGN_ID} characters, not {foreign_id!r}"
            )
        return check_text(foreign_id, f"workflow {self.name!r}: foreign_id {foreign_id!r}")

    def _run_id_arg(self, run_id: object, what: str = "run_id") -> str:
        if not isinstance(run_id, str) or not run_id:
            raise InvalidArgument(f"workflow {self.name!r}: {what} must be a non-empty string")
        return check_text(run_id, f"workflow {self.name!r}: {what} {run_id!r}")

    def _encode_initial(self, obj: T) -> str:
        try:
            return self._codec.encode(obj, " (initial object)")
        except SerializationError as exc:
            raise InvalidArgument(str(exc)) from None

    def _filter_text(self, foreign_id: object, *others: object) -> None:
        """InvalidArgument for a list_runs/count_runs filter string of invalid text (the
        store checks the types)."""
        values = list(others)
        if isinstance(foreign_id, str):
            values.append(foreign_id)
        elif isinstance(foreign_id, Sequence):
            values.extend(foreign_id)
        for value in values:
            if isinstance(value, str):
                check_text(value, f"workflow {self.name!r}: filter {value!r}")

    # -- triggering ------------------------------------------------------------------------------

    def check_trigger_args(self, foreign_id: object, start: object, initial: object) -> None:
        """Raise InvalidArgument now for arguments ``trigger`` would refuse later."""
        self._foreign_id_arg(foreign_id)
        if start is not None:
            status = self._status_arg(start, "start")
            if self._definition.is_terminal(status):
                raise InvalidArgument(
                    f"workflow {self.name!r}: cannot start at {status.name}: it has no step, "
                    "callback or timeout"
                )
        if initial is not None:
            self._encode_initial(self._codec.check(initial, "initial"))

    @property
    def default_options(self) -> Options:
        """The options every step, timeout and connector starts from."""
        return self._engine.default_options

    async def trigger(
        self, foreign_id: str, start: S | None = None, *, initial: T | None = None
    ) -> str:
        """Start a new run for ``foreign_id``; returns its run id.

        Raises:
            WorkflowInProgress: the latest run of ``foreign_id`` is not finished.
            InvalidArgument: a status outside the enum, or ``initial`` of the wrong type.
        """
        raw, timers = self._new_run(foreign_id, start, initial, self._clock.now())
        if not self._engine.registered:
            await self._engine.register()  # the first write of this definition
        stored = await self._store.create_run(raw, timers)
        supervisor = self._local_supervisor()
        if supervisor is not None:
            if timers:
                supervisor.schedule(timers)
            if stored.status in self._definition.steps:
                supervisor.wake(raw.run_id, stored, timers)
        return raw.run_id

    async def trigger_many(self, items: Iterable[TriggerItem]) -> list[str | ActorflowError]:
        """Start many runs in few store transactions (backfills, imports).

        Each item is a foreign id, or a mapping with ``foreign_id`` and optionally
        ``start`` and ``initial``, or a tuple ``(foreign_id, start, initial)`` (the last
        two optional). Returns one result per item, in order: the new run id, or the error
        that refused that item (``WorkflowInProgress`` when the latest run of its foreign
        id is unfinished, also when an earlier item of this call started it;
        ``InvalidArgument`` for a malformed item). One refused item does not stop the others.

        Raises:
            InvalidArgument: ``items`` is not an iterable of items (a single string, say).
            StoreError: the store failed; items of earlier transactions may be stored.
        """
        if isinstance(items, str | bytes) or not isinstance(items, Iterable):
            raise InvalidArgument(
                f"workflow {self.name!r}: trigger_many takes an iterable of items (foreign "
                f"ids, mappings or tuples), not {type(items).__name__}"
            )
        results: list[str | ActorflowError] = []
        chunk: list[tuple[int, RawRecord, list[Timer]]] = []
        now = self._clock.now()
        defaults: dict[int, str] = {}
        for item in items:
            try:
                foreign_id, start, initial = self._trigger_item(item)
                raw, timers = self._new_run(foreign_id, start, initial, now, defaults)
            except ActorflowError as exc:
                results.append(exc)
                continue
            results.append(raw.run_id)
            chunk.append((len(results) - 1, raw, timers))
            if len(chunk) >= TRIGGER_MANY_CHUNK:
                await self._create_many(chunk, results)
                chunk = []
                now = self._clock.now()
        if chunk:
            await self._create_many(chunk, results)
        return results

    def _trigger_item(self, item: object) -> tuple[object, Any, Any]:
        if isinstance(item, str):
            return item, None, None
        if isinstance(item, Mapping):
            unknown = set(item) - {"foreign_id", "start", "initial"}
            if "foreign_id" not in item or unknown:
                raise InvalidArgument(
                    f"workflow {self.name!r}: a trigger_many item needs a 'foreign_id' and "
                    f"may have 'start' and 'initial', not {sorted(map(str, item))}"
                )
            return item["foreign_id"], item.get("start"), item.get("initial")
        if isinstance(item, tuple) and 1 <= len(item) <= 3:
            foreign_id, start, initial = (*item, None, None)[:3]
            return foreign_id, start, initial
        raise InvalidArgument(
            f"workflow {self.name!r}: a trigger_many item is a foreign id, a mapping or a "
            f"tuple (foreign_id, start, initial), not {item!r:.100}"
        )

    async def _create_many(
        self, chunk: list[tuple[int, RawRecord, list[Timer]]], results: list[str | ActorflowError]
    ) -> None:
        if not self._engine.registered:
            await self._engine.register()  # the first write of this definition
        outcomes = await self._store.create_runs([(raw, timers) for _, raw, timers in chunk])
        started: list[tuple[RawRecord, list[Timer]]] = []
        for (index, _, timers), outcome in zip(chunk, outcomes, strict=True):
            if isinstance(outcome, ActorflowError):
                results[index] = outcome
            else:
                started.append((outcome, timers))
        self._started(started)

    def _new_run(
        self,
        foreign_id: object,
        start: object,
        initial: object,
        now: datetime,
        defaults: dict[int, str] | None = None,
    ) -> tuple[RawRecord, list[Timer]]:
        """A new run's first version and timers (nothing stored yet).

        ``defaults`` caches the encoded default object per start status (trigger_many).
        """
        foreign_id = self._foreign_id_arg(foreign_id)
        definition = self._definition
        status = definition.start if start is None else self._status_arg(start, "start")
        if definition.is_terminal(status):
            raise InvalidArgument(
                f"workflow {self.name!r}: cannot start at {status.name}: it has no step, callback "
                "or timeout (a run there would be complete at once)"
            )
        with_timeouts = status in definition.timeouts
        if initial is None and defaults is not None and not with_timeouts:
            encoded = defaults.get(status)
            if encoded is None:
                encoded = defaults[status] = self._encode_initial(self._codec.default())
            obj: Any = None
        else:
            obj = (
                self._codec.default()
                if initial is None
                else self._codec.check(cast(T, initial), "initial")
            )
            encoded = self._encode_initial(obj)
        raw = RawRecord(
            workflow_name=self.name,
            foreign_id=foreign_id,
            run_id=new_run_id(),
            status=int(status),
            run_state=RunState.INITIATED,
            object=encoded,
            version=1,
            created_at=now,
            updated_at=now,
            meta=self._engine.first_meta(status, self._trace_origin()),
        )
        timers = NO_TIMERS
        if with_timeouts:
            try:
                run: Run[T, S] = Run(raw, cast(S, status), obj, self._codec)
                timers = self._engine.timers_for(run, status, now)
            except ActorflowError as exc:
                raise InvalidArgument(str(exc)) from None
        return raw, timers

    def _started(self, runs: list[tuple[RawRecord, list[Timer]]]) -> None:
        """Runs were just stored by trigger_many: arm their timers and start those with
        a step, when a supervisor serves this workflow here."""
        supervisor = self._local_supervisor()
        if supervisor is None:
            return
        steps = self._definition.steps
        for stored, timers in runs:
            if timers:
                supervisor.schedule(timers)
            if stored.status in steps:
                supervisor.wake_new(stored, timers)

    def _trace_origin(self) -> str:
        """The traceparent of the trace active in the caller (tracing on), else ""."""
        observer = self._engine.observer
        return "" if observer is None else observer.trace_origin()

    async def schedule_trigger(
        self,
        foreign_id: str,
        spec: str,
        start: S | None = None,
        *,
        initial: T | None = None,
        filter: Callable[..., Any] | None = None,
    ) -> None:
        """Trigger at every cron time of ``spec`` until cancelled (see docs/schedules.md)."""
        from actorflow._services.schedule import schedule_trigger

        await schedule_trigger(
            self._service_context(), foreign_id, spec, start, initial=initial, filter=filter
        )

    # -- reading -----------------------------------------------------------------------------

    async def lookup(self, run_id: str) -> Record[T, S]:
        """The latest version of a run. Raises RunNotFound."""
        return self._engine.typed(await self._store.lookup(self.name, self._run_id_arg(run_id)))

    async def latest(self, foreign_id: str) -> Record[T, S]:
        """The latest version of the newest run of ``foreign_id``. Raises RunNotFound."""
        raw = await self._store.latest(self.name, self._foreign_id_arg(foreign_id))
        return self._engine.typed(raw)

    async def list_runs(
        self,
        *,
        foreign_id: str | Sequence[str] | None = None,
        status: S | Sequence[S] | None = None,
        run_state: RunState | Sequence[RunState] | None = None,
        limit: int = 25,
        after: str | None = None,
        descending: bool = False,
        foreign_id_prefix: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[Record[T, S]]:
        """The latest version of each matching run, in creation order (keyset pages).

        ``foreign_id`` is one id or a sequence of ids; ``created_after`` (inclusive) and
        ``created_before`` (exclusive) are aware datetimes. Raises InvalidArgument for bad
        filters and RunNotFound for an unknown ``after``."""
        self._filter_text(foreign_id, foreign_id_prefix, after)
        flt = RunFilter.make(
            foreign_id=foreign_id,
            status=self._statuses_arg(status),
            run_state=run_state,
            foreign_id_prefix=foreign_id_prefix,
            created_after=created_after,
            created_before=created_before,
        )
        found = await self._store.list_runs(
            self.name, flt, limit=limit, after=after, descending=descending
        )
        return [self._engine.typed(raw) for raw in found]

    async def count_runs(
        self,
        *,
        foreign_id: str | Sequence[str] | None = None,
        status: S | Sequence[S] | None = None,
        run_state: RunState | Sequence[RunState] | None = None,
        foreign_id_prefix: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> dict[tuple[S, RunState], int]:
        """How many runs match (the filters of :meth:`list_runs`), by (status, run state).

        Pairs without runs are left out; ``sum(counts.values())`` is the total."""
        self._filter_text(foreign_id, foreign_id_prefix)
        flt = RunFilter.make(
            foreign_id=foreign_id,
            status=self._statuses_arg(status),
            run_state=run_state,
            foreign_id_prefix=foreign_id_prefix,
            created_after=created_after,
            created_before=created_before,
        )
        counts = await self._store.count_runs(self.name, flt)
        status_type = self.status_type
        found: dict[tuple[S, RunState], int] = {}
        for (value, run_state_), count in sorted(counts.items()):
            try:
                key = (status_type(value), run_state_)
            except ValueError:  # a status no longer in the enum: counted under its value
                key = (cast(S, value), run_state_)
            found[key] = found.get(key, 0) + count
        return found

    def _statuses_arg(self, status: S | Sequence[S] | None) -> int | list[int] | None:
        if status is None:
            return None
        if isinstance(status, int):
            return int(self._status_arg(status))
        return [int(self._status_arg(s)) for s in status]

    async def history(self, run_id: str) -> list[Record[T, S]]:
        """Every stored version of a run, oldest first. Raises RunNotFound."""
        found = await self._store.history(self.name, self._run_id_arg(run_id))
        return [self._engine.typed(raw) for raw in found]

    async def await_status(
        self,
        foreign_id: str,
        run_id: str,
        status: S,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the API's name)
    ) -> Record[T, S]:
        """Wait until the run has been at ``status``; return it as it was when it got there.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            RunNotFound: no such run for that foreign id.
            StatusNotReached: the run finished without reaching ``status``.
        """
        wanted = int(self._status_arg(status))
        foreign_id = self._foreign_id_arg(foreign_id)
        run_id = self._run_id_arg(run_id)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0
        ):
            raise InvalidArgument(
                f"workflow {self.name!r}: timeout must be a number of seconds >= 0 or None, "
                f"not {timeout!r}"
            )
        if timeout is None:
            return await self._await_status(foreign_id, run_id, wanted)
        try:
            with trio.fail_after(timeout):
                return await self._await_status(foreign_id, run_id, wanted)
        except trio.TooSlowError:
            raise TimeoutError(
                f"workflow {self.name!r} run {run_id} did not reach "
                f"{self._definition.status(wanted)!r} within {timeout} s"
            ) from None

    async def _await_status(self, foreign_id: str, run_id: str, wanted: int) -> Record[T, S]:
        poll = self._poll_interval.total_seconds() if self._store.shared else math_inf
        watch = _Unattended(trio.current_time())
        while True:
            with self._store.feed.subscribe(run_id=run_id) as sub:
                found = await self._await_in(sub, foreign_id, run_id, wanted, poll, watch)
            if found is not None:
                return found
            # The subscription lagged: subscribe afresh and read the history again.

    def _runs_nowhere(self) -> bool:
        """True when nothing can move this workflow's runs: it is not running in this
        process and its store is one no other process can reach (MemoryStore)."""
        return not self._store.shared and self._local_supervisor() is None

    def _not_running(self, what: str) -> ActorflowError:
        return ActorflowError(
            f"workflow {self.name!r} is not running in this process, and no other process "
            f"can reach its {self._store!r}: {what}. Run it around the call: "
            "`async with af.open_workflow(workflow):` (or `nursery.start(workflow.run)`)"
        )

    async def _await_in(
        self,
        sub: Subscription,
        foreign_id: str,
        run_id: str,
        wanted: int,
        poll: float,
        watch: _Unattended,
    ) -> Record[T, S] | None:
        while True:
            history = await self._store.history(self.name, run_id)
            if history[0].foreign_id != foreign_id:
                raise RunNotFound(
                    f"workflow {self.name!r}: run {run_id} belongs to foreign id "
                    f"{history[0].foreign_id!r}, not {foreign_id!r}"
                )
            for raw in history:
                if raw.status == wanted:
                    return self._engine.typed(raw)
            self._check_reachable(history[-1], wanted)
            if self._runs_nowhere():
                at = history[-1].meta.status_description or history[-1].status
                raise self._not_running(
                    f"run {run_id} is at {at} and would wait for "
                    f"{self._definition.status(wanted)!r} forever"
                )
            await self._warn_if_unattended(history[-1], wanted, watch)
            if sub.lagged:
                return None
            found = None  # another process wrote, or the poll: read the history again
            unattended = not watch.warned and self._local_supervisor() is None
            warn_at = watch.since + UNATTENDED_AFTER if unattended else math_inf
            with self._store.feed.until_external(poll), trio.move_on_at(warn_at):
                found = await _next_matching(sub, wanted)
            if found is not None:
                return self._engine.typed(found)

    async def _warn_if_unattended(self, raw: RawRecord, wanted: int, watch: _Unattended) -> None:
        """A shared store, the workflow not running in this process, and the run unchanged
        for UNATTENDED_AFTER seconds with no timer of its own due meanwhile: say so once
        (is a worker running elsewhere?)."""
        now = trio.current_time()
        if raw.version != watch.version or self._local_supervisor() is not None:
            watch.version, watch.since = raw.version, now
            return
        if not watch.warned and now - watch.since >= UNATTENDED_AFTER:
            timers = await self._store.list_timers(self.name, raw.run_id)
            due = [t.fire_at for t in timers if t.fire_at >= self._engine.now()]
            if due:  # waiting for its timer is not being unattended: look again after it
                wait = min(due) - self._engine.now()
                watch.since = trio.current_time() + wait.total_seconds()
                return
            watch.warned = True
            log.warning(
                "workflow %r: run %s has waited %.0f s at %s for %r and nothing moved it; "
                "the workflow is not running in this process: is a worker running on %r?",
                self.name,
                raw.run_id,
                now - watch.since,
                raw.meta.status_description or raw.status,
                self._definition.status(wanted),
                self._store,
            )

    def _check_reachable(self, raw: RawRecord, wanted: int) -> None:
        if raw.run_state.finished:
            raise StatusNotReached(
                f"workflow {self.name!r} run {raw.run_id} is {raw.run_state.name} at "
                f"{raw.meta.status_description} and never reached "
                f"{self._definition.status(wanted)!r}"
            )

    @asynccontextmanager
    async def subscribe(
        self, *, foreign_id: str | None = None, run_id: str | None = None, buffer: int = 1024
    ) -> AsyncIterator[AsyncIterator[Record[T, S]]]:
        """Live stream of every stored change of this workflow's runs that matches.

        The iterator raises :class:`Lagged` if more than ``buffer`` changes wait unread.
        """
        if foreign_id is not None:
            foreign_id = self._foreign_id_arg(foreign_id)
        if run_id is not None:
            run_id = self._run_id_arg(run_id)
        with self._store.feed.subscribe(
            workflow_name=self.name, foreign_id=foreign_id, run_id=run_id, buffer=buffer
        ) as sub:
            yield self._typed_stream(sub, foreign_id)
        await trio.lowlevel.checkpoint()

    async def _typed_stream(
        self, sub: Subscription, foreign_id: str | None
    ) -> AsyncIterator[Record[T, S]]:
        async for raw in sub:
            if raw.workflow_name == self.name and foreign_id in (None, raw.foreign_id):
                yield self._engine.typed(raw)

    # -- changing runs ---------------------------------------------------------------------------

    async def _perform(self, run_id: str, op: Op) -> Any:
        supervisor = self._local_supervisor()
        if supervisor is not None and supervisor.owns(run_id):
            try:
                return await supervisor.ask(run_id, op)
            except Stopped:
                pass
        # Not ours to run (no worker here, or another process owns its shard): apply it
        # directly; the store's version check serialises it with the owner's transitions.
        for _ in range(INLINE_ATTEMPTS):
            raw = await self._store.lookup(self.name, run_id)
            try:
                if raw.meta.definition != self._engine.fingerprint:
                    raw = await self._engine.upgrade(raw)  # migrated as it loads
                _, _, value = await op(raw)
            except VersionConflict:
                continue
            return value
        raise StoreError(f"workflow {self.name!r} run {run_id} kept changing; try again")

    async def callback(self, foreign_id: str, status: S, payload: bytes) -> Record[T, S] | None:
        """Hand ``payload`` to the callback of the latest run of ``foreign_id`` at ``status``.

        Returns the record after the callback's transition is durably stored, or None when
        the run is not at ``status`` (or not running, or the callback skipped).

        Raises:
            RunNotFound: no run for ``foreign_id``.
            CallbackError: the callback raised or returned an invalid result (counted like a
                step error; the run may be paused by it).
        """
        foreign_id = self._foreign_id_arg(foreign_id)
        wanted = self._status_arg(status)
        if wanted not in self._definition.callbacks:
            raise InvalidArgument(
                f"workflow {self.name!r} has no callback at {wanted.name}; "
                "add one with builder.add_callback"
            )
        if isinstance(payload, bytearray | memoryview):
            payload = bytes(payload)
        if not isinstance(payload, bytes):
            raise InvalidArgument(
                f"workflow {self.name!r}: callback payload must be bytes, "
                f"not {type(payload).__name__}"
            )
        latest = await self._store.latest(self.name, foreign_id)
        if self._engine.mapped_status(latest.status) != int(wanted) or not latest.run_state.active:
            if self._runs_nowhere() and latest.run_state.active:
                raise self._not_running(
                    f"the latest run of {foreign_id!r} is at "
                    f"{latest.meta.status_description or latest.status}, not at "
                    f"{wanted.name}, and nothing will move it there"
                )
            return None
        engine = self._engine
        parent = self._trace_origin()  # the caller's trace: the callback's span continues it

        async def op(raw: RawRecord) -> tuple[RawRecord | None, list[Timer] | None, Any]:
            if raw.status != int(wanted) or not raw.run_state.active:
                return None, None, None
            new, timers = await engine.callback(raw, int(wanted), payload, parent=parent)
            return new, timers, (engine.typed(new) if new is not None else None)

        result: Record[T, S] | None = await self._perform(latest.run_id, op)
        return result

    async def _control(self, run_id: str, action: str, reason: str) -> Record[T, S]:
        run_id = self._run_id_arg(run_id)
        if not isinstance(reason, str):
            raise InvalidArgument(f"workflow {self.name!r}: reason must be a string")
        check_text(reason, f"workflow {self.name!r}: reason {reason!r}")
        await self._store.lookup(self.name, run_id)  # RunNotFound before anything else
        engine = self._engine
        methods: dict[str, Callable[[RawRecord, str], Awaitable[tuple[RawRecord, list[Timer]]]]] = {
            "pause": engine.pause,
            "resume": engine.resume,
            "cancel": engine.cancel,
            "delete_data": engine.delete_data,
        }
        method = methods[action]

        async def op(raw: RawRecord) -> tuple[RawRecord | None, list[Timer] | None, Any]:
            new, timers = await method(raw, reason)
            return new, timers, engine.typed(new)

        record: Record[T, S] = await self._perform(run_id, op)
        supervisor = self._local_supervisor()
        if action == "resume" and supervisor is not None:
            supervisor.wake(run_id)
        return record

    async def pause(self, run_id: str, reason: str = "paused") -> Record[T, S]:
        """Pause a run. Raises InvalidTransition unless it is INITIATED or RUNNING."""
        return await self._control(run_id, "pause", reason)

    async def resume(self, run_id: str, reason: str = "resumed") -> Record[T, S]:
        """Resume a paused run. Raises InvalidTransition unless it is PAUSED."""
        return await self._control(run_id, "resume", reason)

    async def cancel(self, run_id: str, reason: str = "cancelled") -> Record[T, S]:
        """Cancel a run. Raises InvalidTransition for a finished run."""
        return await self._control(run_id, "cancel", reason)

    async def delete_data(self, run_id: str, reason: str = "data deleted") -> Record[T, S]:
        """Scrub a COMPLETED or CANCELLED run's object, history included; ends DATA_DELETED."""
        return await self._control(run_id, "delete_data", reason)


math_inf = float("inf")
DEFINITION_CHECK = "definition-check"
"""The process ``states()`` reports the check at start as."""
UNATTENDED_AFTER = 60.0
"""Seconds (trio time) ``await_status`` waits on a shared store, with the workflow not
running in this process and the run unchanged, before it logs one warning."""


@final
class _Started:
    """Passes ``started`` on, keeping the check's report on the workflow first."""

    def __init__(
        self, inner: trio.TaskStatus[None], supervisor: Supervisor[Any, Any], workflow: Any
    ) -> None:
        self._inner = inner
        self._supervisor = supervisor
        self._workflow = workflow

    def started(self, value: None = None) -> None:
        self._workflow._last_check = self._supervisor.last_check
        self._inner.started(value)


@attrs.define
class _Unattended:
    """How long an ``await_status`` has seen its run unchanged (see UNATTENDED_AFTER)."""

    since: float
    version: int = 0
    warned: bool = False


async def _next_matching(sub: Subscription, wanted: int) -> RawRecord | None:
    """The next published version at ``wanted``; None to re-read the history (lag).
    The caller bounds the wait (another process's write, or the real-time poll)."""
    while True:
        try:
            raw = await sub.receive()
        except ActorflowError:  # lagged: re-read the history
            return None
        if raw.status == wanted:
            return raw
        if raw.run_state.finished:
            return None


@overload
def open_workflow(workflow: Workflow[T, S], /) -> _OpenWorkflows[Workflow[T, S]]: ...
@overload
def open_workflow(
    *workflows: Workflow[Any, Any],
) -> _OpenWorkflows[tuple[Workflow[Any, Any], ...]]: ...


def open_workflow(*workflows: Workflow[Any, Any]) -> _OpenWorkflows[Any]:
    """``async with af.open_workflow(wf, ...) as wf:`` runs them, stops them on exit."""
    if not workflows:
        raise InvalidArgument("open_workflow needs at least one workflow")
    value: Any = workflows[0] if len(workflows) == 1 else workflows
    return _OpenWorkflows(workflows, value)


W = TypeVar("W")


@final
class _OpenWorkflows(Generic[W]):
    def __init__(self, workflows: tuple[Workflow[Any, Any], ...], value: W) -> None:
        self._workflows = workflows
        self._value = value
        self._cm: AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> W:
        self._cm = self._serve()
        await self._cm.__aenter__()
        return self._value

    async def __aexit__(self, *exc: object) -> bool | None:
        assert self._cm is not None
        result: bool | None = await self._cm.__aexit__(*exc)  # type: ignore[arg-type]
        return result

    @asynccontextmanager
    async def _serve(self) -> AsyncIterator[None]:
        body: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                for workflow in self._workflows:
                    await nursery.start(workflow.run)
                try:
                    yield
                except BaseException as exc:
                    body = exc
                    raise
                finally:
                    for workflow in self._workflows:
                        workflow.stop()
        except BaseExceptionGroup as group:
            refused = lone_build_error(group)
            if refused is not None:  # a workflow refused to start: reported as itself
                raise refused from None
            # The workflows stopped cleanly: the block's own exception is all there is.
            # Hand it back as itself, so ``except af.WorkflowInProgress:`` around the
            # block works; a group stays a group when several things really failed.
            if body is None or not _holds_only(group, body):
                raise
            _reraise_bare(body)


def _holds_only(group: BaseExceptionGroup[BaseException], error: BaseException) -> bool:
    """Whether ``group`` holds ``error`` and nothing else. Compared by leaves: trio may
    rebuild a group that passes through a nursery (``split``), never its leaves."""
    return [id(e) for e in _leaves(group)] == [id(e) for e in _leaves(error)]


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]


def _reraise_bare(exc: BaseException) -> NoReturn:
    """Raise ``exc`` as it was, without the group it came in as its context."""
    context, suppress = exc.__context__, exc.__suppress_context__
    try:
        raise exc
    finally:
        exc.__context__, exc.__suppress_context__ = context, suppress
        del exc, context
