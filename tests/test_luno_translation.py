"""luno/workflow's own test suite, translated to actorflow's public API (API.md).

Each test is named after the Go test it translates (its name is in the docstring). The
tests are written from what the Go tests check, not from their code: where luno checks an
internal function (a consumer, the updater, a store adapter), the test here checks the same
behaviour through the public API. Every test runs on MemoryStore and SQLiteStore (the
``make_store`` fixture) under the autojump clock, so hours of timeouts cost nothing.
"""

from __future__ import annotations

import enum
import functools
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.streaming import StreamSource
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

LIMIT = 60  # seconds of virtual time any wait may take before the test fails
PG_DSN = os.environ.get("ACTORFLOW_PG_DSN")
REDIS_URL = os.environ.get("ACTORFLOW_REDIS_URL")
KAFKA_BOOTSTRAP = os.environ.get("ACTORFLOW_KAFKA_BOOTSTRAP")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreMaker]:
    """The store under test (tests/conftest.py's, plus PostgreSQL when ACTORFLOW_PG_DSN is
    set, in a schema of its own); calling it again reopens the same storage."""
    if request.param == "postgres" and not PG_DSN:
        pytest.skip("ACTORFLOW_PG_DSN not set")
    opened: list[af.Store] = []
    schema = f"af_luno_{uuid.uuid4().hex[:16]}"

    def make() -> af.Store:
        if request.param == "memory":
            if not opened:
                opened.append(af.MemoryStore())
            return opened[0]
        store: af.Store
        if request.param == "sqlite":
            store = af.SQLiteStore(tmp_path / "actorflow.db")
        else:
            assert PG_DSN is not None
            store = af.PostgresStore(PG_DSN, schema=schema, pool_size=4)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()
    if request.param == "postgres":
        assert PG_DSN is not None
        dropper = af.PostgresStore(PG_DSN, schema=schema, pool_size=1, drop_schema_on_close=True)
        await dropper.get_cursor("drop")  # opens it
        await dropper.aclose()


# --- the user sign-up workflow of workflow_test.go -------------------------------------


class Signup(enum.IntEnum):
    INITIATED = 1
    PROFILE_CREATED = 2
    EMAIL_CONFIRMATION_SENT = 3
    EMAIL_VERIFIED = 4
    CELLPHONE_NUMBER_SUBMITTED = 5
    OTP_SENT = 6
    OTP_VERIFIED = 7
    COMPLETED = 8


@attrs.define
class MyType:
    user_id: int = 0
    name: str = ""
    email: str = ""
    cellphone: str = ""
    otp: int = 0
    otp_verified: bool = False


@attrs.define
class ExternalEmailVerified:
    is_verified: bool = False


@attrs.define
class ExternalCellPhoneSubmitted:
    dialing_code: str = ""
    number: str = ""


@attrs.define
class ExternalOTP:
    otp_code: int = 0


USER_ID = 984892374983743
PROFILE = "Andrew Wormald"
EMAIL = "andreww@example.com"
CELLPHONE = "+44 7467623292"
OTP = 345345


def acceptance_builder(welcomed: list[str]) -> af.Builder[MyType, Signup]:
    b = af.Builder("user sign up", MyType, Signup)

    @b.step(Signup.INITIATED, to=Signup.PROFILE_CREATED)
    async def create_profile(run: af.Run[MyType, Signup]) -> Signup:
        run.object.name = PROFILE
        return Signup.PROFILE_CREATED

    @b.step(Signup.PROFILE_CREATED, to=Signup.EMAIL_CONFIRMATION_SENT)
    async def send_email_confirmation(run: af.Run[MyType, Signup]) -> Signup:
        return Signup.EMAIL_CONFIRMATION_SENT

    async def email_verified(run: af.Run[MyType, Signup], payload: bytes) -> Signup:
        event = ExternalEmailVerified(**json.loads(payload))
        if not event.is_verified:
            return run.skip()
        run.object.email = EMAIL
        return Signup.EMAIL_VERIFIED

    b.add_callback(Signup.EMAIL_CONFIRMATION_SENT, email_verified, to=[Signup.EMAIL_VERIFIED])

    async def cellphone_number(run: af.Run[MyType, Signup], payload: bytes) -> Signup:
        event = ExternalCellPhoneSubmitted(**json.loads(payload))
        if event.dialing_code and event.number:
            run.object.cellphone = f"{event.dialing_code} {event.number}"
        return Signup.CELLPHONE_NUMBER_SUBMITTED

    b.add_callback(Signup.EMAIL_VERIFIED, cellphone_number, to=[Signup.CELLPHONE_NUMBER_SUBMITTED])

    @b.step(Signup.CELLPHONE_NUMBER_SUBMITTED, to=Signup.OTP_SENT, max_concurrency=2)
    async def send_otp(run: af.Run[MyType, Signup]) -> Signup:
        run.object.otp = OTP
        return Signup.OTP_SENT

    async def otp_callback(run: af.Run[MyType, Signup], payload: bytes) -> Signup:
        if ExternalOTP(**json.loads(payload)).otp_code == OTP:
            run.object.otp_verified = True
        return Signup.OTP_VERIFIED

    b.add_callback(Signup.OTP_SENT, otp_callback, to=[Signup.OTP_VERIFIED])

    async def wait_for_account_cool_down(run: af.Run[MyType, Signup], now: datetime) -> Signup:
        return Signup.COMPLETED

    b.add_timeout(
        Signup.OTP_VERIFIED,
        af.after(timedelta(hours=1)),
        wait_for_account_cool_down,
        to=[Signup.COMPLETED],
    )

    async def welcome(record: af.Record[MyType, Signup]) -> None:
        welcomed.append(f"Welcome {record.object.name}")

    b.on_complete(welcome)
    return b


async def eventually(check: Callable[[], bool]) -> None:
    """Wait (virtual time) until ``check()`` holds, as luno's ``require.Eventually``."""
    with trio.fail_after(LIMIT):
        while not check():  # noqa: ASYNC110 (polling a state nothing signals)
            await trio.sleep(0.01)


