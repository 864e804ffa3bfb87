"""Settings, read once from the environment.

Each variable is declared once, beside its field: its name, its default and how its text
is read. A value that cannot be read is refused at start with the variable's name and
what it accepts; a typo never falls back to a default. Every variable is in the README.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import platformdirs

from inventory_graphql.webhooks.destinations import AllowedHosts

T = TypeVar("T")
LogFormat = Literal["text", "json"]


class ConfigError(ValueError):
    """A variable's value cannot be used; the message names it and what it accepts."""


Reader = Callable[[str], Any]  # the variable's text -> the field's value; ValueError if bad


def _integer(low: int, high: int | None = None) -> Reader:
    accepts = f"an integer from {low}" + (f" to {high}" if high is not None else " up")

    def read(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(accepts) from None
        if value < low or (high is not None and value > high):
            raise ValueError(accepts)
        return value

    return read


def _number(low: float, *, above: bool = False) -> Reader:
    accepts = f"a number {'above' if above else 'from'} {low:g}" + ("" if above else " up")

    def read(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(accepts) from None
        if not math.isfinite(value) or not (value > low if above else value >= low):
            raise ValueError(accepts)
        return value

    return read


_SWITCH = {"on": True, "true": True, "1": True, "yes": True}
_SWITCH.update({"off": False, "false": False, "0": False, "no": False})


def _switch(raw: str) -> bool:
    try:
        return _SWITCH[raw.strip().lower()]
    except KeyError:
        raise ValueError(f"one of {', '.join(_SWITCH)}") from None


def _choice(*accepted: str) -> Reader:
    def read(raw: str) -> str:
        if raw.strip().lower() not in accepted:
            raise ValueError(f"one of {', '.join(accepted)}")
        return raw.strip().lower()

    return read


def _text(raw: str) -> str:
    return raw


def _secret_key(raw: str) -> str:
    # HS256 wants a key of at least its hash's 32 bytes (RFC 7518 3.2); a shorter one can
    # be guessed offline from any token it signed.
    if len(raw.encode()) < 32:
        raise ValueError("at least 32 bytes (for instance `openssl rand -hex 32`)")
    return raw


ADMIN_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
MIN_NAMED_ADMIN_TOKEN = 16
# The lowest CPU priority a process can step to (webhooks/process.py: also SCHED_IDLE there).
MAX_NICENESS = 19
AdminTokens = tuple[tuple[str, str], ...]  # (name, token)


def _admin_tokens(raw: str) -> AdminTokens:
    # The name of each admin token goes into the ledger and the stock events as `actor`.
    # Errors name the entry by its place only: a mistyped entry may be all token.
    accepts = (
        "name:token pairs separated by commas, each name 1-64 characters of A-Z a-z 0-9 "
        f". _ @ - (not `admin`, INVENTORY_ADMIN_TOKEN's), each token at least "
        f"{MIN_NAMED_ADMIN_TOKEN} characters without spaces or commas, names and tokens unique"
    )
    pairs: list[tuple[str, str]] = []
    for place, entry in enumerate(raw.split(","), 1):
        name, colon, token = entry.strip().partition(":")
        if not colon or not ADMIN_NAME.fullmatch(name) or name == "admin":
            raise ValueError(f"{accepts} (entry {place}: its name)")
        if len(token) < MIN_NAMED_ADMIN_TOKEN or any(c.isspace() for c in token):
            raise ValueError(f"{accepts} (entry {place}: its token)")
        if any(name == n or token == t for n, t in pairs):
            raise ValueError(f"{accepts} (entry {place}: a name or token given twice)")
        pairs.append((name, token))
    return tuple(pairs)


def _env_is_production(raw: str) -> bool:
    # Anything but "production" is a development setup (the README's documented values).
    value: str = _choice("production", "development")(raw)
    return value == "production"


def _setting(variable: str, default: T, read: Reader, *, secret: bool = False) -> T:
    """A field read from `variable` (unset or empty: the default). A `secret`'s value is
    never repeated in an error."""
    return dataclasses.field(
        default=default, metadata={"env": variable, "read": read, "secret": secret}
    )


@dataclass(frozen=True)
class Settings:
    database_url: str | None = _setting("DATABASE_URL", None, _text)
    data_dir: Path = _setting(
        "INVENTORY_DATA_DIR", Path(platformdirs.user_data_dir("inventory-graphql")), Path
    )
    hold_ttl_seconds: int = _setting("INVENTORY_HOLD_TTL_SECONDS", 600, _integer(1, 86_400))
    # The longest a hold may live from its creation, however often it is extended.
    max_hold_seconds: int = _setting("INVENTORY_MAX_HOLD_SECONDS", 1800, _integer(1, 86_400))
    # Buyers (api/buyers.py): the shared secret the shop's backend signs buyer tokens
    # (HS256 JWTs) with. Unset: every caller is anonymous, and a product with a purchase
    # limit cannot be reserved (BuyerRequired).
    buyer_token_secret: str | None = _setting(
        "INVENTORY_BUYER_TOKEN_SECRET", None, _secret_key, secret=True
    )
    # Caps for everyone: units per cart line, and PENDING holds per buyer (0: no cap).
    max_units_per_line: int = _setting(
        "INVENTORY_MAX_UNITS_PER_LINE", 1_000_000, _integer(1, 1_000_000)
    )
    max_pending_holds_per_buyer: int = _setting(
        "INVENTORY_MAX_PENDING_HOLDS_PER_BUYER", 0, _integer(0)
    )
    # How long a hold offered to the head of a waiting list lasts.
    waitlist_hold_seconds: int = _setting(
        "INVENTORY_WAITLIST_HOLD_SECONDS", 300, _integer(1, 86_400)
    )
    pool_size: int = _setting("INVENTORY_DB_POOL_SIZE", 8, _integer(1, 1000))
    sweep_interval_seconds: float = _setting(
        "INVENTORY_SWEEP_INTERVAL_SECONDS", 0.5, _number(0, above=True)
    )
    sweep_batch_size: int = _setting("INVENTORY_SWEEP_BATCH_SIZE", 500, _integer(1))
    max_subscriptions_per_connection: int = _setting(
        "INVENTORY_MAX_SUBSCRIPTIONS_PER_CONNECTION", 16, _integer(1)
    )
    # Per client address (api/client_limits.py), 0: no limit. 800 subscriptions from one
    # client cut hot-product reserves to a quarter; 64 leave room for a few full tabs.
    max_ws_connections_per_client: int = _setting(
        "INVENTORY_MAX_WS_CONNECTIONS_PER_CLIENT", 32, _integer(0)
    )
    max_subscriptions_per_client: int = _setting(
        "INVENTORY_MAX_SUBSCRIPTIONS_PER_CLIENT", 64, _integer(0)
    )
    # Subscriptions started per client: each reads a snapshot from the database, so a
    # subscribe/complete loop is rate limited (token bucket: sustained rate and burst).
    subscribe_rate_per_client: float = _setting(
        "INVENTORY_SUBSCRIBE_RATE_PER_CLIENT", 10.0, _number(0)
    )
    subscribe_burst_per_client: int = _setting(
        "INVENTORY_SUBSCRIBE_BURST_PER_CLIENT", 40, _integer(1)
    )
    # What one client may make the server spend (api/cost_budget.py): cost units a second
    # (an operation's cost plus its variables' values) up to a burst; 0: no budget. Four
    # clients looping on the costliest allowed query took four fifths of shoppers' rate.
    client_cost_per_second: float = _setting("INVENTORY_CLIENT_COST_PER_SECOND", 5000.0, _number(0))
    client_cost_burst: int = _setting("INVENTORY_CLIENT_COST_BURST", 20_000, _integer(1))
    # Each subscriber gets at most one update per interval (latest wins in between).
    live_interval_ms: int = _setting("INVENTORY_LIVE_INTERVAL_MS", 50, _integer(0, 60_000))
    # Availability updates after a subscription's first result go straight to its socket,
    # rendered once per selection (api/delivery.py). Off: Strawberry's ordinary path for
    # every event, which relies on no framework internals (see api/internals.py).
    direct_delivery: bool = _setting("INVENTORY_DIRECT_DELIVERY", True, _switch)
    # A POST whose document is known runs from a plan made once (api/compiled_http.py).
    compiled_operations: bool = _setting("INVENTORY_COMPILED_OPERATIONS", True, _switch)
    # None: `serve` generates one at start and prints it once; admin is never open.
    admin_token: str | None = _setting("INVENTORY_ADMIN_TOKEN", None, _text)
    # More admins, each by name ("ann:<token>,bob:<token>"): their writes carry the name.
    admin_tokens: AdminTokens = _setting("INVENTORY_ADMIN_TOKENS", (), _admin_tokens, secret=True)
    storefront_token: str | None = _setting("INVENTORY_STOREFRONT_TOKEN", None, _text)
    # None: /metrics is open to whoever reaches the port (keep it off the public network).
    metrics_token: str | None = _setting("INVENTORY_METRICS_TOKEN", None, _text)
    production: bool = _setting("INVENTORY_ENV", False, _env_is_production)
    # Storefront callers may run only the manifest's documents (admin callers any), so no
    # stranger's costly query runs. None: on in production, off in development (GraphiQL).
    trusted_documents_only: bool | None = _setting(
        "INVENTORY_TRUSTED_DOCUMENTS_ONLY", None, _switch
    )
    # The trusted-documents manifest: the checkout's trusted-documents.json by default.
    trusted_documents_file: Path = _setting(
        "INVENTORY_TRUSTED_DOCUMENTS_FILE",
        Path(__file__).resolve().parents[2] / "trusted-documents.json",
        Path,
    )
    max_body_bytes: int = _setting("INVENTORY_MAX_BODY_BYTES", 64 * 1024, _integer(1024))
    # One WebSocket message; larger ones close the connection (1009) before it is parsed.
    max_ws_message_bytes: int = _setting(
        "INVENTORY_MAX_WS_MESSAGE_BYTES", 64 * 1024, _integer(1024)
    )
    # permessage-deflate, which browsers offer: on, every subscriber's socket compresses
    # the same update again (and direct delivery cannot write it as a ready frame). An
    # availability update is ~200 bytes of JSON; off by default.
    ws_per_message_deflate: bool = _setting("INVENTORY_WS_PER_MESSAGE_DEFLATE", False, _switch)
    # HTTP limits applied by `serve` (http_limits.py). A request line plus headers: 16 KiB
    # like Node's default (uvicorn had no limit: a 128 MB header was read whole).
    max_header_bytes: int = _setting("INVENTORY_MAX_HEADER_BYTES", 16 * 1024, _integer(1024))
    # Header fields per request; 100 as gunicorn (browsers send about 20).
    max_headers: int = _setting("INVENTORY_MAX_HEADERS", 100, _integer(8))
    # A head must arrive within this of accept (or of its first byte), else 408 and close:
    # half-sent requests stayed open for good and locked other clients out.
    header_timeout_seconds: float = _setting(
        "INVENTORY_HEADER_TIMEOUT_SECONDS", 10.0, _number(0, above=True)
    )
    # A whole body (64 KiB at most) must arrive within this of its head, else 408 and close.
    body_timeout_seconds: float = _setting(
        "INVENTORY_BODY_TIMEOUT_SECONDS", 10.0, _number(0, above=True)
    )
    # Open connections (WebSockets included) per server process, lowered at start to what
    # its file limit allows; past it, 503 at accept. Room for the 5,000-subscriber fan-out.
    max_connections: int = _setting("INVENTORY_MAX_CONNECTIONS", 10_000, _integer(1))
    # Open connections per client address (IPv6: per /64), 0: no cap. Trusted proxies
    # (FORWARDED_ALLOW_IPS) are exempt; 256 leaves room for an office or carrier NAT.
    max_connections_per_client: int = _setting(
        "INVENTORY_MAX_CONNECTIONS_PER_CLIENT", 256, _integer(0)
    )
    log_format: LogFormat = _setting("INVENTORY_LOG_FORMAT", "text", _choice("text", "json"))
    # `serve --demo` (demo.py): the demo's buyer tokens at /demo/buyer-token, for anyone.
    demo: bool = _setting("INVENTORY_DEMO", False, _switch)
    # The storefront served at `/`: the repository's frontend-demo/ when run from a checkout.
    demo_dir: Path | None = _setting(
        "INVENTORY_DEMO_DIR", Path(__file__).resolve().parents[2] / "frontend-demo", Path
    )
    coalesce_reservations: bool = _setting("INVENTORY_COALESCE_RESERVATIONS", True, _switch)
    max_batch: int = _setting("INVENTORY_MAX_BATCH", 256, _integer(1, 10_000))
    # How far past expiry a PENDING hold may be before `check` calls it a fault.
    overdue_grace_seconds: float = _setting("INVENTORY_OVERDUE_GRACE_SECONDS", 5.0, _number(0))
    # Deadlines. A statement waits at most lock_timeout for a row lock and runs at most
    # statement_timeout; a reserve is answered within request_timeout (plus at most one
    # lock_timeout for a batch already in the database); a pool connection is waited for
    # at most request_timeout.
    lock_timeout_ms: int = _setting("INVENTORY_LOCK_TIMEOUT_MS", 500, _integer(1))
    statement_timeout_ms: int = _setting("INVENTORY_STATEMENT_TIMEOUT_MS", 5000, _integer(1))
    request_timeout_seconds: float = _setting(
        "INVENTORY_REQUEST_TIMEOUT_SECONDS", 5.0, _number(0, above=True)
    )
    # Reserves waiting for the database in one process; past it, refused at once (BUSY).
    max_queued_reservations: int = _setting("INVENTORY_MAX_QUEUED_RESERVATIONS", 2048, _integer(1))
    # An operation's price before it runs (api/query_cost.py): the costliest allowed at
    # 5,000 took ~30 ms of server CPU; 20 x products(first: 1000) took 1 s and prices 161,000.
    max_query_cost: int = _setting("INVENTORY_MAX_QUERY_COST", 5000, _integer(1))
    # A query still running after this (waiting on the database) is answered TIMEOUT (503).
    query_timeout_seconds: float = _setting(
        "INVENTORY_QUERY_TIMEOUT_SECONDS", 5.0, _number(0, above=True)
    )
    # The stock event feed (inventory/stock_events.py): events older than this are pruned
    # (fractions allowed); a cursor before the pruned prefix is answered CursorExpired.
    event_retention_hours: float = _setting(
        "INVENTORY_EVENT_RETENTION_HOURS", 168.0, _number(0, above=True)
    )
    event_prune_interval_seconds: float = _setting(
        "INVENTORY_EVENT_PRUNE_INTERVAL_SECONDS", 60.0, _number(0, above=True)
    )
    # Open stockEvents subscriptions per server process (each reads pages from the pool).
    max_feed_subscriptions: int = _setting("INVENTORY_MAX_FEED_SUBSCRIPTIONS", 16, _integer(1))
    # Webhooks (webhooks/): delivery of the stock event feed to HTTP endpoints. Off: no
    # process delivers (endpoints keep their place in the feed and resume when it is on).
    webhooks: bool = _setting("INVENTORY_WEBHOOKS", True, _switch)
    # Destinations webhooks may reach: host, host:port, *.domain, comma-separated. Unset:
    # any host whose addresses are all public (no loopback, private, link-local...).
    webhook_allowed_hosts: AllowedHosts = _setting(
        "INVENTORY_WEBHOOK_ALLOWED_HOSTS", AllowedHosts(), AllowedHosts.parse
    )
    webhook_max_endpoints: int = _setting("INVENTORY_WEBHOOK_MAX_ENDPOINTS", 20, _integer(1, 100))
    # Events per message: a flash sale is a few requests a second, not thousands.
    webhook_batch_size: int = _setting("INVENTORY_WEBHOOK_BATCH_SIZE", 100, _integer(1, 1000))
    # A message failing for longer than this marks its endpoint FAILING (still retried,
    # every webhook_retry_max_seconds); retries back off exponentially up to that cap.
    webhook_max_age_seconds: float = _setting(
        "INVENTORY_WEBHOOK_MAX_AGE_SECONDS", 86_400.0, _number(0, above=True)
    )
    webhook_retry_max_seconds: float = _setting(
        "INVENTORY_WEBHOOK_RETRY_MAX_SECONDS", 600.0, _number(0, above=True)
    )
    webhook_connect_timeout_seconds: float = _setting(
        "INVENTORY_WEBHOOK_CONNECT_TIMEOUT_SECONDS", 5.0, _number(0, above=True)
    )
    webhook_read_timeout_seconds: float = _setting(
        "INVENTORY_WEBHOOK_READ_TIMEOUT_SECONDS", 10.0, _number(0, above=True)
    )
    webhook_timeout_seconds: float = _setting(
        "INVENTORY_WEBHOOK_TIMEOUT_SECONDS", 15.0, _number(0, above=True)
    )
    # How often a process looks for endpoints to deliver to (new ones, and ones whose
    # process died): also how soon another process takes over.
    webhook_poll_seconds: float = _setting(
        "INVENTORY_WEBHOOK_POLL_SECONDS", 5.0, _number(0, above=True)
    )
    # `serve` delivers from a process of its own, this much nicer (lower CPU priority)
    # than its server processes: in a rush, reservations get the CPU and webhooks wait.
    webhook_niceness: int = _setting(
        "INVENTORY_WEBHOOK_NICENESS", MAX_NICENESS, _integer(0, MAX_NICENESS)
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from these variables (default: the process environment).

        Raises ConfigError naming the first variable whose value cannot be used.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            variable: str = field.metadata["env"]
            raw = env.get(variable, "")
            if raw == "":
                continue
            try:
                values[field.name] = field.metadata["read"](raw)
            except ValueError as error:
                shown = variable if field.metadata["secret"] else f"{variable}={raw!r}"
                raise ConfigError(f"{shown} is not valid: expected {error}") from None
        return cls(**values)

    @classmethod
    def variables(cls) -> list[str]:
        """Every environment variable read, in declaration order."""
        return [field.metadata["env"] for field in dataclasses.fields(cls)]

    def with_admin_token(self) -> tuple[Settings, str | None]:
        """These settings with an admin token, and the token if it had to be generated.

        Admin is never open: without a configured token a random one is made, and only
        whoever is shown it (`serve` prints it) can use admin mutations.
        """
        if self.admin_token is not None:
            return self, None
        token = secrets.token_urlsafe(24)
        return dataclasses.replace(self, admin_token=token), token
