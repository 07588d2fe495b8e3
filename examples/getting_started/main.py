"""Getting started: the yin-yang workflow (the README's example), run end to end.

A run starts at STARTED; a step sets ``yin`` and moves it to MIDDLE; there it waits for a
callback (a payment, say) that sets ``yang`` and ends it at END, or gives up after an
hour (a durable timeout). Everything is stored in a SQLite file: stop the program at any
point and the run resumes where it was on the next start.

Run it from the repository root::

    python -m examples.getting_started            # a SQLite file in a temporary directory
    python -m examples.getting_started --db yinyang.db
"""

from __future__ import annotations

import argparse
import enum
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import attrs
import trio

import actorflow as af


class Status(enum.IntEnum):  # any IntEnum; 0 and negative values are reserved
    STARTED = 1
    MIDDLE = 2
    END = 3


@attrs.define
class YinYang:  # any attrs class (or dataclass) that cattrs can (un)structure
    yin: bool = False
    yang: bool = False


builder = af.Builder("yinyang", YinYang, Status)


@builder.step(Status.STARTED, to=Status.MIDDLE)
async def start(run: af.Run[YinYang, Status]) -> Status:
    run.object.yin = True
    return Status.MIDDLE


async def got_payment(run: af.Run[YinYang, Status], payload: bytes) -> Status:
    run.object.yang = True
    return Status.END


builder.add_callback(Status.MIDDLE, got_payment, to=[Status.END])


async def gave_up(run: af.Run[YinYang, Status], now: datetime) -> Status:
    return Status.END


builder.add_timeout(Status.MIDDLE, af.after(timedelta(hours=1)), gave_up, to=[Status.END])


async def run_example(store: af.Store) -> list[af.Record[YinYang, Status]]:
    """Trigger a run, pay it, and return its history (every stored version)."""
    workflow = builder.build(store)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("customer-42")
        await workflow.await_status("customer-42", run_id, Status.MIDDLE)
        await workflow.callback("customer-42", Status.MIDDLE, b"paid")
        await workflow.await_status("customer-42", run_id, Status.END)
    return await workflow.history(run_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.getting_started")
    parser.add_argument("--db", type=Path, help="the SQLite file (default: a temporary one)")
    args = parser.parse_args(argv)

    async def run(path: Path) -> list[af.Record[YinYang, Status]]:
        async with af.SQLiteStore(path) as store:
            return await run_example(store)

    if args.db is not None:
        history = trio.run(run, args.db)
    else:
        with tempfile.TemporaryDirectory() as directory:
            history = trio.run(run, Path(directory) / "yinyang.db")
    for record in history:
        print(
            f"v{record.version}  {record.status.name:<7}  {record.run_state.name:<9}  "
            f"{record.object}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
