"""The actorflow demo: a small shop's orders, end to end, in a few seconds.

What happens (``actorflow demo``, ``python -m actorflow.demo`` or ``nox -s demo``):

1. The ``orders`` and ``sales_report`` workflows (workflow.py) run on the embedded SQLite
   store (a file in a temporary directory, or ``--db PATH``) and are served over the
   websocket gateway on 127.0.0.1 (a free port, with a token), all in this process.
2. Six orders are placed. A step reserves stock; then each order waits for its payment.
3. A payment provider, simulated here, sends its webhooks through the gateway client as
   callbacks, as a real webhook handler would. Two customers never pay: their orders time
   out after ``--payment-timeout`` seconds (a durable timer kept in the database, that
   would fire after a restart too). One customer cancels through the gateway.
4. Paid orders are shipped by another step.
5. A cron schedule, ``* * * * *`` (every minute), triggers the sales report. Cron counts
   whole minutes, so the report's clock is set a little ahead of the system clock: the
   next minute begins two seconds after the last payment deadline.
6. One line per stored change, live, from ``workflow.subscribe()``; then a summary.

No server is needed, and the process exits 0 when every run ended as planned.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import secrets
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import trio

import actorflow as af
from actorflow._model.errors import is_interrupt
from actorflow.demo.workflow import (
    ORDERS,
    Order,
    OrderStatus,
    ReportStatus,
    SalesReport,
    build,
)

SCHEDULE = "* * * * *"
REPORT_ID = "sales-report"


@attrs.frozen
class DemoOrder:
    """One order of the demo and what its customer does."""

    foreign_id: str
    customer: str
    items: tuple[str, ...]
    amount_cents: int
    pays_after: float | None = None
    """When the payment arrives, as a fraction of the payment timeout; None: never."""
    cancels_after: float | None = None
    """When the customer cancels, as a fraction of the payment timeout; None: never."""


DEMO_ORDERS = (
    DemoOrder("order-1001", "ada", ("keyboard",), 8_900, pays_after=0.1),
    DemoOrder("order-1002", "grace", ("mouse", "mouse pad"), 3_500, pays_after=0.25),
    DemoOrder("order-1003", "alan", ("monitor",), 21_900),
    DemoOrder("order-1004", "edsger", ("usb cable",), 900, pays_after=0.4),
    DemoOrder("order-1005", "barbara", ("laptop",), 129_900),
    DemoOrder("order-1006", "ken", ("chair",), 15_900, cancels_after=0.15),
)


@attrs.frozen
class ShiftedClock:
    """The system clock moved by ``offset``: real seconds, another starting point."""

    offset: timedelta

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


@attrs.frozen
class Outcome:
    """What the demo did: the final version of every run, for the summary and the tests."""

    orders: list[af.Record[Order, OrderStatus]]
    report: af.Record[SalesReport, ReportStatus]
    seconds: float


def money(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def describe(record: af.Record[Any, Any], payment_timeout: float) -> str:
    """What a stored change means, in words."""
    obj = record.object
    if record.run_state is af.RunState.CANCELLED:
        return f"cancelled: {record.meta.run_state_reason}"
    if isinstance(obj, Order):
        return {
            OrderStatus.PLACED: f"{obj.customer} orders {', '.join(obj.items)} "
            f"for {money(obj.amount_cents)}",
            OrderStatus.AWAITING_PAYMENT: "stock reserved; waiting for the payment "
            f"(times out after {payment_timeout:g} s)",
            OrderStatus.PAID: f"payment {obj.payment_reference} arrived through the gateway",
            OrderStatus.SHIPPED: f"shipped, tracking number {obj.tracking_number}",
            OrderStatus.PAYMENT_EXPIRED: "no payment in time: timed out, stock released",
        }[record.status]
    if isinstance(obj, SalesReport):
        if record.status is ReportStatus.REQUESTED:
            return f"triggered by the schedule {SCHEDULE!r}"
        return (
            f"{obj.shipped} shipped ({money(obj.revenue_cents)}), {obj.expired} expired, "
            f"{obj.cancelled} cancelled, {obj.open} open"
        )
    return ""


async def show_changes(
    workflow: af.Workflow[Any, Any],
    started: float,
    payment_timeout: float,
    out: Callable[[str], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Print one line per stored change of ``workflow`` until cancelled."""
    async with workflow.subscribe() as changes:
        task_status.started()
        async for record in changes:
            elapsed = trio.current_time() - started
            out(
                f"{elapsed:6.2f}s  {record.foreign_id:<12}  v{record.version}  "
                f"{record.status.name:<16}  {record.run_state.name:<9}  "
                f"{describe(record, payment_timeout)}"
            )


