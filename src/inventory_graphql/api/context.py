"""What every resolver gets: the service and per-request DataLoaders."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection
from starlette.responses import Response
from strawberry.dataloader import DataLoader

from inventory_graphql.api.cost_budget import CostBudget
from inventory_graphql.api.delivery import Renderings
from inventory_graphql.inventory import models
from inventory_graphql.inventory.service import InventoryService
from inventory_graphql.live.hub import AvailabilityHub
from inventory_graphql.metrics import Metrics


@dataclass
class Context:
    request: HTTPConnection
    response: Response | None
    service: InventoryService
    hub: AvailabilityHub
    metrics: Metrics | None = None
    live_interval_seconds: float = 0.0
    renderings: Renderings | None = None  # shared by this process's subscriptions
    is_admin: bool = False
    # Whose holds this request may see and act on (a verified buyer token, the admin
    # token, or nobody: anonymous). Over WebSocket, set from connection_init.
    caller: models.Caller = models.ANONYMOUS
    connection_params: object = None  # a WebSocket's connection_init payload
    cost_budget: CostBudget | None = None  # what the client may still spend (request_guards)
    _products: DataLoader[str, models.Product | None] | None = field(default=None, init=False)

    @property
    def products(self) -> DataLoader[str, models.Product | None]:
        # Made when a resolver first asks (a reserve never does). Not a bound method of
        # this context: the loader would hold the context that holds it, a cycle (with
        # the request and response hanging off it) that only the collector frees.
        if self._products is None:
            self._products = DataLoader(load_fn=functools.partial(_load_products, self.service))
        return self._products


async def _load_products(
    service: InventoryService, skus: Sequence[str]
) -> list[models.Product | None]:
    found = {p.sku: p for p in await service.products(skus, len(skus))}
    return [found.get(sku) for sku in skus]
