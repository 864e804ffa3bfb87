"""Which operation of a document a request runs, as GraphQL over HTTP and the GraphQL spec
say, checked before Strawberry picks one.

Strawberry runs a document's first operation when the request names none, even when the
document holds several (GraphQL's GetOperation says that is a request error), and answers
an unknown operationName or a mutation over GET as plain text. Here those become request
errors in the answer's own JSON: over GET, a mutation is a 405 with `Allow: POST`.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphql import DocumentNode, OperationDefinitionNode, OperationType


@dataclass(frozen=True)
class Refusal:
    message: str  # the request error's
    status: int = 200  # the view's status; the media type layer makes 400 of 200 as needed
    allow: str | None = None


def refusal(document: DocumentNode, operation_name: str | None, method: str) -> Refusal | None:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is None:
        if len(operations) > 1:
            return Refusal("Must provide operation name if query contains multiple operations.")
        chosen = operations[0] if operations else None
    else:
        chosen = next(
            (o for o in operations if o.name is not None and o.name.value == operation_name),
            None,
        )
        if chosen is None:
            return Refusal(f'Unknown operation named "{operation_name}".')
    if method == "GET" and chosen is not None and chosen.operation is not OperationType.QUERY:
        kind = chosen.operation.value
        return Refusal(
            f"A {kind} cannot be sent with GET: send it with POST.", status=405, allow="POST"
        )
    return None
