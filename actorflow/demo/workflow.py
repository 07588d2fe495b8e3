"""The demo's workflows: a shop's orders, and a sales report made on a schedule.

``orders``::

    PLACED --reserve_stock--> AWAITING_PAYMENT --payment (callback)--> PAID --ship--> SHIPPED
                              AWAITING_PAYMENT --no payment in time (timeout)--> PAYMENT_EXPIRED

``sales_report``::

    REQUESTED --compile--> PUBLISHED      (triggered by a cron schedule)

``build(store)`` binds both to a store. ``workflows()`` is the same for the command line,
on the SQLite file named by ``ORDERS_DB`` (default ``orders.db``)::

    ORDERS_DB=demo.db actorflow runs list --app actorflow.demo.workflow:workflows \\
        --workflow orders
"""

from __future__ import annotations

import enum
import json
import os
from datetime import timedelta

import attrs

import actorflow as af


class OrderStatus(enum.IntEnum):
    PLACED = 1
    AWAITING_PAYMENT = 2
    PAID = 3
    SHIPPED = 4
    PAYMENT_EXPIRED = 5


@attrs.define
class Order:
    customer: str = ""
    items: list[str] = attrs.Factory(list)
    amount_cents: int = 0
    stock_reserved: bool = False
    payment_reference: str = ""
    tracking_number: str = ""


@attrs.frozen
class Payment:
    """The body of the payment provider's webhook."""

    reference: str
    amount_cents: int


class WrongAmount(ValueError):
    """A payment that does not match the order (the callback counts it as an error)."""


class ReportStatus(enum.IntEnum):
    REQUESTED = 1
    PUBLISHED = 2


@attrs.define
class SalesReport:
    shipped: int = 0
    expired: int = 0
    cancelled: int = 0
    open: int = 0
    revenue_cents: int = 0


ORDERS = "orders"
REPORTS = "sales_report"


def build(
    store: af.Store,
    *,
    clock: af.Clock | None = None,
    report_clock: af.Clock | None = None,
    payment_timeout: timedelta = timedelta(hours=1),
) -> tuple[af.Workflow[Order, OrderStatus], af.Workflow[SalesReport, ReportStatus]]:
    """The orders and sales-report workflows on ``store``.

    Args:
        store: where the runs live.
        clock: the orders' wall clock (default: the system clock).
        report_clock: the sales report's wall clock, which its schedule follows.
        payment_timeout: how long an order waits for its payment.
    """
    orders = _build_orders(store, clock, payment_timeout)
    return orders, _build_reports(store, orders, report_clock)


def _build_orders(
    store: af.Store, clock: af.Clock | None, payment_timeout: timedelta
) -> af.Workflow[Order, OrderStatus]:
    """PLACED -> AWAITING_PAYMENT -> PAID (or PAYMENT_EXPIRED) -> SHIPPED."""
    orders_builder = af.Builder(ORDERS, Order, OrderStatus)

    @orders_builder.step(OrderStatus.PLACED, to=OrderStatus.AWAITING_PAYMENT)
    async def reserve_stock(run: af.Run[Order, OrderStatus]) -> OrderStatus:
        # A real shop calls its inventory service here. Steps run at least once, so
        # the call must be idempotent (reserve by order id).
        run.object.stock_reserved = True
        return OrderStatus.AWAITING_PAYMENT

    async def payment_received(run: af.Run[Order, OrderStatus], payload: bytes) -> OrderStatus:
        payment = Payment(**json.loads(payload))
        if payment.amount_cents != run.object.amount_cents:
            raise WrongAmount(
                f"paid {payment.amount_cents} cents, the order is {run.object.amount_cents}"
            )
        run.object.payment_reference = payment.reference
        return OrderStatus.PAID

    orders_builder.add_callback(OrderStatus.AWAITING_PAYMENT, payment_received, to=OrderStatus.PAID)

    async def payment_expired(run: af.Run[Order, OrderStatus], now: object) -> OrderStatus:
        run.object.stock_reserved = False  # give the stock back
        return OrderStatus.PAYMENT_EXPIRED

    orders_builder.add_timeout(
        OrderStatus.AWAITING_PAYMENT,
        af.after(payment_timeout),
        payment_expired,
        to=OrderStatus.PAYMENT_EXPIRED,
    )

    @orders_builder.step(OrderStatus.PAID, to=OrderStatus.SHIPPED, pause_after_errors=5)
    async def ship(run: af.Run[Order, OrderStatus]) -> OrderStatus:
        run.object.tracking_number = f"TRK-{run.foreign_id.upper()}"
        return OrderStatus.SHIPPED

    return orders_builder.build(store, clock=clock)


def _build_reports(
    store: af.Store, orders: af.Workflow[Order, OrderStatus], clock: af.Clock | None
) -> af.Workflow[SalesReport, ReportStatus]:
    """REQUESTED -> PUBLISHED: a report of every order so far."""
    reports_builder = af.Builder(REPORTS, SalesReport, ReportStatus)

    @reports_builder.step(ReportStatus.REQUESTED, to=ReportStatus.PUBLISHED)
    async def compile_report(run: af.Run[SalesReport, ReportStatus]) -> ReportStatus:
        report = SalesReport()
        after: str | None = None
        while True:
            page = await orders.list_runs(limit=100, after=after)
            for order in page:
                _count(report, order)
            if len(page) < 100:
                break
            after = page[-1].run_id
        run.object = report
        return ReportStatus.PUBLISHED

    return reports_builder.build(store, clock=clock)


def _count(report: SalesReport, order: af.Record[Order, OrderStatus]) -> None:
    """Add ``order`` to the report's counts."""
    if order.run_state is af.RunState.CANCELLED:
        report.cancelled += 1
    elif order.status is OrderStatus.SHIPPED:
        report.shipped += 1
        report.revenue_cents += order.object.amount_cents
    elif order.status is OrderStatus.PAYMENT_EXPIRED:
        report.expired += 1
    elif not order.run_state.finished:
        report.open += 1


def workflows() -> list[af.Workflow[Order, OrderStatus] | af.Workflow[SalesReport, ReportStatus]]:
    """Both workflows on the SQLite file ``$ORDERS_DB`` (for the ``actorflow`` command)."""
    orders, reports = build(af.SQLiteStore(os.environ.get("ORDERS_DB", "orders.db")))
    return [orders, reports]
