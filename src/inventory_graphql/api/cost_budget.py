"""Per-client cost budgets: what one client may make the server spend per second.

The cost limit (query_cost.py) bounds one operation; this bounds a client's operations
over time, as Shopify's and GitHub's GraphQL APIs do: each client has a bucket of cost
units that refills at `rate` a second up to `burst`, and every operation spends its price
(cost plus the values in its variables, which the cost model does not see: a hundred-line
cart is priced by its lines) before it runs. An empty bucket answers RATE_LIMITED, with
the seconds until the operation would fit, and runs nothing. One costlier than `burst`
runs only on a full bucket and leaves it in debt.

A client that loops on refused operations would still make the server parse and price
each one (half a millisecond); so after a refusal its next requests are held at the door
(BudgetGate, before anything is read) until its bucket holds what the refused operation
cost, at most HOLD_SECONDS, and answered 429 there if it still does not: a client looping
as fast as it is answered is paced by its own budget.

Four clients looping on the costliest query the limits allow used to take four fifths of
the shoppers' rate; a budget of 5,000 units a second lets one client run that query about
once a second (30 ms of CPU), while a shopper's page (about 1,000 units) and reserves (about
60 each) never come near it.

A client is the address the ASGI scope gives (client_limits.client_of: the forwarded
address behind a trusted proxy). Memory: a full bucket is what a new client gets, so an
entry is dropped once it would be full again, and at most `max_clients` are kept (past
that the least recently used go, each forgiven early).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from inventory_graphql.api.client_limits import client_of
from inventory_graphql.api.media_types import JSON_UTF8

MAX_CLIENTS = 100_000  # ~150 bytes each: 15 MB at worst (rotating forwarded addresses)
HOLD_SECONDS = 1.0  # the longest a request waits at the door for its client's budget


@dataclass(frozen=True)
class OverBudget:
    """Why an operation was refused: it fits again in `retry_after` seconds."""

    price: int
    retry_after: float
    rate: float
    burst: int

    @property
    def message(self) -> str:
        return (
            f"This client is spending too fast: the operation costs {self.price} and this "
            f"client's budget refills {self.rate:g} a second up to {self.burst}; retry in "
            f"{self.retry_after:g} s."
        )


class CostBudget:
    """Token buckets of cost units per client; a rate of 0 turns budgets off."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_clients = max_clients
        # client -> (units left, when, units its last refused operation wanted);
        # least recently spent first.
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()
        self.refused = 0

    @property
    def clients(self) -> int:
        """Clients whose buckets are not full."""
        self._forget_full(self._clock())
        return len(self._buckets)

    def spend(self, client: str, price: int) -> OverBudget | None:
        """Take `price` units from the client's bucket, or say why not (nothing taken)."""
        if self.rate <= 0:
            return None
        now = self._clock()
        self._forget_full(now)
        left = self._left(client, now)
        needed = min(price, self.burst)
        if left < needed:
            self.refused += 1
            self._buckets[client] = (left, now, needed)
            return OverBudget(price, _millis((needed - left) / self.rate), self.rate, self.burst)
        self._buckets[client] = (left - price, now, 0.0)
        return None

    def wait(self, client: str) -> float:
        """Seconds until the client's bucket holds what its last refused operation wanted
        (0: nothing refused since it last spent, or it holds that already)."""
        found = self._buckets.get(client)
        if self.rate <= 0 or found is None or not found[2]:
            return 0.0
        now = self._clock()
        return max(0.0, _millis((found[2] - self._left(client, now, pop=False)) / self.rate))

    def _left(self, client: str, now: float, *, pop: bool = True) -> float:
        found = self._buckets.pop(client, None) if pop else self._buckets.get(client)
        if found is None:
            return self.burst
        left, then, _ = found
        return min(self.burst, left + (now - then) * self.rate)

    def _forget_full(self, now: float) -> None:
        """Drop buckets that are full again, from the least recently used, stopping at the
        first that is not (lazy: the bound on entries is what caps memory), and any past
        the bound. A bucket left with `left` units at `then` is full at then + (burst -
        left) / rate."""
        while self._buckets:
            client, (left, then, _) = next(iter(self._buckets.items()))
            full = then + (self.burst - left) / self.rate <= now
            if not full and len(self._buckets) <= self._max_clients:
                return
            del self._buckets[client]


def _millis(seconds: float) -> float:
    """In whole milliseconds, rounded up (less a float's error)."""
    return math.ceil(seconds * 1000 - 1e-6) / 1000


class BudgetGate:
    """Wraps the GraphQL HTTP route: a request from a client whose last operation was
    refused RATE_LIMITED waits here, before its body is read, until its bucket holds what
    that operation cost (at most HOLD_SECONDS); if it still does not, it is answered 429
    here, for a few microseconds instead of a parse. Held requests are bounded by the
    per-client connection cap (http_limits). `exempt` callers (admin) have no budget."""

    def __init__(self, app: ASGIApp, exempt: Callable[[Headers], bool]) -> None:
        self.app = app
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        budget = scope["state"]["cost_budget"]  # the lifespan's (state.AppState)
        assert isinstance(budget, CostBudget)
        client = client_of(scope)
        if (wait := budget.wait(client)) and not self.exempt(Headers(scope=scope)):
            await asyncio.sleep(min(wait, HOLD_SECONDS))
            if wait := budget.wait(client):
                budget.refused += 1
                await _too_fast(wait).__call__(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _too_fast(wait: float) -> Response:
    error = {
        "message": f"This client is spending too fast: retry in {wait:g} s.",
        "extensions": {"code": "RATE_LIMITED", "retriable": True, "retryAfterSeconds": wait},
    }
    return JSONResponse(
        {"data": None, "errors": [error]},
        status_code=429,
        headers={"Retry-After": str(math.ceil(wait))},
        media_type=JSON_UTF8,
    )
