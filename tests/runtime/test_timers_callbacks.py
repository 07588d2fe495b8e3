"""Durable timeouts and callbacks, on the embedded stores, in virtual time."""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import await_timeout_insert, trigger_callback_on, wait_for
from tests.conftest import START, StoreMaker
from tests.workflows import Status, YinYang, yinyang


async def test_timeout_fires_after_an_hour(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        await await_timeout_insert(workflow, "f", run_id, Status.MIDDLE)
        before = trio.current_time()
        done = await workflow.await_status("f", run_id, Status.END)
        assert trio.current_time() - before == pytest.approx(3600)
        assert done.object.note == "timed out"
        assert done.updated_at == START + timedelta(hours=1)
        assert await workflow.store.list_timers(workflow.name, run_id) == []


async def test_callback_one_second_before_the_timeout_wins(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        middle = await workflow.await_status("f", run_id, Status.MIDDLE)
        await trio.sleep_until(3599)
        record = await workflow.callback("f", Status.MIDDLE, b"paid")
        assert record is not None and record.status is Status.END
        assert record.object.note == "paid"
        assert record.updated_at - middle.updated_at == timedelta(seconds=3599)
        await trio.sleep(7200)
    history = await workflow.history(run_id)
    assert [r.status for r in history] == [Status.STARTED, Status.MIDDLE, Status.END]
    assert history[-1].object.note == "paid"


async def test_callback_not_at_status_or_unknown(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    async with af.open_workflow(workflow):
        with pytest.raises(af.RunNotFound):
            await workflow.callback("nobody", Status.MIDDLE, b"x")
        run_id = await workflow.trigger("f")
        await workflow.await_status("f", run_id, Status.MIDDLE)
        with pytest.raises(af.InvalidArgument, match="no callback at STARTED"):
            await workflow.callback("f", Status.STARTED, b"x")
        with pytest.raises(af.InvalidArgument, match="bytes"):
            await workflow.callback("f", Status.MIDDLE, "text")  # type: ignore[arg-type]
        assert await workflow.callback("f", Status.MIDDLE, b"paid") is not None
        assert await workflow.callback("f", Status.MIDDLE, b"again") is None  # moved on
    assert [r.version for r in await workflow.history(run_id)] == [1, 2, 3]


async def test_callback_that_cannot_parse_counts_as_error(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock, default_options={"pause_after_errors": 2})
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        await workflow.await_status("f", run_id, Status.MIDDLE)
        with pytest.raises(af.CallbackError, match="1 consecutive error") as first:
            await workflow.callback("f", Status.MIDDLE, b"bad")
        assert isinstance(first.value.__cause__, ValueError)
        assert (await workflow.lookup(run_id)).version == 2  # nothing stored
        with pytest.raises(af.CallbackError, match="paused"):
            await workflow.callback("f", Status.MIDDLE, b"bad")
        paused = await workflow.lookup(run_id)
        assert paused.run_state is af.RunState.PAUSED
        assert "cannot parse payload" in paused.meta.run_state_reason
        assert await workflow.callback("f", Status.MIDDLE, b"good") is None  # paused


async def test_concurrent_callbacks_are_serialised(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    results: list[object] = []
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        await workflow.await_status("f", run_id, Status.MIDDLE)

        async def send(n: int) -> None:
            results.append(await workflow.callback("f", Status.MIDDLE, str(n).encode()))

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(send, n)
    assert sum(r is not None for r in results) == 1
    assert [r.version for r in await workflow.history(run_id)] == [1, 2, 3]


async def test_callback_without_a_running_worker(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    run_id = await workflow.trigger("f", Status.MIDDLE)
    record = await workflow.callback("f", Status.MIDDLE, b"paid")
    assert record is not None and record.status is Status.END and record.version == 2
    assert record.run_id == run_id


async def test_timer_survives_a_restart_and_fires_once(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    fired: list[float] = []
    builder = af.Builder("restart", YinYang, Status)

    async def gave_up(run: af.Run[YinYang, Status], now: datetime) -> Status:
        fired.append(trio.current_time())
        return Status.END

    builder.add_timeout(Status.MIDDLE, af.after(timedelta(hours=1)), gave_up, to=Status.END)
    first = builder.build(make_store(), clock=clock)
    async with af.open_workflow(first):
        run_id = await first.trigger("f")
        await await_timeout_insert(first, "f", run_id, Status.MIDDLE)
    await trio.sleep(2 * 3600)  # nothing runs while it is down
    assert fired == []
    second = builder.build(make_store(), clock=clock)
    async with af.open_workflow(second):
        done = await second.await_status("f", run_id, Status.END)
        await trio.sleep(3 * 3600)
    assert fired == [pytest.approx(2 * 3600)]  # at once on start
    assert done.version == 2


async def test_timer_functions_none_past_and_naive(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("timerfns", YinYang, Status)

    def decide(run: af.Run[YinYang, Status], now: datetime) -> datetime | None:
        if run.foreign_id == "none":
            return None
        if run.foreign_id == "naive":
            return datetime(2030, 1, 1)
        return now - timedelta(days=1)

    async def expired(run: af.Run[YinYang, Status], now: datetime) -> Status:
        return Status.END

    builder.add_timeout(Status.MIDDLE, decide, expired, to=Status.END)
    workflow = builder.build(make_store(), clock=clock)
    async with af.open_workflow(workflow):
        past = await workflow.trigger("past")
        await workflow.await_status("past", past, Status.END)
        assert trio.current_time() < 1
        none = await workflow.trigger("none")
        assert await workflow.store.list_timers(workflow.name, none) == []
        with pytest.raises(af.InvalidArgument, match="aware datetime"):
            await workflow.trigger("naive")
    with pytest.raises(af.BuildError, match="naive"):
        af.at(datetime(2030, 1, 1))
    assert af.at(datetime(2030, 1, 1, tzinfo=UTC))(None, START) == datetime(2030, 1, 1, tzinfo=UTC)


async def test_paused_run_timer_waits_until_resume(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock, resume_paused_after=None)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        await await_timeout_insert(workflow, "f", run_id, Status.MIDDLE)
        await workflow.pause(run_id, "hold")
        await trio.sleep(3 * 3600)
        assert (await workflow.lookup(run_id)).status is Status.MIDDLE
        await workflow.resume(run_id)
        done = await workflow.await_status("f", run_id, Status.END)
        assert done.object.note == "timed out"
        assert done.updated_at == START + timedelta(hours=3)


async def test_trigger_callback_on_helper(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        record = await trigger_callback_on(workflow, "f", run_id, Status.MIDDLE, b"webhook")
        assert record is not None and record.object.note == "webhook"
        other = await workflow.trigger("g")
        record = await trigger_callback_on(
            workflow, "g", other, Status.MIDDLE, YinYang(note="as json")
        )
        assert record is not None
        assert '"note": "as json"' in record.object.note


class Poll(enum.IntEnum):
    WAITING = 1
    DONE = 2


@attrs.define
class Seen:
    at: str = ""


async def test_consume_lag(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("lagged", Seen, Poll)

    @builder.step(Poll.WAITING, to=Poll.DONE, consume_lag=timedelta(minutes=5))
    async def later(run: af.Run[Seen, Poll]) -> Poll:
        return Poll.DONE

    workflow = builder.build(make_store(), clock=clock)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        done = await workflow.await_status("f", run_id, Poll.DONE)
    assert done.updated_at - done.created_at == timedelta(minutes=5)


async def test_wait_for_helper_waits_for_the_trigger(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    async with af.open_workflow(workflow), trio.open_nursery() as nursery:
        found: list[af.Record[YinYang, Status]] = []

        async def wait() -> None:
            found.append(await wait_for(workflow, "late", lambda r: r.status is Status.MIDDLE))

        nursery.start_soon(wait)
        await trio.sleep(10)
        await workflow.trigger("late")
    assert found[0].object.yin


class Gate(enum.IntEnum):
    WAITING = 1
    OPEN = 2


@attrs.define
class Tries:
    n: int = 0


@pytest.mark.parametrize("backoff", [timedelta(seconds=1), timedelta(seconds=30)])
async def test_a_timeout_that_skips_stores_nothing_and_fires_again_after_its_backoff(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock, backoff: timedelta
) -> None:
    builder = af.Builder("gate", Tries, Gate)
    fired: list[float] = []

    async def maybe_open(run: af.Run[Tries, Gate], now: datetime) -> Gate:
        fired.append(trio.current_time())
        run.object.n += 1
        if len(fired) < 3:
            return run.skip()
        return Gate.OPEN

    builder.add_timeout(
        Gate.WAITING,
        af.after(timedelta(minutes=1)),
        maybe_open,
        to=Gate.OPEN,
        error_backoff=backoff,
    )
    workflow = builder.build(make_store(), clock=clock)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        with trio.fail_after(3600):
            opened = await workflow.await_status("f", run_id, Gate.OPEN)
    step = backoff.total_seconds()
    assert fired == pytest.approx([60, 60 + step, 60 + 2 * step])
    # Skipping wrote nothing: the run went from its first version straight to OPEN, and
    # the object changes of the skipped calls were not kept.
    assert [(r.version, r.status) for r in await workflow.history(run_id)] == [
        (1, Gate.WAITING),
        (2, Gate.OPEN),
    ]
    assert opened.object.n == 1
