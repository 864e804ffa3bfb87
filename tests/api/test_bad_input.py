"""Bad input: a typed error, and nothing changes (stock and ledger compared before/after)."""

from __future__ import annotations

import pytest

from tests.api.queries import CREATE_PRODUCT, RESERVE
from tests.support.database import ledger, stock

OK = "SKU-OK"  # replaced by the test's real sku


def line(sku: str = OK, quantity: int = 1) -> dict:
    return {"sku": sku, "quantity": quantity}


RESERVE_CASES = {
    "no lines": ({"lines": []}, "InvalidInput", "lines"),
    "quantity 0": ({"lines": [line(quantity=0)]}, "InvalidInput", "lines[0].quantity"),
    "negative quantity": ({"lines": [line(quantity=-3)]}, "InvalidInput", "lines[0].quantity"),
    "quantity above a million": (
        {"lines": [line(quantity=1_000_001)]},
        "InvalidInput",
        "lines[0].quantity",
    ),
    "duplicate skus": ({"lines": [line(), line()]}, "InvalidInput", "lines[1].sku"),
    "malformed sku": ({"lines": [line(), line("bad sku!")]}, "InvalidInput", "lines[1].sku"),
    "unknown sku": ({"lines": [line(), line("NOPE-unknown")]}, "ProductNotFound", None),
    "ttl 0": ({"lines": [line()], "ttl": 0}, "InvalidInput", "ttlSeconds"),
    "ttl above an hour": ({"lines": [line()], "ttl": 3601}, "InvalidInput", "ttlSeconds"),
    "empty idempotency key": ({"lines": [line()], "key": ""}, "InvalidInput", "idempotencyKey"),
    "idempotency key too long": (
        {"lines": [line()], "key": "k" * 256},
        "InvalidInput",
        "idempotencyKey",
    ),
    "too many lines": (
        {"lines": [line(f"S-{i}") for i in range(101)]},
        "InvalidInput",
        "lines",
    ),
}


def with_sku(value, sku: str):
    if isinstance(value, dict):
        return {k: with_sku(v, sku) for k, v in value.items()}
    if isinstance(value, list):
        return [with_sku(v, sku) for v in value]
    return sku if value == OK else value


@pytest.mark.parametrize("case", RESERVE_CASES, ids=list(RESERVE_CASES))
async def test_bad_reserve_changes_nothing(case, gql, db, make_product):
    sku = await make_product(5)
    variables, expected_type, field = RESERVE_CASES[case]
    before = (await stock(db, sku), await ledger(db, sku))
    holds = await db.fetchval("SELECT count(*) FROM reservation")

    outcome = (await gql.execute(RESERVE, **with_sku(variables, sku)))["reserve"]

    assert outcome["__typename"] == expected_type
    assert outcome["message"]
    if expected_type == "InvalidInput":
        assert outcome["field"] == field
    else:
        assert outcome["sku"] == "NOPE-unknown"
    assert (await stock(db, sku), await ledger(db, sku)) == before
    assert await db.fetchval("SELECT count(*) FROM reservation") == holds


CREATE_CASES = {
    "empty sku": ({"sku": "", "name": "n", "quantity": 1}, "sku"),
    "sku with a space": ({"sku": "A B", "name": "n", "quantity": 1}, "sku"),
    "sku too long": ({"sku": "A" * 65, "name": "n", "quantity": 1}, "sku"),
    "sku with unicode": ({"sku": "ÄBC", "name": "n", "quantity": 1}, "sku"),
    "blank name": ({"sku": "NEW-1", "name": "   ", "quantity": 1}, "name"),
    "name too long": ({"sku": "NEW-2", "name": "n" * 201, "quantity": 1}, "name"),
    "negative quantity": ({"sku": "NEW-3", "name": "n", "quantity": -1}, "quantity"),
}


@pytest.mark.parametrize("case", CREATE_CASES, ids=list(CREATE_CASES))
async def test_bad_create_product_changes_nothing(case, gql, db):
    variables, field = CREATE_CASES[case]
    products = await db.fetchval("SELECT count(*) FROM product")
    movements = await db.fetchval("SELECT count(*) FROM stock_movement")

    outcome = (await gql.execute(CREATE_PRODUCT, **variables))["createProduct"]

    assert outcome["__typename"] == "InvalidInput" and outcome["field"] == field
    assert outcome["message"]
    assert await db.fetchval("SELECT count(*) FROM product") == products
    assert await db.fetchval("SELECT count(*) FROM stock_movement") == movements


async def test_wrong_types_are_graphql_validation_errors(gql, make_product):
    sku = await make_product(1)
    body = await gql.raw(RESERVE, lines=[{"sku": sku, "quantity": "many"}])
    assert "data" not in body or body["data"] is None
    assert "Int cannot represent" in body["errors"][0]["message"]


async def test_products_page_size_is_bounded(gql):
    body = await gql.raw("query { products(first: 100000) { sku } }")
    assert body["errors"][0]["message"] == "first must be 0 to 1000"
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize("sku", ["nul\u0000byte", "\u0000", "tab\there", "x" * 65, ""])
async def test_text_no_sku_can_be_is_a_typed_error_not_a_server_error(sku, gql, make_product):
    real = await make_product(1)
    one = await gql.raw("query($s: String!) { product(sku: $s) { sku } }", s=sku)
    assert one["data"] == {"product": None}  # a nullable field: null, with the error
    assert one["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert one["errors"][0]["message"].startswith("sku: must be")
    many = await gql.raw("query($s: [String!]) { products(skus: $s) { sku } }", s=[real, sku])
    assert many["data"] is None
    assert many["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert many["errors"][0]["message"] == f"skus: malformed {sku!r}"
    # A well-formed sku still answers as before: its product, or null when there is none.
    found = await gql.execute("query($s: String!) { product(sku: $s) { sku } }", s=real)
    assert found == {"product": {"sku": real}}
    none = await gql.execute("query($s: String!) { product(sku: $s) { sku } }", s="NO-SUCH-SKU")
    assert none == {"product": None}


async def test_outside_production_a_typo_is_answered_with_a_suggestion(gql):
    body = await gql.raw('mutation { adjustStok(sku: "A", delta: 1, reason: "r") { __typename } }')
    assert "Did you mean 'adjustStock'" in body["errors"][0]["message"]
