"""Hostile or careless user code, round 2 (round 1: test_user_code_probe.py): what runs
around the steps. The object type's own code (default factories, validators) raising any
exception, the test helpers of ``actorflow.testing`` used wrongly, and a step that holds
the trio thread (``time.sleep``). Each test states what a demanding user expects: a clear
error naming the function, no hang, nothing lost, nothing done twice.
"""

from __future__ import annotations

import enum
import gc
import logging
import time
import warnings
from datetime import datetime, timedelta, tzinfo
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import (
    await_timeout_insert,
    require,
    trigger_callback_on,
    trio_clock,
    wait_for,
)
from tests.conftest import START


class St(enum.IntEnum):
    NEW = 1
    WAITING = 2
    DONE = 3


@attrs.define
class Doc:
    text: str = ""
    n: int = 0


def simple(store: af.Store, name: str = "p2", **build: Any) -> af.Workflow[Doc, St]:
    """NEW -step-> WAITING -callback-> DONE."""
    b = af.Builder(name, Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        run.object.n += 1
        return St.WAITING

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        return St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])
    build.setdefault("resume_paused_after", None)
    build.setdefault("clock", trio_clock(START))
    return b.build(store, **build)


# --- the test helpers used wrongly -------------------------------------------------------


async def _is_done(record: af.Record[Doc, St]) -> bool:
    return record.status is St.DONE


@pytest.mark.parametrize("kind", ["async-def", "lambda-calling-async"])
async def test_wait_for_refuses_a_predicate_that_answers_with_an_awaitable(
    kind: str, autojump_clock: MockClock
) -> None:
    """An async predicate's coroutine is always true: wait_for returned the first version
    at once (status NEW while the test waited for DONE), with only a 'never awaited'
    warning. It is refused, naming the predicate."""
    wf = simple(af.MemoryStore())
    predicate: Any = _is_done if kind == "async-def" else (lambda r: _is_done(r))
    async with af.open_workflow(wf):
        await wf.trigger("f")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no 'coroutine ... was never awaited' either
            with pytest.raises(af.ActorflowError, match=r"predicate .*awaitable") as info:
                with trio.fail_after(60):
                    await wait_for(wf, "f", predicate)
    assert ("_is_done" if kind == "async-def" else "lambda") in str(info.value)


