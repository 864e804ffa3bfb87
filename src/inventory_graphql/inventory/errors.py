"""Failures that are nobody's bug: the database is away, or busy, for a moment."""

from __future__ import annotations

import asyncpg

# Connection refused or dropped, server shutting down or starting up, a pool timing out:
# the request may be retried as it is once the database is back.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InterfaceError,
    # "cannot switch to state ...": a connection left mid-operation when its server went.
    asyncpg.exceptions.InternalClientError,
)

# A row stayed locked past lock_timeout, or a statement ran past statement_timeout (or was
# cancelled): PostgreSQL rolled the statement back.
_BUSY = (asyncpg.exceptions.LockNotAvailableError, asyncpg.exceptions.QueryCanceledError)


class Busy(Exception):
    """Nothing was done, within the deadline: the products are busy, or the queue is full.

    Retriable as it is, after a moment. `skus` names the products found locked, if known.
    """

    def __init__(self, reason: str, skus: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.skus = skus


def is_busy(error: BaseException) -> bool:
    return isinstance(error, (Busy, *_BUSY))


def is_database_unavailable(error: BaseException) -> bool:
    # QueryCanceledError subclasses OperatorInterventionError: a timeout is busy, not away.
    return isinstance(error, _UNAVAILABLE) and not is_busy(error)
