"""``actorflow worker`` (run workflows, optionally serve the gateway) and ``actorflow watch``."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import trio

from actorflow._model.errors import GatewayError
from actorflow.cli.app import (
    READ_ONLY_TOKEN_ENV,
    App,
    CliError,
    UsageError,
    load_app,
    parse_host_port,
    token_from,
)
from actorflow.cli.format import change_line, dumps
from actorflow.console import serve_console
from actorflow.gateway import open_gateway_client, serve_gateway
from actorflow.gateway.client import GatewayClient

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED: Final = 130
"""Exit code after Ctrl-C (SIGINT), as for every command."""


def _say(text: str) -> None:
    """Progress of the worker: on stderr, so stdout stays for data."""
    print(text, file=sys.stderr, flush=True)


# -- worker -------------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    """Run the workflows of MODULE:ATTR until SIGINT or SIGTERM, then stop gracefully."""
    app = load_app(args.app)
    gateway = parse_host_port(args.gateway) if args.gateway else None
    console = parse_host_port(args.console, "--console") if args.console else None
    token = token_from(args.token)
    read_only_token = token_from(args.read_only_token, READ_ONLY_TOKEN_ENV, "--read-only-token")
    if token is not None and gateway is None and console is None:
        raise UsageError("--token only makes sense with --gateway or --console HOST:PORT")
    if read_only_token is not None and token is None:
        raise UsageError("--read-only-token needs --token (without one everybody may steer)")
    if read_only_token is not None and gateway is None and console is None:
        raise UsageError("--read-only-token only makes sense with --gateway or --console")
    metrics = parse_host_port(args.metrics, "--metrics") if args.metrics else None
    if metrics is not None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise UsageError(
                "--metrics needs prometheus-client: pip install 'actorflow[metrics]'"
            ) from None
    stopped_by = trio.run(
        functools.partial(
            serve_worker,
            app,
            gateway,
            token,
            console=console,
            read_only_token=read_only_token,
            metrics=metrics,
        )
    )
    # Ctrl-C (SIGINT) is an interruption (130, like every command); SIGTERM a normal stop.
    return INTERRUPTED if stopped_by == signal.SIGINT else 0


async def serve_worker(
    app: App,
    gateway: tuple[str, int] | None,
    token: str | None,
    *,
    console: tuple[str, int] | None = None,
    read_only_token: str | None = None,
    metrics: tuple[str, int] | None = None,
) -> int | None:
    """Serve until a stop signal: stop the gateway and the console, let steps in flight
    finish (each workflow's grace period), close the stores. A second signal cancels at
    once. Returns the signal that stopped it."""
    received: int | None = None
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        try:
            async with trio.open_nursery() as outer:
                async with trio.open_nursery() as inner:
                    metrics_scope = trio.CancelScope()
                    if metrics is not None:
                        # Before the workflows: /healthz and /readyz answer during recovery.
                        await _start_metrics(inner, app, metrics, metrics_scope)
                    for workflow in app.workflows:
                        await inner.start(workflow.run)
                    servers_scope = trio.CancelScope()
                    for server, address in ((_GATEWAY, gateway), (_CONSOLE, console)):
                        if address is not None:
                            tokens = (token, read_only_token)
                            await _start_server(inner, server, app, address, tokens, servers_scope)
                    _say(
                        f"worker running {', '.join(app.names)} (pid {os.getpid()}); "
                        "Ctrl-C or SIGTERM stops it gracefully"
                    )
                    received = await signals.__anext__()
                    _say(
                        f"got {signal.Signals(received).name}: stopping gracefully (steps in "
                        "flight finish; send it again to stop at once)"
                    )
                    servers_scope.cancel()
                    for workflow in app.workflows:
                        workflow.stop()
                    metrics_scope.cancel()
                    outer.start_soon(_force_on_signal, signals, inner.cancel_scope)
                outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for store in app.stores():
                    await store.aclose()
    _say("worker stopped")
    return received


@attrs.frozen
class _Server:
    """What the worker serves beside its workflows: the gateway or the console."""

    what: str
    scheme: str
    serve: Callable[..., Awaitable[None]]


_GATEWAY: Final = _Server("gateway", "ws", serve_gateway)
_CONSOLE: Final = _Server("console", "http", serve_console)


async def _start_server(
    nursery: trio.Nursery,
    server: _Server,
    app: App,
    address: tuple[str, int],
    tokens: tuple[str | None, str | None],
    scope: trio.CancelScope,
) -> None:
    """Start ``server`` on ``address`` in ``scope``; say where it listens."""
    host, port = address
    token, read_only_token = tokens
    serve = functools.partial(
        server.serve, app.workflows, host, port, token=token, read_only_token=read_only_token
    )
    bound = await nursery.start(_serve, f"{server.what} on {host}:{port}", serve, scope)
    # Tests and scripts read this line to find a port chosen by the system.
    _say(f"{server.what} listening on {server.scheme}://{_where(host)}:{bound}/")


async def _start_metrics(
    nursery: trio.Nursery, app: App, address: tuple[str, int], scope: trio.CancelScope
) -> None:
    from actorflow._observe.http import serve_metrics

    host, port = address
    serve = functools.partial(serve_metrics, app.workflows, host, port)
    bound = await nursery.start(_serve, f"metrics on {host}:{port}", serve, scope)
    _say(f"metrics listening on http://{_where(host)}:{bound}/metrics")


def _where(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _serve(
    what: str,
    serve: Callable[..., Awaitable[None]],
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway, the console or the metrics (``serve``, which reports its bound
    port) in ``scope``, so a stop signal ends it before the workflows stop."""
    with scope:
        try:
            await serve(task_status=task_status)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise CliError(f"cannot serve the {what}: {reason}") from None


async def _force_on_signal(signals: Any, scope: trio.CancelScope) -> None:
    received = await signals.__anext__()
    _say(f"got {signal.Signals(received).name} again: stopping now")
    scope.cancel()


# -- watch --------------------------------------------------------------------------------------


def watch(args: argparse.Namespace) -> int:
    """Print every change of the gateway's runs as it is stored, until Ctrl-C."""
    url: str = args.url
    if not url.startswith(("ws://", "wss://")):
        raise UsageError(f"--url {url!r} must start with ws:// or wss://")
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count must be at least 1, not {args.count}")
    token = token_from(args.token)
    return trio.run(
        functools.partial(
            watch_gateway,
            url,
            token=token,
            workflow=args.workflow,
            foreign_id=args.foreign_id,
            count=args.count,
            as_json=args.json,
        )
    )


async def watch_gateway(
    url: str,
    *,
    token: str | None,
    workflow: str | None,
    foreign_id: str | None,
    count: int | None,
    as_json: bool,
) -> int:
    """Subscribe to every served workflow (or one) and print each change; stop after
    ``count`` changes, on SIGINT/SIGTERM, or fail when the connection is lost."""
    got: list[int] = []
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with open_gateway_client(url, token=token) as client:
            names = [workflow] if workflow else [w["name"] for w in await client.workflows()]
            if not names:
                raise CliError(f"the gateway at {url} serves no workflows")
            send, receive = trio.open_memory_channel[dict[str, Any]](0)
            async with trio.open_nursery() as outer:
                outer.start_soon(_stop_on_signal, signals, outer.cancel_scope, got)
                async with trio.open_nursery() as followers:
                    async with send:
                        for name in names:
                            await followers.start(_follow, client, name, foreign_id, send.clone())
                    what = f" for foreign id {foreign_id!r}" if foreign_id else ""
                    _say(f"watching {', '.join(names)}{what} at {url} (Ctrl-C to stop)")
                    seen = 0
                    async for record in receive:
                        print(dumps(record) if as_json else change_line(record), flush=True)
                        seen += 1
                        if count is not None and seen >= count:
                            followers.cancel_scope.cancel()
                            break
                # Reached only when the followers ended without an error (or --count).
                outer.cancel_scope.cancel()
    if got and got[0] == signal.SIGINT:
        _say("actorflow: interrupted")
        return INTERRUPTED
    return 0


async def _follow(
    client: GatewayClient,
    name: str,
    foreign_id: str | None,
    send: trio.MemorySendChannel[dict[str, Any]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with send, client.subscribe(name, foreign_id=foreign_id) as changes:
        task_status.started()
        try:
            async for record in changes:
                await send.send(record)
        except GatewayError as exc:
            raise CliError(f"watching {name} ended: {exc}") from None


async def _stop_on_signal(signals: Any, scope: trio.CancelScope, got: list[int]) -> None:
    got.append(await signals.__anext__())
    scope.cancel()
