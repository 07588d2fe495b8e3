"""Process states, lag alerts, in-process metrics, structured logs and the optional extras."""

from __future__ import annotations

import enum
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import actorflow as af
from tests.fresh_python import printed_lines
from tests.workflows import Status, yinyang

S = af.ProcessState


class Job(enum.IntEnum):
    NEW = 1
    BUSY = 2
    DONE = 3


@attrs.define
class Box:
    fail: int = 0
    """How many times the step still fails."""


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def jobs(
    store: af.Store,
    clock: af.Clock,
    gate: trio.Event,
    failing: dict[str, int],
    **build: Any,
) -> af.Workflow[Box, Job]:
    """NEW -step (waits for ``gate``)-> BUSY -step (fails while failing[run id])-> DONE,
    with a connector and an on_complete hook."""
    builder = af.Builder("jobs", Box, Job)

    @builder.step(Job.NEW, to=Job.BUSY, lag_alert=timedelta(minutes=5))
    async def begin(run: af.Run[Box, Job]) -> Job:
        await gate.wait()
        return Job.BUSY

    @builder.step(Job.BUSY, to=Job.DONE, error_backoff=timedelta(minutes=1))
    async def finish(run: af.Run[Box, Job]) -> Job:
        if failing.get(run.foreign_id, 0) > 0:
            failing[run.foreign_id] -= 1
            raise RuntimeError("not yet")
        return Job.DONE

    async def on_event(workflow: Any, event: af.ConnectorEvent) -> None:
        await workflow.trigger(event.foreign_id)

    builder.add_connector("feed", af.MemorySource([]), on_event, lag_alert=timedelta(hours=1))

    @builder.on_complete
    async def completed(record: af.Record[Box, Job]) -> None:
        pass

    builder.add_timeout(Job.BUSY, af.after(timedelta(days=1)), _expire, to=[Job.DONE])
    return builder.build(store, clock=clock, **build)


async def _expire(run: af.Run[Box, Job], now: datetime) -> Job:
    return Job.DONE


async def test_states_follow_the_processes_of_a_workflow(
    autojump_clock: Any, clock: af.Clock
) -> None:
    gate = trio.Event()
    failing = {"f": 2}
    workflow = jobs(af.MemoryStore(), clock, gate, failing, metrics=False)
    everything = {
        "new-consumer",
        "busy-consumer",
        "busy-timeout-consumer",
        "timers",
        "completed-run-state-change-hook-consumer",
        "feed-connector-consumer",
    }
    assert set(workflow.states()) == everything
    assert set(workflow.states().values()) == {S.STOPPED}
    assert not workflow.ready

    async with trio.open_nursery() as nursery:
        await nursery.start(workflow.run)
        await trio.testing.wait_all_tasks_blocked()  # the services have started
        states = workflow.states()
        assert states["new-consumer"] is S.IDLE
        assert states["feed-connector-consumer"] is S.RUNNING
        assert states["completed-run-state-change-hook-consumer"] is S.RUNNING
        assert states["timers"] is S.IDLE

        run_id = await workflow.trigger("f")
        await trio.testing.wait_all_tasks_blocked()
        assert workflow.states()["new-consumer"] is S.RUNNING  # its step waits on the gate
        assert workflow.ready

        gate.set()
        await af.testing.wait_for(workflow, "f", lambda r: r.status == Job.BUSY)
        await trio.testing.wait_all_tasks_blocked()
        states = workflow.states()
        assert states["busy-consumer"] is S.ERRORING  # failed, backing off a minute
        assert states["new-consumer"] is S.IDLE
        assert states["timers"] is S.RUNNING  # the day-long timeout is armed

        record = await workflow.await_status("f", run_id, Job.DONE)
        assert record.run_state is af.RunState.COMPLETED
        assert workflow.states()["busy-consumer"] is S.IDLE

        schedule = trio.CancelScope()

        async def scheduled() -> None:
            with schedule:
                await workflow.schedule_trigger("nightly", "@daily")

        nursery.start_soon(scheduled)
        await trio.testing.wait_all_tasks_blocked()
        assert workflow.states()["nightly-scheduler-@daily"] is S.RUNNING
        schedule.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert workflow.states()["nightly-scheduler-@daily"] is S.STOPPED
        workflow.stop()
    assert set(workflow.states().values()) == {S.STOPPED}


