"""The cost model: what an operation costs before it runs, and the refusal over the limit
(before validation, nothing executed)."""

from __future__ import annotations

import json
from pathlib import Path

import graphql
import pytest
import strawberry
from graphql import ASTValidationRule, ValidationContext, get_introspection_query, parse

from inventory_graphql.api.document_cache import DocumentCache
from inventory_graphql.api.query_cost import CostModel, Price, costliest_allowed_query
from inventory_graphql.api.request_guards import Guards, Limits, RequestGuards
from inventory_graphql.api.schema import MAX_QUERY_COST, PRICES, cost_model, schema
from tests.api import queries
from tests.unit.test_request_guards import doubling_chain

ROOT = Path(__file__).resolve().parents[2]
P7 = queries.PRODUCT_FIELDS  # the seven fields of a Product
MODEL = cost_model(schema)


def cost(document: str, variables: dict[str, object] | None = None) -> int | None:
    return MODEL.cost(parse(document), None, variables)


# --- the price of the served schema's fields ---------------------------------------------


def test_a_plain_field_costs_one_and_a_list_multiplies_what_it_selects() -> None:
    assert cost("{ __typename }") == 1
    # products reads the database (50); each item costs 1 and its fields 1 each.
    assert cost("{ products(first: 10) { sku } }") == 50 + 10 * (1 + 1)
    assert cost(f"{{ products(first: 10) {{ {P7} }} }}") == 50 + 10 * (1 + 7)


def test_first_defaults_to_100_and_skus_bound_the_page_too() -> None:
    assert cost("{ products { sku } }") == 50 + 100 * 2
    assert cost('{ products(skus: ["A", "B", "C"]) { sku } }') == 50 + 3 * 2
    assert cost('{ products(skus: ["A", "B"], first: 1) { sku } }') == 50 + 1 * 2
    assert cost('{ products(skus: "A") { sku } }') == 50 + 1 * 2  # coerced to a list of one
    assert cost("{ products(first: 0) { sku } }") == 50
    # Beyond the maximum the resolver refuses it; priced as the maximum.
    assert cost("{ products(first: 100000) { sku } }") == 50 + 1000 * 2


def test_variables_price_at_their_worst_until_their_values_are_given() -> None:
    document = f"query($n: Int, $s: [String!]) {{ products(first: $n, skus: $s) {{ {P7} }} }}"
    worst = 50 + 1000 * 8
    assert cost(document) == worst
    assert cost(document, {"n": 10}) == 50 + 10 * 8
    assert cost(document, {"s": ["A", "B"]}) == 50 + 2 * 8
    assert cost(document, {}) == 50 + 100 * 8  # not given: the argument's default
    assert cost(document, {"n": None}) == worst  # null: no bound from it (priced at worst)
    assert cost(document, {"n": "ten"}) == worst  # not an int: coercion will refuse it
    with_default = f"query($n: Int = 5) {{ products(first: $n) {{ {P7} }} }}"
    assert cost(with_default, {}) == 50 + 5 * 8


def test_reservation_lines_count_as_a_full_cart_and_loaded_products_cost_ten() -> None:
    document = '{ reservation(id: "x") { id lines { sku product { sku } } } }'
    assert cost(document) == 50 + 1 + (1 + 100 * (1 + 1 + (10 + 1)))


def test_a_subscription_costs_its_first_results_one_per_sku() -> None:
    document = "subscription($s: [String!]!) { availability(skus: $s) { sku available } }"
    assert cost(document, {"s": ["A", "B"]}) == 50 + 2 * 3
    assert cost(document) == 50 + 100 * 3


def test_fragments_count_where_they_are_spread_and_exponential_ones_stay_linear() -> None:
    document = '{ a: products(first: 2) { ...P } b: product(sku: "x") { ...P } } ' + (
        "fragment P on Product { sku name }"
    )
    assert cost(document) == (50 + 2 * 3) + (10 + 2)
    assert cost(doubling_chain(150)) == 2**150  # priced, not expanded
    assert cost("{ ...A } fragment A on Query { __typename ...A }") == 1  # cycles end


def test_the_operation_named_is_the_one_priced() -> None:
    document = "query Small { __typename } query Large { products { sku } }"
    assert MODEL.cost(parse(document), "Small") == 1
    assert MODEL.cost(parse(document), "Large") == 250
    assert MODEL.cost(parse(document), None) == 250  # ambiguous: the costliest


# --- introspection, priced exactly -------------------------------------------------------


def test_introspection_is_priced_by_the_schema_it_describes() -> None:
    # Product has ten fields: the list costs 1, each field 1 and its name 1.
    assert cost('{ __type(name: "Product") { fields { name } } }') == 1 + 1 + 10 * 2
    assert cost('{ __type(name: "Nope") { fields { name } } }') == 1
    assert (cost(get_introspection_query(descriptions=True)) or 0) <= MAX_QUERY_COST


def test_introspection_that_multiplies_is_priced_and_refused() -> None:
    """__Type lists fields whose types are __Types again: each round of this chain about
    doubles the answer (the depth limit skips introspection). Twelve rounds answer 733,007
    fields (seconds of CPU); pricing stops once it has counted past the limit."""
    inner = "name"
    for _ in range(12):
        inner = f"type {{ ofType {{ ofType {{ fields {{ type {{ ofType {{ {inner} }} }} }} }} }} }}"
        inner = f"fields {{ {inner} }}"
    document = f'{{ __type(name: "__Type") {{ {inner} }} }}'
    unlimited = CostModel(MODEL.schema, PRICES, limit=10**15)
    assert unlimited.cost(parse(document), None) == 733_007  # memoised: a linear walk
    assert cost(document) is None  # over the limit: pricing stopped there


