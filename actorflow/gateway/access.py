"""Who may connect and how fast: the handshake's credential, refused handshakes per
address, and the message rate of a connection. Pure and free of I/O."""

from __future__ import annotations

import enum
import hmac
import ipaddress
from collections.abc import Iterable
from typing import final
from urllib.parse import parse_qs, urlsplit

from actorflow._model.errors import InvalidArgument
from actorflow._model.text import is_valid_text


@final
class Access(enum.Enum):
    """The verdict on a handshake's credentials."""

    GRANTED = "granted"
    READ_ONLY = "read_only"
    MISSING = "missing"
    WRONG = "wrong"
    SEVERAL = "several"
    CROSS_SITE = "cross_site"
    """No token is configured and the handshake comes from a browser page of another site."""


def check_token(token: str | None, headers: Iterable[tuple[bytes, bytes]], target: str) -> Access:
    """Check the one credential of a handshake: ``Authorization: Bearer <token>`` or a
    ``?token=`` query parameter.

    ``target`` is the request target of the handshake (path and query). Exactly one
    credential may be offered: several ``Authorization`` headers, several ``token``
    parameters, or one of each is :attr:`Access.SEVERAL`, whatever they hold, so a
    handshake is one guess. The comparison is constant-time. With no token configured,
    everyone is granted access.
    """
    if token is None:
        return Access.GRANTED
    authorizations = [value for name, value in headers if name.lower() == b"authorization"]
    in_query = parse_qs(urlsplit(target).query, keep_blank_values=True).get("token", [])
    if len(authorizations) + len(in_query) > 1:
        return Access.SEVERAL
    if in_query:
        offered = in_query[0].encode()
    elif authorizations:
        scheme, _, credentials = authorizations[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return Access.MISSING
        offered = credentials.strip()
    else:
        return Access.MISSING
    return Access.GRANTED if hmac.compare_digest(offered, token.encode()) else Access.WRONG


def local_origin(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a handshake comes from no browser page, or from a page served by this
    machine under a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``).

    Browsers send ``Origin`` on every websocket handshake and let any site open one to
    any address: without a token, a page of another site open in a browser on this
    machine could otherwise steer every run of a gateway bound to 127.0.0.1. Clients that
    are not browsers send no ``Origin``. (A site whose name an attacker re-points at
    127.0.0.1 still sends its own name as its origin.)
    """
    for name, value in headers:
        if name.lower() != b"origin":
            continue
        try:
            host = urlsplit(value.decode("ascii").strip()).hostname or ""
        except ValueError:  # not ASCII, or a malformed address
            return False
        if host != "localhost" and not host.endswith(".localhost"):
            try:
                if not ipaddress.ip_address(host).is_loopback:
                    return False
            except ValueError:
                return False
    return True


def check_token_text(token: object) -> str:
    """``token`` if it can be a credential: a non-empty string of valid text without
    control characters and without spaces at either end (a header cannot carry more).

    Raises:
        InvalidArgument: it cannot.
    """
    if not isinstance(token, str) or not token:
        raise InvalidArgument(f"token must be a non-empty string or None, not {token!r}")
    if not is_valid_text(token) or token != token.strip() or not token.isprintable():
        raise InvalidArgument(
            "token must be printable text without control characters (such as a newline) "
            "and without spaces at either end"
        )
    return token


@final
class RefusalLimiter:
    """Refused handshakes per peer address: ``allowed`` of them at once, then one more
    every ``window / allowed`` seconds (a token bucket per address).

    At most ``max_peers`` addresses are remembered; past that, addresses whose allowance
    is whole again are forgotten first, then the least recently refused.
    """

    def __init__(self, allowed: int, window: float, max_peers: int = 10_000) -> None:
        self.allowed = allowed
        self.rate = allowed / window
        self.max_peers = max_peers
        self._peers: dict[str, tuple[float, float]] = {}
        """address -> (refusals left, when counted)"""

    def _left(self, peer: str, now: float) -> float:
        entry = self._peers.get(peer)
        if entry is None:
            return float(self.allowed)
        left, stamp = entry
        return min(float(self.allowed), left + max(0.0, now - stamp) * self.rate)

    def wait(self, peer: str, now: float) -> float:
        """Seconds until ``peer`` may offer a credential again; 0 when it may now."""
        left = self._left(peer, now)
        return 0.0 if left >= 1.0 else (1.0 - left) / self.rate

    def refused(self, peer: str, now: float) -> None:
        """Count one refused handshake of ``peer``."""
        left = max(0.0, self._left(peer, now) - 1.0)
        self._peers.pop(peer, None)
        self._peers[peer] = (left, now)
        if len(self._peers) > self.max_peers:
            self._forget(now)

    def _forget(self, now: float) -> None:
        for peer in [p for p in self._peers if self._left(p, now) >= self.allowed]:
            del self._peers[peer]
        while len(self._peers) > self.max_peers:
            del self._peers[next(iter(self._peers))]

    def __len__(self) -> int:
        return len(self._peers)


def check_access(
    token: str | None,
    read_only_token: str | None,
    headers: Iterable[tuple[bytes, bytes]],
    target: str,
) -> Access:
    """Like :func:`check_token`, with a second token that grants ``READ_ONLY`` access;
    without a token, :attr:`Access.CROSS_SITE` for a browser page of another site."""
    headers = list(headers)
    if token is None and not local_origin(headers):
        return Access.CROSS_SITE
    verdict = check_token(token, headers, target)
    if (
        verdict is Access.WRONG
        and read_only_token is not None
        and check_token(read_only_token, headers, target) is Access.GRANTED
    ):
        return Access.READ_ONLY
    return verdict


@final
class TokenBucket:
    """Allows ``rate`` messages per second on average and bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means over the limit."""
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
