"""Where a webhook may be sent: public addresses only, never the fleet's own endpoints.

A webhook URL is checked twice:

- at submit (`WebhookPolicy.check_url`): its host is resolved and every address it resolves to
  must be allowed; a host that does not resolve is refused;
- at send time (`guarded_transport`): the connection resolves the host again, checks each
  address, connects to the checked address and checks the peer it got, so a name that resolves
  elsewhere by then (DNS rebinding) is refused before a byte is sent.

Refused: loopback, link-local (169.254.0.0/16: cloud metadata), private (RFC 1918), CGNAT
(100.64.0.0/10), unique-local IPv6 (fc00::/7), multicast, unspecified and reserved addresses —
unless `webhooks.allowed_networks` lists the network. The fleet's own endpoints (the gateway, the
Prefect API, every node's ComfyUI, the database, each by host and port) are refused whatever that
setting says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from comfyfleet.comfyui import tls_context

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_PORTS = {"http": 80, "https": 443, "mysql": 3306, "mariadb": 3306, "postgresql": 5432}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class RefusedTarget(ValueError):
    """A webhook URL or address the policy refuses; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    """One of the fleet's own endpoints, its host resolved when the policy was made."""

    name: str
    addresses: frozenset[IPAddress]
    port: int
    local: bool
    """Bound to a loopback or unspecified address: any local address at this port is it."""

    def matches(self, address: IPAddress, port: int) -> bool:
        if port != self.port:
            return False
        if address in self.addresses:
            return True
        return self.local and (address.is_loopback or address.is_unspecified)


@dataclass(frozen=True)
class WebhookPolicy:
    """Which addresses webhooks may reach (see the module doc)."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any, *, node_urls: Iterable[str] = ()) -> WebhookPolicy:
        """The policy of `settings` (`webhooks.allowed_networks`), refusing its gateway, Prefect
        API, configured nodes, database, and `node_urls` (nodes known at run time)."""
        gateway = settings.gateway
        targets = [("the gateway", gateway.host, gateway.port)]
        named = [("the Prefect API", settings.prefect.api_url)]
        named += [(f"node {n.id}", n.url) for n in settings.nodes]
        named += [("a node", url) for url in node_urls]
        for name, url in named:
            host_port = _url_host_port(url)
            if host_port is not None:
                targets.append((name, *host_port))
        database = _database_host_port(settings.database.url)
        if database is not None:
            targets.append(("the database", *database))
        endpoints = tuple(
            endpoint for name, host, port in targets if (endpoint := _endpoint(name, host, port))
        )
        networks = tuple(
            ipaddress.ip_network(n, strict=False) for n in settings.webhooks.allowed_networks
        )
        return cls(allowed_networks=networks, endpoints=endpoints)

    def refusal(self, address: str, port: int) -> str | None:
        """Why `address:port` may not be sent to, or None when it may."""
        ip = _plain(ipaddress.ip_address(address.split("%", 1)[0]))
        for endpoint in self.endpoints:
            if endpoint.matches(ip, port):
                return f"{ip} port {port}, {endpoint.name} of this fleet"
        if any(ip in network for network in self.allowed_networks):
            return None
        kind = _kind(ip)
        if kind is None:
            return None
        return f"{ip}, a {kind} address (an operator may allow it: webhooks.allowed_networks)"

    def check_url(self, url: str) -> None:
        """Resolve the URL's host and refuse it unless every address it has is allowed."""
        parsed = httpx.URL(url)
        port = parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 80)
        for address in _resolve(parsed.host, port):
            why = self.refusal(address, port)
            if why is not None:
                raise RefusedTarget(f"{parsed.host} resolves to {why}")


def _plain(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _kind(ip: IPAddress) -> str | None:
    """The refused category of `ip`, or None for a public unicast address."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT (100.64.0.0/10)"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"):
        return "unique-local IPv6"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RefusedTarget(f"host {host!r} does not resolve ({exc})") from None
    return sorted({str(info[4][0]) for info in infos})


def _url_host_port(url: str) -> tuple[str, int] | None:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return None
    if not parsed.host:
        return None
    return parsed.host, parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 80)


def _database_host_port(url: str) -> tuple[str, int] | None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if not parsed.host:
        return None  # SQLite: a file, nothing to reach
    backend = parsed.get_backend_name()
    return parsed.host, parsed.port or _DEFAULT_PORTS.get(backend, 0)


def _endpoint(name: str, host: str, port: int) -> Endpoint | None:
    if not port:
        return None
    try:
        found = {_plain(ipaddress.ip_address(a)) for a in _resolve(host, port)}
    except RefusedTarget:
        found = set()
    if not found:
        return None
    local = any(a.is_loopback or a.is_unspecified for a in found)
    if any(a.is_unspecified for a in found):
        found |= _own_addresses()
    return Endpoint(name=name, addresses=frozenset(found), port=port, local=local)


def _own_addresses() -> set[IPAddress]:
    """This host's addresses (a service bound to 0.0.0.0 answers on each)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return set()
    return {_plain(ipaddress.ip_address(str(i[4][0]).split("%", 1)[0])) for i in infos}


# -- send time --------------------------------------------------------------------------------


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses the policy allows, checking the address it connected to."""

    def __init__(self, policy: WebhookPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"host {host!r} does not resolve ({exc})") from None
        addresses = sorted({str(info[4][0]) for info in infos})
        for address in addresses:
            why = self._policy.refusal(address, port)
            if why is not None:
                raise httpcore.ConnectError(f"refused: {host} resolves to {why}")
        stream = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
                break
            except httpcore.ConnectError:
                if address == addresses[-1]:
                    raise
        assert stream is not None
        peer = stream.get_extra_info("server_addr")
        why = self._policy.refusal(str(peer[0]), int(peer[1])) if peer else "no peer address"
        if why is not None:
            await stream.aclose()
            raise httpcore.ConnectError(f"refused: connected to {why}")
        return stream

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are not sent to Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(policy: WebhookPolicy) -> httpx.AsyncHTTPTransport:
    """An httpx transport that connects only where `policy` allows (no proxies from the
    environment: a proxy would connect for us, unchecked)."""
    transport = httpx.AsyncHTTPTransport(verify=tls_context(), trust_env=False)
    # httpx takes no network backend; its pool does. Same pool, our backend.
    pool = transport._pool
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=pool._ssl_context,
        max_connections=pool._max_connections,
        network_backend=_GuardedBackend(policy),
    )
    return transport
