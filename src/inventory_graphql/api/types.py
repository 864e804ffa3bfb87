"""GraphQL object types, one per domain type."""

from __future__ import annotations

from datetime import datetime

import strawberry

from inventory_graphql.api.context import Context
from inventory_graphql.inventory import models

# The domain's enum, registered with Strawberry in place (same class, so no mapping).
strawberry.enum(models.ReservationStatus, name="ReservationStatus")
ReservationStatus = models.ReservationStatus


@strawberry.type
class Product:
    sku: str
    name: str
    quantity: int
    reserved: int
    available: int
    version: int
    updated_at: datetime
    purchase_limit: int | None = strawberry.field(
        description="Units one buyer may hold plus have bought; null: no limit."
    )
    waiting: int = strawberry.field(
        description="Units its waiting list wants; while above 0, public reserves are refused."
    )
    low_stock_threshold: int | None = strawberry.field(
        default=None,
        description="LOW_STOCK events fire when available drops below it; null: none.",
    )

    @classmethod
    def from_domain(cls, product: models.Product) -> Product:
        return cls(
            sku=product.sku,
            name=product.name,
            quantity=product.quantity,
            reserved=product.reserved,
            available=product.available,
            version=product.version,
            updated_at=product.updated_at,
            purchase_limit=product.purchase_limit,
            waiting=product.waiting,
            low_stock_threshold=product.low_stock_threshold,
        )


@strawberry.type
class ReservationLine:
    sku: str
    quantity: int = strawberry.field(description="Units reserved by the request.")
    confirmed_quantity: int = strawberry.field(description="Units bought.")
    released_quantity: int = strawberry.field(
        description="Units given back: by partial release, the rest of a partial confirm, "
        "release or expiry. While PENDING, held units = quantity - releasedQuantity."
    )

    @strawberry.field
    async def product(self, info: strawberry.Info[Context, None]) -> Product:
        product = await info.context.products.load(self.sku)
        # Products are never deleted, so a line's product always exists.
        assert product is not None, f"product {self.sku} of a reservation line is gone"
        return Product.from_domain(product)


@strawberry.type
class Reservation:
    id: strawberry.ID
    status: ReservationStatus
    lines: list[ReservationLine]
    created_at: datetime
    expires_at: datetime
    resolved_at: datetime | None

    @classmethod
    def from_domain(cls, reservation: models.Reservation) -> Reservation:
        return cls(
            id=strawberry.ID(reservation.id),
            status=reservation.status,
            lines=[
                ReservationLine(
                    sku=line.sku,
                    quantity=line.quantity,
                    confirmed_quantity=line.confirmed,
                    released_quantity=line.released,
                )
                for line in reservation.lines
            ],
            created_at=reservation.created_at,
            expires_at=reservation.expires_at,
            resolved_at=reservation.resolved_at,
        )


@strawberry.input
class ReserveLineInput:
    sku: str
    quantity: int
