"""The web console: see, search and steer runs live in a browser (docs/console.md).

Needs the ``console`` extra (hypercorn and Starlette): ``pip install 'actorflow[console]'``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio

from actorflow._model.errors import ActorflowError

if TYPE_CHECKING:
    from actorflow.workflow import Workflow


async def serve_console(
    workflows: Iterable[Workflow[Any, Any]],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | None = None,
    read_only_token: str | None = None,
    graceful_timeout: float = 1.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the web console for ``workflows`` until cancelled; use with ``nursery.start``.

    The started value is the bound port (``port=0`` picks a free one); open
    ``http://host:port/`` in a browser. See :func:`actorflow.console._server.serve` for
    the arguments; docs/console.md for the page.

    Raises:
        ActorflowError: the ``console`` extra is not installed.
        InvalidArgument: no workflows, two with one name, or unusable tokens.
        OSError: the address cannot be bound.
    """
    try:
        from actorflow.console._server import serve
    except ImportError as exc:
        raise ActorflowError(
            f"the web console needs the console extra ({exc.name} is missing): "
            "pip install 'actorflow[console]'"
        ) from exc
    await serve(
        workflows,
        host,
        port,
        token=token,
        read_only_token=read_only_token,
        graceful_timeout=graceful_timeout,
        task_status=task_status,
    )


__all__ = ["serve_console"]
