"""Who may do what: admin mutations need the admin token; with a storefront token set,
everything else needs it (or the admin token)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import strawberry
from strawberry.permission import BasePermission


@dataclass(frozen=True)
class Tokens:
    admin: str
    storefront: str | None = None

    def is_admin(self, presented: str | None) -> bool:
        return matches(presented, self.admin)

    def is_shopper(self, presented: str | None) -> bool:
        if self.storefront is None or self.is_admin(presented):
            return True
        return matches(presented, self.storefront)


def matches(presented: str | None, token: str) -> bool:
    """Whether the presented token is this one (in constant time)."""
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())


def bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def connection_token(params: Any) -> str | None:
    """The token in a WebSocket's connection_init payload: {"authorization": "Bearer …"}."""
    if not isinstance(params, dict):
        return None
    value = params.get("authorization") or params.get("Authorization")
    return bearer({"authorization": value}) if isinstance(value, str) else None


class IsAdmin(BasePermission):
    message = "This needs the admin token: send `Authorization: Bearer <INVENTORY_ADMIN_TOKEN>`."
    error_extensions = {"code": "FORBIDDEN"}  # noqa: RUF012 (Strawberry's declared shape)

    def has_permission(self, source: Any, info: strawberry.Info, **kwargs: Any) -> bool:
        return bool(info.context.is_admin)
