"""The exact price of introspection: the schema is fixed, so every list it answers is known.

`__schema { types { fields { type { ofType { fields { ... } } } } } }` multiplies as deep
as the document goes (the depth limit skips introspection), so a selection is priced
against the schema objects that would answer it, not against the longest list of its kind
(which would price GraphiQL's own introspection query ten times over). Each (selection
set, type) pair is priced once, and pricing stops as soon as it has counted more than the
limit: it costs at most about `limit` steps, however the document multiplies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLArgument,
    GraphQLDirective,
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLType,
    GraphQLUnionType,
    GraphQLWrappingType,
    InlineFragmentNode,
    SelectionSetNode,
    StringValueNode,
    VariableNode,
)


class Exceeded(Exception):
    """Pricing counted past the limit; the operation costs more than that."""


LEAF: Final = "leaf"  # a scalar or enum answer: costs its field's 1, selects nothing
Answer = object  # a schema object, a list of them, None or LEAF


class IntrospectionPricing:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        limit: int,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.limit = limit
        self.spent = 0  # fields priced, memo hits aside: never more than the total
        self.memo: dict[tuple[int, str], int] = {}

    def root_field(self, node: FieldNode, variables: Mapping[str, object] | None) -> int:
        """`__schema`, `__type(name:)` (or a misplaced introspection field: 1)."""
        if node.name.value == "__schema":
            return 1 + self.selections(node.selection_set, self.schema, frozenset())
        if node.name.value != "__type":
            return 1
        candidates = [self.schema.get_type(name) for name in self._type_names(node, variables)]
        started, most = self.spent, 0
        for candidate in candidates:
            # A name given by a variable prices the costliest type; each candidate is
            # priced from the same budget, as if it were the only one.
            self.spent = started
            if candidate is not None:
                most = max(most, self.selections(node.selection_set, candidate, frozenset()))
        return 1 + most

    def _type_names(self, node: FieldNode, variables: Mapping[str, object] | None) -> list[str]:
        for argument in node.arguments or ():
            if argument.name.value != "name":
                continue
            value = argument.value
            if isinstance(value, StringValueNode):
                return [value.value]
            if isinstance(value, VariableNode) and variables is not None:
                name = variables.get(value.name.value)
                if isinstance(name, str):
                    return [name]
        return list(self.schema.type_map)

    def selections(
        self, selection_set: SelectionSetNode | None, answer: Answer, visiting: frozenset[str]
    ) -> int:
        if selection_set is None or answer is None or answer is LEAF:
            return 0
        key = (id(selection_set), str(answer)) if isinstance(answer, GraphQLType) else None
        if key is not None and key in self.memo:
            return self.memo[key]
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self._field(selection, answer, visiting)
            elif isinstance(selection, InlineFragmentNode):
                total += self.selections(selection.selection_set, answer, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name not in visiting and name in self.fragments:  # else the validator's
                    fragment = self.fragments[name].selection_set
                    total += self.selections(fragment, answer, visiting | {name})
            if total > self.limit:
                raise Exceeded
        if key is not None:
            self.memo[key] = total
        return total

    def _field(self, node: FieldNode, parent: object, visiting: frozenset[str]) -> int:
        self.spent += 1
        if self.spent > self.limit:
            raise Exceeded
        answer = resolve(self.schema, parent, node.name.value)
        if isinstance(answer, list):
            return 1 + sum(1 + self.selections(node.selection_set, a, visiting) for a in answer)
        return 1 + self.selections(node.selection_set, answer, visiting)


def resolve(schema: GraphQLSchema, parent: object, field: str) -> Answer:
    """What introspection answers for `field` of `parent`, as graphql-core resolves it."""
    if field == "__typename":
        return LEAF
    if isinstance(parent, GraphQLSchema):
        return {
            "types": list(schema.type_map.values()),
            "directives": list(schema.directives),
            "queryType": schema.query_type,
            "mutationType": schema.mutation_type,
            "subscriptionType": schema.subscription_type,
        }.get(field, LEAF)
    if isinstance(parent, GraphQLType):
        return _type_field(schema, parent, field)
    if isinstance(parent, GraphQLField):
        return {"args": list(parent.args.values()), "type": parent.type}.get(field, LEAF)
    if isinstance(parent, GraphQLArgument | GraphQLInputField):
        return parent.type if field == "type" else LEAF
    if isinstance(parent, GraphQLDirective):
        if field == "locations":
            return [LEAF] * len(parent.locations)
        return list(parent.args.values()) if field == "args" else LEAF
    return LEAF  # enum values: scalars only


def _type_field(schema: GraphQLSchema, parent: GraphQLType, field: str) -> Answer:
    if field == "fields":
        if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            return list(parent.fields.values())
        return None
    if field == "interfaces":
        if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            return list(parent.interfaces)
        return None
    if field == "possibleTypes":
        if isinstance(parent, GraphQLInterfaceType | GraphQLUnionType):
            return list(schema.get_possible_types(parent))
        return None
    if field == "enumValues":
        return list(parent.values.values()) if isinstance(parent, GraphQLEnumType) else None
    if field == "inputFields":
        if isinstance(parent, GraphQLInputObjectType):
            return list(parent.fields.values())
        return None
    if field == "ofType":
        return parent.of_type if isinstance(parent, GraphQLWrappingType) else None
    return LEAF
