"""``af.connect``: another workflow's stored transitions as an EventSource."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, final

from actorflow._model.errors import InvalidArgument
from actorflow._model.record import Event
from actorflow._model.run_state import RunState
from actorflow._model.statuses import parse_status
from actorflow.streaming._protocol import ConnectorEvent, EventReceiver, EventSource
from actorflow.streaming._store_log import (
    LogFollower,
    _StoreLogReceiver,
    parse_cursor,
    transition_event,
)

if TYPE_CHECKING:
    from actorflow.workflow import Workflow

#: Run states of a version that moved a run to its status (pauses and cancels do not).
_REACHING = frozenset({RunState.INITIATED, RunState.RUNNING, RunState.COMPLETED})


@final
class WorkflowSource:
    """The transitions of one workflow, read from its store's event log (see :func:`connect`)."""

    def __init__(self, workflow: Workflow[Any, Any], status: int | None) -> None:
        self.workflow = workflow
        self.status = status

    def __repr__(self) -> str:
        status = "" if self.status is None else f", status={self.status}"
        return f"connect({self.workflow.name!r}{status})"

    def _convert(self, event: Event) -> ConnectorEvent | None:
        if self.status is not None and (
            event.status != self.status or event.run_state not in _REACHING
        ):
            return None
        return transition_event(event)

    @asynccontextmanager
    async def open(self, consumer: str, after: str | None) -> AsyncIterator[EventReceiver]:
        """Transitions stored after the event id ``after`` (None: from the first one)."""
        workflow = self.workflow
        poll: timedelta = getattr(workflow, "_poll_interval", timedelta(seconds=1))
        follower = LogFollower(
            workflow.store,
            workflow.name,
            parse_cursor(after, f"connector {consumer!r}"),
            poll_interval=poll or timedelta(seconds=1),
        )
        yield _StoreLogReceiver(follower, self._convert, None)


def connect(other_workflow: Workflow[Any, Any], status: enum.IntEnum | None = None) -> EventSource:
    """The stream of ``other_workflow``'s stored transitions, for ``builder.add_connector``.

    Every stored version of its runs is one :class:`ConnectorEvent` (id: the store's event
    id; type: the status int as text; headers: ``workflow_name``, ``foreign_id``,
    ``run_id``, ``status``, ``run_state``, ``version``). With ``status``, only versions
    that moved a run to that status (run state INITIATED, RUNNING or COMPLETED) are
    delivered; a run resumed there, or saved and repeated there, is delivered again, so
    make the connector function idempotent (``workflow.callback`` is). Delivery is
    at-least-once; the connector keeps the cursor.

    Raises:
        InvalidArgument: ``other_workflow`` is not a workflow, or ``status`` is not one of
            its statuses.
    """
    from actorflow.workflow import Workflow

    if not isinstance(other_workflow, Workflow):
        raise InvalidArgument(f"af.connect needs a built workflow, not {other_workflow!r}")
    if status is None:
        return WorkflowSource(other_workflow, None)
    try:
        member = parse_status(other_workflow.status_type, status)
    except ValueError as exc:
        raise InvalidArgument(f"af.connect({other_workflow.name!r}): status {exc}") from None
    return WorkflowSource(other_workflow, int(member))
