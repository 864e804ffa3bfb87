"""Every limit a request meets before it runs, and the time budget while a query runs.

In order, before validation (a refused document is never validated): at most `max_tokens`
tokens (the parser's), at most `max_fields` fields once fragments are expanded, variables
of at most `max_variable_values` values nested at most `max_variable_depth` deep, a cost
within the cost model's limit (query_cost.py), subscriptions only over WebSocket, and
last the client's cost budget pays for it (cost_budget.py).
Then the alias and depth rules run with validation, whose answer is kept with the
document (document_cache.py).

Fragments that expand exponentially are a guard graphql-core lacks: `fragment A { ...B
...B } fragment B { ...C ...C } ...`, forty of them, are a few hundred tokens and one level
deep, yet expand to 2^40 fields; validating them (OverlappingFieldsCanBeMerged) alone
takes minutes. So the document's fields are counted as executed, with fragments expanded
(memoised: linear in the document).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

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
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from inventory_graphql.api.client_limits import client_of
from inventory_graphql.api.cost_budget import HOLD_SECONDS, CostBudget, OverBudget
from inventory_graphql.api.document_cache import CachedDocument, DocumentCache
from inventory_graphql.api.query_cost import CostModel
from inventory_graphql.request_id import current_request_id


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


def variable_values(variables: object, max_values: int, max_depth: int) -> tuple[int, str | None]:
    """How many values these variables hold (lists and objects count too), and why they
    are too big to coerce, if they are: counting stops at the limit (a 64 KiB list holds
    30,000 items)."""
    if not isinstance(variables, dict):
        return 0, None  # Strawberry refuses what is not an object
    counted = 0
    pending: list[Iterator[object]] = [iter(variables.values())]
    while pending:
        value = next(pending[-1], pending)  # the list itself marks the end
        if value is pending:
            pending.pop()
            continue
        counted += 1
        if counted > max_values:
            return counted, (
                f"Variables hold more than {max_values} values (each list item and object "
                f"field counts); the limit is {max_values}."
            )
        if isinstance(value, dict | list):
            if len(pending) >= max_depth:
                return counted, (
                    f"Variables nest deeper than {max_depth} levels; the limit is {max_depth}."
                )
            pending.append(iter(value.values() if isinstance(value, dict) else value))
    return counted, None


@dataclass(frozen=True)
class Limits:
    max_tokens: int
    max_fields: int
    max_variable_values: int
    max_variable_depth: int
    query_timeout_seconds: float | None = None  # None: queries run as long as they take
    # For admin callers (operators, not shoppers): a bulk write's variables are larger.
    admin_variable_values: int = 0


@dataclass
class Guards:
    """What one schema's requests share: the limits, the validation rules every request
    adds, the document cache and (once the schema exists) the cost model."""

    limits: Limits
    rules: tuple[type[ASTValidationRule], ...]
    documents: DocumentCache
    costs: CostModel | None = None


class RequestGuards(SchemaExtension):
    """The guards, the parse and validation caches and the time budget, in one extension.

    One rather than several (MaxTokensLimiter, AddValidationRules for the alias and depth
    rules, the refusals, the caches): Strawberry consults every extension again for each
    subscription event, so each one costs on every update it fans out.
    """

    def __init__(self, guards: Guards) -> None:
        super().__init__()
        self.guards = guards
        self.entry: CachedDocument | None = None
        self.charged = False  # to the client's cost budget
        self.pause = 0.0  # seconds to hold back a RATE_LIMITED answer

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = self.guards.limits.max_tokens
        context.validation_rules = context.validation_rules + self.guards.rules
        yield

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        documents, text = self.guards.documents, context.query
        entry = documents.get(text) if text else None
        if context.graphql_document is None and text:
            if entry is None:
                # Unparseable: Strawberry parses it again, within its own error handling.
                with contextlib.suppress(GraphQLError):
                    entry = CachedDocument.parse(text, **context.parse_options)
                    documents.put(text, entry)
            if entry is not None:
                context.graphql_document = entry.document
        elif entry is not None and entry.document is not context.graphql_document:
            entry = None  # someone else's document: nothing known about it is kept
        self.entry = entry
        yield

    async def on_validate(self) -> AsyncIterator[None]:
        context = self.execution_context
        if refusal := self._refusal():
            if self.pause:
                # Refused for spending too fast: answered when a retry would be let in
                # (at most HOLD_SECONDS; only this operation waits), so a client looping
                # on refusals (subscribe/complete over a WebSocket, say) is paced by its
                # budget, not by how fast it can be refused. (HTTP requests are also
                # held at the door: cost_budget.BudgetGate.)
                await asyncio.sleep(self.pause)
            context.pre_execution_errors = [refusal]
            yield
            return
        entry, rules = self.entry, context.validation_rules
        if entry is not None and entry.validated_with == rules:
            context.pre_execution_errors = list(entry.errors)  # Strawberry skips validating
            yield
            return
        yield  # Strawberry validates
        if entry is not None and context.pre_execution_errors is not None:
            entry.validated_with, entry.errors = rules, tuple(context.pre_execution_errors)

    async def on_execute(self) -> AsyncIterator[None]:
        # Queries only: a mutation cancelled after its commit would be answered with an
        # error while its change stands, and every wait in one is bounded already (locks,
        # statements, pool, the reserve deadline, whose give-back on cancel stays as it is).
        budget = self.guards.limits.query_timeout_seconds
        if budget is None or self._operation_type() is not OperationType.QUERY:
            yield
            return
        # Cancellation lands only at an await (a database read, a DataLoader): CPU spent
        # between awaits is the cost limit's to bound, not this.
        try:
            async with asyncio.timeout(budget):
                yield
        except TimeoutError:
            raise self._timed_out(budget) from None

    def _operation_type(self) -> OperationType | None:
        with contextlib.suppress(RuntimeError):  # no such operation: the validator says so
            return self.execution_context.operation_type
        return None

    def _timed_out(self, budget: float) -> GraphQLError:
        response = getattr(self.execution_context.context, "response", None)
        if response is not None:
            response.status_code = 503
            response.headers["Retry-After"] = "1"
        return timed_out(budget)

    def _refusal(self) -> GraphQLError | None:
        context = self.execution_context
        document = context.graphql_document
        if document is None:
            return None
        limits, entry = self.guards.limits, self.entry
        if entry is None or entry.document is not document:
            entry = CachedDocument(document, 0)  # set by someone else: nothing to keep
        if entry.fields is None:
            entry.fields = expanded_field_count(document)
        if entry.fields > limits.max_fields:
            return GraphQLError(
                f"Query selects {entry.fields} fields once fragments are expanded; "
                f"the limit is {limits.max_fields}.",
                extensions={"code": "QUERY_TOO_COMPLEX"},
            )
        max_values = limits.max_variable_values
        if getattr(context.context, "is_admin", False):
            max_values = max(max_values, limits.admin_variable_values)
        values, problem = variable_values(context.variables, max_values, limits.max_variable_depth)
        if problem:
            return GraphQLError(problem, extensions={"code": "VARIABLES_TOO_LARGE"})
        cost, refusal = self._priced(entry)
        if refusal:
            return refusal
        # Strawberry would run a subscription sent over plain HTTP as if it were a query.
        if self._operation_type() is OperationType.SUBSCRIPTION and not isinstance(
            getattr(context.context, "request", None), WebSocket
        ):
            return GraphQLError(
                "Subscriptions are served over WebSocket (graphql-transport-ws) at /graphql.",
                extensions={"code": "BAD_REQUEST"},
            )
        # Last: an operation refused for what it is spends nothing.
        return self._over_budget(cost + values)

    def _over_budget(self, price: int) -> GraphQLError | None:
        """The client's cost budget (cost_budget.py) pays for the operation, or refuses."""
        context = self.execution_context.context
        budget: CostBudget | None = getattr(context, "cost_budget", None)
        # Charged once per operation (Strawberry may consult the hooks again per event);
        # admin callers are operators, not shoppers.
        if budget is None or self.charged or getattr(context, "is_admin", False):
            return None
        self.charged = True
        request = getattr(context, "request", None)
        client = client_of(request.scope) if request is not None else ""
        over = budget.spend(client, price)
        if over is None:
            return None
        self.pause = min(over.retry_after, HOLD_SECONDS)
        response = getattr(context, "response", None)
        if response is not None:  # HTTP: 429, and when to come back
            response.status_code = 429
            response.headers["Retry-After"] = str(math.ceil(over.retry_after))
        return rate_limited(over)

    def _priced(self, entry: CachedDocument) -> tuple[int, GraphQLError | None]:
        context = self.execution_context
        return priced(self.guards, entry, context.operation_name, context.variables)


