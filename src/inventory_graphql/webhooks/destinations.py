"""Where webhooks may be sent: an admin token must not make the service probe the
operator's own network.

With INVENTORY_WEBHOOK_ALLOWED_HOSTS set, only those hosts (and ports) are allowed, at
whatever addresses they have: the operator chose them. Unset, any host whose every address
is a public one: loopback, private, link-local, shared, multicast, reserved and
unspecified addresses are refused. The check is made when an endpoint is created and
again for every connection: the resolver that aiohttp connects through checks the very
addresses it connects to, so a name that changes its answer after the check (DNS
rebinding) cannot slip an internal address in.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

MAX_URL_LENGTH = 2048


class DestinationRefused(OSError):
    """A name resolved to an address webhooks may not reach (aiohttp reports it as a
    connection error of that request)."""


@dataclass(frozen=True)
class HostPattern:
    host: str  # lower case; "*.example.com" matches every name below example.com
    port: int | None  # None: any port

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


@dataclass(frozen=True)
class AllowedHosts:
    """INVENTORY_WEBHOOK_ALLOWED_HOSTS: None means no list (public addresses only)."""

    patterns: tuple[HostPattern, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> AllowedHosts:
        """Entries "host", "host:port", "*.example.com" or "[::1]:8080", comma-separated."""
        patterns = []
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            try:
                parts = urlsplit("//" + entry)
                host, port = parts.hostname, parts.port
            except ValueError:
                raise ValueError(
                    f"host names or host:port, comma-separated; not {entry!r}"
                ) from None
            if not host or parts.path or parts.username or parts.query or parts.fragment:
                raise ValueError(f"host names or host:port, comma-separated; not {entry!r}")
            patterns.append(HostPattern(host.lower(), port))
        if not patterns:
            raise ValueError("host names or host:port, comma-separated")
        return cls(tuple(patterns))

    def allows(self, host: str, port: int) -> bool:
        assert self.patterns is not None
        return any(p.matches(host, port) for p in self.patterns)


def address_refusal(address: str) -> str | None:
    """Why webhooks may not reach `address` without an allow-list (None: they may)."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return f"{address} is a loopback address"
    if ip.is_link_local:
        return f"{address} is a link-local address"
    if ip.is_multicast:
        return f"{address} is a multicast address"
    if ip.is_private or not ip.is_global or ip.is_reserved or ip.is_unspecified:
        return f"{address} is a private or reserved address"
    return None


def malformed_url(url: str) -> str | None:
    """What is wrong with `url` as a webhook URL, whatever its host (None: nothing)."""
    parts = _split(url)
    return parts if isinstance(parts, str) else None


def url_refusal(url: str, allowed: AllowedHosts) -> str | None:
    """Why `url` is not a destination, judged from its text alone (None: it may be).

    http or https, no user or password, at most MAX_URL_LENGTH characters; with an
    allow-list, its host and port are on it; without, an address in it must be public.
    """
    parts = _split(url)
    if isinstance(parts, str):
        return parts
    host, port = _host_port(parts)
    if allowed.patterns is not None:
        if not allowed.allows(host, port):
            return f"{host}:{port} is not in INVENTORY_WEBHOOK_ALLOWED_HOSTS"
        return None
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            return f"{host} is a local name"
        return None  # a name: its addresses are checked when it is resolved
    return address_refusal(host)


async def destination_refusal(url: str, allowed: AllowedHosts) -> str | None:
    """url_refusal, and without an allow-list every address its host resolves to now."""
    if (refused := url_refusal(url, allowed)) is not None:
        return refused
    if allowed.patterns is not None:
        return None
    parts = urlsplit(url)
    host, port = _host_port(parts)
    try:
        await CheckedResolver(allowed).resolve(host, port, socket.AF_UNSPEC)
    except DestinationRefused as refusal:
        return str(refusal)
    except OSError:
        return f"{host} does not resolve"
    return None


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver, refusing a name when any of its addresses may not be reached.

    aiohttp connects to exactly the addresses a resolver returns, so what is checked here
    is what is connected to. (aiohttp connects to an address written in a URL without
    asking its resolver: url_refusal checks those before every request.)
    """

    def __init__(self, allowed: AllowedHosts) -> None:
        self._allowed = allowed
        self._resolver = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        if self._allowed.patterns is None:
            for result in found:
                if (refused := address_refusal(result["host"])) is not None:
                    raise DestinationRefused(f"destination not allowed: {host}: {refused}")
        return found

    async def close(self) -> None:
        await self._resolver.close()


def _split(url: str) -> SplitResult | str:
    if len(url) > MAX_URL_LENGTH:
        return f"the URL is longer than {MAX_URL_LENGTH} characters"
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return "the URL has spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number or out of range)
    except ValueError:
        return "the URL cannot be parsed"
    if parts.scheme not in ("http", "https"):
        return "only http and https URLs"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not allowed (the signature authenticates)"
    if not parts.hostname:
        return "the URL has no host"
    return parts


def _host_port(parts: SplitResult) -> tuple[str, int]:
    assert parts.hostname is not None
    return parts.hostname.lower(), parts.port or (443 if parts.scheme == "https" else 80)
