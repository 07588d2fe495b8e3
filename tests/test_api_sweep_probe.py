"""A line-by-line sweep of /work/shared/API.md against the package, as an outside tester.

Each test is a gap the earlier probes (test_acceptance_probe, test_input_checks,
test_adversarial_probe, ...) left open and that was a defect: bad input of a public name
must give a clear actorflow error (never a bare TypeError/AttributeError from deep inside,
never silent acceptance), and an option that does nothing for a kind of function is a
BuildError. MemoryStore and SQLiteStore where a store is involved; the autojump clock for
anything with time.
"""

from __future__ import annotations

import enum
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import await_timeout_insert, make_run
from tests.conftest import StoreMaker


class Status(enum.IntEnum):
    STARTED = 1
    WAITING = 2
    DONE = 3


@attrs.define
class Obj:
    n: int = 0


def build(
    store: af.Store, clock: af.Clock, *, step_result: Any = None, **options: Any
) -> af.Workflow[Obj, Status]:
    """STARTED -(step)-> WAITING -(callback or 1 h timeout)-> DONE."""
    builder = af.Builder("sweep", Obj, Status)

    @builder.step(Status.STARTED, to=Status.WAITING, **options)
    async def start(run: af.Run[Obj, Status]) -> Status:
        if step_result is not None:
            return step_result(run)  # type: ignore[no-any-return]
        return Status.WAITING

    async def paid(run: af.Run[Obj, Status], payload: bytes) -> Status:
        return Status.DONE

    async def expired(run: af.Run[Obj, Status], now: Any) -> Status:
        return Status.DONE

    builder.add_callback(Status.WAITING, paid, to=[Status.DONE])
    builder.add_timeout(Status.WAITING, af.after(timedelta(hours=1)), expired, to=[Status.DONE])
    return builder.build(store, clock=clock)


# --- Builder: an option that has no effect is a BuildError ---------------------------------


def test_lag_alert_on_a_timeout_is_a_build_error() -> None:
    """API.md: lag_alert is a per step/connector option, and build raises BuildError for
    "an option that has no effect for that kind of function". A timeout fires when its
    timer says: it has no lag to alert on (its process never had a threshold)."""
    builder = af.Builder("lagging", Obj, Status)

    async def expired(run: af.Run[Obj, Status], now: Any) -> Status:
        return Status.DONE

    with pytest.raises(af.BuildError, match="lag_alert has no effect on a timeout"):
        builder.add_timeout(
            Status.STARTED,
            af.after(timedelta(hours=1)),
            expired,
            to=Status.DONE,
            lag_alert=timedelta(minutes=5),
        )


def test_lag_alert_in_default_options_still_builds_with_timeouts() -> None:
    """default_options may hold any option: each kind of function takes the ones that
    apply to it (docs/configuration.md), so a default lag_alert is no error."""
    built = build(af.MemoryStore(), af.SystemClock(), lag_alert=timedelta(minutes=1))  # on the step
    assert built.name == "sweep"
    builder = af.Builder("defaults", Obj, Status)

    async def expired(run: af.Run[Obj, Status], now: Any) -> Status:
        return Status.DONE

    builder.add_timeout(Status.STARTED, af.after(timedelta(hours=1)), expired, to=Status.DONE)
    builder.build(af.MemoryStore(), default_options={"lag_alert": timedelta(minutes=1)})


# --- list_runs / count_runs: a bool is not a run state --------------------------------------


@pytest.mark.parametrize("run_state", [True, False, [True], (af.RunState.RUNNING, False)])
async def test_a_bool_run_state_filter_is_invalid_argument(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock, run_state: Any
) -> None:
    """``RunState(True)`` is INITIATED: a bool given where a run state is wanted was
    silently read as one (list_runs(run_state=True) listed the INITIATED runs)."""
    wf = build(make_store(), clock)
    await wf.trigger("f1")  # INITIATED: what True used to match
    with pytest.raises(af.InvalidArgument, match=r"run_state must be an af\.RunState"):
        await wf.list_runs(run_state=run_state)
    with pytest.raises(af.InvalidArgument, match=r"run_state must be an af\.RunState"):
        await wf.count_runs(run_state=run_state)
    # Members and their int values still work.
    assert len(await wf.list_runs(run_state=af.RunState.INITIATED)) == 1
    assert len(await wf.list_runs(run_state=[1, af.RunState.RUNNING])) == 1


# --- run.pause / run.cancel: the reason is a string ------------------------------------------


def test_run_pause_and_cancel_refuse_a_reason_that_is_not_a_string() -> None:
    """A non-string reason failed later, when the version was stored, with ``TypeError:
    argument of type 'int' is not iterable`` from deep inside; it is an InvalidArgument
    where the step makes the call."""
    run = make_run(build(af.MemoryStore(), af.SystemClock()), Obj())
    for special in (run.pause, run.cancel):
        with pytest.raises(af.InvalidArgument, match=r"reason must be a string, not 123"):
            special(123)  # type: ignore[arg-type]
        with pytest.raises(af.InvalidArgument, match="reason must be a string"):
            special(None)  # type: ignore[arg-type]
    assert run.pause("out of stock") == run.pause("out of stock")
    assert run.cancel() == run.cancel("")


