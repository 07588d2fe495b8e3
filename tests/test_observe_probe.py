"""Adversarial probes of the metrics (docs/metrics.md): the exposition stays valid (one
sample per name and label set) with several stores and with a workflow built again in the
same process, and luno's counters keep counting across such a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
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
