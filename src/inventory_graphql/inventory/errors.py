"""Failures that are nobody's bug: the database is away for a moment."""

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
)


def is_database_unavailable(error: BaseException) -> bool:
    return isinstance(error, _UNAVAILABLE)
