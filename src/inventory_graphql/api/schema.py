"""The GraphQL schema, composed in one place."""

from __future__ import annotations

from typing import Any

import graphql
import strawberry
from graphql import GraphQLError
from strawberry import UNSET
from strawberry.extensions import (
    DisableIntrospection,
    MaxAliasesLimiter,
    QueryDepthLimiter,
)
from strawberry.tools import merge_types

from inventory_graphql import tracing
from inventory_graphql.api import fields
from inventory_graphql.api.admin_stock import AdminStockMutation
from inventory_graphql.api.auth import IsAdmin
from inventory_graphql.api.context import Context
from inventory_graphql.api.disconnect import unless_disconnected
from inventory_graphql.api.document_cache import CachedDocument, DocumentCache, weigh
from inventory_graphql.api.errors import ErrorPolicy, bad_input
from inventory_graphql.api.internals import Executor
from inventory_graphql.api.observability import OperationMetrics
from inventory_graphql.api.outcomes import (
    ExtendResult,
    ProductResult,
    ReserveResult,
    ResolveResult,
    extend_result,
    product_result,
    reserve_result,
    resolve_result,
)
from inventory_graphql.api.query_cost import CostModel, Price
from inventory_graphql.api.request_guards import Guards, Limits, RequestGuards
from inventory_graphql.api.stock_events import (
    MAX_FIRST,
    StockEventsMutation,
    StockEventsQuery,
    StockEventsSubscription,
)
from inventory_graphql.api.subscriptions import MAX_SKUS, Subscription
from inventory_graphql.api.trusted_documents import Manifest
from inventory_graphql.api.types import Product, Reservation, ReserveLineInput
from inventory_graphql.api.waitlist import WaitlistMutation, WaitlistQuery, WaitlistSubscription
from inventory_graphql.api.webhooks import (
    FAILURES_SHOWN,
    PRICED_ENDPOINTS,
    WebhooksMutation,
    WebhooksQuery,
)
from inventory_graphql.config import Settings
from inventory_graphql.inventory import validation
from inventory_graphql.inventory.admin_writes import MAX_ADJUSTMENTS
from inventory_graphql.inventory.models import LineRequest
from inventory_graphql.inventory.validation import MAX_LINES

Info = strawberry.Info[Context, None]
MAX_PAGE = 1000  # products per page, and skus per products(skus:)
MAX_DEPTH = 8
MAX_ALIASES = 20
MAX_TOKENS = 2000
MAX_FIELDS = 1000
# Values in a request's variables (every list item and object field), and their nesting:
# the largest real ones are a page of skus (1,000) and a 100-line cart (301 values, 3 deep).
MAX_VARIABLE_VALUES = 2000
# An admin's adjustStocks of 1,000 products: up to 6 values each (the item and its fields).
ADMIN_VARIABLE_VALUES = 6 * MAX_ADJUSTMENTS + 100
MAX_VARIABLE_DEPTH = 8
# The cost limit and the queries' time budget (query_cost.py, request_guards.py): the
# settings' defaults (INVENTORY_MAX_QUERY_COST, INVENTORY_QUERY_TIMEOUT_SECONDS).
MAX_QUERY_COST = Settings.max_query_cost
QUERY_TIMEOUT_SECONDS = Settings.query_timeout_seconds
# Parsed documents kept per schema, by estimated memory (document_cache.py): 16 MiB, at
# most 256 documents, none heavier than 512 KiB (about 850 tokens).
DOCUMENT_CACHE_BYTES = 16 * 1024 * 1024
DOCUMENT_CACHE_ENTRIES = 256
CACHED_DOCUMENT_BYTES = 512 * 1024
# What fields cost beyond 1 (query_cost.py), measured in server CPU against a plain field
# (~5 us): a field that reads the database on its own costs 50 (a round trip, ~0.3-0.5
# ms), one read through a DataLoader (batched with its siblings) 10 (~45 us). Every list
# says how many items it may return and what bounds them.
READ = 50
LOAD = 10
PRICES = {
    ("Query", "product"): Price(each=LOAD),
    ("Query", "products"): Price(each=READ, most=MAX_PAGE, bounded_by=("first", "skus")),
    ("Query", "reservation"): Price(each=READ),
    ("Reservation", "lines"): Price(most=MAX_LINES),
    ("ReservationLine", "product"): Price(each=LOAD),
    ("Mutation", "reserve"): Price(each=READ),
    ("Mutation", "confirm"): Price(each=READ),
    ("Mutation", "release"): Price(each=READ),
    ("Mutation", "extendReservation"): Price(each=READ),
    ("Mutation", "createProduct"): Price(each=READ),
    ("Mutation", "adjustStock"): Price(each=READ),
    ("Mutation", "setPurchaseLimit"): Price(each=READ),
    # Safe admin writes (api/admin_stock.py); adjustStocks answers up to 1,000 products.
    ("Mutation", "setStock"): Price(each=READ),
    ("Mutation", "adjustStocks"): Price(each=READ),
    ("AdjustedProducts", "products"): Price(most=MAX_ADJUSTMENTS),
    # A stream: its first results, one per sku, are read together.
    ("Subscription", "availability"): Price(each=READ, most=MAX_SKUS, bounded_by=("skus",)),
    ("Subscription", "reservation"): Price(each=READ),
    ("Query", "waitlistEntry"): Price(each=READ),
    ("Mutation", "joinWaitlist"): Price(each=READ),
    ("Mutation", "leaveWaitlist"): Price(each=READ),
    ("Subscription", "waitlistEntry"): Price(each=READ),
    ("WaitlistEntry", "reservation"): Price(each=READ),
    # The feed (api/stock_events.py): a page's selection counts once per event (`first`);
    # its edges, a list, count again at least twice (the model sees no parent's argument).
    ("Query", "stockEvents"): Price(each=READ, most=MAX_FIRST, bounded_by=("first",)),
    ("StockEventConnection", "edges"): Price(most=2),
    ("Mutation", "setLowStockThreshold"): Price(each=READ),
    ("Subscription", "stockEvents"): Price(each=READ),
    # Webhooks (api/webhooks.py): one read each; the list reads every endpoint's state.
    ("Mutation", "createWebhook"): Price(each=READ),
    ("Mutation", "deleteWebhook"): Price(each=READ),
    ("Query", "webhooks"): Price(each=READ, most=PRICED_ENDPOINTS),
    ("Webhook", "recentFailures"): Price(most=FAILURES_SHOWN),
    ("Webhook", "kinds"): Price(most=20),
}


