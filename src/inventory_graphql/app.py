"""The ASGI application and the lifespan that owns its long-lived resources."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from inventory_graphql import garbage_collection
from inventory_graphql.api.auth import Tokens
from inventory_graphql.api.delivery import Renderings
from inventory_graphql.api.http import graphql_endpoint
from inventory_graphql.api.schema import build_schema
from inventory_graphql.body_limit import BodySizeLimitMiddleware
from inventory_graphql.config import Settings
from inventory_graphql.database import connect_pool, migrate
from inventory_graphql.health import livez, readyz
from inventory_graphql.inventory.service import InventoryService
from inventory_graphql.inventory.sweeper import Sweeper
from inventory_graphql.live.hub import AvailabilityHub
from inventory_graphql.live.listener import ReconnectingPostgresBackend
from inventory_graphql.logs import configure_logging
from inventory_graphql.metrics import Metrics, Reading
from inventory_graphql.request_id import RequestIdMiddleware

log = logging.getLogger(__name__)


def demo_routes(demo_dir: Path | None) -> list[BaseRoute]:
    """The storefront demo at `/`: plain files, no build step, nothing from the internet."""
    if demo_dir is None or not (demo_dir / "index.html").is_file():

        async def no_demo(request: object) -> PlainTextResponse:
            return PlainTextResponse("inventory-graphql: GraphQL is at /graphql\n")

        return [Route("/", no_demo)]
    return [Mount("/", StaticFiles(directory=demo_dir, html=True))]


def _readings(
    service: InventoryService,
    hub: AvailabilityHub,
    listener: ReconnectingPostgresBackend,
    sweeper: Sweeper,
) -> dict[str, Reading]:
    coalescer = service.coalescer
    pool = service.pool
    return {
        "inventory_active_subscriptions": (
            "gauge",
            "availability subscriptions open",
            lambda: hub.subscriptions,
        ),
        "inventory_watched_skus": (
            "gauge",
            "skus with at least one subscriber",
            lambda: hub.watched_skus,
        ),
        "inventory_pending_updates": (
            "gauge",
            "updates waiting for subscribers to read them (latest per sku)",
            lambda: hub.pending_updates,
        ),
        "inventory_listener_connected": (
            "gauge",
            "1 when the LISTEN connection is up",
            lambda: float(listener.connected),
        ),
        "inventory_listener_reconnects": (
            "counter",
            "LISTEN connection reconnects",
            lambda: listener.reconnects,
        ),
        "inventory_reservation_batches": (
            "counter",
            "coalesced reservation batches (one transaction each)",
            lambda: coalescer.batches if coalescer else 0,
        ),
        "inventory_queued_reservations": (
            "gauge",
            "reserves waiting for their answer (bounded by INVENTORY_MAX_QUEUED_RESERVATIONS)",
            lambda: coalescer.queued if coalescer else 0,
        ),
        "inventory_contended_products": (
            "gauge",
            "products whose rows were found locked past lock_timeout, served one at a time",
            lambda: service.contention.count,
        ),
        "inventory_given_back_holds": (
            "counter",
            "holds released because their clients left or were told an error",
            lambda: service.give_back.released_total,
        ),
        "inventory_expired_holds": (
            "counter",
            "holds expired by this process's sweeper",
            lambda: sweeper.expired_total,
        ),
        "inventory_db_pool_connections": (
            "gauge",
            "connections open in the pool",
            lambda: pool.get_size(),
        ),
        "inventory_db_pool_idle": ("gauge", "pool connections idle", lambda: pool.get_idle_size()),
        "inventory_db_pool_max": ("gauge", "pool size limit", lambda: pool.get_max_size()),
    }


def create_app(settings: Settings, database_url: str) -> Starlette:
    metrics = Metrics()
    admin_token = settings.admin_token
    if admin_token is None:
        # Never run with admin open: without a configured token, nobody has this one.
        log.warning("INVENTORY_ADMIN_TOKEN is not set: admin mutations are locked")
        admin_token = secrets.token_urlsafe(32)
    tokens = Tokens(admin=admin_token, storefront=settings.storefront_token)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        async with connect_pool(database_url, settings) as pool:
            async with pool.acquire() as conn:
                await migrate(conn)
            service = InventoryService.from_pool(
                pool,
                settings,
                coalesce=settings.coalesce_reservations,
                on_batch=metrics.batch_sizes.observe,
            )
            sweeper = Sweeper(
                service.reservations, settings.sweep_interval_seconds, settings.sweep_batch_size
            )
            listener = ReconnectingPostgresBackend(database_url)
            async with Broadcast(backend=listener) as broadcast:
                hub = AvailabilityHub(broadcast, service.catalog)
                metrics.watch(_readings(service, hub, listener, sweeper))
                try:
                    async with contextlib.AsyncExitStack() as running:
                        await running.enter_async_context(service.running())
                        await running.enter_async_context(sweeper.running())
                        await running.enter_async_context(hub.running())
                        garbage_collection.tune()  # started: what exists now stays
                        yield {
                            "service": service,
                            "hub": hub,
                            "listener": listener,
                            "metrics": metrics,
                            "renderings": Renderings(),
                        }
                finally:
                    metrics.unwatch()

    graphql = graphql_endpoint(
        build_schema(production=settings.production),
        tokens,
        max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
        graphiql=not settings.production,
        live_interval_seconds=settings.live_interval_ms / 1000,
    )
    return Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/livez", livez),
            Route("/readyz", readyz),
            Route("/metrics", metrics.endpoint()),
            *demo_routes(settings.demo_dir),
        ],
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """The app for `uvicorn --factory` and `serve --workers N`: settings from the environment."""
    configure_logging(os.environ.get("INVENTORY_LOG_FORMAT", "text"))
    settings = Settings.from_env()
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL must be set for app_from_env")
    return create_app(settings, settings.database_url)
