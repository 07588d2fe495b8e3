"""History retention (build option ``history_retention``): old versions of finished runs go."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from tests.conftest import StoreMaker
from tests.workflows import Status, Three, three_steps, yinyang

MINUTE = 60.0


async def test_keep_last_versions_of_finished_runs(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    retention = af.Retention(
        keep_last=2, after_finish=timedelta(minutes=5), every=timedelta(minutes=10)
    )
    workflow = three_steps(make_store(), clock, history_retention=retention)
    waiting = yinyang(workflow.store, clock)  # another workflow on the store: untouched
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        await workflow.await_status("f", run_id, Three.D)
        other = await waiting.trigger("w", Status.MIDDLE)
        assert [r.version for r in await workflow.history(run_id)] == [1, 2, 3, 4]
        await trio.sleep(4 * MINUTE)  # finished less than after_finish ago: kept
        assert len(await workflow.history(run_id)) == 4
        await trio.sleep(10 * MINUTE)  # the next pass
        history = await workflow.history(run_id)
        assert [r.version for r in history] == [3, 4]
        assert history[-1] == await workflow.lookup(run_id)
        assert history[-1].object.steps == ["a", "b", "c"]
        # await_status still answers from what is kept.
        assert (await workflow.await_status("f", run_id, Three.D)).version == 4
    assert [r.version for r in await waiting.history(other)] == [1]


async def test_keep_versions_younger_than(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    retention = af.Retention(
        keep_for=timedelta(days=1), after_finish=timedelta(0), every=timedelta(hours=1)
    )
    workflow = yinyang(make_store(), clock, history_retention=retention)
    async with af.open_workflow(workflow):
        done = await workflow.trigger("done")
        await workflow.await_status("done", done, Status.MIDDLE)
        await trio.sleep(2 * 3600)  # the timeout finishes it (3 versions in all)
        parked = await workflow.trigger("parked", Status.MIDDLE)
        await trio.sleep(20 * 3600)  # not yet a day old
        assert len(await workflow.history(done)) == 3
        await trio.sleep(6 * 3600)
        assert [r.version for r in await workflow.history(done)] == [3]  # latest kept
        assert len(await workflow.history(parked)) == 1


def test_retention_options_are_checked() -> None:
    with pytest.raises(af.BuildError, match="keep_last"):
        af.Retention()
    with pytest.raises(af.BuildError, match="keep_last"):
        af.Retention(keep_last=0)
    with pytest.raises(af.BuildError, match="keep_for"):
        af.Retention(keep_for=5)  # type: ignore[arg-type]
    with pytest.raises(af.BuildError, match="every"):
        af.Retention(keep_last=1, every=timedelta(0))
    with pytest.raises(af.BuildError, match="history_retention"):
        three_steps(af.MemoryStore(), af.SystemClock(), history_retention=3)