async def test_workflow_acceptance_test(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestWorkflowAcceptanceTest: the sign-up flow through steps, three callbacks fed by
    TriggerCallbackOn, a one-hour timeout after AwaitTimeoutInsert, and the OnComplete hook."""
    welcomed: list[str] = []
    wf = acceptance_builder(welcomed).build(make_store(), clock=clock)
    fid = str(USER_ID)
    async with af.open_workflow(wf):
        run_id = await wf.trigger(fid, initial=MyType(user_id=USER_ID))
        await trigger_callback_on(
            wf, fid, run_id, Signup.EMAIL_CONFIRMATION_SENT, ExternalEmailVerified(True)
        )
        await trigger_callback_on(
            wf,
            fid,
            run_id,
            Signup.EMAIL_VERIFIED,
            ExternalCellPhoneSubmitted("+44", "7467623292"),
        )
        await trigger_callback_on(wf, fid, run_id, Signup.OTP_SENT, ExternalOTP(OTP))
        await await_timeout_insert(wf, fid, run_id, Signup.OTP_VERIFIED)
        verified = await wf.await_status(fid, run_id, Signup.OTP_VERIFIED)
        done = await wf.await_status(fid, run_id, Signup.COMPLETED)
        assert done.updated_at - verified.updated_at >= timedelta(hours=1)

        latest = await wf.latest(fid)
        assert latest.status is Signup.COMPLETED
        assert latest.run_state is af.RunState.COMPLETED
        assert latest.meta.status_description == "COMPLETED"
        assert latest.object == MyType(
            user_id=USER_ID,
            name=PROFILE,
            email=EMAIL,
            cellphone=CELLPHONE,
            otp=OTP,
            otp_verified=True,
        )
        await eventually(lambda: bool(welcomed))
    assert welcomed[0] == f"Welcome {PROFILE}"


# --- simple workflows used by many tests ----------------------------------------------


class St(enum.IntEnum):
    START = 1
    MIDDLE = 2
    END = 3


@attrs.define
class Text:
    """luno's tests often use a plain string as the object; actorflow's objects are attrs
    classes (API.md), so a string travels in this one-field class."""

    value: str = ""


def two_steps(name: str = "example") -> af.Builder[Text, St]:
    b = af.Builder(name, Text, St)

    @b.step(St.START, to=St.MIDDLE)
    async def first(run: af.Run[Text, St]) -> St:
        return St.MIDDLE

    @b.step(St.MIDDLE, to=St.END)
    async def second(run: af.Run[Text, St]) -> St:
        return St.END

    return b


async def test_outbox_disabled(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestOutboxDisabled: a two-step workflow without an event streamer runs to the end."""
    wf = two_steps("super fast workflow").build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        done = await wf.await_status("fid", run_id, St.END, timeout=LIMIT)
    assert done.run_state is af.RunState.COMPLETED


async def test_timeout(make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock) -> None:
    """TestTimeout: a timeout of one hour fires once the clock has moved past it, and what
    its function changes in the object is stored with its transition."""
    b = af.Builder("user sign up", MyType, Signup)

    @b.step(Signup.INITIATED, to=Signup.PROFILE_CREATED)
    async def create(run: af.Run[MyType, Signup]) -> Signup:
        return Signup.PROFILE_CREATED

    async def expired(run: af.Run[MyType, Signup], now: datetime) -> Signup:
        run.object.user_id = USER_ID
        return Signup.COMPLETED

    b.add_timeout(
        Signup.PROFILE_CREATED, af.after(timedelta(hours=1)), expired, to=[Signup.COMPLETED]
    )
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("example")
        await await_timeout_insert(wf, "example", run_id, Signup.PROFILE_CREATED)
        created = await wf.await_status("example", run_id, Signup.PROFILE_CREATED)
        got = await wf.await_status("example", run_id, Signup.COMPLETED)
    assert got.object.user_id == USER_ID
    assert got.updated_at - created.updated_at >= timedelta(hours=1)


async def test_workflow_err_workflow_not_running(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestWorkflow_ErrWorkflowNotRunning: luno refuses Trigger before Run. API.md differs
    on purpose: trigger works from a process that only holds the store. What must hold is
    that such a run is stored and waits (INITIATED) until a workflow runs it."""
    wf = two_steps("sync users").build(make_store(), clock=clock)
    run_id = await wf.trigger("andrew")
    await trio.sleep(3600)
    waiting = await wf.lookup(run_id)
    assert waiting.run_state is af.RunState.INITIATED and waiting.status is St.START
    async with af.open_workflow(wf):
        done = await wf.await_status("andrew", run_id, St.END, timeout=LIMIT)
    assert done.run_state is af.RunState.COMPLETED


@attrs.define
class Contact:
    email: str = ""
    cellphone: str = ""


async def test_workflow_testing_require(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestWorkflow_TestingRequire: Require checks the object as it was at each status."""
    b = af.Builder("sync users", Contact, St)

    @b.step(St.START, to=St.MIDDLE)
    async def email(run: af.Run[Contact, St]) -> St:
        run.object.email = "andrew@workflow.com"
        return St.MIDDLE

    @b.step(St.MIDDLE, to=St.END)
    async def phone(run: af.Run[Contact, St]) -> St:
        run.object.cellphone = "+44 349 8594"
        return St.END

    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        await wf.trigger("andrew")
        await require(wf, "andrew", St.MIDDLE, Contact(email="andrew@workflow.com"))
        await require(wf, "andrew", St.END, Contact("andrew@workflow.com", "+44 349 8594"))
        with pytest.raises(AssertionError, match="differs"):
            await require(wf, "andrew", St.END, Contact("someone@else.com"))


@attrs.define
class YinYang:
    yin: bool = False
    yang: bool = False


async def test_time_timer_func(make_store: StoreMaker, autojump_clock: MockClock) -> None:
    """TestTimeTimerFunc: a timeout at a fixed date (TimeTimerFunc, here ``af.at``) fires
    when the clock reaches that date."""
    launch = datetime(1992, 4, 9, tzinfo=UTC)
    clock = trio_clock(datetime(1991, 12, 25, 8, 30, tzinfo=UTC))
    b = af.Builder("timer_func", YinYang, St)

    async def launched(run: af.Run[YinYang, St], now: datetime) -> St:
        run.object.yin = True
        run.object.yang = True
        return St.END

    b.add_timeout(St.START, af.at(launch), launched, to=[St.END])
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("Andrew Wormald")
        await await_timeout_insert(wf, "Andrew Wormald", run_id, St.START)
        done = await require(wf, "Andrew Wormald", St.END, YinYang(yin=True, yang=True))
    assert done.updated_at >= launch


@attrs.define
class TypeX:
    val: str = ""


def connector_events() -> list[af.ConnectorEvent]:
    return [
        af.ConnectorEvent(id="1", foreign_id="SDFJKH-SDKFJHBSD-SDKFJBS", type="2"),
        af.ConnectorEvent(id="2", foreign_id="XCVXCM-EIXCASDBJ-SDFBJKZ", type="2"),
    ]


def connector_workflow(
    store: af.Store, clock: af.Clock, source: Any = None
) -> af.Workflow[TypeX, St]:
    b = af.Builder("workflow", TypeX, St)

    async def on_event(workflow: Any, event: af.ConnectorEvent) -> None:
        await workflow.trigger(event.foreign_id, initial=TypeX("trigger set value"))

    b.add_connector(
        "my-test-connector",
        af.MemorySource(connector_events()) if source is None else source,
        on_event,
    )

    @b.step(St.START, to=St.END)
    async def step(run: af.Run[TypeX, St]) -> St:
        run.object.val = "workflow step set value"
        return St.END

    return b.build(store, clock=clock)


async def test_connector(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestConnector: each event of a connector's source triggers a run (with the initial
    value the connector function gives), which then runs its step."""
    wf = connector_workflow(make_store(), clock)
    async with af.open_workflow(wf):
        for event in connector_events():
            await require(wf, event.foreign_id, St.START, TypeX("trigger set value"))
            await require(wf, event.foreign_id, St.END, TypeX("workflow step set value"))


async def test_run_connector_test(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """adaptertest.RunConnectorTest: a connector over a source seeded with events triggers a
    run per event, and each run completes; a restart does not trigger them again."""
    store = make_store()
    wf = connector_workflow(store, clock)
    async with af.open_workflow(wf):
        for event in connector_events():
            await require(wf, event.foreign_id, St.END, TypeX("workflow step set value"))
    again = connector_workflow(make_store(), clock)
    async with af.open_workflow(again):
        await trio.sleep(3600)
        for event in connector_events():
            assert len(await again.list_runs(foreign_id=event.foreign_id)) == 1


@attrs.define
class TimeWatcher:
    start_time: datetime | None = None
    consume_time: datetime | None = None


async def test_step_consumer_lag(make_store: StoreMaker, autojump_clock: MockClock) -> None:
    """TestStepConsumerLag: a step with consume_lag leaves a run alone until the run has
    been at the status that long, then runs it."""
    fixed = datetime(2023, 4, 9, 8, 30, tzinfo=UTC)
    clock = trio_clock(fixed)
    lag = timedelta(hours=1)
    b = af.Builder("step consumer lag", TimeWatcher, St)

    @b.step(St.START, to=St.END, consume_lag=lag)
    async def consume(run: af.Run[TimeWatcher, St]) -> St:
        run.object.consume_time = clock.now()
        return St.END

    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        start_time = clock.now()
        run_id = await wf.trigger("1", initial=TimeWatcher(start_time=start_time))
        await trio.sleep(1)
        assert (await wf.latest("1")).status is St.START
        await trio.sleep(lag.total_seconds() - 60)
        assert (await wf.latest("1")).status is St.START
        done = await wf.await_status("1", run_id, St.END, timeout=LIMIT + 60)
    assert done.object.start_time == start_time
    assert done.object.consume_time is not None
    waited = done.object.consume_time - start_time
    assert lag <= waited < lag + timedelta(seconds=5)


def test_name() -> None:
    """TestName: a workflow's name is the one its builder was given."""
    b = af.Builder("test name", Text, St)

    async def step(run: af.Run[Text, St]) -> St:
        return St.END

    b.add_step(St.START, step, to=St.END)
    assert b.build(af.MemoryStore()).name == "test name"


async def test_expected_processes(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestExpectedProcesses (and _outboxDisabled): States() names each process of the
    workflow. actorflow's names are luno's (docs/metrics.md) without luno's per-goroutine
    ``-1-of-N`` suffix, outbox (no streamer here), delete and paused-retry consumers."""
    wf = acceptance_builder([]).build(make_store(), clock=clock)
    expected = {
        "initiated-consumer",
        "profile_created-consumer",
        "cellphone_number_submitted-consumer",
        "otp_verified-timeout-consumer",
        "completed-run-state-change-hook-consumer",
    }
    assert expected <= set(wf.states())
    up = (af.ProcessState.RUNNING, af.ProcessState.IDLE)
    async with af.open_workflow(wf):
        # As luno's processes, the services report their state once they run (Eventually).
        await eventually(lambda: all(wf.states()[name] in up for name in expected))
        assert "outbox-consumer" not in wf.states()
    assert all(wf.states()[name] is af.ProcessState.STOPPED for name in expected)


@attrs.define
class Custom:
    count: int = 0
    collection: list[str] = attrs.Factory(list)
    workflow_id: int = 0


def save_and_repeat_builder(name: str, iterations: int) -> af.Builder[Custom, St]:
    b = af.Builder(name, Custom, St)

    @b.step(St.START, to=St.END)
    async def repeat(run: af.Run[Custom, St]) -> St:
        run.object.count += 1
        run.object.collection.append(f"item-{run.object.count}")
        if run.object.count < iterations:
            return run.save_and_repeat()
        return St.END

    return b


async def test_save_and_repeat(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestSaveAndRepeat: a step that saves and repeats 100 times keeps every change."""
    wf = save_and_repeat_builder("save and repeat", 100).build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("custom-save-and-repeat")
        expected = Custom(count=100, collection=[f"item-{i + 1}" for i in range(100)])
        await require(wf, "custom-save-and-repeat", St.END, expected)
        history = await wf.history(run_id)
    assert [r.version for r in history] == list(range(1, 102))
    assert [r.object.count for r in history] == list(range(101))
    assert all(r.status is St.START for r in history[:-1])


async def test_save_and_repeat_concurrent(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestSaveAndRepeat_Concurrent: five workflows on one store save and repeat at once,
    each keeping its own count."""
    store = make_store()
    workflows = [
        save_and_repeat_builder(f"concurrent-{i}", 10).build(store, clock=clock) for i in range(5)
    ]
    async with af.open_workflow(*workflows):
        for i, wf in enumerate(workflows):
            await wf.trigger(f"concurrent-{i}")
        for i, wf in enumerate(workflows):
            got = await wait_for(wf, f"concurrent-{i}", lambda r: r.status is St.END)
            assert got.object.count == 10
            assert got.object.workflow_id == 0


# --- await_test.go, pause_test.go, runstate_test.go -------------------------------------


async def test_await(make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock) -> None:
    """TestAwait: Await returns the run as it was at the status awaited."""
    b = af.Builder("consumer lag", Text, St)

    @b.step(St.START, to=St.END)
    async def hello(run: af.Run[Text, St]) -> St:
        run.object.value = "hello world"
        return St.END

    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("1")
        res = await wf.await_status("1", run_id, St.END, timeout=LIMIT)
        # Also when the run reached the status before the call.
        again = await wf.await_status("1", run_id, St.END, timeout=LIMIT)
    assert res.status is St.END
    assert res.object.value == "hello world"
    assert again == res


async def test_retry_of_paused_records(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestRetryOfPausedRecords: a step failing 5 times with pause_after_errors=3 pauses the
    run; the run is resumed after resume_paused_after and ends once the step succeeds."""
    b = af.Builder("example", Text, St)
    calls: list[int] = []

    @b.step(
        St.START,
        to=St.END,
        pause_after_errors=3,
        error_backoff=timedelta(milliseconds=1),
    )
    async def flaky(run: af.Run[Text, St]) -> St:
        if len(calls) == 5:
            return St.END
        calls.append(1)
        raise RuntimeError("test error")

    wf = b.build(make_store(), clock=clock, resume_paused_after=timedelta(milliseconds=10))
    async with af.open_workflow(wf):
        run_id = await wf.trigger("12345")
        await require(wf, "12345", St.END, Text())
        history = await wf.history(run_id)
    assert len(calls) == 5
    paused = [r for r in history if r.run_state is af.RunState.PAUSED]
    assert paused and "3" in paused[0].meta.run_state_reason
    assert history[-1].run_state is af.RunState.COMPLETED


def always_failing(name: str = "example") -> af.Builder[Text, St]:
    b = af.Builder(name, Text, St)

    @b.step(St.START, to=St.END, pause_after_errors=1)
    async def fail(run: af.Run[Text, St]) -> St:
        raise RuntimeError("test error")

    return b


@pytest.mark.parametrize("resume_after", [None, "default"])
async def test_retry_of_paused_records_config(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock, resume_after: str | None
) -> None:
    """TestRetryOfPausedRecordsConfig: with the retry of paused runs disabled
    (resume_paused_after=None) a paused run stays paused; by default (enabled, 1 hour) it is
    resumed. luno checks for its ``paused-records-retry-consumer`` process; actorflow's actors
    resume their own runs, so the behaviour is what is checked."""
    options: dict[str, Any] = {} if resume_after == "default" else {"resume_paused_after": None}
    wf = always_failing().build(make_store(), clock=clock, **options)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        paused = await wait_for(wf, "fid", lambda r: r.run_state is af.RunState.PAUSED)
        await trio.sleep(timedelta(hours=1, minutes=1).total_seconds())
        history = await wf.history(run_id)
    resumed = [r for r in history if r.version > paused.version]
    if resume_after is None:
        assert resumed == []
    else:
        assert resumed and resumed[0].run_state is af.RunState.RUNNING
        assert resumed[0].updated_at - paused.updated_at >= timedelta(hours=1)


def middle_then(fn: Callable[[af.Run[Text, St]], Any]) -> af.Builder[Text, St]:
    b = af.Builder("example", Text, St)

    @b.step(St.START, to=St.MIDDLE)
    async def first(run: af.Run[Text, St]) -> St:
        return St.MIDDLE

    b.add_step(St.MIDDLE, fn, to=St.END)
    return b


async def _complete(run: af.Run[Text, St]) -> Any:
    return St.END


async def _pause(run: af.Run[Text, St]) -> Any:
    return run.pause("testing pause")


async def _cancel(run: af.Run[Text, St]) -> Any:
    return run.cancel("testing cancel")


@pytest.mark.parametrize(
    ("fn", "last"),
    [
        (_complete, af.RunState.COMPLETED),
        (_pause, af.RunState.PAUSED),
        (_cancel, af.RunState.CANCELLED),
    ],
    ids=["complete", "paused", "cancelled"],
)
async def test_run_state(
    make_store: StoreMaker,
    clock: af.Clock,
    autojump_clock: MockClock,
    fn: Callable[[af.Run[Text, St]], Any],
    last: af.RunState,
) -> None:
    """TestRunState: the run states a run goes through: INITIATED at trigger, RUNNING after
    its first step, then COMPLETED, PAUSED or CANCELLED as the second step decides."""
    wf = middle_then(fn).build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        await wait_for(wf, "fid", lambda r: r.run_state is last)
        await trio.sleep(1)
        history = await wf.history(run_id)
    assert [r.run_state for r in history] == [af.RunState.INITIATED, af.RunState.RUNNING, last]
    if last is not af.RunState.COMPLETED:
        assert history[-1].meta.run_state_reason.startswith("testing ")
        assert history[-1].status is St.MIDDLE


@attrs.define
class MyObject:
    name: str = ""
    car: str = ""


async def test_workflow_run_state_controller(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestWorkflowRunStateController: pause, resume, cancel and delete the data of a stored
    run (no workflow running), each change stored with its reason."""
    b = af.Builder("test-workflow", MyObject, St)

    @b.step(St.START, to=St.END)
    async def step(run: af.Run[MyObject, St]) -> St:
        return St.END

    wf = b.build(make_store(), clock=clock)
    run_id = await wf.trigger("foreignID", initial=MyObject("Andrew Wormald", "Audi"))
    await trio.sleep(0.5)
    assert (await wf.latest("foreignID")).run_state is af.RunState.INITIATED

    await wf.pause(run_id, "test pause")
    record = await wf.latest("foreignID")
    assert record.run_state is af.RunState.PAUSED
    assert record.meta.run_state_reason == "test pause"

    await wf.resume(run_id)
    assert (await wf.latest("foreignID")).run_state is af.RunState.RUNNING

    await wf.cancel(run_id, "test cancel")
    record = await wf.latest("foreignID")
    assert record.run_state is af.RunState.CANCELLED
    assert record.meta.run_state_reason == "test cancel"

    await wf.delete_data(run_id, "test delete")
    record = await wf.latest("foreignID")
    assert record.run_state is af.RunState.DATA_DELETED
    assert record.meta.run_state_reason == "test delete"
    assert record.object == MyObject()
    # The data is gone from every stored version, not only the latest.
    for version in await wf.history(run_id):
        assert "Andrew" not in repr(version.object)


def test_is_finished() -> None:
    """TestIsFinished, TestRunStateFinished: which run states are finished (PAUSED is not)."""
    finished = {
        af.RunState.CANCELLED,
        af.RunState.COMPLETED,
        af.RunState.DATA_DELETED,
        af.RunState.REQUESTED_DATA_DELETED,
    }
    for state in af.RunState:
        assert state.finished is (state in finished), state


def test_run_state_stopped() -> None:
    """TestRunStateStopped: the run states in which a run is stopped (it will not move until
    someone acts on it): PAUSED, CANCELLED and the data-deleted states; COMPLETED is not."""
    stopped = {
        af.RunState.PAUSED,
        af.RunState.CANCELLED,
        af.RunState.DATA_DELETED,
        af.RunState.REQUESTED_DATA_DELETED,
    }
    for state in af.RunState:
        assert state.stopped is (state in stopped), state


def test_run_state_valid() -> None:
    """TestRunStateValid: 1 to 7 are run states; anything else is not one (ValueError)."""
    assert [int(s) for s in af.RunState] == list(range(1, 8))
    for value in (-1, 0, 8, 9, 9999):
        with pytest.raises(ValueError):
            af.RunState(value)


def test_run_state_out_of_bounds_string() -> None:
    """TestRunStateOutOfBoundsString: luno prints ``RunState(999)``; a Python enum refuses
    the value instead, and a run state prints by name."""
    assert str(af.RunState.PAUSED) == "RunState.PAUSED"
    with pytest.raises(ValueError, match="999"):
        af.RunState(999)


# --- testing_test.go, hook_test.go ------------------------------------------------------


async def test_require(make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock) -> None:
    """TestRequire: Require compares the stored object with the expected one after both went
    through the same encoding."""
    b = af.Builder("test", Text, St)

    @b.step(St.START, to=St.END)
    async def lower(run: af.Run[Text, St]) -> St:
        run.object.value = "Lower"
        return St.END

    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        await wf.trigger("10298309123")
        record = await require(wf, "10298309123", St.END, Text("Lower"))
    assert record.status is St.END


async def test_wait_for(make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock) -> None:
    """TestWaitFor: WaitFor returns once the predicate holds for the run."""
    b = af.Builder("test", Text, St)

    @b.step(St.START, to=St.END)
    async def end(run: af.Run[Text, St]) -> St:
        return St.END

    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        await wf.trigger("10298309123")
        with trio.fail_after(1):
            got = await wait_for(wf, "10298309123", lambda r: r.run_state is af.RunState.COMPLETED)
    assert got.run_state is af.RunState.COMPLETED


class NotAWorkflow:
    name = "test"


async def test_testing_helpers_validation(autojump_clock: MockClock) -> None:
    """TestTriggerCallbackOn_validation, TestAwaitTimeoutInsert_validation,
    TestRequire_validation: the helpers need an actorflow workflow and say so clearly when
    given something else (luno panics with a message)."""
    other: Any = NotAWorkflow()
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: require(other, "fid", St.END, Text()),
        lambda: wait_for(other, "fid", lambda r: True),
        lambda: trigger_callback_on(other, "fid", "run", St.END, b""),
        lambda: await_timeout_insert(other, "fid", "run", St.END),
    ]
    for call in calls:
        with trio.fail_after(1), pytest.raises(af.InvalidArgument, match=r"af\.Workflow"):
            await call()


@pytest.mark.parametrize("hook", ["on_pause", "on_cancel", "on_complete"])
async def test_workflow_run_state_hooks(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock, hook: str
) -> None:
    """TestWorkflow_OnPauseHook, TestWorkflow_OnCancelHook, TestWorkflow_OnCompleteHook: the
    hook of a run-state change is called when a step pauses, cancels or completes the run."""
    b = af.Builder("hooks", MyType, St)
    called = trio.Event()
    seen: list[af.Record[MyType, St]] = []

    @b.step(St.START, to=St.END)
    async def step(run: af.Run[MyType, St]) -> St:
        if hook == "on_pause":
            return run.pause("Test pausing")
        if hook == "on_cancel":
            return run.cancel("Test cancel")
        return St.END

    async def on_change(record: af.Record[MyType, St]) -> None:
        seen.append(record)
        called.set()

    getattr(b, hook)(on_change)
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("andrew")
        with trio.fail_after(LIMIT):
            await called.wait()
    expected = {
        "on_pause": af.RunState.PAUSED,
        "on_cancel": af.RunState.CANCELLED,
        "on_complete": af.RunState.COMPLETED,
    }[hook]
    assert seen[0].run_id == run_id and seen[0].run_state is expected


async def test_run_hooks(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """Test_runHooks: a hook that fails is called again (at-least-once) until it succeeds."""
    b = af.Builder("hooks", Text, St)

    @b.step(St.START, to=St.END)
    async def step(run: af.Run[Text, St]) -> St:
        return St.END

    calls: list[str] = []

    async def flaky(record: af.Record[Text, St]) -> None:
        calls.append(record.run_id)
        if len(calls) < 3:
            raise RuntimeError("test error")

    b.on_complete(flaky)
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("andrew")
        await eventually(lambda: len(calls) >= 3)
        await trio.sleep(3600)
    assert calls == [run_id] * 3


# --- schedule_test.go, _examples/schedule ----------------------------------------------

APRIL_9 = datetime(2023, 4, 9, 8, 30, tzinfo=UTC)
MAY_1 = datetime(2023, 5, 1, tzinfo=UTC)
JUNE_1 = datetime(2023, 6, 1, tzinfo=UTC)
JULY_1 = datetime(2023, 7, 1, tzinfo=UTC)


async def sleep_until(clock: af.Clock, when: datetime) -> None:
    """Sleep (virtual time) until the workflow clock reads ``when``."""
    await trio.sleep(max(0.0, (when - clock.now()).total_seconds()))


def sync_users(name: str = "sync users") -> af.Builder[MyType, St]:
    b = af.Builder(name, MyType, St)

    @b.step(St.START, to=St.MIDDLE)
    async def first(run: af.Run[MyType, St]) -> St:
        return St.MIDDLE

    @b.step(St.MIDDLE, to=St.END)
    async def second(run: af.Run[MyType, St]) -> St:
        return St.END

    return b


async def test_schedule(make_store: StoreMaker, autojump_clock: MockClock) -> None:
    """TestSchedule: ``@monthly`` triggers nothing before the first of the next month, a run
    on May 1st, and another run on June 1st."""
    clock = trio_clock(APRIL_9)
    wf = sync_users().build(make_store(), clock=clock)
    async with af.open_workflow(wf), trio.open_nursery() as nursery:
        nursery.start_soon(wf.schedule_trigger, "andrew", "@monthly")
        await sleep_until(clock, MAY_1 - timedelta(minutes=1))
        with pytest.raises(af.RunNotFound):
            await wf.latest("andrew")
        first = await wait_for(wf, "andrew", lambda r: True)
        assert first.created_at == MAY_1
        await wf.await_status("andrew", first.run_id, St.END, timeout=LIMIT)
        second = await wait_for(wf, "andrew", lambda r: r.run_id != first.run_id)
        assert second.created_at == JUNE_1
        nursery.cancel_scope.cancel()


async def test_workflow_schedule_shutdown(
    make_store: StoreMaker, autojump_clock: MockClock
) -> None:
    """TestWorkflow_ScheduleShutdown: a schedule is a process of the workflow
    (``andrew-scheduler-@monthly``), running while it runs and shut down after. In
    actorflow the schedule is the caller's task (it runs until cancelled; stop() does not
    end it), so the test ends it and stops the workflow."""
    clock = trio_clock(APRIL_9)
    wf = sync_users("example").build(make_store(), clock=clock)
    name = "andrew-scheduler-@monthly"
    async with af.open_workflow(wf):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wf.schedule_trigger, "andrew", "@monthly")
            await eventually(lambda: wf.states().get(name) is af.ProcessState.RUNNING)
            assert wf.states()["start-consumer"] in (
                af.ProcessState.RUNNING,
                af.ProcessState.IDLE,
            )
            nursery.cancel_scope.cancel()
        assert wf.states()[name] is af.ProcessState.STOPPED
        wf.stop()
    assert all(state is af.ProcessState.STOPPED for state in wf.states().values())


async def test_workflow_schedule_filter(make_store: StoreMaker, autojump_clock: MockClock) -> None:
    """TestWorkflow_ScheduleFilter: a cron time the filter refuses is skipped; the next one
    it allows triggers again."""
    clock = trio_clock(APRIL_9)
    wf = sync_users().build(make_store(), clock=clock)
    should_skip = False

    def allow() -> bool:
        return not should_skip

    async with af.open_workflow(wf), trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(wf.schedule_trigger, "andrew", "@monthly", filter=allow)
        )
        await sleep_until(clock, MAY_1 - timedelta(minutes=1))
        with pytest.raises(af.RunNotFound):
            await wf.latest("andrew")
        first = await wait_for(wf, "andrew", lambda r: True)
        await wf.await_status("andrew", first.run_id, St.END, timeout=LIMIT)

        should_skip = True
        await sleep_until(clock, JUNE_1 + timedelta(minutes=1))
        assert (await wf.latest("andrew")).run_id == first.run_id

        should_skip = False
        second = await wait_for(wf, "andrew", lambda r: r.run_id != first.run_id)
        assert second.created_at == JULY_1
        nursery.cancel_scope.cancel()


async def test_workflow_schedule_with_initial_value(
    make_store: StoreMaker, autojump_clock: MockClock
) -> None:
    """TestWorkflow_ScheduleWithInitialValue: scheduled runs start with the initial value."""
    clock = trio_clock(APRIL_9)
    b = af.Builder("initial value test", MyType, St)
    seen: list[str] = []

    @b.step(St.START, to=St.END)
    async def check(run: af.Run[MyType, St]) -> St:
        seen.append(run.object.email)
        return St.END

    wf = b.build(make_store(), clock=clock)
    initial = MyType(user_id=123, email="test-email@example.com")
    async with af.open_workflow(wf), trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(wf.schedule_trigger, "test", "@monthly", initial=initial)
        )
        run = await wait_for(wf, "test", lambda r: True)
        done = await wf.await_status("test", run.run_id, St.END, timeout=LIMIT)
        nursery.cancel_scope.cancel()
    assert seen == ["test-email@example.com"]
    assert done.object == initial


async def test_workflow_schedule_filter_error(
    make_store: StoreMaker, autojump_clock: MockClock
) -> None:
    """TestWorkflow_ScheduleFilterError: a filter that fails triggers nothing (and the
    schedule goes on, reporting the error in its process state)."""
    clock = trio_clock(APRIL_9)
    b = af.Builder("filter error test", MyType, St)

    @b.step(St.START, to=St.END)
    async def end(run: af.Run[MyType, St]) -> St:
        return St.END

    wf = b.build(make_store(), clock=clock)

    def broken() -> bool:
        raise RuntimeError("filter error")

    async with af.open_workflow(wf), trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(wf.schedule_trigger, "error-test", "@monthly", filter=broken)
        )
        await sleep_until(clock, MAY_1 + timedelta(minutes=5))
        with pytest.raises(af.RunNotFound):
            await wf.latest("error-test")
        assert wf.states()["error-test-scheduler-@monthly"] is af.ProcessState.ERRORING
        nursery.cancel_scope.cancel()


async def test_workflow_schedule_existing_run(
    make_store: StoreMaker, autojump_clock: MockClock
) -> None:
    """TestWorkflow_ScheduleExistingRun: a foreign id whose earlier run has finished gets a
    new run at the next cron time."""
    clock = trio_clock(APRIL_9)
    b = af.Builder("existing run test", MyType, St)

    @b.step(St.START, to=St.END)
    async def end(run: af.Run[MyType, St]) -> St:
        return St.END

    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf), trio.open_nursery() as nursery:
        first_id = await wf.trigger("existing-test")
        await wf.await_status("existing-test", first_id, St.END, timeout=LIMIT)
        nursery.start_soon(wf.schedule_trigger, "existing-test", "@monthly")
        second = await wait_for(wf, "existing-test", lambda r: r.run_id != first_id)
        nursery.cancel_scope.cancel()
    assert second.created_at == MAY_1


async def test_example_schedule_workflow(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """_examples/schedule TestExampleWorkflow: ``@hourly`` triggers nothing at first, then a
    run each hour, each a new run of the same foreign id."""
    b = af.Builder("schedule trigger example", MyType, St)

    @b.step(St.START, to=St.END)
    async def end(run: af.Run[MyType, St]) -> St:
        return St.END

    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf), trio.open_nursery() as nursery:
        nursery.start_soon(wf.schedule_trigger, "hourly-run", "@hourly")
        await trio.sleep(1)
        with pytest.raises(af.RunNotFound):
            await wf.latest("hourly-run")
        first = await wait_for(wf, "hourly-run", lambda r: True)
        second = await wait_for(wf, "hourly-run", lambda r: r.run_id != first.run_id)
        nursery.cancel_scope.cancel()
    assert first.workflow_name == second.workflow_name == "schedule trigger example"
    assert first.foreign_id == second.foreign_id == "hourly-run"
    assert second.created_at - first.created_at == timedelta(hours=1)


# --- delete_internal_test.go ------------------------------------------------------------


@attrs.define
class Personal:
    pii: str = ""
    not_pii: str = ""


def personal_workflow(store: af.Store, clock: af.Clock, **build: Any) -> af.Workflow[Personal, St]:
    b = af.Builder("delete", Personal, St)

    @b.step(St.START, to=St.END)
    async def end(run: af.Run[Personal, St]) -> St:
        return St.END

    return b.build(store, clock=clock, **build)


def keep_not_pii(obj: Personal) -> Personal:
    return Personal(not_pii=obj.not_pii)


@pytest.mark.parametrize("custom", [True, False], ids=["custom delete", "default delete"])
async def test_run_delete(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock, custom: bool
) -> None:
    """TestRunDelete (golden paths): deleting a finished run's data scrubs its object with
    the custom scrubber (or to the default object) and ends in DATA_DELETED."""
    build: dict[str, Any] = {"scrub": keep_not_pii} if custom else {}
    wf = personal_workflow(make_store(), clock, **build)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid", initial=Personal("my name", "name of the month"))
        await wf.await_status("fid", run_id, St.END, timeout=LIMIT)
        await wf.delete_data(run_id, "user asked")
        record = await wf.lookup(run_id)
    assert record.run_state is af.RunState.DATA_DELETED
    assert record.object == (Personal(not_pii="name of the month") if custom else Personal())
    states = [r.run_state for r in await wf.history(run_id)]
    assert states[-2:] == [af.RunState.REQUESTED_DATA_DELETED, af.RunState.DATA_DELETED]
    # DATA_DELETED -> REQUESTED_DATA_DELETED is legal: deleting again scrubs again.
    await wf.delete_data(run_id, "again")
    assert (await wf.lookup(run_id)).run_state is af.RunState.DATA_DELETED


async def test_run_delete_errors(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestRunDelete (error paths): a scrubber that fails leaves the run at
    REQUESTED_DATA_DELETED with its error raised to the caller, and a later delete_data
    finishes the job; an unfinished run's data cannot be deleted."""
    fail = [True]

    def flaky_scrub(obj: Personal) -> Personal:
        if fail[0]:
            raise RuntimeError("test error")
        return Personal()

    wf = personal_workflow(make_store(), clock, scrub=flaky_scrub)
    run_id = await wf.trigger("other")
    with pytest.raises(af.InvalidTransition):
        await wf.delete_data(run_id, "not finished")
    await wf.cancel(run_id, "done with it")
    with pytest.raises(af.ActorflowError, match="test error"):
        await wf.delete_data(run_id, "user asked")
    record = await wf.lookup(run_id)
    assert record.run_state is af.RunState.REQUESTED_DATA_DELETED
    fail[0] = False
    await wf.delete_data(run_id, "user asked")
    record = await wf.lookup(run_id)
    assert record.run_state is af.RunState.DATA_DELETED and record.object == Personal()


# --- callback_internal_test.go ----------------------------------------------------------


def callback_workflow(
    store: af.Store, clock: af.Clock, fn: Callable[[af.Run[Text, St], bytes], Awaitable[Any]]
) -> af.Workflow[Text, St]:
    """START has only a callback (to END); MIDDLE is reachable by trigger(start=...)."""
    b = af.Builder("example", Text, St)
    b.add_callback(St.START, fn, to=[St.END])

    async def middle(run: af.Run[Text, St], payload: bytes) -> St:
        return St.END

    b.add_callback(St.MIDDLE, middle, to=[St.END])
    return b.build(store, clock=clock)


async def test_process_callback(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestProcessCallback (golden paths, initiated and running): the callback changes the
    object and moves the run; the transition is stored once."""
    calls: list[bytes] = []

    async def fn(run: af.Run[Text, St], payload: bytes) -> St:
        calls.append(payload)
        run.object.value = "new data"
        return St.END

    wf = callback_workflow(make_store(), clock, fn)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("32948623984623", initial=Text("data"))
        assert (await wf.lookup(run_id)).run_state is af.RunState.INITIATED
        record = await wf.callback("32948623984623", St.START, b"payload")
    assert calls == [b"payload"]
    assert record is not None
    assert record.status is St.END and record.object.value == "new data"
    assert record.run_state is af.RunState.COMPLETED and record.version == 2


async def test_process_callback_skip(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestProcessCallback "Skip consume": a callback that skips stores nothing."""
    calls: list[bytes] = []

    async def fn(run: af.Run[Text, St], payload: bytes) -> Any:
        calls.append(payload)
        run.object.value = "not saved"
        return run.skip()

    wf = callback_workflow(make_store(), clock, fn)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid", initial=Text("data"))
        assert await wf.callback("fid", St.START, b"x") is None
        record = await wf.lookup(run_id)
    assert calls == [b"x"]
    assert record.version == 1 and record.object.value == "data"


async def test_process_callback_errors(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestProcessCallback "Return on callbackFunc error": the callback's error reaches the
    caller, and nothing is stored; "Return on lookup error": no run at all is an error."""

    async def fn(run: af.Run[Text, St], payload: bytes) -> St:
        raise RuntimeError("test error")

    wf = callback_workflow(make_store(), clock, fn)
    async with af.open_workflow(wf):
        with pytest.raises(af.RunNotFound):
            await wf.callback("nobody", St.START, b"x")
        run_id = await wf.trigger("fid")
        with pytest.raises(af.CallbackError, match="test error"):
            await wf.callback("fid", St.START, b"x")
        record = await wf.lookup(run_id)
    assert record.status is St.START and record.run_state is af.RunState.INITIATED


@pytest.mark.parametrize("case", ["different status", "paused", "cancelled"])
async def test_process_callback_ignored(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock, case: str
) -> None:
    """TestProcessCallback "Ignore if record is in different state", "Skip if record is
    stopped (paused)", "(cancelled)": the callback is not called and nothing is stored."""
    calls: list[bytes] = []

    async def fn(run: af.Run[Text, St], payload: bytes) -> St:
        calls.append(payload)
        return St.END

    wf = callback_workflow(make_store(), clock, fn)
    async with af.open_workflow(wf):
        if case == "different status":
            run_id = await wf.trigger("fid", St.MIDDLE)
        else:
            run_id = await wf.trigger("fid")
            if case == "paused":
                await wf.pause(run_id, "stop")
            else:
                await wf.cancel(run_id, "stop")
        before = await wf.lookup(run_id)
        assert await wf.callback("fid", St.START, b"x") is None
        after = await wf.lookup(run_id)
    assert calls == []
    assert after == before


# --- timeout_internal_test.go -----------------------------------------------------------


def timeout_workflow(
    store: af.Store,
    clock: af.Clock,
    fn: Callable[[af.Run[Text, St], datetime], Awaitable[Any]],
    **options: Any,
) -> af.Workflow[Text, St]:
    b = af.Builder("example", Text, St)
    b.add_timeout(St.START, af.after(timedelta(minutes=1)), fn, to=[St.END], **options)
    return b.build(store, clock=clock)


async def test_process_timeout(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestProcessTimeout (golden paths): an expired timeout of an INITIATED run calls its
    function once, stores the transition with the object's changes, and is done."""
    calls: list[datetime] = []

    async def fn(run: af.Run[Text, St], now: datetime) -> St:
        calls.append(now)
        run.object.value = "new data"
        return St.END

    wf = timeout_workflow(make_store(), clock, fn)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid", initial=Text("data"))
        done = await wf.await_status("fid", run_id, St.END, timeout=LIMIT + 3600)
        await trio.sleep(3600)
        history = await wf.history(run_id)
    assert len(calls) == 1 and calls[0] >= history[0].created_at + timedelta(minutes=1)
    assert done.object.value == "new data" and done.run_state is af.RunState.COMPLETED
    assert len(history) == 2


async def test_process_timeout_skip(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestProcessTimeout "Skip consume": a timeout that skips stores nothing (not even its
    object's changes) and fires again after its back-off."""
    calls: list[datetime] = []

    async def fn(run: af.Run[Text, St], now: datetime) -> Any:
        # ``now`` is the instant the timeout was due (docs/timeouts.md), the same on each
        # retry; luno passes the clock's time. The retries are seen on the clock.
        calls.append(clock.now())
        run.object.value = "new data"
        if len(calls) < 3:
            return run.skip()
        return St.END

    wf = timeout_workflow(make_store(), clock, fn, error_backoff=timedelta(minutes=5))
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid", initial=Text("data"))
        done = await wf.await_status("fid", run_id, St.END, timeout=LIMIT + 3600)
        history = await wf.history(run_id)
    assert len(calls) == 3
    assert calls[1] - calls[0] >= timedelta(minutes=5)
    assert [r.version for r in history] == [1, 2] and history[0].object.value == "data"
    assert done.object.value == "new data"


async def test_process_timeout_pause_on_errors(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestProcessTimeout "Pause record when meeting error count": a timeout that keeps
    failing pauses the run after pause_after_errors errors."""
    calls: list[datetime] = []

    async def fn(run: af.Run[Text, St], now: datetime) -> St:
        calls.append(now)
        raise RuntimeError("test error")

    wf = timeout_workflow(make_store(), clock, fn, pause_after_errors=2)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        paused = await wait_for(wf, "fid", lambda r: r.run_state is af.RunState.PAUSED)
        await trio.sleep(60)
    assert len(calls) == 2
    assert paused.run_id == run_id and paused.status is St.START
    assert "test error" in paused.meta.run_state_reason or "error" in paused.meta.run_state_reason


# --- step_internal_test.go, pause_internal_test.go --------------------------------------


def step_workflow(
    store: af.Store,
    clock: af.Clock,
    fn: Callable[[af.Run[Text, St]], Awaitable[Any]],
    **build: Any,
) -> af.Workflow[Text, St]:
    b = af.Builder("example", Text, St)
    options = build.pop("options", {})
    b.add_step(St.START, fn, to=St.END, **options)
    return b.build(store, clock=clock, **build)


async def test_step_consumer(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """Test_stepConsumer (golden paths): a step runs once for an INITIATED run and its
    changes are stored with the transition."""
    calls: list[str] = []

    async def fn(run: af.Run[Text, St]) -> St:
        calls.append(run.run_id)
        run.object.value = "new data"
        return St.END

    wf = step_workflow(make_store(), clock, fn)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid", initial=Text("data"))
        done = await wf.await_status("fid", run_id, St.END, timeout=LIMIT)
        await trio.sleep(3600)
    assert calls == [run_id]
    assert done.object.value == "new data" and done.version == 2


async def test_step_consumer_skip(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """Test_stepConsumer "Skip consume": a step that skips stores nothing."""
    calls: list[str] = []

    async def fn(run: af.Run[Text, St]) -> Any:
        calls.append(run.run_id)
        run.object.value = "not saved"
        return run.skip()

    wf = step_workflow(make_store(), clock, fn)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid", initial=Text("data"))
        await eventually(lambda: bool(calls))
        await trio.sleep(60)
        history = await wf.history(run_id)
    assert len(history) == 1 and history[0].object.value == "data"
    assert history[0].run_state is af.RunState.INITIATED


async def test_step_consumer_pause_after_errors(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """Test_stepConsumer "Pause record after exceeding allowed error count": with
    pause_after_errors=3 the step is called three times, then the run is paused (one store,
    nothing else)."""
    calls: list[str] = []

    async def fn(run: af.Run[Text, St]) -> St:
        calls.append(run.run_id)
        raise RuntimeError("test error")

    wf = step_workflow(
        make_store(), clock, fn, options={"pause_after_errors": 3}, resume_paused_after=None
    )
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        await wait_for(wf, "fid", lambda r: r.run_state is af.RunState.PAUSED)
        await trio.sleep(3600)
        history = await wf.history(run_id)
    assert len(calls) == 3
    assert [r.run_state for r in history] == [af.RunState.INITIATED, af.RunState.PAUSED]
    assert history[-1].meta.error_count == 3 or "3" in history[-1].meta.run_state_reason


@pytest.mark.parametrize(
    ("pause_after", "errors", "pauses"),
    [(0, 100, False), (1, 1, True), (3, 1, False)],
    ids=["not configured", "max retry of 1", "not past max retry"],
)
async def test_maybe_auto_pause(
    make_store: StoreMaker,
    clock: af.Clock,
    autojump_clock: MockClock,
    pause_after: int,
    errors: int,
    pauses: bool,
) -> None:
    """Test_maybeAutoPause: pause_after_errors=0 never pauses (even after 100 errors); 1
    pauses at the first error; 3 does not pause after one error."""
    calls: list[str] = []

    async def fn(run: af.Run[Text, St]) -> St:
        calls.append(run.run_id)
        if len(calls) <= errors:
            raise RuntimeError("test error")
        return St.END

    wf = step_workflow(
        make_store(),
        clock,
        fn,
        options={
            "pause_after_errors": pause_after,
            "error_backoff": timedelta(milliseconds=1),
            "max_error_backoff": timedelta(milliseconds=1),
        },
        resume_paused_after=None,
    )
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        last = await wait_for(
            wf, "fid", lambda r: r.run_state in (af.RunState.PAUSED, af.RunState.COMPLETED)
        )
    assert last.run_id == run_id
    assert (last.run_state is af.RunState.PAUSED) is pauses
    assert len(calls) == (errors if pauses else errors + 1)


async def test_retry_paused_records(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """Test_retryPausedRecords: a paused run is resumed once resume_paused_after has passed
    since it was paused, not before; a run that is not paused is left alone."""
    wf = always_failing().build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        paused = await wait_for(wf, "fid", lambda r: r.run_state is af.RunState.PAUSED)
        await sleep_until(clock, paused.updated_at + timedelta(minutes=59))
        assert (await wf.lookup(run_id)).version == paused.version
        resumed = await wait_for(wf, "fid", lambda r: r.version == paused.version + 1)
        assert resumed.run_state is af.RunState.RUNNING
        assert resumed.updated_at - paused.updated_at >= timedelta(hours=1)
        await wf.cancel(run_id, "enough")
        cancelled = await wf.lookup(run_id)
        await trio.sleep(timedelta(hours=3).total_seconds())
        assert await wf.lookup(run_id) == cancelled


# --- trigger_internal_test.go, update_internal_test.go ----------------------------------


async def test_trigger(make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock) -> None:
    """Test_trigger: a start status the workflow has no step, callback or timeout for is
    refused; a second trigger while a run is in progress raises WorkflowInProgress; the
    first version has version 1 and its status's description."""
    b = af.Builder("trigger test", Text, St)

    @b.step(St.START, to=St.MIDDLE)
    async def step(run: af.Run[Text, St]) -> St:
        return St.MIDDLE

    async def cb(run: af.Run[Text, St], payload: bytes) -> St:
        return St.END

    b.add_callback(St.MIDDLE, cb, to=[St.END])
    wf = b.build(make_store(), clock=clock)
    with pytest.raises(af.InvalidArgument, match="END"):
        await wf.trigger("1", St.END)
    assert await wf.list_runs(foreign_id="1") == []
    run_id = await wf.trigger("1")
    with pytest.raises(af.WorkflowInProgress):
        await wf.trigger("1")
    first = await wf.lookup(run_id)
    assert first.version == 1
    assert first.meta.status_description == "START"
    assert first.run_state is af.RunState.INITIATED


async def test_updater(make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock) -> None:
    """TestUpdater: reaching a status with no way out marks the run COMPLETED ("Mark as
    completed"); a status that is not an allowed destination is an error, never stored
    ("No valid transition available")."""
    b = af.Builder("example", Text, St)
    calls: list[int] = []

    @b.step(St.START, to=St.MIDDLE, pause_after_errors=2, error_backoff=timedelta(seconds=1))
    async def wrong(run: af.Run[Text, St]) -> St:
        calls.append(1)
        return St.END  # not an allowed destination of START

    wf = b.build(make_store(), clock=clock, resume_paused_after=None)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("bad")
        paused = await wait_for(wf, "bad", lambda r: r.run_state is af.RunState.PAUSED)
        assert "END" in paused.meta.run_state_reason or "END" in paused.meta.error_message
        assert all(r.status is St.START for r in await wf.history(run_id))
        assert len(calls) == 2
    ok = middle_then(_complete).build(make_store(), clock=clock)
    async with af.open_workflow(ok):
        run_id = await ok.trigger("good")
        middle = await ok.await_status("good", run_id, St.MIDDLE, timeout=LIMIT)
        end = await ok.await_status("good", run_id, St.END, timeout=LIMIT)
    assert middle.run_state is af.RunState.RUNNING
    assert end.run_state is af.RunState.COMPLETED


async def test_require_validation_status(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestRequire_validation: Require of a status the workflow does not have can never be
    met; it is refused at once instead of waiting forever."""
    wf = two_steps().build(make_store(), clock=clock)
    with trio.fail_after(1), pytest.raises(af.InvalidArgument, match="status"):
        await require(wf, "fid", 99, Text())  # type: ignore[arg-type]
    with trio.fail_after(1), pytest.raises(af.InvalidArgument, match="predicate"):
        await wait_for(wf, "fid", "not a function")  # type: ignore[arg-type]


# --- builder_internal_test.go -----------------------------------------------------------


def test_status_graph() -> None:
    """TestStatusGraph, TestCreateDiagram: the graph has each transition, the starting
    status (never a destination) and the terminal one (no way out)."""
    b = af.Builder("determine starting points", Text, St)

    @b.step(St.START, to=St.MIDDLE)
    async def step(run: af.Run[Text, St]) -> St:
        return St.MIDDLE

    async def cb(run: af.Run[Text, St], payload: bytes) -> St:
        return St.END

    b.add_callback(St.MIDDLE, cb, to=[St.END])
    lines = {line.strip() for line in b.build(af.MemoryStore()).graph().splitlines()}
    assert {"[*] --> START", "START --> MIDDLE", "MIDDLE --> END: callback"} <= lines
    assert "END --> [*]" in lines
    assert "[*] --> MIDDLE" not in lines and "MIDDLE --> [*]" not in lines


def test_create_diagram_two_destinations() -> None:
    """TestCreateDiagram: a step with two destinations draws both."""
    b = af.Builder("example", Text, St)

    @b.step(St.START, to=[St.MIDDLE, St.END])
    async def step(run: af.Run[Text, St]) -> St:
        return St.MIDDLE

    @b.step(St.MIDDLE, to=St.END)
    async def step2(run: af.Run[Text, St]) -> St:
        return St.END

    text = b.build(af.MemoryStore()).graph()
    assert text.startswith("stateDiagram-v2")
    for edge in ("START --> MIDDLE", "START --> END", "MIDDLE --> END"):
        assert edge in text


async def test_default_starting_point(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestDefaultStartingPoint: a trigger without a start begins at the first status
    declared; a workflow with nothing to start from does not build."""
    b = af.Builder("consumer lag", Text, St)

    @b.step(St.START, to=St.MIDDLE)
    async def step(run: af.Run[Text, St]) -> St:
        return St.MIDDLE

    @b.step(St.MIDDLE, to=St.END)
    async def step2(run: af.Run[Text, St]) -> St:
        return St.END

    wf = b.build(make_store(), clock=clock)
    run_id = await wf.trigger("fid")
    assert (await wf.lookup(run_id)).status is St.START
    with pytest.raises(af.BuildError, match="start"):
        af.Builder("nothing to start from", Text, St).build(af.MemoryStore())


def _noop_timeout() -> Callable[[af.Run[Text, St], datetime], Awaitable[St]]:
    async def fn(run: af.Run[Text, St], now: datetime) -> St:
        return St.END

    return fn


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_concurrency", 2), ("consume_lag", timedelta(hours=1))],
    ids=["parallel count", "lag"],
)
def test_add_timeout_dont_allow(option: str, value: Any) -> None:
    """TestAddTimeoutDontAllowParallelCount, TestAddTimeoutDontAllowLag: options that make
    no sense for a timeout are refused. actorflow runs a status's timeouts with
    max_concurrency like a step's (docs/timeouts.md), so only consume_lag is refused."""
    b = af.Builder("timeouts", Text, St)
    if option == "consume_lag":
        with pytest.raises(af.BuildError, match="consume_lag"):
            b.add_timeout(
                St.START,
                af.after(timedelta(hours=1)),
                _noop_timeout(),
                to=[St.END],
                **{option: value},
            )
            b.build(af.MemoryStore())
    else:
        b.add_timeout(
            St.START, af.after(timedelta(hours=1)), _noop_timeout(), to=[St.END], **{option: value}
        )
        b.build(af.MemoryStore())


def test_add_step_single_use_validation() -> None:
    """TestAddStepSingleUseValidation: a second step for one status is refused."""
    b = af.Builder("consumer lag", Text, St)

    async def step(run: af.Run[Text, St]) -> St:
        return St.END

    b.add_step(St.START, step, to=St.END)
    with pytest.raises(af.BuildError, match="START"):
        b.add_step(St.START, step, to=St.END)
        b.build(af.MemoryStore())


def test_connector_names_are_unique() -> None:
    """TestConnectorNamesAreUnique: two connectors with one name are refused."""
    b = af.Builder("workflow X", Text, St)

    async def fn(workflow: Any, event: af.ConnectorEvent) -> None:
        return None

    @b.step(St.START, to=St.END)
    async def step(run: af.Run[Text, St]) -> St:
        return St.END

    b.add_connector("my-test-connector", af.MemorySource([]), fn)
    with pytest.raises(af.BuildError, match="my-test-connector"):
        b.add_connector("my-test-connector", af.MemorySource([]), fn)
        b.build(af.MemoryStore())


class Reserved(enum.IntEnum):
    SKIP = 0
    REPEAT = -1
    START = 1
    END = 2


@pytest.mark.parametrize("reserved", [Reserved.SKIP, Reserved.REPEAT])
@pytest.mark.parametrize("where", ["from", "to"])
def test_panic_for_using_reserved_node_values(reserved: Reserved, where: str) -> None:
    """TestPanicForUsingReservedNodeValues: statuses 0 and below are reserved (luno's skip
    types); using one as a step's 'from' or 'to' is refused."""
    b = af.Builder("reserved", Text, Reserved)

    async def step(run: af.Run[Text, Reserved]) -> Reserved:
        return Reserved.END

    with pytest.raises(af.BuildError, match="reserved"):
        if where == "from":
            b.add_step(reserved, step, to=Reserved.END)
        else:
            b.add_step(Reserved.START, step, to=reserved)
        b.build(af.MemoryStore())


async def test_with_step_err_back_off(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestWithStepErrBackOff (and TestWithDefaultOptions): a step's own error_backoff
    overrides the default_options of the build; a step without one uses the default."""
    b = af.Builder("backoff", Text, St)
    tries: dict[St, list[datetime]] = {St.START: [], St.MIDDLE: []}

    @b.step(St.START, to=St.MIDDLE, error_backoff=timedelta(minutes=1))
    async def own(run: af.Run[Text, St]) -> St:
        tries[St.START].append(clock.now())
        if len(tries[St.START]) == 1:
            raise RuntimeError("once")
        return St.MIDDLE

    @b.step(St.MIDDLE, to=St.END)
    async def default(run: af.Run[Text, St]) -> St:
        tries[St.MIDDLE].append(clock.now())
        if len(tries[St.MIDDLE]) == 1:
            raise RuntimeError("once")
        return St.END

    wf = b.build(
        make_store(), clock=clock, default_options=af.Options(error_backoff=timedelta(hours=1))
    )
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        await wf.await_status("fid", run_id, St.END, timeout=3 * 3600)
    own_wait = tries[St.START][1] - tries[St.START][0]
    default_wait = tries[St.MIDDLE][1] - tries[St.MIDDLE][0]
    assert timedelta(minutes=1) <= own_wait < timedelta(minutes=2)
    assert timedelta(hours=1) <= default_wait < timedelta(hours=2, minutes=1)


async def test_with_step_consumer_lag(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestWithStepConsumerLag: a step's consume_lag overrides the default one."""
    b = af.Builder("consumer lag", Text, St)

    @b.step(St.START, to=St.MIDDLE, consume_lag=timedelta(hours=9))
    async def lagging(run: af.Run[Text, St]) -> St:
        return St.MIDDLE

    @b.step(St.MIDDLE, to=St.END)
    async def default(run: af.Run[Text, St]) -> St:
        return St.END

    wf = b.build(
        make_store(), clock=clock, default_options=af.Options(consume_lag=timedelta(minutes=1))
    )
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        middle = await wf.await_status("fid", run_id, St.MIDDLE, timeout=10 * 3600)
        end = await wf.await_status("fid", run_id, St.END, timeout=3600)
    created = (await wf.history(run_id))[0].created_at
    assert timedelta(hours=9) <= middle.updated_at - created < timedelta(hours=9, minutes=1)
    assert timedelta(minutes=1) <= end.updated_at - middle.updated_at < timedelta(minutes=2)


async def test_with_clock(make_store: StoreMaker, autojump_clock: MockClock) -> None:
    """TestWithClock: the workflow's times come from the clock it was built with."""
    when = datetime(2020, 2, 2, 12, tzinfo=UTC)
    wf = two_steps().build(make_store(), clock=trio_clock(when))
    await trio.sleep(3600)
    run_id = await wf.trigger("fid")
    assert (await wf.lookup(run_id)).created_at == when + timedelta(hours=1)


def test_build_options_validation() -> None:
    """TestBuildOptions: build options are checked when the workflow is built (luno accepts
    any value; a bad one here is a BuildError naming the option)."""
    for options in (
        {"scrub": "not a function"},
        {"resume_paused_after": "soon"},
        {"default_options": 3},
        {"clock": "now"},
    ):
        with pytest.raises(af.BuildError, match=next(iter(options))):
            two_steps().build(af.MemoryStore(), **options)


async def test_adding_callbacks(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestAddingCallbacks: several callbacks may share a status; each is reached by
    workflow.callback."""
    b = af.Builder("callbacks", Text, St)
    seen: list[str] = []

    async def first(run: af.Run[Text, St], payload: bytes) -> Any:
        seen.append("first")
        return St.END if payload == b"first" else run.skip()

    async def second(run: af.Run[Text, St], payload: bytes) -> Any:
        seen.append("second")
        return St.END if payload == b"second" else run.skip()

    b.add_callback(St.START, first, to=[St.END])
    b.add_callback(St.START, second, to=[St.END])
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        await wf.trigger("fid")
        record = await wf.callback("fid", St.START, b"second")
    assert record is not None and record.status is St.END
    assert "second" in seen


def test_hook_builders_need_async_functions() -> None:
    """TestOnPause, TestOnCancel, TestOnComplete: the hooks are registered for their run
    state (checked in test_workflow_run_state_hooks); a hook that is not async is refused."""
    for hook in ("on_pause", "on_cancel", "on_complete"):
        b = two_steps()

        def not_async(record: af.Record[Text, St]) -> None:
            return None

        with pytest.raises(af.BuildError, match="async"):
            getattr(b, hook)(not_async)
            b.build(af.MemoryStore())


# --- state_test.go, workflow_internal_test.go -------------------------------------------


async def test_internal_state(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestInternalState: every process (steps, timeouts, connectors) is listed; all are
    stopped before Run and after Stop."""
    b = af.Builder("example", Text, St)

    @b.step(St.START, to=St.MIDDLE)
    async def first(run: af.Run[Text, St]) -> St:
        return St.MIDDLE

    @b.step(St.MIDDLE, to=St.END, max_concurrency=3)
    async def second(run: af.Run[Text, St]) -> St:
        return St.END

    b.add_timeout(St.START, af.after(timedelta(hours=1)), _noop_timeout(), to=[St.END])

    async def consume(workflow: Any, event: af.ConnectorEvent) -> None:
        return None

    b.add_connector("consume-other-stream", af.MemorySource([]), consume)
    wf = b.build(make_store(), clock=clock)
    names = {
        "start-consumer",
        "middle-consumer",
        "start-timeout-consumer",
        "consume-other-stream-connector-consumer",
    }
    before = wf.states()
    assert names <= set(before)
    assert set(before.values()) == {af.ProcessState.STOPPED}
    async with trio.open_nursery() as nursery:
        await nursery.start(wf.run)
        wf.stop()
    after = wf.states()
    assert names <= set(after)
    assert set(after.values()) == {af.ProcessState.STOPPED}


async def test_workflow_run_stop_race(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestWorkflow_RunStopRace: Run and Stop called back to back, many times, neither fail
    nor hang; Stop when not running does nothing."""
    wf = two_steps("race-test").build(make_store(), clock=clock)
    for _ in range(20):
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(wf.run)
                wf.stop()
        wf.stop()
    assert not wf.running


# --- adapters/adaptertest/recordstore.go, through the workflow's API --------------------
#
# luno's RecordStore contract stores hand-made records; actorflow's stores are reached
# through the workflow (the Store protocol is not public), so the runs are made with
# trigger/callback/pause/cancel on a workflow that is not running (nothing moves them).


def store_workflow(
    store: af.Store, clock: af.Clock, name: str = "my_workflow"
) -> af.Workflow[Text, St]:
    b = af.Builder(name, Text, St)

    async def to_middle(run: af.Run[Text, St], payload: bytes) -> St:
        run.object.value = payload.decode()
        return St.MIDDLE

    async def to_end(run: af.Run[Text, St], payload: bytes) -> St:
        run.object.value = payload.decode()
        return St.END

    b.add_callback(St.START, to_middle, to=[St.MIDDLE])
    b.add_callback(St.MIDDLE, to_end, to=[St.END])
    return b.build(store, clock=clock)


async def test_record_store_latest(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """adaptertest testLatest: Latest is the run's first version after trigger, and its
    newest one after it moved to its end (COMPLETED)."""
    wf = store_workflow(make_store(), clock)
    run_id = await wf.trigger("Andrew Wormald", initial=Text("Andrew Wormald"))
    latest = await wf.latest("Andrew Wormald")
    assert latest == await wf.lookup(run_id)
    assert (latest.workflow_name, latest.foreign_id, latest.run_id) == (
        "my_workflow",
        "Andrew Wormald",
        run_id,
    )
    assert latest.status is St.START and latest.run_state is af.RunState.INITIATED
    assert latest.object == Text("Andrew Wormald") and latest.created_at == latest.updated_at
    await wf.callback("Andrew Wormald", St.START, b"m")
    await wf.callback("Andrew Wormald", St.MIDDLE, b"e")
    latest = await wf.latest("Andrew Wormald")
    assert latest.status is St.END and latest.run_state is af.RunState.COMPLETED
    assert latest.version == 3 and latest.object == Text("e")
    with pytest.raises(af.RunNotFound):
        await wf.latest("nobody")


async def test_record_store_lookup(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """adaptertest testLookup: Lookup by run id finds the run (and only in its workflow)."""
    store = make_store()
    wf = store_workflow(store, clock)
    other = store_workflow(store, clock, "my_second_workflow")
    run_id = await wf.trigger("Andrew Wormald")
    found = await wf.lookup(run_id)
    assert found.run_id == run_id and found.foreign_id == "Andrew Wormald"
    with pytest.raises(af.RunNotFound):
        await wf.lookup("no-such-run")
    with pytest.raises(af.RunNotFound):
        await other.lookup(run_id)


async def test_record_store_store(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """adaptertest testStore: each update is stored as the run's next version, and Lookup
    returns the newest one."""
    wf = store_workflow(make_store(), clock)
    run_id = await wf.trigger("Andrew Wormald")
    await trio.sleep(1)
    middle = await wf.callback("Andrew Wormald", St.START, b"middle")
    assert middle == await wf.lookup(run_id)
    await trio.sleep(1)
    end = await wf.callback("Andrew Wormald", St.MIDDLE, b"end")
    assert end == await wf.lookup(run_id)
    history = await wf.history(run_id)
    assert [(r.version, r.status) for r in history] == [
        (1, St.START),
        (2, St.MIDDLE),
        (3, St.END),
    ]
    assert len({r.created_at for r in history}) == 1
    assert history[0].updated_at < history[1].updated_at < history[2].updated_at


async def test_record_store_list_pages(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """adaptertest testList "List with no workflow specified returns all" (pages): pages of
    53 and 100 follow each other without overlap, in creation order both ways, and a last
    page is short. Runs created one after the other list in that order; the runs of one
    trigger_many are created together (their order among themselves is the store's)."""
    wf = store_workflow(make_store(), clock)
    total = 180
    ids = await wf.trigger_many([f"fid-{i}" for i in range(total - 20)])
    assert all(isinstance(i, str) for i in ids)
    for i in range(total - 20, total):
        await trio.sleep(0.001)
        ids.append(await wf.trigger(f"fid-{i}"))
    everything = [r.run_id for r in await wf.list_runs(limit=1000)]
    assert sorted(everything) == sorted(ids)
    assert everything[-20:] == ids[-20:]
    first = await wf.list_runs(limit=53)
    second = await wf.list_runs(limit=100, after=first[-1].run_id)
    rest = await wf.list_runs(limit=1000, after=second[-1].run_id)
    assert (len(first), len(second), len(rest)) == (53, 100, total - 153)
    assert [r.run_id for r in first + second + rest] == everything
    down = await wf.list_runs(limit=1000, descending=True)
    assert [r.run_id for r in down] == everything[::-1]
    last_page = await wf.list_runs(limit=100, after=everything[total - 51])
    assert len(last_page) == 50
    last_down = await wf.list_runs(limit=100, after=everything[50], descending=True)
    assert [r.run_id for r in last_down] == everything[49::-1]


async def test_record_store_list_workflow_name(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """adaptertest testList "List - WorkflowName": two workflows on one store each list only
    their own runs."""
    store = make_store()
    first = store_workflow(store, clock)
    second = store_workflow(store, clock, "my_second_workflow")
    for i in range(30):
        await first.trigger(f"f{i}")
        await second.trigger(f"f{i}")
    mine = await first.list_runs(limit=1000)
    assert len(mine) == 30 and {r.workflow_name for r in mine} == {"my_workflow"}
    theirs = await second.list_runs(limit=1000)
    assert len(theirs) == 30 and {r.workflow_name for r in theirs} == {"my_second_workflow"}
    assert (await first.count_runs()) == (await second.count_runs())


async def test_record_store_list_filter_by_foreign_id(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """adaptertest testList "List - FilterByForeignID": runs of one foreign id (every run,
    not only the latest), of several, and of an unknown one (none)."""
    wf = store_workflow(make_store(), clock)
    foreign_ids = ["MSDVUI-OBEWF-BYUIOW", "FRELBJK-SRGIUE-RGTJDSF"]
    for fid in foreign_ids:
        for _ in range(8):
            run_id = await wf.trigger(fid)
            await wf.cancel(run_id, "next")
    for fid in foreign_ids:
        runs = await wf.list_runs(foreign_id=fid, limit=100)
        assert len(runs) == 8 and {r.foreign_id for r in runs} == {fid}
    assert len(await wf.list_runs(foreign_id=foreign_ids, limit=100)) == 16
    assert await wf.list_runs(foreign_id="random") == []


async def test_record_store_list_filter_by_run_state(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """adaptertest testList "List - FilterByRunState": runs in each run state are listed by
    that state, and by several states at once."""
    wf = store_workflow(make_store(), clock)
    wanted = {
        af.RunState.INITIATED: 4,
        af.RunState.RUNNING: 6,
        af.RunState.COMPLETED: 5,
        af.RunState.PAUSED: 3,
        af.RunState.CANCELLED: 1,
        af.RunState.DATA_DELETED: 2,
    }
    n = 0
    for state, count in wanted.items():
        for _ in range(count):
            fid = f"f{n}"
            n += 1
            run_id = await wf.trigger(fid)
            if state is af.RunState.RUNNING:
                await wf.callback(fid, St.START, b"m")
            elif state is af.RunState.COMPLETED:
                await wf.callback(fid, St.START, b"m")
                await wf.callback(fid, St.MIDDLE, b"e")
            elif state is af.RunState.PAUSED:
                await wf.pause(run_id, "p")
            elif state is af.RunState.CANCELLED:
                await wf.cancel(run_id, "c")
            elif state is af.RunState.DATA_DELETED:
                await wf.cancel(run_id, "c")
                await wf.delete_data(run_id, "d")
    for state, count in wanted.items():
        runs = await wf.list_runs(run_state=state, limit=100)
        assert len(runs) == count, state
        assert {r.run_state for r in runs} == {state}
    both = await wf.list_runs(run_state=[af.RunState.RUNNING, af.RunState.PAUSED], limit=100)
    assert len(both) == 9
    assert {r.run_state for r in both} == {af.RunState.RUNNING, af.RunState.PAUSED}
    counts = await wf.count_runs()
    assert sum(counts.values()) == sum(wanted.values())


async def test_record_store_list_filter_by_status(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """adaptertest testList "List - FilterByStatus": runs at each status are listed by it."""
    wf = store_workflow(make_store(), clock)
    wanted = {St.START: 3, St.MIDDLE: 7, St.END: 4}
    n = 0
    for status, count in wanted.items():
        for _ in range(count):
            fid = f"f{n}"
            n += 1
            await wf.trigger(fid)
            if status is not St.START:
                await wf.callback(fid, St.START, b"m")
            if status is St.END:
                await wf.callback(fid, St.MIDDLE, b"e")
    for status, count in wanted.items():
        runs = await wf.list_runs(status=status, limit=100)
        assert len(runs) == count and {r.status for r in runs} == {status}


async def test_record_store_list_filter_by_created_at(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """adaptertest testList "List - Filter by Created At": runs created between two times
    are listed; none after the later one or before the earlier one."""
    wf = store_workflow(make_store(), clock)
    now = clock.now()
    for i in range(20):
        await wf.trigger(f"f{i}")
    t0, t1 = now - timedelta(minutes=1), now + timedelta(minutes=1)
    assert len(await wf.list_runs(created_after=t0, created_before=t1, limit=100)) == 20
    assert await wf.list_runs(created_after=t1, limit=100) == []
    assert await wf.list_runs(created_before=t0, limit=100) == []


# --- the examples' tests (_examples/*/..._test.go) ---------------------------------------


class Getting(enum.IntEnum):
    STARTED = 1
    READ_THE_DOCS = 2
    FOLLOWED_THE_EXAMPLE = 3
    CREATED_A_FUN_EXAMPLE = 4


@attrs.define
class GettingStarted:
    read_the_docs: str = ""
    follow_an_example: str = ""
    create_a_fun_example: str = ""


async def test_getting_started_workflow(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """_examples/gettingstarted TestWorkflow: three steps, each ticking a box."""
    b = af.Builder("getting started", GettingStarted, Getting)

    @b.step(Getting.STARTED, to=Getting.READ_THE_DOCS)
    async def read(run: af.Run[GettingStarted, Getting]) -> Getting:
        run.object.read_the_docs = "✅"
        return Getting.READ_THE_DOCS

    @b.step(Getting.READ_THE_DOCS, to=Getting.FOLLOWED_THE_EXAMPLE)
    async def follow(run: af.Run[GettingStarted, Getting]) -> Getting:
        run.object.follow_an_example = "✅"
        return Getting.FOLLOWED_THE_EXAMPLE

    @b.step(Getting.FOLLOWED_THE_EXAMPLE, to=Getting.CREATED_A_FUN_EXAMPLE)
    async def create(run: af.Run[GettingStarted, Getting]) -> Getting:
        run.object.create_a_fun_example = "✅"
        return Getting.CREATED_A_FUN_EXAMPLE

    wf = b.build(make_store(), clock=clock)
    fid = "82347982374982374"
    async with af.open_workflow(wf):
        await wf.trigger(fid)
        await require(wf, fid, Getting.READ_THE_DOCS, GettingStarted("✅"))
        await require(wf, fid, Getting.FOLLOWED_THE_EXAMPLE, GettingStarted("✅", "✅"))
        await require(wf, fid, Getting.CREATED_A_FUN_EXAMPLE, GettingStarted("✅", "✅", "✅"))


@attrs.define
class EmailConfirmationResponse:
    confirmed: bool = False


@attrs.define
class Example:
    email_confirmed: bool = False
    now: datetime | None = None


class ExampleStatus(enum.IntEnum):
    STARTED = 1
    FOLLOWED_THE_EXAMPLE = 2


async def test_callback_workflow(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """_examples/callback TestCallbackWorkflow: a callback fed an attrs payload (as JSON by
    TriggerCallbackOn) moves the run with what it carried."""
    b = af.Builder("callback example", Example, ExampleStatus)

    async def confirmed(run: af.Run[Example, ExampleStatus], payload: bytes) -> ExampleStatus:
        run.object.email_confirmed = EmailConfirmationResponse(**json.loads(payload)).confirmed
        return ExampleStatus.FOLLOWED_THE_EXAMPLE

    b.add_callback(ExampleStatus.STARTED, confirmed, to=[ExampleStatus.FOLLOWED_THE_EXAMPLE])
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("andrew")
        await trigger_callback_on(
            wf, "andrew", run_id, ExampleStatus.STARTED, EmailConfirmationResponse(True)
        )
        await require(wf, "andrew", ExampleStatus.FOLLOWED_THE_EXAMPLE, Example(True))


async def test_timeout_workflow(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """_examples/timeout TestTimeoutWorkflow: an hour's timeout, after AwaitTimeoutInsert,
    fires an hour later with that time."""
    b = af.Builder("timeout example", Example, ExampleStatus)

    async def expired(run: af.Run[Example, ExampleStatus], now: datetime) -> ExampleStatus:
        run.object.now = now
        return ExampleStatus.FOLLOWED_THE_EXAMPLE

    b.add_timeout(
        ExampleStatus.STARTED,
        af.after(timedelta(hours=1)),
        expired,
        to=[ExampleStatus.FOLLOWED_THE_EXAMPLE],
    )
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        start = clock.now()
        run_id = await wf.trigger("andrew")
        assert run_id
        await await_timeout_insert(wf, "andrew", run_id, ExampleStatus.STARTED)
        await require(
            wf,
            "andrew",
            ExampleStatus.FOLLOWED_THE_EXAMPLE,
            Example(now=start + timedelta(hours=1)),
        )


# --- metrics_test.go (metric names and labels: docs/metrics.md) -------------------------


def skipping_workflow(
    store: af.Store, clock: af.Clock, registry: Any, **options: Any
) -> af.Workflow[Text, St]:
    """luno's metrics tests' workflow: a step at START that skips (returns 0 in Go)."""
    b = af.Builder("example", Text, St)

    @b.step(St.START, to=St.MIDDLE, **options)
    async def skip(run: af.Run[Text, St]) -> Any:
        return run.skip()

    @b.step(St.MIDDLE, to=St.END)
    async def end(run: af.Run[Text, St]) -> St:
        return St.END

    return b.build(store, clock=clock, metrics=registry)


def sample(registry: Any, name: str, **labels: str) -> float | None:
    value: float | None = registry.get_sample_value(name, {"workflow_name": "example", **labels})
    return value


async def test_metric_process_lag(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestMetricProcessLag, TestMetricProcessLagAlert: a run that waited an hour before the
    workflow ran shows an hour of lag for the step that took it up, and the lag alert is
    raised when that is beyond the step's lag_alert."""
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    wf = skipping_workflow(make_store(), clock, registry, lag_alert=timedelta(minutes=30))
    await wf.trigger("29384723984732")
    await trio.sleep(3600)
    async with af.open_workflow(wf):
        await eventually(
            lambda: (
                sample(registry, "workflow_process_lag_seconds", process_name="start-consumer")
                is not None
            )
        )
        lag = sample(registry, "workflow_process_lag_seconds", process_name="start-consumer")
        assert lag is not None and 3600 <= lag < 3700
        alert = sample(registry, "workflow_process_lag_alert", process_name="start-consumer")
        assert alert == 1


async def test_metric_process_states(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestMetricProcessStates, TestMetricProcessIdleState: the process-state gauge reads
    luno's values: 2 running or 3 idle while the workflow runs, 1 once it stopped."""
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    wf = skipping_workflow(make_store(), clock, registry)
    async with af.open_workflow(wf):
        await trio.sleep(1)
        for process in ("start-consumer", "middle-consumer"):
            state = sample(registry, "workflow_process_states", process_name=process)
            assert state in (2, 3), process
    for process in ("start-consumer", "middle-consumer"):
        assert sample(registry, "workflow_process_states", process_name=process) == 1


async def test_metric_process_latency_and_run_state_changes(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestMetricProcessLatency, TestRunStateChanges: each step's handling is timed, and
    each run-state change is counted by previous and current run state."""
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    wf = two_steps().build(make_store(), clock=clock, metrics=registry)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("983467934")
        await wf.await_status("983467934", run_id, St.END, timeout=LIMIT)
    for process in ("start-consumer", "middle-consumer"):
        count = sample(registry, "workflow_process_latency_seconds_count", process_name=process)
        assert count is not None and count >= 1, process
    changes = {
        (s.labels["previous_run_state"], s.labels["current_run_state"]): s.value
        for metric in registry.collect()
        if metric.name == "workflow_run_state_changes"
        for s in metric.samples
        if s.labels.get("workflow_name") == "example"
    }
    assert changes.get(("Initiated", "Running"), 0) >= 1
    assert changes.get(("Running", "Completed"), 0) >= 1


async def test_metric_process_errors_and_skipped_events(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestMetricProcessErrors, TestMetricProcessSkippedEvents: a failing step counts its
    errors; a skipping step counts its skips (with the reason)."""
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    wf = skipping_workflow(make_store(), clock, registry)
    b = af.Builder("failing", Text, St)

    @b.step(St.START, to=St.END)
    async def fail(run: af.Run[Text, St]) -> St:
        raise RuntimeError("mock error")

    failing = b.build(wf.store, clock=clock, metrics=registry)
    async with af.open_workflow(wf, failing):
        for fid in ("9834679343", "2349839483", "7548702398"):
            await wf.trigger(fid)
        await failing.trigger("29384723984732")
        await trio.sleep(10)
    skipped = sample(
        registry,
        "workflow_process_skipped_events_count",
        process_name="start-consumer",
        reason="run.skip()",
    )
    assert skipped is not None and skipped >= 3
    errors = registry.get_sample_value(
        "workflow_process_error_count",
        {"workflow_name": "failing", "process_name": "start-consumer"},
    )
    assert errors is not None and errors >= 1


async def test_workflow_run_state_hooks_from_controls(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestWorkflow_OnPauseHook, TestWorkflow_OnCancelHook (controls): the hooks follow the
    run-state changes, whoever made them: a pause after errors, pause()/cancel() from
    outside, also while no workflow ran (the hook is called once it runs)."""
    b = always_failing("hooks")
    seen: list[tuple[str, af.RunState, str]] = []

    async def on_pause(record: af.Record[Text, St]) -> None:
        seen.append((record.foreign_id, record.run_state, "pause"))

    async def on_cancel(record: af.Record[Text, St]) -> None:
        seen.append((record.foreign_id, record.run_state, "cancel"))

    b.on_pause(on_pause)
    b.on_cancel(on_cancel)
    wf = b.build(make_store(), clock=clock, resume_paused_after=None)
    offline = await wf.trigger("offline")
    await wf.pause(offline, "by hand")
    async with af.open_workflow(wf):
        await wf.trigger("errors")
        await eventually(lambda: len(seen) >= 2)
        await wf.cancel(offline, "by hand")
        await eventually(lambda: len(seen) >= 3)
        await trio.sleep(3600)
    assert sorted(seen) == [
        ("errors", af.RunState.PAUSED, "pause"),
        ("offline", af.RunState.PAUSED, "pause"),
        ("offline", af.RunState.CANCELLED, "cancel"),
    ]


# --- adapters/adaptertest/eventstreaming.go ("Acceptance test - full workflow run through")


class Sync(enum.IntEnum):
    STARTED = 1
    EMAIL_SET = 2
    REGULATION_TIMEOUT = 3
    COMPLETED = 4


@attrs.define
class User:
    uid: str = ""
    email: str = ""
    country_code: str = ""


def cool_down(run: af.Run[User, Sync], now: datetime) -> datetime | None:
    """An hour's cool-down for users in Great Britain; no timeout for anyone else."""
    return now + timedelta(hours=1) if run.object.country_code == "GB" else None


def _streamer(kind: str, store: af.Store) -> Any:
    """The event streamer under test; Redis and Kafka (luno's wredis and kafkastreamer run
    the same acceptance test) only when their servers are given."""
    if kind == "memory":
        return af.MemoryStreamer()
    if kind == "store log":
        return af.StoreLogStreamer(store)
    if kind == "redis":
        if not REDIS_URL:
            pytest.skip("ACTORFLOW_REDIS_URL not set")
        return af.RedisStreamer(REDIS_URL, prefix=f"af-luno-{uuid.uuid4().hex[:12]}:")
    if not KAFKA_BOOTSTRAP:
        pytest.skip("ACTORFLOW_KAFKA_BOOTSTRAP not set")
    from tests.streaming.conftest import kafka_streamer  # short group timeouts: quick joins

    return kafka_streamer(f"af-luno-{uuid.uuid4().hex[:12]}.")


STORES = ("memory", "sqlite", "postgres")


def on_streamers(*per_store: str) -> pytest.MarkDecorator:
    """(store, streamer) pairs: ``per_store`` streamers on every store, Redis and Kafka on
    SQLite only (their behaviour does not depend on the store; each Kafka case costs
    seconds of group joins)."""
    pairs = [(store, kind) for kind in per_store for store in STORES]
    pairs += [("sqlite", "redis"), ("sqlite", "kafka")]
    return pytest.mark.parametrize(("make_store", "streamer"), pairs, indirect=["make_store"])


@on_streamers("memory", "store log")
async def test_event_streamer_acceptance(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock, streamer: str
) -> None:
    """RunEventStreamerTest "Acceptance test - full workflow run through" (memstreamer,
    wredis, kafkastreamer): with an event streamer, a run goes through a step, a timer
    function's timeout (an hour for GB users, none for others) and a last step; the
    transitions reach the stream."""
    store = make_store()
    stream = _streamer(streamer, store)
    b = af.Builder("sync user 2", User, Sync)

    @b.step(Sync.STARTED, to=Sync.EMAIL_SET, max_concurrency=5)
    async def set_email(run: af.Run[User, Sync]) -> Sync:
        run.object.email = "andrew@workflow.com"
        return Sync.EMAIL_SET

    async def regulation(run: af.Run[User, Sync], now: datetime) -> Any:
        if run.object.email == "andrew@workflow.com":
            return Sync.REGULATION_TIMEOUT
        return run.skip()

    b.add_timeout(Sync.EMAIL_SET, cool_down, regulation, to=[Sync.REGULATION_TIMEOUT])

    @b.step(Sync.REGULATION_TIMEOUT, to=Sync.COMPLETED, max_concurrency=5)
    async def generate_user_id(run: af.Run[User, Sync]) -> Sync:
        run.object.uid = "user-1"
        return Sync.COMPLETED

    wf = b.build(store, clock=clock, streamer=stream)
    seen: list[af.ConnectorEvent] = []

    async def read(workflow: Any, event: af.ConnectorEvent) -> None:
        seen.append(event)

    reader = two_steps("stream reader")
    reader.add_connector("sync", StreamSource(stream, "sync user 2"), read)
    readers = reader.build(store, clock=clock)
    async with af.open_workflow(wf, readers):
        run_id = await wf.trigger("1", initial=User(country_code="GB"))
        await await_timeout_insert(wf, "1", run_id, Sync.EMAIL_SET)
        record = await wf.await_status("1", run_id, Sync.COMPLETED, timeout=2 * 3600)
        elsewhere = await wf.trigger("2", initial=User(country_code="ZA"))
        await wf.await_status("2", elsewhere, Sync.EMAIL_SET, timeout=LIMIT)
        await trio.sleep(24 * 3600)
        assert (await wf.lookup(elsewhere)).status is Sync.EMAIL_SET

        def types_of(rid: str) -> list[str]:
            return [e.type for e in seen if e.headers.get("run_id") == rid]

        # Kafka's group join takes real seconds, which the autojump clock does not wait for.
        deadline = time.monotonic() + LIMIT
        while not (len(types_of(run_id)) >= 4 and len(types_of(elsewhere)) >= 2):
            assert time.monotonic() < deadline, seen
            await trio.to_thread.run_sync(time.sleep, 0.05)
    assert sorted(set(types_of(run_id))) == [str(s.value) for s in Sync]
    assert sorted(set(types_of(elsewhere))) == [str(Sync.STARTED.value), str(Sync.EMAIL_SET.value)]
    assert record.object.email == "andrew@workflow.com"
    assert record.status is Sync.COMPLETED and record.object.uid
    email_set = next(r for r in await wf.history(run_id) if r.status is Sync.EMAIL_SET)
    assert record.updated_at - email_set.updated_at >= timedelta(hours=1)


# --- timeouts and triggers across run-state changes (timeout.go, trigger.go semantics) -


def callback_or_timeout(
    store: af.Store, clock: af.Clock, fired: list[datetime], **build: Any
) -> af.Workflow[Text, St]:
    """At START a callback (to MIDDLE) races an hour's timeout (to END)."""
    b = af.Builder("race", Text, St)

    async def answered(run: af.Run[Text, St], payload: bytes) -> St:
        return St.MIDDLE

    async def expired(run: af.Run[Text, St], now: datetime) -> St:
        fired.append(now)
        return St.END

    b.add_callback(St.START, answered, to=[St.MIDDLE])
    b.add_timeout(St.START, af.after(timedelta(hours=1)), expired, to=[St.END])

    async def finish(run: af.Run[Text, St]) -> St:
        return St.END

    b.add_step(St.MIDDLE, finish, to=St.END)
    return b.build(store, clock=clock, **build)


async def test_timeout_cancelled_when_the_run_moves_on(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """The timeout of a status is dropped when the run leaves that status (luno cancels the
    timeout record): a callback that answers first means the timeout never fires."""
    fired: list[datetime] = []
    wf = callback_or_timeout(make_store(), clock, fired)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        await await_timeout_insert(wf, "fid", run_id, St.START)
        await trio.sleep(1800)
        assert await wf.callback("fid", St.START, b"") is not None
        await wf.await_status("fid", run_id, St.END, timeout=LIMIT)
        await trio.sleep(3 * 3600)
        history = await wf.history(run_id)
    assert fired == []
    assert [r.status for r in history] == [St.START, St.MIDDLE, St.END]


async def test_timeout_of_a_paused_run_waits_for_resume(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """A paused run's timeout does not fire while it is paused; resumed after its time, it
    fires; a cancelled run's timeout never fires. (As luno's, the automatic resume of
    paused runs applies to every pause, one by hand too: it is off here.)"""
    fired: list[datetime] = []
    wf = callback_or_timeout(make_store(), clock, fired, resume_paused_after=None)
    async with af.open_workflow(wf):
        paused_id = await wf.trigger("paused")
        cancelled_id = await wf.trigger("cancelled")
        await await_timeout_insert(wf, "paused", paused_id, St.START)
        await await_timeout_insert(wf, "cancelled", cancelled_id, St.START)
        await wf.pause(paused_id, "hold on")
        await wf.cancel(cancelled_id, "no more")
        await trio.sleep(2 * 3600)
        assert fired == []
        assert (await wf.lookup(paused_id)).run_state is af.RunState.PAUSED
        await wf.resume(paused_id)
        done = await wf.await_status("paused", paused_id, St.END, timeout=LIMIT)
        await trio.sleep(3600)
    assert len(fired) == 1 and done.run_state is af.RunState.COMPLETED
    assert (await wf.lookup(cancelled_id)).status is St.START


async def test_trigger_in_progress_rules(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """Test_trigger "ErrWorkflowInProgress": a PAUSED latest run is in progress; once it is
    cancelled, or completed, or its data deleted, a new run may start."""
    wf = store_workflow(make_store(), clock)
    first = await wf.trigger("fid")
    await wf.pause(first, "wait")
    with pytest.raises(af.WorkflowInProgress):
        await wf.trigger("fid")
    await wf.cancel(first, "stop")
    second = await wf.trigger("fid")
    await wf.callback("fid", St.START, b"m")
    with pytest.raises(af.WorkflowInProgress):
        await wf.trigger("fid")
    await wf.callback("fid", St.MIDDLE, b"e")
    await wf.delete_data(second, "gdpr")
    third = await wf.trigger("fid")
    assert len({first, second, third}) == 3
    assert (await wf.latest("fid")).run_id == third
    runs = await wf.list_runs(foreign_id="fid")
    assert [r.run_state for r in runs] == [
        af.RunState.CANCELLED,
        af.RunState.DATA_DELETED,
        af.RunState.INITIATED,
    ]


def test_connector_construction() -> None:
    """TestConnectorConstruction: a connector is built with its name, function and options
    (max_concurrency, luno's ParallelCount, and error_backoff); it is one process of the
    workflow whatever its parallel count."""
    b = af.Builder("workflow X", Text, St)

    async def fn(workflow: Any, event: af.ConnectorEvent) -> None:
        return None

    @b.step(St.START, to=St.END)
    async def step(run: af.Run[Text, St]) -> St:
        return St.END

    b.add_connector(
        "my-test-connector",
        af.MemorySource([]),
        fn,
        max_concurrency=2,
        error_backoff=timedelta(hours=6),
    )
    wf = b.build(af.MemoryStore())
    assert "my-test-connector-connector-consumer" in wf.states()


async def test_with_parallel_count(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestWithParallelCount (and the acceptance test's ParallelCount(2)): a step runs at
    most max_concurrency runs at once; the others wait their turn and all finish."""
    b = af.Builder("parallel", Text, St)
    running: list[int] = [0, 0]  # now, most

    @b.step(St.START, to=St.END, max_concurrency=2)
    async def slow(run: af.Run[Text, St]) -> St:
        running[0] += 1
        running[1] = max(running)
        await trio.sleep(60)
        running[0] -= 1
        return St.END

    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        ids = [await wf.trigger(f"f{i}") for i in range(6)]
        for i, run_id in enumerate(ids):
            await wf.await_status(f"f{i}", run_id, St.END, timeout=10 * 60)
    assert running == [0, 2]


# --- runstate_internal_test.go: TestRunStateControllerTransitions ----------------------


async def _reach(wf: af.Workflow[Text, St], fid: str, state: af.RunState) -> str:
    """A stored run of ``wf`` (not running) in run state ``state``, through the public API."""
    run_id = await wf.trigger(fid)
    if state is af.RunState.INITIATED:
        return run_id
    if state in (af.RunState.PAUSED, af.RunState.RUNNING):
        await wf.pause(run_id, "to reach a state")
        if state is af.RunState.RUNNING:
            await wf.resume(run_id)
        return run_id
    if state is af.RunState.CANCELLED:
        await wf.cancel(run_id, "to reach a state")
        return run_id
    async with af.open_workflow(wf):
        await wf.await_status(fid, run_id, St.END, timeout=LIMIT)
        await wait_for(wf, fid, lambda r: r.run_state is af.RunState.COMPLETED)
    if state is af.RunState.DATA_DELETED:
        await wf.delete_data(run_id, "to reach a state")
    return run_id


_CONTROLS: dict[str, tuple[set[af.RunState], af.RunState]] = {
    # control -> (the run states it is legal from, the run state it ends in)
    "pause": ({af.RunState.INITIATED, af.RunState.RUNNING}, af.RunState.PAUSED),
    "resume": ({af.RunState.INITIATED, af.RunState.PAUSED}, af.RunState.RUNNING),
    "cancel": (
        {af.RunState.INITIATED, af.RunState.RUNNING, af.RunState.PAUSED},
        af.RunState.CANCELLED,
    ),
    "delete_data": (
        {af.RunState.COMPLETED, af.RunState.CANCELLED, af.RunState.DATA_DELETED},
        af.RunState.DATA_DELETED,
    ),
}


@pytest.mark.parametrize(
    "start",
    [
        af.RunState.INITIATED,
        af.RunState.RUNNING,
        af.RunState.PAUSED,
        af.RunState.CANCELLED,
        af.RunState.COMPLETED,
        af.RunState.DATA_DELETED,
    ],
    ids=lambda s: s.name,
)
async def test_run_state_controller_transitions(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock, start: af.RunState
) -> None:
    """TestRunStateControllerTransitions: from each run state, each control (pause, resume,
    cancel, delete_data) either makes its transition or raises InvalidTransition and stores
    nothing (resume is the move to RUNNING, so it is legal from INITIATED too, as in luno).
    API.md wins where luno differs: INITIATED -> CANCELLED is legal here (luno's
    controller refuses it)."""
    b = af.Builder("controller", Text, St)

    @b.step(St.START, to=St.END)
    async def step(run: af.Run[Text, St]) -> St:
        return St.END

    wf = b.build(make_store(), clock=clock)
    for n, (control, (legal_from, lands_in)) in enumerate(_CONTROLS.items()):
        fid = f"{start.name}-{n}"
        run_id = await _reach(wf, fid, start)
        before = await wf.lookup(run_id)
        assert before.run_state is start
        act = getattr(wf, control)
        args = (run_id,) if control == "resume" else (run_id, f"test {control}")
        if start in legal_from:
            await act(*args)
            after = await wf.lookup(run_id)
            assert after.run_state is lands_in, control
            assert after.version > before.version
        else:
            with pytest.raises(af.InvalidTransition):
                await act(*args)
            assert await wf.lookup(run_id) == before, control


# --- filter_test.go: TestMakeFilter -----------------------------------------------------


async def test_make_filter(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestMakeFilter: list_runs filters by one foreign id or several, by status and run
    state, and by creation time after and before; the filters combine (all must match) and
    count_runs counts what list_runs lists."""
    wf = two_steps("filters").build(make_store(), clock=clock)
    t0 = clock.now()
    first = await wf.trigger("first value")
    await trio.sleep(3600)
    t1 = clock.now()
    second = await wf.trigger("second value", St.MIDDLE)
    await trio.sleep(3600)
    t2 = clock.now()
    third = await wf.trigger("third value")
    await wf.pause(third, "filtered")

    def ids(records: list[af.Record[Text, St]]) -> list[str]:
        return [r.run_id for r in records]

    assert ids(await wf.list_runs(foreign_id="first value")) == [first]
    both = await wf.list_runs(foreign_id=["first value", "second value"])
    assert ids(both) == [first, second]
    assert ids(await wf.list_runs(status=St.START)) == [first, third]
    assert ids(await wf.list_runs(status=St.MIDDLE)) == [second]
    assert ids(await wf.list_runs(run_state=af.RunState.PAUSED)) == [third]
    assert ids(await wf.list_runs(run_state=af.RunState.INITIATED)) == [first, second]
    assert ids(await wf.list_runs(created_after=t1)) == [second, third]
    assert ids(await wf.list_runs(created_before=t1)) == [first]
    assert ids(await wf.list_runs(created_after=t0, created_before=t2)) == [first, second]
    window = {"created_after": t1, "created_before": t2 + timedelta(seconds=1)}
    assert ids(await wf.list_runs(status=St.START, **window)) == [third]
    assert ids(await wf.list_runs(foreign_id=["first value", "third value"], **window)) == [third]
    assert await wf.list_runs(status=St.END) == []
    counts = await wf.count_runs(foreign_id=["first value", "second value"])
    assert counts == {(St.START, af.RunState.INITIATED): 1, (St.MIDDLE, af.RunState.INITIATED): 1}


# --- run_internal_test.go: TestNewTestingRun --------------------------------------------


async def test_new_testing_run() -> None:
    """TestNewTestingRun: a run made for calling one function directly (no store, no
    workflow running) gives the special results a step may return, which can be checked."""
    b = two_steps("testing run")
    run = make_run(b, Text("test"), status=St.MIDDLE)
    assert run.status is St.MIDDLE and run.object == Text("test")

    async def pausing(r: af.Run[Text, St]) -> Any:
        return r.pause("out of stock")

    async def cancelling(r: af.Run[Text, St]) -> Any:
        return r.cancel("changed my mind")

    paused = await pausing(run)
    assert paused == run.pause("out of stock")
    assert paused != run.pause("another reason")
    assert paused != run.cancel("out of stock")
    assert paused.kind is Special.PAUSE and paused.reason == "out of stock"
    cancelled = await cancelling(run)
    assert cancelled == run.cancel("changed my mind")
    assert cancelled.kind is Special.CANCEL
    assert run.skip() == run.skip() and run.skip() != run.save_and_repeat()


# --- builder_internal_test.go: TestAddTimeoutErrBackOff, TestWithPauseAutoRetry ---------


async def test_add_timeout_err_back_off(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestAddTimeoutErrBackOff: a timeout's own error_backoff is the delay before a timeout
    function that failed is called again."""
    b = af.Builder("timeout backoff", Text, St)
    calls: list[datetime] = []

    async def expired(run: af.Run[Text, St], now: datetime) -> St:
        calls.append(clock.now())
        if len(calls) == 1:
            raise RuntimeError("test error")
        return St.END

    b.add_timeout(
        St.START,
        af.after(timedelta(hours=1)),
        expired,
        to=[St.END],
        error_backoff=timedelta(minutes=1),
    )
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        created = await wf.lookup(run_id)
        await wf.await_status("fid", run_id, St.END, timeout=3 * 3600)
    assert len(calls) == 2
    assert calls[0] - created.created_at >= timedelta(hours=1)
    assert timedelta(minutes=1) <= calls[1] - calls[0] < timedelta(minutes=2)


async def test_with_pause_auto_retry(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestWithPauseAutoRetry: resume_paused_after=1 minute resumes a paused run a minute
    after it was paused (not the default hour, and not sooner)."""
    wf = always_failing().build(make_store(), clock=clock, resume_paused_after=timedelta(minutes=1))
    async with af.open_workflow(wf):
        await wf.trigger("fid")
        paused = await wait_for(wf, "fid", lambda r: r.run_state is af.RunState.PAUSED)
        with trio.fail_after(600):
            resumed = await wait_for(wf, "fid", lambda r: r.version == paused.version + 1)
    assert resumed.run_state is af.RunState.RUNNING
    assert timedelta(minutes=1) <= resumed.updated_at - paused.updated_at < timedelta(minutes=2)


# --- adaptertest timeoutstore.go: "List timeouts", "Complete and Cancel timeouts" -------


async def test_timeout_store_complete_and_cancel(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """adaptertest RunTimeoutStoreTest: the timeouts of several runs are each kept until
    due; a timeout that fired is completed (never fires again, also after a restart) and
    the timeout of a run that moved on is cancelled (never fires)."""
    fired: list[datetime] = []
    store = make_store()
    wf = callback_or_timeout(store, clock, fired)
    fids = ["a", "b", "c"]
    async with af.open_workflow(wf):
        run_ids = {fid: await wf.trigger(fid) for fid in fids}
        for fid in fids:
            await await_timeout_insert(wf, fid, run_ids[fid], St.START)
        assert await wf.callback("b", St.START, b"") is not None
        for fid in ("a", "c"):
            await wf.await_status(fid, run_ids[fid], St.END, timeout=3 * 3600)
        await wf.await_status("b", run_ids["b"], St.END, timeout=LIMIT)
        await trio.sleep(3 * 3600)
    assert len(fired) == 2
    again = callback_or_timeout(make_store(), clock, fired)
    async with af.open_workflow(again):
        await trio.sleep(3 * 3600)
    assert len(fired) == 2
    for fid in fids:
        statuses = [r.status for r in await again.history(run_ids[fid])]
        assert statuses == ([St.START, St.MIDDLE, St.END] if fid == "b" else [St.START, St.END])


# --- _examples/connector: TestConnectStreamParallelConsumer -----------------------------


class Learning(enum.IntEnum):
    STARTED = 1
    READ_THE_DOCS = 2
    FOLLOWED_THE_EXAMPLE = 3
    CREATED_A_FUN_EXAMPLE = 4


async def test_connect_stream_parallel_consumer(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """_examples/connector TestConnectStreamParallelConsumer: an event from a connector's
    source triggers a run with the initial value the connector gives, and the run's step
    adds to it."""
    b = af.Builder("workflow B", GettingStarted, Learning)

    async def on_event(workflow: Any, event: af.ConnectorEvent) -> None:
        await workflow.trigger(event.foreign_id, initial=GettingStarted(read_the_docs="yes"))

    events = [
        af.ConnectorEvent(
            id="1",
            foreign_id="andrewwormald",
            type="",
            headers={},
            created_at=datetime(2024, 4, 9, tzinfo=UTC),
        )
    ]
    b.add_connector("my-example-connector", af.MemorySource(events), on_event)

    @b.step(Learning.STARTED, to=Learning.FOLLOWED_THE_EXAMPLE)
    async def follow(run: af.Run[GettingStarted, Learning]) -> Learning:
        run.object.follow_an_example = "yes"
        return Learning.FOLLOWED_THE_EXAMPLE

    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        await require(
            wf,
            "andrewwormald",
            Learning.FOLLOWED_THE_EXAMPLE,
            GettingStarted(read_the_docs="yes", follow_an_example="yes"),
        )


# --- _examples/sqlexample: TestSQLWorkflow, TestOrderValidation -------------------------


class OrderStatus(enum.IntEnum):
    CREATED = 1
    VALIDATED = 2
    PAYMENT_PROCESSED = 3
    FULFILLED = 4
    COMPLETED = 5
    REJECTED = 6


@attrs.define
class OrderItem:
    product_id: str = ""
    quantity: int = 0
    price: float = 0.0


@attrs.define
class Order:
    id: str = ""
    customer_name: str = ""
    email: str = ""
    items: list[OrderItem] = attrs.Factory(list)
    total: float = 0.0
    payment_id: str = ""
    tracking_id: str = ""


def order_workflow(store: af.Store, clock: af.Clock) -> af.Workflow[Order, OrderStatus]:
    b = af.Builder("order-processor", Order, OrderStatus)

    @b.step(OrderStatus.CREATED, to=[OrderStatus.VALIDATED, OrderStatus.REJECTED])
    async def validate(run: af.Run[Order, OrderStatus]) -> OrderStatus:
        o = run.object
        if o.customer_name and o.email and o.items and o.total > 0:
            return OrderStatus.VALIDATED
        return OrderStatus.REJECTED

    @b.step(OrderStatus.VALIDATED, to=OrderStatus.PAYMENT_PROCESSED)
    async def pay(run: af.Run[Order, OrderStatus]) -> OrderStatus:
        run.object.payment_id = f"PAY-{run.object.id}"
        return OrderStatus.PAYMENT_PROCESSED

    @b.step(OrderStatus.PAYMENT_PROCESSED, to=OrderStatus.FULFILLED)
    async def fulfil(run: af.Run[Order, OrderStatus]) -> OrderStatus:
        run.object.tracking_id = f"TRACK-{run.object.id}"
        return OrderStatus.FULFILLED

    @b.step(OrderStatus.FULFILLED, to=OrderStatus.COMPLETED)
    async def complete(run: af.Run[Order, OrderStatus]) -> OrderStatus:
        return OrderStatus.COMPLETED

    return b.build(store, clock=clock)


def _order(oid: str, **changes: Any) -> Order:
    fields: dict[str, Any] = {
        "customer_name": "John Doe",
        "email": "john@example.com",
        "items": [OrderItem("1", 1, 10.0)],
        "total": 10.0,
    }
    fields.update(changes)
    return Order(id=oid, **fields)


async def test_sql_workflow(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """_examples/sqlexample TestSQLWorkflow and TestOrderValidation: an order triggered with
    its initial value goes through validation, payment and fulfilment to COMPLETED, stored
    as one run; orders missing a name, an email or items, or with a total that is not
    positive, end REJECTED."""
    store = make_store()
    wf = order_workflow(store, clock)
    invalid = {
        "missing-name": _order("missing-name", customer_name=""),
        "missing-email": _order("missing-email", email=""),
        "no-items": _order("no-items", items=[], total=0.0),
        "negative": _order("negative", items=[OrderItem("1", 1, -10.0)], total=-10.0),
    }
    async with af.open_workflow(wf):
        run_id = await wf.trigger("test-order-123", initial=_order("test-order-123"))
        done = await wf.await_status("test-order-123", run_id, OrderStatus.COMPLETED, timeout=LIMIT)
        rejected = {}
        for oid, order in invalid.items():
            rid = await wf.trigger(oid, initial=order)
            rejected[oid] = await wf.await_status(oid, rid, OrderStatus.REJECTED, timeout=LIMIT)
    assert done.object.payment_id == "PAY-test-order-123"
    assert done.object.tracking_id == "TRACK-test-order-123"
    assert done.object.customer_name == "John Doe"
    runs = await wf.list_runs(foreign_id="test-order-123")
    assert [r.run_id for r in runs] == [run_id]
    assert runs[0].run_state is af.RunState.COMPLETED
    reopened = order_workflow(make_store(), clock)
    assert (await reopened.lookup(run_id)).object == done.object
    for oid, record in rejected.items():
        assert record.object == invalid[oid]
        assert (await wf.lookup(record.run_id)).run_state is af.RunState.COMPLETED


# --- builder_internal_test.go: TestWithStepLagAlert -------------------------------------


@pytest.mark.parametrize(
    ("lag_alert", "alert"),
    [(None, None), (timedelta(hours=9), 0.0), (timedelta(minutes=30), 1.0)],
    ids=["no-lag-alert", "over-consume-lag", "under-consume-lag"],
)
async def test_with_step_lag_alert(
    make_store: StoreMaker,
    clock: af.Clock,
    autojump_clock: MockClock,
    lag_alert: timedelta | None,
    alert: float | None,
) -> None:
    """TestWithStepLagAlert: a step's consume_lag alone raises no lag alert (the runs it
    takes up are at least that old by design); a lag_alert given with it is used as it is,
    not offset by the consume lag: under it the alert is raised, over it it is not."""
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    options: dict[str, Any] = {"consume_lag": timedelta(hours=1)}
    if lag_alert is not None:
        options["lag_alert"] = lag_alert
    b = af.Builder("example", Text, St)

    @b.step(St.START, to=St.END, **options)
    async def step(run: af.Run[Text, St]) -> St:
        return St.END

    wf = b.build(make_store(), clock=clock, metrics=registry)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        await wf.await_status("fid", run_id, St.END, timeout=2 * 3600)
        lag = sample(registry, "workflow_process_lag_seconds", process_name="start-consumer")
        assert lag is not None and 3600 <= lag < 3700
        got = sample(registry, "workflow_process_lag_alert", process_name="start-consumer")
    if alert is None:
        assert not got
    else:
        assert got == alert


# --- adapters/webui/internal/api: TestListHandler, TestUpdateHandler, TestObjectDataHandler
#
# luno's web UI lists runs, shows a run's object and pauses, resumes, cancels or deletes
# a run; actorflow serves the same over its gateway (API.md "Gateway"). Real time here: the
# websocket is real I/O.


@attrs.define
class ObjectData:
    name: str = ""
    email: str = ""


async def test_web_ui_handlers(make_store: StoreMaker) -> None:
    """TestListHandler, TestUpdateHandler, TestObjectDataHandler through the gateway: runs
    are listed in either order and by run state or foreign id, with their status names and
    run states; a run's object comes back as its fields; pause, resume, cancel and delete
    change the run state (an illegal one is refused with GatewayError)."""
    b = af.Builder("test", ObjectData, St)

    @b.step(St.START, to=St.END)
    async def step(run: af.Run[ObjectData, St]) -> St:
        return St.END

    wf = b.build(make_store())
    andrew = ObjectData("Andrew Wormald", "andrew@workflow.com")
    first = await wf.trigger("9", initial=andrew)
    second = await wf.trigger("10")
    await wf.cancel(second, "listed as cancelled")
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(af.serve_gateway, [wf], "127.0.0.1", 0))
            async with af.open_gateway_client(f"ws://127.0.0.1:{port}") as client:
                ascending = await client.list_runs("test", limit=5)
                assert [r["run_id"] for r in ascending] == [first, second]
                descending = await client.list_runs("test", limit=5, descending=True)
                assert [r["run_id"] for r in descending] == [second, first]
                item = ascending[0]
                assert (item["workflow_name"], item["foreign_id"]) == ("test", "9")
                assert (item["status"], item["status_name"]) == (St.START.value, "START")
                assert item["run_state"] == "INITIATED"
                cancelled = await client.list_runs("test", run_state=af.RunState.CANCELLED)
                assert [r["run_id"] for r in cancelled] == [second]
                assert [r["run_id"] for r in await client.list_runs("test", foreign_id="9")] == [
                    first
                ]

                assert (await client.lookup("test", first))["object"] == attrs.asdict(andrew)

                await client.pause("test", first, "pause")
                assert (await client.lookup("test", first))["run_state"] == "PAUSED"
                await client.resume("test", first)
                assert (await client.lookup("test", first))["run_state"] == "RUNNING"
                await client.cancel("test", first, "cancel")
                assert (await client.lookup("test", first))["run_state"] == "CANCELLED"
                with pytest.raises(af.GatewayError):
                    await client.resume("test", first)
                await client.delete_data("test", first, "delete")
                deleted = await client.lookup("test", first)
                assert deleted["run_state"] == "DATA_DELETED"
                assert deleted["object"] == attrs.asdict(ObjectData())
            nursery.cancel_scope.cancel()


# --- eventfilter_test.go: TestShardFilter, TestShardNonNumerical, TestConnectorShardFilter


async def test_connector_shard_filter(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """TestShardFilter, TestShardNonNumerical, TestConnectorShardFilter: a connector with a
    parallel count of 2 splits its events between its consumers, numeric ids and UUIDs
    alike, so that each event is handled exactly once and at most two at a time."""
    ids = [str(n) for n in range(1, 23)] + [str(uuid.uuid4()) for _ in range(20)]
    events = [
        af.ConnectorEvent(id=i, foreign_id=f"fid-{i}", type="", headers={}, created_at=START)
        for i in ids
    ]
    handled: list[str] = []
    active = [0, 0]  # now, peak

    async def on_event(workflow: Any, event: af.ConnectorEvent) -> None:
        active[0] += 1
        active[1] = max(active[1], active[0])
        await trio.sleep(1)
        active[0] -= 1
        handled.append(event.id)
        await workflow.trigger(event.foreign_id)

    b = two_steps("sharded")
    b.add_connector("sharded", af.MemorySource(events), on_event, max_concurrency=2)
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        await eventually(lambda: len(handled) >= len(ids))
        await trio.sleep(60)
        runs = await wf.list_runs(limit=100)
    assert sorted(handled) == sorted(ids)
    assert sorted(r.foreign_id for r in runs) == sorted(f"fid-{i}" for i in ids)
    assert active[1] == 2
    # Each shard's cursor is durable: a restart hands no event over again.
    again = b.build(make_store(), clock=clock)
    async with af.open_workflow(again):
        await trio.sleep(3600)
    assert len(handled) == len(ids)


# --- internal/cron/cron_test.go: TestParse, through schedule_trigger --------------------

CRON_BASE = datetime(2025, 1, 1, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("spec", "first"),
    [
        ("@daily", datetime(2025, 1, 2, tzinfo=UTC)),
        ("@hourly", datetime(2025, 1, 1, 11, tzinfo=UTC)),
        ("@weekly", datetime(2025, 1, 5, tzinfo=UTC)),
        ("@monthly", datetime(2025, 2, 1, tzinfo=UTC)),
        ("@yearly", datetime(2026, 1, 1, tzinfo=UTC)),
        ("* * * * *", datetime(2025, 1, 1, 10, 31, tzinfo=UTC)),
        ("15 * * * *", datetime(2025, 1, 1, 11, 15, tzinfo=UTC)),
        ("30 2 * * *", datetime(2025, 1, 2, 2, 30, tzinfo=UTC)),
        ("0 9 15 * *", datetime(2025, 1, 15, 9, tzinfo=UTC)),
        ("0 18 * * 5", datetime(2025, 1, 3, 18, tzinfo=UTC)),
        ("0 12 1 1 *", datetime(2025, 1, 1, 12, tzinfo=UTC)),
        ("0 0 ? * *", datetime(2025, 1, 2, tzinfo=UTC)),
        ("@midnight", datetime(2025, 1, 2, tzinfo=UTC)),
        ("@annually", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
async def test_cron_parse(
    make_store: StoreMaker, autojump_clock: MockClock, spec: str, first: datetime
) -> None:
    """TestParse: from 10:30 on 1 January 2025, each cron spec (the aliases API.md lists and
    standard 5-field expressions) first triggers at the next time it names."""
    clock = trio_clock(CRON_BASE - timedelta(seconds=trio.current_time()))
    wf = two_steps("cron").build(make_store(), clock=clock)
    async with af.open_workflow(wf), trio.open_nursery() as nursery:
        nursery.start_soon(wf.schedule_trigger, "cron", spec)
        with trio.fail_after(400 * 24 * 3600):
            record = await wait_for(wf, "cron", lambda r: True)
        nursery.cancel_scope.cancel()
    assert record.created_at == first


@pytest.mark.parametrize(
    "spec",
    [
        "@unknown",
        "* * *",
        "* * * * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * * 8",
        "",
    ],
)
async def test_cron_parse_invalid(autojump_clock: MockClock, clock: af.Clock, spec: str) -> None:
    """TestParse (invalid specs): an unknown alias, too few or too many fields, or a value
    out of range is refused when the schedule starts, and nothing is triggered."""
    wf = two_steps("cron").build(af.MemoryStore(), clock=clock)
    with trio.fail_after(LIMIT), pytest.raises(af.ActorflowError, match="cron"):
        await wf.schedule_trigger("cron", spec)
    assert await wf.list_runs() == []


# --- workflow_internal_test.go: Test_runOnce ("Retry process error", "Updates process state")


async def test_run_once_process_state(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """Test_runOnce "Retry process error that is not context.Canceled", "Updates process
    state": a step or connector whose work fails is retried, reported ERRORING while it
    backs off, and running (or idle) again once its work succeeds."""
    failing = {"step": 2, "connector": 2}
    b = af.Builder("process-1", Text, St)

    @b.step(St.START, to=St.END, error_backoff=timedelta(minutes=10))
    async def step(run: af.Run[Text, St]) -> St:
        if failing["step"]:
            failing["step"] -= 1
            raise RuntimeError("test error")
        return St.END

    async def on_event(workflow: Any, event: af.ConnectorEvent) -> None:
        if failing["connector"]:
            failing["connector"] -= 1
            raise RuntimeError("test error")

    event = af.ConnectorEvent(id="1", foreign_id="x", type="", headers={}, created_at=START)
    b.add_connector(
        "events", af.MemorySource([event]), on_event, error_backoff=timedelta(minutes=10)
    )
    wf = b.build(make_store(), clock=clock)
    up = (af.ProcessState.RUNNING, af.ProcessState.IDLE)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("fid")
        await eventually(lambda: failing["step"] == 1 and failing["connector"] == 1)
        assert wf.states()["start-consumer"] is af.ProcessState.ERRORING
        assert wf.states()["events-connector-consumer"] is af.ProcessState.ERRORING
        await wf.await_status("fid", run_id, St.END, timeout=3600)
        await eventually(lambda: failing["connector"] == 0)
        await trio.sleep(1)
        assert wf.states()["start-consumer"] in up
        assert wf.states()["events-connector-consumer"] in up
    assert wf.states()["start-consumer"] is af.ProcessState.STOPPED


# --- memstreamer, wredis, kafkastreamer TestConnector: RunConnectorTest on a stream ------


@on_streamers("memory")
async def test_run_connector_test_on_streamers(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock, streamer: str
) -> None:
    """RunConnectorTest (memstreamer, wredis and kafkastreamer TestConnector): events sent
    to a streamer's topic, consumed by a connector, each trigger a run that completes; a
    restart hands none over again (the consumer's position is durable). Not the store-log
    streamer: its topics are the store's own transitions, and its sender sends nothing."""
    store = make_store()
    stream = _streamer(streamer, store)
    topic = "connector-test"
    async with stream.open_sender(topic) as sender:
        for event in connector_events():
            await sender.send(event)
    wf = connector_workflow(store, clock, StreamSource(stream, topic))
    async with af.open_workflow(wf):
        for event in connector_events():
            await require(wf, event.foreign_id, St.END, TypeX("workflow step set value"))
    again = connector_workflow(make_store(), clock, StreamSource(stream, topic))
    async with af.open_workflow(again):
        await trio.sleep(3600)
        await trio.to_thread.run_sync(time.sleep, 2)  # real time, for Kafka's group join
        await trio.sleep(3600)
    for event in connector_events():
        assert len(await again.list_runs(foreign_id=event.foreign_id)) == 1
