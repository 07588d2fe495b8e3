"""What a service (hooks, schedules, connectors, relay) gets from its workflow.

Services sit below the public API: they never import ``Workflow``. The workflow hands each
service a frozen ``ServiceContext`` with the few things services use, and ``handle``: the
public workflow object itself, typed as the small ``WorkflowHandle`` Protocol, which
services pass on to user functions (a connector's ``fn(workflow, event)``) and use to
trigger runs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol, final

import attrs

from actorflow._model.clock import Clock
from actorflow._model.definition import Definition
from actorflow._model.errors import describe_error
from actorflow._model.options import Options
from actorflow._model.process import ProcessState
from actorflow._runtime.observe import Observer, Process
from actorflow.stores import Store


class WorkflowHandle(Protocol):
    """The part of ``af.Workflow`` that services call."""

    @property
    def name(self) -> str: ...

    async def trigger(self, foreign_id: str, start: Any = None, *, initial: Any = None) -> str: ...

    async def latest(self, foreign_id: str) -> Any: ...


@final
@attrs.frozen
class ServiceContext:
    """A workflow as its services see it."""

    name: str
    store: Store
    clock: Clock
    definition: Definition
    default_options: Options
    poll_interval: timedelta
    handle: WorkflowHandle
    """The public workflow: passed to user functions, used to trigger runs."""
    check_trigger_args: Callable[[object, object, object], None]
    """Raises InvalidArgument for a foreign id, start status or initial object that
    ``trigger`` would refuse (so a schedule fails at once, not at its first cron time)."""
    observer: Observer | None = None
    """Metrics and traces (None: off)."""
    service: Callable[[str, float], Process] = Process
    """``service(name, lag_alert_seconds)``: the Process a service keeps its state in
    (what ``workflow.states()`` reports)."""

    def failed(self, process: Process, error: BaseException) -> str:
        """A service's ``process`` failed outside a unit of work (a connector's source, a
        relay batch): it is ERRORING and the error counted; returns the error's text for
        the service's ``last_error``."""
        process.state = ProcessState.ERRORING
        if self.observer is not None:
            self.observer.error(process.name)
        return describe_error(error)
