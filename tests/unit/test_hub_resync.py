"""A resync that cannot reach the database tells operators when it gives up."""

from __future__ import annotations

import asyncio
import logging

import pytest

from inventory_graphql.live import hub as hub_module
from inventory_graphql.live.hub import RESYNC_ATTEMPTS, AvailabilityHub


async def test_a_resync_that_gives_up_logs_an_error_naming_what_may_be_stale(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = 0

    async def database_away(skus, first):
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError("the database is away")

    real_sleep = asyncio.sleep

    async def no_wait(seconds: float) -> None:
        await real_sleep(0)  # the backoff, without its seconds

    monkeypatch.setattr(asyncio, "sleep", no_wait)
    hub = AvailabilityHub(broadcast=None, read_products=database_away)  # type: ignore[arg-type]
    with hub.watch(["A", "B"]), caplog.at_level(logging.WARNING, logger=hub_module.__name__):
        await hub._resync_until_done()

    assert attempts == RESYNC_ATTEMPTS
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "gave up" in errors[0].getMessage() and "2 watched skus" in errors[0].getMessage()


async def test_a_resync_that_succeeds_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    async def nothing_changed(skus, first):
        return []

    hub = AvailabilityHub(broadcast=None, read_products=nothing_changed)  # type: ignore[arg-type]
    with hub.watch(["A"]), caplog.at_level(logging.WARNING, logger=hub_module.__name__):
        await hub._resync_until_done()
    assert not caplog.records
