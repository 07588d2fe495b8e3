"""OpenTelemetry spans: one per step, callback, timeout, hook and connector call, in the
trace that was active at ``trigger``, across a restart and across the gateway."""

from __future__ import annotations

import enum
import functools
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import actorflow as af


class Leg(enum.IntEnum):
    A = 1
    B = 2
    C = 3
    D = 4
    E = 5


@attrs.define
class Trip:
    legs: int = 0


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def trip(
    store: af.Store, clock: af.Clock, provider: TracerProvider, hold: trio.Event | None
) -> af.Workflow[Trip, Leg]:
    """A -> B -> C (fails once) -> D, then a callback or a timeout to E; ``hold`` keeps
    step B waiting (so the worker can be stopped there)."""
    builder = af.Builder("trip", Trip, Leg)
    failed: list[str] = []

    @builder.step(Leg.A, to=Leg.B)
    async def a(run: af.Run[Trip, Leg]) -> Leg:
        run.object.legs += 1
        return Leg.B

    @builder.step(Leg.B, to=Leg.C)
    async def b(run: af.Run[Trip, Leg]) -> Leg:
        if hold is not None:
            await hold.wait()
        run.object.legs += 1
        return Leg.C

    @builder.step(Leg.C, to=Leg.D, error_backoff=timedelta(seconds=1))
    async def c(run: af.Run[Trip, Leg]) -> Leg:
        if not failed:
            failed.append(run.run_id)
            raise RuntimeError("a flat tyre")
        return Leg.D

    async def arrived(run: af.Run[Trip, Leg], payload: bytes) -> Leg:
        return Leg.E

    builder.add_callback(Leg.D, arrived, to=[Leg.E])

    async def gave_up(run: af.Run[Trip, Leg], now: datetime) -> Leg:
        return Leg.E

    builder.add_timeout(Leg.D, af.after(timedelta(hours=1)), gave_up, to=[Leg.E])

    @builder.on_complete
    async def done(record: af.Record[Trip, Leg]) -> None:
        pass

    return builder.build(
        store, clock=clock, tracing=provider, metrics=False, grace_period=timedelta(0)
    )


def of_kind(found: tuple[ReadableSpan, ...], kind: str) -> list[ReadableSpan]:
    return [s for s in found if (s.attributes or {}).get("actorflow.kind") == kind]