# --- the price list ----------------------------------------------------------------------


def test_every_list_field_must_be_priced() -> None:
    sdl = "type Query { items(first: Int): [Int!]! one: Int }"
    with pytest.raises(ValueError, match=r"Query\.items is a list"):
        CostModel(graphql.build_schema(sdl), {}, 100)
    with pytest.raises(ValueError, match=r"Query\.nope"):
        CostModel(graphql.build_schema(sdl), {("Query", "nope"): Price(most=5)}, 100)
    CostModel(graphql.build_schema(sdl), {("Query", "items"): Price(most=5)}, 100)


# --- what the limit lets through ---------------------------------------------------------


def test_the_costliest_allowed_query_is_at_the_limit_and_one_item_more_is_not() -> None:
    document = costliest_allowed_query()
    priced = cost(document) or 0
    assert MAX_QUERY_COST - 8 < priced <= MAX_QUERY_COST  # an item of seven fields costs 8
    assert document.count("products(") == 20
    bigger = document.replace("products(first: ", "products(first: 1", 1)  # 25 -> 125
    assert (cost(bigger) or 0) > MAX_QUERY_COST


def test_the_storefront_and_the_tests_documents_cost_what_the_limit_allows() -> None:
    manifest = json.loads((ROOT / "trusted-documents.json").read_text())
    documents = {op["name"]: op["body"] for op in manifest["operations"]}
    documents.update(
        (name, text)
        for name, text in vars(queries).items()
        if name.isupper() and isinstance(text, str) and text.lstrip().startswith(("query", "mut"))
    )
    # As the storefront asks: its catalog page (first: 100), or the skus it was given.
    sent = {"first": 100, "skus": [f"S{i}" for i in range(100)], "lines": []}
    for name, text in documents.items():
        variables = {k: v for k, v in sent.items() if f"${k}" in text and k != "skus"}
        assert (cost(text, variables) or 0) <= MAX_QUERY_COST, name
        if "$skus" in text:
            assert (cost(text, {"skus": sent["skus"], "first": 1000}) or 0) <= MAX_QUERY_COST


# --- the refusal, through a schema -------------------------------------------------------


async def test_the_served_schema_refuses_issue_13s_query_naming_its_cost_and_the_limit() -> None:
    document = "{ " + " ".join(f"a{i}: products(first: 1000) {{ {P7} }}" for i in range(20)) + " }"
    result = await schema.execute(document)  # no context: a resolver that ran would fail
    assert result.data is None
    (error,) = result.errors or []
    assert error.extensions is not None
    assert (error.extensions["code"], error.extensions["cost"]) == ("QUERY_TOO_EXPENSIVE", 161000)
    assert error.extensions["limit"] == MAX_QUERY_COST == 5000
    assert "costs 161000" in error.message and "limit is 5000" in error.message


@strawberry.type
class Query:
    @strawberry.field
    def words(self, info: strawberry.Info[list[int], None], first: int = 10) -> list[str]:
        info.context.append(first)  # what ran
        return ["word"] * first


def priced_schema(validated: list[str]) -> strawberry.Schema:
    class Noting(ASTValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            validated.append("seen")

    limits = Limits(max_tokens=500, max_fields=100, max_variable_values=10, max_variable_depth=3)
    documents = DocumentCache(max_bytes=1 << 20, max_entries=16, max_document_bytes=1 << 16)
    guards = Guards(limits, (Noting,), documents)
    built = strawberry.Schema(query=Query, extensions=[lambda: RequestGuards(guards)])
    prices = {("Query", "words"): Price(most=1000, bounded_by=("first",))}
    guards.costs = CostModel(graphql.build_schema(built.as_str()), prices, limit=100)
    return built


async def test_a_document_over_the_cost_limit_is_refused_before_validation() -> None:
    validated: list[str] = []
    ran: list[int] = []
    guarded = priced_schema(validated)
    for _ in range(2):  # the second time from the cached price
        result = await guarded.execute("{ words(first: 100) }", context_value=ran)
        (error,) = result.errors or []
        assert error.extensions == {"code": "QUERY_TOO_EXPENSIVE", "cost": 101, "limit": 100}
    assert validated == [] and ran == []
    result = await guarded.execute("{ a: words(first: 49) b: words(first: 49) }", context_value=ran)
    assert result.errors is None and ran == [49, 49]


async def test_a_page_asked_for_through_a_variable_is_priced_by_its_value() -> None:
    ran: list[int] = []
    guarded = priced_schema([])
    document = "query($n: Int) { words(first: $n) }"  # at worst 1 + 1000 items
    for _ in range(2):  # the worst price is cached; the values are priced per request
        refused = await guarded.execute(document, {"n": 100}, context_value=ran)
        (error,) = refused.errors or []
        assert error.extensions == {"code": "QUERY_TOO_EXPENSIVE", "cost": 101, "limit": 100}
        allowed = await guarded.execute(document, {"n": 99}, context_value=ran)
        assert allowed.errors is None and allowed.data == {"words": ["word"] * 99}
    assert ran == [99, 99]
