"""The waiting list over GraphQL: joinWaitlist, leaveWaitlist, waitlistEntry (query and
subscription). Composed into the schema's root types in schema.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import datetime
from typing import Annotated, assert_never

import strawberry

from inventory_graphql.api import fields
from inventory_graphql.api.client_limits import Lease
from inventory_graphql.api.context import Context
from inventory_graphql.api.errors import bad_input
from inventory_graphql.api.outcomes import (
    BuyerRequired,
    InvalidInput,
    Problem,
    ProductNotFound,
    PurchaseLimitExceeded,
)
from inventory_graphql.api.subscriptions import _client_quota
from inventory_graphql.api.types import Reservation
from inventory_graphql.inventory import models, validation

Info = strawberry.Info[Context, None]

# The subscription re-reads its entry when the product's queue changed; and at least this
# often whatever it heard, so that nothing it could have missed stays missed for long.
REREAD_SECONDS = 10.0

strawberry.enum(models.WaitlistStatus, name="WaitlistStatus")
WaitlistStatus = models.WaitlistStatus


@strawberry.type(description="A buyer's place in a sold-out sku's waiting list.")
class WaitlistEntry:
    id: strawberry.ID
    sku: str
    quantity: int = strawberry.field(description="Units the entry waits for, all at once.")
    status: WaitlistStatus = strawberry.field(
        description="WAITING, then OFFERED (a hold for `quantity` units was made for the "
        "buyer) or LEFT, once."
    )
    position: int | None = strawberry.field(
        description="1-based among the sku's WAITING entries, in join order; null otherwise."
    )
    reservation_id: strawberry.Private[str | None]
    created_at: datetime

    @fields.field(description="The hold the entry was offered (OFFERED only).")
    async def reservation(self, info: Info) -> Reservation | None:
        if self.reservation_id is None:
            return None
        hold = await info.context.service.reservation(self.reservation_id, caller=_caller(info))
        return Reservation.from_domain(hold) if hold else None

    @classmethod
    def from_domain(cls, entry: models.WaitlistEntry) -> WaitlistEntry:
        return cls(
            id=strawberry.ID(entry.id),
            sku=entry.sku,
            quantity=entry.quantity,
            status=entry.status,
            position=entry.position,
            reservation_id=entry.reservation_id,
            created_at=entry.created_at,
        )


@strawberry.type
class WaitlistEntryNotFound(Problem):
    id: strawberry.ID


WaitlistResult = Annotated[
    WaitlistEntry
    | ProductNotFound
    | InvalidInput
    | PurchaseLimitExceeded
    | BuyerRequired
    | WaitlistEntryNotFound,
    strawberry.union("WaitlistResult"),
]


def waitlist_result(outcome: models.WaitlistOutcome) -> WaitlistResult:
    match outcome:
        case models.WaitlistEntry():
            return WaitlistEntry.from_domain(outcome)
        case models.ProductNotFound():
            return ProductNotFound(message=outcome.message, sku=outcome.sku)
        case models.InvalidInput():
            return InvalidInput(message=outcome.message, field=outcome.field)
        case models.PurchaseLimitExceeded():
            return PurchaseLimitExceeded(
                message=outcome.message,
                sku=outcome.sku,
                limit=outcome.limit,
                already_held=outcome.already_held,
            )
        case models.BuyerRequired():
            return BuyerRequired(message=outcome.message, sku=outcome.sku)
        case models.WaitlistEntryNotFound():
            return WaitlistEntryNotFound(message=outcome.message, id=strawberry.ID(outcome.id))
        case _:
            assert_never(outcome)


def _caller(info: Info) -> models.Caller:
    return info.context.caller


@strawberry.type
class WaitlistQuery:
    @fields.field(
        description="A waiting-list entry of the caller's buyer; null when unknown, malformed "
        "or another buyer's."
    )
    async def waitlist_entry(self, info: Info, id: strawberry.ID) -> WaitlistEntry | None:
        found = await info.context.service.waitlist_entry(id, caller=_caller(info))
        return WaitlistEntry.from_domain(found) if found else None


@strawberry.type
class WaitlistMutation:
    @fields.mutation(
        description="Wait for `quantity` units of `sku` (needs a buyer token). Units freed "
        "later go to the waiting list in join order: the head entry is offered a hold for "
        "its whole quantity (INVENTORY_WAITLIST_HOLD_SECONDS); at once when nobody waits "
        "and they are there. One WAITING entry per buyer per sku (joining again with the "
        "same quantity answers it); the purchase limit applies now."
    )
    async def join_waitlist(self, info: Info, sku: str, quantity: int) -> WaitlistResult:
        return waitlist_result(
            await info.context.service.join_waitlist(sku, quantity, caller=_caller(info))
        )

    @fields.mutation(
        description="Leave the waiting list. An entry no longer WAITING (offered, or left "
        "already) is answered as it is."
    )
    async def leave_waitlist(self, info: Info, id: strawberry.ID) -> WaitlistResult:
        return waitlist_result(await info.context.service.leave_waitlist(id, caller=_caller(info)))


@strawberry.type
class WaitlistSubscription:
    @fields.subscription(
        description="A waiting-list entry as it is, then after every change of its status or "
        "position; completes after OFFERED (with its reservation) or LEFT. A slow reader "
        "may skip a position in between, never go back."
    )
    async def waitlist_entry(
        self, info: Info, id: strawberry.ID
    ) -> AsyncGenerator[WaitlistEntry, None]:
        # As `reservation(id)`: what this raises is the protocol's `error` for this operation.
        parsed = validation.parse_reservation_id(id)
        if parsed is None:
            raise bad_input(f"id: malformed waiting-list entry id {id[:100]}")
        quota = await _client_quota(info.context.request)  # given back however this ends
        first = await info.context.service.waitlist_entry(str(parsed), caller=_caller(info))
        if first is None:
            raise bad_input(f"unknown waiting-list entry: {parsed}")
        return _entry_states(info, first, quota)


async def _entry_states(
    info: Info, first: models.WaitlistEntry, quota: Lease
) -> AsyncGenerator[WaitlistEntry, None]:
    """An entry's position changes exactly when units leave its product's queue (an entry
    ahead is offered or leaves), and so does its status: each moves `product.waiting`,
    which availability notifications carry. So the entry follows its product through the
    availability hub, and when `waiting` changed (or versions were skipped in between: a
    skipped version may have moved it and back) it looks itself up in the queue, in one
    read shared with every other watcher of the sku. Once it is no longer in the queue,
    its own row says how it left (OFFERED, with its hold, or LEFT)."""
    try:
        context = info.context
        caller = _caller(info)
        # Watch first, read second: a change committed in between reaches the mailbox.
        with context.hub.watch([first.sku]) as mailbox:
            entry: models.WaitlistEntry | None = first
            last: models.WaitlistEntry | None = None
            seen: models.StockLevel | None = None
            while True:
                if entry is None:  # removed by hand: nothing more will come
                    raise bad_input(f"unknown waiting-list entry: {first.id}")
                if entry != last:
                    yield WaitlistEntry.from_domain(entry)
                    last = entry
                if entry.status is not models.WaitlistStatus.WAITING:
                    return  # OFFERED and LEFT are final: the stream completes
                # At most one look per interval per subscriber; changes meanwhile coalesce
                # in the mailbox. The first change after a quiet spell is read at once.
                if context.live_interval_seconds:
                    await asyncio.sleep(context.live_interval_seconds)
                seen = await _queue_moved(mailbox.take, seen)
                queue = await context.service.waitlist_positions(first.sku, time.monotonic())
                if (position := queue.get(entry.id)) is not None:
                    entry = dataclasses.replace(entry, position=position)
                else:
                    entry = await context.service.waitlist_entry(first.id, caller=caller)
    finally:
        quota.release()


async def _queue_moved(
    take: Callable[[], Awaitable[list[models.StockLevel]]], seen: models.StockLevel | None
) -> models.StockLevel | None:
    """Wait until the product's queue may have moved since `seen`, or REREAD_SECONDS
    passed; return the newest level heard."""
    try:
        async with asyncio.timeout(REREAD_SECONDS):
            while True:
                for level in await take():  # the mailbox keeps only newer versions
                    moved = (
                        seen is None
                        or level.waiting != seen.waiting
                        or level.version > seen.version + 1
                    )
                    seen = level
                    if moved:
                        return seen
    except TimeoutError:
        return seen
