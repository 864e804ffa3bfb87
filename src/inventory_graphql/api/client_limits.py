"""Per-client WebSocket limits: open connections, live subscriptions, subscribe rate.

A client is the address the ASGI scope gives (uvicorn puts the X-Forwarded-For address
there when the peer is in FORWARDED_ALLOW_IPS), so the limits hold behind a load balancer
too. One ClientLimits per process, owned by the app's lifespan.

- Connections over the cap are refused at the handshake with HTTP 429 (ConnectionCap).
- Subscriptions over the cap, or starting faster than a token bucket allows (sustained
  rate plus burst), are refused by the resolver before it reads anything (LimitReached).

Memory: a client has an entry while it has anything open; then, idle, only until its
bucket would be full again (burst / rate seconds; a full bucket is what a new entry
gets, so dropping it forgets nothing), and at most MAX_IDLE_CLIENTS idle entries are
kept (past that the oldest go, each giving that client a full burst back early).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from inventory_graphql.logs import handshake_denied

MAX_IDLE_CLIENTS = 100_000  # ~300 bytes each: 30 MB at worst (rotating forwarded addresses)
CONNECTION_RETRY_AFTER_SECONDS = 5  # a slot frees only when one of the client's own closes


class LimitReached(Exception):
    """A subscription refused by a per-client limit; `code` is its `extensions.code`."""

    def __init__(self, code: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extensions: dict[str, object] = {"code": code, **details}


class Lease:
    """One open connection or subscription of a client; `release` gives it back, once."""

    __slots__ = ("_give_back",)

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back: Callable[[], None] | None = give_back

    def release(self) -> None:
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()


@dataclass
class _Client:
    tokens: float
    refilled_at: float
    connections: int = 0
    subscriptions: int = 0


class ClientLimits:
    """Counts per client; a limit of 0 (or a rate of 0) means none."""

    def __init__(
        self,
        *,
        connections: int,
        subscriptions: int,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_idle: int = MAX_IDLE_CLIENTS,
    ) -> None:
        self.max_connections = connections
        self.max_subscriptions = subscriptions
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_idle = max_idle
        # Every idle bucket is full again after this long.
        self._refill_seconds = burst / rate if rate > 0 else 0.0
        self._clients: dict[str, _Client] = {}
        self._idle: OrderedDict[str, float] = OrderedDict()  # client -> idle since
        self.refused_connections = 0
        self.refused_subscriptions = 0
        self.rate_limited = 0

    @property
    def clients(self) -> int:
        """Clients with an entry: something open, or a bucket still refilling."""
        self._prune()
        return len(self._clients)

    def connect(self, client: str) -> Lease | None:
        """A lease on one more connection for `client`, or None when at its cap."""
        entry = self._entry(client)
        if 0 < self.max_connections <= entry.connections:
            self.refused_connections += 1
            self._maybe_idle(client, entry)
            return None
        entry.connections += 1
        self._idle.pop(client, None)
        return Lease(lambda: self._release(client, connections=1))

    def subscribe(self, client: str) -> Lease:
        """A lease on one more subscription; LimitReached when over the cap or the rate."""
        entry = self._entry(client)
        try:
            if 0 < self.max_subscriptions <= entry.subscriptions:
                self.refused_subscriptions += 1
                raise LimitReached(
                    "TOO_MANY_SUBSCRIPTIONS",
                    f"Too many live subscriptions from this client (at most "
                    f"{self.max_subscriptions}): complete one before starting another.",
                    limit=self.max_subscriptions,
                )
            if self.rate > 0:
                self._take_token(entry)
        except LimitReached:
            self._maybe_idle(client, entry)
            raise
        entry.subscriptions += 1
        self._idle.pop(client, None)
        return Lease(lambda: self._release(client, subscriptions=1))

    def _take_token(self, entry: _Client) -> None:
        now = self._clock()
        entry.tokens = min(self.burst, entry.tokens + (now - entry.refilled_at) * self.rate)
        entry.refilled_at = now
        if entry.tokens < 1:
            self.rate_limited += 1
            # In whole milliseconds, rounded up (less a float's error: 1 / 20 is 0.05).
            wait = math.ceil((1 - entry.tokens) / self.rate * 1000 - 1e-6) / 1000
            raise LimitReached(
                "RATE_LIMITED",
                f"Subscriptions are starting too fast from this client (at most "
                f"{self.rate:g} a second, {self.burst} at once): retry in {wait:g} s.",
                retriable=True,
                retryAfterSeconds=wait,
            )
        entry.tokens -= 1

    def _entry(self, client: str) -> _Client:
        self._prune()
        entry = self._clients.get(client)
        if entry is None:
            entry = self._clients[client] = _Client(tokens=self.burst, refilled_at=self._clock())
        return entry

    def _release(self, client: str, *, connections: int = 0, subscriptions: int = 0) -> None:
        entry = self._clients[client]
        entry.connections -= connections
        entry.subscriptions -= subscriptions
        self._maybe_idle(client, entry)
        self._prune()

    def _maybe_idle(self, client: str, entry: _Client) -> None:
        if entry.connections or entry.subscriptions:
            return
        self._idle[client] = self._clock()
        self._idle.move_to_end(client)

    def _prune(self) -> None:
        """Drop idle clients whose buckets are full again, and the oldest past the bound."""
        now = self._clock()
        while self._idle:
            client, since = next(iter(self._idle.items()))
            if now - since < self._refill_seconds and len(self._idle) <= self._max_idle:
                return
            del self._idle[client]
            del self._clients[client]


def client_of(scope: Scope) -> str:
    """The client's address (after uvicorn's proxy headers); "" when the server gives none."""
    client = scope.get("client")
    return str(client[0]) if client else ""


class ConnectionCap:
    """Wraps the GraphQL WebSocket route: counts each client's open connections and
    refuses one over the cap at the handshake, before the upgrade, with HTTP 429 and
    Retry-After (graphql-transport-ws's 4429 means "too many initialisation requests",
    which its clients treat as fatal, and an accepted socket would already cost a
    handler and an init timer)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = scope["state"]["client_limits"]  # the lifespan's (state.AppState)
        assert isinstance(limits, ClientLimits)
        lease = limits.connect(client_of(scope))
        if lease is None:
            await self._refuse(WebSocket(scope, receive, send), limits.max_connections)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            lease.release()

    @staticmethod
    async def _refuse(websocket: WebSocket, limit: int) -> None:
        if "websocket.http.response" not in websocket.scope.get("extensions", {}):
            # No denial responses in this server: closing before accepting is a 403.
            await websocket.close(code=1013, reason="too many connections from this client")
            return
        handshake_denied()  # uvicorn would log an error for each refusal (logs.py)
        await websocket.send_denial_response(
            PlainTextResponse(
                f"Too many WebSocket connections from this client (at most {limit}).\n",
                status_code=429,
                headers={"Retry-After": str(CONNECTION_RETRY_AFTER_SECONDS)},
            )
        )