async def test_metrics_go_to_the_registry_given(autojump_clock: Any, clock: af.Clock) -> None:
    registry = CollectorRegistry()
    gate = trio.Event()
    gate.set()
    workflow = jobs(af.MemoryStore(), clock, gate, {"x": 1}, metrics=registry)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("x")
        await workflow.await_status("x", run_id, Job.DONE)
        await trio.sleep(16)  # actorflow_runs is counted afresh every 15 s
        counted = samples(registry)
    found = samples(registry)
    runs = ("actorflow_runs", frozenset(
        {"workflow_name": "jobs", "status": "DONE", "run_state": "Completed"}.items()
    ))  # fmt: skip
    assert counted[runs] == 1
    base = {"workflow_name": "jobs"}

    def get(name: str, **labels: str) -> float:
        return found.get((name, frozenset({**base, **labels}.items())), 0.0)

    assert get("workflow_process_latency_seconds_count", process_name="new-consumer") == 1
    assert get("workflow_process_latency_seconds_count", process_name="busy-consumer") == 2
    assert get("workflow_process_error_count", process_name="busy-consumer") == 1
    assert get("workflow_process_lag_alert", process_name="new-consumer") == 0.0
    assert get("workflow_process_states", process_name="new-consumer") == float(S.STOPPED)
    assert (
        get(
            "workflow_run_state_changes",
            previous_run_state="Running",
            current_run_state="Completed",
        )
        == 1
    )
    assert get("actorflow_run_duration_seconds_count") == 1
    # luno's latency buckets.
    buckets = sorted(
        float(dict(labels)["le"])
        for (name, labels) in found
        if name == "workflow_process_latency_seconds_bucket"
        and dict(labels)["process_name"] == "new-consumer"
    )
    assert buckets == [0.01, 0.1, 1.0, 5.0, 10.0, 60.0, 300.0, float("inf")]
    # Nothing of it went to the global registry.
    assert b'workflow_name="jobs"' not in generate_latest(CollectorRegistry())


async def test_lag_alert_sets_the_gauge_and_logs_a_warning_once(
    autojump_clock: Any, clock: af.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    gate = trio.Event()
    gate.set()
    workflow = jobs(af.MemoryStore(), clock, gate, {}, metrics=registry)
    # Stored while no worker runs: taken up an hour later, past the 5-minute lag alert.
    first = await workflow.trigger("late-1")
    second = await workflow.trigger("late-2")
    await trio.sleep(3600)
    caplog.set_level(logging.INFO, logger="actorflow")
    async with af.open_workflow(workflow):
        await workflow.await_status("late-1", first, Job.DONE)
        await workflow.await_status("late-2", second, Job.DONE)
        key = ("workflow_process_lag_alert", frozenset(
            {"workflow_name": "jobs", "process_name": "new-consumer"}.items()
        ))  # fmt: skip
        assert samples(registry)[key] == 1.0
        lag = samples(registry)[("workflow_process_lag_seconds", key[1])]
        assert lag >= 3600
        # Back under the threshold for a run taken up at once.
        third = await workflow.trigger("prompt")
        await workflow.await_status("prompt", third, Job.DONE)
        assert samples(registry)[key] == 0.0
    warnings = [r for r in caplog.records if "over its lag_alert" in r.getMessage()]
    assert len(warnings) == 1  # once when it crosses, not per run
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].process_name == "new-consumer"  # type: ignore[attr-defined]
    assert warnings[0].workflow_name == "jobs"  # type: ignore[attr-defined]
    assert warnings[0].run_id in (first, second)  # type: ignore[attr-defined]
    assert any("back under its lag_alert" in r.getMessage() for r in caplog.records)


