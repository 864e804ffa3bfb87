"""A corpus of over a thousand malformed and hostile requests against a real server.

Every one gets a clear refusal (a 4xx with a message, or a GraphQL error or typed union
member with a message), never a 5xx, never a leak of internals; stock and ledger stay as
they were and `check` passes afterwards.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp

from inventory_graphql.testing.graphql_ws import AVAILABILITY
from tests.api.queries import RESERVE
from tests.support.database import check, ledger, stock

# Every hold in the shared database but those the waiting list offered: another test's
# queue may be offered a hold meanwhile (the session server's sweeper expires a hold of its
# product), and no anonymous request can join a queue.
# VOID rows are not holds: each records a request told "not held" after a fault (a BUSY
# answer past lock_timeout, migration 003); they have no lines and no stock.
NOT_OFFERED = """
SELECT count(*) FROM reservation r
WHERE r.status <> 'VOID'
  AND NOT EXISTS (SELECT 1 FROM waitlist_entry w WHERE w.reservation_id = r.id)
"""
LEAKS = ("Traceback", "asyncpg", '.py"', "site-packages", "SELECT ", "psycopg")
TARGET = "TARGET-SKU"  # replaced by the test's product


@dataclass(frozen=True)
class Attack:
    kind: str
    body: bytes
    content_type: str = "application/json"
    method: str = "POST"


def gql(query: str, variables: object = None, **extra: object) -> bytes:
    return json.dumps({"query": query, "variables": variables, **extra}).encode()


def reserve(lines: object, **variables: object) -> bytes:
    return gql(RESERVE, {"lines": lines, **variables})


def attacks(sku: str) -> Iterator[Attack]:
    # Deep nesting: introspection types nest as deep as one likes.
    for depth in range(9, 60):
        inner = "name"
        for _ in range(depth):
            inner = f"ofType {{ {inner} }}"
        yield Attack("deep nesting", gql(f'{{ __type(name: "Product") {{ {inner} }} }}'))
    # Alias bombs.
    for count in (21, 50, 100, 500, 1000, 3000):
        for field in ("product", "products"):
            args = f'(sku: "{sku}")' if field == "product" else ""
            query = " ".join(f"a{i}: {field}{args} {{ sku }}" for i in range(count))
            yield Attack("alias bomb", gql(f"{{ {query} }}"))
    for count in range(21, 200, 3):
        query = " ".join(f"r{i}: reserve(lines: $l) {{ __typename }}" for i in range(count))
        yield Attack(
            "alias bomb (mutation)",
            gql(
                f"mutation($l: [ReserveLineInput!]!) {{ {query} }}",
                {"l": [{"sku": sku, "quantity": 1}]},
            ),
        )
    # Fragment bombs: cycles, and fan-out spreads.
    yield Attack(
        "fragment cycle", gql("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }")
    )
    for width in range(2, 40):
        frags = " ".join(
            f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(width)
        )
        # 2^width fields once expanded: small ones are fair queries, large ones refused.
        yield Attack(
            "fragment fan-out" if 2**width > 1000 else "small fragment fan-out",
            gql(f"{{ ...F0 }} {frags} fragment F{width} on Query {{ products {{ sku }} }}"),
        )
    # Huge strings, inside and over the body cap.
    for size in (1_000, 10_000, 50_000, 63_000, 70_000, 200_000, 1_000_000):
        yield Attack("huge string", reserve([{"sku": "S" * size, "quantity": 1}]))
        yield Attack("huge key", reserve([{"sku": sku, "quantity": 1}], key="k" * size))
    # Wrong types for every argument.
    # Wrong types for every argument (each value wrong for that place: null where it is
    # optional would be a fair request).
    line = {"sku": sku, "quantity": 1}
    not_int = ["x", 1.5, True, [], {}, [1], {"sku": 1}, "1e309", "1"]
    not_string = [1, 1.5, True, [], {}, [1], {"sku": 1}]
    for value in [*not_int, None]:
        yield Attack("wrong type: quantity", reserve([{"sku": sku, "quantity": value}]))
        yield Attack("wrong type: lines", gql(RESERVE, {"lines": value}))
    for value in [*not_string, None]:
        yield Attack("wrong type: sku", reserve([{"sku": value, "quantity": 1}]))
        yield Attack("wrong type: query", json.dumps({"query": value}).encode())
    for value in not_int:
        yield Attack("wrong type: ttl", reserve([line], ttl=value))
    for value in not_string:
        yield Attack("wrong type: key", reserve([line], key=value))
    for value in ["x", 1, 1.5, True, [], [1], None]:
        yield Attack(
            "wrong type: variables", json.dumps({"query": RESERVE, "variables": value}).encode()
        )
    # Negative, zero and huge quantities, ttls; duplicate and malformed skus.
    for quantity in (-(2**31), -(10**6), -1, 0, 1_000_001, 2**31 - 1, 2**31, 2**53, 10**30):
        yield Attack("bad quantity", reserve([{"sku": sku, "quantity": quantity}]))
        yield Attack("bad ttl", reserve([{"sku": sku, "quantity": 1}], ttl=quantity))
    for bad in (
        "",
        " ",
        "a b",
        "ä",
        "x" * 65,
        "a/b",
        "a;DROP TABLE product",
        "\u0000",
        "' OR 1=1 --",
    ):
        yield Attack("bad sku", reserve([{"sku": bad, "quantity": 1}]))
    # One bad line anywhere in a cart spoils the whole cart, and holds nothing.
    for position in range(3):
        for wrong in (-1, 0, 1_000_001, 2**31, "x", None):
            lines = [{"sku": f"{sku}-{i}" if i else sku, "quantity": 1} for i in range(3)]
            lines[position]["quantity"] = wrong
            yield Attack("bad line in a cart", reserve(lines))
    # Control characters, odd Unicode and injection attempts in every string argument.
    for code in [*range(0, 32), 0x7F, 0x85, 0xA0, 0x2028, 0x202E, 0xFEFF, 0x1F600, 0x10FFFF]:
        odd = f"A{chr(code)}B"
        yield Attack("odd character in sku", reserve([{"sku": odd, "quantity": 1}]))
        yield Attack("odd character in key", reserve([{"sku": sku, "quantity": 999_999}], key=odd))
        yield Attack(
            "odd character in id",
            gql(
                "mutation($id: ID!) { confirm(id: $id) { __typename ... on Problem { message } } }",
                {"id": odd},
            ),
        )
    # Alias bombs on a nested query.
    for count in range(21, 300, 3):
        query = " ".join(f'r{i}: reservation(id: "x{i}") {{ id }}' for i in range(count))
        yield Attack("alias bomb (nested)", gql(f"{{ {query} }}"))
    yield Attack("duplicate lines", reserve([{"sku": sku, "quantity": 1}] * 2))
    yield Attack("too many lines", reserve([{"sku": f"S{i}", "quantity": 1} for i in range(101)]))
    yield Attack("no lines", reserve([]))
    # Unknown fields, arguments and operations.
    for query in (
        "{ nope }",
        '{ product(sku: "x") { nope } }',
        '{ product(nope: "x") { sku } }',
        "{ product { sku } }",
        "mutation { nope }",
        'mutation { reserve(lines: [{sku: "x", quantity: 1, extra: 1}]) { __typename } }',
        "mutation { confirm { __typename } }",
        'subscription { availability(skus: ["x"]) { sku } }',
        "{ products { sku } }" * 3,
        "{",
        "}",
        "{ products(first: -5) { sku } }",
        "{ products(first: 1000001) { sku } }",
    ):
        yield Attack("unknown or malformed operation", gql(query))
        yield Attack("operation name mismatch", gql(query, operationName="Missing"))
    # Admin mutations without the token.
    for delta in (-(10**9), -1, 1, 10**9):
        yield Attack(
            "admin without token",
            gql(
                "mutation($s: String!, $d: Int!) "
                '{ adjustStock(sku: $s, delta: $d, reason: "x") { __typename } }',
                {"s": sku, "d": delta},
            ),
        )
    yield Attack(
        "admin without token",
        gql(
            'mutation { createProduct(sku: "HOSTILE-NEW", name: "x", quantity: 5) { __typename } }'
        ),
    )
    # Invalid JSON and bodies that are not a request object (batching is off).
    for body in (
        b"",
        b"{",
        b"}",
        b"null",
        b"1",
        b'"query"',
        b"[]",
        b"[{}]",
        b"{}",
        b'{"query": }',
        b'{"query": "{ products { sku } }"',
        b'{"query": "{ products { sku } }"}garbage',
        json.dumps([{"query": "{ products { sku } }"}] * 5).encode(),
        b"\xff\xfe\xfd",
        b'{"query": "\xff\xfe"}',
        b'{"query": "{ product(sku: \\"\xc3\\") { sku } }"}',
        b"\x00" * 100,
        b'{"query": "\\ud800"}',
    ):
        yield Attack("invalid JSON or UTF-8", body)
        yield Attack("invalid JSON with other content type", body, "text/plain")
    for content_type in (
        "application/xml",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "",
    ):
        yield Attack("wrong content type", gql("{ products { sku } }"), content_type)
    # GET must not run mutations.
    yield Attack("mutation over GET", b"", method="GET")
    # Random garbage of many sizes.
    for size in range(1, 500):
        yield Attack("garbage", bytes((i * 37 + size) % 256 for i in range(size * 13)))


async def send(session: aiohttp.ClientSession, url: str, attack: Attack) -> tuple[int, str]:
    if attack.method == "GET":
        params = {"query": 'mutation { reserve(lines: [{sku: "x", quantity: 1}]) { __typename } }'}
        async with session.get(f"{url}/graphql", params=params) as response:
            return response.status, await response.text()
    headers = {"content-type": attack.content_type} if attack.content_type else {}
    async with session.post(f"{url}/graphql", data=attack.body, headers=headers) as response:
        return response.status, await response.text(errors="replace")


def assert_clear_refusal(attack: Attack, status: int, text: str) -> None:
    # Never a server error. The one 5xx that is an answer: BUSY (503, retriable, nothing
    # held), when a reserve of the corpus waited past lock_timeout behind the others on
    # the same product while the machine was busy with the rest (seen in 1 run of 5 on
    # 2 cores); the test's end checks that nothing was held.
    if status == 503:
        (busy,) = json.loads(text)["errors"]
        assert busy["extensions"]["code"] == "BUSY" and busy["extensions"]["retriable"], (
            attack.kind,
            text[:300],
        )
        return
    assert status < 500, (attack.kind, status, text[:300])
    assert not any(leak in text for leak in LEAKS), (attack.kind, text[:300])
    if status >= 400:
        assert text.strip(), (attack.kind, status)
        return
    body = json.loads(text)
    errors = body.get("errors") or []
    typed = [
        value
        for value in (body.get("data") or {}).values()
        if isinstance(value, dict) and value.get("__typename") not in (None, "Reservation")
    ]
    # Our schema has no recursive types: deep nesting is only possible through
    # introspection, which answers cheaply (bounded by the token and field limits).
    answerable = ("deep nesting", "small fragment fan-out")
    assert errors or typed or attack.kind in answerable, (attack.kind, text[:300])
    for error in errors:
        assert error["message"], (attack.kind, error)


async def test_a_thousand_hostile_requests_change_nothing(server, db, make_product):
    sku = await make_product(3)
    corpus = list(attacks(sku))
    assert len(corpus) >= 1000
    before = (await stock(db, sku), await ledger(db, sku))
    holds = await db.fetchval(NOT_OFFERED)
    gate = asyncio.Semaphore(32)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def run(attack: Attack) -> tuple[Attack, int, str]:
            async with gate:
                return (attack, *await send(session, server.url, attack))

        results = await asyncio.gather(*(run(a) for a in corpus))

    statuses: Counter[int] = Counter()
    for attack, status, text in results:
        statuses[status] += 1
        assert_clear_refusal(attack, status, text)
    # The alias bomb on reserve is refused as a whole, so not even one unit was held.
    assert (await stock(db, sku), await ledger(db, sku)) == before
    assert await db.fetchval(NOT_OFFERED) == holds
    assert (await check(db)).ok
    assert statuses[413] > 0 and statuses[400] > 0  # the size cap and the parser both spoke


async def test_bad_websocket_messages_are_refused_cleanly(server, make_product):
    sku = await make_product(1)
    url = server.url.replace("http", "ws") + "/graphql"
    bad_frames: list[str | bytes] = [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"type": "nope"}),
        json.dumps({"type": "subscribe", "id": "1", "payload": {"query": "{"}}),
        json.dumps({"type": "subscribe", "payload": {"query": AVAILABILITY}}),
        json.dumps({"type": "connection_init", "payload": "x" * 10_000}),
        b"\x00\x01binary",
    ]
    async with aiohttp.ClientSession() as session:
        for frame in bad_frames:
            ws = await session.ws_connect(url, protocols=["graphql-transport-ws"])
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
            message = await ws.receive(timeout=10)
            # Closed with a 44xx protocol code and a reason; the server itself is fine.
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), frame
            assert ws.close_code is not None and 4400 <= ws.close_code < 4500, (
                frame,
                ws.close_code,
            )
            await ws.close()
        # Subscribing before connection_init: 4401 Unauthorized in graphql-transport-ws.
        ws = await session.ws_connect(url, protocols=["graphql-transport-ws"])
        await ws.send_json(
            {
                "id": "1",
                "type": "subscribe",
                "payload": {"query": AVAILABILITY, "variables": {"skus": [sku]}},
            }
        )
        await ws.receive(timeout=10)
        assert ws.close_code == 4401
        await ws.close()
        # A message over INVENTORY_MAX_WS_MESSAGE_BYTES (64 KiB) is never read into the
        # app: the connection closes with 1009 (message too big).
        ws = await session.ws_connect(url, protocols=["graphql-transport-ws"])
        await ws.send_str(json.dumps({"type": "connection_init", "payload": {"x": "y" * 200_000}}))
        await ws.receive(timeout=10)
        assert ws.close_code == 1009
        await ws.close()
        # And the server still serves.
        async with session.post(
            f"{server.url}/graphql", json={"query": "{ __typename }"}
        ) as response:
            assert response.status == 200


async def test_every_response_carries_a_request_id(server):
    async with aiohttp.ClientSession() as session:
        for body in (b"{", gql("{ nope }"), gql("{ __typename }")):
            async with session.post(
                f"{server.url}/graphql", data=body, headers={"content-type": "application/json"}
            ) as response:
                assert len(response.headers["x-request-id"]) == 32
        given = {"x-request-id": "lb-1234567890"}
        async with session.post(
            f"{server.url}/graphql",
            data=gql("{ nope }"),
            headers={**given, "content-type": "application/json"},
        ) as response:
            body = await response.json()
            assert response.headers["x-request-id"] == "lb-1234567890"
            assert body["errors"][0]["extensions"]["requestId"] == "lb-1234567890"
