"""What the service hands back: stock, holds, and the expected failures.

Expected failures are values, not exceptions: callers return them to clients as they are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class ReservationStatus(enum.Enum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


class WaitlistStatus(enum.Enum):
    WAITING = "WAITING"
    OFFERED = "OFFERED"
    LEFT = "LEFT"


@dataclass(frozen=True)
class Caller:
    """Who asks: the buyer a verified buyer token names (None: anonymous), and whether
    the caller is an admin. A caller acts on its own buyer's holds and waiting-list
    entries only (anonymous callers on anonymous holds); an admin on every one."""

    buyer: str | None = None
    admin: bool = False
    # The name of the admin token used (INVENTORY_ADMIN_TOKENS; INVENTORY_ADMIN_TOKEN's is
    # "admin"): ledger rows and stock events of its writes carry it. None for non-admins.
    actor: str | None = None

    def owns(self, buyer: str | None) -> bool:
        return self.admin or buyer == self.buyer


ANONYMOUS = Caller()
ADMIN = Caller(admin=True, actor="admin")


@dataclass(frozen=True)
class StockLevel:
    """A product's numbers at one version: what live availability updates carry."""

    sku: str
    quantity: int
    reserved: int
    version: int
    updated_at: datetime
    waiting: int = 0  # units the waiting list wants

    @property
    def available(self) -> int:
        return self.quantity - self.reserved


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    quantity: int
    reserved: int
    version: int
    updated_at: datetime
    purchase_limit: int | None = None  # units per buyer (held plus bought); None: no limit
    waiting: int = 0  # units the waiting list wants
    low_stock_threshold: int | None = None  # LOW_STOCK below it; None: no threshold

    @property
    def available(self) -> int:
        return self.quantity - self.reserved

    @property
    def stock_level(self) -> StockLevel:
        return StockLevel(
            self.sku, self.quantity, self.reserved, self.version, self.updated_at, self.waiting
        )

    @classmethod
    def from_row(cls, row: Any) -> Product:
        return cls(
            sku=row["sku"],
            name=row["name"],
            quantity=row["quantity"],
            reserved=row["reserved"],
            version=row["version"],
            updated_at=row["updated_at"],
            purchase_limit=row["purchase_limit"],
            waiting=row["waiting"],
            # Only the statements that answer it read it (a new product has none).
            low_stock_threshold=row.get("low_stock_threshold"),
        )


@dataclass(frozen=True)
class LineRequest:
    sku: str
    quantity: int


@dataclass(frozen=True)
class ReservationLine:
    sku: str
    quantity: int  # reserved by the request
    confirmed: int = 0  # bought
    released: int = 0  # given back: partly, by release, or by expiry

    @property
    def held(self) -> int:
        return self.quantity - self.confirmed - self.released


@dataclass(frozen=True)
class Reservation:
    id: str
    status: ReservationStatus
    lines: tuple[ReservationLine, ...]
    created_at: datetime
    expires_at: datetime
    resolved_at: datetime | None


# Expected failures. Each has a human `message`; the other fields are for programs.


@dataclass(frozen=True)
class InsufficientStock:
    sku: str
    requested: int
    available: int

    @property
    def message(self) -> str:
        return f"Only {self.available} of {self.sku} available, {self.requested} requested."


@dataclass(frozen=True)
class ProductNotFound:
    sku: str

    @property
    def message(self) -> str:
        return f"No product with sku {self.sku!r}."


@dataclass(frozen=True)
class ProductExists:
    sku: str

    @property
    def message(self) -> str:
        return f"A product with sku {self.sku!r} already exists."


