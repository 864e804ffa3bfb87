"""A guard graphql-core lacks: fragments that expand exponentially.

`fragment A { ...B ...B } fragment B { ...C ...C } ...`: forty such fragments are a few
hundred tokens and one level deep, yet expand to 2^40 fields; validating them
(OverlappingFieldsCanBeMerged) alone takes minutes. The token, alias and depth limits do
not see it. So before validation the document's fields are counted as executed, with
fragments expanded (memoised: linear in the document), and a document over the limit is
refused without being validated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from graphql import (
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from starlette.websockets import WebSocket
from strawberry.extensions import ValidationCache
from strawberry.types.graphql import OperationType


def expanded_field_count(document: DocumentNode) -> int:
    """The most fields any operation in `document` selects once fragments are expanded."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    sizes: dict[str, int] = {}

    def fragment_size(name: str, visiting: frozenset[str]) -> int:
        if name in sizes:
            return sizes[name]
        if name in visiting or name not in fragments:
            return 0  # cycles and unknown fragments are the validator's to report
        sizes[name] = size = selection_size(fragments[name].selection_set, visiting | {name})
        return size

    def selection_size(selection_set: SelectionSetNode | None, visiting: frozenset[str]) -> int:
        total = 0
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                total += 1 + selection_size(selection.selection_set, visiting)
            elif isinstance(selection, InlineFragmentNode):
                total += selection_size(selection.selection_set, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                total += fragment_size(selection.name.value, visiting)
        return total

    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    return max((selection_size(op.selection_set, frozenset()) for op in operations), default=0)


class RequestGuards(ValidationCache):
    """Every limit a document meets before it runs, and the validation cache, in one.

    One extension rather than four (MaxTokensLimiter, AddValidationRules for the alias
    and depth rules, the refusals below, ValidationCache): Strawberry consults every
    extension again for each subscription event, so each one costs on every update it
    fans out. Strawberry's ValidationCache validates whatever it is given; refusing first,
    in the same hook, keeps an exploding document away from the validator.
    """

    def __init__(
        self,
        *,
        max_tokens: int,
        max_fields: int,
        rules: Sequence[type[ASTValidationRule]],
        maxsize: int,
    ) -> None:
        super().__init__(maxsize=maxsize)
        self.max_tokens = max_tokens
        self.max_fields = max_fields
        self.rules = tuple(rules)

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = self.max_tokens
        context.validation_rules = context.validation_rules + self.rules
        yield

    def on_validate(self) -> Iterator[None]:
        if refusal := self._refusal():
            self.execution_context.pre_execution_errors = [refusal]
            yield
            return
        yield from super().on_validate()

    def _refusal(self) -> GraphQLError | None:
        context = self.execution_context
        document = context.graphql_document
        if document is None:
            return None
        fields = expanded_field_count(document)
        if fields > self.max_fields:
            return GraphQLError(
                f"Query selects {fields} fields once fragments are expanded; "
                f"the limit is {self.max_fields}.",
                extensions={"code": "QUERY_TOO_COMPLEX"},
            )
        # Strawberry would run a subscription sent over plain HTTP as if it were a query.
        with contextlib.suppress(RuntimeError):  # no such operation: the validator says so
            if context.operation_type is OperationType.SUBSCRIPTION and not isinstance(
                getattr(context.context, "request", None), WebSocket
            ):
                return GraphQLError(
                    "Subscriptions are served over WebSocket (graphql-transport-ws) at /graphql.",
                    extensions={"code": "BAD_REQUEST"},
                )
        return None
