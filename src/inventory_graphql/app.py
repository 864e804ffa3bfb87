"""The ASGI application and the lifespan that owns its long-lived resources."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from inventory_graphql.api.http import graphql_endpoint
from inventory_graphql.config import Settings
from inventory_graphql.database import connect_pool, migrate
from inventory_graphql.inventory.service import InventoryService
from inventory_graphql.inventory.sweeper import Sweeper


def create_app(settings: Settings, database_url: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        async with connect_pool(database_url, settings.pool_size) as pool:
            async with pool.acquire() as conn:
                await migrate(conn)
            service = InventoryService.from_pool(pool, settings)
            sweeper = Sweeper(
                service.reservations, settings.sweep_interval_seconds, settings.sweep_batch_size
            )
            async with sweeper.running():
                yield {"service": service, "sweeper": sweeper}

    graphql = graphql_endpoint()
    return Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
        ],
        lifespan=lifespan,
    )
