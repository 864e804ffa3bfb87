"""Safe admin writes over GraphQL: adjustStock, setStock, adjustStocks (admin only).
Composed into the Mutation root in schema.py; the rules are in inventory/admin_writes.py."""

from __future__ import annotations

import strawberry
from strawberry import UNSET

from inventory_graphql.api import fields
from inventory_graphql.api.auth import IsAdmin
from inventory_graphql.api.context import Context
from inventory_graphql.api.outcomes import (
    BulkAdjustResult,
    ProductResult,
    bulk_adjust_result,
    product_result,
)
from inventory_graphql.inventory import models

Info = strawberry.Info[Context, None]

_SAFE = (
    " `expectedVersion`: only if the product is at that version (else VersionConflict, "
    "nothing done). `idempotencyKey` (1-255 characters, yours alone, kept 24 h): a retry "
    "with the same arguments answers the first answer and changes nothing; other "
    "arguments answer IdempotencyKeyReused. Needs the admin token."
)


@strawberry.input(description="One product's change in adjustStocks.")
class StockAdjustmentInput:
    sku: str
    delta: int
    reason: str
    expected_version: int | None = UNSET
    reference: str | None = UNSET

    def to_domain(self) -> models.StockAdjustment:
        return models.StockAdjustment(
            self.sku,
            self.delta,
            self.reason,
            fields.given(self.expected_version),
            fields.given(self.reference),
        )


@strawberry.type
class AdminStockMutation:
    @fields.mutation(
        description="Restock (positive delta) or write off (negative), never below what is "
        "reserved; the ledger row carries `reason`, `reference` and the admin's name." + _SAFE,
        permission_classes=[IsAdmin],
    )
    async def adjust_stock(
        self,
        info: Info,
        sku: str,
        delta: int,
        reason: str,
        idempotency_key: str | None = UNSET,
        expected_version: int | None = UNSET,
        reference: str | None = UNSET,
    ) -> ProductResult:
        return product_result(
            await info.context.service.adjust_stock(
                sku,
                delta,
                reason,
                expected_version=fields.given(expected_version),
                idempotency_key=fields.given(idempotency_key),
                reference=fields.given(reference),
                caller=info.context.caller,
            )
        )

    @fields.mutation(
        description="A stock count: set the quantity (0 up, never below what is reserved: "
        "QuantityBelowReserved); the ledger row is a SET with the difference." + _SAFE,
        permission_classes=[IsAdmin],
    )
    async def set_stock(
        self,
        info: Info,
        sku: str,
        quantity: int,
        reason: str,
        expected_version: int | None = UNSET,
        idempotency_key: str | None = UNSET,
        reference: str | None = UNSET,
    ) -> ProductResult:
        return product_result(
            await info.context.service.set_stock(
                sku,
                quantity,
                reason,
                expected_version=fields.given(expected_version),
                idempotency_key=fields.given(idempotency_key),
                reference=fields.given(reference),
                caller=info.context.caller,
            )
        )

    @fields.mutation(
        description="Adjust up to 1,000 products at once, all or nothing (each sku once); "
        "the first adjustment refused is named and nothing changes. `idempotencyKey` as in "
        "adjustStock. Needs the admin token.",
        permission_classes=[IsAdmin],
    )
    async def adjust_stocks(
        self,
        info: Info,
        adjustments: list[StockAdjustmentInput],
        idempotency_key: str | None = UNSET,
    ) -> BulkAdjustResult:
        return bulk_adjust_result(
            await info.context.service.adjust_stocks(
                [a.to_domain() for a in adjustments],
                fields.given(idempotency_key),
                caller=info.context.caller,
            )
        )
