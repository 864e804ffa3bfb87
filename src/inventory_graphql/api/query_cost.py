"""What an operation costs, known before it runs.

Every field costs 1 (`Price.each`: more for one that reads the database), and a list
field multiplies what it selects by the most items it can return: `Price.most`, lowered
by the arguments in `Price.bounded_by`, a count (`first: 10`) or a list (`skus`: its
length). Each item also costs 1, so `products(first: 100) { sku }` costs 1 + 100 x 2.
Introspection is priced exactly from the schema (introspection_cost.py).

A document is priced once with its variables at their worst (whatever values they get)
and that price is cached with it; only a document over the limit that way is priced again
per request with the variables' values (linear in the document), so `products(first:
$first)` asked for ten is not refused for what a thousand would cost, while a hot document
costs a lookup.

Fields are counted as written, which can only overestimate: @skip/@include are ignored,
the fragments on every member of a union all count, and two fields with one response key
count twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLArgument,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    NullValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    Undefined,
    ValueNode,
    VariableNode,
    get_named_type,
    get_nullable_type,
    is_list_type,
)

from inventory_graphql.api.introspection_cost import Exceeded, IntrospectionPricing


@dataclass(frozen=True)
class Price:
    """What one field costs: `each` per call, and for a list (or a stream) the most items
    it returns (`most`), fewer when an argument in `bounded_by` says so."""

    each: int = 1
    most: int = 1
    bounded_by: tuple[str, ...] = ()


Prices = Mapping[tuple[str, str], Price]  # (type name, field name) -> price
DEFAULT: Final = Price()
UNKNOWN: Final = object()  # a variable's value, when pricing at worst
ABSENT: Final = object()  # an argument not given (its default applies)


class CostModel:
    """Prices operations against one schema; refuses a price list that misses a list."""

    def __init__(self, schema: GraphQLSchema, prices: Prices, limit: int) -> None:
        self.schema = schema
        self.prices = prices
        self.limit = limit
        _check(schema, prices)

    def cost(
        self,
        document: DocumentNode,
        operation_name: str | None,
        variables: Mapping[str, object] | None = None,
    ) -> int | None:
        """The operation's cost (the costliest operation when the name matches none);
        `variables` None prices them at their worst. None: more than the limit (pricing
        stopped there)."""
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        named = [op for op in operations if op.name and op.name.value == operation_name]
        try:
            return max(
                (_Pricing(self, document, op, variables).total() for op in named or operations),
                default=0,
            )
        except (Exceeded, RecursionError):
            return None


def _check(schema: GraphQLSchema, prices: Prices) -> None:
    for type_name, field_name in prices:
        found = schema.get_type(type_name)
        if not isinstance(found, GraphQLObjectType | GraphQLInterfaceType) or (
            field_name not in found.fields
        ):
            raise ValueError(f"a price for {type_name}.{field_name}, which the schema lacks")
    for named in schema.type_map.values():
        if named.name.startswith("__"):
            continue
        if isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
            for name, field in named.fields.items():
                price = prices.get((named.name, name), DEFAULT)
                if is_list_type(get_nullable_type(field.type)) and price.most <= 1:
                    raise ValueError(f"{named.name}.{name} is a list: price it with `most`")


class _Pricing:
    """One operation's walk; fragments are priced once each (so fragments that expand
    exponentially cost a linear walk)."""

    def __init__(
        self,
        model: CostModel,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        variables: Mapping[str, object] | None,
    ) -> None:
        self.model = model
        self.operation = operation
        self.variables = variables
        self.fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self.defaults = {
            v.variable.name.value: v.default_value
            for v in operation.variable_definitions or ()
            if v.default_value is not None
        }
        self.spreads: dict[str, int] = {}
        self.introspection = IntrospectionPricing(model.schema, self.fragments, model.limit)

    def total(self) -> int:
        root = self.model.schema.get_root_type(self.operation.operation)
        return self.selections(self.operation.selection_set, root, frozenset())

    def selections(
        self,
        selection_set: SelectionSetNode | None,
        parent: GraphQLNamedType | None,
        visiting: frozenset[str],
    ) -> int:
        total = 0
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                total += self.field(selection, parent, visiting)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                on = self.model.schema.get_type(condition.name.value) if condition else parent
                total += self.selections(selection.selection_set, on, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.spread(selection.name.value, visiting)
        return total

    def spread(self, name: str, visiting: frozenset[str]) -> int:
        if name in self.spreads:
            return self.spreads[name]
        if name in visiting or name not in self.fragments:
            return 0  # cycles and unknown fragments are the validator's to report
        fragment = self.fragments[name]
        on = self.model.schema.get_type(fragment.type_condition.name.value)
        self.spreads[name] = cost = self.selections(fragment.selection_set, on, visiting | {name})
        return cost

    def field(
        self, node: FieldNode, parent: GraphQLNamedType | None, visiting: frozenset[str]
    ) -> int:
        name = node.name.value
        if name.startswith("__"):
            return self.introspection.root_field(node, self.variables)
        definition = (
            parent.fields.get(name)
            if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType)
            else None
        )
        if definition is None or parent is None:  # not in the schema: the validator's
            return 1 + self.selections(node.selection_set, None, visiting)
        price = self.model.prices.get((parent.name, name), DEFAULT)
        selected = self.selections(node.selection_set, get_named_type(definition.type), visiting)
        if price.most <= 1:
            return price.each + selected
        return price.each + self.items(price, node, definition) * (1 + selected)

    def items(self, price: Price, node: FieldNode, definition: GraphQLField) -> int:
        """The most items the field can return, as its arguments bound it."""
        given = {argument.name.value: argument.value for argument in node.arguments or ()}
        most = price.most
        for name in price.bounded_by:
            argument = definition.args.get(name)
            if argument is None:
                continue
            value = self.value(given[name]) if name in given else ABSENT
            if value is UNKNOWN:
                continue  # at worst: no bound
            if value is ABSENT:
                value = _default(argument)
            if is_list_type(get_nullable_type(argument.type)):
                bound = len(value) if isinstance(value, list) else None if value is None else 1
            else:
                bound = value if isinstance(value, int) and not isinstance(value, bool) else None
            if bound is not None:
                most = min(most, max(bound, 0))
        return most

    def value(self, node: ValueNode) -> object:
        """An argument's value, as far as bounds go: an int, a list, None, UNKNOWN, ABSENT."""
        if not isinstance(node, VariableNode):
            return _literal(node)
        name = node.name.value
        if self.variables is None:
            return UNKNOWN
        if name in self.variables:
            return self.variables[name]
        return _literal(self.defaults[name]) if name in self.defaults else ABSENT


