"""``serve_console``: the web console, a Starlette app on hypercorn's trio worker.

The page (``static/``) is plain HTML, CSS and JavaScript, shipped in the wheel; it talks
the gateway's websocket protocol on ``/ws`` of the same origin, served here by the
gateway's own connection code over Starlette's websocket, so the console needs one port
and steering from the page follows exactly the rules of the gateway (tokens, limits,
read-only access).
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Iterable
from typing import Any, Final, final

import hypercorn.config
import hypercorn.trio
import trio

from actorflow._model.errors import InvalidArgument
from actorflow.console._app import ConsoleSettings, build_app
from actorflow.workflow import Workflow

log = logging.getLogger("actorflow.console")

STALL_TIMEOUT: Final = 30.0
"""Seconds a connection may leave what the console sends it unread (the peer's window
closed, or data unacknowledged: a client that stopped reading, a vanished peer) before
the kernel ends it. hypercorn writes to a socket shielded from cancellation: without this
bound a page that stopped reading held its connection for ever, and stopping the console
waited for it for ever."""
PING_INTERVAL: Final = 30.0
"""Seconds between the pings hypercorn sends each websocket: an idle connection to a
vanished peer then has data in flight, which ``STALL_TIMEOUT`` bounds."""


@final
class _Config(hypercorn.config.Config):
    """hypercorn's configuration, with the stall bound set on the listening sockets (the
    connections accepted from them inherit it)."""

    def create_sockets(self) -> hypercorn.config.Sockets:
        sockets = super().create_sockets()
        option = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux
        if option is not None:
            for sock in sockets.secure_sockets + sockets.insecure_sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, option, int(STALL_TIMEOUT * 1000))
        return sockets


async def serve(
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

    The started value is the bound port (``port=0`` picks a free one). Open
    ``http://host:port/`` in a browser. Serving the console does not run the workflows:
    run them in the same process (``open_workflow``), or point the console at a store that
    another process runs (live updates then only show changes stored by this process).

    Args:
        workflows: the workflows to show and steer, addressed by their names.
        host: the address to bind; the default only accepts local connections.
        port: the port to bind, 0 for any free one.
        token: when set, the page asks for it once (kept in the browser tab's session
            storage) and every request and websocket must carry it.
        read_only_token: a second token that may look but not steer (trigger, callback,
            pause, resume, cancel and delete data are refused with ``forbidden``). Needs
            ``token``.
        graceful_timeout: seconds open requests get to finish when the console stops.

    Raises:
        InvalidArgument: no workflows, two with one name, or unusable tokens.
        OSError: the address cannot be bound.
    """
    settings = ConsoleSettings.make(workflows, token=token, read_only_token=read_only_token)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgument(f"port must be an int from 0 to 65535, not {port!r}")
    if not isinstance(host, str) or not host:
        raise InvalidArgument(f"host must be a non-empty string, not {host!r}")
    if (
        isinstance(graceful_timeout, bool)
        or not isinstance(graceful_timeout, int | float)
        or not math.isfinite(graceful_timeout)
        or graceful_timeout < 0
    ):
        raise InvalidArgument(
            f"graceful_timeout must be a finite number of seconds >= 0, not {graceful_timeout!r}"
        )
    config = _Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("actorflow.console.http")
    config.websocket_max_message_size = settings.gateway.settings.max_message_bytes
    config.websocket_ping_interval = PING_INTERVAL
    config.include_server_header = False
    app = build_app(settings)
    started = False
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(hypercorn.trio.serve, app, config)
            bound = int(binds[0].rsplit(":", 1)[1])
            log.info("console serving %s on http://%s", ", ".join(settings.names), binds[0])
            started = True
            task_status.started(bound)
    except BaseExceptionGroup as group:
        # hypercorn's nurseries wrap a failed bind (port in use, unknown host) in groups;
        # the caller of nursery.start gets the OSError itself, as from serve_gateway.
        leaves = _leaves(group)
        if not started and len(leaves) == 1 and isinstance(leaves[0], OSError):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return found