async def test_a_step_pausing_with_a_bad_reason_counts_a_clear_error(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """Inside a running workflow the InvalidArgument is the step's error: counted, backed
    off, and the run is paused after pause_after_errors with a message that says why."""
    wf = build(make_store(), clock, step_result=lambda run: run.pause(123), pause_after_errors=2)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f1")
        await trio.sleep(60)
        record = await wf.lookup(run_id)
    assert record.run_state is af.RunState.PAUSED
    assert record.status is Status.STARTED
    assert "paused after 2 consecutive errors" in record.meta.run_state_reason
    assert "reason must be a string" in record.meta.error_message
    assert "TypeError" not in record.meta.error_message


# --- actorflow.testing.await_timeout_insert ---------------------------------------------------


async def test_await_timeout_insert_for_a_status_without_a_timeout_is_invalid_argument(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """STARTED has no timeout, so no timeout of it is ever stored: the helper waited
    forever (a hung test) instead of saying so."""
    wf = build(make_store(), clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f1")
        with trio.fail_after(5), pytest.raises(af.InvalidArgument, match="has no timeout"):
            await await_timeout_insert(wf, "f1", run_id, Status.STARTED)
        with trio.fail_after(5), pytest.raises(af.InvalidArgument, match="status must be"):
            await await_timeout_insert(wf, "f1", run_id, 99)  # type: ignore[arg-type]
        with trio.fail_after(5):  # WAITING has one: found once stored
            await await_timeout_insert(wf, "f1", run_id, Status.WAITING)


async def test_await_timeout_insert_returns_when_the_timeout_already_fired(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """A timer in the past fires at once and its row is deleted with the transition: a
    test that then waits for the timeout to be stored waited for ever (it was, and it is
    gone; on PostgreSQL this happened even right after the trigger)."""
    builder = af.Builder("past", Obj, Status)

    async def expired(run: af.Run[Obj, Status], now: Any) -> Status:
        return Status.DONE

    builder.add_timeout(
        Status.STARTED, af.at(datetime(2000, 1, 1, tzinfo=UTC)), expired, to=Status.DONE
    )
    wf = builder.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f1")
        await wf.await_status("f1", run_id, Status.DONE)
        with trio.fail_after(5):
            await await_timeout_insert(wf, "f1", run_id, Status.STARTED)


# --- open_workflow, MemorySource, store constructors ------------------------------------------


@pytest.mark.parametrize("bad", [1, None, "sweep", af.MemoryStore()])
def test_open_workflow_refuses_what_is_not_a_workflow(bad: Any) -> None:
    """``af.open_workflow(1)`` made a context manager that failed on entry with an
    AttributeError from inside a nursery."""
    wf = build(af.MemoryStore(), af.SystemClock())
    with pytest.raises(af.InvalidArgument, match="open_workflow takes built workflows"):
        af.open_workflow(bad)
    with pytest.raises(af.InvalidArgument, match="open_workflow takes built workflows"):
        af.open_workflow(wf, bad)


@pytest.mark.parametrize("bad", [None, 5, "events", {"id": "1"}])
def test_memory_source_refuses_what_is_not_an_iterable_of_events(bad: Any) -> None:
    """``af.MemorySource(None)`` raised ``TypeError: 'NoneType' object is not iterable``; a
    string or a mapping was taken item by item."""
    with pytest.raises(af.InvalidArgument, match="MemorySource takes an iterable"):
        af.MemorySource(bad)
    assert af.MemorySource().events == []
    assert af.MemorySource([]).events == []


@pytest.mark.parametrize("bad", [None, 123, 1.5, ["actorflow.db"]])
def test_sqlite_store_refuses_a_path_that_is_not_text(bad: Any) -> None:
    """A path that is not a str or os.PathLike raised os.fspath's TypeError."""
    with pytest.raises(af.InvalidArgument, match="SQLiteStore needs the path"):
        af.SQLiteStore(bad)


async def test_sqlite_store_takes_a_str_or_a_path(tmp_path: Path) -> None:
    for path in (tmp_path / "a.db", str(tmp_path / "b.db")):
        store = af.SQLiteStore(path)
        await store.aclose()


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((None,), {}, "needs a DSN string"),
        ((1,), {}, "needs a DSN string"),
        ((b"postgresql://x",), {}, "needs a DSN string"),
        (("postgresql://x",), {"pool_size": True}, "pool_size"),
        (("postgresql://x",), {"connect_timeout": math.nan}, "connect_timeout"),
        (("postgresql://x",), {"connect_timeout": math.inf}, "connect_timeout"),
        (("postgresql://x",), {"connect_timeout": "5"}, "connect_timeout"),
        (("postgresql://x",), {"connect_timeout": 0}, "connect_timeout"),
        (("postgresql://x",), {"retry_timeout": -1.0}, "retry_timeout"),
        (("postgresql://x",), {"retry_timeout": True}, "retry_timeout"),
        (("postgresql://x",), {"drop_schema_on_close": "yes"}, "drop_schema_on_close"),
    ],
)
def test_postgres_store_refuses_bad_arguments_up_front(
    args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    """``af.PostgresStore(None)`` raised ``AttributeError: 'NoneType' object has no
    attribute 'encode'``, and a NaN connect_timeout a ValueError from ``round``; both are
    InvalidArgument before anything connects."""
    pytest.importorskip("psycopg")
    with pytest.raises(af.InvalidArgument, match=match):
        af.PostgresStore(*args, **kwargs)


def test_postgres_store_constructs_with_good_arguments_without_connecting() -> None:
    pytest.importorskip("psycopg")
    store = af.PostgresStore(
        "postgresql://nobody@127.0.0.1:1/none", pool_size=2, connect_timeout=1, retry_timeout=0.5
    )
    assert store.schema == "actorflow"


# --- build options ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [5, "shards", object()])
def test_an_ownership_that_is_not_one_is_a_build_error(bad: Any) -> None:
    """``build(store, ownership=5)`` was accepted; ``run`` then failed with
    ``AttributeError: 'int' object has no attribute 'serve'`` inside the supervisor."""
    builder = af.Builder("owned", Obj, Status)

    @builder.step(Status.STARTED, to=Status.DONE)
    async def start(run: af.Run[Obj, Status]) -> Status:
        return Status.DONE

    with pytest.raises(af.BuildError, match="ownership must be an Ownership"):
        builder.build(af.MemoryStore(), ownership=bad)


# --- serve_gateway / serve_console take a list of workflows --------------------------------------


@pytest.mark.parametrize("server", ["serve_gateway", "serve_console"])
@pytest.mark.parametrize("given", ["one workflow", 5, None])
async def test_servers_refuse_what_is_not_a_list_of_workflows(server: str, given: str) -> None:
    """``af.serve_gateway(workflow, ...)`` (one workflow where API.md has ``[workflows]``)
    failed with ``TypeError: 'Workflow' object is not iterable``."""
    wf = build(af.MemoryStore(), af.SystemClock())
    workflows: Any = wf if given == "one workflow" else given
    serve = getattr(af, server)
    with pytest.raises(af.InvalidArgument, match=f"{server} takes a list of workflows"):
        await serve(workflows, "127.0.0.1", 0)  # refused before it binds


# --- af.at: an instant beyond datetime's range in UTC ---------------------------------------------


@pytest.mark.parametrize(
    "when",
    [
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-14))),
        datetime.min.replace(tzinfo=timezone(timedelta(hours=14))),
    ],
)
def test_at_an_instant_outside_the_years_1_to_9999_in_utc_says_so(when: datetime) -> None:
    """``af.at(9999-12-31T23:59-14:00)`` raised a BuildError whose whole message was
    Python's "date value out of range"."""
    with pytest.raises(af.BuildError, match=r"at\(\) .* is not within the years 1-9999 in UTC"):
        af.at(when)


