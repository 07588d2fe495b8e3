"""Prometheus metrics (``actorflow[metrics]``): luno/workflow's metrics and actorflow's own.

The runtime reports to :class:`WorkflowMetrics` (one per workflow), which keeps plain
numbers (dict entries, a bucket list per histogram): no lock and no label lookup on the
hot path. One :class:`Instruments` collector per ``CollectorRegistry`` turns them into
metric families when the registry is scraped; gauges read from the runtime (process
states, actors, timers) are read then too. docs/metrics.md lists every metric.

luno/workflow's counters keep luno's exact names (``workflow_process_error_count``, not
``..._total``): prometheus-client adds ``_total`` to every counter it exposes, which would
break luno's dashboards and alerts, so they are exposed untyped (Prometheus's ``rate`` and
``increase`` work on them all the same).
"""

from __future__ import annotations

import bisect
import math
import weakref
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, cast, final

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)

from actorflow._model.process import ProcessState
from actorflow._model.record import RawRecord
from actorflow._model.run_state import RunState
from actorflow._observe import live_gateways
from actorflow._runtime.engine import log
from actorflow._runtime.observe import RUN_STATE_NAMES

LATENCY_BUCKETS = (0.01, 0.1, 1.0, 5.0, 10.0, 60.0, 300.0)
"""luno/workflow's buckets of ``workflow_process_latency_seconds``."""
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
DURATION_BUCKETS = (0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0, 604800.0)
REFRESH_RUN_COUNTS = timedelta(seconds=15)
"""How often ``actorflow_runs`` is counted afresh from the store."""

WORKFLOW = "workflow_name"
PROCESS = "process_name"


