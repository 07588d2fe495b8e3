"""The console's ASGI application: the page, its assets, a session check and ``/ws``."""

from __future__ import annotations

import ipaddress
import logging
import math
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, final

import attrs
import trio
import trio_websocket
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from actorflow.gateway.access import Access
from actorflow.gateway.server import Connection, Gateway, GatewaySettings, served_by_name
from actorflow.workflow import Workflow

log = logging.getLogger("actorflow.console")

STATIC: Final = Path(__file__).parent / "static"

SECURITY_HEADERS: Final = {
    # Only our own scripts and styles (Mermaid writes inline styles into its SVG); the
    # websocket goes back to this origin; no framing (steering buttons must not be
    # clickjacked).
    "content-security-policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@final
@attrs.frozen
class ConsoleSettings:
    """The workflows served and who may see and steer them (the gateway's rules)."""

    names: tuple[str, ...]
    gateway: Gateway

    @classmethod
    def make(
        cls,
        workflows: Iterable[Workflow[Any, Any]],
        *,
        token: str | None,
        read_only_token: str | None,
        max_connections: int = 256,
    ) -> ConsoleSettings:
        served = served_by_name(workflows, "serve_console")
        # The page asks about every workflow at once (describe, counts, paused runs,
        # processes), subscribes to each, and counts again after changes (at most once a
        # second each): its connection's limits grow with the workflows served, so a
        # console of many workflows does not refuse its own page.
        n = len(served)
        settings = GatewaySettings(
            token=token,
            max_message_bytes=1 << 20,
            rate=100.0 + 4 * n,
            burst=200 + 8 * n,
            max_in_flight=64 + 4 * n,
            max_subscriptions=64 + 2 * n,
            subscription_buffer=256,
            handshake_timeout=10.0,
            max_connections=max_connections,
            max_handshakes=128,
            read_only_token=read_only_token,
        )
        settings.check()
        return cls(tuple(served), Gateway(served, settings))

    @property
    def auth(self) -> bool:
        return self.gateway.settings.token is not None

    def access(self, connection: HTTPConnection) -> Access:
        """What the visitor's token grants (``GRANTED``, ``READ_ONLY``) or why not."""
        target = connection.url.path
        if connection.url.query:
            target += "?" + connection.url.query
        return self.gateway.access(connection.scope["headers"], target)

    def admit(self, connection: HTTPConnection) -> tuple[Access, tuple[int, str] | None]:
        """The visitor's access and, when refused, the HTTP status and message.

        Requests that offer a wrong credential or several count against the visitor's
        address, as handshakes do on the gateway: past ``max_refused_handshakes`` the
        address gets 429 without a look at its credential (a request without one, how the
        page starts, is not a guess and does not count).
        """
        if not self.auth and not addressed_directly(connection):
            return Access.WRONG, (
                403,
                "a console without a token answers only requests to its address "
                "(127.0.0.1, localhost, an IP address); set a token to serve it by name",
            )
        limiter = self.gateway.refusals
        address = connection.client.host if connection.client is not None else ""
        now = trio.current_time()
        if self.auth:
            wait = limiter.wait(address, now)
            if wait > 0:
                retry = math.ceil(wait)
                return Access.WRONG, (429, f"too many refused tokens; try again in {retry} s")
        access = self.access(connection)
        refusal = _refusal(access)
        if access in (Access.WRONG, Access.SEVERAL):
            limiter.refused(address, now)
        return access, refusal


def addressed_directly(connection: HTTPConnection) -> bool:
    """Whether the request names the console by an IP address or ``localhost``.

    A console without a token trusts whoever reaches it, so it is bound to 127.0.0.1;
    a site whose name an attacker re-points at 127.0.0.1 (DNS rebinding) would make its
    page "same origin" with the console and able to read and steer everything. Such a
    page always sends its own name as ``Host``: a tokenless console answers only requests
    whose ``Host`` is an IP address or ``localhost`` (or none, which no browser sends).
    """
    host = connection.headers.get("host", "").strip().lower()
    if not host:
        return True
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def same_origin(connection: HTTPConnection) -> bool:
    """Whether a websocket handshake comes from the console's own page (or from no page).

    Browsers send ``Origin`` on every websocket handshake and let any site open one to any
    address, this console's included: without this check a page of another site, open in
    a browser on the console's machine, could steer runs of a console that has no token.
    (With a token such a page is refused anyway: it cannot know the token, which the
    console's page keeps in its own origin's session storage; so the check applies to
    consoles without one, and a reverse proxy in front of a console with a token need not
    keep ``Host``.) Clients that are not browsers send no ``Origin`` and are let through.
    ``X-Forwarded-Host`` is accepted too (a page cannot set that header on a websocket).
    """
    origin = connection.headers.get("origin")
    if origin is None:
        return True
    parts = urllib.parse.urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    hosts = {
        host.strip().lower()
        for name in ("host", "x-forwarded-host")
        for host in connection.headers.get(name, "").split(",")
        if host.strip()
    }
    return parts.netloc.lower() in hosts


def _refusal(verdict: Access) -> tuple[int, str] | None:
    if verdict in (Access.GRANTED, Access.READ_ONLY):
        return None
    if verdict is Access.MISSING:
        return 401, "a token is required: Authorization: Bearer <token>"
    if verdict is Access.SEVERAL:
        return 400, "send exactly one credential: one Authorization header or one token parameter"
    return 403, "wrong token"


def build_app(settings: ConsoleSettings) -> Starlette:
    """The Starlette application of one console."""
    console = _Console(settings, StaticFiles(directory=STATIC))
    return Starlette(
        routes=[
            Route("/", console.index),
            Route("/api/session", console.session),
            Route("/healthz", console.healthz),
            Route("/static/{path:path}", console.asset),
            WebSocketRoute("/ws", console.websocket),
        ]
    )


@final
@attrs.frozen
class _Console:
    """The console's endpoints; each response carries ``SECURITY_HEADERS``."""

    settings: ConsoleSettings
    static: StaticFiles

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)

    async def session(self, request: Request) -> Response:
        """What the page may do: full or read-only access, and which workflows."""
        access, refusal = self.settings.admit(request)
        if refusal is not None:
            status, message = refusal
            return JSONResponse(
                {"error": message},
                status_code=status,
                headers={**SECURITY_HEADERS, "www-authenticate": "Bearer"},
            )
        return JSONResponse(
            {
                "access": "read_only" if access is Access.READ_ONLY else "full",
                "auth": self.settings.auth,
                "workflows": list(self.settings.names),
            },
            headers=SECURITY_HEADERS,
        )

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n", headers=SECURITY_HEADERS)

    async def asset(self, request: Request) -> Response:
        response = await self.static.get_response(request.path_params["path"], request.scope)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def websocket(self, ws: WebSocket) -> None:
        """The gateway's protocol over the page's websocket, once admitted."""
        if not self.settings.auth and not same_origin(ws):
            log.warning(
                "console websocket from another origin refused: %r", ws.headers.get("origin")
            )
            await ws.send_denial_response(
                PlainTextResponse("websocket from another origin refused\n", status_code=403)
            )
            return
        access, refusal = self.settings.admit(ws)
        if refusal is not None:
            status, message = refusal
            await ws.send_denial_response(PlainTextResponse(message + "\n", status_code=status))
            return
        gateway = self.settings.gateway
        if gateway.connections >= gateway.settings.max_connections:
            await ws.send_denial_response(
                PlainTextResponse("too many connections; try again later\n", status_code=503)
            )
            return
        gateway.connections += 1
        try:
            await ws.accept()
            channel = _WebSocketChannel(ws)
            await Connection(gateway, channel, read_only=access is Access.READ_ONLY).serve()
        except* (trio_websocket.ConnectionClosed, trio.BrokenResourceError) as group:
            log.debug("console websocket ended abruptly: %r", group.exceptions)
        except* Exception as group:
            log.error("console websocket failed", exc_info=group)
        finally:
            gateway.connections -= 1


@final
class _WebSocketChannel:
    """A Starlette websocket with the two calls the gateway's connection makes, closing
    as trio-websocket does (``ConnectionClosed``)."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    async def get_message(self) -> str | bytes:
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            code = int(message.get("code", 1000))
            raise trio_websocket.ConnectionClosed(trio_websocket.CloseReason(code, None))
        text = message.get("text")
        if text is not None:
            return str(text)
        return bytes(message.get("bytes") or b"")

    async def send_message(self, text: str) -> None:
        try:
            await self._ws.send_text(text)
        except (RuntimeError, OSError) as exc:
            # The peer is gone (hypercorn refuses sends after a disconnect).
            raise trio_websocket.ConnectionClosed(
                trio_websocket.CloseReason(1006, str(exc))
            ) from None