async def wait_until(
    workflow: af.Workflow[Any, Any],
    foreign_id: str,
    done: Callable[[af.Record[Any, Any]], bool],
) -> af.Record[Any, Any]:
    """The first version of the latest run of ``foreign_id`` for which ``done`` holds."""
    async with workflow.subscribe(foreign_id=foreign_id) as changes:
        try:
            latest = await workflow.latest(foreign_id)
        except af.RunNotFound:
            pass
        else:
            if done(latest):
                return latest
        async for record in changes:
            if done(record):
                return record
    raise AssertionError("the subscription ended")  # it does not; for the type checker


def finished(run_id: str) -> Callable[[af.Record[Any, Any]], bool]:
    """A ``wait_until`` condition: the run is finished."""
    return lambda record: record.run_id == run_id and record.run_state.finished


async def place(orders: af.Workflow[Order, OrderStatus], order: DemoOrder) -> str:
    """Trigger the order's run; cancel a run left unfinished by an interrupted demo first."""
    initial = Order(order.customer, list(order.items), order.amount_cents)
    while True:
        try:
            return await orders.trigger(order.foreign_id, initial=initial)
        except af.WorkflowInProgress:
            old = await orders.latest(order.foreign_id)
            with contextlib.suppress(af.InvalidTransition):  # it may just have finished
                await orders.cancel(old.run_id, "left over from an interrupted demo")


async def customer(
    client: af.gateway.GatewayClient, order: DemoOrder, run_id: str, payment_timeout: float
) -> None:
    """What the payment provider's webhook (or the customer) sends through the gateway."""
    waiting = OrderStatus.AWAITING_PAYMENT.name
    await client.await_status(ORDERS, order.foreign_id, run_id, waiting, timeout=30)
    if order.cancels_after is not None:
        await trio.sleep(order.cancels_after * payment_timeout)
        await client.cancel(ORDERS, run_id, reason="the customer changed their mind")
    elif order.pays_after is not None:
        await trio.sleep(order.pays_after * payment_timeout)
        reference = f"pay_{secrets.token_hex(4)}"
        body = {"reference": reference, "amount_cents": order.amount_cents}
        await client.callback(ORDERS, order.foreign_id, waiting, json.dumps(body).encode())


def report_clock_offset(now: datetime, lead: timedelta, last_report: datetime | None) -> timedelta:
    """How far ahead the report's clock runs so that a minute begins ``lead`` from now.

    The minute is also later than the last report of an earlier demo on the same
    database, since a schedule never fires twice for one cron time.
    """
    minute = (now + lead).replace(second=0, microsecond=0)
    if minute < now + lead:
        minute += timedelta(minutes=1)
    if last_report is not None:
        minute = max(minute, last_report.replace(second=0, microsecond=0) + timedelta(minutes=1))
    return minute - (now + lead)