@final
class Histogram:
    """Bucket counts, sum and count of observations (exposed cumulative, Prometheus-style)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        total = 0
        found: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            found.append((_le(bound), float(total)))
        return found


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


@final
class WorkflowMetrics:
    """The metrics of one workflow: an Observer the runtime reports to."""

    def __init__(self, workflow: Any, registry: CollectorRegistry) -> None:
        self.name: str = workflow.name
        self.registry = registry
        self._workflow = weakref.ref(workflow)
        self.lags: dict[str, float] = {}
        self.lag_alerts: dict[str, float] = {}
        self.latency: dict[str, Histogram] = {}
        self.errors: dict[str, int] = {}
        self.skips: dict[tuple[str, str], int] = {}
        self.run_state_changes: dict[tuple[RunState, RunState], int] = {}
        self.commit = Histogram(COMMIT_BUCKETS)
        self.run_duration = Histogram(DURATION_BUCKETS)
        self.run_counts: Mapping[tuple[int, RunState], int] | None = None
        found = instruments(registry)
        earlier = found.named(self.name)
        if earlier is not None:
            # Another workflow object of this name reports to the registry (the workflow
            # built again in this process, a restart): one set of series, so its counters
            # go on counting where the earlier ones are rather than duplicating them.
            self.lags, self.lag_alerts = earlier.lags, earlier.lag_alerts
            self.latency, self.errors, self.skips = earlier.latency, earlier.errors, earlier.skips
            self.run_state_changes = earlier.run_state_changes
            self.commit, self.run_duration = earlier.commit, earlier.run_duration
        self.seq = found.add(self)

    @property
    def workflow(self) -> Any:
        return self._workflow()

    # -- Observer -----------------------------------------------------------------------

    def begin(
        self,
        kind: str,
        process: str,
        raw: RawRecord | None,
        *,
        parent: str = "",
        attributes: Mapping[str, str | int] | None = None,
    ) -> object:
        histogram = self.latency.get(process)
        if histogram is None:
            histogram = self.latency[process] = Histogram(LATENCY_BUCKETS)
        # trio's clock, as for every other time of a run: the real monotonic time in
        # production, and under a test's MockClock the virtual time a step spent (a step
        # that sleeps 30 s of virtual time took 30 s, as its run's duration says).
        return (process, histogram, trio.current_time())

    def end(self, token: object, outcome: str, error: BaseException | None = None) -> None:
        process, histogram, started = cast(tuple[str, Histogram, float], token)
        histogram.observe(trio.current_time() - started)
        if error is not None and isinstance(error, Exception):
            self.errors[process] = self.errors.get(process, 0) + 1

    def error(self, process: str) -> None:
        self.errors[process] = self.errors.get(process, 0) + 1

    def lag(self, process: str, seconds: float, alert: bool | None) -> None:
        self.lags[process] = seconds
        if alert is not None:
            self.lag_alerts[process] = 1.0 if alert else 0.0

    def skipped(self, process: str, reason: str) -> None:
        key = (process, reason)
        self.skips[key] = self.skips.get(key, 0) + 1

    def run_state_changed(self, previous: RunState, current: RunState) -> None:
        key = (previous, current)
        self.run_state_changes[key] = self.run_state_changes.get(key, 0) + 1

    def committed(self, seconds: float, new: RawRecord) -> None:
        self.commit.observe(seconds)
        if new.run_state is RunState.COMPLETED:
            self.run_duration.observe((new.updated_at - new.created_at).total_seconds())

    def trace_origin(self) -> str:
        return ""

    # -- refreshed from the store -------------------------------------------------------------

    async def refresh_run_counts(self, interval: timedelta = REFRESH_RUN_COUNTS) -> None:
        """Count the workflow's runs by status and run state every ``interval`` (one
        grouped query; the leader does it, so that a sum over workers counts each run once)."""
        while True:
            workflow = self.workflow
            if workflow is None:
                return
            count = getattr(workflow.store, "count_runs", None)
            if count is None:
                return  # a store without counts: no actorflow_runs
            feed = workflow.store.feed
            # Other processes' writes are noticed by the feed; a minute of real time is
            # the safety net for a shared store.
            poll = 60.0 if getattr(workflow.store, "shared", False) else math.inf
            mark = feed.mark()  # before counting: a change during the count counts again
            try:
                self.run_counts = dict(await count(self.name))
            except Exception as exc:
                log.warning(
                    "workflow %r: counting runs for metrics failed: %s",
                    self.name,
                    exc,
                    extra={WORKFLOW: self.name},
                )
            del workflow
            await trio.sleep(interval.total_seconds())
            # Count again only after something changed: an idle workflow costs no counting
            # (nor does a virtual year of one under trio's autojump clock).
            await feed.wait_change(mark, poll)


_instruments: weakref.WeakKeyDictionary[CollectorRegistry, Instruments] = (
    weakref.WeakKeyDictionary()
)


def instruments(registry: CollectorRegistry) -> Instruments:
    """The collector of ``registry`` (registered on first use)."""
    found = _instruments.get(registry)
    if found is None:
        found = _instruments[registry] = Instruments()
        registry.register(found)
    return found


@final
class Instruments:
    """The collector of one registry: every workflow's metrics, made into families."""

    def __init__(self) -> None:
        self.workflows: weakref.WeakSet[WorkflowMetrics] = weakref.WeakSet()
        self.added = 0

    def add(self, metrics: WorkflowMetrics) -> int:
        """Adds the metrics of a workflow; returns their sequence number."""
        self.workflows.add(metrics)
        self.added += 1
        return self.added

    def named(self, name: str) -> WorkflowMetrics | None:
        """The latest metrics added of a workflow called ``name`` still alive, if any."""
        same = [m for m in list(self.workflows) if m.name == name]
        return max(same, key=lambda m: m.seq, default=None)

    def describe(self) -> list[Metric]:
        return []  # the names are ours alone; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        groups: dict[str, list[WorkflowMetrics]] = {}
        for m in sorted(self.workflows, key=lambda m: (m.name, m.seq)):
            groups.setdefault(m.name, []).append(m)
        wfs = [_Named(group) for group in groups.values()]
        yield from _luno(wfs)
        yield from _own(wfs)


_RANK = {ProcessState.STOPPED: 0, ProcessState.IDLE: 1, ProcessState.RUNNING: 2}
"""Which state a process shows when several workflow objects of one name report it
(``ERRORING``, not listed, over all)."""


