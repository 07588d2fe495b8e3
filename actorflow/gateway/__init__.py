"""The websocket gateway: serve workflows to other processes, browsers and languages.

The wire protocol is described in docs/gateway.md.
"""

from ._client import GatewayClient as GatewayClient
from ._client import GatewaySubscription as GatewaySubscription
from ._client import open_gateway_client as open_gateway_client
from ._protocol import ErrorCode as ErrorCode
from ._server import serve_gateway as serve_gateway

__all__ = [
    "ErrorCode",
    "GatewayClient",
    "GatewaySubscription",
    "open_gateway_client",
    "serve_gateway",
]
