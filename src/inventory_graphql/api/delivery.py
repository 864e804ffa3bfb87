"""Availability updates sent straight to a subscriber's WebSocket, rendered once for all.

Strawberry runs every event of every subscription through its whole pipeline: graphql-core
builds and runs an executor for it, every extension sees it, the handler builds and
encodes a message. A change watched by 5,000 product pages meant 5,000 identical
executions. After its first result (which takes the ordinary path, so validation,
variables and errors are Strawberry's), a subscription over graphql-transport-ws hands its
updates to a Delivery instead: graphql-core still executes the subscriber's selection, but
once per (update, selection) in the process, and every subscriber who asked the same gets
the same JSON text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from graphql import FieldNode, FragmentSpreadNode, GraphQLResolveInfo, Node, VariableNode
from starlette.websockets import WebSocket, WebSocketDisconnect

from inventory_graphql.api.internals import (
    Executor,
    LiveOperation,
    current_operation,
    execute_event,
    subscription_executor,
)


class Renderings:
    """Rendered `payload` texts by (selection, update); one per process, in the lifespan."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self._texts: dict[tuple[object, int], tuple[object, str]] = {}
        self._max_entries = max_entries

    def get(self, selection: object, update: object) -> str | None:
        # Keyed by the update's identity: the hub hands the same object to every mailbox.
        # The entry holds the object, so its id cannot be reused while the entry lives.
        found = self._texts.get((selection, id(update)))
        return found[1] if found is not None and found[0] is update else None

    def put(self, selection: object, update: object, text: str) -> None:
        if len(self._texts) >= self._max_entries:
            self._texts.clear()  # rarely: updates are short-lived, a cold start is cheap
        self._texts[(selection, id(update))] = (update, text)


class Delivery:
    """One subscription's direct line to its WebSocket."""

    def __init__(
        self,
        info: GraphQLResolveInfo[Any],
        operation: LiveOperation,
        socket: WebSocket,
        renderings: Renderings,
    ) -> None:
        self._info = info
        self._renderings = renderings
        self._operation = operation
        self._socket = socket
        self._executor: Executor | None = None
        self._prefix = f'{{"id":{orjson.dumps(operation.id).decode()},"type":"next","payload":'
        # What the rendering depends on: the document, and the values of the variables
        # the selection uses (not the root field's arguments, so pages watching different
        # skus with one document share their renderings).
        used = sorted(_variables_in(info.field_nodes, info))
        variables = operation.variables or {}
        self.selection = (
            operation.query,
            operation.operation_name,
            orjson.dumps([(name, variables.get(name)) for name in used]),
        )

    @classmethod
    def open(cls, info: GraphQLResolveInfo[Any], renderings: Renderings | None) -> Delivery | None:
        """A direct line, or None outside a graphql-transport-ws operation (or when direct
        delivery is off: then there are no renderings, and no operation is recorded)."""
        operation = current_operation()
        socket = getattr(info.context, "request", None)
        if operation is None or renderings is None or not isinstance(socket, WebSocket):
            return None
        return cls(info, operation, socket, renderings)

    async def render(self, change: Any, to_payload: Callable[[Any], object]) -> str | None:
        """The `payload` JSON for a change (the object the hub shares between mailboxes),
        executed on `to_payload(change)`; None when executing it gave errors."""
        if (text := self._renderings.get(self.selection, change)) is not None:
            return text
        if self._executor is None:
            self._executor = subscription_executor(
                self._info, self._operation.variables, self._operation.operation_name
            )
        result = await execute_event(self._executor, to_payload(change))
        if result.errors:
            return None  # the ordinary path reports errors the way Strawberry does
        text = orjson.dumps({"data": result.data}).decode()
        self._renderings.put(self.selection, change, text)
        return text

    async def send(self, payload: str) -> None:
        if self._operation.completed():
            return
        try:
            await self._socket.send_text(f"{self._prefix}{payload}}}")
        except WebSocketDisconnect:
            # The connection's handler has seen it too and cancels this operation; wait
            # for that instead of ending the stream (its `complete` could not be sent).
            await asyncio.Future()


def _variables_in(fields: list[FieldNode], info: GraphQLResolveInfo[Any]) -> set[str]:
    """Variables used by the fields' directives and selections (fragments followed)."""
    found: set[str] = set()
    seen_fragments: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, VariableNode):
            found.add(node.name.value)
        elif isinstance(node, FragmentSpreadNode):
            for directive in node.directives or ():
                walk(directive)
            name = node.name.value
            if name not in seen_fragments and name in info.fragments:
                seen_fragments.add(name)
                walk(info.fragments[name])
        elif isinstance(node, Node):
            for key in node.keys:
                walk(getattr(node, key, None))
        elif isinstance(node, tuple | list):
            for item in node:
                walk(item)

    for field in fields:
        walk(field.directives)
        walk(field.selection_set)
    return found
