"""The committed schema.graphql is the schema the server serves."""

from __future__ import annotations

import graphql

from inventory_graphql.api.schema import schema
from tests.support.paths import ROOT


def test_committed_schema_matches_the_code():
    committed = (ROOT / "schema.graphql").read_text()
    assert committed == schema.as_str() + "\n", (
        "schema.graphql is stale: run `inventory-graphql export-schema --output schema.graphql`"
    )


def test_public_contract_names_are_present():
    sdl = schema.as_str()
    for line in (
        "reserve(lines: [ReserveLineInput!]!, ttlSeconds: Int, idempotencyKey: String): "
        "ReserveResult!",
        "confirm(id: ID!, lines: [ReserveLineInput!]): ResolveResult!",
        "release(id: ID!, lines: [ReserveLineInput!]): ResolveResult!",
        "extendReservation(id: ID!, ttlSeconds: Int!): ExtendResult!",
        "createProduct(sku: String!, name: String!, quantity: Int!): ProductResult!",
        "adjustStock(sku: String!, delta: Int!, reason: String!, idempotencyKey: String, "
        "expectedVersion: Int, reference: String): ProductResult!",
        "setStock(sku: String!, quantity: Int!, reason: String!, expectedVersion: Int, "
        "idempotencyKey: String, reference: String): ProductResult!",
        "adjustStocks(adjustments: [StockAdjustmentInput!]!, idempotencyKey: String): "
        "BulkAdjustResult!",
        "type VersionConflict implements Problem {\n  message: String!\n  sku: String!\n"
        "  expectedVersion: Int!\n  actualVersion: Int!\n}",
        "setPurchaseLimit(sku: String!, perBuyer: Int): ProductResult!",
        "product(sku: String!): Product",
        "products(skus: [String!], first: Int = 100): [Product!]!",
        "reservation(id: ID!): Reservation",
        "union ReserveResult = Reservation | InsufficientStock | ProductNotFound | InvalidInput | "
        "IdempotencyKeyReused | PurchaseLimitExceeded | BuyerRequired | TooManyPendingHolds\n",
        "type PurchaseLimitExceeded implements Problem {\n  message: String!\n  sku: String!\n"
        "  limit: Int!\n  alreadyHeld: Int!\n}",
        "type BuyerRequired implements Problem {\n  message: String!\n  sku: String!\n}",
        "type TooManyPendingHolds implements Problem {\n  message: String!\n  limit: Int!\n}",
        "union ResolveResult = Reservation | ReservationNotFound | ReservationNotPending | "
        "InvalidInput",
        "union ExtendResult = Reservation | ReservationNotFound | ReservationNotPending | "
        "HoldLimitReached | InvalidInput",
        "type HoldLimitReached implements Problem {\n  message: String!\n  id: ID!\n"
        "  maxExpiresAt: DateTime!\n}",
        "confirmedQuantity: Int!",
        "releasedQuantity: Int!",
        "union ProductResult = Product | ProductNotFound | ProductExists | InvalidInput",
    ):
        assert line in sdl


def test_fair_drop_fields_have_the_contract_types():
    # Described fields span several SDL lines: compare the types the schema declares.
    types = graphql.build_schema(schema.as_str()).type_map
    declared = {
        (name, field): str(types[name].fields[field].type)  # type: ignore[attr-defined]
        for name, field in (
            ("Product", "purchaseLimit"),
            ("Product", "waiting"),
            ("AvailabilityUpdate", "waiting"),
        )
    }
    assert declared == {
        ("Product", "purchaseLimit"): "Int",
        ("Product", "waiting"): "Int!",
        ("AvailabilityUpdate", "waiting"): "Int!",
    }
