"""Input rules: for each check, the last value accepted, the first refused, and the field
a client is told to fix (the GraphQL argument's name, with the line's index)."""

from __future__ import annotations

import uuid

import pytest

from inventory_graphql.inventory.models import InvalidInput, LineRequest
from inventory_graphql.inventory.validation import (
    MAX_IDEMPOTENCY_KEY,
    MAX_LINE_QUANTITY,
    MAX_LINES,
    MAX_NAME,
    MAX_REASON,
    MAX_STOCK,
    TTL_RANGE,
    check_adjustment,
    check_new_product,
    check_reserve,
    check_sku,
    parse_reservation_id,
)

CONTROL = ["\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f"]


def field(error: InvalidInput | None) -> str | None:
    assert error is None or isinstance(error, InvalidInput), error
    return None if error is None else error.field


def lines(*skus: str, quantity: int = 1) -> list[LineRequest]:
    return [LineRequest(sku, quantity) for sku in skus]


# --- sku -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sku", ["A", "a" * 64, "SKU-1", "phone.case_v2", "0", "...", "-_-", "Z9.z9_Z9-z9"]
)
def test_a_sku_of_1_to_64_allowed_characters_is_accepted(sku: str) -> None:
    assert check_sku(sku) is None


@pytest.mark.parametrize(
    "sku",
    ["", "a" * 65, "has space", "a/b", "a,b", "sku\n", "\nsku", "ä", "Ｓ", "a\x00", "x'--", "%"],
)
def test_any_other_sku_is_refused(sku: str) -> None:
    error = check_sku(sku)
    assert field(error) == "sku"
    assert error is not None and "1-64" in error.reason


def test_a_sku_error_names_the_field_it_was_given() -> None:
    assert field(check_sku("bad sku", "skus[3]")) == "skus[3]"


# --- reserve ---------------------------------------------------------------------------


def test_a_reservation_needs_one_to_max_lines_lines() -> None:
    assert field(check_reserve([], None, None)) == "lines"
    assert check_reserve(lines("A"), None, None) is None
    many = [f"S{i}" for i in range(MAX_LINES + 1)]
    assert check_reserve(lines(*many[:MAX_LINES]), None, None) is None
    error = check_reserve(lines(*many), None, None)
    assert field(error) == "lines"
    assert error is not None and str(MAX_LINES) in error.reason


def test_a_bad_sku_is_named_by_its_line() -> None:
    assert field(check_reserve(lines("A", "B", "bad sku"), None, None)) == "lines[2].sku"
    assert field(check_reserve(lines("", "B"), None, None)) == "lines[0].sku"


def test_a_sku_twice_is_refused_at_its_second_line() -> None:
    error = check_reserve(lines("A", "B", "A"), None, None)
    assert field(error) == "lines[2].sku"
    assert error is not None and "A" in error.reason
    # Skus are case sensitive: these are two products.
    assert check_reserve(lines("a", "A"), None, None) is None


@pytest.mark.parametrize("quantity", [1, 2, MAX_LINE_QUANTITY])
def test_a_line_quantity_within_range_is_accepted(quantity: int) -> None:
    assert check_reserve(lines("A", quantity=quantity), None, None) is None


@pytest.mark.parametrize("quantity", [0, -1, MAX_LINE_QUANTITY + 1, -(2**63), 2**63])
def test_a_line_quantity_out_of_range_is_refused(quantity: int) -> None:
    good, bad = LineRequest("A", 1), LineRequest("B", quantity)
    assert field(check_reserve([good, bad], None, None)) == "lines[1].quantity"


@pytest.mark.parametrize("ttl", [None, TTL_RANGE[0], 60, TTL_RANGE[1]])
def test_a_ttl_within_range_or_none_is_accepted(ttl: int | None) -> None:
    assert check_reserve(lines("A"), ttl, None) is None


@pytest.mark.parametrize("ttl", [TTL_RANGE[0] - 1, -1, TTL_RANGE[1] + 1, 2**31])
def test_a_ttl_out_of_range_is_refused(ttl: int) -> None:
    assert field(check_reserve(lines("A"), ttl, None)) == "ttlSeconds"


