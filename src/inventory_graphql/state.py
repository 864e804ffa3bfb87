"""What the app's lifespan hands to every request and WebSocket (`request.state`)."""

from __future__ import annotations

from typing import TypedDict, cast

from starlette.requests import HTTPConnection

from inventory_graphql.api.client_limits import ClientLimits
from inventory_graphql.api.cost_budget import CostBudget
from inventory_graphql.api.delivery import Renderings
from inventory_graphql.inventory.service import InventoryService
from inventory_graphql.live.hub import AvailabilityHub
from inventory_graphql.live.listener import ReconnectingPostgresBackend
from inventory_graphql.live.reservation_watch import ReservationHub
from inventory_graphql.metrics import Metrics
from inventory_graphql.webhooks.service import WebhookService


class AppState(TypedDict):
    service: InventoryService
    hub: AvailabilityHub
    reservation_hub: ReservationHub  # feeds the `reservation` subscriptions
    listener: ReconnectingPostgresBackend
    metrics: Metrics
    # Shared by this process's subscriptions; None when direct delivery is off.
    renderings: Renderings | None
    # Per-client WebSocket connections, subscriptions and subscribe rate, for this process.
    client_limits: ClientLimits
    # Per-client cost budgets of every GraphQL operation, for this process.
    cost_budget: CostBudget
    webhooks: WebhookService  # endpoints, and this process's deliveries


def app_state(connection: HTTPConnection) -> AppState:
    # Starlette's State reads keys like a dict; the lifespan yielded an AppState.
    return cast(AppState, connection.state)
