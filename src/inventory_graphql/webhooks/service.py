"""Webhook endpoints as the API sees them: create (checked), delete, list; and the
process's delivery worker while the app runs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg

from inventory_graphql.config import Settings
from inventory_graphql.webhooks import signing, store
from inventory_graphql.webhooks.delivery import WebhookWorker
from inventory_graphql.webhooks.destinations import destination_refusal, malformed_url
from inventory_graphql.webhooks.store import Endpoint

MAX_ID = 2**31 - 1


@dataclass(frozen=True)
class Created:
    endpoint: Endpoint
    secret: str  # whsec_<base64>: shown once, never again


@dataclass(frozen=True)
class Invalid:
    field: str
    message: str


@dataclass(frozen=True)
class NotFound:
    id: str

    @property
    def message(self) -> str:
        return f"no webhook {self.id}"


@dataclass(frozen=True)
class NotAllowed:
    url: str
    reason: str

    @property
    def message(self) -> str:
        return f"webhooks may not be sent to {self.url}: {self.reason}"


@dataclass(frozen=True)
class LimitReached:
    limit: int

    @property
    def message(self) -> str:
        return f"there are {self.limit} webhooks already (INVENTORY_WEBHOOK_MAX_ENDPOINTS)"


CreateOutcome = Created | Invalid | NotAllowed | LimitReached
DeleteOutcome = Endpoint | NotFound


class WebhookService:
    def __init__(self, pool: asyncpg.Pool, database_url: str, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self.worker = WebhookWorker(database_url, pool, settings) if settings.webhooks else None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Deliver while the app runs (unless INVENTORY_WEBHOOKS is off)."""
        if self.worker is None:
            yield
            return
        async with self.worker.running():
            yield

    async def create(
        self, url: str, kinds: Sequence[str] | None, created_by: str | None
    ) -> CreateOutcome:
        if (malformed := malformed_url(url)) is not None:
            return Invalid("url", f"url: {malformed}")
        if kinds is not None and not kinds:
            return Invalid("kinds", "kinds: at least one kind, or null for every kind")
        allowed = self._settings.webhook_allowed_hosts
        if (refused := await destination_refusal(url, allowed)) is not None:
            return NotAllowed(url, refused)
        limit = self._settings.webhook_max_endpoints
        unique = None if kinds is None else sorted(set(kinds))
        made = await store.create(self._pool, url, unique, created_by, limit)
        if made is None:
            return LimitReached(limit)
        endpoint, secret = made
        return Created(endpoint, signing.show_secret(secret))

    async def delete(self, id_: str) -> DeleteOutcome:
        number = _id(id_)
        if number is None:
            return NotFound(id_[:100])
        found = await store.delete(self._pool, number)
        return NotFound(id_) if found is None else found

    async def endpoints(self) -> list[Endpoint]:
        return await store.endpoints(self._pool)


def _id(text: str) -> int | None:
    if not (0 < len(text) <= 10 and text.isascii() and text.isdigit()):
        return None
    return int(text) if 0 < int(text) <= MAX_ID else None
