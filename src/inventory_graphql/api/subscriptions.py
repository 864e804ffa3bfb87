"""Live availability over WebSocket (graphql-transport-ws)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import datetime

import strawberry
from graphql import GraphQLError
from starlette.requests import HTTPConnection

from inventory_graphql.api import fields
from inventory_graphql.api.client_limits import Lease, LimitReached, client_of
from inventory_graphql.api.context import Context
from inventory_graphql.api.delivery import Delivery, DirectLine
from inventory_graphql.api.errors import bad_input
from inventory_graphql.api.internals import raw_info
from inventory_graphql.api.types import Reservation
from inventory_graphql.inventory import validation
from inventory_graphql.inventory.models import StockLevel
from inventory_graphql.live.reservation_watch import is_final
from inventory_graphql.state import app_state

MAX_SKUS = 100
PACE_SECONDS = 1.0  # the longest a refusal for going too fast is held back


@strawberry.type
class AvailabilityUpdate:
    sku: str
    quantity: int
    reserved: int
    available: int
    version: int
    updated_at: datetime
    waiting: int = strawberry.field(description="Units the sku's waiting list wants.")

    @classmethod
    def from_domain(cls, level: StockLevel) -> AvailabilityUpdate:
        return cls(
            sku=level.sku,
            quantity=level.quantity,
            reserved=level.reserved,
            available=level.available,
            version=level.version,
            updated_at=level.updated_at,
            waiting=level.waiting,
        )


@strawberry.type
class Subscription:
    @fields.subscription(
        description="The current state of each sku, then every change to it. Per sku, "
        "versions strictly increase; a slow reader may skip versions, never go back."
    )
    async def availability(
        self, info: strawberry.Info[Context, None], skus: list[str]
    ) -> AsyncGenerator[AvailabilityUpdate, None]:
        # A coroutine returning the stream: what it raises comes before the stream starts,
        # so the client gets the protocol's `error` message for this operation.
        wanted = list(dict.fromkeys(skus))
        if not 1 <= len(wanted) <= MAX_SKUS:
            raise bad_input(f"skus: give 1 to {MAX_SKUS} skus")
        if malformed := [sku for sku in wanted if validation.check_sku(sku)]:
            raise bad_input(f"skus: malformed {', '.join(malformed[:10])}")
        quota = await _client_quota(info.context.request)
        return _updates(info, wanted, quota)

    @fields.subscription(
        description="A hold's current state, then its state after every change (extension, "
        "partial confirm or release, confirm, release, expiry); completes after a final "
        "state (CONFIRMED, RELEASED, EXPIRED). States are read from the database in its "
        "order; a slow reader may skip one in between, never go back."
    )
    async def reservation(
        self, info: strawberry.Info[Context, None], id: strawberry.ID
    ) -> AsyncGenerator[Reservation, None]:
        # As `availability`: what this raises is the protocol's `error` for this operation.
        rid = validation.parse_reservation_id(id)
        if rid is None:
            raise bad_input(f"id: malformed reservation id {id[:100]}")
        quota = await _client_quota(info.context.request)  # given back however this ends
        # Another buyer's hold is refused as an unknown one: nothing tells them apart.
        if await info.context.service.reservation(str(rid), caller=info.context.caller) is None:
            raise bad_input(f"unknown reservation: {rid}")
        return _hold_states(info, str(rid), quota)


async def _client_quota(connection: HTTPConnection) -> Lease:
    """This subscription counted against its client's limits, before anything is read;
    refused with a typed error (the connection stays up)."""
    limits = app_state(connection)["client_limits"]
    try:
        quota = limits.subscribe(client_of(connection.scope))
    except LimitReached as refused:
        # Answered when a retry would be let in (at most a second later; this operation's
        # own task waits, not the connection): a client looping subscribe/complete as
        # fast as it is answered is paced by its rate, not by how fast it is refused.
        if isinstance(wait := refused.extensions.get("retryAfterSeconds"), float | int):
            await asyncio.sleep(min(wait, PACE_SECONDS))
        raise GraphQLError(refused.message, extensions=refused.extensions) from None
    # The stream gives the quota back when it ends (at once on `complete`, so the client
    # may subscribe again right away). The operation's task (graphql-transport-ws runs one
    # per operation) ends however the subscription does, even if the stream never
    # started: it gives the quota back otherwise. A lease is released once.
    task = asyncio.current_task()
    assert task is not None
    task.add_done_callback(lambda _: quota.release())
    return quota


async def _hold_states(
    info: strawberry.Info[Context, None], reservation_id: str, quota: Lease
) -> AsyncGenerator[Reservation, None]:
    try:
        hub = app_state(info.context.request)["reservation_hub"]
        # The first state comes through the hub's reads, like every later one: one reader
        # per hold keeps states in the database's order.
        with hub.watch(reservation_id) as mailbox:
            last = None
            while (state := await mailbox.take()) is not None:
                if state != last:
                    yield Reservation.from_domain(state)
                    last = state
                if is_final(state):
                    return  # a final state never changes: the stream completes
            # Gone from the database (removed by hand): nothing more will come.
            raise bad_input(f"unknown reservation: {reservation_id}")
    finally:
        quota.release()


async def _updates(
    info: strawberry.Info[Context, None], wanted: list[str], quota: Lease
) -> AsyncGenerator[AvailabilityUpdate, None]:
    try:
        context = info.context
        # Watch first, read second: a change committed in between reaches the mailbox,
        # and versions sort out which of the two is newer.
        with context.hub.watch(wanted) as mailbox:
            products = await context.service.products(wanted, len(wanted))
            if unknown := sorted(set(wanted) - {p.sku for p in products}):
                raise bad_input(f"unknown skus: {', '.join(unknown[:10])}")
            for product in products:
                mailbox.offer(product.stock_level)
            pause = context.live_interval_seconds
            line: DirectLine | None = None
            try:
                while True:
                    for level in await mailbox.take():
                        yield AvailabilityUpdate.from_domain(level)
                    # The first results (the snapshot) take the ordinary path; the rest go
                    # straight to the socket from the hub's task when the transport allows
                    # it and direct delivery is on (then the process has renderings). The
                    # mailbox is handed back only with what the line could not render.
                    if line is None and context.renderings is not None:
                        delivery = Delivery.open(raw_info(info), context.renderings)
                        if delivery is not None:
                            to_update = AvailabilityUpdate.from_domain
                            line = DirectLine(delivery, mailbox, to_update, pause)
                            mailbox.forward(line)
                            continue
                    # At most one delivery per interval per subscriber; changes arriving
                    # meanwhile coalesce in the mailbox (latest wins) and go out together.
                    # The first change after a quiet spell goes out at once.
                    if pause:
                        await asyncio.sleep(pause)
            finally:
                if line is not None:
                    line.close()
    finally:
        quota.release()
