"""Per-operation metrics: how many, how long, how many failed, by root field."""

from __future__ import annotations

import time
from collections.abc import Iterator

from graphql import DocumentNode, FieldNode, GraphQLSchema, OperationDefinitionNode
from strawberry.extensions import SchemaExtension

from inventory_graphql.api.internals import core_schema


class OperationMetrics(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        metrics = getattr(self.execution_context.context, "metrics", None)
        if metrics is None:
            return
        field, kind = self._labels()
        metrics.operations.labels(field, kind).observe(time.perf_counter() - started)
        result = self.execution_context.result
        if result is not None and getattr(result, "errors", None):
            metrics.operation_errors.labels(field, kind).inc()

    def _labels(self) -> tuple[str, str]:
        document = self.execution_context.graphql_document
        if document is None:
            return "invalid", "unknown"
        return operation_labels(document, core_schema(self.execution_context.schema))


def operation_labels(document: DocumentNode, schema: GraphQLSchema | None) -> tuple[str, str]:
    """The labels of `document`'s operation: its first root field, and its kind.

    The root field, not the client's operation name: names are free text and would give
    an attacker unbounded label cardinality; fields are bounded by the schema.
    """
    if schema is None:
        return "unknown", "unknown"
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            kind = definition.operation.value
            root = {
                "query": schema.query_type,
                "mutation": schema.mutation_type,
                "subscription": schema.subscription_type,
            }[kind]
            for selection in definition.selection_set.selections:
                if isinstance(selection, FieldNode):
                    name = selection.name.value
                    known = root is not None and name in root.fields
                    return (name if known or name == "__typename" else "invalid"), kind
            return "fragment", kind
    return "invalid", "unknown"
