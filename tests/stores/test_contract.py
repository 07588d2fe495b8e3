"""The store contract: every store must pass all of this unchanged."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
import trio

import actorflow as af
from actorflow._model.record import Meta, RawRecord, Timer
from actorflow.stores import Store
from actorflow.stores.filters import RunFilter

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def raw(
    foreign_id: str = "f1",
    *,
    workflow: str = "wf",
    status: int = 1,
    state: af.RunState = af.RunState.INITIATED,
    obj: str = '{"n": 0}',
) -> RawRecord:
    return RawRecord(
        workflow_name=workflow,
        foreign_id=foreign_id,
        run_id=uuid.uuid4().hex,
        status=status,
        run_state=state,
        object=obj,
        version=1,
        created_at=T0,
        updated_at=T0,
        meta=Meta(status_description="ONE"),
    )


def nxt(record: RawRecord, **changes: object) -> RawRecord:
    return attrs.evolve(
        record,
        version=record.version + 1,
        updated_at=record.updated_at + timedelta(seconds=1),
        **changes,  # type: ignore[arg-type]
    )


async def test_create_lookup_latest_history(store: Store) -> None:
    first = await store.create_run(raw())
    assert await store.lookup("wf", first.run_id) == first
    assert await store.latest("wf", "f1") == first
    assert await store.history("wf", first.run_id) == [first]


async def test_record_round_trips_every_field(store: Store) -> None:
    record = attrs.evolve(
        raw("ü-ß/ 1"),
        object='{"text": "héllo \\n", "n": 12345678901234}',
        meta=Meta("why", "ONE", 3, "boom"),
        created_at=datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
        updated_at=datetime(2026, 3, 4, 5, 6, 8, 12, tzinfo=UTC),
    )
    await store.create_run(record)
    got = await store.lookup("wf", record.run_id)
    assert got == record
    assert got.created_at.tzinfo is not None


async def test_unknown_runs_raise_run_not_found(store: Store) -> None:
    with pytest.raises(af.RunNotFound):
        await store.lookup("wf", "nope")
    with pytest.raises(af.RunNotFound):
        await store.latest("wf", "nope")
    with pytest.raises(af.RunNotFound):
        await store.history("wf", "nope")
    with pytest.raises(af.RunNotFound):
        await store.commit(nxt(raw()))


async def test_workflows_are_isolated(store: Store) -> None:
    a = await store.create_run(raw(workflow="a"))
    await store.create_run(raw(workflow="b"))  # same foreign id, other workflow: allowed
    with pytest.raises(af.RunNotFound):
        await store.lookup("b", a.run_id)
    assert [r.run_id for r in await store.list_runs("a")] == [a.run_id]


async def test_trigger_refused_while_latest_run_unfinished(store: Store) -> None:
    first = await store.create_run(raw())
    with pytest.raises(af.WorkflowInProgress):
        await store.create_run(raw())
    paused = await store.commit(nxt(first, run_state=af.RunState.PAUSED))
    with pytest.raises(af.WorkflowInProgress):
        await store.create_run(raw())
    done = await store.commit(nxt(paused, run_state=af.RunState.CANCELLED))
    second = await store.create_run(raw())
    assert (await store.latest("wf", "f1")).run_id == second.run_id
    assert (await store.lookup("wf", done.run_id)).run_state == af.RunState.CANCELLED


async def test_commit_checks_version_and_keeps_history(store: Store) -> None:
    v1 = await store.create_run(raw())
    v2 = await store.commit(nxt(v1, status=2, run_state=af.RunState.RUNNING))
    with pytest.raises(af.VersionConflict):
        await store.commit(nxt(v1, status=3))
    stale = attrs.evolve(v2, version=5)
    with pytest.raises(Exception) as info:
        await store.commit(stale)
    assert "version" in str(info.value)
    v3 = await store.commit(nxt(v2, status=3, run_state=af.RunState.COMPLETED))
    assert await store.history("wf", v1.run_id) == [v1, v2, v3]
    assert await store.lookup("wf", v1.run_id) == v3


async def test_list_runs_filters_order_and_keyset_pages(store: Store) -> None:
    made = []
    for i in range(7):
        record = await store.create_run(raw(f"f{i}", status=1 + i % 2))
        made.append(record)
    await store.commit(nxt(made[3], run_state=af.RunState.RUNNING))
    ids = [r.run_id for r in made]
    assert [r.run_id for r in await store.list_runs("wf", limit=100)] == ids
    assert [r.run_id for r in await store.list_runs("wf", limit=100, descending=True)] == ids[::-1]
    page1 = await store.list_runs("wf", limit=3)
    page2 = await store.list_runs("wf", limit=3, after=page1[-1].run_id)
    page3 = await store.list_runs("wf", limit=3, after=page2[-1].run_id)
    assert [r.run_id for r in page1 + page2 + page3] == ids
    back = await store.list_runs("wf", limit=2, after=ids[4], descending=True)
    assert [r.run_id for r in back] == [ids[3], ids[2]]
    assert [r.run_id for r in await store.list_runs("wf", RunFilter.make(status=2))] == ids[1::2]
    assert [r.run_id for r in await store.list_runs("wf", RunFilter.make(status=[1, 2]))] == ids
    running = await store.list_runs("wf", RunFilter.make(run_state=af.RunState.RUNNING))
    assert [(r.run_id, r.version) for r in running] == [(ids[3], 2)]
    several = await store.list_runs(
        "wf", RunFilter.make(run_state=[af.RunState.RUNNING, af.RunState.INITIATED], status=1)
    )
    assert [r.run_id for r in several] == ids[0::2]
    assert [r.run_id for r in await store.list_runs("wf", RunFilter.make(foreign_id="f5"))] == [
        ids[5]
    ]
    with pytest.raises(af.RunNotFound):
        await store.list_runs("wf", after="nope")
    with pytest.raises(af.InvalidArgument):
        await store.list_runs("wf", limit=0)


async def test_list_runs_by_creation_time_foreign_ids_and_prefix(store: Store) -> None:
    made = []
    for i, foreign_id in enumerate(["order-1", "order-2", "order-10", "ordex", "refund-1", "o"]):
        created = T0 + timedelta(minutes=i)
        record = attrs.evolve(raw(foreign_id), created_at=created, updated_at=created)
        made.append(await store.create_run(record))
    ids = [r.run_id for r in made]

    async def listed(descending: bool = False, **filters: Any) -> list[str]:
        flt = RunFilter.make(**filters)
        return [
            r.run_id for r in await store.list_runs("wf", flt, limit=100, descending=descending)
        ]

    window = {
        "created_after": T0 + timedelta(minutes=1),
        "created_before": T0 + timedelta(minutes=4),
    }
    assert await listed(**window) == ids[1:4]  # after inclusive, before exclusive
    assert await listed(created_after=T0 + timedelta(minutes=4)) == ids[4:]
    assert await listed(created_before=T0 + timedelta(seconds=1)) == ids[:1]
    other_zone = timezone(timedelta(hours=2))
    assert await listed(created_after=(T0 + timedelta(minutes=5)).astimezone(other_zone)) == [
        ids[5]
    ]
    assert await listed(foreign_id=["refund-1", "order-2", "missing"]) == [ids[1], ids[4]]
    assert await listed(foreign_id=("order-1",)) == ids[:1]
    assert await listed(foreign_id=[]) == []
    assert await listed(foreign_id_prefix="order-") == ids[:3]
    assert await listed(foreign_id_prefix="order-1") == [ids[0], ids[2]]
    assert await listed(foreign_id_prefix="o") == [ids[0], ids[1], ids[2], ids[3], ids[5]]
    assert await listed(foreign_id_prefix="order-", descending=True) == ids[2::-1]
    assert await listed(foreign_id_prefix="order-", **window) == ids[1:3]
    page = await store.list_runs(
        "wf", RunFilter.make(foreign_id_prefix="o"), limit=2, descending=True
    )
    rest = await store.list_runs(
        "wf",
        RunFilter.make(foreign_id_prefix="o"),
        limit=10,
        descending=True,
        after=page[-1].run_id,
    )
    assert [r.run_id for r in page + rest] == [ids[5], ids[3], ids[2], ids[1], ids[0]]
    with pytest.raises(af.InvalidArgument):
        await store.list_runs("wf", RunFilter.make(created_after=datetime(2026, 1, 1)))  # naive
    with pytest.raises(af.InvalidArgument):
        await store.list_runs("wf", RunFilter.make(foreign_id_prefix=""))
    with pytest.raises(af.InvalidArgument):
        await store.list_runs("wf", RunFilter.make(foreign_id=[1, 2]))  # type: ignore[list-item]


async def test_count_runs_by_status_and_run_state(store: Store) -> None:
    assert await store.count_runs("wf") == {}
    made = []
    for i in range(6):
        created = T0 + timedelta(minutes=i)
        record = attrs.evolve(
            raw(f"f{i}", status=1 + i % 2), created_at=created, updated_at=created
        )
        made.append(await store.create_run(record))
    await store.commit(nxt(made[0], run_state=af.RunState.RUNNING))
    await store.commit(nxt(made[1], run_state=af.RunState.PAUSED, status=3))
    await store.create_run(raw("elsewhere", workflow="other"))
    INIT, RUN, PAUSE = af.RunState.INITIATED, af.RunState.RUNNING, af.RunState.PAUSED
    assert await store.count_runs("wf") == {(1, RUN): 1, (1, INIT): 2, (2, INIT): 2, (3, PAUSE): 1}
    assert await store.count_runs("wf", RunFilter.make(status=[1, 3])) == {
        (1, RUN): 1,
        (1, INIT): 2,
        (3, PAUSE): 1,
    }
    assert await store.count_runs("wf", RunFilter.make(run_state=PAUSE)) == {(3, PAUSE): 1}
    assert await store.count_runs("wf", RunFilter.make(foreign_id=["f0", "f2", "f9"])) == {
        (1, RUN): 1,
        (1, INIT): 1,
    }
    assert await store.count_runs(
        "wf", RunFilter.make(foreign_id_prefix="f")
    ) == await store.count_runs("wf")
    assert await store.count_runs(
        "wf",
        RunFilter.make(
            created_after=T0 + timedelta(minutes=4), created_before=T0 + timedelta(hours=1)
        ),
    ) == {(1, INIT): 1, (2, INIT): 1}
    assert await store.count_runs("other") == {(1, INIT): 1}
    assert await store.count_runs("nobody") == {}


async def test_latest_is_most_recent_run_of_foreign_id(store: Store) -> None:
    first = await store.create_run(raw())
    await store.commit(nxt(first, run_state=af.RunState.RUNNING))
    done = await store.commit(
        nxt(await store.lookup("wf", first.run_id), run_state=af.RunState.COMPLETED)
    )
    second = await store.create_run(raw())
    assert (await store.latest("wf", "f1")).run_id == second.run_id
    both = await store.list_runs("wf", RunFilter.make(foreign_id="f1"))
    assert [r.run_id for r in both] == [done.run_id, second.run_id]


async def test_timers_are_stored_replaced_and_kept(store: Store) -> None:
    v1 = raw()
    t_late = Timer("wf", v1.run_id, 1, "timeout:0", T0 + timedelta(hours=2))
    t_early = Timer("wf", v1.run_id, 1, "timeout:1", T0 + timedelta(hours=1))
    await store.create_run(v1, [t_late, t_early])
    assert await store.list_timers("wf", v1.run_id) == [t_early, t_late]
    other = raw("f2")
    t_other = Timer("wf", other.run_id, 1, "timeout:0", T0 + timedelta(minutes=90))
    await store.create_run(other, [t_other])
    assert await store.list_timers("wf") == [t_early, t_other, t_late]
    assert await store.list_timers("elsewhere") == []
    v2 = await store.commit(nxt(v1, status=2))  # timers=None keeps them
    assert await store.list_timers("wf", v1.run_id) == [t_early, t_late]
    t_new = Timer("wf", v1.run_id, 2, "timeout:0", T0 + timedelta(minutes=5))
    v3 = await store.commit(nxt(v2, status=2), timers=[t_new])
    assert await store.list_timers("wf", v1.run_id) == [t_new]
    await store.commit(nxt(v3, status=3), timers=[])
    assert await store.list_timers("wf", v1.run_id) == []
    assert await store.list_timers("wf") == [t_other]


async def test_timer_is_not_replaced_by_failed_commit(store: Store) -> None:
    v1 = raw()
    timer = Timer("wf", v1.run_id, 1, "timeout:0", T0 + timedelta(hours=1))
    await store.create_run(v1, [timer])
    with pytest.raises(af.ActorflowError):
        await store.commit(attrs.evolve(nxt(v1), version=3), timers=[])
    assert await store.list_timers("wf", v1.run_id) == [timer]


async def test_scrub_history(store: Store) -> None:
    v1 = await store.create_run(raw(obj='{"secret": 1}'))
    v2 = await store.commit(nxt(v1, object='{"secret": 2}', run_state=af.RunState.RUNNING))
    v3 = await store.commit(
        nxt(v2, object="{}", run_state=af.RunState.COMPLETED), scrub_history=True
    )
    history = await store.history("wf", v1.run_id)
    assert [h.object for h in history] == ["{}", "{}", "{}"]
    assert [h.version for h in history] == [1, 2, 3]
    assert history[-1] == v3


async def test_event_log_orders_every_version(store: Store) -> None:
    a1 = await store.create_run(raw("a"))
    b1 = await store.create_run(raw("b", workflow="other"))
    a2 = await store.commit(nxt(a1, status=2))
    events = await store.read_events(0, 100)
    assert [(e.run_id, e.version) for e in events] == [
        (a1.run_id, 1),
        (b1.run_id, 1),
        (a2.run_id, 2),
    ]
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert events[2].status == 2 and events[2].foreign_id == "a"
    assert events[2].created_at == a2.updated_at
    only_wf = await store.read_events(0, 100, workflow_name="wf")
    assert [e.version for e in only_wf] == [1, 2]
    assert [e.id for e in await store.read_events(ids[0], 1)] == [ids[1]]
    assert await store.read_events(ids[-1], 10) == []
    assert await store.last_event_id() == ids[-1]


async def test_last_event_id_of_empty_log(store: Store) -> None:
    assert await store.last_event_id() == 0


async def test_cursors_and_schedules(store: Store) -> None:
    assert await store.get_cursor("c") is None
    await store.set_cursor("c", "1")
    await store.set_cursor("c", "2")
    assert await store.get_cursor("c") == "2"
    assert await store.last_schedule("s") is None
    assert await store.claim_schedule("s", T0)
    assert not await store.claim_schedule("s", T0)
    assert not await store.claim_schedule("s", T0 - timedelta(hours=1))
    assert await store.claim_schedule("s", T0 + timedelta(hours=1))
    assert await store.last_schedule("s") == T0 + timedelta(hours=1)


async def test_feed_publishes_each_durable_write(store: Store) -> None:
    with store.feed.subscribe(workflow_name="wf") as sub:
        v1 = await store.create_run(raw())
        v2 = await store.commit(nxt(v1, status=2))
        with pytest.raises(af.ActorflowError):
            await store.commit(nxt(v1, status=3))  # conflict: not published
        await store.create_run(raw(workflow="other"))
        assert await sub.receive() == v1
        assert await sub.receive() == v2
        with trio.move_on_after(0.05) as scope:
            await sub.receive()
        assert scope.cancelled_caught


async def test_concurrent_commits_one_version_wins(store: Store) -> None:
    v1 = await store.create_run(raw())
    results: list[str] = []

    async def attempt(status: int) -> None:
        try:
            await store.commit(nxt(v1, status=status))
            results.append("ok")
        except af.ActorflowError:
            results.append("conflict")

    async with trio.open_nursery() as nursery:
        for status in (2, 3, 4):
            nursery.start_soon(attempt, status)
    assert sorted(results) == ["conflict", "conflict", "ok"]
    assert [h.version for h in await store.history("wf", v1.run_id)] == [1, 2]


async def test_many_concurrent_creates_and_commits(store: Store) -> None:
    async def one(i: int) -> None:
        record = await store.create_run(raw(f"f{i}"))
        for version in range(2, 5):
            record = await store.commit(nxt(record, status=version))

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(one, i)
    runs = await store.list_runs("wf", limit=1000)
    assert len(runs) == 200
    assert {r.version for r in runs} == {4}
    events = await store.read_events(0, 10_000)
    assert len(events) == 800


# -- many runs at once, timer pages, history retention (issue #20) --------------------------


async def test_create_runs_answers_each_item_in_order(store: Store) -> None:
    blocker = await store.create_run(raw("busy"))
    first, second = raw("a"), raw("b")
    twin = raw("a")  # the same foreign id as an earlier item of this call
    busy = raw("busy")
    timer = Timer("wf", second.run_id, 1, "timeout:0", T0 + timedelta(days=30))
    results = await store.create_runs([(first, ()), (busy, ()), (second, [timer]), (twin, ())])
    assert results[0] == first
    assert isinstance(results[1], af.WorkflowInProgress)
    assert blocker.run_id in str(results[1])
    assert results[2] == second
    assert isinstance(results[3], af.WorkflowInProgress)
    assert first.run_id in str(results[3])
    assert await store.latest("wf", "a") == first
    assert await store.lookup("wf", second.run_id) == second
    assert await store.history("wf", second.run_id) == [second]
    assert await store.list_timers("wf", second.run_id) == [timer]
    with pytest.raises(af.RunNotFound):
        await store.lookup("wf", twin.run_id)
    assert await store.create_runs([]) == []


async def test_create_runs_looks_at_the_latest_run_of_each_foreign_id(store: Store) -> None:
    # "done": its only run finished; "again": a finished run, then an unfinished one.
    done = await store.create_run(raw("done"))
    await store.commit(nxt(done, run_state=af.RunState.COMPLETED))
    old = await store.create_run(raw("again"))
    await store.commit(nxt(old, run_state=af.RunState.CANCELLED))
    newer = await store.create_run(raw("again"))
    other = await store.create_run(raw("done", workflow="other"))  # another workflow
    items = [raw("done"), raw("again"), raw("done", workflow="other"), raw("again", workflow="x")]
    results = await store.create_runs([(r, ()) for r in items])
    assert results[0] == items[0]
    assert isinstance(results[1], af.WorkflowInProgress)
    assert newer.run_id in str(results[1]) and old.run_id not in str(results[1])
    assert isinstance(results[2], af.WorkflowInProgress) and other.run_id in str(results[2])
    assert results[3] == items[3]
    assert await store.latest("wf", "done") == items[0]


async def test_create_runs_refuses_an_existing_run_id_alone(store: Store) -> None:
    existing = await store.create_run(raw("x"))
    again = attrs.evolve(existing, foreign_id="y")
    fresh = raw("z")
    results = await store.create_runs([(again, ()), (fresh, ())])
    assert isinstance(results[0], af.ActorflowError)
    assert results[1] == fresh
    assert await store.lookup("wf", fresh.run_id) == fresh


async def test_create_runs_publishes_and_logs_each_run(store: Store) -> None:
    records = [raw(f"f{i}") for i in range(5)]
    with store.feed.subscribe(workflow_name="wf") as sub:
        assert await store.create_runs([(r, ()) for r in records]) == records
        seen = [await sub.receive() for _ in records]
    assert {r.run_id for r in seen} == {r.run_id for r in records}
    events = await store.read_events(0, 100, "wf")
    assert sorted(e.run_id for e in events) == sorted(r.run_id for r in records)


async def test_timers_after_pages_in_fire_at_order(store: Store) -> None:
    runs = [raw(f"t{i}") for i in range(7)]
    for index, record in enumerate(runs):
        # Two runs share each instant: the id orders them.
        when = T0 + timedelta(minutes=index // 2)
        await store.create_run(record, [Timer("wf", record.run_id, 1, "timeout:0", when)])
    other = raw("other", workflow="elsewhere")
    await store.create_run(other, [Timer("elsewhere", other.run_id, 1, "timeout:0", T0)])
    seen: list[str] = []
    after: tuple[datetime, int] | None = None
    while True:
        page = await store.timers_after("wf", after, 3)
        seen.extend(timer.run_id for _, timer in page)
        if len(page) < 3:
            break
        after = (page[-1][1].fire_at, page[-1][0])
    assert sorted(seen) == sorted(r.run_id for r in runs)
    assert len(seen) == len(set(seen))
    everything = await store.timers_after("wf", None, 100)
    keys = [(timer.fire_at, timer_id) for timer_id, timer in everything]
    assert keys == sorted(keys) and all(timer_id > 0 for timer_id, _ in everything)
    assert [t for _, t in everything] == await store.list_timers("wf")
    # A timer replaced by a commit leaves the pages; its new one joins them.
    first = runs[0]
    later = Timer("wf", first.run_id, 2, "timeout:0", T0 + timedelta(days=1))
    await store.commit(nxt(first, status=2), timers=[later])
    everything = await store.timers_after("wf", None, 100)
    assert everything[-1][1] == later
    assert len(everything) == len(runs)
    assert await store.timers_after("wf", (later.fire_at, everything[-1][0]), 10) == []


async def _prune_all(store: Store, **rules: object) -> int:
    total, after = 0, 0
    while True:
        deleted, nxt_after = await store.prune_history(
            "wf", finished_before=T0 + timedelta(days=365), after_id=after, scan=2, **rules
        )  # type: ignore[arg-type]
        total += deleted
        if nxt_after is None:
            return total
        after = nxt_after


async def _finished_run(store: Store, foreign_id: str, versions: int) -> RawRecord:
    record = await store.create_run(raw(foreign_id))
    for _ in range(versions - 2):
        record = await store.commit(nxt(record, run_state=af.RunState.RUNNING))
    return await store.commit(nxt(record, run_state=af.RunState.COMPLETED))


async def test_prune_history_keeps_the_last_versions_of_finished_runs(store: Store) -> None:
    done = await _finished_run(store, "done", 6)
    running = await store.create_run(raw("running"))
    for _ in range(4):
        running = await store.commit(nxt(running, run_state=af.RunState.RUNNING))
    assert await _prune_all(store, keep_last=2, before=None) == 4
    assert [r.version for r in await store.history("wf", done.run_id)] == [5, 6]
    assert len(await store.history("wf", running.run_id)) == 5  # unfinished: untouched
    assert await store.lookup("wf", done.run_id) == done
    assert await _prune_all(store, keep_last=1, before=None) == 1
    assert await store.history("wf", done.run_id) == [done]


async def test_prune_history_by_age_keeps_the_latest_version(store: Store) -> None:
    done = await _finished_run(store, "done", 4)  # versions at T0 .. T0 + 3 s
    recent = await _finished_run(store, "recent", 2)
    assert await _prune_all(store, keep_last=None, before=T0 + timedelta(seconds=2)) == 3
    assert [r.version for r in await store.history("wf", done.run_id)] == [3, 4]
    assert await _prune_all(store, keep_last=None, before=T0 + timedelta(days=1)) == 1
    assert await store.history("wf", done.run_id) == [done]
    assert await store.history("wf", recent.run_id) == [recent]
    # Both rules: a version goes only when neither keeps it.
    both = await _finished_run(store, "both", 5)
    deleted = await _prune_all(store, keep_last=2, before=T0 + timedelta(seconds=2))
    assert deleted == 2
    assert [r.version for r in await store.history("wf", both.run_id)] == [3, 4, 5]


async def test_prune_history_waits_until_runs_finished_long_enough(store: Store) -> None:
    done = await _finished_run(store, "done", 3)
    deleted, _ = await store.prune_history(
        "wf", keep_last=1, before=None, finished_before=T0, after_id=0, scan=1000
    )
    assert deleted == 0
    assert len(await store.history("wf", done.run_id)) == 3


async def test_definitions_registry_keeps_first_registration_order(store: Store) -> None:
    from actorflow.stores.protocol import DefinitionRegistry

    assert isinstance(store, DefinitionRegistry)
    first = await store.register_definition("wf", "aaa", '{"v":1}', T0)
    assert [(fp, text) for fp, text, _ in first] == [("aaa", '{"v":1}')]
    await store.register_definition("other", "zzz", "{}", T0)
    second = await store.register_definition("wf", "bbb", '{"v":2}', T0 + timedelta(hours=1))
    again = await store.register_definition("wf", "aaa", '{"changed":1}', T0 + timedelta(hours=2))
    assert [fp for fp, _, _ in second] == ["aaa", "bbb"]
    assert [(fp, text) for fp, text, _ in again] == [("aaa", '{"v":1}'), ("bbb", '{"v":2}')]
    assert again[0][2] == T0


async def test_meta_definition_round_trips_on_every_version(store: Store) -> None:
    first = attrs.evolve(raw(), meta=Meta(status_description="ONE", definition="ab12cd"))
    await store.create_run(first)
    second = nxt(first, status=2, meta=Meta(run_state_reason="status 9 renamed", definition="ef34"))
    await store.commit(second)
    history = await store.history("wf", first.run_id)
    assert [h.meta.definition for h in history] == ["ab12cd", "ef34"]
    assert history[-1].meta.run_state_reason == "status 9 renamed"
    assert (await store.lookup("wf", first.run_id)).meta.definition == "ef34"
