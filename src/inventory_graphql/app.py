"""The ASGI application and the lifespan that owns its long-lived resources."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from inventory_graphql import garbage_collection
from inventory_graphql.api.auth import Tokens, bearer, matches
from inventory_graphql.api.buyers import BuyerTokens
from inventory_graphql.api.client_limits import ClientLimits, ConnectionCap
from inventory_graphql.api.compiled_http import LeanGate, LeanPath
from inventory_graphql.api.cost_budget import BudgetGate, CostBudget
from inventory_graphql.api.delivery import Renderings
from inventory_graphql.api.graphiql import STATIC_PATH, GraphiQLFiles
from inventory_graphql.api.http import graphql_endpoint
from inventory_graphql.api.media_types import GraphQLMediaTypes
from inventory_graphql.api.schema import build_schema
from inventory_graphql.api.trusted_manifest import load_trusted_documents
from inventory_graphql.body_limit import BodySizeLimitMiddleware
from inventory_graphql.config import Settings
from inventory_graphql.database import connect_pool, migrate
from inventory_graphql.demo import buyer_token_route
from inventory_graphql.health import livez, readyz
from inventory_graphql.http_limits import ClientGoneMiddleware
from inventory_graphql.inventory.models import ADMIN
from inventory_graphql.inventory.service import InventoryService
from inventory_graphql.live.hub import AvailabilityHub
from inventory_graphql.live.listener import ReconnectingPostgresBackend
from inventory_graphql.live.reservation_watch import ReservationHub
from inventory_graphql.logs import configure_logging
from inventory_graphql.metrics import Metrics, Reading
from inventory_graphql.request_id import RequestIdMiddleware
from inventory_graphql.state import AppState
from inventory_graphql.webhooks.service import WebhookService

log = logging.getLogger(__name__)


def demo_routes(demo_dir: Path | None) -> list[BaseRoute]:
    """The storefront demo at `/`: plain files, no build step, nothing from the internet."""
    if demo_dir is None or not (demo_dir / "index.html").is_file():

        async def no_demo(request: object) -> PlainTextResponse:
            return PlainTextResponse("inventory-graphql: GraphQL is at /graphql\n")

        return [Route("/", no_demo)]
    return [Mount("/", StaticFiles(directory=demo_dir, html=True))]


def _readings(
    service: InventoryService, hub: AvailabilityHub, listener: ReconnectingPostgresBackend
) -> dict[str, Reading]:
    stats = service.stats
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
        "inventory_checked_notifications": (
            "counter",
            "availability notifications checked against the database (first for a sku, a gap, "
            "or forged) before reaching subscribers",
            lambda: hub.checked,
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
            lambda: stats().batches,
        ),
        "inventory_queued_reservations": (
            "gauge",
            "reserves waiting for their answer (bounded by INVENTORY_MAX_QUEUED_RESERVATIONS)",
            lambda: stats().queued,
        ),
        "inventory_contended_products": (
            "gauge",
            "products whose rows were found locked past lock_timeout, served one at a time",
            lambda: stats().contended,
        ),
        "inventory_given_back_holds": (
            "counter",
            "holds released because their clients left or were told an error",
            lambda: stats().given_back,
        ),
        "inventory_expired_holds": (
            "counter",
            "holds expired by this process's sweeper",
            lambda: stats().expired,
        ),
        "inventory_db_pool_connections": (
            "gauge",
            "connections open in the pool",
            lambda: stats().pool_size,
        ),
        "inventory_db_pool_idle": ("gauge", "pool connections idle", lambda: stats().pool_idle),
        "inventory_db_pool_max": ("gauge", "pool size limit", lambda: stats().pool_max),
    }


def _client_limit_readings(limits: ClientLimits, budget: CostBudget) -> dict[str, Reading]:
    return {
        "inventory_rate_limited_operations": (
            "counter",
            "operations refused RATE_LIMITED: their client's cost budget was spent "
            "(INVENTORY_CLIENT_COST_PER_SECOND)",
            lambda: budget.refused,
        ),
        "inventory_ws_clients": (
            "gauge",
            "clients (addresses) with a WebSocket or subscription open or a subscribe rate "
            "still recovering",
            lambda: limits.clients,
        ),
        "inventory_ws_refused_connections": (
            "counter",
            "WebSocket handshakes refused (429): the client had INVENTORY_MAX_WS_CONNECTIONS_"
            "PER_CLIENT open",
            lambda: limits.refused_connections,
        ),
        "inventory_refused_subscriptions": (
            "counter",
            "subscriptions refused TOO_MANY_SUBSCRIPTIONS (INVENTORY_MAX_SUBSCRIPTIONS_PER_CLIENT)",
            lambda: limits.refused_subscriptions,
        ),
        "inventory_rate_limited_subscriptions": (
            "counter",
            "subscriptions refused RATE_LIMITED (INVENTORY_SUBSCRIBE_RATE_PER_CLIENT)",
            lambda: limits.rate_limited,
        ),
    }


def create_app(
    settings: Settings, database_url: str, *, on_started: Callable[[], None] | None = None
) -> ASGIApp:
    """The app. `on_started` runs once its lifespan has built everything (the process's
    entry point tunes the collector there: what startup built is then frozen)."""
    metrics = Metrics()
    settings, generated = settings.with_admin_token()
    if generated is not None:
        # Nobody was shown this token (`serve` prints the one it makes), so admin is locked.
        log.warning("INVENTORY_ADMIN_TOKEN is not set: admin mutations are locked")
    assert settings.admin_token is not None
    secret = settings.buyer_token_secret
    tokens = Tokens(
        admin=settings.admin_token,
        storefront=settings.storefront_token,
        buyers=BuyerTokens(secret) if secret is not None else None,
        named_admins=settings.admin_tokens,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[AppState]:
        async with contextlib.AsyncExitStack() as stack:
            pool = await stack.enter_async_context(connect_pool(database_url, settings))
            async with pool.acquire() as conn:
                await migrate(conn)
            service = InventoryService(pool, settings, on_batch=metrics.batch_sizes.observe)
            webhooks = WebhookService(pool, database_url, settings)
            listener = ReconnectingPostgresBackend(database_url)
            broadcast = await stack.enter_async_context(Broadcast(backend=listener))
            hub = AvailabilityHub(broadcast, service.products)
            # The hub reads every watched hold for its subscribers, whoever's it is: whether
            # one may watch it is decided when the subscription starts.
            reservation_hub = ReservationHub(
                broadcast, functools.partial(service.reservation, caller=ADMIN)
            )
            limits = ClientLimits(
                connections=settings.max_ws_connections_per_client,
                subscriptions=settings.max_subscriptions_per_client,
                rate=settings.subscribe_rate_per_client,
                burst=settings.subscribe_burst_per_client,
            )
            budget = CostBudget(
                rate=settings.client_cost_per_second, burst=settings.client_cost_burst
            )
            metrics.watch(
                {
                    **_readings(service, hub, listener),
                    **reservation_hub.readings(),
                    **_client_limit_readings(limits, budget),
                    "inventory_compiled_operations": (
                        "counter",
                        "HTTP operations answered from a compiled plan, without Strawberry's "
                        "view (INVENTORY_COMPILED_OPERATIONS)",
                        lambda: lean.answered if lean is not None else 0,
                    ),
                }
            )
            stack.callback(metrics.unwatch)
            await stack.enter_async_context(service.running())
            await stack.enter_async_context(webhooks.running())
            await stack.enter_async_context(hub.running())
            await stack.enter_async_context(reservation_hub.running())
            if on_started is not None:
                on_started()
            yield AppState(
                service=service,
                hub=hub,
                reservation_hub=reservation_hub,
                listener=listener,
                metrics=metrics,
                renderings=Renderings() if settings.direct_delivery else None,
                client_limits=limits,
                cost_budget=budget,
                webhooks=webhooks,
            )

    def is_admin_request(headers: Headers) -> bool:
        return tokens.is_admin(bearer(headers))

    # The manifest is checked before anything starts (ManifestError: `serve` exits 2).
    trusted = load_trusted_documents(settings)
    schema = build_schema(
        production=settings.production,
        trusted_documents=trusted.manifest,
        max_query_cost=settings.max_query_cost,
        query_timeout_seconds=settings.query_timeout_seconds,
    )
    # The lean request path: known documents from compiled plans (api/compiled_http.py).
    lean = (
        LeanPath(schema, schema.guards, hide_suggestions=settings.production)
        if settings.compiled_operations and schema.guards is not None
        else None
    )
    graphql = graphql_endpoint(
        schema,
        tokens,
        max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
        graphiql=not settings.production,
        live_interval_seconds=settings.live_interval_ms / 1000,
        direct_delivery=settings.direct_delivery,
        trusted_documents=trusted,
    )
    app = Starlette(
        routes=[
            Route(
                "/graphql",
                BudgetGate(graphql, exempt=is_admin_request),
                methods=["GET", "POST"],
            ),
            # Each client's open WebSockets counted, one over its cap refused (429).
            WebSocketRoute("/graphql", ConnectionCap(graphql)),
            Route("/livez", livez),
            Route("/readyz", readyz),
            Route("/metrics", metrics.endpoint(_bearer_of(settings.metrics_token))),
            # Demo mode only: buyer tokens for anyone, standing in for a shop's backend.
            *([buyer_token_route(secret)] if settings.demo and secret is not None else []),
            # GraphiQL's own files (the page at GET /graphql), before the demo's `/` mount.
            *([Mount(STATIC_PATH, GraphiQLFiles())] if not settings.production else []),
            *demo_routes(settings.demo_dir),
        ],
        middleware=[
            Middleware(ClientGoneMiddleware),
            Middleware(RequestIdMiddleware),
            Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        lifespan=lifespan,
    )
    if lean is None:
        return GraphQLMediaTypes(app)
    return GraphQLMediaTypes(
        LeanGate(
            app, lean, graphql, max_body_bytes=settings.max_body_bytes, exempt=is_admin_request
        )
    )


def _bearer_of(token: str | None) -> Callable[[Request], bool] | None:
    """Who may scrape /metrics: anyone, or the bearer of INVENTORY_METRICS_TOKEN."""
    if token is None:
        return None
    return lambda request: matches(bearer(request.headers), token)


def app_from_env() -> ASGIApp:
    """The app for `uvicorn --factory` and `serve --workers N`: settings from the environment.

    This is a worker process's entry point, so it also tunes the process's collector.
    """
    settings = Settings.from_env()
    configure_logging(settings.log_format)
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL must be set for app_from_env")
    return create_app(settings, settings.database_url, on_started=garbage_collection.tune)
