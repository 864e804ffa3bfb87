"""The fragment-expansion guard: documents are counted as they would execute, fragments
expanded, and those over the limit are refused before graphql-core validates them."""

from __future__ import annotations

import time

import strawberry
from graphql import ASTValidationRule, ValidationContext, parse

from inventory_graphql.api.document_cache import DocumentCache
from inventory_graphql.api.request_guards import (
    Guards,
    Limits,
    RequestGuards,
    expanded_field_count,
)
from inventory_graphql.api.schema import MAX_ALIASES, MAX_FIELDS, schema


def doubling_chain(levels: int, leaf: str = "__typename", on: str = "Query") -> str:
    """`{ ...F0 }` where each fragment spreads the next twice: 2**levels leaves."""
    fragments = [f"fragment F{i} on {on} {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    return "\n".join(["{ ...F0 }", *fragments, f"fragment F{levels} on {on} {{ {leaf} }}"])


def count(document: str) -> int:
    return expanded_field_count(parse(document))


# --- counting ----------------------------------------------------------------------------


def test_every_field_counts_once_nested_ones_included() -> None:
    assert count("{ a }") == 1
    assert count("{ a b c }") == 3
    assert count("{ a { b { c d } e } }") == 5
    assert count("{ x: a y: a }") == 2


def test_inline_fragments_add_their_fields_only() -> None:
    assert count("{ a ... on Query { b c } ... { d } }") == 4


def test_a_fragment_counts_each_time_it_is_spread() -> None:
    document = """
        { one: product { ...P } two: product { ...P } }
        fragment P on Product { sku name stock { quantity } }
    """
    assert count(document) == 2 * (1 + 4)


def test_nested_fragments_multiply() -> None:
    document = """
        { ...A }
        fragment A on Query { ...B ...B ...B }
        fragment B on Query { x { ...C } ...C }
        fragment C on Query { y z }
    """
    assert count(document) == 3 * ((1 + 2) + 2)


def test_the_largest_operation_counts_not_their_sum() -> None:
    assert count("query Small { a } query Large { a b c } mutation M { d e }") == 3


def test_a_document_of_fragments_alone_selects_nothing() -> None:
    assert count("fragment F on Query { a b }") == 0


def test_unknown_and_cyclic_fragments_count_nothing_and_end() -> None:
    # Both are invalid; the validator reports them. Counting must just terminate.
    assert count("{ a ...Missing }") == 1
    assert count("{ ...A } fragment A on Query { x ...B } fragment B on Query { y ...A }") == 2
    assert count("{ ...A } fragment A on Query { x ...A }") == 1


def test_exponential_fragments_are_counted_exactly() -> None:
    for levels in (1, 10, 40, 150):
        assert count(doubling_chain(levels)) == 2**levels


def test_counting_is_linear_in_the_document_not_the_expansion() -> None:
    """Without memoisation 2**150 expansions would never finish; with it, the document's
    three hundred spreads are visited once each."""
    document = parse(doubling_chain(150))
    started = time.perf_counter()
    for _ in range(10):
        expanded_field_count(document)
    assert (time.perf_counter() - started) / 10 < 0.05


# --- refusing, through the served schema -------------------------------------------------


async def test_the_schema_refuses_an_exploding_document_fast() -> None:
    document = doubling_chain(40)
    started = time.perf_counter()
    result = await schema.execute(document)
    elapsed = time.perf_counter() - started
    assert result.data is None
    (error,) = result.errors or []
    assert error.extensions is not None and error.extensions["code"] == "QUERY_TOO_COMPLEX"
    assert str(2**40) in error.message and str(MAX_FIELDS) in error.message
    assert elapsed < 1, "validated (or worse) before it was refused"


async def test_the_schema_refuses_one_field_over_the_limit() -> None:
    result = await schema.execute("{ " + " __typename" * (MAX_FIELDS + 1) + " }")
    (error,) = result.errors or []
    assert error.extensions is not None and error.extensions["code"] == "QUERY_TOO_COMPLEX"
    assert f"selects {MAX_FIELDS + 1} fields" in error.message


async def test_the_schema_refuses_more_aliases_than_allowed() -> None:
    def aliased(n: int) -> str:
        return "{ " + " ".join(f"a{i}: __typename" for i in range(n)) + " }"

    assert (await schema.execute(aliased(MAX_ALIASES))).errors is None
    for _ in range(2):  # again, from the validation cache: still refused
        (error,) = (await schema.execute(aliased(MAX_ALIASES + 1))).errors or []
        assert f"{MAX_ALIASES + 1} aliases" in error.message


async def test_the_schema_refuses_a_subscription_over_http() -> None:
    result = await schema.execute('subscription { availability(skus: ["A"]) { sku } }')
    (error,) = result.errors or []
    assert error.extensions is not None and error.extensions["code"] == "BAD_REQUEST"
    assert "WebSocket" in error.message


# --- refusing comes before validating ----------------------------------------------------


@strawberry.type
class Greeting:
    text: str = "hello"


@strawberry.type
class Query:
    @strawberry.field
    def greeting(self) -> Greeting:
        return Greeting()


LIMIT = 8


def guarded_schema(validated: list[str], max_tokens: int = 500) -> strawberry.Schema:
    """A small schema with only the guards, and a validation rule that notes each
    document it sees."""

    class Noting(ASTValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            validated.append(context.document.loc.source.body if context.document.loc else "")

    limits = Limits(
        max_tokens=max_tokens, max_fields=LIMIT, max_variable_values=10, max_variable_depth=3
    )
    documents = DocumentCache(max_bytes=1 << 20, max_entries=16, max_document_bytes=1 << 16)
    guards = Guards(limits, (Noting,), documents)
    return strawberry.Schema(query=Query, extensions=[lambda: RequestGuards(guards)])


async def test_a_document_at_the_limit_is_validated_and_runs() -> None:
    validated: list[str] = []
    document = "{ " + " ".join(f"g{i}: greeting {{ text }}" for i in range(LIMIT // 2)) + " }"
    assert count(document) == LIMIT
    result = await guarded_schema(validated).execute(document)
    assert result.errors is None
    assert result.data == {f"g{i}": {"text": "hello"} for i in range(LIMIT // 2)}
    assert validated == [document]


async def test_a_document_over_the_limit_is_refused_without_being_validated() -> None:
    validated: list[str] = []
    document = doubling_chain(3, leaf="text", on="Greeting").replace(
        "{ ...F0 }", "{ greeting { ...F0 } }"
    )
    assert count(document) == LIMIT + 1
    result = await guarded_schema(validated).execute(document)
    (error,) = result.errors or []
    assert error.extensions is not None and error.extensions["code"] == "QUERY_TOO_COMPLEX"
    assert validated == []


async def test_a_document_over_the_token_limit_is_refused_before_validation() -> None:
    validated: list[str] = []
    at_limit = "{ greeting { text } __typename }"  # 7 tokens
    guarded = guarded_schema(validated, max_tokens=7)
    assert (await guarded.execute(at_limit)).errors is None
    over = "{ greeting { text } __typename a: __typename }"  # 8 tokens
    (error,) = (await guarded.execute(over)).errors or []
    assert "more than 7 tokens" in error.message
    assert validated == [at_limit]


async def test_the_guards_validation_rules_apply_to_cached_validations_too() -> None:
    """The rules RequestGuards adds (the schema passes the alias and depth limiters this
    way) run once per distinct document: later runs are served by the validation cache."""
    validated: list[str] = []
    guarded = guarded_schema(validated)
    for _ in range(3):
        result = await guarded.execute("{ greeting { text } }")
        assert result.errors is None and result.data == {"greeting": {"text": "hello"}}
    assert validated == ["{ greeting { text } }"]