async def until_stopped() -> None:
    """Wait for SIGTERM (Ctrl-C interrupts the whole demo: see ``_until_interrupted``)."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def run_demo(
    db: Path,
    *,
    payment_timeout: float = 3.0,
    out: Callable[[str], None] = print,
    console: tuple[str, int] | None = None,
    keep_open: Callable[[str, str], Awaitable[None]] | None = None,
) -> Outcome:
    """Run the demo on the SQLite file ``db``; return the final records.

    With ``console`` (host, port), the web console serves the demo's runs from the start
    and stays open when they are done, until ``keep_open(url, token)`` returns (default:
    until Ctrl-C or SIGTERM)."""
    started = trio.current_time()
    store = af.SQLiteStore(db)
    try:
        timeout = timedelta(seconds=payment_timeout)
        lead = timeout + timedelta(seconds=2)
        report_clock = await _report_clock(store, lead)
        orders, reports = build(store, report_clock=report_clock, payment_timeout=timeout)
        session_start = report_clock.now()
        token = secrets.token_urlsafe(16)

        async with af.open_workflow(orders, reports), trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(af.serve_gateway, [orders, reports], "127.0.0.1", 0, token=token)
            )
            url = f"ws://127.0.0.1:{port}/"
            console_url = ""
            if console is not None:
                console_url = await _start_console(nursery, [orders, reports], console, token)
                # The fragment never leaves the browser; the page keeps the token for the tab.
                out(f"Console on {console_url}#token={token}")
            _introduce(out, url, db, lead)
            for workflow in (orders, reports):
                await nursery.start(show_changes, workflow, started, payment_timeout, out)
            nursery.start_soon(_schedule_reports, reports, session_start)
            run_ids = await _play_orders(orders, url, token, payment_timeout)
            report = await _wait_for_the_end(orders, reports, run_ids, session_start)
            if console is not None:
                out(
                    f"\nEvery run is done. The console stays open on them: {console_url}"
                    f"#token={token} (Ctrl-C stops it)."
                )
                final = [await orders.lookup(run_id) for run_id in run_ids.values()]
                out("\n" + summary(Outcome(final, report, trio.current_time() - started)))
                await (keep_open or (lambda url, token: until_stopped()))(console_url, token)
            nursery.cancel_scope.cancel()

        final = [await orders.lookup(run_id) for run_id in run_ids.values()]
        return Outcome(final, report, trio.current_time() - started)
    finally:
        await store.aclose()


async def _report_clock(store: af.Store, lead: timedelta) -> ShiftedClock:
    """The sales report's clock: its next minute begins ``lead`` from now (and after the
    last report an earlier demo left in ``store``)."""
    _, probe = build(store)
    try:
        last_report: datetime | None = (await probe.latest(REPORT_ID)).created_at
    except af.RunNotFound:
        last_report = None
    return ShiftedClock(report_clock_offset(datetime.now(UTC), lead, last_report))


async def _start_console(
    nursery: trio.Nursery,
    workflows: list[af.Workflow[Any, Any]],
    console: tuple[str, int],
    token: str,
) -> str:
    """Serve the web console on ``console`` (host, port); returns its URL."""
    host, port = console
    try:
        bound = await nursery.start(
            functools.partial(af.serve_console, workflows, host, port, token=token)
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise af.ActorflowError(f"cannot serve the console on {host}:{port}: {reason}") from None
    where = f"[{host}]" if ":" in host else host
    return f"http://{where}:{bound}/"


async def _schedule_reports(
    reports: af.Workflow[SalesReport, ReportStatus], session_start: datetime
) -> None:
    """Trigger the sales report on ``SCHEDULE`` from ``session_start`` on: a time left over
    from an earlier demo on this database is not this demo's."""
    await reports.schedule_trigger(REPORT_ID, SCHEDULE, filter=lambda when: when >= session_start)


def _introduce(out: Callable[[str], None], url: str, db: Path, lead: timedelta) -> None:
    """The lines printed before the first order."""
    out(
        "Orders: PLACED -> AWAITING_PAYMENT -> PAID -> SHIPPED, or PAYMENT_EXPIRED when "
        "no payment arrives in time."
    )
    out(f"Gateway on {url} (token required); store {db}")
    out(
        f"The sales report runs on the schedule {SCHEDULE!r}; its next minute starts in "
        f"{lead.total_seconds():g} s.\n"
    )


async def _play_orders(
    orders: af.Workflow[Order, OrderStatus], url: str, token: str, payment_timeout: float
) -> dict[str, str]:
    """Place the demo's orders, then play their customers through the gateway at ``url``
    until each has paid, cancelled or given up; returns the run id of each foreign id."""
    run_ids = {order.foreign_id: await place(orders, order) for order in DEMO_ORDERS}
    async with (
        af.open_gateway_client(url, token=token) as client,
        trio.open_nursery() as customers,
    ):
        for order in DEMO_ORDERS:
            customers.start_soon(
                customer, client, order, run_ids[order.foreign_id], payment_timeout
            )
    return run_ids


async def _wait_for_the_end(
    orders: af.Workflow[Order, OrderStatus],
    reports: af.Workflow[SalesReport, ReportStatus],
    run_ids: dict[str, str],
    session_start: datetime,
) -> af.Record[Any, Any]:
    """Wait until every order is finished and this session's report published; return it."""
    for foreign_id, run_id in run_ids.items():
        await wait_until(orders, foreign_id, finished(run_id))
    return await wait_until(
        reports,
        REPORT_ID,
        lambda r: r.created_at >= session_start and r.status is ReportStatus.PUBLISHED,
    )


def expected_status(order: DemoOrder) -> tuple[OrderStatus, af.RunState]:
    """Where the order's run should end."""
    if order.cancels_after is not None:
        return OrderStatus.AWAITING_PAYMENT, af.RunState.CANCELLED
    if order.pays_after is not None:
        return OrderStatus.SHIPPED, af.RunState.COMPLETED
    return OrderStatus.PAYMENT_EXPIRED, af.RunState.COMPLETED


