"""Timeouts: a restaurant holds a table for an hour, then gives it away unless confirmed.

HELD --confirm (callback)--> CONFIRMED
HELD --no confirmation within the hold (timeout)--> RELEASED

The timeout is durable: when the run reaches HELD, the expiry instant is stored with it.
If the program stops, the timer is re-armed on the next start, and one that came due
while nothing ran fires at once. A callback that arrives first moves the run on and the
timer is dropped.

This program holds two tables for one second instead of an hour (``--hold``), so it ends
quickly; ``test_timeout.py`` beside it tests the real hour in milliseconds of virtual time.

Run it from the repository root::

    python -m examples.timeout
    python -m examples.timeout --hold 2.5
"""

from __future__ import annotations

import argparse
import enum
import sys
from datetime import datetime, timedelta

import attrs
import trio

import actorflow as af


class Table(enum.IntEnum):
    HELD = 1
    CONFIRMED = 2
    RELEASED = 3


@attrs.define
class Reservation:
    guest: str = ""
    seats: int = 2
    released_at: str = ""


def build(
    store: af.Store, *, hold: timedelta = timedelta(hours=1), clock: af.Clock | None = None
) -> af.Workflow[Reservation, Table]:
    """The reservations workflow; ``clock`` is for tests (``actorflow.testing.trio_clock``)."""
    builder = af.Builder("reservations", Reservation, Table)

    async def confirmed(run: af.Run[Reservation, Table], payload: bytes) -> Table:
        return Table.CONFIRMED

    builder.add_callback(Table.HELD, confirmed, to=Table.CONFIRMED)

    async def release(run: af.Run[Reservation, Table], now: datetime) -> Table:
        run.object.released_at = now.isoformat()
        return Table.RELEASED

    builder.add_timeout(Table.HELD, af.after(hold), release, to=Table.RELEASED)
    return builder.build(store, clock=clock)


async def run_example(
    store: af.Store, hold: timedelta, clock: af.Clock | None = None
) -> dict[str, af.Record[Reservation, Table]]:
    """Hold two tables; one guest confirms, the other does not. Returns the final records."""
    workflow = build(store, hold=hold, clock=clock)
    async with af.open_workflow(workflow):
        ada = await workflow.trigger("table-1", initial=Reservation("ada", 4))
        alan = await workflow.trigger("table-2", initial=Reservation("alan", 2))
        await trio.sleep(hold.total_seconds() / 2)
        await workflow.callback("table-1", Table.HELD, b"see you at eight")
        final = {
            "table-1": await workflow.await_status("table-1", ada, Table.CONFIRMED),
            "table-2": await workflow.await_status("table-2", alan, Table.RELEASED),
        }
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.timeout")
    parser.add_argument(
        "--hold", type=float, default=1.0, metavar="SECONDS", help="how long a table is held"
    )
    args = parser.parse_args(argv)
    hold = timedelta(seconds=args.hold)
    final = trio.run(run_example, af.MemoryStore(), hold)
    for foreign_id, record in final.items():
        waited = (record.updated_at - record.created_at).total_seconds()
        print(f"{foreign_id} ({record.object.guest}): {record.status.name} after {waited:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
