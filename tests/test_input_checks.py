"""Text and numbers at the library boundary, on every store alike (issue #13, items 4-6).

A lone surrogate cannot be written as UTF-8 and NaN/infinity is not JSON: both are refused
where they enter (the Workflow methods, the object codec), never stored to fail every
later read. These run against MemoryStore, SQLiteStore and PostgresStore.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

import actorflow as af
from actorflow._model.codec import structure_json
from actorflow.stores import Store
from actorflow.testing import wait_for
from tests.stores.conftest import PG_DSN, PG_SKIP_REASON, STORE_FACTORIES

BAD = "lone \ud800 surrogate"


class Status(enum.IntEnum):
    STARTED = 1
    DONE = 2


@attrs.define
class Obj:
    amount: float = 0.0
    note: str = ""
    tags: list[str] = attrs.Factory(list)


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "postgres":
        request.node.add_marker(pytest.mark.postgres)
        if not PG_DSN:
            pytest.skip(PG_SKIP_REASON)
    made = await STORE_FACTORIES[request.param](tmp_path)
    try:
        yield made
    finally:
        await made.aclose()


def build(store: Store, clock: af.Clock, set_to: object = None) -> af.Workflow[Obj, Status]:
    builder = af.Builder("checks", Obj, Status)

    @builder.step(Status.STARTED, to=Status.DONE, pause_after_errors=1)
    async def start(run: af.Run[Obj, Status]) -> Status:
        if isinstance(set_to, float):
            run.object.amount = set_to
        elif isinstance(set_to, str):
            run.object.note = set_to
        return Status.DONE

    return builder.build(store, clock=clock)


async def test_invalid_text_is_invalid_argument_on_every_store(store: Store) -> None:
    wf = build(store, af.SystemClock())
    run_id = await wf.trigger("f1")
    calls = [
        wf.trigger(BAD),
        wf.trigger("f2", initial=Obj(note=BAD)),
        wf.trigger("f3", initial=Obj(tags=["ok", BAD])),
        wf.lookup(BAD),
        wf.latest(BAD),
        wf.history(BAD),
        wf.list_runs(foreign_id=BAD),
        wf.list_runs(after=BAD),
        wf.await_status(BAD, run_id, Status.DONE, timeout=1),
        wf.await_status("f1", BAD, Status.DONE, timeout=1),
        wf.callback(BAD, Status.STARTED, b"x"),
        wf.pause(run_id, BAD),
        wf.cancel(run_id, BAD),
        wf.pause(BAD),
    ]
    for call in calls:
        with pytest.raises(af.InvalidArgument, match="not valid Unicode"):
            await call
    with pytest.raises(af.InvalidArgument, match="not valid Unicode"):
        async with wf.subscribe(foreign_id=BAD):
            pass
    # Nothing was stored: every read still works.
    assert [r.foreign_id for r in await wf.list_runs()] == ["f1"]
    assert (await wf.lookup(run_id)).object == Obj()


async def test_non_finite_numbers_are_refused_on_every_store(store: Store) -> None:
    wf = build(store, af.SystemClock())
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(af.InvalidArgument, match=r"object\.amount is not a finite number"):
            await wf.trigger("f1", initial=Obj(amount=value))
    assert await wf.list_runs() == []


@pytest.mark.parametrize("set_to", [math.nan, math.inf, BAD])
async def test_a_step_that_stores_nan_or_invalid_text_is_a_step_error(
    store: Store, set_to: object
) -> None:
    wf = build(store, af.SystemClock(), set_to)  # pauses at the first error: no waiting
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f1")
        with trio.fail_after(10):
            paused = await wait_for(wf, "f1", lambda r: r.run_state is af.RunState.PAUSED)
    assert paused.status is Status.STARTED
    assert paused.meta.error_count == 1
    assert "SerializationError" in paused.meta.error_message
    assert "not a finite number" in paused.meta.error_message or (
        "not valid Unicode" in paused.meta.error_message
    )
    # Every version is readable, on every store.
    assert [r.object for r in await wf.history(run_id)] == [Obj(), Obj()]
    assert len(await wf.list_runs()) == 1


async def test_a_reason_or_error_made_of_invalid_text_is_stored_readable(store: Store) -> None:
    builder = af.Builder("reasons", Obj, Status)

    @builder.step(Status.STARTED, to=Status.DONE, pause_after_errors=1)
    async def start(run: af.Run[Obj, Status]) -> Status:
        if run.object.note:
            return run.pause(f"user reason {BAD}")
        raise ValueError(f"user error {BAD}")

    wf = builder.build(store)
    async with af.open_workflow(wf):
        await wf.trigger("f1")
        await wf.trigger("f2", initial=Obj(note="pause"))
        with trio.fail_after(10):
            first = await wait_for(wf, "f1", lambda r: r.run_state is af.RunState.PAUSED)
            second = await wait_for(wf, "f2", lambda r: r.run_state is af.RunState.PAUSED)
    assert "user error lone ? surrogate" in first.meta.error_message
    assert second.meta.run_state_reason == "user reason lone ? surrogate"


def test_builder_refuses_names_of_invalid_text() -> None:
    with pytest.raises(af.BuildError, match="valid text"):
        af.Builder(BAD, Obj, Status)
    builder = af.Builder("ok", Obj, Status)
    with pytest.raises(af.BuildError, match="valid text"):
        builder.add_connector(BAD, af.MemorySource([]), _connector)


async def _connector(workflow: af.Workflow[Obj, Status], event: af.ConnectorEvent) -> None:
    pass


def test_json_from_outside_is_structured_strictly() -> None:
    assert structure_json({"amount": 1, "tags": ["a"]}, Obj, "initial") == Obj(1.0, "", ["a"])
    cases = {
        "initial.note": {"note": 5},
        "initial.amount": {"amount": "1.5"},
        "initial.tags": {"tags": "abc"},
        "initial.tags[1]": {"tags": ["a", 2]},
        "extra fields found (colour) @ initial": {"colour": "red"},
    }
    for path, data in cases.items():
        with pytest.raises(af.InvalidArgument, match=re.escape(path)):
            structure_json(data, Obj, "initial")
    with pytest.raises(af.InvalidArgument, match=r"initial\.amount is not a finite number"):
        structure_json({"amount": math.inf}, Obj, "initial")
    with pytest.raises(af.InvalidArgument, match=r"initial.tags\[0\] is not valid Unicode"):
        structure_json({"tags": [BAD]}, Obj, "initial")
    with pytest.raises(af.InvalidArgument, match="must be a JSON object"):
        structure_json(["x"], Obj, "initial")