@pytest.mark.parametrize(
    "key", ["k", "k" * MAX_IDEMPOTENCY_KEY, "order-42/attempt 1", "ключ-ü-✓", "nbsp\xa0ok"]
)
def test_an_idempotency_key_of_1_to_max_printable_characters_is_accepted(key: str) -> None:
    assert check_reserve(lines("A"), None, key) is None


@pytest.mark.parametrize(
    "key", ["", "k" * (MAX_IDEMPOTENCY_KEY + 1), *(f"key{c}1" for c in CONTROL)]
)
def test_any_other_idempotency_key_is_refused(key: str) -> None:
    assert field(check_reserve(lines("A"), None, key)) == "idempotencyKey"


def test_the_first_problem_in_argument_order_is_reported() -> None:
    assert field(check_reserve(lines("bad sku"), 0, "")) == "lines[0].sku"
    assert field(check_reserve(lines("A"), 0, "")) == "ttlSeconds"


# --- createProduct ---------------------------------------------------------------------


def test_a_new_product_within_every_limit_is_accepted() -> None:
    assert check_new_product("A", "n", 0) is None
    assert check_new_product("A", "N" * MAX_NAME, MAX_STOCK) is None
    assert check_new_product("A", "Café crème — 250 g", 5) is None


@pytest.mark.parametrize(
    ("sku", "name", "quantity", "named"),
    [
        ("bad sku", "Phone", 1, "sku"),
        ("A", "", 1, "name"),
        ("A", "   ", 1, "name"),
        ("A", "N" * (MAX_NAME + 1), 1, "name"),
        *(("A", f"Phone{c}case", 1, "name") for c in CONTROL),
        ("A", "Phone", -1, "quantity"),
        ("A", "Phone", MAX_STOCK + 1, "quantity"),
    ],
)
def test_a_new_product_outside_a_limit_is_refused_naming_the_field(
    sku: str, name: str, quantity: int, named: str
) -> None:
    assert field(check_new_product(sku, name, quantity)) == named


# --- adjustStock -----------------------------------------------------------------------


@pytest.mark.parametrize("delta", [1, -1, MAX_STOCK, -MAX_STOCK])
def test_a_non_zero_delta_within_max_stock_either_way_is_accepted(delta: int) -> None:
    assert check_adjustment("A", delta, "recount") is None


@pytest.mark.parametrize("delta", [0, MAX_STOCK + 1, -MAX_STOCK - 1])
def test_a_zero_or_too_large_delta_is_refused(delta: int) -> None:
    assert field(check_adjustment("A", delta, "recount")) == "delta"


def test_a_reason_is_one_to_max_reason_printable_characters() -> None:
    assert check_adjustment("A", 1, "r") is None
    assert check_adjustment("A", 1, "R" * MAX_REASON) is None
    for reason in ["", "  ", "R" * (MAX_REASON + 1), *(f"lost{c}in transit" for c in CONTROL)]:
        assert field(check_adjustment("A", 1, reason)) == "reason", repr(reason)


def test_an_adjustment_of_a_malformed_sku_is_refused_on_the_sku() -> None:
    assert field(check_adjustment("bad sku", 0, "")) == "sku"


# --- reservation ids -------------------------------------------------------------------


def test_a_reservation_id_in_uuid_form_is_read() -> None:
    known = uuid.uuid4()
    assert parse_reservation_id(str(known)) == known
    assert parse_reservation_id(str(known).upper()) == known


@pytest.mark.parametrize(
    "raw", ["", "not-an-id", "1234", "00000000-0000-0000-0000-00000000000g", "' OR 1=1 --"]
)
def test_anything_else_is_no_reservation_id(raw: str) -> None:
    assert parse_reservation_id(raw) is None


def test_a_non_string_is_no_reservation_id() -> None:
    for raw in [None, 12345, b"0" * 32]:
        assert parse_reservation_id(raw) is None  # type: ignore[arg-type]
