"""The fast proxy trust (http_protocol.FastTrustedHosts) answers as uvicorn's own does."""

from __future__ import annotations

import random

import pytest
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware, _TrustedHosts

from inventory_graphql.http_protocol import FastTrustedHosts

CONFIGS = [
    "127.0.0.1",
    "127.0.0.1, 10.1.2.3",
    "::1",
    "127.0.0.1,::1",
    "unix:/run/lb.sock",
    "lb.internal",
    "10.0.0.0/8",
    "*",
    ["127.0.0.1", "192.168.0.9"],
]


def hosts(rng: random.Random) -> list[str | None]:
    some_ipv4 = [".".join(str(rng.randrange(256)) for _ in range(4)) for _ in range(200)]
    return [
        *some_ipv4,
        "127.0.0.1",
        "10.1.2.3",
        "10.9.9.9",
        "192.168.0.9",
        "127.0.0.01",  # not an address (leading zero): a literal, as uvicorn reads it
        "127.1",
        " 127.0.0.1",
        "::1",
        "0:0:0:0:0:0:0:1",
        "::ffff:127.0.0.1",
        "unix:/run/lb.sock",
        "lb.internal",
        "LB.internal",
        "garbage",
        "",
        None,
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_every_host_is_trusted_exactly_as_uvicorn_trusts_it(config: str | list[str]) -> None:
    ours, theirs = FastTrustedHosts(config), _TrustedHosts(config)
    for host in hosts(random.Random(7)):
        assert (host in ours) == (host in theirs), (config, host)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_the_client_named_by_x_forwarded_for_is_uvicorns(config: str | list[str]) -> None:
    ours, theirs = FastTrustedHosts(config), _TrustedHosts(config)
    rng = random.Random(11)
    pool = [h for h in hosts(rng) if h]
    for _ in range(300):
        header = ", ".join(rng.choice(pool) for _ in range(rng.randint(1, 4)))
        assert ours.get_trusted_client_address(header) == theirs.get_trusted_client_address(
            header
        ), (config, header)


def test_the_middleware_still_keeps_its_trust_where_serve_replaces_it() -> None:
    async def app(scope: object, receive: object, send: object) -> None:  # pragma: no cover
        pass

    middleware = ProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1")
    assert isinstance(middleware.trusted_hosts, _TrustedHosts)
