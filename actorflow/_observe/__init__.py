"""Optional observability: Prometheus metrics and OpenTelemetry spans.

Both implement the runtime's :class:`~actorflow._runtime.observe.Observer`. Their
third-party packages (``prometheus-client``: extra ``actorflow[metrics]``;
``opentelemetry-api``: extra ``actorflow[otel]``) are imported only when a workflow is
built with them on, so ``import actorflow`` works without either.
"""

from __future__ import annotations

import weakref
from typing import Any

from actorflow._model.errors import BuildError
from actorflow._runtime.observe import Observer, combine

live_gateways: weakref.WeakSet[Any] = weakref.WeakSet()
"""Gateways serving in this process (their connection and subscription counts are metrics)."""


def metrics_registry(metrics: Any) -> Any:
    """The ``prometheus_client`` registry the build option ``metrics=`` asks for (None: off).

    None: the global registry when ``prometheus-client`` is installed, else off;
    False: off; True: the global registry; or a ``CollectorRegistry``.

    Raises:
        BuildError: ``metrics=`` is something else, or asks for metrics without the extra.
    """
    if metrics is False:
        return None
    try:
        import prometheus_client
    except ImportError:
        if metrics is None:
            return None
        raise BuildError(
            "metrics= needs prometheus-client: pip install 'actorflow[metrics]'"
        ) from None
    if metrics is None or metrics is True:
        return prometheus_client.REGISTRY
    if isinstance(metrics, prometheus_client.CollectorRegistry):
        return metrics
    raise BuildError(
        f"metrics= must be a prometheus_client.CollectorRegistry, True, False or None, "
        f"not {metrics!r}"
    )


def tracer_provider(tracing: Any) -> Any:
    """What the build option ``tracing=`` asks for: None (off), True (the global tracer
    provider) or a TracerProvider.

    Raises:
        BuildError: tracing asked for without ``opentelemetry-api``, or a wrong value.
    """
    if tracing is False or tracing is None:
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        raise BuildError(
            "tracing= needs opentelemetry-api: pip install 'actorflow[otel]'"
        ) from None
    if tracing is True:
        return True
    if isinstance(tracing, trace.TracerProvider):
        return tracing
    raise BuildError(
        f"tracing= must be True, False or an opentelemetry TracerProvider, not {tracing!r}"
    )


def make_observer(workflow: Any, metrics: Any, tracing: Any) -> Observer | None:
    """The observer of ``workflow`` for its build options (None: nothing to report)."""
    registry = metrics_registry(metrics)
    provider = tracer_provider(tracing)
    observers: list[Observer | None] = []
    if registry is not None:
        from actorflow._observe.prometheus import WorkflowMetrics

        observers.append(WorkflowMetrics(workflow, registry))
    if provider is not None:
        from actorflow._observe.tracing import Tracing

        observers.append(Tracing(workflow.name, None if provider is True else provider))
    return combine(observers)