async def test_await_timeout_insert_for_a_run_without_a_timeout_says_so(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A timer function returning None (no timeout for this run): await_timeout_insert
    waited for ever (30 virtual days here) for a timeout that is never stored. It says so
    at once; a run whose timer is stored still gets it, and its timeout fires."""
    b = af.Builder("ati", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def late(run: af.Run[Doc, St], now: Any) -> St:
        return St.DONE

    b.add_timeout(
        St.WAITING,
        lambda run, now: None if run.foreign_id == "none" else now + timedelta(hours=1),
        late,
        to=[St.DONE],
    )
    wf = b.build(make_store(), clock=trio_clock(START))
    async with af.open_workflow(wf):
        without = await wf.trigger("none")
        with pytest.raises(af.ActorflowError, match="timer function returned None"):
            with trio.fail_after(30 * 24 * 3600):
                await await_timeout_insert(wf, "none", without, St.WAITING)
        timed = await wf.trigger("timed")
        with trio.fail_after(60):
            await await_timeout_insert(wf, "timed", timed, St.WAITING)
        autojump_clock.jump(3600)
        with trio.fail_after(60):
            await wf.await_status("timed", timed, St.DONE)
    assert (await wf.lookup(without)).status is St.WAITING


async def test_trigger_callback_on_with_a_payload_json_cannot_take(
    autojump_clock: MockClock,
) -> None:
    """A payload json cannot take (an object of a plain class) raised json's TypeError;
    it is an af.InvalidArgument naming the helper, and nothing is called back."""
    wf = simple(af.MemoryStore())
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with pytest.raises(af.ActorflowError, match=r"trigger_callback_on.*payload"):
            with trio.fail_after(60):
                await trigger_callback_on(wf, "f", run_id, St.WAITING, object())
        assert (await wf.lookup(run_id)).status is St.WAITING


async def test_wait_for_and_require_when_nothing_runs_the_workflow(
    autojump_clock: MockClock,
) -> None:
    """A test that forgot to run its workflow (MemoryStore: no other process either):
    await_status said so at once, but wait_for and require waited for ever. They say so
    too; with the workflow running, the same calls succeed."""
    wf = simple(af.MemoryStore())
    await wf.trigger("f")
    with pytest.raises(af.ActorflowError, match="is not running in this process"):
        with trio.fail_after(30 * 24 * 3600):
            await wait_for(wf, "f", lambda r: r.status is St.WAITING)
    with pytest.raises(af.ActorflowError, match="is not running in this process"):
        with trio.fail_after(30 * 24 * 3600):
            await require(wf, "f", St.WAITING, Doc(n=1))
    async with af.open_workflow(wf):
        with trio.fail_after(60):
            await require(wf, "f", St.WAITING, Doc(n=1))


# --- the object type's own code raising ------------------------------------------------------


class _Refusal(BaseException):
    """Not an Exception: what a careless library might raise."""


_DEFAULT_RAISES: list[BaseException] = []


def _default_n() -> int:
    if _DEFAULT_RAISES:
        raise _DEFAULT_RAISES[0]
    return 0


@attrs.define
class Defaulted:
    n: int = attrs.field(factory=_default_n)


@pytest.mark.parametrize("raised", [ZeroDivisionError("no default"), GeneratorExit(), _Refusal()])
async def test_an_object_type_whose_defaults_raise_is_named(
    make_store: Any, raised: BaseException, autojump_clock: MockClock
) -> None:
    """trigger without initial= and delete_data without scrub= build an object from the
    type's defaults: a default factory that raises was passed on raw (a ZeroDivisionError
    from trigger; a GeneratorExit out of delete_data). Each is an af.ActorflowError naming
    the type and what to do; nothing is stored, other runs go on."""
    b = af.Builder("defaults", Defaulted, St)

    @b.step(St.NEW, to=St.DONE)
    async def go(run: af.Run[Defaulted, St]) -> St:
        return St.DONE

    wf = b.build(make_store(), clock=trio_clock(START))
    done: list[str] = []
    try:
        async with af.open_workflow(wf):
            for fid in ("a", "b"):
                run_id = await wf.trigger(fid, initial=Defaulted(n=2))
                with trio.fail_after(60):
                    await wf.await_status(fid, run_id, St.DONE)
                done.append(run_id)
            _DEFAULT_RAISES.append(raised)
            with pytest.raises(af.ActorflowError, match=r"Defaulted\(\).*initial=") as info:
                await wf.trigger("c")
            assert type(raised).__name__ in str(info.value)
            with pytest.raises(af.ActorflowError, match=r"Defaulted\(\)"):
                await wf.delete_data(done[0], "gdpr")  # through the run's actor
            assert await wf.list_runs(foreign_id="c") == []
        with pytest.raises(af.ActorflowError, match=r"Defaulted\(\)"):
            await wf.delete_data(done[1], "gdpr")  # on the store: no worker running
    finally:
        _DEFAULT_RAISES.clear()
    for run_id in done:
        rec = await wf.lookup(run_id)
        assert rec.run_state is af.RunState.COMPLETED and rec.object == Defaulted(n=2)


_VALIDATOR_RAISES: list[BaseException] = []


def _check_n(instance: object, attribute: object, value: int) -> None:
    if value == 13 and _VALIDATOR_RAISES:
        raise _VALIDATOR_RAISES[0]


@attrs.define
class Checked:
    n: int = attrs.field(default=0, validator=_check_n)


async def test_a_validator_raising_a_base_exception_on_read_is_not_passed_on(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A validator that raises a BaseException (not an Exception) when the stored object is
    read: lookup, history and list_runs raised it raw (a GeneratorExit). Such an object is
    read as every object that no longer structures: its stored JSON data."""
    b = af.Builder("checked", Checked, St)

    @b.step(St.NEW, to=St.DONE)
    async def go(run: af.Run[Checked, St]) -> St:
        run.object.n = 13
        return St.DONE

    wf = b.build(make_store(), clock=trio_clock(START))
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with trio.fail_after(60):
            await wf.await_status("f", run_id, St.DONE)
    _VALIDATOR_RAISES.append(GeneratorExit())
    try:
        records = [
            await wf.lookup(run_id),
            (await wf.history(run_id))[-1],
            (await wf.list_runs(foreign_id="f"))[0],
        ]
    finally:
        _VALIDATOR_RAISES.clear()
    for record in records:  # what every unreadable stored object reads as: its JSON data
        assert record.object == {"n": 13}
    assert (await wf.lookup(run_id)).object == Checked(n=13)


