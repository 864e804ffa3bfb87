"""The stock event feed over GraphQL: stockEvents (query, paged by cursor, and subscription:
replay, then live), and setLowStockThreshold. Admin only. Composed into the schema's root
types in schema.py.

What the feed guarantees comes from the database (migration 008, inventory/stock_events.py):
a page holds only events of ended transactions, in (feed_key, id) order, and anything
committed later sorts after every event already served. So a client that always continues
from the last cursor it received sees every committed event exactly once, never one that
rolled back, per product in commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar, cast

import strawberry
from graphql import GraphQLError
from strawberry import UNSET

from inventory_graphql.api import fields
from inventory_graphql.api.auth import IsAdmin
from inventory_graphql.api.client_limits import Lease
from inventory_graphql.api.context import Context
from inventory_graphql.api.outcomes import InvalidInput, Problem, ProductResult, product_result
from inventory_graphql.api.subscriptions import _client_quota
from inventory_graphql.inventory import stock_events
from inventory_graphql.inventory.stock_events import Cursor, Expired

Info = strawberry.Info[Context, None]
Resolver = TypeVar("Resolver", bound=Callable[..., Any])

MAX_FIRST = 1000  # events per page
DEFAULT_FIRST = 100
# A subscription's page: it reads the next only after this one was sent (pull-based, so
# a slow consumer costs the server no memory).
SUBSCRIPTION_PAGE = 100
# Wake-ups: at most one read per COALESCE_SECONDS after a notified change, and a re-read
# every REREAD_SECONDS whatever was heard (events become final when an unrelated older
# transaction ends, which notifies nothing; a product's creation notifies nothing either).
COALESCE_SECONDS = 0.05
REREAD_SECONDS = 1.0


@strawberry.enum(description="What an event records.")
class StockEventKind(enum.Enum):
    CREATED = "CREATED"
    ADJUSTED = "ADJUSTED"
    SET = strawberry.enum_value("SET", description="A stock count set the quantity.")
    RESERVED = "RESERVED"
    OFFERED = strawberry.enum_value(
        "OFFERED", description="A hold made for the head of the waiting list."
    )
    CONFIRMED = strawberry.enum_value(
        "CONFIRMED", description="Held units bought (all of a hold's, or a partial confirm)."
    )
    RELEASED = strawberry.enum_value(
        "RELEASED", description="Held units given back (a release, partial or whole)."
    )
    EXPIRED = "EXPIRED"
    LOW_STOCK = strawberry.enum_value(
        "LOW_STOCK", description="available dropped below the product's lowStockThreshold."
    )
    OUT_OF_STOCK = strawberry.enum_value("OUT_OF_STOCK", description="available reached 0.")
    BACK_IN_STOCK = strawberry.enum_value("BACK_IN_STOCK", description="available rose from 0.")


@strawberry.type(
    description="One change to a product's stock, with its numbers right after it. Threshold "
    "crossings (LOW_STOCK, OUT_OF_STOCK, BACK_IN_STOCK) have zero deltas and follow the "
    "other events of their transaction."
)
class StockEvent:
    cursor: str = strawberry.field(description="Continue after this event with it (opaque).")
    kind: StockEventKind
    sku: str
    quantity_delta: int
    reserved_delta: int
    quantity: int
    reserved: int
    available: int
    version: int
    reservation_id: strawberry.ID | None
    reason: str | None
    reference: str | None
    actor: str | None = strawberry.field(description="The admin token's name, for admin writes.")
    occurred_at: datetime

    @classmethod
    def from_domain(cls, event: stock_events.StockEvent) -> StockEvent:
        return cls(
            cursor=str(event.cursor),
            kind=StockEventKind(event.kind),
            sku=event.sku,
            quantity_delta=event.quantity_delta,
            reserved_delta=event.reserved_delta,
            quantity=event.quantity,
            reserved=event.reserved,
            available=event.available,
            version=event.version,
            reservation_id=None
            if event.reservation_id is None
            else strawberry.ID(str(event.reservation_id)),
            reason=event.reason,
            reference=event.reference,
            actor=event.actor,
            occurred_at=event.occurred_at,
        )


@strawberry.type
class StockEventEdge:
    cursor: str
    node: StockEvent


@strawberry.type
class PageInfo:
    end_cursor: str | None = strawberry.field(
        description="Where to continue from: the last edge's cursor, or the cursor asked "
        "after when the page is empty (then ask again later)."
    )
    has_next_page: bool = strawberry.field(
        description="More final events are there now; false does not mean none will come."
    )


@strawberry.type
class StockEventConnection:
    edges: list[StockEventEdge]
    page_info: PageInfo


@strawberry.type(
    description="The cursor is older than the feed's retention (INVENTORY_EVENT_RETENTION_HOURS):"
    " events after it were pruned. Re-read the current stock, then follow the feed from "
    "`horizon` (or from the start: `after` null)."
)
class CursorExpired(Problem):
    cursor: str
    horizon: str


StockEventsResult = Annotated[
    StockEventConnection | CursorExpired | InvalidInput, strawberry.union("StockEventsResult")
]
StockEventFeedItem = Annotated[
    StockEvent | CursorExpired | InvalidInput, strawberry.union("StockEventFeedItem")
]


def _expired(expired: Expired) -> CursorExpired:
    return CursorExpired(
        message=expired.message, cursor=str(expired.cursor), horizon=str(expired.horizon)
    )


def _parse(after: str | None) -> Cursor | InvalidInput | None:
    if after is None or after is UNSET:  # declared without a default, as in the contract
        return None
    cursor = Cursor.parse(after)
    if cursor is None:
        return InvalidInput(
            message=f"after: not a cursor of this feed: {after[:100]!r}", field="after"
        )
    return cursor


def _admin_field(*, description: str) -> Callable[[Resolver], Resolver]:
    # fields.field and fields.subscription take no permission classes; typed the same way.
    return cast(
        Callable[[Resolver], Resolver],
        strawberry.field(description=description, permission_classes=[IsAdmin]),
    )


def _admin_subscription(*, description: str) -> Callable[[Resolver], Resolver]:
    return cast(
        Callable[[Resolver], Resolver],
        strawberry.subscription(description=description, permission_classes=[IsAdmin]),
    )


@strawberry.type
class StockEventsQuery:
    @_admin_field(
        description="The stock event feed, oldest first, after `after` (null: from the "
        "oldest event kept), at most `first` (1-1000) events. Continue with "
        "`pageInfo.endCursor`: a client that does sees every committed stock change exactly "
        "once, never one that rolled back, per product in commit order, across processes "
        "and restarts. Only events of ended transactions are served, so an event appears "
        "once its transaction and every older one still open have ended. Events are kept "
        "INVENTORY_EVENT_RETENTION_HOURS (7 days by default); an older cursor is answered "
        "CursorExpired. Needs the admin token.",
    )
    async def stock_events(
        self, info: Info, after: str | None = UNSET, first: int | None = DEFAULT_FIRST
    ) -> StockEventsResult:
        first = DEFAULT_FIRST if first is None else first
        if not 1 <= first <= MAX_FIRST:
            return InvalidInput(message=f"first: must be 1 to {MAX_FIRST}", field="first")
        cursor = _parse(after)
        if isinstance(cursor, InvalidInput):
            return cursor
        page = await info.context.service.stock_events(cursor, first + 1)
        if isinstance(page, Expired):
            return _expired(page)
        edges = [StockEventEdge(cursor=str(e.cursor), node=StockEvent.from_domain(e)) for e in page]
        more = len(edges) > first
        edges = edges[:first]
        end = edges[-1].cursor if edges else None if cursor is None else str(cursor)
        return StockEventConnection(
            edges=edges, page_info=PageInfo(end_cursor=end, has_next_page=more)
        )


@strawberry.type
class StockEventsMutation:
    @fields.mutation(
        description="Emit LOW_STOCK when `sku`'s available drops below `threshold` "
        "(1-1,000,000,000; null removes it). OUT_OF_STOCK (available reaches 0) and "
        "BACK_IN_STOCK (rises from 0) need no threshold. Each fires once per crossing, "
        "whatever changed the stock. Needs the admin token.",
        permission_classes=[IsAdmin],
    )
    async def set_low_stock_threshold(
        self, info: Info, sku: str, threshold: int | None = UNSET
    ) -> ProductResult:
        given = None if threshold is UNSET else threshold  # absent, as null, removes it
        return product_result(await info.context.service.set_low_stock_threshold(sku, given))


@strawberry.type
class StockEventsSubscription:
    @_admin_subscription(
        description="The stock event feed after `after` (null: from the oldest event kept): "
        "the events already there, then each new one as it becomes final, with no gap and "
        "no duplicate between the two; the same guarantees as the stockEvents query. "
        "CursorExpired or InvalidInput is sent once, then the stream completes. If the "
        "stream ends with an error (a restart, the database away), subscribe again after "
        "the last cursor received. At most INVENTORY_MAX_FEED_SUBSCRIPTIONS per server "
        "process (beyond: the error TOO_MANY_FEED_SUBSCRIPTIONS). Needs the admin token "
        "(in connection_init's `authorization`)."
    )
    async def stock_events(
        self, info: Info, after: str | None = UNSET
    ) -> AsyncGenerator[StockEventFeedItem, None]:
        # A coroutine returning the stream: what it raises (the caps) comes before the
        # stream starts, as the protocol's `error` for this operation.
        service = info.context.service
        slot = service.feed_slots.take()
        if slot is None:
            raise GraphQLError(
                f"This server process already serves {service.feed_slots.limit} stockEvents "
                "subscriptions; retry later or page with the stockEvents query.",
                extensions={"code": "TOO_MANY_FEED_SUBSCRIPTIONS", "retriable": True},
            )
        # Given back however the operation ends, even if the stream never starts (the
        # operation's task ends then too; a slot is released once).
        task = asyncio.current_task()
        assert task is not None
        task.add_done_callback(lambda _: slot.release())
        quota = await _client_quota(info.context.request)
        return _feed(info, _parse(after), slot, quota)


async def _feed(
    info: Info,
    after: Cursor | InvalidInput | None,
    slot: stock_events.Slot,
    quota: Lease,
) -> AsyncGenerator[StockEventFeedItem, None]:
    """One cursor loop for replay and live: read a page after the last event sent, send
    it, repeat; on a short page, wait for a wake-up. No event is read before the one
    before it was sent, so replay and live cannot overlap or leave a gap."""
    try:
        if isinstance(after, InvalidInput):
            yield after
            return
        context = info.context
        cursor = after
        # Listen first, read second: a commit between the two still wakes the loop.
        with context.hub.commits() as committed:
            while True:
                committed.clear()
                page = await context.service.stock_events(cursor, SUBSCRIPTION_PAGE)
                if isinstance(page, Expired):
                    yield _expired(page)
                    return
                for event in page:
                    yield StockEvent.from_domain(event)
                    cursor = event.cursor
                if len(page) == SUBSCRIPTION_PAGE:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REREAD_SECONDS):
                        await committed.wait()
                # Changes arriving meanwhile are read together.
                await asyncio.sleep(COALESCE_SECONDS)
    finally:
        slot.release()
        quota.release()
