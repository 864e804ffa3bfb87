"""HTTP limits at the server, before the app: the values, the file budget, who counts.

uvicorn with httptools reads request heads of any size and waits for them forever, and
accepts connections until the process runs out of files. `http_protocol.py` applies the
limits below to every connection; this module holds what needs no uvicorn: the limits
themselves, the file-descriptor budget they are chosen against, and the per-process count
of connections by client address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from inventory_graphql.config import Settings

log = logging.getLogger(__name__)

# Files a server process needs besides its client connections: the database pool and the
# LISTEN connection, logs, the event loop's own descriptors, static files being served,
# and connections refused at accept while their answer is delivered (MAX_LINGERING).
FILES_BESIDES_CONNECTIONS = 256
# Connections refused at accept are kept open this long (at most this many at a time) to
# read and drop what the client already sent: closing a socket with unread input sends a
# reset, which can destroy the refusal before the client reads it.
MAX_LINGERING = 128
LINGER_SECONDS = 2.0
# Refusals are logged as a summary at most this often: one line per refused connection
# would let an attacker flood the log.
REFUSAL_LOG_SECONDS = 10.0


@dataclass(frozen=True)
class HttpLimits:
    """What one server process allows (settings, with the file limit applied)."""

    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    max_connections: int
    # 0: no per-address cap.
    max_connections_per_client: int

    @classmethod
    def for_process(cls, settings: Settings) -> HttpLimits:
        """The limits for this process, raising its file limit as far as they need.

        Call before the server starts (workers inherit the raised limit)."""
        reserve = FILES_BESIDES_CONNECTIONS + settings.pool_size
        files = raise_file_limit(settings.max_connections + reserve)
        max_connections = min(settings.max_connections, files - reserve)
        if max_connections < settings.max_connections:
            log.warning(
                "INVENTORY_MAX_CONNECTIONS=%d lowered to %d: this process may open %d files "
                "(RLIMIT_NOFILE, `ulimit -n`) and keeps %d for the database and its own use",
                settings.max_connections,
                max(max_connections, 1),
                files,
                reserve,
            )
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            max_connections=max(max_connections, 1),
            max_connections_per_client=settings.max_connections_per_client,
        )


def raise_file_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (never above the hard
    limit, never lower); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted if soft == resource.RLIM_INFINITY else soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:  # a container may refuse; keep what we have
            log.warning("could not raise the open-file limit to %d: %s", target, error)
            return soft
    return target


class TrustedPeers:
    """uvicorn's `forwarded_allow_ips` (FORWARDED_ALLOW_IPS): proxies and load balancers,
    whose connections carry many clients and so are not capped per address."""

    def __init__(self, allowed: list[str] | str) -> None:
        entries = allowed.split(",") if isinstance(allowed, str) else allowed
        self.everyone = False
        self.literals: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in (e.strip() for e in entries):
            if entry == "*":
                self.everyone = True
            elif entry:
                try:
                    self.networks.append(ipaddress.ip_network(entry))
                except ValueError:
                    self.literals.add(entry)  # a unix socket path, as uvicorn allows
                else:
                    self.literals.add(entry)

    def client_key(self, host: str | None) -> str | None:
        """The address a peer is counted under; None for a trusted proxy (or no address).

        IPv6 peers are counted by /64, the block one subscriber is usually given."""
        if host is None or self.everyone or host in self.literals:
            return None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.networks):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((address, 64), strict=False))
        return str(address)


class ConnectionCounts:
    """Open connections per client address in one server process (the total is uvicorn's
    own set of connections), and how many refused ones are still being closed."""

    def __init__(self, limits: HttpLimits, trusted: TrustedPeers) -> None:
        self.limits = limits
        self.trusted = trusted
        self.by_client: Counter[str] = Counter()
        self.lingering = 0
        self.refusals = Refusals()

    def admit(self, host: str | None, open_connections: int) -> tuple[str | None, str | None]:
        """(why the connection is refused or None, the key it is counted under or None)."""
        if open_connections >= self.limits.max_connections:
            return "the server has too many connections open", None
        key = self.trusted.client_key(host)
        if key is None or not self.limits.max_connections_per_client:
            return None, None
        if self.by_client[key] >= self.limits.max_connections_per_client:
            return "too many connections from your address", None
        self.by_client[key] += 1
        return None, key

    def release(self, key: str) -> None:
        left = self.by_client[key] - 1
        if left > 0:
            self.by_client[key] = left
        else:
            del self.by_client[key]


class Refusals:
    """Refused connections and requests by reason, logged as one summary line at most
    every REFUSAL_LOG_SECONDS (the first at once)."""

    def __init__(self) -> None:
        self.since_logged: Counter[str] = Counter()
        self.logged_at = -REFUSAL_LOG_SECONDS

    def note(self, reason: str, host: str | None) -> None:
        self.since_logged[reason] += 1
        now = time.monotonic()
        if now - self.logged_at >= REFUSAL_LOG_SECONDS:
            summary = ", ".join(f"{n} {why}" for why, n in self.since_logged.items())
            log.warning("HTTP limits refused: %s (last from %s)", summary, host)
            self.since_logged.clear()
            self.logged_at = now


class ClientGoneMiddleware:
    """A request whose client left before its body was read (it hung up, or the body
    timeout closed it) ends quietly: there is nobody to answer, and a traceback per such
    request would let anyone flood the log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(ClientDisconnect):
            await self.app(scope, receive, send)
