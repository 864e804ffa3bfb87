"""ClientLimits on a fake clock: caps, the subscribe token bucket, bounded memory; and a
subscription whose stream never starts still gives its quota back."""

from __future__ import annotations

import asyncio

import pytest
from graphql import ExecutionResult, parse, subscribe
from starlette.websockets import WebSocket

from inventory_graphql.api.client_limits import ClientLimits, LimitReached
from inventory_graphql.api.context import Context
from inventory_graphql.api.internals import core_schema
from inventory_graphql.api.schema import build_schema
from inventory_graphql.testing.graphql_ws import AVAILABILITY


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(clock: Clock, **overrides: float) -> ClientLimits:
    settings = {"connections": 2, "subscriptions": 3, "rate": 2.0, "burst": 4}
    settings.update(overrides)
    return ClientLimits(**settings, clock=clock)  # type: ignore[arg-type]


def refusal(call: object) -> LimitReached:
    with pytest.raises(LimitReached) as refused:
        call()  # type: ignore[operator]
    return refused.value


def test_caps_count_per_client_and_a_lease_gives_back_once():
    clock = Clock()
    caps = limits(clock, rate=0)
    a = [caps.connect("a"), caps.connect("a")]
    assert None not in a
    assert caps.connect("a") is None
    assert caps.connect("b") is not None  # another client
    subs = [caps.subscribe("a") for _ in range(3)]
    refused = refusal(lambda: caps.subscribe("a"))
    assert refused.extensions == {"code": "TOO_MANY_SUBSCRIPTIONS", "limit": 3}
    assert "at most 3" in refused.message

    subs[0].release()
    subs[0].release()  # twice: still one given back
    again = caps.subscribe("a")
    assert refusal(lambda: caps.subscribe("a")).code == "TOO_MANY_SUBSCRIPTIONS"
    assert again is not None
    first = a[0]
    assert first is not None
    first.release()
    first.release()
    assert caps.connect("a") is not None
    assert caps.connect("a") is None
    assert (caps.refused_connections, caps.refused_subscriptions) == (2, 2)


def test_zero_means_no_limit():
    caps = limits(Clock(), connections=0, subscriptions=0, rate=0)
    assert all(caps.connect("a") for _ in range(1000))
    assert all(caps.subscribe("a") for _ in range(1000))


def test_subscribe_rate_allows_the_burst_then_the_rate_with_a_retry_hint():
    clock = Clock()
    rated = limits(clock, subscriptions=0)
    for _ in range(4):
        rated.subscribe("a").release()  # released at once: churn, not a cap
    refused = refusal(lambda: rated.subscribe("a"))
    assert refused.code == "RATE_LIMITED"
    assert refused.extensions == {
        "code": "RATE_LIMITED",
        "retriable": True,
        "retryAfterSeconds": 0.5,
    }
    assert "retry in 0.5 s" in refused.message
    assert rated.subscribe("b")  # another client has its own bucket

    clock.now += 0.3  # 0.6 of a token: still refused, and told the rest of the wait
    assert refusal(lambda: rated.subscribe("a")).extensions["retryAfterSeconds"] == 0.2
    clock.now += 0.2
    rated.subscribe("a")
    assert refusal(lambda: rated.subscribe("a")).code == "RATE_LIMITED"
    clock.now += 10  # refills up to the burst, not beyond
    for _ in range(4):
        rated.subscribe("a")
    assert refusal(lambda: rated.subscribe("a")).code == "RATE_LIMITED"
    assert rated.rate_limited == 4


def test_idle_clients_are_forgotten_once_their_bucket_is_full_again():
    clock = Clock()
    tracked = limits(clock)  # burst 4 at 2 a second: full again 2 s after going idle
    held = tracked.connect("open")
    for n in range(100):
        tracked.subscribe(f"10.0.0.{n}").release()
    assert tracked.clients == 101
    clock.now += 1.9
    assert tracked.clients == 101  # still refilling: forgetting them would hand out bursts
    clock.now += 0.2
    assert tracked.clients == 1  # the one with a connection open stays, however long
    clock.now += 3600
    assert tracked.clients == 1
    assert held is not None
    held.release()
    clock.now += 2
    assert tracked.clients == 0


def test_idle_clients_are_bounded_even_while_refilling():
    clock = Clock()
    tracked = ClientLimits(
        connections=1, subscriptions=1, rate=0.001, burst=1, clock=clock, max_idle=50
    )
    for n in range(10_000):  # rotating addresses (only a trusted proxy can)
        tracked.subscribe(f"client {n}").release()
    assert tracked.clients == 50


async def test_a_stream_that_never_starts_gives_its_quota_back_when_its_task_ends():
    caps = ClientLimits(connections=0, subscriptions=1, rate=0, burst=1)
    state = {"client_limits": caps}
    scope = {"type": "websocket", "headers": [], "client": ("10.0.0.1", 1), "state": state}
    context = Context(
        request=WebSocket(scope, receive=None, send=None),  # type: ignore[arg-type]
        response=None,
        service=None,  # type: ignore[arg-type]  # never reached: the stream never starts
        hub=None,  # type: ignore[arg-type]
    )
    schema = core_schema(build_schema())
    assert schema is not None

    async def subscribe_and_drop() -> None:
        # graphql-core runs the resolver (the quota is taken) and returns the stream,
        # which nobody iterates or closes: the task ends with it unstarted.
        stream = await subscribe(  # type: ignore[misc]
            schema, parse(AVAILABILITY), variable_values={"skus": ["A-1"]}, context_value=context
        )
        assert not isinstance(stream, ExecutionResult), stream
        assert refusal(lambda: caps.subscribe("10.0.0.1")).code == "TOO_MANY_SUBSCRIPTIONS"

    await asyncio.create_task(subscribe_and_drop())
    await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
    assert caps.subscribe("10.0.0.1") is not None
