"""http_limits.py: who is counted under which address, the caps, the file budget."""

from __future__ import annotations

import logging
import resource

import pytest

from inventory_graphql.config import Settings
from inventory_graphql.http_limits import (
    FILES_BESIDES_CONNECTIONS,
    ConnectionCounts,
    HttpLimits,
    Refusals,
    TrustedPeers,
    raise_file_limit,
)


def limits(total: int = 100, per_client: int = 2) -> HttpLimits:
    return HttpLimits(16384, 100, 10.0, 10.0, total, per_client)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("127.0.0.1", None),  # uvicorn's default FORWARDED_ALLOW_IPS
        ("::1", None),
        ("::ffff:127.0.0.1", None),  # the same client on a dual-stack socket
        ("127.0.0.2", "127.0.0.2"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:db8::/64"),  # one subscriber's block counts as one client
        ("2001:db8::ffff:2", "2001:db8::/64"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("not-an-address", "not-an-address"),
        (None, None),  # a unix socket: no address to count
    ],
)
def test_clients_are_counted_by_address_and_the_default_proxies_are_not(host, key):
    assert TrustedPeers("127.0.0.1,::1").client_key(host) == key


def test_trusted_proxies_may_be_networks_or_everyone():
    proxies = TrustedPeers(["10.0.0.0/8", " 192.0.2.1 "])
    assert proxies.client_key("10.20.30.40") is None
    assert proxies.client_key("192.0.2.1") is None
    assert proxies.client_key("192.0.2.2") == "192.0.2.2"
    assert TrustedPeers("*").client_key("203.0.113.9") is None


def test_one_address_is_capped_and_a_closed_connection_frees_its_slot():
    counts = ConnectionCounts(limits(per_client=2), TrustedPeers("127.0.0.1"))
    assert counts.admit("192.0.2.1", 0) == (None, "192.0.2.1")
    assert counts.admit("192.0.2.1", 1) == (None, "192.0.2.1")
    refusal, key = counts.admit("192.0.2.1", 2)
    assert refusal == "too many connections from your address" and key is None
    assert counts.admit("192.0.2.2", 2) == (None, "192.0.2.2")  # another address
    assert counts.admit("127.0.0.1", 3) == (None, None)  # a proxy: not counted
    counts.release("192.0.2.1")
    assert counts.admit("192.0.2.1", 3) == (None, "192.0.2.1")
    for key in ("192.0.2.1", "192.0.2.1", "192.0.2.2"):
        counts.release(key)
    assert counts.by_client == {}  # nothing kept for addresses that left


def test_the_total_cap_applies_to_everyone_and_a_per_client_cap_of_0_is_none():
    counts = ConnectionCounts(limits(total=3, per_client=0), TrustedPeers("127.0.0.1"))
    assert counts.admit("192.0.2.1", 2) == (None, None)
    assert counts.admit("192.0.2.1", 3)[0] == "the server has too many connections open"
    assert counts.admit("127.0.0.1", 3)[0] == "the server has too many connections open"


@pytest.fixture
def file_limit():
    """Restores this process's file limit afterwards."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield saved
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_the_soft_file_limit_is_raised_as_far_as_needed_never_past_the_hard(file_limit):
    _, hard = file_limit
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("the hard file limit leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    assert raise_file_limit(2000) == 2000
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (2000, hard)
    assert raise_file_limit(1500) == 2000  # never lowered
    if hard != resource.RLIM_INFINITY:
        assert raise_file_limit(hard + 1000) == hard


def test_the_connection_cap_is_lowered_to_what_the_file_limit_allows(file_limit, caplog):
    _, hard = file_limit
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard file limit to lower the cap to")
    settings = Settings(max_connections=hard + 1, pool_size=8)
    with caplog.at_level(logging.WARNING):
        http = HttpLimits.for_process(settings)
    assert http.max_connections == hard - FILES_BESIDES_CONNECTIONS - 8
    assert f"INVENTORY_MAX_CONNECTIONS={hard + 1} lowered to {http.max_connections}" in caplog.text


def test_refusals_are_logged_as_a_summary_not_a_line_each(caplog):
    refusals = Refusals()
    with caplog.at_level(logging.WARNING):
        for _ in range(500):
            refusals.note("503 too many connections from your address", "192.0.2.1")
    assert len(caplog.records) == 1  # the first at once; the rest wait for the next summary
    assert refusals.since_logged["503 too many connections from your address"] == 499
