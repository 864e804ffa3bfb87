"""Input rules, checked before anything touches the database."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from inventory_graphql.inventory.models import InvalidInput, LineRequest

SKU_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_LINE_QUANTITY = 1_000_000
MAX_LINES = 100
MAX_STOCK = 1_000_000_000
TTL_RANGE = (1, 3600)
MAX_IDEMPOTENCY_KEY = 255
MAX_NAME = 200
MAX_REASON = 500


def _has_control_characters(text: str) -> bool:
    # PostgreSQL text cannot hold NUL, and no key, name or reason needs control codes.
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def check_sku(sku: str, field: str = "sku") -> InvalidInput | None:
    if not SKU_PATTERN.fullmatch(sku):
        return InvalidInput(field, "must be 1-64 characters of A-Z a-z 0-9 . _ -")
    return None


def check_reserve(
    lines: Sequence[LineRequest],
    ttl_seconds: int | None,
    idempotency_key: str | None,
    max_units: int = MAX_LINE_QUANTITY,
) -> InvalidInput | None:
    if not lines:
        return InvalidInput("lines", "must name at least one product")
    if len(lines) > MAX_LINES:
        return InvalidInput("lines", f"at most {MAX_LINES} lines per reservation")
    seen: set[str] = set()
    for i, line in enumerate(lines):
        if error := check_sku(line.sku, f"lines[{i}].sku"):
            return error
        if line.sku in seen:
            return InvalidInput(f"lines[{i}].sku", f"{line.sku} appears more than once")
        seen.add(line.sku)
        if not 1 <= line.quantity <= max_units:
            return InvalidInput(f"lines[{i}].quantity", f"must be 1 to {max_units:,}")
    if ttl_seconds is not None and not TTL_RANGE[0] <= ttl_seconds <= TTL_RANGE[1]:
        return InvalidInput("ttlSeconds", f"must be {TTL_RANGE[0]} to {TTL_RANGE[1]}")
    if idempotency_key is not None and (
        not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
        or _has_control_characters(idempotency_key)
    ):
        return InvalidInput(
            "idempotencyKey", f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters, no control codes"
        )
    return None


def check_ttl(ttl_seconds: int) -> InvalidInput | None:
    if not TTL_RANGE[0] <= ttl_seconds <= TTL_RANGE[1]:
        return InvalidInput("ttlSeconds", f"must be {TTL_RANGE[0]} to {TTL_RANGE[1]}")
    return None


def check_part(lines: Sequence[LineRequest]) -> InvalidInput | None:
    """The lines of a partial confirm or release: as a cart's (each sku once, 1+ units)."""
    return check_reserve(lines, None, None)


def check_waitlist_join(sku: str, quantity: int, max_units: int) -> InvalidInput | None:
    """A join waits for one cart line's worth: 1 to INVENTORY_MAX_UNITS_PER_LINE units."""
    if error := check_sku(sku):
        return error
    if not 1 <= quantity <= max_units:
        return InvalidInput("quantity", f"must be 1 to {max_units:,}")
    return None


def check_new_product(sku: str, name: str, quantity: int) -> InvalidInput | None:
    if error := check_sku(sku):
        return error
    if not name.strip() or len(name) > MAX_NAME or _has_control_characters(name):
        return InvalidInput("name", f"must be 1 to {MAX_NAME} characters, not blank")
    if not 0 <= quantity <= MAX_STOCK:
        return InvalidInput("quantity", f"must be 0 to {MAX_STOCK:,}")
    return None


def check_purchase_limit(sku: str, per_buyer: int | None) -> InvalidInput | None:
    if error := check_sku(sku):
        return error
    if per_buyer is not None and not 1 <= per_buyer <= MAX_STOCK:
        return InvalidInput("perBuyer", f"must be 1 to {MAX_STOCK:,}, or null for no limit")
    return None


def check_adjustment(sku: str, delta: int, reason: str) -> InvalidInput | None:
    if error := check_sku(sku):
        return error
    if delta == 0 or abs(delta) > MAX_STOCK:
        return InvalidInput("delta", f"must be non-zero and at most {MAX_STOCK:,} either way")
    if not reason.strip() or len(reason) > MAX_REASON or _has_control_characters(reason):
        return InvalidInput("reason", f"must be 1 to {MAX_REASON} characters, not blank")
    return None


def parse_reservation_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except (ValueError, AttributeError, TypeError):
        return None
