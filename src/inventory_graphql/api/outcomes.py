"""Expected failures as GraphQL types, and the unions that mutations answer with.

A business outcome is never a top-level GraphQL error: clients select the member they
care about with `... on InsufficientStock { available }`. Each service outcome maps to its
GraphQL type in a `match` that mypy checks: a renamed field or a new outcome the API
does not answer fails the type check, not a request at run time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, assert_never

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


@strawberry.type
class HoldLimitReached(Problem):
    id: strawberry.ID
    max_expires_at: datetime


@strawberry.type(
    description="The buyer would hold plus have bought more of `sku` than its purchase limit; "
    "`alreadyHeld` is what it holds (pending) plus has bought of it, when answered."
)
class PurchaseLimitExceeded(Problem):
    sku: str
    limit: int
    already_held: int


@strawberry.type(description="`sku` has a purchase limit: only a buyer may reserve it.")
class BuyerRequired(Problem):
    sku: str


@strawberry.type(description="The buyer has INVENTORY_MAX_PENDING_HOLDS_PER_BUYER holds pending.")
class TooManyPendingHolds(Problem):
    limit: int


@strawberry.type(
    description="`expectedVersion` was not the product's version (someone changed it since "
    "it was read): nothing was done. `actualVersion` is the version now."
)
class VersionConflict(Problem):
    sku: str
    expected_version: int
    actual_version: int


@strawberry.type(description="A stock count below the units reserved: nothing was done.")
class QuantityBelowReserved(Problem):
    sku: str
    quantity: int
    reserved: int


@strawberry.type(description="adjustStocks applied every adjustment.")
class AdjustedProducts:
    products: list[Product] = strawberry.field(
        description="The products after the adjustments, in sku order."
    )


ReserveResult = Annotated[
    Reservation
    | InsufficientStock
    | ProductNotFound
    | InvalidInput
    | IdempotencyKeyReused
    | PurchaseLimitExceeded
    | BuyerRequired
    | TooManyPendingHolds,
    strawberry.union("ReserveResult"),
]
ResolveResult = Annotated[
    Reservation | ReservationNotFound | ReservationNotPending | InvalidInput,
    strawberry.union("ResolveResult"),
]
ExtendResult = Annotated[
    Reservation | ReservationNotFound | ReservationNotPending | HoldLimitReached | InvalidInput,
    strawberry.union("ExtendResult"),
]
ProductResult = Annotated[
    Product
    | ProductNotFound
    | ProductExists
    | InvalidInput
    | VersionConflict
    | QuantityBelowReserved
    | IdempotencyKeyReused,
    strawberry.union("ProductResult"),
]
BulkAdjustResult = Annotated[
    AdjustedProducts | ProductNotFound | InvalidInput | VersionConflict | IdempotencyKeyReused,
    strawberry.union("BulkAdjustResult"),
]


def _product_not_found(problem: models.ProductNotFound) -> ProductNotFound:
    return ProductNotFound(message=problem.message, sku=problem.sku)


def _invalid_input(problem: models.InvalidInput) -> InvalidInput:
    return InvalidInput(message=problem.message, field=problem.field)


def _version_conflict(problem: models.VersionConflict) -> VersionConflict:
    return VersionConflict(
        message=problem.message,
        sku=problem.sku,
        expected_version=problem.expected_version,
        actual_version=problem.actual_version,
    )


def _key_reused(problem: models.IdempotencyKeyReused) -> IdempotencyKeyReused:
    return IdempotencyKeyReused(message=problem.message, idempotency_key=problem.idempotency_key)


def _purchase_limit_exceeded(problem: models.PurchaseLimitExceeded) -> PurchaseLimitExceeded:
    return PurchaseLimitExceeded(
        message=problem.message,
        sku=problem.sku,
        limit=problem.limit,
        already_held=problem.already_held,
    )


def reserve_result(outcome: models.ReserveOutcome) -> ReserveResult:
    match outcome:
        case models.Reservation():
            return Reservation.from_domain(outcome)
        case models.InsufficientStock():
            return InsufficientStock(
                message=outcome.message,
                sku=outcome.sku,
                requested=outcome.requested,
                available=outcome.available,
            )
        case models.ProductNotFound():
            return _product_not_found(outcome)
        case models.InvalidInput():
            return _invalid_input(outcome)
        case models.IdempotencyKeyReused():
            return IdempotencyKeyReused(
                message=outcome.message, idempotency_key=outcome.idempotency_key
            )
        case models.PurchaseLimitExceeded():
            return _purchase_limit_exceeded(outcome)
        case models.BuyerRequired():
            return BuyerRequired(message=outcome.message, sku=outcome.sku)
        case models.TooManyPendingHolds():
            return TooManyPendingHolds(message=outcome.message, limit=outcome.limit)
        case _:
            assert_never(outcome)


def resolve_result(outcome: models.ResolveOutcome) -> ResolveResult:
    match outcome:
        case models.Reservation():
            return Reservation.from_domain(outcome)
        case models.ReservationNotFound():
            return ReservationNotFound(message=outcome.message, id=strawberry.ID(outcome.id))
        case models.ReservationNotPending():
            return ReservationNotPending(
                message=outcome.message, id=strawberry.ID(outcome.id), status=outcome.status
            )
        case models.InvalidInput():
            return _invalid_input(outcome)
        case _:
            assert_never(outcome)


def extend_result(outcome: models.ExtendOutcome) -> ExtendResult:
    match outcome:
        case models.HoldLimitReached():
            return HoldLimitReached(
                message=outcome.message,
                id=strawberry.ID(outcome.id),
                max_expires_at=outcome.max_expires_at,
            )
        case _:
            return resolve_result(outcome)


def product_result(outcome: models.ProductOutcome) -> ProductResult:
    match outcome:
        case models.Product():
            return Product.from_domain(outcome)
        case models.ProductNotFound():
            return _product_not_found(outcome)
        case models.ProductExists():
            return ProductExists(message=outcome.message, sku=outcome.sku)
        case models.InvalidInput():
            return _invalid_input(outcome)
        case models.VersionConflict():
            return _version_conflict(outcome)
        case models.QuantityBelowReserved():
            return QuantityBelowReserved(
                message=outcome.message,
                sku=outcome.sku,
                quantity=outcome.quantity,
                reserved=outcome.reserved,
            )
        case models.IdempotencyKeyReused():
            return _key_reused(outcome)
        case _:
            assert_never(outcome)


def bulk_adjust_result(outcome: models.BulkAdjustOutcome) -> BulkAdjustResult:
    match outcome:
        case models.AdjustedProducts():
            return AdjustedProducts(products=[Product.from_domain(p) for p in outcome.products])
        case models.ProductNotFound():
            return _product_not_found(outcome)
        case models.InvalidInput():
            return _invalid_input(outcome)
        case models.VersionConflict():
            return _version_conflict(outcome)
        case models.IdempotencyKeyReused():
            return _key_reused(outcome)
        case _:
            assert_never(outcome)
