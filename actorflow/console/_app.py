"""The console's ASGI application: the page, its assets, a session check and ``/ws``."""

from __future__ import annotations

import enum
import logging
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

from .._errors import InvalidArgument
from .._workflow import Workflow
from ..gateway._protocol import Access, check_token
from ..gateway._server import GatewaySettings, _Connection, _Gateway

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
class Level(enum.Enum):
    """What a visitor may do: everything, or only look."""

    FULL = "full"
    READ_ONLY = "read_only"


@final
@attrs.frozen
class ConsoleSettings:
    """The workflows served and who may see and steer them."""

    names: tuple[str, ...]
    gateway: _Gateway
    token: str | None
    read_only_token: str | None

    @classmethod
    def make(
        cls,
        workflows: Iterable[Workflow[Any, Any]],
        *,
        token: str | None,
        read_only_token: str | None,
    ) -> ConsoleSettings:
        served: dict[str, Workflow[Any, Any]] = {}
        for workflow in workflows:
            if not isinstance(workflow, Workflow):
                raise InvalidArgument(f"serve_console serves Workflow objects, not {workflow!r}")
            if workflow.name in served:
                raise InvalidArgument(f"serve_console got two workflows named {workflow.name!r}")
            served[workflow.name] = workflow
        if not served:
            raise InvalidArgument("serve_console needs at least one workflow")
        for name, value in (("token", token), ("read_only_token", read_only_token)):
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidArgument(f"{name} must be a non-empty string or None")
        if read_only_token is not None and token is None:
            raise InvalidArgument(
                "read_only_token needs token: without a token everybody may steer anyway"
            )
        if read_only_token is not None and read_only_token == token:
            raise InvalidArgument("read_only_token must differ from token")
        settings = GatewaySettings(
            token=token,
            max_message_bytes=1 << 20,
            rate=100.0,
            burst=200,
            max_in_flight=64,
            max_subscriptions=64,
            subscription_buffer=256,
            handshake_timeout=10.0,
            max_connections=256,
            max_handshakes=128,
        )
        settings.check()
        return cls(tuple(served), _Gateway(served, settings), token, read_only_token)

    def access(self, connection: HTTPConnection) -> Level | Access:
        """The visitor's level, or why it has none (``Access.MISSING``/``WRONG``)."""
        if self.token is None:
            return Level.FULL
        headers = connection.scope["headers"]
        target = connection.url.path
        if connection.url.query:
            target += "?" + connection.url.query
        verdict = check_token(self.token, headers, target)
        if verdict is Access.GRANTED:
            return Level.FULL
        if self.read_only_token is not None:
            if check_token(self.read_only_token, headers, target) is Access.GRANTED:
                return Level.READ_ONLY
        return verdict


def _refusal(verdict: Access) -> tuple[int, str]:
    if verdict is Access.MISSING:
        return 401, "a token is required: Authorization: Bearer <token>"
    return 403, "wrong token"


def build_app(settings: ConsoleSettings) -> Starlette:
    """The Starlette application of one console."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)

    async def session(request: Request) -> Response:
        level = settings.access(request)
        if isinstance(level, Access):
            status, message = _refusal(level)
            return JSONResponse(
                {"error": message},
                status_code=status,
                headers={**SECURITY_HEADERS, "www-authenticate": "Bearer"},
            )
        return JSONResponse(
            {
                "access": level.value,
                "auth": settings.token is not None,
                "workflows": list(settings.names),
            },
            headers=SECURITY_HEADERS,
        )

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n", headers=SECURITY_HEADERS)

    async def websocket(ws: WebSocket) -> None:
        level = settings.access(ws)
        if isinstance(level, Access):
            status, message = _refusal(level)
            await ws.send_denial_response(
                PlainTextResponse(message + "\n", status_code=status)
            )
            return
        gateway = settings.gateway
        if gateway.connections >= gateway.settings.max_connections:
            await ws.send_denial_response(
                PlainTextResponse("too many connections; try again later\n", status_code=503)
            )
            return
        gateway.connections += 1
        try:
            await ws.accept()
            channel = _WebSocketChannel(ws)
            await _Connection(gateway, channel).serve()
        except* (trio_websocket.ConnectionClosed, trio.BrokenResourceError) as group:
            log.debug("console websocket ended abruptly: %r", group.exceptions)
        except* Exception as group:
            log.error("console websocket failed", exc_info=group)
        finally:
            gateway.connections -= 1

    static = StaticFiles(directory=STATIC)

    async def asset(request: Request) -> Response:
        response = await static.get_response(request.path_params["path"], request.scope)
        response.headers.update(SECURITY_HEADERS)
        return response

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/session", session),
            Route("/healthz", healthz),
            Route("/static/{path:path}", asset),
            WebSocketRoute("/ws", websocket),
        ]
    )


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
