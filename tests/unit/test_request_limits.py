"""Variables too big to coerce are refused before validation; a query that runs past its
time budget is answered TIMEOUT, while a mutation runs to its end."""

from __future__ import annotations

import asyncio

import strawberry
from graphql import ASTValidationRule, ValidationContext

from inventory_graphql.api.document_cache import DocumentCache
from inventory_graphql.api.request_guards import (
    Guards,
    Limits,
    RequestGuards,
    variable_values,
)
from inventory_graphql.api.schema import MAX_VARIABLE_VALUES, schema

# --- counting variables -----------------------------------------------------------------


def test_every_value_counts_lists_and_objects_included() -> None:
    assert variable_values({"a": 1, "b": "x"}, 2, 8) == (2, None)
    assert variable_values({"a": 1, "b": "x", "c": None}, 2, 8)[1] is not None
    lines = [{"sku": "A", "quantity": 1}] * 3  # the list, 3 objects, 6 fields
    assert variable_values({"lines": lines}, 10, 8) == (10, None)
    _, refusal = variable_values({"lines": lines}, 9, 8)
    assert refusal is not None and "more than 9 values" in refusal


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    assert variable_values({"lines": [{"sku": "A"}]}, 100, 3) == (3, None)
    _, refusal = variable_values({"deep": [[[["x"]]]]}, 100, 3)
    assert refusal is not None and "deeper than 3" in refusal


def test_anything_but_an_object_is_left_to_strawberry() -> None:
    assert variable_values(None, 1, 1) == (0, None)
    assert variable_values([1, 2, 3], 1, 1) == (0, None)


async def test_the_schema_refuses_a_huge_list_before_coercing_or_validating_it() -> None:
    document = "query($s: [String!]) { products(skus: $s) { sku } }"
    result = await schema.execute(document, {"s": ["A"] * 1_500_000})
    (error,) = result.errors or []
    assert error.extensions is not None and error.extensions["code"] == "VARIABLES_TOO_LARGE"
    assert f"more than {MAX_VARIABLE_VALUES} values" in error.message


# --- the time budget ---------------------------------------------------------------------


@strawberry.type
class Query:
    @strawberry.field
    async def slow(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def slow_change(self, info: strawberry.Info[list[str], None], seconds: float) -> str:
        await asyncio.sleep(seconds)
        info.context.append("changed")
        return "done"


def budgeted(seconds: float, validated: list[str] | None = None) -> strawberry.Schema:
    class Noting(ASTValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            if validated is not None:
                validated.append("seen")

    limits = Limits(
        max_tokens=100,
        max_fields=10,
        max_variable_values=3,
        max_variable_depth=2,
        query_timeout_seconds=seconds,
    )
    documents = DocumentCache(max_bytes=1 << 20, max_entries=8, max_document_bytes=1 << 16)
    guards = Guards(limits, (Noting,), documents)
    return strawberry.Schema(
        query=Query, mutation=Mutation, extensions=[lambda: RequestGuards(guards)]
    )


async def test_variables_over_the_limit_are_refused_before_validation() -> None:
    validated: list[str] = []
    guarded = budgeted(1, validated)
    result = await guarded.execute("query($s: Float!) { slow(seconds: $s) }", {"s": [[[0]]]})
    (error,) = result.errors or []
    assert error.extensions is not None and error.extensions["code"] == "VARIABLES_TOO_LARGE"
    assert validated == []


async def test_a_query_past_its_budget_is_answered_timeout_within_it() -> None:
    guarded = budgeted(0.2)
    started = asyncio.get_running_loop().time()
    result = await guarded.execute("{ slow(seconds: 30) }")
    elapsed = asyncio.get_running_loop().time() - started
    assert result.data is None
    (error,) = result.errors or []
    assert error.extensions is not None
    assert (error.extensions["code"], error.extensions["retriable"]) == ("TIMEOUT", True)
    assert "0.2 s" in error.message
    assert elapsed < 5, "the budget did not stop it"
    # The next query runs normally: nothing was left cancelled.
    assert (await guarded.execute("{ slow(seconds: 0) }")).data == {"slow": "done"}


async def test_a_mutation_is_not_cut_short_by_the_query_budget() -> None:
    changes: list[str] = []
    result = await budgeted(0.05).execute(
        "mutation { slowChange(seconds: 0.3) }", context_value=changes
    )
    assert result.errors is None and result.data == {"slowChange": "done"}
    assert changes == ["changed"]
