"""Named admin tokens: INVENTORY_ADMIN_TOKENS read at start (a bad entry refused by its
place, never echoing a token), and each bearer known by its token's name."""

from __future__ import annotations

import pytest

from inventory_graphql.api.auth import Tokens
from inventory_graphql.config import ConfigError, Settings
from inventory_graphql.inventory.models import ANONYMOUS, Caller

ANN = "ann-token-0123456789"
BOB = "bob-token-0123456789"


def test_named_tokens_are_read_beside_the_single_one() -> None:
    settings = Settings.from_env(
        {"INVENTORY_ADMIN_TOKEN": "single", "INVENTORY_ADMIN_TOKENS": f"ann:{ANN}, bob.b@x:{BOB}"}
    )
    assert settings.admin_token == "single"
    assert settings.admin_tokens == (("ann", ANN), ("bob.b@x", BOB))


def test_a_token_may_hold_colons() -> None:
    settings = Settings.from_env({"INVENTORY_ADMIN_TOKENS": f"ann:{ANN}:more"})
    assert settings.admin_tokens == (("ann", f"{ANN}:more"),)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (f"{ANN}", "entry 1: its name"),  # no name at all
        (f"ann:{ANN},bad name:{BOB}", "entry 2: its name"),
        (f"ann:{ANN},{'n' * 65}:{BOB}", "entry 2: its name"),
        (f"admin:{ANN}", "entry 1: its name"),  # INVENTORY_ADMIN_TOKEN's name
        ("ann:short", "entry 1: its token"),
        (f"ann:{ANN} x", "entry 1: its token"),
        (f"ann:{ANN},ann:{BOB}", "entry 2: a name or token given twice"),
        (f"ann:{ANN},bob:{ANN}", "entry 2: a name or token given twice"),
        (f"ann:{ANN},", "entry 2: its name"),
    ],
)
def test_a_bad_entry_is_refused_by_its_place_without_echoing_tokens(raw: str, why: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"INVENTORY_ADMIN_TOKENS": raw})
    message = str(refused.value)
    assert message.startswith("INVENTORY_ADMIN_TOKENS is not valid"), message
    assert why in message, message
    assert ANN not in message and BOB not in message and "short" not in message


def test_each_admin_bearer_is_known_by_its_name() -> None:
    tokens = Tokens(admin="single-admin", named_admins=(("ann", ANN), ("bob", BOB)))
    assert tokens.caller("single-admin") == Caller(admin=True, actor="admin")
    assert tokens.caller(ANN) == Caller(admin=True, actor="ann")
    assert tokens.caller(BOB) == Caller(admin=True, actor="bob")
    assert tokens.is_admin(BOB) and not tokens.is_admin(BOB[:-1])
    assert tokens.caller(ANN + "x") == ANONYMOUS
    assert tokens.caller(None) == ANONYMOUS
