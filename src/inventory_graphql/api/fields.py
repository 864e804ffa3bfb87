"""`strawberry.field`, `mutation` and `subscription` as typed decorators.

Used with arguments (`@strawberry.field(description=...)`), Strawberry's decorators are
typed as returning Any, so strict mypy would stop checking every resolver ("untyped
decorator"). These return the resolver's own type: its arguments and its return type
stay checked. At run time they are exactly Strawberry's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import strawberry
from strawberry.permission import BasePermission

Resolver = TypeVar("Resolver", bound=Callable[..., Any])
T = TypeVar("T")


def field(*, description: str) -> Callable[[Resolver], Resolver]:
    return cast(Callable[[Resolver], Resolver], strawberry.field(description=description))


def mutation(
    *, description: str, permission_classes: list[type[BasePermission]] | None = None
) -> Callable[[Resolver], Resolver]:
    return cast(
        Callable[[Resolver], Resolver],
        strawberry.mutation(description=description, permission_classes=permission_classes),
    )


def subscription(*, description: str) -> Callable[[Resolver], Resolver]:
    return cast(Callable[[Resolver], Resolver], strawberry.subscription(description=description))


def given(value: T | None) -> T | None:
    """Arguments are declared without a default (as in the contract): absent means None."""
    return None if value is strawberry.UNSET else value