def _literal(node: ValueNode) -> object:
    if isinstance(node, IntValueNode):
        return int(node.value)
    if isinstance(node, ListValueNode):
        return list(node.values)
    if isinstance(node, NullValueNode):
        return None
    return node  # anything else: a single value (a list argument coerces it to one)


def _default(argument: GraphQLArgument) -> object:
    """The argument's default (None when it has none)."""
    if argument.default is not None:  # SDL-built schemas: a literal or a value
        default = argument.default
        return _literal(default.literal) if default.literal is not None else default.value
    return None if argument.default_value is Undefined else argument.default_value


PRODUCT_FIELDS = "sku name quantity reserved available version updatedAt"


def costliest_allowed_query() -> str:
    """The most expensive document the served schema's default limits let through, on a
    catalog of at least MAX_PAGE products: as many aliased pages of every product field as
    the alias limit allows, as large as fit (of the shapes measured, the most server CPU
    at the limit; README, Security and limits)."""
    from graphql import parse

    from inventory_graphql.api.schema import MAX_ALIASES, MAX_PAGE, cost_model, schema

    model = cost_model(schema)

    def pages(sizes: list[int]) -> str:
        listed = (f"p{i}: products(first: {n}) {{ {PRODUCT_FIELDS} }}" for i, n in enumerate(sizes))
        return "{ " + " ".join(listed) + " }"

    def fits(sizes: list[int]) -> bool:
        cost = model.cost(parse(pages(sizes)), None)
        return cost is not None and cost <= model.limit

    low, high = 0, MAX_PAGE  # the largest page every alias can have
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits([middle] * MAX_ALIASES) else (low, middle - 1)
    sizes = [low] * MAX_ALIASES
    for i in range(MAX_ALIASES):  # what is left, one more item to the first few
        if fits([*sizes[:i], low + 1, *sizes[i + 1 :]]):
            sizes[i] = low + 1
    return pages(sizes)
