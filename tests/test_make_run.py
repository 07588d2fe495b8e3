"""actorflow.testing.make_run: call one step, callback or timeout function directly."""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta

import attrs
import pytest

import actorflow as af
from actorflow.testing import Special, SpecialResult, make_run
from tests.workflows import Status, YinYang


class Stock(enum.IntEnum):
    ORDERED = 1
    RESERVED = 2
    SHIPPED = 3


@attrs.define
class Order:
    items: int = 1
    reserved: bool = False
    attempts: int = 0


builder = af.Builder("stock", Order, Stock)


@builder.step(Stock.ORDERED, to=Stock.RESERVED)
async def reserve(run: af.Run[Order, Stock]) -> Stock:
    if run.object.items > 10:
        return run.pause("too many items")
    if run.object.items == 0:
        return run.cancel("nothing ordered")
    if run.object.attempts < 2:
        run.object.attempts += 1
        return run.save_and_repeat()
    run.object.reserved = True
    return Stock.RESERVED


async def shipped(run: af.Run[Order, Stock], payload: bytes) -> Stock:
    if not payload:
        return run.skip()
    return Stock.SHIPPED


async def give_up(run: af.Run[Order, Stock], now: datetime) -> Stock:
    return run.cancel(f"not shipped by {now:%Y-%m-%d}")


builder.add_callback(Stock.RESERVED, shipped, to=Stock.SHIPPED)
builder.add_timeout(Stock.RESERVED, af.after(timedelta(hours=1)), give_up, to=Stock.SHIPPED)


async def test_a_step_changes_the_object_and_returns_a_status() -> None:
    order = Order(attempts=2)
    run = make_run(builder, order)
    assert run.status is Stock.ORDERED  # the start status by default
    assert await reserve(run) is Stock.RESERVED
    assert run.object is order and order.reserved


async def test_special_results_are_inspectable() -> None:
    run = make_run(builder, Order(items=11))
    result = await reserve(run)
    assert result == run.pause("too many items")
    assert isinstance(result, SpecialResult)
    assert (result.kind, result.reason) == (Special.PAUSE, "too many items")
    assert await reserve(make_run(builder, Order(items=0))) == run.cancel("nothing ordered")
    repeat = make_run(builder, Order())
    assert await reserve(repeat) == repeat.save_and_repeat()
    assert repeat.object.attempts == 1
    assert result != run.cancel("too many items")


async def test_callbacks_and_timeouts_with_a_built_workflow() -> None:
    workflow = builder.build(af.MemoryStore())
    run = make_run(workflow, Order(), status=Stock.RESERVED, foreign_id="o-1", run_id="r1")
    assert (run.foreign_id, run.run_id, run.workflow_name) == ("o-1", "r1", "stock")
    assert await shipped(run, b"tracking 42") is Stock.SHIPPED
    assert await shipped(run, b"") == run.skip()
    late = await give_up(run, datetime(2026, 1, 2, tzinfo=UTC))
    assert late == run.cancel("not shipped by 2026-01-02")
    assert run.record.object == Order() and run.record.status is Stock.RESERVED


def test_works_without_trio_for_the_builder_of_the_getting_started_workflow() -> None:
    yinyang = af.Builder("yinyang", YinYang, Status)
    run = make_run(yinyang, YinYang(yin=True), status=Status.MIDDLE)
    assert run.status is Status.MIDDLE and run.object.yin


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("not a workflow", Order()), {}, "needs an af.Workflow or an af.Builder"),
        ((builder, YinYang()), {}, "Order"),
        ((builder, Order()), {"status": Status.MIDDLE}, "status must be a Stock"),
        ((builder, Order()), {"status": 99}, "status must be a Stock"),
        ((builder, Order()), {"status": True}, "status must be a Stock"),
        ((builder, Order()), {"foreign_id": ""}, "foreign_id must be a non-empty string"),
        ((builder, Order()), {"run_id": 7}, "run_id must be a non-empty string"),
    ],
)
def test_bad_arguments_are_invalid_argument(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(af.InvalidArgument, match=message):
        make_run(*args, **kwargs)  # type: ignore[arg-type]
