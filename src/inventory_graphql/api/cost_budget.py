"""Per-client cost budgets: what one client may make the server spend per second.

The cost limit (query_cost.py) bounds one operation; this bounds a client's operations
over time, as Shopify's and GitHub's GraphQL APIs do: each client has a bucket of cost
units that refills at `rate` a second up to `burst`, and every operation spends its price
(cost plus the values in its variables, which the cost model does not see: a hundred-line
cart is priced by its lines) before it runs. An empty bucket answers RATE_LIMITED, with
the seconds until the operation would fit, and runs nothing. One costlier than `burst`
runs only on a full bucket and leaves it in debt.

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

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_CLIENTS = 100_000  # ~150 bytes each: 15 MB at worst (rotating forwarded addresses)


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
        # client -> (units left, when); least recently spent first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
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
        left, then = self._buckets.pop(client, (self.burst, now))
        left = min(self.burst, left + (now - then) * self.rate)
        if left < min(price, self.burst):
            self.refused += 1
            self._buckets[client] = (left, now)
            wait = (min(price, self.burst) - left) / self.rate
            # In whole milliseconds, rounded up (less a float's error).
            wait = math.ceil(wait * 1000 - 1e-6) / 1000
            return OverBudget(price, wait, self.rate, self.burst)
        self._buckets[client] = (left - price, now)
        return None

    def _forget_full(self, now: float) -> None:
        """Drop buckets that are full again, from the least recently used, stopping at the
        first that is not (lazy: the bound on entries is what caps memory), and any past
        the bound. A bucket left with `left` units at `then` is full at then + (burst -
        left) / rate."""
        while self._buckets:
            client, (left, then) = next(iter(self._buckets.items()))
            full = then + (self.burst - left) / self.rate <= now
            if not full and len(self._buckets) <= self._max_clients:
                return
            del self._buckets[client]