# --- graph(): Mermaid ids for any status name ----------------------------------------------------


def test_graph_gives_statuses_whose_names_are_not_identifiers_a_mermaid_id() -> None:
    """Names from the functional enum API may hold spaces or quotes; ``graph()`` wrote
    them as state ids (``in progress --> done``), which is not Mermaid. They get an id and
    a label now; plain names are written as before."""
    named = enum.IntEnum("named", {"in progress": 1, 'done "ok"': 2, "status_2": 3, "PLAIN": 4})
    builder = af.Builder("graphs", Obj, named)

    async def step(run: af.Run[Obj, Any]) -> Any:
        return named["PLAIN"]

    async def paid(run: af.Run[Obj, Any], payload: bytes) -> Any:
        return named["status_2"]

    builder.add_step(named["in progress"], step, to=[named['done "ok"'], named["PLAIN"]])
    builder.add_callback(named["PLAIN"], paid, to=named["status_2"])
    lines = builder.build(af.MemoryStore()).graph().splitlines()
    assert lines[:2] == ["stateDiagram-v2", "    direction LR"]
    assert '    state "in progress" as status_1' in lines
    assert '    state "done #quot;ok#quot;" as status_2_' in lines  # status_2 is taken
    assert "    [*] --> status_1" in lines
    assert "    status_1 --> status_2_" in lines
    assert "    status_1 --> PLAIN" in lines
    assert "    PLAIN --> status_2: callback" in lines
    assert "    status_2 --> [*]" in lines
    for line in lines[2:]:
        if not line.lstrip().startswith("state "):
            assert " " not in line.strip().split(" --> ")[0], line
