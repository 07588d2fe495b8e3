"""Two connected workflows: orders wait for payments.

``orders`` asks ``payments`` for a payment and waits; a connector on ``orders`` follows
``payments`` with ``af.connect(payments, status=PaymentStatus.SETTLED)`` and hands each
settled payment to the waiting order as a callback. The connector keeps a durable cursor
in the store, so a restart resumes where it stopped; delivery is at-least-once, so the
connector function is idempotent.

Run it (no server needed)::

    python -m examples.connector           # on a SQLite file in a temporary directory
    python -m examples.connector --memory  # on MemoryStore
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import timedelta
from pathlib import Path

import attrs
import trio

import actorflow as af
from examples.shop import (
    Order,
    OrderStatus,
    PaymentStatus,
    hand_over_payment,
    new_orders_builder,
    place_orders,
)

__all__ = ["Order", "OrderStatus", "Payment", "PaymentStatus", "build", "run_example"]


@attrs.define
class Payment:
    amount_cents: int = 0
    reference: str = ""


def build(
    store: af.Store, clock: af.Clock | None = None
) -> tuple[af.Workflow[Payment, PaymentStatus], af.Workflow[Order, OrderStatus]]:
    """The payments and orders workflows on one store."""
    pay = af.Builder("payments", Payment, PaymentStatus)

    @pay.step(PaymentStatus.REQUESTED, to=PaymentStatus.SETTLED)
    async def charge(run: af.Run[Payment, PaymentStatus]) -> PaymentStatus:
        run.object.reference = f"ch_{run.foreign_id}_{run.object.amount_cents}"
        return PaymentStatus.SETTLED

    payments = pay.build(store, clock=clock)

    # The rest of the orders workflow (callback, shipping) is in examples/shop.py.
    orders_builder = new_orders_builder()

    @orders_builder.step(OrderStatus.PLACED, to=OrderStatus.AWAITING_PAYMENT)
    async def request_payment(run: af.Run[Order, OrderStatus]) -> OrderStatus:
        # Steps run at least once: do not ask twice for the same order.
        try:
            await payments.latest(run.foreign_id)
        except af.RunNotFound:
            await payments.trigger(run.foreign_id, initial=Payment(run.object.amount_cents))
        return OrderStatus.AWAITING_PAYMENT

    async def on_settled(orders: af.Workflow[Order, OrderStatus], event: af.ConnectorEvent) -> None:
        payment = await payments.lookup(event.header("run_id"))
        await hand_over_payment(orders, event.foreign_id, payment.object.reference)

    orders_builder.add_connector(
        "payments",
        af.connect(payments, status=PaymentStatus.SETTLED),
        on_settled,
        error_backoff=timedelta(milliseconds=20),
    )
    orders = orders_builder.build(store, clock=clock)
    return payments, orders


async def run_example(
    store: af.Store, *, count: int = 3, clock: af.Clock | None = None, quiet: bool = False
) -> list[af.Record[Order, OrderStatus]]:
    """Place ``count`` orders, wait until every one is shipped; return the final records."""
    payments, orders = build(store, clock=clock)

    def say(record: af.Record[Order, OrderStatus]) -> None:
        print(
            f"{record.foreign_id}: {record.object.amount_cents} cents paid "
            f"({record.object.payment_reference}), shipped"
        )

    async with af.open_workflow(payments, orders):
        return await place_orders(orders, count, None if quiet else say)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--memory`` for MemoryStore, else a SQLite file in a temp dir."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--memory", action="store_true", help="use MemoryStore")
    parser.add_argument("--orders", type=int, default=3, help="how many orders to place")
    args = parser.parse_args(argv)

    async def run() -> None:
        if args.memory:
            await run_example(af.MemoryStore(), count=args.orders)
            return
        with tempfile.TemporaryDirectory() as directory:
            store = af.SQLiteStore(Path(directory) / "connector.db")
            try:
                await run_example(store, count=args.orders)
            finally:
                await store.aclose()

    trio.run(run)


if __name__ == "__main__":
    main()
