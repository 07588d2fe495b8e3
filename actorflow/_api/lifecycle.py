"""Serving a workflow: ``run``/``stop``, its services, the check at start and migration,
and what ``states()``, ``ready`` and ``running`` report."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeVar, final

import trio

from actorflow._api.queries import Queries
from actorflow._api.triggers import Triggers
from actorflow._model.errors import ActorflowError
from actorflow._model.evolution import CheckReport
from actorflow._model.process import ProcessState
from actorflow._runtime.observe import Observer
from actorflow._runtime.ports import Ownership, Service
from actorflow._runtime.supervisor import Supervisor
from actorflow._services.context import ServiceContext
from actorflow.stores.protocol import ShardedStore
from actorflow.streaming._source import check_reachable

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

DEFINITION_CHECK = "definition-check"
"""The process ``states()`` reports the check at start as."""


class Lifecycle(Triggers[T, S], Queries[T, S]):
    """Serving the workflow in this process (part of ``af.Workflow``)."""

    @property
    def streamer(self) -> Any:
        return self._streamer

    @property
    def observer(self) -> Observer | None:
        """Where the workflow reports metrics and spans (None: both off)."""
        return self._engine.observer

    @property
    def running(self) -> bool:
        """True while ``run`` serves this workflow in this process: from the moment it
        reported started until its stop (not while it is still starting, e.g. waiting for
        an unreachable database, nor once it stops). What ``/healthz`` reports."""
        supervisor = self._supervisor
        return (
            supervisor is not None
            and (supervisor.serving or supervisor.standby)
            and not supervisor.stopping
        )

    @property
    def ready(self) -> bool:
        """True while :meth:`run` serves the workflow here, recovered and taking work (with
        scale-out: holding its share of shard leases). What ``/readyz`` reports."""
        supervisor = self._supervisor
        return supervisor is not None and supervisor.ready

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
            standby = supervisor.standby or (supervisor.serving and not supervisor.leads())
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
        # A second Workflow object of this workflow served on the same storage in this
        # process stands by: it reports started, and works on the runs once the first
        # stops (the supervisor's turn, see Supervisor._take_turn).
        try:
            await supervisor.serve(task_status=_Started(task_status, supervisor, self))
        finally:
            self._supervisor = None

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
