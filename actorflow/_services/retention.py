"""History retention: delete old versions of finished runs, a slice of the history at a time."""

from __future__ import annotations

import logging

import trio

from actorflow._model.retention import Retention
from actorflow._services.context import ServiceContext

log = logging.getLogger(__name__)

SCAN = 5_000
"""History rows (ids) looked at per store call: one short transaction each."""


async def prune_once(ctx: ServiceContext, retention: Retention) -> int:
    """One pass over the whole history of the workflow; returns the versions deleted."""
    now = ctx.clock.now()
    before = None if retention.keep_for is None else now - retention.keep_for
    deleted, after = 0, 0
    while True:
        count, following = await ctx.store.prune_history(
            ctx.name,
            keep_last=retention.keep_last,
            before=before,
            finished_before=now - retention.after_finish,
            after_id=after,
            scan=SCAN,
        )
        deleted += count
        if following is None:
            return deleted
        after = following
        await trio.lowlevel.checkpoint()


async def run_retention(ctx: ServiceContext, retention: Retention) -> None:
    """Prune at start and then every ``retention.every``, until cancelled."""
    while True:
        try:
            deleted = await prune_once(ctx, retention)
        except Exception as exc:
            log.warning("workflow %r: history retention failed: %s", ctx.name, exc)
        else:
            if deleted:
                log.info("workflow %r: history retention deleted %d version(s)", ctx.name, deleted)
        await trio.sleep(retention.every.total_seconds())
