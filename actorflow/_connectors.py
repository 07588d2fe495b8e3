"""Connectors: consume an EventSource with a durable cursor (see the streaming issue)."""

from __future__ import annotations

from typing import Any


async def run_connectors(workflow: Any) -> None:
    """Serve every connector of the workflow until cancelled."""
    raise NotImplementedError("connectors arrive with the event-streaming work")
