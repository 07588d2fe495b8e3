"""Hostile input found by probing the re-layered gateway and stores: each case got a bare
``internal`` reply (or a StoreError on one store only) before its fix.

- a JSON integer too large for a float as ``timeout`` (OverflowError in the check);
- ``created_after``/``created_before`` with an offset that pushes them out of the years
  1-9999 in UTC (OverflowError in the stores);
- a NUL character in a foreign id, run id, filter or reason: SQLite and MemoryStore took
  it, PostgreSQL refused it with a StoreError; now refused alike on every store, and a NUL
  in a reason or error message made by user code is stored as ``?``.
"""

from __future__ import annotations

import enum
import json
import os
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import actorflow as af
from tests.gateway.test_gateway import LIMIT, error_of, exchange, raw_at
from tests.gateway.test_gateway import url as url
from tests.gateway.test_gateway import workflow as workflow

BIG = "1" + "0" * 400  # a JSON integer no float can hold

HOSTILE: list[tuple[dict[str, Any] | str, str]] = [
    (
        '{"id": 1, "op": "await_status", "workflow": "yinyang", "foreign_id": "f", '
        f'"run_id": "r", "status": 2, "timeout": {BIG}}}',
        "invalid_argument",
    ),
    (
        {"op": "list_runs", "workflow": "yinyang", "created_after": "9999-12-31T23:59:59-23:59"},
        "invalid_argument",
    ),
    (
        {"op": "list_runs", "workflow": "yinyang", "created_before": "0001-01-01T00:00:00+23:59"},
        "invalid_argument",
    ),
    (
        {"op": "count_runs", "workflow": "yinyang", "created_after": "9999-12-31T23:59:59-01:00"},
        "invalid_argument",
    ),
    ({"op": "trigger", "workflow": "yinyang", "foreign_id": "a\x00b"}, "invalid_argument"),
    ({"op": "lookup", "workflow": "yinyang", "run_id": "\x00"}, "invalid_argument"),
    ({"op": "list_runs", "workflow": "yinyang", "foreign_id": ["ok", "\x00"]}, "invalid_argument"),
    ({"op": "pause", "workflow": "yinyang", "run_id": "r", "reason": "\x00"}, "invalid_argument"),
]


@pytest.mark.parametrize("message", range(len(HOSTILE)))
async def test_hostile_numbers_dates_and_nul_get_invalid_argument(url: str, message: int) -> None:
    data, code = HOSTILE[message]
    text = data if isinstance(data, str) else json.dumps({"id": 1, **data})
    with trio.fail_after(LIMIT):
        async with raw_at(url) as ws:
            assert error_of(await exchange(ws, text)) == code
            assert await exchange(ws, '{"id": 2, "op": "ping"}') == {
                "id": 2,
                "ok": True,
                "result": "pong",
            }


class Stage(enum.IntEnum):
    OPEN = 1
    DONE = 2


@attrs.define
class Note:
    text: str = ""


def _note_workflow(store: af.Store) -> af.Workflow[Note, Stage]:
    builder = af.Builder("notes", Note, Stage)

    @builder.step(Stage.OPEN, to=Stage.DONE)
    async def step(run: af.Run[Note, Stage]) -> Any:
        if run.object.text == "pause":
            return run.pause("why\x00not")
        run.object.text = "inside\x00the object is fine"
        return Stage.DONE

    return builder.build(store)


async def _stores(tmp_path: Path) -> list[af.Store]:
    stores: list[af.Store] = [af.MemoryStore(), af.SQLiteStore(tmp_path / "nul.db")]
    dsn = os.environ.get("ACTORFLOW_PG_DSN")
    if dsn:
        schema = f"af_test_{uuid.uuid4().hex[:16]}"
        stores.append(af.PostgresStore(dsn, schema=schema, drop_schema_on_close=True))
    return stores


async def _nul_checks(wf: af.Workflow[Note, Stage]) -> None:
    run_id = await wf.trigger("plain")
    done = await wf.await_status("plain", run_id, Stage.DONE)
    assert done.object.text == "inside\x00the object is fine"
    async with wf.subscribe(foreign_id="paused") as changes:
        paused_id = await wf.trigger("paused", initial=Note("pause"))
        async for record in changes:
            if record.run_state is af.RunState.PAUSED:
                break
    assert (await wf.lookup(paused_id)).meta.run_state_reason == "why?not"
    calls = (
        lambda: wf.trigger("a\x00b"),
        lambda: wf.lookup("a\x00b"),
        lambda: wf.latest("a\x00b"),
        lambda: wf.list_runs(foreign_id_prefix="\x00"),
        lambda: wf.resume(paused_id, "re\x00ason"),
    )
    for call in calls:
        with pytest.raises(af.InvalidArgument, match="NUL"):
            await call()


async def test_nul_is_refused_in_ids_and_reasons_and_replaced_in_user_reasons(
    tmp_path: Path,
) -> None:
    for store in await _stores(tmp_path):
        wf = _note_workflow(store)
        try:
            with trio.fail_after(3 * LIMIT):
                async with trio.open_nursery() as nursery:
                    await nursery.start(wf.run)
                    await _nul_checks(wf)
                    nursery.cancel_scope.cancel()
        finally:
            await store.aclose()


async def test_filter_dates_outside_utc_years_and_huge_timeouts_are_invalid_argument() -> None:
    wf = _note_workflow(af.MemoryStore())
    late = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(-timedelta(hours=5)))
    early = datetime(1, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=5)))
    with pytest.raises(af.InvalidArgument, match="created_after"):
        await wf.list_runs(created_after=late)
    with pytest.raises(af.InvalidArgument, match="created_before"):
        await wf.count_runs(created_before=early)
    assert await wf.list_runs(created_after=datetime(9999, 12, 31, tzinfo=UTC)) == []
    for timeout in (10**400, float("nan"), -1):
        with pytest.raises(af.InvalidArgument, match="timeout"):
            await wf.await_status("f", "r", Stage.DONE, timeout=timeout)


async def test_list_runs_arguments_of_the_wrong_type_are_invalid_argument_on_every_store(
    tmp_path: Path,
) -> None:
    # after=5 was a StoreError on PostgreSQL (RunNotFound elsewhere); status=1.5 a TypeError.
    for store in await _stores(tmp_path):
        wf = _note_workflow(store)
        try:
            for bad in ({"after": 5}, {"after": ""}, {"status": 1.5}, {"status": object()}):
                with pytest.raises(af.InvalidArgument):
                    await wf.list_runs(**bad)
            with pytest.raises(af.InvalidArgument):
                await wf.count_runs(status=1.5)  # type: ignore[arg-type]
        finally:
            await store.aclose()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("port", 70000),  # trio bound port 4464 (70000 % 65536) without a word
        ("port", -1),
        ("port", "8765"),
        ("host", ""),
        ("rate", 10**400),  # OverflowError
        ("rate", True),
        ("handshake_timeout", float("inf")),
    ],
)
async def test_serve_gateway_refuses_ports_and_numbers_it_cannot_use(
    option: str, value: object
) -> None:
    wf = _note_workflow(af.MemoryStore())
    with pytest.raises(af.InvalidArgument, match=option):
        await af.serve_gateway([wf], **{option: value})
