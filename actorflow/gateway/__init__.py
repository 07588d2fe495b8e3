"""The websocket gateway: serve workflows to other processes, browsers and languages.

The wire protocol is described in docs/gateway.md.
"""

from actorflow.gateway.client import GatewayClient as GatewayClient
from actorflow.gateway.client import GatewaySubscription as GatewaySubscription
from actorflow.gateway.client import open_gateway_client as open_gateway_client
from actorflow.gateway.protocol import ErrorCode as ErrorCode
from actorflow.gateway.server import serve_gateway as serve_gateway

__all__ = [
    "ErrorCode",
    "GatewayClient",
    "GatewaySubscription",
    "open_gateway_client",
    "serve_gateway",
]
