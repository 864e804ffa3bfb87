from __future__ import annotations

import asyncio

import pytest

from tests.support.database import create_database


@pytest.fixture(scope="session")
def database_url(postgres_url: str) -> str:
    """A database no server process sweeps: these tests decide when expiry runs."""
    return asyncio.run(create_database(postgres_url))
