"""Settings, read once from the environment. Every variable is listed in the README."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    return default if raw in (None, "") else int(raw)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return default if raw in (None, "") else float(raw)


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(platformdirs.user_data_dir("inventory-graphql"))
    hold_ttl_seconds: int = 600
    pool_size: int = 8
    sweep_interval_seconds: float = 0.5
    sweep_batch_size: int = 500
    max_subscriptions_per_connection: int = 16
    # Each subscriber gets at most one update per interval (latest wins in between).
    live_interval_ms: int = 50
    # None: `serve` generates one at start and prints it once; admin is never open.
    admin_token: str | None = None
    storefront_token: str | None = None
    production: bool = False
    max_body_bytes: int = 64 * 1024
    # The storefront served at `/`: the repository's frontend-demo/ when run from a checkout.
    demo_dir: Path | None = Path(__file__).resolve().parents[2] / "frontend-demo"
    coalesce_reservations: bool = True
    max_batch: int = 256
    # How far past expiry a PENDING hold may be before `check` calls it a fault.
    overdue_grace_seconds: float = 5.0
    # Deadlines. A statement waits at most lock_timeout for a row lock and runs at most
    # statement_timeout; a reserve is answered within request_timeout (plus at most one
    # lock_timeout for a batch already in the database); a pool connection is waited for
    # at most request_timeout.
    lock_timeout_ms: int = 500
    statement_timeout_ms: int = 5000
    request_timeout_seconds: float = 5.0
    # Reserves waiting for the database in one process; past it, refused at once (BUSY).
    max_queued_reservations: int = 2048

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        data_dir = env.get("INVENTORY_DATA_DIR")
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            data_dir=Path(data_dir) if data_dir else defaults.data_dir,
            hold_ttl_seconds=_int(env, "INVENTORY_HOLD_TTL_SECONDS", defaults.hold_ttl_seconds),
            pool_size=_int(env, "INVENTORY_DB_POOL_SIZE", defaults.pool_size),
            sweep_interval_seconds=_float(
                env, "INVENTORY_SWEEP_INTERVAL_SECONDS", defaults.sweep_interval_seconds
            ),
            sweep_batch_size=_int(env, "INVENTORY_SWEEP_BATCH_SIZE", defaults.sweep_batch_size),
            max_subscriptions_per_connection=_int(
                env,
                "INVENTORY_MAX_SUBSCRIPTIONS_PER_CONNECTION",
                defaults.max_subscriptions_per_connection,
            ),
            admin_token=env.get("INVENTORY_ADMIN_TOKEN") or None,
            storefront_token=env.get("INVENTORY_STOREFRONT_TOKEN") or None,
            production=env.get("INVENTORY_ENV", "").lower() == "production",
            max_body_bytes=_int(env, "INVENTORY_MAX_BODY_BYTES", defaults.max_body_bytes),
            demo_dir=Path(env["INVENTORY_DEMO_DIR"])
            if env.get("INVENTORY_DEMO_DIR")
            else defaults.demo_dir,
            live_interval_ms=_int(env, "INVENTORY_LIVE_INTERVAL_MS", defaults.live_interval_ms),
            coalesce_reservations=env.get("INVENTORY_COALESCE_RESERVATIONS", "on").lower()
            not in ("off", "0", "false", "no"),
            max_batch=_int(env, "INVENTORY_MAX_BATCH", defaults.max_batch),
            overdue_grace_seconds=_float(
                env, "INVENTORY_OVERDUE_GRACE_SECONDS", defaults.overdue_grace_seconds
            ),
            lock_timeout_ms=_int(env, "INVENTORY_LOCK_TIMEOUT_MS", defaults.lock_timeout_ms),
            statement_timeout_ms=_int(
                env, "INVENTORY_STATEMENT_TIMEOUT_MS", defaults.statement_timeout_ms
            ),
            request_timeout_seconds=_float(
                env, "INVENTORY_REQUEST_TIMEOUT_SECONDS", defaults.request_timeout_seconds
            ),
            max_queued_reservations=_int(
                env, "INVENTORY_MAX_QUEUED_RESERVATIONS", defaults.max_queued_reservations
            ),
        )
