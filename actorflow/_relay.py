"""Outbox relay: publish every stored transition to the workflow's EventStreamer."""

from __future__ import annotations

from typing import Any


async def run_relay(workflow: Any, streamer: Any) -> None:
    """Publish the workflow's event log to ``streamer`` until cancelled."""
    raise NotImplementedError("the relay arrives with the event-streaming work")
