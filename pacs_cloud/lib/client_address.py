"""The address a request came from, believing ``X-Forwarded-For`` only from our own proxies.

The web server is told to leave forwarding headers alone (uvicorn
``--no-proxy-headers``), so ``REMOTE_ADDR`` is the peer that opened the
connection. Only when that peer is one of ``TRUSTED_PROXIES`` is the header
read, from its right end: each hop a trusted proxy appended is believed, and
the first address not itself a trusted proxy is the client. Anything left of
it was written by the client and may be made up.

The lockout counter (django-axes ``AXES_CLIENT_IP_CALLABLE``) and the audit
trail both take the address from here.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(configured: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in configured if item.strip())


def _is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(request: Any) -> str:
    """The client's address: the peer's, or what our proxies say the client's was."""
    peer = request.META.get("REMOTE_ADDR", "") or ""
    networks = _networks(tuple(settings.TRUSTED_PROXIES))
    if not networks:
        return peer
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    address = peer
    while _is_trusted(address, networks) and hops:
        hop = hops.pop()
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:  # not an address: the proxy's own is the last we can believe
            break
    return address