def _requests(lines: list[ReserveLineInput]) -> list[LineRequest]:
    return [LineRequest(line.sku, line.quantity) for line in lines]


def _line_requests(lines: list[ReserveLineInput] | None) -> list[LineRequest] | None:
    given = fields.given(lines)
    return None if given is None else _requests(given)


@strawberry.type
class Query:
    @fields.field(description="One product by sku; null when there is none.")
    async def product(self, info: Info, sku: str) -> Product | None:
        # Text no sku can be (a NUL byte, say) is the client's mistake, answered as such
        # before it reaches PostgreSQL (which would refuse a NUL as an internal error).
        if invalid := validation.check_sku(sku):
            raise bad_input(invalid.message)
        found = await info.context.products.load(sku)
        return Product.from_domain(found) if found else None

    @fields.field(description="Products by sku (or all, by sku), at most `first` of them.")
    async def products(
        self, info: Info, skus: list[str] | None = UNSET, first: int | None = 100
    ) -> list[Product]:
        first = 100 if first is None else first
        if not 0 <= first <= MAX_PAGE:
            raise bad_input(f"first must be 0 to {MAX_PAGE}")
        if skus and len(skus) > MAX_PAGE:
            raise bad_input(f"skus: at most {MAX_PAGE}")
        if skus and (malformed := [sku for sku in skus if validation.check_sku(sku)]):
            raise bad_input(f"skus: malformed {', '.join(map(repr, malformed[:10]))}")
        found = await info.context.service.products(fields.given(skus), first)
        return [Product.from_domain(p) for p in found]

    @fields.field(description="A reservation by id; null when unknown or malformed.")
    async def reservation(self, info: Info, id: strawberry.ID) -> Reservation | None:
        found = await info.context.service.reservation(id, caller=info.context.caller)
        return Reservation.from_domain(found) if found else None


@strawberry.type
class Mutation:
    @fields.mutation(description="Hold stock for every line, or for none of them.")
    async def reserve(
        self,
        info: Info,
        lines: list[ReserveLineInput],
        ttl_seconds: int | None = UNSET,
        idempotency_key: str | None = UNSET,
    ) -> ReserveResult:
        requested = _requests(lines)
        outcome = await unless_disconnected(
            info.context.request,
            info.context.service.reserve(
                requested,
                fields.given(ttl_seconds),
                fields.given(idempotency_key),
                caller=info.context.caller,
            ),
        )
        if info.context.metrics is not None:
            info.context.metrics.reservations.labels(type(outcome).__name__).inc()
        return reserve_result(outcome)

    @fields.mutation(
        description="Payment succeeded: the held units leave the stock. With `lines`, only "
        "those units do, and every other held unit returns, in one step."
    )
    async def confirm(
        self, info: Info, id: strawberry.ID, lines: list[ReserveLineInput] | None = UNSET
    ) -> ResolveResult:
        return resolve_result(
            await info.context.service.confirm(
                id, _line_requests(lines), caller=info.context.caller
            )
        )

    @fields.mutation(
        description="Payment failed: the held units return to the stock. With `lines`, only "
        "those units do; the hold stays PENDING while it holds any unit."
    )
    async def release(
        self, info: Info, id: strawberry.ID, lines: list[ReserveLineInput] | None = UNSET
    ) -> ResolveResult:
        return resolve_result(
            await info.context.service.release(
                id, _line_requests(lines), caller=info.context.caller
            )
        )

    @fields.mutation(
        description="Hold until at least `ttlSeconds` (1-3600) from now; a hold lives at most "
        "INVENTORY_MAX_HOLD_SECONDS from its creation (past it: HoldLimitReached)."
    )
    async def extend_reservation(
        self, info: Info, id: strawberry.ID, ttl_seconds: int
    ) -> ExtendResult:
        return extend_result(
            await info.context.service.extend(id, ttl_seconds, caller=info.context.caller)
        )

    @fields.mutation(
        description="Add a product with its initial stock. Needs the admin token.",
        permission_classes=[IsAdmin],
    )
    async def create_product(self, info: Info, sku: str, name: str, quantity: int) -> ProductResult:
        return product_result(await info.context.service.create_product(sku, name, quantity))

    @fields.mutation(
        description="Units of `sku` one buyer may hold plus have bought (1 up); null removes "
        "the limit. Holds and purchases made before a lower limit stand. Needs the admin token.",
        permission_classes=[IsAdmin],
    )
    async def set_purchase_limit(
        self, info: Info, sku: str, per_buyer: int | None = UNSET
    ) -> ProductResult:
        limit = fields.given(per_buyer)  # absent, as null, removes the limit
        return product_result(await info.context.service.set_purchase_limit(sku, limit))


