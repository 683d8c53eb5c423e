"""Who may post: optional HTTP Basic authentication and an optional IP allow list.

MM7 has no authentication of its own; deployments use Basic auth, source-address lists or
both (spec.md §1).  Behind a TLS-terminating proxy the client's address is in
`X-Forwarded-For`, believed only when the connection comes from a configured proxy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from dataclasses import replace
from typing import Any

from mm7soap import errors
from mm7soap.settings import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def within(address: str, nets: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in net for net in nets)


def digest(text: bytes) -> bytes:
    # Hashing first makes the comparison's time independent of the secret's length too.
    return hashlib.sha256(text).digest()


class AccessPolicy:
    """Checks a request's source and credentials; raises the MM7Error that answers a refusal."""

    def __init__(self, settings: Settings) -> None:
        self.allowed = networks(settings.allow_ips)
        self.proxies = networks(settings.trusted_proxies)
        self.credentials = (
            digest(f"{settings.auth_user}:{settings.auth_password}".encode()) if settings.auth_user else None
        )

    def client_address(self, environ: dict[str, Any]) -> str:
        """The address of the client: the connection's, or from X-Forwarded-For via a trusted proxy.

        The header is read right to left, skipping trusted proxies: the first address that
        is not one of ours is the client (addresses further left are the client's to forge).
        """
        peer = environ.get("REMOTE_ADDR", "") or ""
        forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
        if not forwarded or not within(peer, self.proxies):
            return peer
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not within(hop, self.proxies):
                return hop
        return hops[0] if hops else peer

    def check(self, environ: dict[str, Any]) -> str:
        """The client's address when it may post; ForbiddenError or AuthenticationError if not."""
        client = self.client_address(environ)
        if self.allowed and not within(client, self.allowed):
            raise errors.ForbiddenError(f"{client} is not allowed to post")
        if self.credentials is not None and not self.authenticated(environ.get("HTTP_AUTHORIZATION", "")):
            raise errors.AuthenticationError("HTTP Basic credentials are required")
        return client

    def authenticated(self, authorization: str) -> bool:
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic" or self.credentials is None:
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(digest(given), self.credentials)


def scrape_policy(settings: Settings) -> AccessPolicy | None:
    """Who may GET /metrics (`metrics_access`): with `mm7`, whoever may post (its allow list
    and credentials), or, when `metrics_allow_ips` is set, that list instead, credentials
    still required if configured; with `open` (or `off`, where there is no /metrics) None."""
    if settings.metrics_access != "mm7":
        return None
    if settings.metrics_allow_ips:
        return AccessPolicy(replace(settings, allow_ips=settings.metrics_allow_ips))
    return AccessPolicy(settings)