@dataclass(frozen=True)
class InvalidInput:
    field: str | None
    reason: str

    @property
    def message(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


@dataclass(frozen=True)
class IdempotencyKeyReused:
    idempotency_key: str
    used_for: str = "a reservation with other lines"  # what the key was used for first

    @property
    def message(self) -> str:
        return f"This idempotency key was already used for {self.used_for}."


@dataclass(frozen=True)
class VersionConflict:
    """expectedVersion was not the product's version: someone changed it since."""

    sku: str
    expected_version: int
    actual_version: int

    @property
    def message(self) -> str:
        return (
            f"{self.sku} is at version {self.actual_version}, not {self.expected_version}: "
            "it changed since you read it; nothing was done."
        )


@dataclass(frozen=True)
class QuantityBelowReserved:
    """A stock count below what shoppers hold: holds must be released first."""

    sku: str
    quantity: int
    reserved: int

    @property
    def message(self) -> str:
        return (
            f"Cannot set {self.sku} to {self.quantity}: {self.reserved} are reserved. "
            "Release holds first; nothing was done."
        )


@dataclass(frozen=True)
class StockAdjustment:
    """One product's change in adjustStock(s): `delta` units, compared and set against
    `expected_version` when given."""

    sku: str
    delta: int
    reason: str
    expected_version: int | None = None
    reference: str | None = None


@dataclass(frozen=True)
class AdjustedProducts:
    """adjustStocks applied every adjustment: the products after, in sku order."""

    products: tuple[Product, ...]


@dataclass(frozen=True)
class ReservationNotFound:
    id: str

    @property
    def message(self) -> str:
        return f"No reservation with id {self.id!r}."


@dataclass(frozen=True)
class ReservationNotPending:
    id: str
    status: ReservationStatus

    @property
    def message(self) -> str:
        return f"Reservation {self.id} is {self.status.value}, not PENDING."


@dataclass(frozen=True)
class HoldLimitReached:
    id: str
    max_expires_at: datetime

    @property
    def message(self) -> str:
        return f"Reservation {self.id} cannot be held past {self.max_expires_at.isoformat()}."


@dataclass(frozen=True)
class PurchaseLimitExceeded:
    sku: str
    limit: int
    already_held: int  # units of sku the buyer holds (pending) plus has bought, when told

    @property
    def message(self) -> str:
        return (
            f"At most {self.limit} of {self.sku} per buyer; "
            f"you already hold or bought {self.already_held}."
        )


@dataclass(frozen=True)
class BuyerRequired:
    sku: str

    @property
    def message(self) -> str:
        return f"{self.sku} is sold per buyer: send a buyer token (Authorization: Bearer <jwt>)."


@dataclass(frozen=True)
class TooManyPendingHolds:
    limit: int  # INVENTORY_MAX_PENDING_HOLDS_PER_BUYER

    @property
    def message(self) -> str:
        return f"A buyer may have at most {self.limit} pending holds: confirm or release one first."


@dataclass(frozen=True)
class WaitlistEntry:
    id: str
    sku: str
    quantity: int
    status: WaitlistStatus
    position: int | None  # 1-based among WAITING entries of the sku; None otherwise
    reservation_id: str | None  # the hold it was offered (OFFERED only)
    created_at: datetime


@dataclass(frozen=True)
class WaitlistEntryNotFound:
    id: str

    @property
    def message(self) -> str:
        return f"No waiting-list entry with id {self.id!r}."


ReserveOutcome = (
    Reservation
    | InsufficientStock
    | ProductNotFound
    | InvalidInput
    | IdempotencyKeyReused
    | PurchaseLimitExceeded
    | BuyerRequired
    | TooManyPendingHolds
)
WaitlistOutcome = (
    WaitlistEntry
    | ProductNotFound
    | InvalidInput
    | PurchaseLimitExceeded
    | BuyerRequired
    | WaitlistEntryNotFound
)
ResolveOutcome = Reservation | ReservationNotFound | ReservationNotPending | InvalidInput
ExtendOutcome = (
    Reservation | ReservationNotFound | ReservationNotPending | HoldLimitReached | InvalidInput
)
ProductOutcome = (
    Product
    | ProductNotFound
    | ProductExists
    | InvalidInput
    | VersionConflict
    | QuantityBelowReserved
    | IdempotencyKeyReused
)
BulkAdjustOutcome = (
    AdjustedProducts | ProductNotFound | InvalidInput | VersionConflict | IdempotencyKeyReused
)
