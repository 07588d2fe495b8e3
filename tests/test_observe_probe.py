"""Adversarial probes of the metrics (docs/metrics.md): the exposition stays valid (one
sample per name and label set) with several stores and with a workflow built again in the
same process, and luno's counters keep counting across such a restart."""

from __future__ import annotations

import enum
from pathlib import Path

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from tests.workflows import Status, Three, three_steps, yinyang

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def scrape(registry: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry by (name, labels); a duplicate one fails the test."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    text = prometheus_client.generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series {key} in the exposition"
            samples[key] = sample.value
    return samples


async def test_two_stores_of_one_class_are_one_series_each_metric(
    tmp_path: Path, clock: af.Clock, autojump_clock: MockClock
) -> None:
    registry = prometheus_client.CollectorRegistry()
    first, second = af.SQLiteStore(tmp_path / "a.db"), af.SQLiteStore(tmp_path / "b.db")
    try:
        three = three_steps(first, clock, metrics=registry)
        waiting = yinyang(second, clock, metrics=registry)
        async with af.open_workflow(three, waiting):
            run_id = await three.trigger("x")
            await three.await_status("x", run_id, Three.D)
            run_id = await waiting.trigger("y")
            await waiting.await_status("y", run_id, Status.MIDDLE)
            samples = scrape(registry)
        label = (("store", "SQLiteStore"),)
        writes = samples[("actorflow_store_writes_total", label)]
        assert writes == first.stats.writes + second.stats.writes  # type: ignore[attr-defined]
        assert samples[("actorflow_store_transactions_total", label)] >= 2
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_workflow_built_again_in_one_process_keeps_one_set_of_series(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    registry = prometheus_client.CollectorRegistry()
    store = af.MemoryStore()
    before = three_steps(store, clock, metrics=registry)
    async with af.open_workflow(before):
        run_id = await before.trigger("x")
        await before.await_status("x", run_id, Three.D)
    after = three_steps(store, clock, metrics=registry)  # the restart; `before` still alive
    async with af.open_workflow(after):
        run_id = await after.trigger("y")
        await after.await_status("y", run_id, Three.D)
        samples = scrape(registry)
        name = (("workflow_name", "three"),)
        assert samples[("actorflow_workflow_ready", name)] == 1.0
        consumer = (("process_name", "a-consumer"), ("workflow_name", "three"))
        assert samples[("workflow_process_states", consumer)] != float(af.ProcessState.STOPPED)
    # luno's counters went on counting: both runs completed.
    completed = (
        ("current_run_state", "Completed"),
        ("previous_run_state", "Running"),
        ("workflow_name", "three"),
    )
    samples = scrape(registry)
    assert samples[("workflow_run_state_changes", completed)] == 2.0
    assert samples[("actorflow_workflow_ready", name)] == 0.0
    assert samples[("actorflow_run_duration_seconds_count", name)] == 2.0


async def test_healthz_is_503_while_the_store_cannot_be_reached_at_start(
    autojump_clock: MockClock, clock: af.Clock
) -> None:
    """docs/metrics.md: /healthz is 200 while the supervisor and services are up, 503 while
    starting. A worker whose database is down has started nothing: it is not healthy."""
    from actorflow._observe.http import health

    store = af.PostgresStore("postgresql://postgres@127.0.0.1:1/postgres", schema="nowhere")
    workflow = three_steps(store, clock, metrics=False)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(workflow.run)
            await trio.sleep(30)  # it retries the connection meanwhile
            assert not workflow.running and not workflow.ready
            assert health([workflow], ready=False)[0] is False
            assert health([workflow], ready=True)[0] is False
            assert set(workflow.states().values()) == {af.ProcessState.STOPPED}
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()
    # And up once started, down again after the stop.
    memory = three_steps(af.MemoryStore(), clock, metrics=False)
    async with af.open_workflow(memory):
        assert memory.running and health([memory], ready=False)[0] is True
    assert not memory.running and health([memory], ready=False)[0] is False


class Slow(enum.IntEnum):
    NEW = 1
    DONE = 2


@attrs.define
class Nothing:
    pass


async def test_step_latency_is_on_trio_s_clock_like_the_run_s_duration(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    """Under the autojump clock a step that sleeps 30 s took 30 s: its latency says so,
    as actorflow_run_duration_seconds does (it said a few microseconds of real time)."""
    builder = af.Builder("slow", Nothing, Slow)

    @builder.step(Slow.NEW, to=Slow.DONE)
    async def work(run: af.Run[Nothing, Slow]) -> Slow:
        await trio.sleep(30)
        return Slow.DONE

    registry = prometheus_client.CollectorRegistry()
    workflow = builder.build(af.MemoryStore(), clock=clock, metrics=registry)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("x")
        await workflow.await_status("x", run_id, Slow.DONE)
    samples = scrape(registry)
    step = (("process_name", "new-consumer"), ("workflow_name", "slow"))

    def bucket(le: str) -> float:
        return samples[("workflow_process_latency_seconds_bucket", (("le", le), *step))]

    assert (bucket("10.0"), bucket("60.0")) == (0.0, 1.0)
    assert samples[("workflow_process_latency_seconds_sum", step)] == 30.0
    assert samples[("actorflow_run_duration_seconds_sum", (("workflow_name", "slow"),))] == 30.0