# The root types with the waiting list's fields (api/waitlist.py) after their own.
QueryRoot = merge_types("Query", (Query, WaitlistQuery, StockEventsQuery, WebhooksQuery))
MutationRoot = merge_types(
    "Mutation",
    (Mutation, AdminStockMutation, WaitlistMutation, StockEventsMutation, WebhooksMutation),
)
SubscriptionRoot = merge_types(
    "Subscription", (Subscription, WaitlistSubscription, StockEventsSubscription)
)


class InventorySchema(strawberry.Schema):
    # Set by build_schema: what the lean request path (compiled_http.py) checks as the
    # extensions would.
    guards: Guards | None = None

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        # Strawberry logs every error with a traceback, a client's typo included. Client
        # errors are answered, not logged; ErrorPolicy logs the server's own failures.
        return None


# The alias and depth limiters build a new rule class per instance; the validation cache
# keys on the rule classes, so per-request instances would miss it every time (validation
# was 70% of a reserve's CPU). Build the rules once; each request adds the same classes.
LIMIT_RULES = [
    *MaxAliasesLimiter(max_alias_count=MAX_ALIASES).validation_rules,
    *QueryDepthLimiter(max_depth=MAX_DEPTH).validation_rules,
]


def build_schema(
    *,
    production: bool = False,
    trusted_documents: Manifest | None = None,
    max_query_cost: int = MAX_QUERY_COST,
    query_timeout_seconds: float | None = QUERY_TIMEOUT_SECONDS,
) -> InventorySchema:
    """The schema with its guards. In production introspection is off."""
    # Parsing and validating are most of a request's cost; clients that send one document
    # with variables find it in this schema's cache. Trusted documents are pinned there
    # (the manifest's own DocumentNodes, never evicted).
    pinned = {
        d.body: CachedDocument(d.document, weigh(d.body, d.document))
        for d in trusted_documents or ()
    }
    documents = DocumentCache(
        max_bytes=DOCUMENT_CACHE_BYTES,
        max_entries=DOCUMENT_CACHE_ENTRIES,
        max_document_bytes=CACHED_DOCUMENT_BYTES,
        pinned=pinned,
    )
    limits = Limits(
        max_tokens=MAX_TOKENS,
        max_fields=MAX_FIELDS,
        max_variable_values=MAX_VARIABLE_VALUES,
        admin_variable_values=ADMIN_VARIABLE_VALUES,
        max_variable_depth=MAX_VARIABLE_DEPTH,
        query_timeout_seconds=query_timeout_seconds,
    )
    guards = Guards(limits, tuple(LIMIT_RULES), documents)
    extensions: list[Any] = [
        # Operation spans when tracing is on (tracing.py): first, so a parse or
        # validation span covers the guards' own parsing and validating.
        *_tracing_extensions(guards),
        # Cheap refusals before any resolver runs, the cached parse and validation, and
        # the queries' time budget.
        lambda: RequestGuards(guards),
        lambda: ErrorPolicy(hide_suggestions=production),
        OperationMetrics,
    ]
    if production:
        extensions.append(DisableIntrospection)
    built = InventorySchema(
        query=QueryRoot,
        mutation=MutationRoot,
        subscription=SubscriptionRoot,
        extensions=extensions,
        execution_context_class=Executor,
    )
    guards.costs = cost_model(built, max_query_cost)
    built.guards = guards
    return built


def _tracing_extensions(guards: Guards) -> list[Any]:
    traced = tracing.active()
    if traced is None:
        return []
    from inventory_graphql.api.traced import OperationTracing  # needs the tracing extra

    return [lambda: OperationTracing(guards, traced.provider)]


def cost_model(served: strawberry.Schema, limit: int = MAX_QUERY_COST) -> CostModel:
    """The cost model of `served`, priced from its SDL (the public view of its types)."""
    return CostModel(graphql.build_schema(served.as_str()), PRICES, limit)


# The public schema, as exported to schema.graphql (the guards do not change the SDL).
schema = build_schema()
