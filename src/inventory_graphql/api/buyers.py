"""Buyer tokens: HS256 JWTs that the shop's backend mints with the shared secret
INVENTORY_BUYER_TOKEN_SECRET; `sub` names the buyer, `exp` is required.

The service keeps no sessions and no list of buyers: a token that verifies is the buyer
it names, until it expires. Tokens are never logged.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from typing import Literal

import jwt

ALGORITHM = "HS256"  # pinned: a token naming any other algorithm (or none) is refused
MAX_BUYER_ID = 255
DEFAULT_TTL_SECONDS = 3600
# Clock drift allowed between the shop's backend and this service when checking `exp`.
LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class TokenRefused:
    """A buyer token that cannot be used; the request is answered 401 and nothing runs."""

    reason: Literal["EXPIRED", "INVALID"]
    detail: str

    @property
    def message(self) -> str:
        if self.reason == "EXPIRED":
            return "The buyer token has expired: get a new one from the shop."
        return f"The buyer token is invalid: {self.detail}."


def check_buyer_id(buyer: object) -> str | None:
    """Why `buyer` cannot be a buyer id (1-255 characters, no control characters)."""
    if not isinstance(buyer, str) or not 1 <= len(buyer) <= MAX_BUYER_ID:
        return f"the buyer id must be 1 to {MAX_BUYER_ID} characters"
    # Cc (NUL, newlines, escapes) and Cf/Cs/Co/Cn: nothing a log line or a key should carry.
    if any(unicodedata.category(c).startswith("C") for c in buyer):
        return "the buyer id must not contain control characters"
    return None


class BuyerTokens:
    """Mints and verifies buyer tokens with one secret."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def mint(self, buyer: str, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> str:
        if problem := check_buyer_id(buyer):
            raise ValueError(problem)
        if ttl_seconds < 1:
            raise ValueError("the ttl must be at least 1 second")
        now = int(time.time())
        claims = {"sub": buyer, "iat": now, "exp": now + ttl_seconds}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> str | TokenRefused:
        """The buyer the token names, or why it is refused."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "sub"]},
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            return TokenRefused("EXPIRED", "it has expired")
        except jwt.InvalidSignatureError:
            return TokenRefused("INVALID", "its signature does not verify")
        except jwt.InvalidAlgorithmError:
            return TokenRefused("INVALID", f"it must be signed with {ALGORITHM}")
        except jwt.MissingRequiredClaimError as missing:
            return TokenRefused("INVALID", f"it has no `{missing.claim}` claim")
        except jwt.ImmatureSignatureError:
            return TokenRefused("INVALID", "it is not valid yet (`nbf` or `iat` in the future)")
        except jwt.InvalidTokenError:
            # Malformed: not base64url, not JSON, a claim of the wrong type, not yet valid.
            return TokenRefused("INVALID", "it is not a well-formed JWT")
        buyer = claims["sub"]
        if problem := check_buyer_id(buyer):
            return TokenRefused("INVALID", problem)
        assert isinstance(buyer, str)
        return buyer