# --- user code holding the trio thread ---------------------------------------------------


async def test_user_functions_holding_the_trio_thread_are_named(
    make_store: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: MockClock,
) -> None:
    """A step, callback, timeout, hook, connector or schedule filter calling time.sleep (or
    any blocking call) stalls every run of the process, silently until now: each is named in
    a warning (with its run, if any). Awaiting (a long virtual sleep here) is not holding:
    no warning. Everything still goes through once."""
    from actorflow._runtime import user_code

    monkeypatch.setattr(user_code, "HELD_WARNING_SECONDS", 0.05)

    def hold() -> None:
        time.sleep(0.08)

    events = [
        af.ConnectorEvent(
            id="e1", foreign_id="from-connector", type="x", headers={}, created_at=START
        )
    ]
    b = af.Builder("holding", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def blocking_step(run: af.Run[Doc, St]) -> St:
        await trio.sleep(3600)  # virtual: not held
        if run.foreign_id == "held":
            hold()
        run.object.n += 1
        return St.WAITING

    async def blocking_callback(run: af.Run[Doc, St], payload: bytes) -> St:
        hold()
        return St.DONE

    async def blocking_timeout(run: af.Run[Doc, St], now: Any) -> St:
        hold()
        return St.DONE

    b.add_callback(St.WAITING, blocking_callback, to=[St.DONE])
    b.add_timeout(
        St.WAITING,
        lambda run, now: now + timedelta(hours=1) if run.foreign_id == "late" else None,
        blocking_timeout,
        to=[St.DONE],
    )
    completed: list[str] = []
    both_completed = trio.Event()

    async def blocking_hook(record: af.Record[Doc, St]) -> None:
        hold()
        completed.append(record.foreign_id)
        if sorted(completed) == ["held", "late"]:
            both_completed.set()

    b.on_complete(blocking_hook)

    async def blocking_connector(workflow: Any, event: af.ConnectorEvent) -> None:
        hold()

    b.add_connector("feed", af.MemorySource(events), blocking_connector)
    wf = b.build(make_store(), clock=trio_clock(START), resume_paused_after=None)

    async def blocking_filter(when: datetime) -> bool:
        hold()
        return False

    with caplog.at_level(logging.WARNING, logger="actorflow"):
        async with af.open_workflow(wf):
            with trio.move_on_after(2 * 3600):  # asked at 10:00 and 11:00
                await wf.schedule_trigger("cron", "@hourly", filter=blocking_filter)
            quiet = await wf.trigger("quiet")
            with trio.fail_after(24 * 3600):
                await wf.await_status("quiet", quiet, St.WAITING)
            held = await wf.trigger("held")
            late = await wf.trigger("late")
            with trio.fail_after(24 * 3600):
                await wf.await_status("held", held, St.WAITING)
                assert await wf.callback("held", St.WAITING, b"x") is not None
                await wf.await_status("late", late, St.DONE)
                await both_completed.wait()
    held_lines = [
        r.getMessage() for r in caplog.records if "held the trio thread" in r.getMessage()
    ]

    def named(where: str, kind: str, fn: str) -> bool:
        return any(
            f"{where}: {kind} " in line and f"{fn} held the trio thread for 0." in line
            for line in held_lines
        )

    assert named(f"run {held}", "step", "blocking_step"), held_lines
    assert named(f"run {held}", "callback", "blocking_callback"), held_lines
    assert named(f"run {late}", "timeout", "blocking_timeout"), held_lines
    assert named(f"run {held}", "on_complete hook", "blocking_hook"), held_lines
    assert named("'holding'", "connector 'feed' (event e1) function", "blocking_connector")
    assert named("'holding'", "schedule filter", "blocking_filter"), held_lines
    assert not any(quiet in line for line in held_lines), held_lines
    assert [r.version for r in await wf.history(held)] == [1, 2, 3]


# --- status enums with code of their own ------------------------------------------------------


class Picky(enum.IntEnum):
    """A status enum with a ``_missing_`` of its own: 55 is its catch-all UNKNOWN, any
    other unknown value raises RuntimeError (not the ValueError of a plain enum)."""

    NEW = 1
    WAITING = 2
    DONE = 3
    UNKNOWN = 9

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if value == 55:
            return cls.UNKNOWN
        raise RuntimeError(f"Picky has no status {value!r}")


async def test_a_status_enum_with_its_own_missing_is_not_asked(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """Statuses given by value were looked up with the enum's constructor, so its
    ``_missing_`` ran: a RuntimeError came out of callback and list_runs (instead of
    af.InvalidArgument), and 55 was taken for UNKNOWN (a callback or a wait for a status
    nobody asked for). Values are matched to members only; count_runs of a stored status
    the enum no longer has counts it under its value."""
    b = af.Builder("picky", Doc, Picky)

    @b.step(Picky.NEW, to=Picky.WAITING)
    async def go(run: af.Run[Doc, Picky]) -> Picky:
        return Picky.WAITING

    async def answer(run: af.Run[Doc, Picky], payload: bytes) -> Picky:
        return Picky.DONE

    async def unknown(run: af.Run[Doc, Picky], payload: bytes) -> Picky:
        raise AssertionError("called for a status nobody asked for")

    b.add_callback(Picky.WAITING, answer, to=[Picky.DONE])
    b.add_callback(Picky.UNKNOWN, unknown, to=[Picky.DONE])
    wf = b.build(make_store(), clock=trio_clock(START))
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with trio.fail_after(60):
            await wf.await_status("f", run_id, Picky.WAITING)
        for value in (77, 55):
            with pytest.raises(af.ActorflowError, match=f"{value} is not a member of Picky"):
                await wf.callback("f", value, b"x")  # type: ignore[arg-type]
            with pytest.raises(af.ActorflowError, match=f"{value} is not a member of Picky"):
                await wf.list_runs(status=value)  # type: ignore[arg-type]
            with pytest.raises(af.ActorflowError, match=f"{value} is not a member of Picky"):
                await wf.await_status("f", run_id, value)  # type: ignore[arg-type]
        assert await wf.callback("f", 2, b"x") is not None  # type: ignore[arg-type]
        held = await wf.trigger("h")
        with trio.fail_after(60):
            await wf.await_status("h", held, Picky.WAITING)

    class Fewer(enum.IntEnum):  # the same workflow, WAITING retired from the enum
        NEW = 1
        DONE = 3

        @classmethod
        def _missing_(cls, value: object) -> Any:
            raise RuntimeError(f"Fewer has no status {value!r}")

    b2 = af.Builder("picky", Doc, Fewer)

    @b2.step(Fewer.NEW, to=Fewer.DONE)
    async def go2(run: af.Run[Doc, Fewer]) -> Fewer:
        return Fewer.DONE

    wf2 = b2.build(make_store(), clock=trio_clock(START))
    counts: dict[Any, int] = await wf2.count_runs()
    assert counts == {(Fewer.DONE, af.RunState.COMPLETED): 1, (2, af.RunState.RUNNING): 1}


# --- event sources of the user's own ---------------------------------------------------------


class _AsyncOpenSource:
    """The usual slip: ``async def open`` (its call gives a coroutine, not a context
    manager)."""

    async def open(self, consumer: str, after: str | None) -> Any:
        raise AssertionError("never awaited")


class _HiddenAsyncOpenSource:
    """The same slip behind a plain function, which no build check can see."""

    def __init__(self) -> None:
        self.calls = 0

    def open(self, consumer: str, after: str | None) -> Any:
        self.calls += 1
        return _AsyncOpenSource().open(consumer, after)


def _connected(source: Any) -> af.Builder[Doc, St]:
    b = af.Builder("sourced", Doc, St)

    @b.step(St.NEW, to=St.DONE)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.DONE

    async def on_event(workflow: Any, event: af.ConnectorEvent) -> None:
        await workflow.trigger(event.foreign_id)

    b.add_connector("mine", source, on_event)
    return b


def test_a_source_with_an_async_def_open_is_a_build_error() -> None:
    """An EventSource whose open is ``async def`` was built, then failed at every reopen
    with "'coroutine' object does not support the asynchronous context manager protocol"
    and a 'never awaited' warning each time. build says what to do instead."""
    with pytest.raises(af.BuildError, match=r"open\(\) is an async def.*asynccontextmanager"):
        _connected(_AsyncOpenSource()).build(af.MemoryStore())


async def test_a_source_whose_open_returns_a_coroutine_is_named(
    caplog: pytest.LogCaptureFixture, autojump_clock: MockClock
) -> None:
    """Hidden behind a plain function, the slip is a clear error of the source at each
    (backed-off) reopen, the coroutine closed (no 'never awaited' warning); stop returns."""
    source = _HiddenAsyncOpenSource()
    wf = _connected(source).build(af.MemoryStore(), clock=trio_clock(START))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with af.open_workflow(wf):
            await trio.sleep(60)
    assert 2 <= source.calls <= 8, source.calls  # backed off: 1 s, 2 s, 4 s, ...
    assert "open() returned a coroutine, not an async context manager" in caplog.text
    assert "asynchronous context manager protocol" not in caplog.text


# --- plain user functions handing back the wrong thing ----------------------------------------


async def _async_timer(run: Any, now: datetime) -> datetime:
    return now + timedelta(hours=1)


async def _async_scrub(obj: Doc) -> Doc:
    return Doc()


class _BrokenZone(tzinfo):
    """A tzinfo of the user's own that fails when asked its offset."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("zone database missing")

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "broken"


async def test_plain_functions_returning_coroutines_or_broken_datetimes_are_named(
    autojump_clock: MockClock,
) -> None:
    """A timer or scrub function (plain functions) returning a coroutine (a lambda calling
    an async function) was reported as "returned <coroutine object ... at 0x...>" or "must
    be a Doc, not coroutine", with a 'never awaited' warning later; a timer's datetime
    whose tzinfo fails raised the tzinfo's error, not naming the timer. Each names the
    function and what it returned; the coroutine is closed."""
    b = af.Builder("plainfns", Doc, St)

    @b.step(St.NEW, to=St.WAITING, pause_after_errors=1)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        return St.DONE

    async def late(run: af.Run[Doc, St], now: datetime) -> St:
        return St.DONE

    def coroutine_timer(run: af.Run[Doc, St], now: datetime) -> Any:
        if run.foreign_id == "coroutine":
            return _async_timer(run, now)
        if run.foreign_id == "zone":
            return datetime(2026, 6, 1, tzinfo=_BrokenZone())
        return None

    b.add_callback(St.WAITING, answer, to=[St.DONE])
    b.add_timeout(St.WAITING, coroutine_timer, late, to=[St.DONE])
    wf = b.build(
        af.MemoryStore(),
        clock=trio_clock(START),
        scrub=lambda obj: _async_scrub(obj),
        resume_paused_after=None,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with af.open_workflow(wf):
            for fid, says in (
                ("coroutine", "returned a coroutine (_async_timer"),
                ("zone", "its tzinfo failed: RuntimeError: zone database missing"),
            ):
                await wf.trigger(fid)
                with trio.fail_after(3600):
                    rec = await wait_for(wf, fid, lambda r: r.run_state is af.RunState.PAUSED)
                reason = rec.meta.run_state_reason
                assert "timer test_plain" in reason and "coroutine_timer" in reason, reason
                assert says in reason, reason
            run_id = await wf.trigger("scrubbed")
            with trio.fail_after(3600):
                await wf.await_status("scrubbed", run_id, St.WAITING)
            assert await wf.callback("scrubbed", St.WAITING, b"x") is not None
            with pytest.raises(af.ActorflowError) as info:
                await wf.delete_data(run_id, "gdpr")
            assert "scrub function" in str(info.value)
            assert "returned a coroutine (_async_scrub" in str(info.value)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)], caught
    assert (await wf.lookup(run_id)).run_state is not af.RunState.DATA_DELETED


class _DownSource:
    """A source of the user's own that cannot open (its repr: the default one, holding a
    memory address)."""

    def __init__(self) -> None:
        self.opened = 0

    def open(self, consumer: str, after: str | None) -> Any:
        self.opened += 1
        raise ConnectionError("broker down")


class _UnprintableDownSource(_DownSource):
    def __repr__(self) -> str:
        raise RuntimeError("repr of a half-made client")


@pytest.mark.parametrize("repr_raises", [True, False])
async def test_a_failing_source_whose_repr_raises_does_not_end_the_workflow(
    repr_raises: bool, caplog: pytest.LogCaptureFixture, autojump_clock: MockClock
) -> None:
    """The source's failure was reported with ``repr(source)``: a repr that raises ended
    the connector's service and the whole workflow (open_workflow raised RuntimeError at
    the first failure to open). The source is named by its class; the connector backs off
    and the runs go on."""
    source = _UnprintableDownSource() if repr_raises else _DownSource()
    wf = _connected(source).build(af.MemoryStore(), clock=trio_clock(START))
    async with af.open_workflow(wf):
        await trio.sleep(30)
        run_id = await wf.trigger("other")
        with trio.fail_after(60):
            await wf.await_status("other", run_id, St.DONE)
    assert source.opened >= 3
    warned = [r.getMessage() for r in caplog.records if "broker down" in r.getMessage()]
    assert warned and all("DownSource" in m and "0x" not in m for m in warned), warned


# --- the workflow clock is user code too ------------------------------------------------------


class _GlitchyClock:
    """A clock of the user's own: fails once at call ``fail_at``; its repr may raise."""

    def __init__(self, fail_at: int, *, repr_raises: bool = False) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self.repr_raises = repr_raises

    def now(self) -> datetime:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("ntp glitch")
        return START + timedelta(seconds=trio.current_time())

    def __repr__(self) -> str:
        if self.repr_raises:
            raise RuntimeError("repr of a clock")
        return "GlitchyClock"