@final
class _Named:
    """The metrics of every workflow object of one name in a registry, exposed as one
    set of series (several objects: a workflow built again in the same process). Their
    counters are shared (see WorkflowMetrics); gauges combine: states by the most active,
    counts summed, readiness if any is ready."""

    def __init__(self, group: list[WorkflowMetrics]) -> None:
        first = group[0]
        self.name = first.name
        self.lags, self.lag_alerts, self.latency = first.lags, first.lag_alerts, first.latency
        self.errors, self.skips = first.errors, first.skips
        self.run_state_changes = first.run_state_changes
        self.commit, self.run_duration = first.commit, first.run_duration
        # Latest first: the objects still running, then the latest built.
        ordered = sorted(group, key=_running_first, reverse=True)
        self.workflows: list[Any] = [w for w in (m.workflow for m in ordered) if w is not None]
        self.run_counts = next((m.run_counts for m in ordered if m.run_counts is not None), None)

    def states(self) -> dict[str, ProcessState]:
        merged: dict[str, ProcessState] = {}
        for workflow in self.workflows:
            for process, state in workflow.states().items():
                seen = merged.get(process)
                if seen is None or _RANK.get(state, 3) > _RANK.get(seen, 3):
                    merged[process] = state
        return merged


def _running_first(m: WorkflowMetrics) -> tuple[bool, int]:
    workflow = m.workflow
    return (workflow is not None and bool(workflow.running), m.seq)


def _luno(wfs: list[_Named]) -> Iterator[Metric]:
    lag = GaugeMetricFamily(
        "workflow_process_lag_seconds",
        "lag between now and the timestamp of the run or event a process took up, in seconds",
        labels=[WORKFLOW, PROCESS],
    )
    alert = GaugeMetricFamily(
        "workflow_process_lag_alert",
        "whether the process lag crosses its lag_alert threshold (1) or not (0)",
        labels=[WORKFLOW, PROCESS],
    )
    states = GaugeMetricFamily(
        "workflow_process_states",
        "the state of each process: 1 stopped, 2 running, 3 idle, 4 erroring",
        labels=[WORKFLOW, PROCESS],
    )
    latency = HistogramMetricFamily(
        "workflow_process_latency_seconds",
        "time a process took to handle a run or event, in seconds",
        labels=[WORKFLOW, PROCESS],
    )
    errors = UnknownMetricFamily(
        "workflow_process_error_count",
        "number of errors of a process (a counter, exposed under luno/workflow's name)",
        labels=[WORKFLOW, PROCESS],
    )
    skipped = UnknownMetricFamily(
        "workflow_process_skipped_events_count",
        "number of events a process skipped (a counter, exposed under luno/workflow's name)",
        labels=[WORKFLOW, PROCESS, "reason"],
    )
    changes = UnknownMetricFamily(
        "workflow_run_state_changes",
        "number of run-state changes, from a run state to a run state (a counter)",
        labels=[WORKFLOW, "previous_run_state", "current_run_state"],
    )
    for m in wfs:
        name = m.name
        for process, value in list(m.lags.items()):
            lag.add_metric([name, process], value)
        for process, value in list(m.lag_alerts.items()):
            alert.add_metric([name, process], value)
        for process, state in m.states().items():
            states.add_metric([name, process], float(int(state)))
        for process, histogram in list(m.latency.items()):
            latency.add_metric([name, process], histogram.buckets(), histogram.sum)
        for process, count in list(m.errors.items()):
            errors.add_metric([name, process], float(count))
        for (process, reason), count in list(m.skips.items()):
            skipped.add_metric([name, process, reason], float(count))
        for (previous, current), count in list(m.run_state_changes.items()):
            changes.add_metric(
                [name, RUN_STATE_NAMES[previous], RUN_STATE_NAMES[current]], float(count)
            )
    yield from (lag, alert, states, latency, errors, skipped, changes)


def _own(wfs: list[_Named]) -> Iterator[Metric]:
    yield from _own_workflows(wfs)
    yield from _own_stores({id(w.store): w.store for m in wfs for w in m.workflows})
    yield from _gateways()


