"""Counters of connectors and relays, per workflow (for tests, logs and metrics)."""

from __future__ import annotations

import weakref
from typing import Any, final

import attrs


@final
@attrs.define
class ConnectorStats:
    """What one connector has done since its workflow started in this process."""

    handled: int = 0
    """Events handled and acknowledged."""
    errors: int = 0
    """Failed calls of the connector function (each retried after a back-off)."""
    source_errors: int = 0
    """Failures of the source (opening, receiving, acknowledging); each reopens it."""
    last_error: str = ""
    cursor: str | None = None
    """The id of the last event acknowledged."""


@final
@attrs.define
class RelayStats:
    """What a workflow's outbox relay has done since the workflow started in this process."""

    published: int = 0
    """Events handed to the streamer (re-publications after a failure count again)."""
    batches: int = 0
    errors: int = 0
    """Failed attempts (streamer or store); each is retried after a back-off."""
    last_error: str = ""
    cursor: int = 0
    """The event-log id up to which everything has been published."""


_connectors: weakref.WeakKeyDictionary[Any, dict[str, ConnectorStats]] = weakref.WeakKeyDictionary()
_relays: weakref.WeakKeyDictionary[Any, RelayStats] = weakref.WeakKeyDictionary()


def connector_stats(workflow: Any) -> dict[str, ConnectorStats]:
    """The counters of every connector of ``workflow``, by connector name."""
    found = _connectors.setdefault(workflow, {})
    for spec in workflow.definition.connectors:
        found.setdefault(spec.name, ConnectorStats())
    return found


def relay_stats(workflow: Any) -> RelayStats:
    """The counters of ``workflow``'s outbox relay."""
    return _relays.setdefault(workflow, RelayStats())
