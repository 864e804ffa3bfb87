"""What a client sees of an error, and what the log keeps.

Expected failures are union members, never errors. What reaches here is either a GraphQL
error made on purpose (validation, a bad argument, a missing token: shown as it is), a
database outage or a busy product (a clear, retriable error with HTTP 503, code
DATABASE_UNAVAILABLE or BUSY, and Retry-After; either way nothing is held for the
request), or a bug: masked to "Internal server error" with no trace, SQL, driver or file
name, and logged with the request id that the response also carries.
"""

from __future__ import annotations

import logging
import re

import asyncpg
from graphql import GraphQLError
from starlette.responses import Response

from inventory_graphql.api.internals import ErrorMasking
from inventory_graphql.inventory.errors import Busy, is_busy, is_database_unavailable
from inventory_graphql.request_id import current_request_id

log = logging.getLogger(__name__)

UNAVAILABLE_MESSAGE = "The database is unavailable right now; retry shortly."
LOCKED_MESSAGE = "Busy: a product row stayed locked past the lock timeout; nothing was done."
SLOW_MESSAGE = "Busy: the statement ran past its time limit; nothing was done."


# graphql-core's hint, appended to validation and coercion messages ("... Did you mean
# 'adjustStock'?"): in production it would spell out the schema that introspection hides.
SUGGESTION = re.compile(r" Did you mean [^?]*\?$")


def bad_input(message: str) -> GraphQLError:
    """A client's mistake in an argument that has no union member to answer with."""
    return GraphQLError(message, extensions={"code": "BAD_USER_INPUT"})


class ErrorPolicy(ErrorMasking):
    # MaskErrors (ErrorMasking's base) is Strawberry's hook for rewriting errors after
    # execution (streamed subscription results included); we keep its plumbing and decide
    # per error.
    def __init__(self, *, hide_suggestions: bool = False) -> None:
        super().__init__(should_mask_error=lambda _: True)
        self.hide_suggestions = hide_suggestions

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        shown, status = shown_error(error, hide_suggestions=self.hide_suggestions)
        if status is not None:
            self._set_status(status)
        return shown

    def _set_status(self, status: int) -> None:
        response = getattr(self.execution_context.context, "response", None)
        if response is not None:
            set_retriable_status(response, status)


def set_retriable_status(response: Response, status: int) -> None:
    response.status_code = status
    response.headers["Retry-After"] = "1"


def shown_error(error: GraphQLError, *, hide_suggestions: bool) -> tuple[GraphQLError, int | None]:
    """What a client is shown of `error`, and the HTTP status it calls for (None: 200)."""
    request_id = current_request_id()
    original = error.original_error
    extensions = dict(error.extensions or {})
    message = error.message
    status = None
    if original is not None and not isinstance(original, GraphQLError):
        if is_busy(original):
            log.debug("busy [request %s]: %r", request_id, original)
            if isinstance(original, Busy):
                message = f"Busy: {original.reason}"
            elif isinstance(original, asyncpg.exceptions.LockNotAvailableError):
                message = LOCKED_MESSAGE
            else:
                message = SLOW_MESSAGE
            extensions.update(code="BUSY", retriable=True)
            status = 503
        elif is_database_unavailable(original):
            log.warning("database unavailable [request %s]: %r", request_id, original)
            message = UNAVAILABLE_MESSAGE
            extensions.update(code="DATABASE_UNAVAILABLE", retriable=True)
            status = 503
        else:
            log.error(
                "internal error [request %s] at %s",
                request_id,
                error.path,
                exc_info=(type(original), original, original.__traceback__),
            )
            message = "Internal server error."
            extensions.update(code="INTERNAL_SERVER_ERROR")
    extensions["requestId"] = request_id
    if hide_suggestions:
        message = SUGGESTION.sub("", message)
    shown = GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions=extensions,
    )
    return shown, status
