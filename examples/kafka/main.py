"""Two workflows that talk only through Kafka: orders wait for payments.

``orders`` and ``payments`` run as if they were two services: each has a store of its
own and neither calls the other. Each publishes every transition to Kafka through its
outbox relay (``streamer=``: the topic named after the workflow, key = foreign id), and
each follows the other's topic with a connector (``streamer.source(topic)``: a consumer
group per connector, offsets committed after the connector function returned, so a
restart resumes after the last event handled).

1. An order is placed and moves to AWAITING_PAYMENT.
2. The payments connector sees that transition on the ``orders`` topic and starts a
   payment for the order; the payment settles.
3. The orders connector sees SETTLED on the ``payments`` topic and hands the payment to
   the waiting order as a callback; the order is paid, then shipped.

Delivery is at-least-once, so both connector functions are idempotent.

Run it against a broker (``ACTORFLOW_KAFKA_BOOTSTRAP`` or ``--bootstrap``)::

    python -m examples.kafka --bootstrap localhost:9092
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

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
    reference: str = ""


FAST_RETRIES: dict[str, Any] = {"error_backoff": timedelta(milliseconds=50)}


def build(
    streamer: af.KafkaStreamer, orders_store: af.Store, payments_store: af.Store
) -> tuple[af.Workflow[Order, OrderStatus], af.Workflow[Payment, PaymentStatus]]:
    """The two workflows, each on its own store, connected through ``streamer``."""
    # The rest of the orders workflow (callback, shipping) is in examples/shop.py.
    orders_builder = new_orders_builder()

    @orders_builder.step(OrderStatus.PLACED, to=OrderStatus.AWAITING_PAYMENT)
    async def await_payment(run: af.Run[Order, OrderStatus]) -> OrderStatus:
        return OrderStatus.AWAITING_PAYMENT  # published to Kafka by the relay

    async def on_payment(orders: af.Workflow[Order, OrderStatus], event: af.ConnectorEvent) -> None:
        if event.type == str(int(PaymentStatus.SETTLED)):
            await hand_over_payment(orders, event.foreign_id, event.header("run_id"))

    orders_builder.add_connector(
        "payments", streamer.source("payments"), on_payment, **FAST_RETRIES
    )
    orders = orders_builder.build(orders_store, streamer=streamer)

    payments_builder = af.Builder("payments", Payment, PaymentStatus)

    @payments_builder.step(PaymentStatus.REQUESTED, to=PaymentStatus.SETTLED)
    async def charge(run: af.Run[Payment, PaymentStatus]) -> PaymentStatus:
        run.object.reference = f"ch_{run.foreign_id}"
        return PaymentStatus.SETTLED  # published to Kafka by the relay

    async def on_order(
        payments: af.Workflow[Payment, PaymentStatus], event: af.ConnectorEvent
    ) -> None:
        if event.type != str(int(OrderStatus.AWAITING_PAYMENT)):
            return
        try:  # one payment per order, however often the event is delivered
            await payments.latest(event.foreign_id)
        except af.RunNotFound:
            await payments.trigger(event.foreign_id)

    payments_builder.add_connector("orders", streamer.source("orders"), on_order, **FAST_RETRIES)
    payments = payments_builder.build(payments_store, streamer=streamer)
    return orders, payments


def make_streamer(bootstrap: str, topic_prefix: str = "", **options: Any) -> af.KafkaStreamer:
    """A streamer with short group timeouts, so the demo starts quickly."""
    settings: dict[str, Any] = {
        "session_timeout": timedelta(seconds=1),
        "heartbeat_interval": timedelta(milliseconds=250),
        "connect_timeout": timedelta(seconds=5),
    }
    settings.update(options)
    return af.KafkaStreamer(bootstrap, topic_prefix=topic_prefix, **settings)


async def run_example(
    streamer: af.KafkaStreamer, directory: Path, *, count: int = 3, quiet: bool = False
) -> list[af.Record[Order, OrderStatus]]:
    """Place ``count`` orders, wait until every one is shipped; return the final records."""
    orders_store = af.SQLiteStore(directory / "orders.db")
    payments_store = af.SQLiteStore(directory / "payments.db")

    def say(record: af.Record[Order, OrderStatus]) -> None:
        print(
            f"{record.foreign_id}: {record.object.amount_cents} cents paid "
            f"(payment {record.object.payment_reference[:8]}...), shipped"
        )

    try:
        orders, payments = build(streamer, orders_store, payments_store)
        async with af.open_workflow(orders, payments):
            return await place_orders(orders, count, None if quiet else say)
    finally:
        await orders_store.aclose()
        await payments_store.aclose()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--bootstrap HOST:PORT`` (default: ACTORFLOW_KAFKA_BOOTSTRAP)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("ACTORFLOW_KAFKA_BOOTSTRAP", "localhost:9092"),
        help="Kafka bootstrap servers",
    )
    parser.add_argument("--orders", type=int, default=3, help="how many orders to place")
    parser.add_argument(
        "--topic-prefix",
        default=f"example-{uuid.uuid4().hex[:8]}-",
        help="prefix of the topics (default: a fresh one per run)",
    )
    args = parser.parse_args(argv)
    streamer = make_streamer(args.bootstrap, args.topic_prefix)

    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            await run_example(streamer, Path(directory), count=args.orders)

    trio.run(run)


if __name__ == "__main__":
    main()
