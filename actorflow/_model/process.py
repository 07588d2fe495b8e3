"""``ProcessState``: what ``workflow.states()`` says about each process of a workflow."""

from __future__ import annotations

import enum
from typing import final


@final
class ProcessState(enum.IntEnum):
    """The state of one process of a workflow (a step consumer, the timers, a connector, ...).

    The values 1 to 3 are luno/workflow's ``StateShutdown``, ``StateRunning`` and
    ``StateIdle``, so the ``workflow_process_states`` gauge reads the same on both.
    """

    STOPPED = 1
    """Not running in this process (the workflow is not running, or the service ended)."""
    RUNNING = 2
    """Up and working: runs are at its status, or the service is serving."""
    IDLE = 3
    """Up with nothing to do (no run waits for it), or a standby that another process leads."""
    ERRORING = 4
    """Its last attempt failed and it is backing off before the next one."""
