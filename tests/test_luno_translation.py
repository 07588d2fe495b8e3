"""luno/workflow's own test suite, translated to actorflow's public API (API.md).

Each test is named after the Go test it translates (its name is in the docstring). The
tests are written from what the Go tests check, not from their code: where luno checks an
internal function (a consumer, the updater, a store adapter), the test here checks the same
behaviour through the public API. Every test runs on MemoryStore and SQLiteStore (the
``make_store`` fixture) under the autojump clock, so hours of timeouts cost nothing.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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
from tests.conftest import StoreMaker

LIMIT = 60  # seconds of virtual time any wait may take before the test fails


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


def connector_workflow(store: af.Store, clock: af.Clock) -> af.Workflow[TypeX, St]:
    b = af.Builder("workflow", TypeX, St)

    async def on_event(workflow: Any, event: af.ConnectorEvent) -> None:
        await workflow.trigger(event.foreign_id, initial=TypeX("trigger set value"))

    b.add_connector("my-test-connector", af.MemorySource(connector_events()), on_event)

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
