"""The worker process of tests/runtime/test_crash_recovery.py.

    python tests/runtime/crash_worker.py work PATH     # trigger the runs, then work until killed
    python tests/runtime/crash_worker.py recover PATH  # work until every run is complete, then exit

The workflow: A -step-> B -step-> C -20 ms timeout-> D -step-> E -step-> F, each function
appending its letter to the object; and WAITING, which only a callback moves (to PAID).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta

import attrs
import trio

import actorflow as af

RUNS = 2_000
PARKED = 5
EXPECTED = ["a", "b", "t", "d", "e"]
"""What every completed run's object holds: each step (and the timeout) applied once."""


class Step(enum.IntEnum):
    A = 1
    B = 2
    C = 3
    D = 4
    E = 5
    F = 6
    WAITING = 10
    PAID = 11


@attrs.define
class Trail:
    applied: list[str] = attrs.Factory(list)


def build(store: af.Store, **options: object) -> af.Workflow[Trail, Step]:
    builder = af.Builder("crash", Trail, Step)

    def appending(letter: str, to: Step) -> Callable[[af.Run[Trail, Step]], Awaitable[Step]]:
        async def step(run: af.Run[Trail, Step]) -> Step:
            run.object.applied.append(letter)
            return to

        step.__qualname__ = f"step_{letter}"
        return step

    for start, letter, to in ((Step.A, "a", Step.B), (Step.B, "b", Step.C)):
        builder.add_step(start, appending(letter, to), to=to)
    for start, letter, to in ((Step.D, "d", Step.E), (Step.E, "e", Step.F)):
        builder.add_step(start, appending(letter, to), to=to)

    async def waited(run: af.Run[Trail, Step], now: object) -> Step:
        run.object.applied.append("t")
        return Step.D

    builder.add_timeout(Step.C, af.after(timedelta(milliseconds=20)), waited, to=Step.D)

    async def paid(run: af.Run[Trail, Step], payload: bytes) -> Step:
        run.object.applied.append(payload.decode())
        return Step.PAID

    builder.add_callback(Step.WAITING, paid, to=[Step.PAID])
    return builder.build(store, **options)  # type: ignore[arg-type]


async def work(path: str) -> None:
    """Trigger every run, then work slowly (20 runs at a time) until killed."""
    store = af.SQLiteStore(path)
    workflow = build(store, max_active_runs=20)

    async def trigger(first: int) -> None:
        for i in range(first, RUNS, 20):
            await workflow.trigger(f"run-{i}")

    async with trio.open_nursery() as nursery:
        for first in range(20):
            nursery.start_soon(trigger, first)
    for i in range(PARKED):
        await workflow.trigger(f"parked-{i}", Step.WAITING)
    async with af.open_workflow(workflow):
        await trio.sleep_forever()


async def recover(path: str) -> None:
    """Work until every run (except the parked ones) is complete; then pay parked-0."""
    async with af.SQLiteStore(path) as store:
        workflow = build(store)
        async with af.open_workflow(workflow):
            runs = await workflow.list_runs(limit=10_000)
            assert len(runs) == RUNS + PARKED, len(runs)
            with trio.fail_after(45):
                for record in runs:
                    if record.status is not Step.WAITING:
                        await workflow.await_status(record.foreign_id, record.run_id, Step.F)
                # Parked runs stayed passive, but they still answer their callback.
                paid = await workflow.callback("parked-0", Step.WAITING, b"paid")
                assert paid is not None and paid.status is Step.PAID, paid


if __name__ == "__main__":
    mode, db = sys.argv[1], sys.argv[2]
    trio.run({"work": work, "recover": recover}[mode], db)
