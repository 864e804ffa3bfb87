"""Expected failures as GraphQL types, and the unions that mutations answer with.

A business outcome is never a top-level GraphQL error: clients select the member they
care about with `... on InsufficientStock { available }`.
"""

from __future__ import annotations

from typing import Annotated, Any

import strawberry

from inventory_graphql.api.types import Product, Reservation, ReservationStatus
from inventory_graphql.inventory import models


@strawberry.interface(description="Every expected failure has a readable message.")
class Problem:
    message: str


@strawberry.type
class InsufficientStock(Problem):
    sku: str
    requested: int
    available: int


@strawberry.type
class ProductNotFound(Problem):
    sku: str


@strawberry.type
class ProductExists(Problem):
    sku: str


@strawberry.type
class InvalidInput(Problem):
    field: str | None


@strawberry.type
class IdempotencyKeyReused(Problem):
    idempotency_key: str


@strawberry.type
class ReservationNotFound(Problem):
    id: strawberry.ID


@strawberry.type
class ReservationNotPending(Problem):
    id: strawberry.ID
    status: ReservationStatus


ReserveResult = Annotated[
    Reservation | InsufficientStock | ProductNotFound | InvalidInput | IdempotencyKeyReused,
    strawberry.union("ReserveResult"),
]
ResolveResult = Annotated[
    Reservation | ReservationNotFound | ReservationNotPending,
    strawberry.union("ResolveResult"),
]
ProductResult = Annotated[
    Product | ProductNotFound | ProductExists | InvalidInput,
    strawberry.union("ProductResult"),
]

_PROBLEMS: dict[type, type] = {
    models.InsufficientStock: InsufficientStock,
    models.ProductNotFound: ProductNotFound,
    models.ProductExists: ProductExists,
    models.InvalidInput: InvalidInput,
    models.IdempotencyKeyReused: IdempotencyKeyReused,
    models.ReservationNotFound: ReservationNotFound,
    models.ReservationNotPending: ReservationNotPending,
}


def to_graphql(outcome: Any) -> Any:
    """The GraphQL type for a service outcome; problems keep their fields and message."""
    if isinstance(outcome, models.Reservation):
        return Reservation.from_domain(outcome)
    if isinstance(outcome, models.Product):
        return Product.from_domain(outcome)
    problem = _PROBLEMS[type(outcome)]
    fields = {name: getattr(outcome, name) for name in problem.__annotations__ if name != "message"}
    return problem(message=outcome.message, **fields)
