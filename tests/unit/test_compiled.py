"""Compiled plans decide once what graphql-core decides per request, and decide it alike."""

from __future__ import annotations

import random
from typing import Any

import pytest
from graphql import GraphQLSchema, get_variable_values, parse

from inventory_graphql.api.compiled import NotCompilable, coerce_variables, compile_operation
from inventory_graphql.api.internals import core_schema
from inventory_graphql.api.schema import schema


def _core() -> GraphQLSchema:
    core = core_schema(schema)
    assert core is not None
    return core


CORE = _core()

VARIABLES = """
query Vars($sku: String!, $skus: [String!], $first: Int, $id: ID!, $after: String) {
  product(sku: $sku) { sku }
  products(skus: $skus, first: $first) { sku }
  reservation(id: $id) { id }
  stockEvents(after: $after) { __typename }
}
mutation Lines($lines: [ReserveLineInput!]!, $ttl: Int, $key: String) {
  reserve(lines: $lines, ttlSeconds: $ttl, idempotencyKey: $key) { __typename }
}
query Defaulted($first: Int = 3) { products(first: $first) { sku } }
"""

VALUES: list[Any] = [
    None,
    "",
    "A-1",
    0,
    7,
    -1,
    2**31,
    1.0,
    1.5,
    True,
    [],
    ["A-1"],
    ["A-1", None],
    "x" * 3,
    {},
    {"sku": "A-1", "quantity": 2},
    {"sku": "A-1"},
    {"sku": "A-1", "quantity": 1, "extra": 1},
    [{"sku": "A-1", "quantity": 1}],
    [{"sku": "A-1", "quantity": "1"}],
]


def plan_of(name: str) -> Any:
    return compile_operation(CORE, parse(VARIABLES), name, lambda t, f: False)


GOOD = {
    "sku": "A-1",
    "skus": ["A-1"],
    "first": 7,
    "id": "x",
    "after": "c",
    "lines": [{"sku": "A-1", "quantity": 1}],
    "ttl": 60,
    "key": "k",
}
MISSING = object()


def sources(values: Any) -> dict[str, tuple[object, ...]]:
    # A signature's type is built anew per request: the same type, another object.
    return {
        name: (s.signature.name, str(s.signature.type), s.signature.default, s.value)
        for name, s in values.sources.items()
    }


@pytest.mark.parametrize("name", ["Vars", "Lines", "Defaulted"])
def test_variables_coerce_as_graphql_core_coerces_them(name: str) -> None:
    plan = plan_of(name)
    names = [v.variable.name.value for v in plan.operation.variable_definitions]
    cases = []
    for varied in names:  # each variable over every value, the others good
        for value in [*VALUES, MISSING]:
            cases.append({**{n: GOOD[n] for n in names}, varied: value})
    randomly = random.Random(17)
    for _ in range(300):
        cases.append({n: randomly.choice([*VALUES, MISSING, GOOD[n]]) for n in names})
    fast = 0
    for case in cases:
        inputs = {n: v for n, v in case.items() if v is not MISSING}
        expected = get_variable_values(CORE, plan.operation.variable_definitions, inputs)
        got = coerce_variables(plan, inputs)
        if isinstance(expected, list):
            assert isinstance(got, list)
            assert [e.formatted for e in got] == [e.formatted for e in expected]
        else:
            assert not isinstance(got, list), inputs
            assert got.coerced == expected.coerced, inputs
            assert sources(got) == sources(expected), inputs
            fast += 1
    assert fast >= len(names) * 3  # values both coerce, not only refusals


@pytest.mark.parametrize(
    "document",
    [
        'subscription { availability(skus: ["A"]) { sku } }',
        'query Q($s: Boolean!) { product(sku: "A") @skip(if: $s) { sku } }',
        'query { product(sku: "A") @include(if: $x) { sku } }',
        "{ __schema { queryType { name } } }",
        '{ __type(name: "Product") { name } }',
        "query A { __typename } query B { __typename }",
    ],
)
def test_what_a_plan_cannot_decide_once_is_not_compiled(document: str) -> None:
    with pytest.raises(NotCompilable):
        compile_operation(CORE, parse(document), None, lambda t, f: False)


def test_literal_directives_and_fragments_are_decided_once() -> None:
    plan = compile_operation(
        CORE,
        parse(
            '{ a: product(sku: "A") @skip(if: true) { sku } '
            'b: product(sku: "B") @include(if: true) { ...F name @include(if: false) } '
            'b: product(sku: "B") { available } } '
            "fragment F on Product { sku }"
        ),
        None,
        lambda t, f: False,
    )
    assert [f.key for f in plan.root.fields] == ["b"]
    (b,) = plan.root.fields
    assert len(b.nodes) == 2  # both selections of the key merge, as graphql-core merges them
