"""The one retry loop: ``await call()`` until it succeeds, backing off between failures.

Every long-running part of a workflow (recovery, timers, schedules, hooks) must outlive a
store hiccup. They all retry through :func:`retrying`, with the workflow's back-off
(``Options.retry_seconds``: doubling from ``error_backoff``, capped, never below 10 ms).
Loops that keep counters of their own between attempts (connectors, the relay) use
``Options.retry_seconds`` directly.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import trio

from actorflow._model.options import Options

R = TypeVar("R")


async def retrying(
    call: Callable[[], Awaitable[R]],
    *,
    options: Options,
    what: str,
    log: logging.Logger,
    retry_on: type[Exception] | tuple[type[Exception], ...] = Exception,
    extra: Mapping[str, Any] | None = None,
) -> R:
    """``await call()`` until it succeeds; log each failure (``what`` says what failed;
    ``extra``: the log record's fields, such as the workflow's and run's identifiers).

    Exceptions other than ``retry_on`` (and ``trio.Cancelled``) propagate at once.
    """
    failures = 0
    while True:
        try:
            return await call()
        except retry_on as exc:
            failures += 1
            delay = options.retry_seconds(failures)
            log.warning(
                "%s failed (attempt %d, retrying in %.3g s): %s",
                what,
                failures,
                delay,
                exc,
                extra={**(extra or {}), "error_count": failures},
            )
            await trio.sleep(delay)