async def test_a_clock_whose_repr_raises_works_and_a_failing_clock_is_named(
    autojump_clock: MockClock,
) -> None:
    """Every now() of a user's clock built its error message up front, repr included: a
    clock whose repr raises ended the workflow at once (and every call paid for a repr).
    The message is made only for a bad answer. A clock whose now() raises is an
    af.ActorflowError naming the clock (it was its raw RuntimeError)."""
    clock = _GlitchyClock(0, repr_raises=True)
    wf = simple(af.MemoryStore(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with trio.fail_after(60):
            await wf.await_status("f", run_id, St.WAITING)
    assert clock.calls > 1
    glitchy = _GlitchyClock(1)
    wf2 = simple(af.MemoryStore(), name="glitchy", clock=glitchy)
    with pytest.raises(af.ActorflowError, match=r"workflow clock GlitchyClock: now\(\) raised Run"):
        await wf2.trigger("g")
    assert await wf2.trigger("g")  # the next call works


class WithUnknown(enum.IntEnum):
    """As enums translated from protobuf often are: a zero member nobody uses."""

    UNKNOWN = 0
    NEW = 1
    DONE = 2


async def test_await_status_of_a_reserved_status_is_refused(autojump_clock: MockClock) -> None:
    """await_status(..., UNKNOWN) with UNKNOWN = 0 waited for ever (no graph may use a
    status <= 0, so no run is ever there), and so did actorflow.testing.require. Both
    refuse it at once."""
    b = af.Builder("unknown", Doc, WithUnknown)

    @b.step(WithUnknown.NEW, to=WithUnknown.DONE)
    async def go(run: af.Run[Doc, WithUnknown]) -> WithUnknown:
        await trio.sleep(3600)
        return WithUnknown.DONE

    wf = b.build(af.MemoryStore(), clock=trio_clock(START))
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with pytest.raises(af.ActorflowError, match="reserved status"):
            with trio.fail_after(60):
                await wf.await_status("f", run_id, WithUnknown.UNKNOWN)
        with pytest.raises(af.ActorflowError, match="reserved status"):
            with trio.fail_after(60):
                await require(wf, "f", WithUnknown.UNKNOWN, Doc())
        with trio.fail_after(7200):
            await wf.await_status("f", run_id, WithUnknown.DONE)


# --- timeouts and callbacks calling back into their own run ------------------------------------


async def test_timeouts_and_callbacks_calling_controls_of_their_own_run(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """Round 1 covered steps. A timeout function or a callback that pauses, cancels,
    awaits or calls back its own run gets a clear error at once (it would wait for itself:
    a deadlock until the grace period), naming what may do so; its own result is stored
    once."""
    holder: list[af.Workflow[Doc, St]] = []
    outcomes: dict[str, str] = {}

    async def attempt(name: str, call: Any) -> None:
        try:
            with trio.fail_after(60):
                await call()
            outcomes[name] = "ok"
        except af.ActorflowError as exc:
            outcomes[name] = str(exc)

    b = af.Builder("reentrant", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def late(run: af.Run[Doc, St], now: datetime) -> St:
        wf = holder[0]
        await attempt("timeout-cancel", lambda: wf.cancel(run.run_id, "x"))
        await attempt("timeout-await", lambda: wf.await_status("t", run.run_id, St.DONE))
        await attempt("timeout-callback", lambda: wf.callback("t", St.WAITING, b"x"))
        return St.DONE

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        wf = holder[0]
        await attempt("callback-pause", lambda: wf.pause(run.run_id, "x"))
        return St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])
    b.add_timeout(
        St.WAITING,
        lambda run, now: now + timedelta(hours=1) if run.foreign_id == "t" else None,
        late,
        to=[St.DONE],
    )
    wf = b.build(make_store(), clock=trio_clock(START))
    holder.append(wf)
    async with af.open_workflow(wf):
        timed = await wf.trigger("t")
        called = await wf.trigger("c")
        with trio.fail_after(60):
            await wf.await_status("c", called, St.WAITING)
        assert await wf.callback("c", St.WAITING, b"x") is not None
        with trio.fail_after(7200):
            await wf.await_status("t", timed, St.DONE)
    assert set(outcomes) == {
        "timeout-cancel",
        "timeout-await",
        "timeout-callback",
        "callback-pause",
    }
    for name, said in outcomes.items():
        assert "own run" in said and "a step, timeout or callback" in said, (name, said)
    for run_id in (timed, called):
        assert [r.status for r in await wf.history(run_id)] == [St.NEW, St.WAITING, St.DONE]