def check(outcome: Outcome) -> list[str]:
    """What did not end as planned (nothing, normally)."""
    problems = []
    for order, record in zip(DEMO_ORDERS, outcome.orders, strict=True):
        status, run_state = expected_status(order)
        if (record.status, record.run_state) != (status, run_state):
            problems.append(
                f"{order.foreign_id} ended {record.status.name}/{record.run_state.name}, "
                f"not {status.name}/{run_state.name}"
            )
    report = outcome.report.object
    shipped = [o for o in DEMO_ORDERS if o.pays_after is not None and o.cancels_after is None]
    if report.shipped < len(shipped) or report.open:
        problems.append(f"the report counted {report}, not every order finished")
    return problems


def summary(outcome: Outcome) -> str:
    """The table printed at the end."""
    rows: list[tuple[str, str, str, str, str]] = [
        ("FOREIGN ID", "FINAL STATUS", "RUN STATE", "VERSIONS", "DURATION")
    ]
    records: list[af.Record[Any, Any]] = [*outcome.orders, outcome.report]
    for record in records:
        seconds = (record.updated_at - record.created_at).total_seconds()
        rows.append(
            (
                record.foreign_id,
                record.status.name,
                record.run_state.name,
                str(record.version),
                f"{seconds:.2f} s",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _only_error(exc: BaseException) -> af.ActorflowError | None:
    """The ActorflowError that ``exc`` is or holds alone (nurseries wrap it in groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, af.ActorflowError) else None


async def _until_interrupted(demo: Callable[[], Awaitable[Outcome]]) -> Outcome:
    """Run ``demo``; Ctrl-C cancels it cleanly (trio's default would raise
    KeyboardInterrupt wherever the code is, say inside a database write, and the workflows
    would log it as a failed step), then raises KeyboardInterrupt here."""
    outcome: list[Outcome] = []
    interrupted = False
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(on_signal)
            outcome.append(await demo())
            nursery.cancel_scope.cancel()
    if interrupted or not outcome:
        raise KeyboardInterrupt
    return outcome[0]


def main(argv: list[str] | None = None) -> int:
    """The demo's command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0.5 <= args.payment_timeout <= 50:
        parser.error("--payment-timeout must be between 0.5 and 50 seconds")
    console = None if args.console is None else _console_address(parser, args.console)

    def run(db: Path) -> Outcome:
        demo = functools.partial(
            run_demo, db, payment_timeout=args.payment_timeout, console=console
        )
        return trio.run(_until_interrupted, demo)

    try:
        if args.db is not None:
            outcome = run(args.db)
        else:
            with tempfile.TemporaryDirectory(prefix="actorflow-demo-") as directory:
                outcome = run(Path(directory) / "demo.db")
    except BaseException as exc:
        error = _only_error(exc)
        if error is not None:
            print(f"actorflow demo: error: {error}", file=sys.stderr)
            return 1
        if not is_interrupt(exc):
            raise
        print("actorflow demo: interrupted", file=sys.stderr, flush=True)
        return 130
    return _print_outcome(outcome, args.db)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actorflow demo",
        description="Order processing with steps, a payment callback through the websocket "
        "gateway, a durable timeout and a cron schedule, on the embedded SQLite store.",
    )
    parser.add_argument(
        "--db", type=Path, help="the SQLite file to use (default: a temporary one, deleted after)"
    )
    parser.add_argument(
        "--payment-timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="how long an order waits for its payment (default 3)",
    )
    parser.add_argument(
        "--console",
        nargs="?",
        const="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="serve the web console there (default 127.0.0.1:8080) and keep it open on the "
        "demo's runs until Ctrl-C",
    )
    return parser


def _console_address(parser: argparse.ArgumentParser, value: str) -> tuple[str, int]:
    """``--console HOST:PORT`` as (host, port); a wrong one exits with a usage error."""
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        parser.error(f"--console {value!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    return (host.strip("[]") or "127.0.0.1", int(port))


def _print_outcome(outcome: Outcome, db: Path | None) -> int:
    """The summary, what did not end as planned, how to look again; returns the exit code."""
    print(f"\nSummary ({len(outcome.orders)} orders and a report in {outcome.seconds:.1f} s):\n")
    print(summary(outcome))
    problems = check(outcome)
    for problem in problems:
        print(f"actorflow demo: unexpected: {problem}", file=sys.stderr)
    if db is not None:
        print(
            "\nLook at the runs again (from the repository root):\n"
            f"  ORDERS_DB={db} actorflow runs list --workflow orders "
            "--app actorflow.demo.workflow:workflows\n"
            f"  ORDERS_DB={db} actorflow runs history RUN_ID "
            "--app actorflow.demo.workflow:workflows"
        )
    else:
        print("\nKeep the runs with --db demo.db, then look at them with `actorflow runs list`.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