async def test_a_trace_started_at_trigger_continues_through_every_step_after_a_restart(
    autojump_clock: Any,
    clock: af.Clock,
    tmp_path: Path,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("caller")
    path = tmp_path / "trip.db"

    first_store = af.SQLiteStore(path)
    hold = trio.Event()  # never set: the first worker stops with step B in flight
    first = trip(first_store, clock, provider, hold)
    async with af.open_workflow(first):
        with tracer.start_as_current_span("book a trip") as request:
            run_id = await first.trigger("trip-1")
        await af.testing.wait_for(first, "trip-1", lambda r: r.status == Leg.B)
        await trio.testing.wait_all_tasks_blocked()  # B is waiting on the hold
    await first_store.aclose()
    origin = request.get_span_context()

    # A new process, in effect: a new store object and workflow on the same file.
    second_store = af.SQLiteStore(path)
    second = trip(second_store, clock, provider, None)
    async with af.open_workflow(second):
        await second.await_status("trip-1", run_id, Leg.D)
        # A callback from another trace: its span is that trace's child, linked to the run's.
        with tracer.start_as_current_span("driver arrives") as arrival:
            record = await second.callback("trip-1", Leg.D, b"here")
        assert record is not None and record.status == Leg.E
        await trio.testing.wait_all_tasks_blocked()
    await second_store.aclose()

    assert record.meta.trace_origin.split("-")[1] == format(origin.trace_id, "032x")
    found = exporter.get_finished_spans()
    steps = of_kind(found, "step")
    names = [s.name for s in steps]
    assert names == [
        "step trip/a-consumer",
        "step trip/b-consumer",  # cancelled by the first worker's stop
        "step trip/b-consumer",  # done by the second worker
        "step trip/c-consumer",  # a flat tyre
        "step trip/c-consumer",
    ]
    for span in steps:
        assert span.context is not None and span.parent is not None
        assert span.context.trace_id == origin.trace_id
        assert span.parent.span_id == origin.span_id
        attributes = span.attributes or {}
        assert attributes["actorflow.run_id"] == run_id
        assert attributes["actorflow.foreign_id"] == "trip-1"
        assert attributes["actorflow.workflow"] == "trip"
    outcomes = [(s.attributes or {})["actorflow.outcome"] for s in steps]
    assert outcomes == ["B", "cancelled", "C", "error", "D"]
    assert [(s.attributes or {})["actorflow.version"] for s in steps] == [1, 2, 2, 3, 3]
    failed = steps[3]
    assert failed.status.status_code is StatusCode.ERROR
    messages = [str((e.attributes or {}).get("exception.message")) for e in failed.events]
    assert "a flat tyre" in messages

    (callback,) = of_kind(found, "callback")
    assert callback.parent is not None and callback.context is not None
    assert callback.context.trace_id == arrival.get_span_context().trace_id
    assert callback.parent.span_id == arrival.get_span_context().span_id
    assert [link.context.span_id for link in callback.links] == [origin.span_id]
    assert (callback.attributes or {})["actorflow.outcome"] == "completed"

    (hook,) = of_kind(found, "hook")
    assert hook.context is not None and hook.context.trace_id == origin.trace_id
    assert hook.name == "hook trip/completed-run-state-change-hook-consumer"


async def test_timeouts_and_connectors_have_spans(
    autojump_clock: Any, clock: af.Clock, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("caller")
    store = af.MemoryStore()
    workflow = trip(store, clock, provider, None)
    with tracer.start_as_current_span("remote producer") as producer:
        carrier = {"traceparent": af_traceparent()}
    event = af.ConnectorEvent(
        id="1", foreign_id="trip-9", type="booked", headers=carrier, created_at=clock.now()
    )
    builder = af.Builder("booker", Trip, Leg)

    @builder.step(Leg.A, to=Leg.B)
    async def noop(run: af.Run[Trip, Leg]) -> Leg:
        return Leg.B

    async def book(wf: Any, event: af.ConnectorEvent) -> None:
        await workflow.trigger(event.foreign_id)

    builder.add_connector("bookings", af.MemorySource([event]), book)
    booker = builder.build(store, clock=clock, tracing=provider, metrics=False)
    async with af.open_workflow(workflow, booker):
        await af.testing.wait_for(workflow, "trip-9", lambda r: r.status == Leg.D)
        await trio.sleep(3600)  # the hour-long timeout fires
        await af.testing.wait_for(workflow, "trip-9", lambda r: r.status == Leg.E)
    found = exporter.get_finished_spans()
    (connector,) = of_kind(found, "connector")
    assert connector.parent is not None and connector.context is not None
    assert connector.parent.span_id == producer.get_span_context().span_id
    assert (connector.attributes or {})["actorflow.event_id"] == "1"
    # The run triggered inside the connector's span belongs to its trace.
    (timeout,) = of_kind(found, "timeout")
    assert timeout.context is not None and timeout.parent is not None
    assert timeout.context.trace_id == connector.context.trace_id
    assert timeout.parent.span_id == connector.context.span_id
    assert timeout.name == "timeout trip/d-timeout-consumer"


def af_traceparent() -> str:
    from actorflow._observe.tracing import current_traceparent

    return current_traceparent()


async def test_the_gateway_carries_the_caller_s_trace(
    clock: af.Clock, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("remote caller")
    workflow = trip(af.MemoryStore(), clock, provider, None)
    async with trio.open_nursery() as nursery, af.open_workflow(workflow):
        port = await nursery.start(functools.partial(af.serve_gateway, [workflow], "127.0.0.1", 0))
        async with af.open_gateway_client(f"ws://127.0.0.1:{port}/") as client:
            with tracer.start_as_current_span("remote trigger") as remote:
                run_id = await client.trigger("trip", "trip-7")
            await client.await_status("trip", "trip-7", run_id, "D")
            with tracer.start_as_current_span("remote callback") as remote_callback:
                await client.callback("trip", "trip-7", "D", b"here")
        nursery.cancel_scope.cancel()
    record = await workflow.lookup(run_id)
    context = remote.get_span_context()
    expected = f"00-{context.trace_id:032x}-{context.span_id:016x}-"
    assert record.meta.trace_origin.startswith(expected)
    found = exporter.get_finished_spans()
    for span in of_kind(found, "step"):
        assert span.parent is not None and span.parent.span_id == context.span_id
    (callback,) = of_kind(found, "callback")
    assert callback.parent is not None
    assert callback.parent.span_id == remote_callback.get_span_context().span_id


async def test_without_a_trace_at_trigger_nothing_is_stored(
    autojump_clock: Any, clock: af.Clock, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    workflow = trip(af.MemoryStore(), clock, provider, None)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("plain")
        record = await workflow.await_status("plain", run_id, Leg.D)
    assert record.meta.trace_origin == ""
    assert "trace_origin" not in record.meta.to_dict()
    steps = of_kind(exporter.get_finished_spans(), "step")
    assert steps and all(s.parent is None for s in steps)  # each a root of its own


ROOT = Path(__file__).resolve().parents[1]


async def test_the_tracing_example_prints_one_trace() -> None:
    root = ROOT
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "examples.tracing"],
            cwd=root,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    spans = [line.split() for line in lines if line.startswith("span ")]
    names = [words[1] if words[1] != "step" else f"step {words[2]}" for words in spans]
    assert names == [
        "checkout",
        "scan",
        "step shipping/ordered-consumer",
        "step shipping/packed-consumer",
    ]
    assert len({words[words.index("trace") + 1] for words in spans}) == 1
    assert "order-1: SHIPPED by parcel-post" in lines