def timed_out(budget: float) -> GraphQLError:
    # Like BUSY: nothing was done, so it may be retried as it is (HTTP 503).
    return GraphQLError(
        f"The query ran past its time limit ({budget:g} s); nothing was changed.",
        extensions={"code": "TIMEOUT", "retriable": True, "requestId": current_request_id()},
    )


def rate_limited(over: OverBudget) -> GraphQLError:
    return GraphQLError(
        over.message,
        extensions={
            "code": "RATE_LIMITED",
            "retriable": True,
            "retryAfterSeconds": over.retry_after,
            "price": over.price,
        },
    )


def priced(
    guards: Guards, entry: CachedDocument, name: str | None, variables: object
) -> tuple[int, GraphQLError | None]:
    """The operation's cost, and the refusal if it is over the limit."""
    model = guards.costs
    if model is None:
        return 0, None
    if name in entry.costs:
        cost = entry.costs[name]
    else:
        cost = model.cost(entry.document, name)
        # Kept for the names the document has (a client-chosen name would grow this).
        if name is None or any(
            isinstance(d, OperationDefinitionNode) and d.name and d.name.value == name
            for d in entry.document.definitions
        ):
            entry.costs[name] = cost
    if (cost is None or cost > model.limit) and isinstance(variables, dict) and variables:
        cost = model.cost(entry.document, name, variables)  # the values given
    if cost is not None and cost <= model.limit:
        return cost, None
    stated = f"costs {cost}" if cost is not None else f"costs more than {model.limit}"
    return model.limit, GraphQLError(
        f"Query {stated}; the limit is {model.limit}. Each field costs 1 (more if it "
        "reads the database), times the most items of every list it is in: ask for "
        "fewer items (`first`, `skus`) or fewer fields.",
        extensions={"code": "QUERY_TOO_EXPENSIVE", "cost": cost, "limit": model.limit},
    )
