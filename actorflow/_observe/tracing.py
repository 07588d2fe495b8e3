"""OpenTelemetry spans (``actorflow[otel]``): one per step, callback, timeout, hook and
connector call, in the trace of the run's trigger.

``trigger`` stores the caller's trace context with the run (``Meta.trace_origin``, a W3C
``traceparent``, like luno/workflow's ``Meta.TraceOrigin``); every later span of that run
is its child, in whichever process and after however many restarts. A callback's span is
the child of the caller of ``callback`` and links to the run's origin.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any, cast, final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from actorflow._model.record import RawRecord

_propagator = TraceContextTextMapPropagator()


def current_traceparent() -> str:
    """The W3C traceparent of the span active in the calling task ("" without one)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")


def _extract(traceparent: str) -> otel_context.Context:
    return _propagator.extract({"traceparent": traceparent}, context=otel_context.Context())


@contextlib.contextmanager
def continue_trace(traceparent: str) -> Iterator[None]:
    """Make the remote span of ``traceparent`` current in the calling task (the gateway does
    this for a caller's ``traceparent``); nothing for an empty or invalid one."""
    if not traceparent:
        yield
        return
    ctx = _extract(traceparent)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


@final
class Tracing:
    """The runtime's Observer for spans."""

    def __init__(self, workflow_name: str, provider: Any = None) -> None:
        self.workflow_name = workflow_name
        self._tracer = trace.get_tracer("actorflow", tracer_provider=provider)

    def begin(
        self,
        kind: str,
        process: str,
        raw: RawRecord | None,
        *,
        parent: str = "",
        attributes: Mapping[str, str | int] | None = None,
    ) -> object:
        origin = raw.meta.trace_origin if raw is not None else ""
        links: list[trace.Link] = []
        if parent:
            ctx = _extract(parent)
            if origin and origin != parent:
                origin_span = trace.get_current_span(_extract(origin)).get_span_context()
                if origin_span.is_valid:
                    links.append(trace.Link(origin_span, {"actorflow.link": "trace_origin"}))
        elif origin:
            ctx = _extract(origin)
        else:
            ctx = otel_context.Context()  # a trace of its own, not the worker's ambient one
        attrs: dict[str, str | int] = {
            "actorflow.workflow": self.workflow_name,
            "actorflow.process": process,
            "actorflow.kind": kind,
        }
        if raw is not None:
            attrs.update(
                {
                    "actorflow.foreign_id": raw.foreign_id,
                    "actorflow.run_id": raw.run_id,
                    "actorflow.status": raw.meta.status_description or str(raw.status),
                    "actorflow.run_state": raw.run_state.name,
                    "actorflow.version": raw.version,
                }
            )
        if attributes:
            attrs.update(attributes)
        span = self._tracer.start_span(
            f"{kind} {self.workflow_name}/{process}",
            context=ctx,
            kind=trace.SpanKind.CONSUMER if kind == "connector" else trace.SpanKind.INTERNAL,
            attributes=attrs,
            links=links,
        )
        token = otel_context.attach(trace.set_span_in_context(span, ctx))
        return span, token

    def end(self, token: object, outcome: str, error: BaseException | None = None) -> None:
        span, context_token = cast(
            tuple[trace.Span, contextvars.Token[otel_context.Context]], token
        )
        span.set_attribute("actorflow.outcome", outcome)
        if error is not None:
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}"))
        otel_context.detach(context_token)
        span.end()

    def error(self, process: str) -> None:
        pass

    def lag(self, process: str, seconds: float, alert: bool | None) -> None:
        pass

    def skipped(self, process: str, reason: str) -> None:
        pass

    def run_state_changed(self, previous: Any, current: Any) -> None:
        pass

    def committed(self, seconds: float, new: RawRecord) -> None:
        pass

    def trace_origin(self) -> str:
        return current_traceparent()