async def test_log_records_carry_the_run_s_identifiers(
    autojump_clock: Any, clock: af.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    gate = trio.Event()
    gate.set()
    workflow = jobs(af.MemoryStore(), clock, gate, {"e": 1}, metrics=False)
    caplog.set_level(logging.WARNING, logger="actorflow")
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("e")
        await workflow.await_status("e", run_id, Job.DONE)
    (record,) = [r for r in caplog.records if "not yet" in r.getMessage()]
    fields = {k: getattr(record, k) for k in ("workflow_name", "foreign_id", "run_id")}
    assert fields == {"workflow_name": "jobs", "foreign_id": "e", "run_id": run_id}
    assert record.process_name == "busy-consumer"  # type: ignore[attr-defined]
    assert record.status == int(Job.BUSY)  # type: ignore[attr-defined]
    assert record.error_count == 1  # type: ignore[attr-defined]


def test_bad_observability_options_are_build_errors(clock: af.Clock) -> None:
    with pytest.raises(af.BuildError, match="CollectorRegistry"):
        yinyang(af.MemoryStore(), clock, metrics="yes")
    with pytest.raises(af.BuildError, match="TracerProvider"):
        yinyang(af.MemoryStore(), clock, tracing="yes")
    builder = af.Builder("lagging", Box, Job)
    with pytest.raises(af.BuildError, match="lag_alert must be a timedelta"):
        builder.add_step(Job.NEW, _step, to=Job.DONE, lag_alert=-1)
        builder.build(af.MemoryStore())
    assert yinyang(af.MemoryStore(), clock, metrics=False).observer is None


async def _step(run: af.Run[Box, Job]) -> Job:
    return Job.DONE


def test_the_extras_are_optional(tmp_path: Path) -> None:
    """Without prometheus-client and opentelemetry: import and build work, metrics are off
    by default, and asking for them says which extra to install."""
    script = """
        import sys
        for name in ("prometheus_client", "opentelemetry"):
            sys.modules[name] = None  # as if not installed
        import actorflow as af
        from tests.workflows import yinyang
        workflow = yinyang(af.MemoryStore(), af.SystemClock())
        assert workflow.observer is None, workflow.observer
        for option in ({"metrics": True}, {"tracing": True}):
            try:
                yinyang(af.MemoryStore(), af.SystemClock(), **option)
            except af.BuildError as exc:
                print(exc)
        """
    assert printed_lines(script) == [
        "metrics= needs prometheus-client: pip install 'actorflow[metrics]'",
        "tracing= needs opentelemetry-api: pip install 'actorflow[otel]'",
    ]


def test_process_state_values_are_luno_s() -> None:
    # luno/workflow: StateShutdown 1, StateRunning 2, StateIdle 3.
    assert (S.STOPPED, S.RUNNING, S.IDLE) == (1, 2, 3)
    assert "ProcessState" in af.__all__
    assert S.ERRORING == 4


_ = (Status, UTC)


PG_DSN = os.environ.get("ACTORFLOW_PG_DSN", "")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    if not PG_DSN:
        pytest.skip("ACTORFLOW_PG_DSN not set: readiness on PostgreSQL was NOT tested")
    import psycopg

    name = f"af_test_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'.encode())


async def _until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(20):
        while not predicate():  # noqa: ASYNC110 (leases move in the database: no event here)
            await trio.sleep(0.05)


@pytest.mark.postgres
async def test_readiness_and_states_of_two_postgres_workers(pg_schema: str) -> None:
    """Each worker is ready once it holds its fair share of shards; one leads the
    singleton services, the other stands by (IDLE)."""
    from actorflow.stores import PostgresStore

    gate = trio.Event()
    gate.set()
    stores = [PostgresStore(PG_DSN, schema=pg_schema, pool_size=2) for _ in range(2)]
    workers = [
        jobs(store, af.SystemClock(), gate, {}, metrics=False, lease=timedelta(seconds=1))
        for store in stores
    ]
    hook = "completed-run-state-change-hook-consumer"
    try:
        async with af.open_workflow(workers[0]):
            await _until(lambda: workers[0].ready)
            assert workers[0].states()["shard-ownership"] is S.RUNNING
            assert workers[0].states()[hook] is S.RUNNING  # the only worker leads
            async with af.open_workflow(workers[1]):
                await _until(lambda: all(w.ready for w in workers))
                hooks = sorted(w.states()[hook] for w in workers)
                assert hooks == [S.RUNNING, S.IDLE]  # one leads, one stands by
    finally:
        for store in stores:
            await store.aclose()
    assert not workers[0].ready
