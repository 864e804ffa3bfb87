"""Where webhooks may go: without an allow-list only public addresses, with one only its
hosts; URLs of other schemes, with credentials or too long are refused."""

from __future__ import annotations

import socket

import pytest

from inventory_graphql.config import ConfigError, Settings
from inventory_graphql.webhooks.destinations import (
    AllowedHosts,
    CheckedResolver,
    DestinationRefused,
    destination_refusal,
    malformed_url,
    url_refusal,
)

OPEN = AllowedHosts()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://127.1/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://100.64.0.1/hook",  # carrier-grade NAT
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://240.0.0.1/hook",
        "http://[fe80::1]/hook",
        "http://[fc00::1]/hook",
        "http://localhost/hook",
        "http://api.localhost/hook",
    ],
)
async def test_internal_addresses_are_refused_without_an_allow_list(url: str) -> None:
    # Shorthand such as 127.1 is not an address to the URL check but resolves to one.
    assert await destination_refusal(url, OPEN) is not None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "http://user:pass@example.com/hook",
        "http://example.com/" + "a" * 2048,
        "http://example.com/a b",
        "http:///hook",
        "http://example.com:99999/hook",
        "gopher://example.com/",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    assert malformed_url(url) is not None
    assert url_refusal(url, OPEN) is not None


def test_public_destinations_pass_the_text_check() -> None:
    assert url_refusal("https://hooks.example.com/stock?x=1", OPEN) is None
    assert url_refusal("http://93.184.215.14:8080/hook", OPEN) is None


def test_an_allow_list_allows_its_hosts_and_ports_only() -> None:
    allowed = AllowedHosts.parse("127.0.0.1:9000, *.corp.example, Hooks.Example.com:443")
    assert url_refusal("http://127.0.0.1:9000/hook", allowed) is None
    assert url_refusal("http://127.0.0.1:9001/hook", allowed) is not None
    assert url_refusal("http://localhost:9000/hook", allowed) is not None
    assert url_refusal("https://a.corp.example/hook", allowed) is None
    assert url_refusal("https://a.b.corp.example:8443/hook", allowed) is None
    assert url_refusal("https://corp.example.evil.com/hook", allowed) is not None
    assert url_refusal("https://hooks.example.com/x", allowed) is None
    assert url_refusal("http://hooks.example.com/x", allowed) is not None  # port 80
    assert url_refusal("http://example.com/", allowed) is not None


def test_the_allow_list_setting_is_checked_at_start() -> None:
    settings = Settings.from_env({"INVENTORY_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1:9000"})
    assert url_refusal("http://127.0.0.1:9000/", settings.webhook_allowed_hosts) is None
    for bad in ("http://x/", "a:b:c", "host/path", " , "):
        with pytest.raises(ConfigError, match="INVENTORY_WEBHOOK_ALLOWED_HOSTS"):
            Settings.from_env({"INVENTORY_WEBHOOK_ALLOWED_HOSTS": bad})


async def test_a_name_is_refused_when_it_resolves_to_an_internal_address() -> None:
    """The resolver aiohttp connects through checks the addresses it returns (what the
    connection then uses): a public-looking name pointing inside is refused."""
    with pytest.raises(DestinationRefused, match="loopback"):
        await CheckedResolver(OPEN).resolve("localhost", 80, socket.AF_UNSPEC)
    refusal = await destination_refusal("http://127.1:8000/hook", OPEN)
    assert refusal is not None and "loopback" in refusal
    # With an allow-list naming it, the operator has consented.
    allowed = AllowedHosts.parse("localhost")
    assert await CheckedResolver(allowed).resolve("localhost", 80, socket.AF_UNSPEC)
