"""The shop of the two connector examples (``examples.connector``, ``examples.kafka``).

An order is placed, waits at AWAITING_PAYMENT until its payment settled, is paid, then
shipped. How the payment is asked for and how its settlement comes back is what each
example shows; what is the same in both is here.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable

import attrs

import actorflow as af


class PaymentStatus(enum.IntEnum):
    REQUESTED = 1
    SETTLED = 2


class OrderStatus(enum.IntEnum):
    PLACED = 1
    AWAITING_PAYMENT = 2
    PAID = 3
    SHIPPED = 4


@attrs.define
class Order:
    amount_cents: int = 0
    payment_reference: str = ""
    shipped: bool = False


class NotWaitingYet(Exception):
    """The order has not stored AWAITING_PAYMENT yet: the connector retries later."""


def new_orders_builder() -> af.Builder[Order, OrderStatus]:
    """The orders workflow from AWAITING_PAYMENT on: the payment arrives as a callback
    (JSON ``{"reference": ...}``), then the order ships. The example adds the PLACED step."""
    builder = af.Builder("orders", Order, OrderStatus)

    async def payment_settled(run: af.Run[Order, OrderStatus], payload: bytes) -> OrderStatus:
        run.object.payment_reference = json.loads(payload)["reference"]
        return OrderStatus.PAID

    builder.add_callback(OrderStatus.AWAITING_PAYMENT, payment_settled, to=OrderStatus.PAID)

    @builder.step(OrderStatus.PAID, to=OrderStatus.SHIPPED)
    async def ship(run: af.Run[Order, OrderStatus]) -> OrderStatus:
        run.object.shipped = True
        return OrderStatus.SHIPPED

    return builder


async def hand_over_payment(
    orders: af.Workflow[Order, OrderStatus], foreign_id: str, reference: str
) -> None:
    """Hand a settled payment to its order waiting at AWAITING_PAYMENT (a connector's work).

    Delivery is at-least-once, so this is idempotent: an order already past
    AWAITING_PAYMENT got this payment before, and nothing happens.

    Raises:
        NotWaitingYet: the payment settled before the order stored AWAITING_PAYMENT;
            raising makes the connector back off and deliver the event again.
    """
    payload = json.dumps({"reference": reference}).encode()
    if await orders.callback(foreign_id, OrderStatus.AWAITING_PAYMENT, payload):
        return
    latest = await orders.latest(foreign_id)
    if latest.status < OrderStatus.AWAITING_PAYMENT and latest.run_state.active:
        raise NotWaitingYet(f"order {foreign_id} is still {latest.status.name}")


async def place_orders(
    orders: af.Workflow[Order, OrderStatus],
    count: int,
    say: Callable[[af.Record[Order, OrderStatus]], None] | None = None,
) -> list[af.Record[Order, OrderStatus]]:
    """Place ``count`` orders (``order-1``: 100 cents, ...), wait until every one is
    shipped, ``say`` each; return the final records. The workflows must be running."""
    placed = {
        f"order-{n}": await orders.trigger(f"order-{n}", initial=Order(100 * n))
        for n in range(1, count + 1)
    }
    shipped = []
    for foreign_id, run_id in placed.items():
        record = await orders.await_status(foreign_id, run_id, OrderStatus.SHIPPED)
        shipped.append(record)
        if say is not None:
            say(record)
    return shipped