def _own_workflows(wfs: list[_Named]) -> Iterator[Metric]:
    """actorflow's metrics of each workflow in this process."""
    runs = GaugeMetricFamily(
        "actorflow_runs",
        "runs by status and run state, counted in the store (refreshed every 15 s)",
        labels=[WORKFLOW, "status", "run_state"],
    )
    actors = GaugeMetricFamily(
        "actorflow_active_actors", "run actors working in this process", labels=[WORKFLOW]
    )
    waiting = GaugeMetricFamily(
        "actorflow_waiting_runs",
        "runs waiting for an actor slot (max_active_runs reached)",
        labels=[WORKFLOW],
    )
    timers = GaugeMetricFamily(
        "actorflow_armed_timers", "runs with a timer armed in this process", labels=[WORKFLOW]
    )
    ready = GaugeMetricFamily(
        "actorflow_workflow_ready",
        "1 while the workflow is recovered and taking work in this process (/readyz)",
        labels=[WORKFLOW],
    )
    commit = HistogramMetricFamily(
        "actorflow_store_commit_seconds",
        "time to store one version of a run (the wait for its group commit)",
        labels=[WORKFLOW],
    )
    duration = HistogramMetricFamily(
        "actorflow_run_duration_seconds",
        "time from trigger to completion of the runs that completed",
        labels=[WORKFLOW],
    )
    for m in wfs:
        name = m.name
        if not m.workflows:
            continue
        workflow = m.workflows[0]
        counts = m.run_counts
        if counts is not None:
            for (status, run_state), count in sorted(counts.items()):
                member = workflow.definition.status(status)
                status_name = getattr(member, "name", str(status))
                runs.add_metric([name, status_name, RUN_STATE_NAMES[run_state]], float(count))
        active = queued = armed = 0
        for each in m.workflows:
            a, q, t = each._runtime_counts()
            active, queued, armed = active + a, queued + q, armed + t
        actors.add_metric([name], float(active))
        waiting.add_metric([name], float(queued))
        timers.add_metric([name], float(armed))
        ready.add_metric([name], 1.0 if any(w.ready for w in m.workflows) else 0.0)
        commit.add_metric([name], m.commit.buckets(), m.commit.sum)
        duration.add_metric([name], m.run_duration.buckets(), m.run_duration.sum)
    yield from (runs, actors, waiting, timers, ready, commit, duration)


def _own_stores(stores: dict[int, Any]) -> Iterator[Metric]:
    """The write statistics of the workflows' stores (each store once)."""
    transactions = CounterMetricFamily(
        "actorflow_store_transactions",
        "write transactions the store committed (each carries a batch of writes)",
        labels=["store"],
    )
    writes = CounterMetricFamily(
        "actorflow_store_writes", "write operations the store answered", labels=["store"]
    )
    largest = GaugeMetricFamily(
        "actorflow_store_largest_batch",
        "the most writes one transaction of the store carried",
        labels=["store"],
    )
    # Labelled by the store's class: several stores of one class (two SQLite files) are
    # one series each, summed (the largest batch: the largest of them).
    by_kind: dict[str, list[float]] = {}
    for store in stores.values():
        stats = getattr(store, "stats", None)
        if stats is None or not hasattr(stats, "transactions"):
            continue
        seen = by_kind.setdefault(type(store).__name__, [0.0, 0.0, 0.0])
        seen[0] += float(stats.transactions)
        seen[1] += float(getattr(stats, "writes", 0))
        seen[2] = max(seen[2], float(getattr(stats, "largest_batch", 0)))
    for kind, (count, written, most) in sorted(by_kind.items()):
        transactions.add_metric([kind], count)
        writes.add_metric([kind], written)
        largest.add_metric([kind], most)
    yield from (transactions, writes, largest)


def _gateways() -> Iterator[Metric]:
    connections = GaugeMetricFamily(
        "actorflow_gateway_connections", "websocket connections the gateways serve"
    )
    subscriptions = GaugeMetricFamily(
        "actorflow_gateway_subscriptions", "live subscriptions over the gateways"
    )
    gateways = list(live_gateways)
    connections.add_metric([], float(sum(g.connections for g in gateways)))
    subscriptions.add_metric([], float(sum(g.subscriptions for g in gateways)))
    yield from (connections, subscriptions)
