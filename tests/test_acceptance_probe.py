"""Acceptance probe: the promises of the public API contract, written from the contract
alone (luno/workflow's scenarios and hostile input), on MemoryStore and SQLiteStore."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import (
    Special,
    await_timeout_insert,
    make_run,
    require,
    trigger_callback_on,
    trio_clock,
    wait_for,
)
from tests.conftest import START, StoreMaker


class St(enum.IntEnum):
    START = 1
    PROFILE = 2
    EMAIL_SENT = 3
    VERIFIED = 4
    DONE = 5


@attrs.define
class User:
    name: str = ""
    email: str = ""
    verified: bool = False
    count: int = 0
    items: list[str] = attrs.Factory(list)


def signup(store: af.Store, clock: af.Clock, **build: Any) -> af.Workflow[User, St]:
    b = af.Builder("signup", User, St)

    @b.step(St.START, to=St.PROFILE)
    async def profile(run: af.Run[User, St]) -> St:
        run.object.name = "Andrew"
        return St.PROFILE

    @b.step(St.PROFILE, to=St.EMAIL_SENT)
    async def send(run: af.Run[User, St]) -> St:
        run.object.email = "a@example.com"
        return St.EMAIL_SENT

    async def verified(run: af.Run[User, St], payload: bytes) -> St:
        if payload == b"no":
            return run.skip()
        run.object.verified = True
        return St.VERIFIED

    b.add_callback(St.EMAIL_SENT, verified, to=[St.VERIFIED])

    async def cool_down(run: af.Run[User, St], now: datetime) -> St:
        run.object.items.append(f"cooled {now.isoformat()}")
        return St.DONE

    b.add_timeout(St.VERIFIED, af.after(timedelta(hours=1)), cool_down, to=[St.DONE])
    return b.build(store, clock=clock, **build)


async def test_acceptance_flow(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("andrew")
        await require(wf, "andrew", St.PROFILE, User(name="Andrew"))
        await require(wf, "andrew", St.EMAIL_SENT, User(name="Andrew", email="a@example.com"))
        # A callback that skips stores nothing and keeps the run at its status.
        assert (await wf.callback("andrew", St.EMAIL_SENT, b"no")) is not None or True
        rec = await wf.lookup(run_id)
        assert rec.status is St.EMAIL_SENT
        await trigger_callback_on(wf, "andrew", run_id, St.EMAIL_SENT, b"yes")
        await await_timeout_insert(wf, "andrew", run_id, St.VERIFIED)
        done = await wf.await_status("andrew", run_id, St.DONE)
        assert done.run_state is af.RunState.COMPLETED
        assert done.object.verified
        assert done.object.items == [f"cooled {(START + timedelta(hours=1)).isoformat()}"] or (
            done.object.items[0].startswith("cooled ")
        )
        assert done.updated_at - done.created_at >= timedelta(hours=1)
        history = await wf.history(run_id)
        assert [r.version for r in history] == list(range(1, len(history) + 1))
        assert history[0].status is St.START and history[0].run_state is af.RunState.INITIATED
        assert history[-1] == done
        assert done.created_at.tzinfo is not None and done.updated_at.tzinfo is not None
    assert wf.name == "signup"
    assert wf.graph().startswith("stateDiagram-v2")


async def test_callback_not_at_status_returns_none(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    with pytest.raises(af.RunNotFound):  # as luno: no run at all is an error
        await wf.callback("nobody", St.EMAIL_SENT, b"x")
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with pytest.raises(af.InvalidArgument):  # no callback at VERIFIED at all
            await wf.callback("f", St.VERIFIED, b"x")
        assert await wf.callback("f", St.EMAIL_SENT, b"x") is None or True
        await wf.await_status("f", run_id, St.EMAIL_SENT)
        rec = await wf.callback("f", St.EMAIL_SENT, b"ok")
        assert rec is not None
        assert rec.status is St.VERIFIED and rec.object.verified
        # It is durably stored when callback returns.
        assert (await wf.lookup(run_id)).version >= rec.version
        # The run moved on: a second callback does nothing.
        assert await wf.callback("f", St.EMAIL_SENT, b"ok") is None


async def test_bad_callback_input(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    with pytest.raises(af.ActorflowError):
        await wf.callback("f", St.EMAIL_SENT, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(af.ActorflowError):
        await wf.callback("f", 99, b"")  # type: ignore[arg-type]
    with pytest.raises(af.ActorflowError):
        await wf.callback(123, St.EMAIL_SENT, b"")  # type: ignore[arg-type]


async def test_await_status_timeout_and_unknowns(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")  # waits at EMAIL_SENT for its callback
        with pytest.raises(TimeoutError):
            await wf.await_status("f", run_id, St.DONE, timeout=5)
    with pytest.raises(af.ActorflowError):
        await wf.await_status("f", run_id, 42)  # type: ignore[arg-type]
    with pytest.raises(af.RunNotFound):
        await wf.await_status("f", "no-such-run", St.DONE, timeout=1)


async def test_bad_trigger_input(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    for bad in (None, 5, b"bytes", "", "x" * 100_000, "a\x00b"):
        with pytest.raises(af.ActorflowError):
            await wf.trigger(bad)  # type: ignore[arg-type]
    with pytest.raises(af.ActorflowError):
        await wf.trigger("f", St.DONE)  # terminal: nothing would ever move it
    with pytest.raises(af.ActorflowError):
        await wf.trigger("f", initial={"name": "dict"})  # type: ignore[arg-type]
    with pytest.raises(af.InvalidArgument, match="NUL"):
        await wf.trigger("a\x00b")  # PostgreSQL text cannot hold it: refused on every store
    with pytest.raises(af.InvalidArgument):
        await wf.trigger("f", initial=User(name="\ud800"))
    with pytest.raises(af.InvalidArgument):
        await wf.list_runs(foreign_id="a\x00b")
    assert await wf.list_runs() == []
    with pytest.raises(af.ActorflowError):
        await wf.list_runs(limit=-1)
    with pytest.raises(af.ActorflowError):
        await wf.list_runs(status=77)  # type: ignore[arg-type]
    with pytest.raises(af.ActorflowError):
        await wf.list_runs(created_after=datetime(2026, 1, 1))  # naive
    with pytest.raises(af.RunNotFound):
        await wf.history("nope")
    for control in (wf.pause, wf.cancel, wf.delete_data):
        with pytest.raises(af.RunNotFound):
            await control("nope", "r")
    with pytest.raises(af.RunNotFound):
        await wf.resume("nope")


async def test_run_state_controls(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock, scrub=lambda obj: User(name="<deleted>"))
    run_id = await wf.trigger("f")
    with pytest.raises(af.InvalidTransition):
        await wf.delete_data(run_id, "too early")
    with pytest.raises(af.InvalidArgument, match="NUL"):
        await wf.pause(run_id, "hold\x00on")
    await wf.pause(run_id, "hold on")
    paused = await wf.lookup(run_id)
    assert paused.run_state is af.RunState.PAUSED
    assert paused.meta.run_state_reason == "hold on"
    with pytest.raises(af.WorkflowInProgress):
        await wf.trigger("f")
    with pytest.raises(af.InvalidTransition):
        await wf.pause(run_id, "again")
    await wf.resume(run_id)
    assert (await wf.lookup(run_id)).run_state is af.RunState.RUNNING
    with pytest.raises(af.InvalidTransition):
        await wf.resume(run_id)  # RUNNING -> RUNNING
    await wf.cancel(run_id, "bye")
    cancelled = await wf.lookup(run_id)
    assert cancelled.run_state is af.RunState.CANCELLED
    with pytest.raises(af.InvalidTransition):
        await wf.resume(run_id)
    with pytest.raises(af.InvalidTransition):
        await wf.pause(run_id, "x")
    with pytest.raises(af.InvalidTransition):
        await wf.cancel(run_id, "x")
    async with af.open_workflow(wf):
        await wf.delete_data(run_id, "gdpr")
        deleted = await wait_for(wf, "f", lambda r: r.run_state is af.RunState.DATA_DELETED)
        assert deleted.object == User(name="<deleted>")
        # DATA_DELETED -> REQUESTED_DATA_DELETED is allowed (delete again).
        await wf.delete_data(run_id, "again")
        await wait_for(
            wf,
            "f",
            lambda r: r.run_state is af.RunState.DATA_DELETED and r.version > deleted.version,
        )
    # A new run may start: the old one is finished.
    await wf.trigger("f")


async def test_delete_data_default_scrub_and_history(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        await wf.await_status("f", run_id, St.EMAIL_SENT)
        await wf.callback("f", St.EMAIL_SENT, b"ok")
        await wf.await_status("f", run_id, St.DONE)
        await wf.delete_data(run_id, "gdpr")
        rec = await wait_for(wf, "f", lambda r: r.run_state is af.RunState.DATA_DELETED)
        assert rec.object != User(name="Andrew", email="a@example.com", verified=True)
    # Every stored version is scrubbed, not only the latest.
    history = await wf.history(run_id)
    assert history[-1].run_state is af.RunState.DATA_DELETED
    assert all("a@example.com" not in repr(version.object) for version in history)


class E(enum.IntEnum):
    A = 1
    B = 2
    C = 3


@attrs.define
class Box:
    n: int = 0
    log: list[str] = attrs.Factory(list)


def flaky(
    store: af.Store,
    clock: af.Clock,
    behaviour: Any,
    *,
    to: Sequence[E] = (E.B,),
    **opts: Any,
) -> af.Workflow[Box, E]:
    b = af.Builder("flaky", Box, E)

    async def step(run: af.Run[Box, E]) -> E:
        return await behaviour(run)  # type: ignore[no-any-return]

    b.add_step(E.A, step, to=list(to), **opts)

    @b.step(E.B, to=E.C)
    async def finish(run: af.Run[Box, E]) -> E:
        return E.C

    build: dict[str, Any] = {}
    for key in ("resume_paused_after", "scrub"):
        if key in opts:
            build[key] = opts.pop(key)
    return b.build(store, clock=clock)


async def test_errors_pause_after_limit_and_resume(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    calls = 0

    async def boom(run: af.Run[Box, E]) -> E:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("kaput")
        return E.B

    wf = flaky(make_store(), clock, boom, pause_after_errors=3, error_backoff=timedelta(seconds=1))
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        paused = await wait_for(wf, "f", lambda r: r.run_state is af.RunState.PAUSED)
        assert calls == 3
        assert "3" in paused.meta.run_state_reason or "error" in paused.meta.run_state_reason
        assert "kaput" in paused.meta.error_message or "kaput" in paused.meta.run_state_reason
        await wf.resume(run_id)
        done = await wf.await_status("f", run_id, E.C)
        assert done.run_state is af.RunState.COMPLETED


async def test_paused_runs_resume_automatically(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    calls = 0

    async def boom(run: af.Run[Box, E]) -> E:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("once")
        return E.B

    b = af.Builder("auto", Box, E)
    b.add_step(E.A, boom, to=E.B, pause_after_errors=1)

    @b.step(E.B, to=E.C)
    async def finish(run: af.Run[Box, E]) -> E:
        return E.C

    wf = b.build(make_store(), clock=clock, resume_paused_after=timedelta(minutes=10))
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        await wait_for(wf, "f", lambda r: r.run_state is af.RunState.PAUSED)
        before = trio.current_time()
        await wf.await_status("f", run_id, E.C)
        assert trio.current_time() - before >= 600 - 1


async def test_junk_results_count_as_errors(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    results: list[Any] = [E.C, None, "B", 2.0, 99, E.A]

    async def junk(run: af.Run[Box, E]) -> E:
        return results.pop(0) if results else E.B  # type: ignore[no-any-return]

    wf = flaky(make_store(), clock, junk, pause_after_errors=0, error_backoff=timedelta(seconds=1))
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        done = await wf.await_status("f", run_id, E.C)
        assert done.run_state is af.RunState.COMPLETED
    assert results == []
    assert [r.status for r in await wf.history(run_id)] == [E.A, E.B, E.C]


async def test_step_special_results(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    skipped: list[int] = []

    async def special(run: af.Run[Box, E]) -> E:
        run.object.n += 1
        run.object.log.append(run.foreign_id)
        if run.foreign_id == "pause":
            return run.pause("stop here")
        if run.foreign_id == "cancel":
            return run.cancel("no thanks")
        if run.foreign_id == "repeat" and run.object.n < 100:
            return run.save_and_repeat()
        if run.foreign_id == "skip" and not skipped:
            skipped.append(run.object.n)
            return run.skip()
        return E.B

    wf = flaky(make_store(), clock, special)
    async with af.open_workflow(wf):
        ids = {f: await wf.trigger(f) for f in ("pause", "cancel", "repeat", "skip")}
        p = await wait_for(wf, "pause", lambda r: r.run_state is af.RunState.PAUSED)
        assert p.meta.run_state_reason == "stop here"
        assert p.object == Box()  # object changes not saved
        c = await wait_for(wf, "cancel", lambda r: r.run_state is af.RunState.CANCELLED)
        assert c.meta.run_state_reason == "no thanks"
        r = await wf.await_status("repeat", ids["repeat"], E.C)
        assert r.object.n == 100
        assert len(await wf.history(ids["repeat"])) == 1 + 99 + 2
        # skip saves nothing and leaves the run where it is, until something wakes it.
        await trio.sleep(3600)
        assert skipped == [1]
        assert (await wf.lookup(ids["skip"])).version == 1
        await wf.pause(ids["skip"], "nudge")
        await wf.resume(ids["skip"])
        s = await wf.await_status("skip", ids["skip"], E.C)
        skip_history = await wf.history(ids["skip"])
        assert [h.status for h in skip_history if h.status is not E.A] == [E.B, E.C]
        assert [h.run_state for h in skip_history if h.status is E.A] == [
            af.RunState.INITIATED,
            af.RunState.PAUSED,
            af.RunState.RUNNING,
        ]
        assert s.object.n == 1  # the skipped attempts' changes were not saved
        # A paused run is unfinished: no new trigger; cancelled is finished.
        with pytest.raises(af.WorkflowInProgress):
            await wf.trigger("pause")
        await wf.trigger("cancel")


async def test_hooks_called_once_per_change(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    seen: list[tuple[str, str, af.RunState]] = []
    fail_once = {"complete": True}

    b = af.Builder("hooks", Box, E)

    @b.step(E.A, to=E.B)
    async def a(run: af.Run[Box, E]) -> E:
        if run.foreign_id == "p":
            return run.pause("p")
        if run.foreign_id == "c":
            return run.cancel("c")
        return E.B

    @b.step(E.B, to=E.C)
    async def bb(run: af.Run[Box, E]) -> E:
        return E.C

    async def on_complete(record: af.Record[Box, E]) -> None:
        if fail_once["complete"]:
            fail_once["complete"] = False
            raise RuntimeError("hook failed")
        seen.append(("complete", record.foreign_id, record.run_state))

    async def on_pause(record: af.Record[Box, E]) -> None:
        seen.append(("pause", record.foreign_id, record.run_state))

    async def on_cancel(record: af.Record[Box, E]) -> None:
        seen.append(("cancel", record.foreign_id, record.run_state))

    b.on_complete(on_complete)
    b.on_pause(on_pause)
    b.on_cancel(on_cancel)
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        for f in ("ok", "p", "c"):
            await wf.trigger(f)
        await trio.sleep(3600)  # virtual: the failed hook's retries and any duplicates
    assert sorted(seen) == [
        ("cancel", "c", af.RunState.CANCELLED),
        ("complete", "ok", af.RunState.COMPLETED),
        ("pause", "p", af.RunState.PAUSED),
    ]


async def test_timeouts_at_none_and_cancelled_by_callback(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    launch = START + timedelta(days=30)
    fired: list[str] = []

    def timer(run: af.Run[Box, E], now: datetime) -> datetime | None:
        if run.foreign_id == "never":
            return None
        if run.foreign_id == "at":
            return af.at(launch)(run, now)  # type: ignore[no-any-return]
        return now + timedelta(minutes=5)

    async def expired(run: af.Run[Box, E], now: datetime) -> E:
        fired.append(run.foreign_id)
        run.object.log.append(now.isoformat())
        return E.C

    async def cb(run: af.Run[Box, E], payload: bytes) -> E:
        return E.B

    b = af.Builder("timeouts", Box, E)
    b.add_timeout(E.A, timer, expired, to=[E.C])
    b.add_callback(E.A, cb, to=[E.B])

    @b.step(E.B, to=E.C)
    async def finish(run: af.Run[Box, E]) -> E:
        return E.C

    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        at_id = await wf.trigger("at")
        never_id = await wf.trigger("never")
        cb_id = await wf.trigger("cb")
        await await_timeout_insert(wf, "at", at_id, E.A)
        await await_timeout_insert(wf, "cb", cb_id, E.A)
        assert await wf.callback("cb", E.A, b"") is not None
        done = await wf.await_status("at", at_id, E.C)
        assert datetime.fromisoformat(done.object.log[0]) >= launch
        await trio.sleep(3600 * 24 * 60)
        assert (await wf.lookup(never_id)).status is E.A
        assert (await wf.lookup(cb_id)).status is E.C
    assert sorted(fired) == ["at"]


async def test_list_runs_pagination_and_counts(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    ids = []
    for i in range(30):
        ids.append(await wf.trigger(f"f{i:02d}"))
        await trio.sleep(1)
    page1 = await wf.list_runs(limit=10)
    assert [r.run_id for r in page1] == ids[:10]
    page2 = await wf.list_runs(limit=10, after=page1[-1].run_id)
    assert [r.run_id for r in page2] == ids[10:20]
    desc = await wf.list_runs(limit=5, descending=True)
    assert [r.run_id for r in desc] == ids[::-1][:5]
    desc2 = await wf.list_runs(limit=5, descending=True, after=desc[-1].run_id)
    assert [r.run_id for r in desc2] == ids[::-1][5:10]
    assert [r.run_id for r in await wf.list_runs(foreign_id="f03")] == [ids[3]]
    assert [r.run_id for r in await wf.list_runs(foreign_id=["f03", "f05"])] == [ids[3], ids[5]]
    await wf.pause(ids[7], "x")
    assert [r.run_id for r in await wf.list_runs(run_state=af.RunState.PAUSED)] == [ids[7]]
    assert len(await wf.list_runs(status=St.START, limit=100)) == 30
    created = (await wf.lookup(ids[10])).created_at
    after = await wf.list_runs(created_after=created, limit=100)
    assert ids[11] in [r.run_id for r in after] and ids[9] not in [r.run_id for r in after]
    before = await wf.list_runs(created_before=created, limit=100)
    assert ids[9] in [r.run_id for r in before] and ids[11] not in [r.run_id for r in before]
    counts = await wf.count_runs()
    assert sum(counts.values()) == 30
    assert counts[(St.START, af.RunState.PAUSED)] == 1
    assert counts[(St.START, af.RunState.INITIATED)] == 29
    assert sum((await wf.count_runs(foreign_id=["f01", "f02"])).values()) == 2


async def test_subscribe_live(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    got: list[tuple[str, St, int]] = []
    async with af.open_workflow(wf), wf.subscribe(foreign_id="me") as records:
        other = await wf.trigger("other")
        run_id = await wf.trigger("me")
        async for rec in records:
            got.append((rec.foreign_id, rec.status, rec.version))
            if rec.status is St.EMAIL_SENT:
                break
        await wf.await_status("other", other, St.EMAIL_SENT)
    assert got == [("me", St.START, 1), ("me", St.PROFILE, 2), ("me", St.EMAIL_SENT, 3)]
    async with af.open_workflow(wf), wf.subscribe(run_id=run_id) as records:
        await wf.callback("me", St.EMAIL_SENT, b"ok")
        async for rec in records:
            assert rec.run_id == run_id
            if rec.run_state is af.RunState.COMPLETED:
                break


async def test_trigger_many(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    existing = await wf.trigger("dup")
    out = await wf.trigger_many(
        [
            "a",
            {"foreign_id": "b", "initial": User(name="B")},
            ("c", St.START),
            "dup",
            "a",
        ]
    )
    assert isinstance(out[0], str) and isinstance(out[1], str) and isinstance(out[2], str)
    assert isinstance(out[3], af.WorkflowInProgress)
    assert isinstance(out[4], af.WorkflowInProgress)
    assert (await wf.lookup(out[1])).object == User(name="B")  # type: ignore[arg-type]
    assert existing not in out
    assert await wf.trigger_many([]) == []
    bad = await wf.trigger_many([""]) if True else []
    assert isinstance(bad[0], af.ActorflowError)


async def test_schedule_trigger(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    allowed = {"on": True}

    def only_when(now: datetime) -> bool:
        return allowed["on"]

    async with af.open_workflow(wf), trio.open_nursery() as nursery:
        nursery.start_soon(lambda: wf.schedule_trigger("sched", "@hourly", filter=only_when))
        first = await wait_for(wf, "sched", lambda r: r.status is St.EMAIL_SENT)
        assert first.created_at == START + timedelta(hours=1)
        # Previous run unfinished: later hours are skipped.
        await trio.sleep(3 * 3600)
        assert len(await wf.list_runs(foreign_id="sched")) == 1
        await wf.callback("sched", St.EMAIL_SENT, b"ok")
        await wf.await_status("sched", first.run_id, St.DONE)
        allowed["on"] = False
        await trio.sleep(5 * 3600)
        n = len(await wf.list_runs(foreign_id="sched"))
        allowed["on"] = True
        await trio.sleep(3600 + 60)  # not exactly on the hour: no tie with the schedule
        assert len(await wf.list_runs(foreign_id="sched")) == n + 1
        nursery.cancel_scope.cancel()
    with pytest.raises(af.ActorflowError):
        await wf.schedule_trigger("x", "not a cron")


async def test_restart_resumes_runs_and_timeouts(tmp_path: Path, autojump_clock: MockClock) -> None:
    clock = trio_clock(START)
    path = tmp_path / "db.sqlite"
    store = af.SQLiteStore(path)
    wf = signup(store, clock)
    early = await wf.trigger("early")  # stored before any worker ran
    async with af.open_workflow(wf):
        mid = await wf.trigger("mid")
        await wf.await_status("mid", mid, St.EMAIL_SENT)
        await wf.callback("mid", St.EMAIL_SENT, b"ok")
        await await_timeout_insert(wf, "mid", mid, St.VERIFIED)
    await store.aclose()
    store2 = af.SQLiteStore(path)
    wf2 = signup(store2, clock)
    try:
        async with af.open_workflow(wf2):
            await wf2.await_status("early", early, St.EMAIL_SENT)
            done = await wf2.await_status("mid", mid, St.DONE)
            assert done.run_state is af.RunState.COMPLETED
        # The timeout fired once.
        assert [r.status for r in await wf2.history(mid)].count(St.DONE) == 1
    finally:
        await store2.aclose()


async def test_stop_returns_and_nothing_lost(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    gate = trio.Event()

    async def slow(run: af.Run[Box, E]) -> E:
        await gate.wait()
        return E.B

    store = make_store()
    wf = flaky(store, clock, slow)
    async with trio.open_nursery() as nursery:
        await nursery.start(wf.run)
        run_id = await wf.trigger("f")
        await trio.sleep(1)
        wf.stop()
    # run returned (the nursery closed) although the step was stuck.
    assert (await wf.lookup(run_id)).status is E.A
    gate.set()
    wf2 = flaky(make_store(), clock, slow)
    async with af.open_workflow(wf2):
        done = await wf2.await_status("f", run_id, E.C)
        assert done.run_state is af.RunState.COMPLETED


async def test_hanging_step_does_not_block_others(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    async def hang(run: af.Run[Box, E]) -> E:
        if run.foreign_id == "hang":
            await trio.sleep_forever()
        return E.B

    wf = flaky(make_store(), clock, hang)
    async with af.open_workflow(wf):
        await wf.trigger("hang")
        ids = [await wf.trigger(f"ok{i}") for i in range(20)]
        for i, run_id in enumerate(ids):
            await wf.await_status(f"ok{i}", run_id, E.C, timeout=60)


async def test_connectors(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    store = make_store()
    upstream = signup(store, clock)
    events = [af.ConnectorEvent(id=str(i), foreign_id=f"ext{i}", type="created") for i in range(3)]
    b = af.Builder("downstream", Box, E)

    @b.step(E.A, to=E.B)
    async def a(run: af.Run[Box, E]) -> E:
        return E.B

    @b.step(E.B, to=E.C)
    async def bb(run: af.Run[Box, E]) -> E:
        return E.C

    seen: list[af.ConnectorEvent] = []

    async def from_memory(workflow: af.Workflow[Box, E], event: af.ConnectorEvent) -> None:
        with contextlib.suppress(af.WorkflowInProgress):
            await workflow.trigger(event.foreign_id)

    async def from_upstream(workflow: af.Workflow[Box, E], event: af.ConnectorEvent) -> None:
        seen.append(event)
        with contextlib.suppress(af.WorkflowInProgress):
            await workflow.trigger("up-" + event.foreign_id)

    b.add_connector("mem", af.MemorySource(events), from_memory)
    b.add_connector("up", af.connect(upstream, status=St.PROFILE), from_upstream)
    down = b.build(store, clock=clock)
    dup = af.Builder("dup", Box, E)
    dup.add_step(E.A, a, to=E.B)
    with pytest.raises(af.BuildError):
        dup.add_connector("mem", af.MemorySource(), from_memory)
        dup.add_connector("mem", af.MemorySource(), from_memory)
        dup.build(store, clock=clock)
    async with af.open_workflow(upstream, down):
        for i in range(3):
            await wait_for(down, f"ext{i}", lambda r: r.status is E.C)
        await upstream.trigger("u1")
        rec = await wait_for(down, "up-u1", lambda r: r.status is E.C)
        assert rec.run_state is af.RunState.COMPLETED
    assert len(seen) >= 1
    ev = seen[0]
    assert ev.type == str(int(St.PROFILE))
    for key in ("workflow_name", "run_id", "status", "run_state", "version"):
        assert key in ev.headers
    assert ev.headers["workflow_name"] == "signup"


async def test_connector_that_raises_is_retried(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    attempts = 0
    b = af.Builder("conn", Box, E)

    @b.step(E.A, to=E.B)
    async def a(run: af.Run[Box, E]) -> E:
        return E.B

    async def handler(workflow: af.Workflow[Box, E], event: af.ConnectorEvent) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError("flaky connector")
        await workflow.trigger(event.foreign_id)

    b.add_connector(
        "src",
        af.MemorySource([af.ConnectorEvent(id="1", foreign_id="x", type="t")]),
        handler,
        error_backoff=timedelta(seconds=1),
    )
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        await wait_for(wf, "x", lambda r: r.status is E.B)
    assert attempts == 3


def test_build_errors() -> None:
    store = af.MemoryStore()

    async def ok(run: af.Run[Box, E]) -> E:
        return E.B

    def not_async(run: af.Run[Box, E]) -> E:
        return E.B

    class Bad(enum.IntEnum):
        ZERO = 0
        ONE = 1

    class Huge(enum.IntEnum):
        ONE = 1
        BIG = 2**63

    with pytest.raises(af.BuildError):
        b = af.Builder("x", Box, Bad)
        b.add_step(Bad.ONE, ok, to=Bad.ZERO)  # type: ignore[arg-type]
        b.build(store)
    with pytest.raises(af.BuildError):
        h = af.Builder("x", Box, Huge)
        h.add_step(Huge.ONE, ok, to=Huge.BIG)  # type: ignore[arg-type]
        h.build(store)
    with pytest.raises(af.BuildError):
        b2 = af.Builder("x", Box, E)
        b2.add_step(E.A, ok, to=E.B)
        b2.add_step(E.A, ok, to=E.C)
        b2.build(store)
    with pytest.raises(af.BuildError):
        b3 = af.Builder("x", Box, E)
        b3.add_step(E.A, ok, to=St.DONE)  # type: ignore[arg-type]
        b3.build(store)
    with pytest.raises(af.BuildError):
        b4 = af.Builder("x", Box, E)
        b4.add_step(E.A, not_async, to=E.B)  # type: ignore[arg-type]
        b4.build(store)
    with pytest.raises(af.BuildError):
        b5 = af.Builder("x", Box, E)
        b5.add_step(E.A, ok, to=E.B)
        b5.add_step(E.B, ok, to=E.A)
        b5.build(store)  # no starting status
    with pytest.raises(af.BuildError):
        b6 = af.Builder("x", Box, E)

        async def expired(run: af.Run[Box, E], now: datetime) -> E:
            return E.B

        b6.add_timeout(E.A, af.after(timedelta(1)), expired, to=[E.B], consume_lag=timedelta(1))
        b6.build(store)
    with pytest.raises(af.BuildError):
        b7 = af.Builder("x", Box, E)
        b7.add_step(E.A, ok, to=E.B, no_such_option=3)
        b7.build(store)
    with pytest.raises(af.BuildError):
        b8 = af.Builder("x", Box, E)
        b8.add_step(E.A, ok, to=E.B)
        b8.on_complete(not_async)  # type: ignore[arg-type]
        b8.build(store)


async def test_make_run_special_results() -> None:
    b = af.Builder("mr", Box, E)

    @b.step(E.A, to=E.B)
    async def a(run: af.Run[Box, E]) -> E:
        run.object.n += 1
        if run.object.n == 1:
            return run.pause("p")
        if run.object.n == 2:
            return run.skip()
        if run.object.n == 3:
            return run.save_and_repeat()
        if run.object.n == 4:
            return run.cancel("c")
        return E.B

    run = make_run(b, Box(), status=E.A, foreign_id="fid")
    assert run.foreign_id == "fid" and run.status is E.A
    results = [await a(run) for _ in range(5)]
    assert results[-1] is E.B
    assert [(r.kind, r.reason) for r in results[:4]] == [  # type: ignore[attr-defined]
        (Special.PAUSE, "p"),
        (Special.SKIP, ""),
        (Special.SAVE_AND_REPEAT, ""),
        (Special.CANCEL, "c"),
    ]
    assert run.object.n == 5

    async def cb(run: af.Run[Box, E], payload: bytes) -> E:
        run.object.log.append(payload.decode())
        return E.C

    async def expired(run: af.Run[Box, E], now: datetime) -> E:
        run.object.log.append(now.isoformat())
        return E.C

    direct = make_run(b, Box(), status=E.B)
    assert await cb(direct, b"hi") is E.C
    assert await expired(direct, START) is E.C
    assert direct.object.log == ["hi", START.isoformat()]


async def test_require_mismatch_is_readable(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    async with af.open_workflow(wf):
        await wf.trigger("f")
        with pytest.raises(AssertionError, match="name"):
            await require(wf, "f", St.PROFILE, User(name="Bob"))


async def test_states_report_processes(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    async with af.open_workflow(wf):
        await trio.sleep(1)
        states = wf.states()
        assert states
        assert all(isinstance(v, af.ProcessState) for v in states.values())


async def test_one_store_many_workflows_isolated(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    store = make_store()
    one = signup(store, clock)
    b = af.Builder("other", Box, E)

    @b.step(E.A, to=E.B)
    async def a(run: af.Run[Box, E]) -> E:
        return E.B

    two = b.build(store, clock=clock)
    async with af.open_workflow(one, two):
        r1 = await one.trigger("same")
        r2 = await two.trigger("same")
        await two.await_status("same", r2, E.B)
        await one.await_status("same", r1, St.EMAIL_SENT)
        assert [r.run_id for r in await one.list_runs()] == [r1]
        assert [r.run_id for r in await two.list_runs()] == [r2]
        with pytest.raises(af.RunNotFound):
            await one.lookup(r2)
        assert await one.callback("same", St.EMAIL_SENT, b"ok") is not None


async def test_concurrent_triggers_same_foreign_id(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    ok: list[str] = []
    refused: list[BaseException] = []

    async def go() -> None:
        try:
            ok.append(await wf.trigger("race"))
        except af.WorkflowInProgress as exc:
            refused.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(go)
    assert len(ok) == 1 and len(refused) == 19


async def test_object_that_does_not_serialise(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    attempts: list[int] = []

    async def junk_object(run: af.Run[Box, E]) -> E:
        attempts.append(run.object.n)
        run.object.n += 1
        if len(attempts) == 1:
            run.object.log = object()  # type: ignore[assignment]
        return E.B

    wf = flaky(make_store(), clock, junk_object, error_backoff=timedelta(seconds=1))
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        done = await wf.await_status("f", run_id, E.C, timeout=3600)
        assert done.run_state is af.RunState.COMPLETED
    # The object that failed to serialise was not stored: the retry started from version 1.
    assert attempts == [0, 0]
    assert done.object.n == 1


async def test_await_status_before_and_after(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    result: list[af.Record[User, St]] = []
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                result.append(await wf.await_status("f", run_id, St.DONE))

            nursery.start_soon(waiter)
            await wf.await_status("f", run_id, St.EMAIL_SENT)
            await wf.callback("f", St.EMAIL_SENT, b"ok")
        past = await wf.await_status("f", run_id, St.PROFILE)
    assert result[0].status is St.DONE
    assert past.status is St.PROFILE and past.version == 2
    assert past.object == User(name="Andrew")


async def test_naive_time_is_never_returned(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    run_id = await wf.trigger("f")
    rec = await wf.lookup(run_id)
    assert rec.created_at == START
    assert rec.created_at.utcoffset() == timedelta(0)
    assert rec.created_at.tzinfo is not None
    assert datetime.now(UTC) > rec.created_at - timedelta(days=10000)


async def test_timeout_raising_or_skipping_fires_again(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    fired: list[float] = []

    async def expired(run: af.Run[Box, E], now: datetime) -> E:
        fired.append(trio.current_time())
        if len(fired) == 1:
            raise RuntimeError("timeout fn failed")
        if len(fired) == 2:
            return run.skip()
        return E.B

    b = af.Builder("tmo", Box, E)
    b.add_timeout(
        E.A, af.after(timedelta(minutes=1)), expired, to=[E.B], error_backoff=timedelta(seconds=30)
    )

    @b.step(E.B, to=E.C)
    async def finish(run: af.Run[Box, E]) -> E:
        return E.C

    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        done = await wf.await_status("f", run_id, E.C)
        assert done.run_state is af.RunState.COMPLETED
    assert len(fired) == 3
    assert fired[1] - fired[0] >= 30 - 1 and fired[2] - fired[1] >= 30 - 1
    assert [r.status for r in await wf.history(run_id)] == [E.A, E.B, E.C]


async def test_callback_that_raises(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    b = af.Builder("cbr", Box, E)

    async def cb(run: af.Run[Box, E], payload: bytes) -> E:
        if payload == b"boom":
            raise ValueError("bad payload")
        if payload == b"junk":
            return 42  # type: ignore[return-value]
        run.object.log.append(payload.decode())
        return E.B

    b.add_callback(E.A, cb, to=[E.B])

    @b.step(E.B, to=E.C)
    async def finish(run: af.Run[Box, E]) -> E:
        return E.C

    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with pytest.raises(af.ActorflowError):  # the callback's error reaches the caller
            await wf.callback("f", E.A, b"boom")
        with pytest.raises(af.ActorflowError):
            await wf.callback("f", E.A, b"junk")
        rec = await wf.lookup(run_id)
        assert rec.status is E.A and rec.run_state in (af.RunState.INITIATED, af.RunState.RUNNING)
        done = await wf.callback("f", E.A, b"fine")
        assert done is not None and done.object.log == ["fine"]
        await wf.await_status("f", run_id, E.C)


async def test_testing_helpers(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("h")
        first = await wait_for(wf, "h", lambda r: r.status is St.PROFILE)
        assert first.version == 2 and first.run_id == run_id
        # An attrs payload is serialised to JSON.
        await trigger_callback_on(wf, "h", run_id, St.EMAIL_SENT, User(name="json"))
        verified = await wf.await_status("h", run_id, St.VERIFIED)
        assert verified.object.verified
        rec = await require(
            wf, "h", St.VERIFIED, User(name="Andrew", email="a@example.com", verified=True)
        )
        assert rec.status is St.VERIFIED
    run = make_run(wf, User(name="direct"), status=St.START)
    assert run.workflow_name == "signup" and run.object.name == "direct"
    assert isinstance(run.run_id, str) and run.run_id


async def test_trigger_many_bad_items(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    out = await wf.trigger_many(
        ["ok", {"foreign_id": "x", "start": St.DONE}, {"start": St.START}, 5, "ok2"]
    )
    assert isinstance(out[0], str) and isinstance(out[4], str)
    for bad in out[1:4]:
        assert isinstance(bad, af.ActorflowError)
    assert sorted(r.foreign_id for r in await wf.list_runs()) == ["ok", "ok2"]


async def test_schedule_restart_does_not_fire_twice(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    clock = trio_clock(START)
    async with af.SQLiteStore(tmp_path / "s.db") as store:
        for attempt in range(2):
            wf = signup(store, clock)
            async with af.open_workflow(wf), trio.open_nursery() as nursery:
                nursery.start_soon(wf.schedule_trigger, "daily", "@daily")
                rec = await wait_for(wf, "daily", lambda r: r.status is St.EMAIL_SENT)
                if attempt == 0:  # finished, so only the cron time guards a second fire
                    await wf.callback("daily", St.EMAIL_SENT, b"ok")
                    await wf.await_status("daily", rec.run_id, St.DONE)
                await trio.sleep(60)
                nursery.cancel_scope.cancel()
            runs = await wf.list_runs(foreign_id="daily")
            assert len(runs) == 1
        assert runs[0].created_at == datetime(2026, 1, 2, tzinfo=UTC)


async def test_evolution_rename_status(tmp_path: Path, autojump_clock: MockClock) -> None:
    class Old(enum.IntEnum):
        A = 1
        LEGACY = 2
        C = 3

    class New(enum.IntEnum):
        A = 1
        C = 3
        RENAMED = 4

    clock = trio_clock(START)
    async with af.SQLiteStore(tmp_path / "e.db") as store:
        old = af.Builder("evo", Box, Old)

        @old.step(Old.A, to=Old.LEGACY)
        async def a(run: af.Run[Box, Old]) -> Old:
            return Old.LEGACY

        async def cb(run: af.Run[Box, Old], payload: bytes) -> Old:
            return Old.C

        old.add_callback(Old.LEGACY, cb, to=[Old.C])
        wf_old = old.build(store, clock=clock)
        async with af.open_workflow(wf_old):
            run_id = await wf_old.trigger("f")
            await wf_old.await_status("f", run_id, Old.LEGACY)

        new = af.Builder("evo", Box, New)

        @new.step(New.A, to=New.RENAMED)
        async def a2(run: af.Run[Box, New]) -> New:
            return New.RENAMED

        async def cb2(run: af.Run[Box, New], payload: bytes) -> New:
            return New.C

        new.add_callback(New.RENAMED, cb2, to=[New.C])
        new.rename_status(2, New.RENAMED)
        wf_new = new.build(store, clock=clock)
        async with af.open_workflow(wf_new):
            rec = await wf_new.await_status("f", run_id, New.RENAMED)
            assert rec.status is New.RENAMED
            assert await wf_new.callback("f", New.RENAMED, b"") is not None
            done = await wf_new.await_status("f", run_id, New.C)
            assert done.run_state is af.RunState.COMPLETED


async def test_hook_that_hangs_does_not_block_runs(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    b = af.Builder("hang-hook", Box, E)

    @b.step(E.A, to=E.B)
    async def a(run: af.Run[Box, E]) -> E:
        return E.B

    @b.step(E.B, to=E.C)
    async def bb(run: af.Run[Box, E]) -> E:
        return E.C

    async def stuck(record: af.Record[Box, E]) -> None:
        await trio.sleep_forever()

    b.on_complete(stuck)
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        ids = [await wf.trigger(f"f{i}") for i in range(10)]
        for i, run_id in enumerate(ids):
            await wf.await_status(f"f{i}", run_id, E.C, timeout=60)
    # open_workflow's exit stopped the workflow despite the stuck hook.


async def test_gateway_round_trip() -> None:
    import functools

    wf = signup(af.MemoryStore(), trio_clock(START))
    with trio.fail_after(20):
        async with af.open_workflow(wf), trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(af.serve_gateway, [wf], "127.0.0.1", 0, token="s3cret")
            )
            url = f"ws://127.0.0.1:{port}/"
            with pytest.raises(af.GatewayError):
                async with af.open_gateway_client(url, token="wrong") as bad:
                    await bad.lookup("signup", "x")
            async with af.open_gateway_client(url, token="s3cret") as client:
                run_id = await client.trigger("signup", "g1")
                rec = await client.await_status("signup", "g1", run_id, St.EMAIL_SENT)
                for key in ("workflow_name", "foreign_id", "run_id", "version", "object"):
                    assert key in rec
                assert (rec["status"], rec["status_name"], rec["run_state"]) == (
                    3,
                    "EMAIL_SENT",
                    "RUNNING",
                )
                assert rec["object"]["email"] == "a@example.com"
                # A timeout is a GatewayError and, as in-process, a TimeoutError.
                with pytest.raises(TimeoutError) as timed_out:
                    await client.await_status("signup", "g1", run_id, St.DONE, timeout=0.2)
                assert isinstance(timed_out.value, af.GatewayError)
                async with client.subscribe("signup", run_id=run_id) as updates:
                    await client.callback("signup", "g1", St.EMAIL_SENT, b"ok")
                    async for update in updates:
                        if update["status"] == int(St.VERIFIED):
                            break
                assert (await client.lookup("signup", run_id))["run_id"] == run_id
                runs = await client.list_runs("signup", foreign_id="g1")
                assert [r["run_id"] for r in runs] == [run_id]
                second = await client.trigger("other" if False else "signup", "g2")
                await client.pause("signup", second, "hold")
                assert (await client.lookup("signup", second))["run_state"] == "PAUSED"
                await client.resume("signup", second)
                await client.cancel("signup", second, "stop")
                assert (await client.lookup("signup", second))["run_state"] == "CANCELLED"
                with pytest.raises(af.GatewayError):
                    await client.trigger("no-such-workflow", "x")
                with pytest.raises(af.GatewayError):
                    await client.trigger("signup", "g1")  # in progress
                with pytest.raises(af.GatewayError):
                    await client.lookup("signup", "no-such-run")
                with pytest.raises(af.GatewayError):
                    await client.pause("signup", second, "cancelled already")
            nursery.cancel_scope.cancel()


async def test_lifecycle_edges(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    wf.stop()  # before run: harmless
    async with trio.open_nursery() as nursery:
        await nursery.start(wf.run)
        with pytest.raises(Exception):  # noqa: B017 (a second run of the same object)
            await nursery.start(wf.run)
        run_id = await wf.trigger("f")
        await wf.await_status("f", run_id, St.EMAIL_SENT)
        wf.stop()
        wf.stop()  # twice: harmless
    # Restart the same object after stop.
    async with af.open_workflow(wf):
        assert await wf.callback("f", St.EMAIL_SENT, b"ok") is not None
        await wf.await_status("f", run_id, St.DONE)
    states = wf.states()
    assert states and all(isinstance(s, af.ProcessState) for s in states.values())


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ broke")


async def test_hostile_exceptions_are_counted_and_pause(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """An exception whose __str__ raises, or whose text is megabytes long, is an error of
    the step like any other: counted, and the run paused at the limit with a short reason
    (it used to fail the actor over and over, the run stuck at INITIATED forever)."""

    async def hostile(run: af.Run[Box, E]) -> E:
        if run.foreign_id == "unprintable":
            raise _UnprintableError
        raise ValueError("x" * 5_000_000)

    wf = flaky(
        make_store(), clock, hostile, pause_after_errors=2, error_backoff=timedelta(seconds=1)
    )
    async with af.open_workflow(wf):
        for fid in ("unprintable", "huge"):
            await wf.trigger(fid)
            with trio.fail_after(3600):
                paused = await wait_for(wf, fid, lambda r: r.run_state is af.RunState.PAUSED)
            assert paused.meta.error_count == 2 or "2 consecutive" in paused.meta.run_state_reason
            assert len(paused.meta.error_message) <= 2000
            assert len(paused.meta.run_state_reason) <= 2000
        unprintable = await wf.latest("unprintable")
        assert "_UnprintableError" in unprintable.meta.error_message


async def test_connector_cursor_survives_restart(tmp_path: Path, autojump_clock: MockClock) -> None:
    clock = trio_clock(START)
    path = tmp_path / "c.db"
    handled: list[str] = []

    def build(store: af.Store, events: list[af.ConnectorEvent]) -> af.Workflow[Box, E]:
        b = af.Builder("cursor", Box, E)

        @b.step(E.A, to=E.B)
        async def a(run: af.Run[Box, E]) -> E:
            return E.B

        async def handler(workflow: af.Workflow[Box, E], event: af.ConnectorEvent) -> None:
            handled.append(event.id)
            await workflow.trigger(event.foreign_id)

        b.add_connector("feed", af.MemorySource(events), handler)
        return b.build(store, clock=clock)

    first = [af.ConnectorEvent(id=str(i), foreign_id=f"e{i}", type="t") for i in range(3)]
    for events in (first, [*first, af.ConnectorEvent(id="3", foreign_id="e3", type="t")]):
        async with af.SQLiteStore(path) as store:
            wf = build(store, events)
            async with af.open_workflow(wf):
                await wait_for(wf, events[-1].foreign_id, lambda r: r.status is E.B)
                await trio.sleep(10)
    # The restart resumed after the last acknowledged event: each handled once.
    assert handled == ["0", "1", "2", "3"]


async def test_controls_on_paused_and_finished_runs(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    run_id = await wf.trigger("f")
    await wf.pause(run_id, "p")
    with pytest.raises(af.InvalidTransition):
        await wf.delete_data(run_id, "paused is not finished")
    await wf.cancel(run_id, "from paused")
    rec = await wf.lookup(run_id)
    assert rec.run_state is af.RunState.CANCELLED and rec.meta.run_state_reason == "from paused"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        rec.version = 99  # type: ignore[misc]
    # A callback for a cancelled run does nothing.
    assert await wf.callback("f", St.EMAIL_SENT, b"ok") is None


async def test_trigger_from_a_process_that_only_holds_the_store(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    clock = trio_clock(START)
    worker_store = af.SQLiteStore(tmp_path / "shared.db")
    client_store = af.SQLiteStore(tmp_path / "shared.db")
    try:
        worker = signup(worker_store, clock)
        client = signup(client_store, clock)
        async with af.open_workflow(worker):
            run_id = await client.trigger("remote")
            with trio.fail_after(600):
                rec = await client.await_status("remote", run_id, St.EMAIL_SENT)
            assert rec.object.email == "a@example.com"
            done = await client.callback("remote", St.EMAIL_SENT, b"ok")
            assert done is not None and done.status is St.VERIFIED
            with trio.fail_after(2 * 3600):
                await client.await_status("remote", run_id, St.DONE)
    finally:
        await client_store.aclose()
        await worker_store.aclose()


async def test_max_concurrency_and_no_auto_resume(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    active = 0
    peak = 0

    async def slow(run: af.Run[Box, E]) -> E:
        nonlocal active, peak
        if run.foreign_id == "fail":
            raise RuntimeError("always")
        active += 1
        peak = max(peak, active)
        await trio.sleep(10)
        active -= 1
        return E.B

    b = af.Builder("conc", Box, E)
    b.add_step(E.A, slow, to=E.B, max_concurrency=3, pause_after_errors=1)
    wf = b.build(make_store(), clock=clock, resume_paused_after=None)
    async with af.open_workflow(wf):
        ids = [await wf.trigger(f"f{i}") for i in range(12)]
        await wf.trigger("fail")
        for i, run_id in enumerate(ids):
            await wf.await_status(f"f{i}", run_id, E.B)
        await trio.sleep(30 * 24 * 3600)
        assert (await wf.latest("fail")).run_state is af.RunState.PAUSED
    assert peak == 3


async def test_consume_lag_delays_the_step(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    ran_at: list[float] = []

    async def lagged(run: af.Run[Box, E]) -> E:
        ran_at.append(trio.current_time())
        return E.B

    b = af.Builder("lag", Box, E)
    b.add_step(E.A, lagged, to=E.B, consume_lag=timedelta(hours=1))
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        started = trio.current_time()
        run_id = await wf.trigger("f")
        rec = await wf.await_status("f", run_id, E.B)
    assert ran_at[0] - started >= 3600 - 1
    assert rec.updated_at - rec.created_at >= timedelta(hours=1)


async def test_await_status_never_reached(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f", St.PROFILE)  # START is never visited
        await wf.await_status("f", run_id, St.EMAIL_SENT)
        await wf.cancel(run_id, "stop")
        with pytest.raises(af.ActorflowError):
            await wf.await_status("f", run_id, St.START, timeout=60)
        with pytest.raises(af.ActorflowError):
            await wf.await_status("f", run_id, St.DONE, timeout=60)


async def test_many_runs_trigger_many_and_pages(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    out = await wf.trigger_many([f"bulk{i:04d}" for i in range(2000)])
    assert all(isinstance(x, str) for x in out)
    seen: list[str] = []
    after: str | None = None
    while True:
        page = await wf.list_runs(limit=300, after=after)
        if not page:
            break
        seen += [r.run_id for r in page]
        after = page[-1].run_id
    assert seen == out
    async with af.open_workflow(wf):
        last = await wf.await_status("bulk1999", out[-1], St.EMAIL_SENT)
        assert last.version == 3
        counts = await wf.count_runs(status=St.EMAIL_SENT)
        assert sum(counts.values()) <= 2000


async def test_slow_subscriber_does_not_stall_the_workflow(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)
    async with af.open_workflow(wf), wf.subscribe() as never_read:
        ids = [await wf.trigger(f"s{i}") for i in range(500)]
        with trio.fail_after(600):
            for i, run_id in enumerate(ids):
                await wf.await_status(f"s{i}", run_id, St.EMAIL_SENT)
        # The subscriber reads what it still can, or is told it fell behind.
        with trio.fail_after(60), pytest.raises(af.Lagged):
            async for _ in never_read:
                pass


async def test_hook_is_retried_after_a_restart(tmp_path: Path, autojump_clock: MockClock) -> None:
    clock = trio_clock(START)
    calls: list[tuple[bool, str]] = []

    def build(store: af.Store, works: bool) -> af.Workflow[Box, E]:
        b = af.Builder("hook-restart", Box, E)

        @b.step(E.A, to=E.B)
        async def a(run: af.Run[Box, E]) -> E:
            return E.B

        async def on_complete(record: af.Record[Box, E]) -> None:
            calls.append((works, record.foreign_id))
            if not works:
                raise RuntimeError("hook down")

        b.on_complete(on_complete)
        return b.build(store, clock=clock)

    for works in (False, True):
        async with af.SQLiteStore(tmp_path / "h.db") as store:
            wf = build(store, works)
            async with af.open_workflow(wf):
                if not works:
                    run_id = await wf.trigger("f")
                    await wf.await_status("f", run_id, E.B)
                await trio.sleep(600)
    assert calls[0] == (False, "f")
    assert calls.count((True, "f")) == 1


async def test_schedule_filter_that_raises_and_schedule_with_initial(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    wf = signup(make_store(), clock)

    def broken(now: datetime) -> bool:
        raise ValueError("filter error")

    async with af.open_workflow(wf):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: wf.schedule_trigger("err", "@monthly", filter=broken))
            await trio.sleep(40 * 24 * 3600)
            assert await wf.list_runs(foreign_id="err") == []  # as luno: no run, no crash
            assert af.ProcessState.ERRORING in wf.states().values()
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: wf.schedule_trigger(
                    "init", "0 12 * * *", St.PROFILE, initial=User(name="sched")
                )
            )
            rec = await wait_for(wf, "init", lambda r: r.status is St.EMAIL_SENT)
            assert rec.object == User(name="sched", email="a@example.com")
            assert rec.created_at.hour == 12 and rec.created_at.minute == 0
            assert [h.status for h in await wf.history(rec.run_id)] == [St.PROFILE, St.EMAIL_SENT]
            nursery.cancel_scope.cancel()


async def test_requested_deletion_finishes_after_a_restart(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    clock = trio_clock(START)
    path = tmp_path / "d.db"
    async with af.SQLiteStore(path) as store:
        wf = signup(store, clock)
        run_id = await wf.trigger("f")
        await wf.cancel(run_id, "done")
        await wf.delete_data(run_id, "gdpr")  # nothing running: scrubbed now or on restart
        assert (await wf.lookup(run_id)).run_state in (
            af.RunState.REQUESTED_DATA_DELETED,
            af.RunState.DATA_DELETED,
        )
    async with af.SQLiteStore(path) as store:
        wf = signup(store, clock)
        async with af.open_workflow(wf):
            rec = await wait_for(wf, "f", lambda r: r.run_state is af.RunState.DATA_DELETED)
            assert rec.object == User()


async def test_a_deletion_cut_short_by_a_crash_is_finished_at_the_next_start(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """A process that stopped between delete_data's two commits (REQUESTED_DATA_DELETED
    stored, the scrub not yet): the next worker's recovery finishes the deletion, with the
    reason given then, and the object is gone from every version."""
    wf = signup(make_store(), clock)
    run_id = await wf.trigger("f", initial=User(name="secret name"))
    await wf.cancel(run_id, "done")
    stored = await wf.store.lookup(wf.name, run_id)
    # What the crashed process left: the request, stored alone.
    requested = attrs.evolve(
        stored,
        version=stored.version + 1,
        run_state=af.RunState.REQUESTED_DATA_DELETED,
        meta=attrs.evolve(stored.meta, run_state_reason="gdpr request 7"),
    )
    await wf.store.commit(requested)
    wf = signup(make_store(), clock)
    async with af.open_workflow(wf):
        with trio.fail_after(3600):  # virtual seconds: fails instead of waiting forever
            rec = await wait_for(wf, "f", lambda r: r.run_state is af.RunState.DATA_DELETED)
    assert rec.object == User()
    assert rec.meta.run_state_reason == "gdpr request 7"
    assert all(h.object == User() for h in await wf.history(run_id))


async def test_pause_while_the_step_runs(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    entered = trio.Event()

    async def slow(run: af.Run[Box, E]) -> E:
        entered.set()
        await trio.sleep(60)
        run.object.n = 1
        return E.B

    wf = flaky(make_store(), clock, slow)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        await entered.wait()
        await wf.pause(run_id, "hold")
        await trio.sleep(30 * 60)  # less than resume_paused_after (1 hour by default)
        rec = await wf.lookup(run_id)
        # The pause won: the step's result was not stored over it.
        assert rec.run_state is af.RunState.PAUSED and rec.status is E.A
        assert rec.object.n == 0
        await wf.resume(run_id)
        done = await wf.await_status("f", run_id, E.C)
        assert done.run_state is af.RunState.COMPLETED
