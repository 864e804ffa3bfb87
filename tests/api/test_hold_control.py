"""Hold control over the real HTTP stack: extendReservation, partial confirm and release."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta

import aiohttp

from inventory_graphql.testing.graphql_ws import AVAILABILITY, GraphQLWebSocket
from tests.api.queries import RESERVE
from tests.support.database import check, ledger, stock

HOLD = """
    __typename
    ... on Reservation {
      id status expiresAt createdAt resolvedAt
      lines { sku quantity confirmedQuantity releasedQuantity product { available } }
    }
    ... on ReservationNotFound { id }
    ... on ReservationNotPending { id status }
    ... on InvalidInput { field }
    ... on Problem { message }
"""
EXTEND = f"""
mutation Extend($id: ID!, $ttl: Int!) {{
  extendReservation(id: $id, ttlSeconds: $ttl) {{
    {HOLD}
    ... on HoldLimitReached {{ id maxExpiresAt }}
  }}
}}
"""
CONFIRM_LINES = f"""
mutation Confirm($id: ID!, $lines: [ReserveLineInput!]) {{
  confirm(id: $id, lines: $lines) {{ {HOLD} }}
}}
"""
RELEASE_LINES = f"""
mutation Release($id: ID!, $lines: [ReserveLineInput!]) {{
  release(id: $id, lines: $lines) {{ {HOLD} }}
}}
"""
RESERVATION = """
query Hold($id: ID!) {
  reservation(id: $id) {
    __typename id status expiresAt createdAt resolvedAt
    lines { sku quantity confirmedQuantity releasedQuantity product { available } }
  }
}
"""


def units(hold: dict) -> dict[str, tuple[int, int, int]]:
    """sku -> (reserved, confirmed, released)."""
    return {
        line["sku"]: (line["quantity"], line["confirmedQuantity"], line["releasedQuantity"])
        for line in hold["lines"]
    }


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def hold(gql, lines: dict[str, int], ttl: int = 300) -> dict:
    given = [{"sku": sku, "quantity": n} for sku, n in lines.items()]
    held = (await gql.execute(RESERVE, lines=given, ttl=ttl))["reserve"]
    assert held["__typename"] == "Reservation", held
    return held


async def test_partial_release_extend_partial_confirm(gql, db, make_product):
    a, b, c = [await make_product(10) for _ in range(3)]
    held = await hold(gql, {a: 3, b: 4, c: 5}, ttl=60)

    released = (await gql.execute(RELEASE_LINES, id=held["id"], lines=[{"sku": b, "quantity": 2}]))[
        "release"
    ]
    assert released["status"] == "PENDING"
    assert units(released) == {a: (3, 0, 0), b: (4, 0, 2), c: (5, 0, 0)}
    assert {line["sku"]: line["product"]["available"] for line in released["lines"]}[b] == 8

    extended = (await gql.execute(EXTEND, id=held["id"], ttl=600))["extendReservation"]
    assert extended["__typename"] == "Reservation"
    assert at(extended["expiresAt"]) - at(held["expiresAt"]) > timedelta(seconds=500)

    lines = [{"sku": a, "quantity": 2}, {"sku": b, "quantity": 1}]
    confirmed = (await gql.execute(CONFIRM_LINES, id=held["id"], lines=lines))["confirm"]
    assert confirmed["status"] == "CONFIRMED"
    assert units(confirmed) == {a: (3, 2, 1), b: (4, 1, 3), c: (5, 0, 5)}
    assert {line["sku"]: line["product"]["available"] for line in confirmed["lines"]} == {
        a: 8,
        b: 9,
        c: 10,
    }
    # A retry of the same partial confirm answers the hold as it is.
    again = (await gql.execute(CONFIRM_LINES, id=held["id"], lines=lines))["confirm"]
    assert again == confirmed
    assert await ledger(db, b) == [
        ("CREATE", 10, 0),
        ("RESERVE", 0, 4),
        ("RELEASE", 0, -2),
        ("CONFIRM", -1, -1),
        ("RELEASE", 0, -1),
    ]
    assert (await check(db)).ok


async def test_extension_past_the_cap_answers_hold_limit_reached(gql, make_product):
    held = await hold(gql, {await make_product(1): 1}, ttl=600)
    refused = (await gql.execute(EXTEND, id=held["id"], ttl=1900))["extendReservation"]
    assert refused["__typename"] == "HoldLimitReached" and refused["id"] == held["id"]
    # The default cap: 1800 s from creation.
    assert at(refused["maxExpiresAt"]) == at(held["createdAt"]) + timedelta(seconds=1800)
    assert "cannot be held past" in refused["message"]
    now = (await gql.execute(RESERVATION, id=held["id"]))["reservation"]
    assert now["expiresAt"] == held["expiresAt"]


async def test_mistakes_are_answered_as_problems(gql, make_product):
    sku, other = await make_product(5), await make_product(5)
    held = await hold(gql, {sku: 2})
    cases = [
        (EXTEND, "extendReservation", {"id": held["id"], "ttl": 0}, "InvalidInput"),
        (EXTEND, "extendReservation", {"id": "nope", "ttl": 60}, "ReservationNotFound"),
        (
            CONFIRM_LINES,
            "confirm",
            {"id": held["id"], "lines": [{"sku": sku, "quantity": 3}]},
            "InvalidInput",
        ),
        (
            RELEASE_LINES,
            "release",
            {"id": held["id"], "lines": [{"sku": other, "quantity": 1}]},
            "InvalidInput",
        ),
        (RELEASE_LINES, "release", {"id": held["id"], "lines": []}, "InvalidInput"),
    ]
    for document, field, variables, typename in cases:
        answer = (await gql.execute(document, **variables))[field]
        assert answer["__typename"] == typename, (variables, answer)
        assert answer["message"]
    unchanged = (await gql.execute(RESERVATION, id=held["id"]))["reservation"]
    assert unchanged["status"] == "PENDING" and units(unchanged) == {sku: (2, 0, 0)}
    # Without lines, confirm and release work as they always have.
    whole = (await gql.execute(RELEASE_LINES, id=held["id"]))["release"]
    assert whole["status"] == "RELEASED" and units(whole) == {sku: (2, 0, 2)}


async def test_50_clients_partial_releases_and_a_full_confirm_one_serial_order(
    gql, db, make_product
):
    a, b = await make_product(40), await make_product(40)
    held = await hold(gql, {a: 30, b: 30})
    rng = random.Random(14)
    calls: list[tuple[str, dict]] = [
        ("release", {"lines": [{"sku": rng.choice([a, b]), "quantity": rng.choice([1, 2])}]})
        for _ in range(49)
    ]
    calls.insert(rng.randrange(50), ("confirm", {}))

    async def call(kind: str, extra: dict) -> dict:
        document = RELEASE_LINES if kind == "release" else CONFIRM_LINES
        return (await gql.execute(document, id=held["id"], **extra))[kind]

    answers = await asyncio.gather(*(call(kind, extra) for kind, extra in calls))

    for answer in answers:
        if answer["__typename"] == "Reservation":
            for reserved, confirmed, released in units(answer).values():
                assert min(confirmed, released) >= 0 and confirmed + released <= reserved
    final = (await gql.execute(RESERVATION, id=held["id"]))["reservation"]
    assert final["status"] == "CONFIRMED"
    confirm_answer = answers[[kind for kind, _ in calls].index("confirm")]
    assert confirm_answer == final
    # One serial order: the releases that went through did so before the confirm, one at
    # a time, each seeing all the earlier ones (their totals released are all different);
    # those after it were told the hold was CONFIRMED; the confirm shipped the rest.
    applied = [
        (extra["lines"][0], answer)
        for (kind, extra), answer in zip(calls, answers, strict=True)
        if kind == "release" and answer["__typename"] == "Reservation"
    ]
    refused = [
        answer
        for (kind, _), answer in zip(calls, answers, strict=True)
        if kind == "release" and answer["__typename"] != "Reservation"
    ]
    assert all(r["__typename"] == "ReservationNotPending" for r in refused)
    assert all(r["status"] == "CONFIRMED" for r in refused)
    assert all(answer["status"] == "PENDING" for _, answer in applied)
    totals = sorted(sum(u[2] for u in units(answer).values()) for _, answer in applied)
    assert len(set(totals)) == len(totals)
    in_order = sorted(applied, key=lambda done: sum(u[2] for u in units(done[1]).values()))
    running = 0
    for (line, _), total in zip(in_order, totals, strict=True):
        running += line["quantity"]
        assert total == running, "each release saw exactly the releases before it"
    released_before = {a: 0, b: 0}
    for line, _ in applied:
        released_before[line["sku"]] += line["quantity"]
    assert totals[-1:] == ([sum(released_before.values())] if applied else [])
    assert units(final) == {
        sku: (30, 30 - released_before[sku], released_before[sku]) for sku in (a, b)
    }
    for sku in (a, b):
        assert await stock(db, sku) == {
            "quantity": 40 - (30 - released_before[sku]),
            "reserved": 0,
            "available": 40 - (30 - released_before[sku]),
            "version": (await stock(db, sku))["version"],
        }
        rows = await ledger(db, sku)
        releases = [line for line, _ in in_order if line["sku"] == sku]
        assert rows[2 : 2 + len(releases)] == [
            ("RELEASE", 0, -line["quantity"]) for line in releases
        ]
    assert (await check(db)).ok


async def test_partial_steps_reach_availability_subscribers(gql, server, make_product):
    sku = await make_product(10)
    held = await hold(gql, {sku: 5})
    async with aiohttp.ClientSession() as session:
        socket = await GraphQLWebSocket.connect(session, server.url)
        updates = (await socket.subscribe(AVAILABILITY, skus=[sku])).updates()
        seen = [(u["quantity"], u["reserved"]) for u in [await anext(updates)]]
        await gql.execute(RELEASE_LINES, id=held["id"], lines=[{"sku": sku, "quantity": 2}])
        seen.append(((u := await anext(updates))["quantity"], u["reserved"]))
        # An extension changes no stock: the next update is the confirm's.
        await gql.execute(EXTEND, id=held["id"], ttl=600)
        await gql.execute(CONFIRM_LINES, id=held["id"], lines=[{"sku": sku, "quantity": 1}])
        while seen[-1] != (9, 0):
            seen.append(((u := await anext(updates))["quantity"], u["reserved"]))
        await socket.close()
    # The confirm ships one unit, then gives two back, in one transaction: its updates
    # (one per statement, or the last only if coalesced) are sent at commit.
    assert seen[:2] == [(10, 5), (10, 3)]
    assert seen[2:] in ([(9, 0)], [(9, 2), (9, 0)])
