"""A workflow traced with OpenTelemetry, its spans printed to the console.

The trace that is active when ``trigger`` is called is stored with the run; every step of
the run is a span in that trace, whichever worker runs it and after any restart. Needs
``pip install 'actorflow[otel]' opentelemetry-sdk``.

    python -m examples.tracing
"""

from __future__ import annotations

import enum
from datetime import timedelta

import attrs
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import actorflow as af


class Parcel(enum.IntEnum):
    ORDERED = 1
    PACKED = 2
    SHIPPED = 3


@attrs.define
class Shipment:
    items: int = 1
    carrier: str = ""


def one_line(span: ReadableSpan) -> str:
    """A span as one line: name, trace id, parent span id, outcome."""
    context = span.context
    trace_id = format(context.trace_id, "032x") if context else "-"
    parent = format(span.parent.span_id, "016x") if span.parent else "none (root)"
    outcome = (span.attributes or {}).get("actorflow.outcome", "")
    return f"span {span.name:<34} trace {trace_id}  parent {parent}  {outcome}\n"


def tracer_provider() -> TracerProvider:
    """A tracer provider that prints each finished span (use an OTLP exporter in production)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=one_line)))
    return provider


def build(store: af.Store, provider: TracerProvider) -> af.Workflow[Shipment, Parcel]:
    builder = af.Builder("shipping", Shipment, Parcel)

    @builder.step(Parcel.ORDERED, to=Parcel.PACKED)
    async def pack(run: af.Run[Shipment, Parcel]) -> Parcel:
        # Spans the step makes are children of the step's span.
        with trace.get_tracer("warehouse", tracer_provider=provider).start_as_current_span("scan"):
            await trio.sleep(0.01)
        return Parcel.PACKED

    @builder.step(Parcel.PACKED, to=Parcel.SHIPPED)
    async def ship(run: af.Run[Shipment, Parcel]) -> Parcel:
        run.object.carrier = "parcel-post"
        return Parcel.SHIPPED

    # tracing=True would use the global tracer provider (trace.set_tracer_provider).
    return builder.build(store, tracing=provider, poll_interval=timedelta(milliseconds=50))


async def run_example(store: af.Store, provider: TracerProvider) -> af.Record[Shipment, Parcel]:
    workflow = build(store, provider)
    checkout = trace.get_tracer("shop", tracer_provider=provider)
    async with af.open_workflow(workflow):
        # The shop's request span: the run's steps join its trace.
        with checkout.start_as_current_span("checkout"):
            run_id = await workflow.trigger("order-1")
        return await workflow.await_status("order-1", run_id, Parcel.SHIPPED)


def main() -> int:
    provider = tracer_provider()
    record = trio.run(run_example, af.MemoryStore(), provider)
    provider.shutdown()
    print(f"order-1: {record.status.name} by {record.object.carrier}")
    print(f"trace origin stored with the run: {record.meta.trace_origin}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
