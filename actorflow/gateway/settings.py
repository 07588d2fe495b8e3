"""``GatewaySettings``: the limits of one gateway, checked once at start."""

from __future__ import annotations

import math
from typing import final

import attrs

from actorflow._model.errors import InvalidArgument
from actorflow.gateway.access import check_token_text


@final
@attrs.frozen
class GatewaySettings:
    """The limits of one gateway (see :func:`serve_gateway`)."""

    token: str | None
    max_message_bytes: int
    rate: float
    burst: int
    max_in_flight: int
    max_subscriptions: int
    subscription_buffer: int
    handshake_timeout: float
    max_connections: int
    max_handshakes: int
    max_refused_handshakes: int = 10
    refused_handshake_window: float = 60.0
    read_only_token: str | None = None
    max_reply_bytes: int = 16 << 20
    """A reply or event larger than this (UTF-8) is not sent: ``too_large`` instead."""
    ping_interval: float = 30.0
    """A connection quiet for this long is pinged; one that shows no life for twice as
    long is closed (its peer is gone or stopped reading)."""

    def check(self) -> None:
        """Raise InvalidArgument for settings that cannot work."""
        if self.token is not None:
            check_token_text(self.token)
        if self.read_only_token is not None:
            check_token_text(self.read_only_token)
            if self.token is None:
                raise InvalidArgument(
                    "read_only_token needs token: without a token everybody may steer anyway"
                )
            if self.read_only_token == self.token:
                raise InvalidArgument("read_only_token must differ from token")
        positive_ints = {
            "max_message_bytes": self.max_message_bytes,
            "burst": self.burst,
            "max_in_flight": self.max_in_flight,
            "max_subscriptions": self.max_subscriptions,
            "subscription_buffer": self.subscription_buffer,
            "max_connections": self.max_connections,
            "max_handshakes": self.max_handshakes,
            "max_refused_handshakes": self.max_refused_handshakes,
            "max_reply_bytes": self.max_reply_bytes,
        }
        for name, value in positive_ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{name} must be a positive int, not {value!r}")
        for name, number in (
            ("rate", self.rate),
            ("handshake_timeout", self.handshake_timeout),
            ("refused_handshake_window", self.refused_handshake_window),
            ("ping_interval", self.ping_interval),
        ):
            if not _positive_number(number):
                raise InvalidArgument(f"{name} must be a positive number, not {number!r}")


def _positive_number(number: object) -> bool:
    """A finite number above 0 that fits a float (not a bool, not 10**400)."""
    if isinstance(number, bool) or not isinstance(number, int | float):
        return False
    try:
        seconds = float(number)
    except OverflowError:
        return False
    return math.isfinite(seconds) and seconds > 0
