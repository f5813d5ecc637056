"""Where dispatchd may send a request on a user's behalf: webhook deliveries and wake URLs.

Anyone who may register an agent can set its `wake_url`, and an admin sets webhook URLs;
either would otherwise let the broker reach what only it can reach (SSRF): the cloud
metadata service, a database on the private network. A destination is refused when its
address is link-local (169.254.0.0/16, fe80::/10: cloud metadata), private (RFC 1918,
fc00::/7, 100.64.0.0/10), unspecified, multicast or otherwise not global, unless its
network is listed in `outbound.allow_networks`; loopback is allowed while
`outbound.allow_loopback` is true (the default, for the embedded setup).

The check is made twice. When a URL is stored, on its host if that is an address (or
`localhost`): a 422 naming the field. When a request is sent, on every address the name
resolves to then, and the request goes to the address that was checked (the Host header
and TLS name stay the URL's), so a name that later resolves elsewhere (DNS rebinding)
cannot slip past. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dispatchd.config import OutboundConfig
from dispatchd.errors import ValidationFailed

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[Address]]]

RESOLVE_TIMEOUT_S = 5.0
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: private in practice
_METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))


class OutboundRefused(Exception):
    """A request was not sent: its destination is not allowed, or cannot be resolved."""


async def system_resolve(host: str, port: int) -> list[Address]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise OutboundRefused(f"cannot resolve {host}: {exc or 'timed out'}") from None
    found: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


class Outbound:
    def __init__(self, config: OutboundConfig, resolver: Resolver = system_resolve) -> None:
        self.allow_loopback = config.allow_loopback
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in config.allow_networks]
        self.resolver = resolver

    def refusal(self, address: Address) -> str | None:
        """Why a request may not go to `address`; None when it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed):
            return None
        if address.is_loopback:
            return None if self.allow_loopback else "a loopback address"
        if address.is_link_local or address in _METADATA:
            return "a link-local address (cloud metadata)"
        if address.is_unspecified or address.is_multicast:
            return "not a unicast address"
        if address.is_private or address in _SHARED or not address.is_global:
            return "a private address"
        return None

    def check_stored(self, url: str, field: str) -> str:
        """`url`, if its host is not a refused address; else a 422 naming `field`. A host
        name is checked when a request is sent (what it resolves to may change)."""
        host = (urlsplit(url).hostname or "").lower()
        address = _literal(host)
        if address is None and (host == "localhost" or host.endswith(".localhost")):
            address = ipaddress.ip_address("127.0.0.1")
        why = self.refusal(address) if address is not None else None
        if why is not None:
            raise ValidationFailed(
                f"{field}: {host} is {why}; list its network in outbound.allow_networks "
                "to allow it",
                code="destination_not_allowed",
                field=field,
                host=host[:200],
            )
        return url

    async def pin(self, url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Where to send a request for `url`: the URL with its host replaced by a checked
        address, the headers and extensions that keep the original name (Host, TLS).
        Raises `OutboundRefused` if any address the name resolves to is refused."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        literal = _literal(host)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = [literal] if literal is not None else await self.resolver(host, port)
        if not addresses:
            raise OutboundRefused(f"{host} resolves to no address")
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                shown = "" if literal is not None else f" resolves to {address}, which"
                raise OutboundRefused(
                    f"refused to send to {host}:{shown} is {why} "
                    "(outbound.allow_networks lists the networks allowed)"
                )
        if literal is not None:
            return url, {}, {}
        chosen = addresses[0]
        netloc = f"[{chosen}]" if chosen.version == 6 else str(chosen)
        if parts.port is not None:
            netloc += f":{parts.port}"
        userinfo, at, hostport = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}{netloc}"
        extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
        return urlunsplit(parts._replace(netloc=netloc)), {"Host": hostport}, extensions


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
