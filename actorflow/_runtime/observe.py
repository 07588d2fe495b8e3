"""The runtime's observability port: what the runtime and services report, and to whom.

The engine, the run actors and the services report units of work (a step, callback,
timeout, hook or connector call), lags, skips, run-state changes and commits to an
:class:`Observer`. The Prometheus metrics and the OpenTelemetry spans are optional
modules (``actorflow._observe``) that implement it; without them the engine's observer is
None and the hot path pays one ``is None`` test per step.

Process states (``workflow.states()``) need no observer: they are read from the runtime's
own bookkeeping when asked, plus the :class:`Process` objects the services keep current.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, final

from actorflow._model.process import ProcessState
from actorflow._model.record import RawRecord
from actorflow._model.run_state import RunState

log = logging.getLogger("actorflow")

RUN_STATE_NAMES: Mapping[RunState, str] = {
    RunState.INITIATED: "Initiated",
    RunState.RUNNING: "Running",
    RunState.PAUSED: "Paused",
    RunState.CANCELLED: "Cancelled",
    RunState.COMPLETED: "Completed",
    RunState.DATA_DELETED: "Data Deleted",
    RunState.REQUESTED_DATA_DELETED: "Requested Data Deleted",
}
"""Run states as luno/workflow prints them (the ``*_run_state`` label values)."""


def process_name(*parts: object) -> str:
    """A process name as luno/workflow makes one: parts joined by ``-``, lower case,
    spaces as ``_`` (``process_name("Started", "consumer") == "started-consumer"``)."""
    text = "-".join(p.name if isinstance(p, enum.Enum) else str(p) for p in parts)
    return text.lower().replace(" ", "_")


def run_fields(raw: RawRecord, process: str = "") -> dict[str, Any]:
    """The ``extra=`` fields of a log record about a run (for JSON log formatters)."""
    fields: dict[str, Any] = {
        "workflow_name": raw.workflow_name,
        "foreign_id": raw.foreign_id,
        "run_id": raw.run_id,
        "status": raw.status,
        "run_state": raw.run_state.name,
        "version": raw.version,
    }
    if process:
        fields["process_name"] = process
    return fields


class Observer(Protocol):
    """What the runtime reports. Implementations must be cheap and must never raise."""

    def begin(
        self,
        kind: str,
        process: str,
        raw: RawRecord | None,
        *,
        parent: str = "",
        attributes: Mapping[str, str | int] | None = None,
    ) -> object:
        """A unit of work starts (``kind``: step, callback, timeout, hook, connector) in the
        current task; returns a token for :meth:`end`. ``parent``: a W3C traceparent to
        continue instead of the run's ``trace_origin``."""
        ...

    def end(self, token: object, outcome: str, error: BaseException | None = None) -> None:
        """The unit of work of ``token`` ended with ``outcome`` (a status name, "skipped",
        "paused", "error", ...); ``error`` counts as an error of its process."""
        ...

    def error(self, process: str) -> None:
        """A failure outside a unit of work (a connector's source, a relay batch)."""
        ...

    def lag(self, process: str, seconds: float, alert: bool | None) -> None:
        """The process took up a run or event ``seconds`` old; ``alert`` when it has a
        ``lag_alert`` threshold (None otherwise)."""
        ...

    def skipped(self, process: str, reason: str) -> None:
        """The process skipped an event (``run.skip()``)."""
        ...

    def run_state_changed(self, previous: RunState, current: RunState) -> None:
        """A new version of a run is being stored, going from ``previous`` to ``current``."""
        ...

    def committed(self, seconds: float, new: RawRecord) -> None:
        """``new`` was stored; the store took ``seconds``."""
        ...

    def trace_origin(self) -> str:
        """The traceparent of the trace active in the calling task ("" without one)."""
        ...


@final
class Fanout:
    """Several observers as one (metrics and traces both on)."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = tuple(observers)

    def begin(
        self,
        kind: str,
        process: str,
        raw: RawRecord | None,
        *,
        parent: str = "",
        attributes: Mapping[str, str | int] | None = None,
    ) -> object:
        return [
            o.begin(kind, process, raw, parent=parent, attributes=attributes)
            for o in self.observers
        ]

    def end(self, token: object, outcome: str, error: BaseException | None = None) -> None:
        assert isinstance(token, list)
        # Reverse order: a span opened last (made current last) is closed first.
        for observer, one in zip(reversed(self.observers), reversed(token), strict=True):
            observer.end(one, outcome, error)

    def error(self, process: str) -> None:
        for o in self.observers:
            o.error(process)

    def lag(self, process: str, seconds: float, alert: bool | None) -> None:
        for o in self.observers:
            o.lag(process, seconds, alert)

    def skipped(self, process: str, reason: str) -> None:
        for o in self.observers:
            o.skipped(process, reason)

    def run_state_changed(self, previous: RunState, current: RunState) -> None:
        for o in self.observers:
            o.run_state_changed(previous, current)

    def committed(self, seconds: float, new: RawRecord) -> None:
        for o in self.observers:
            o.committed(seconds, new)

    def trace_origin(self) -> str:
        for o in self.observers:
            origin = o.trace_origin()
            if origin:
                return origin
        return ""


def combine(observers: Iterable[Observer | None]) -> Observer | None:
    """One observer for all of ``observers`` (None when there is none)."""
    found = [o for o in observers if o is not None]
    if not found:
        return None
    return found[0] if len(found) == 1 else Fanout(found)


@final
class Process:
    """A long-running process of a workflow as ``states()`` reports it; services set
    ``state`` as they go (step and timeout consumers' states are worked out when asked)."""

    __slots__ = ("alerting", "lag_alert", "name", "state")

    def __init__(self, name: str, lag_alert: float = 0.0) -> None:
        self.name = name
        self.state = ProcessState.STOPPED
        self.lag_alert = lag_alert
        """Seconds; 0: no lag alert."""
        self.alerting = False

    def took_up(
        self,
        observer: Observer | None,
        workflow: str,
        lag: float,
        about: RawRecord | Mapping[str, Any],
    ) -> None:
        """The process takes up a run or event ``lag`` seconds old: report the lag, and
        log a warning when it crosses the ``lag_alert`` threshold (once, not per event).
        ``about``: the run taken up, or the log fields of the event."""
        alert: bool | None = None
        if self.lag_alert:
            alert = lag > self.lag_alert
            if alert != self.alerting:
                self.alerting = alert
                fields = run_fields(about) if isinstance(about, RawRecord) else about
                extra = {**fields, "process_name": self.name, "lag_seconds": lag}
                if alert:
                    log.warning(
                        "workflow %r %s: lag %.3g s is over its lag_alert of %.3g s",
                        workflow,
                        self.name,
                        lag,
                        self.lag_alert,
                        extra=extra,
                    )
                else:
                    log.info(
                        "workflow %r %s: lag %.3g s is back under its lag_alert",
                        workflow,
                        self.name,
                        lag,
                        extra=extra,
                    )
        if observer is not None:
            observer.lag(self.name, lag, alert)
