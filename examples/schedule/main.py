"""Schedules: send the invoices every weekday at 09:00, except on holidays.

``workflow.schedule_trigger(foreign_id, spec, filter=...)`` runs until cancelled and
triggers a run at every cron time of ``spec`` (5-field cron, or ``@hourly``, ``@daily``,
``@weekly``, ``@monthly``, ``@yearly``; times in UTC). A time is skipped while the previous
run of the foreign id is unfinished, or when ``filter(when)`` returns False. The last
fired time is stored, so a restart never fires one time twice; a time missed while
nothing ran fires once at the next start.

By default this program simulates a week in virtual time (a ``trio.testing.MockClock``
that jumps to the next deadline, with ``actorflow.testing.trio_clock``), so five days of
schedule pass in a blink. ``--real`` runs it on the system clock with ``* * * * *``
(every minute) instead: it waits for the next minute to begin.

Run it from the repository root::

    python -m examples.schedule
    python -m examples.schedule --real
"""

from __future__ import annotations

import argparse
import enum
import functools
import sys
from datetime import UTC, date, datetime, timedelta

import attrs
import trio
import trio.testing

import actorflow as af
from actorflow.testing import trio_clock

WEEKDAYS_AT_NINE = "0 9 * * 1-5"
HOLIDAYS = {date(2026, 1, 6)}  # a Tuesday
MONDAY = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)


class Billing(enum.IntEnum):
    DUE = 1
    SENT = 2


@attrs.define
class InvoiceRun:
    invoices: int = 0
    sent_at: str = ""


def build(store: af.Store, clock: af.Clock | None = None) -> af.Workflow[InvoiceRun, Billing]:
    builder = af.Builder("invoicing", InvoiceRun, Billing)

    @builder.step(Billing.DUE, to=Billing.SENT)
    async def send_invoices(run: af.Run[InvoiceRun, Billing]) -> Billing:
        run.object.invoices = 3  # a real system would collect and send them here
        run.object.sent_at = run.record.created_at.isoformat()
        return Billing.SENT

    return builder.build(store, clock=clock)


def not_a_holiday(when: datetime) -> bool:
    """The schedule's filter: ``when`` is the cron time about to fire."""
    return when.date() not in HOLIDAYS


async def run_schedule(
    workflow: af.Workflow[InvoiceRun, Billing], spec: str, duration: float
) -> list[af.Record[InvoiceRun, Billing]]:
    """Follow the schedule for ``duration`` seconds of trio time; return the runs."""
    async with af.open_workflow(workflow), trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(workflow.schedule_trigger, "invoices", spec, filter=not_a_holiday)
        )
        await trio.sleep(duration)
        nursery.cancel_scope.cancel()
    return await workflow.list_runs(limit=100)


async def simulate_week() -> list[af.Record[InvoiceRun, Billing]]:
    """Monday to Sunday of the first week of 2026, in virtual time (run under a MockClock)."""
    workflow = build(af.MemoryStore(), trio_clock(MONDAY))
    return await run_schedule(workflow, WEEKDAYS_AT_NINE, timedelta(days=7).total_seconds())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.schedule")
    parser.add_argument(
        "--real", action="store_true", help="use the system clock and '* * * * *' (about a minute)"
    )
    args = parser.parse_args(argv)
    if args.real:
        now = datetime.now(UTC)
        wait = 60 - now.second - now.microsecond / 1e6
        print(f"'* * * * *' on the system clock: the next minute begins in {wait:.0f} s")
        runs = trio.run(run_schedule, build(af.MemoryStore()), "* * * * *", wait + 1)
    else:
        print(
            f"A week of '{WEEKDAYS_AT_NINE}' in virtual time; holidays: "
            + ", ".join(day.isoformat() for day in sorted(HOLIDAYS))
        )
        runs = trio.run(simulate_week, clock=trio.testing.MockClock(autojump_threshold=0))
    for record in runs:
        when = record.created_at.strftime("%a %Y-%m-%d %H:%M:%S")
        print(f"{when} UTC  {record.foreign_id}  {record.status.name}  {record.object.invoices}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
