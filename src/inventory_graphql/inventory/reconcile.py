"""`check`: does every number agree with the ledger and with the holds?"""

from __future__ import annotations

from dataclasses import dataclass, field

from inventory_graphql.database import Connection

MISMATCHED_PRODUCTS = """
WITH moved AS (
    -- What the ledger says each product's numbers are.
    SELECT product_id, sum(quantity_delta) AS quantity, sum(reserved_delta) AS reserved
    FROM stock_movement GROUP BY product_id
), held AS (
    -- What the pending holds say each product's reserved is: the units they still hold.
    SELECT l.product_id, sum(l.quantity - l.confirmed - l.released) AS reserved
    FROM reservation_line l JOIN reservation r ON r.id = l.reservation_id
    WHERE r.status = 'PENDING' GROUP BY l.product_id
)
SELECT p.sku, p.quantity, p.reserved,
       coalesce(m.quantity, 0) AS ledger_quantity,
       coalesce(m.reserved, 0) AS ledger_reserved,
       coalesce(h.reserved, 0) AS pending_reserved
FROM product p
LEFT JOIN moved m ON m.product_id = p.id
LEFT JOIN held h ON h.product_id = p.id
WHERE p.quantity <> coalesce(m.quantity, 0)
   OR p.reserved <> coalesce(m.reserved, 0)
   OR p.reserved <> coalesce(h.reserved, 0)
   OR p.reserved < 0 OR p.reserved > p.quantity
ORDER BY p.sku
"""

COUNT_PRODUCTS = "SELECT count(*) FROM product"

COUNT_HOLDS = """
SELECT count(*) FILTER (WHERE status <> 'VOID') AS holds,
       count(*) FILTER (WHERE status = 'VOID') AS voided
FROM reservation
"""

OVERDUE_HOLDS = """
SELECT count(*) FROM reservation
WHERE status = 'PENDING' AND expires_at < now() - make_interval(secs => $1)
"""

# Per line of every hold, the ledger agrees with the line: one RESERVE row of what was
# reserved; CONFIRM rows (shipping as much as they unreserve) summing to what was
# confirmed; RELEASE and EXPIRE rows summing to what was released; so confirmed +
# released + held = reserved. And the status agrees with the units: a PENDING hold holds
# some and has confirmed none; an ended one holds none; only a CONFIRMED one confirmed
# any, only an EXPIRED one has EXPIRE rows.
MISRESOLVED_HOLDS = """
WITH per_line AS (
    SELECT r.id, r.status, l.product_id, l.quantity, l.confirmed, l.released,
           l.quantity - l.confirmed - l.released AS held,
           count(m.id) FILTER (WHERE m.kind = 'RESERVE') AS reserves,
           coalesce(sum(m.reserved_delta) FILTER (WHERE m.kind = 'RESERVE'), 0) AS reserved_rows,
           coalesce(-sum(m.reserved_delta) FILTER (WHERE m.kind = 'CONFIRM'), 0) AS confirmed_rows,
           coalesce(-sum(m.quantity_delta) FILTER (WHERE m.kind = 'CONFIRM'), 0) AS shipped_rows,
           coalesce(-sum(m.reserved_delta) FILTER (WHERE m.kind IN ('RELEASE', 'EXPIRE')), 0)
               AS released_rows,
           coalesce(sum(m.quantity_delta) FILTER (WHERE m.kind <> 'CONFIRM'), 0) AS other_shipped,
           count(m.id) FILTER (WHERE m.kind = 'EXPIRE') AS expires
    FROM reservation r
    JOIN reservation_line l ON l.reservation_id = r.id
    LEFT JOIN stock_movement m ON m.reservation_id = r.id AND m.product_id = l.product_id
    GROUP BY r.id, r.status, l.product_id, l.quantity, l.confirmed, l.released
), per_hold AS (
    SELECT *, sum(held) OVER (PARTITION BY id) AS hold_held FROM per_line
)
SELECT * FROM per_hold
WHERE reserves <> 1 OR reserved_rows <> quantity OR confirmed_rows <> confirmed
   OR shipped_rows <> confirmed OR released_rows <> released OR other_shipped <> 0
   OR (status = 'PENDING' AND (confirmed <> 0 OR hold_held = 0))
   OR (status <> 'PENDING' AND held <> 0)
   OR (status <> 'CONFIRMED' AND confirmed <> 0)
   OR (status <> 'EXPIRED' AND expires <> 0)
LIMIT 100
"""


# The waiting list (migration 006). `waiting` is what the product's WAITING entries want.
MISCOUNTED_WAITING = """
SELECT p.sku, p.waiting, coalesce(sum(w.quantity), 0) AS entries
FROM product p LEFT JOIN waitlist_entry w ON w.product_id = p.id AND w.status = 'WAITING'
GROUP BY p.id
HAVING p.waiting <> coalesce(sum(w.quantity), 0)
ORDER BY p.sku
LIMIT 100
"""

# Nobody passed over: the head of every queue does not fit what is available (the
# product trigger offers it in the same transaction that frees the units), and no entry
# was offered while an earlier one still waits (entries join under the product's lock,
# so a lower seq joined first and was waiting when the later one was offered).
PASSED_OVER = """
WITH head AS (
    SELECT DISTINCT ON (w.product_id) w.product_id, w.seq, w.quantity
    FROM waitlist_entry w WHERE w.status = 'WAITING'
    ORDER BY w.product_id, w.seq
)
SELECT p.sku, h.quantity AS head_quantity, p.quantity - p.reserved AS available,
       (SELECT count(*) FROM waitlist_entry o
        WHERE o.product_id = h.product_id AND o.status = 'OFFERED' AND o.seq > h.seq)
           AS offered_behind
FROM head h JOIN product p ON p.id = h.product_id
WHERE h.quantity <= p.quantity - p.reserved
   OR EXISTS (SELECT 1 FROM waitlist_entry o
              WHERE o.product_id = h.product_id AND o.status = 'OFFERED' AND o.seq > h.seq)
ORDER BY p.sku
LIMIT 100
"""

# Every OFFERED entry has its hold: the reservation exists, belongs to the entry's buyer
# and is one line of the entry's product and quantity.
OFFERS_WITHOUT_HOLD = """
SELECT w.id, w.buyer, w.quantity, w.reservation_id, r.buyer AS hold_buyer,
       (SELECT count(*) FROM reservation_line l WHERE l.reservation_id = w.reservation_id)
           AS lines,
       (SELECT l.quantity FROM reservation_line l
        WHERE l.reservation_id = w.reservation_id AND l.product_id = w.product_id)
           AS line_quantity
FROM waitlist_entry w LEFT JOIN reservation r ON r.id = w.reservation_id
WHERE w.status = 'OFFERED'
  AND (r.id IS NULL OR r.buyer IS DISTINCT FROM w.buyer
       OR (SELECT count(*) FROM reservation_line l WHERE l.reservation_id = r.id) <> 1
       OR NOT EXISTS (SELECT 1 FROM reservation_line l
                      WHERE l.reservation_id = r.id AND l.product_id = w.product_id
                        AND l.quantity = w.quantity))
LIMIT 100
"""

# Buyers holding plus having bought more of a limited product than its limit (buyer_tally,
# for all). A buyer's tally only grows by a grant, and a grant made after the limit was
# set kept the buyer within it (later steps only give back): so a buyer above the limit
# with a hold made since it was set was let past it (a problem); one without had those
# units before a lower limit was set, and they stand (counted, not a problem).
_ABOVE_LIMIT = """
WITH above AS (
    SELECT p.sku, r.buyer, p.purchase_limit, sum(l.quantity - l.released) AS tally,
           max(r.created_at) >= p.purchase_limit_set_at AS since_set
    FROM reservation r
    JOIN reservation_line l ON l.reservation_id = r.id
    JOIN product p ON p.id = l.product_id
    WHERE r.buyer IS NOT NULL AND p.purchase_limit IS NOT NULL
    GROUP BY p.id, r.buyer
    HAVING sum(l.quantity - l.released) > p.purchase_limit
)
"""
ABOVE_LIMIT = _ABOVE_LIMIT + "SELECT * FROM above WHERE since_set ORDER BY sku, buyer LIMIT 100"
ABOVE_LOWERED_LIMIT = _ABOVE_LIMIT + "SELECT count(*) FROM above WHERE NOT since_set"


# The stock event feed against the ledger (migration 011: the ledger is the feed): every
# ledger row since the feed's origin has its place in the feed and its numbers (a writer
# with the stock_movement_feed trigger disabled could leave them out), and a threshold
# crossing never takes a ledger row's id.
EVENTS_OFF_LEDGER = """
SELECT m.id, m.product_id, 'ledger row ' || m.id || ' (' || m.kind || ') has no place in the feed'
       AS problem
FROM stock_movement m CROSS JOIN stock_event_origin o
WHERE m.id > o.movement_id AND m.feed_key IS NULL
UNION ALL
SELECT c.id, c.product_id, 'crossing ' || c.id || ' (' || c.kind || ') has a ledger row''s id'
FROM stock_crossing c JOIN stock_movement m ON m.id = c.id
ORDER BY 1
LIMIT 100
"""

# Per product, in id order (its commit order), the ledger events' numbers chain: each
# one's quantity and reserved are the previous one's plus its deltas, versions and feed
# keys never go down, and the newest shows the product's numbers now. A crossing carries
# the numbers of the update that crossed (written at commit, after the other events of its
# transaction), so it stands apart: its own numbers must show the crossing.
EVENTS_UNCHAINED = """
WITH ledger_events AS (
    SELECT e.*,
           lag(e.quantity) OVER w AS prev_quantity, lag(e.reserved) OVER w AS prev_reserved,
           lag(e.version) OVER w AS prev_version, lag(e.feed_key) OVER w AS prev_key,
           row_number() OVER (PARTITION BY e.product_id ORDER BY e.id DESC) AS from_end
    FROM stock_event e
    WHERE e.kind NOT IN ('LOW_STOCK', 'OUT_OF_STOCK', 'BACK_IN_STOCK')
      AND e.feed_key IS NOT NULL
    WINDOW w AS (PARTITION BY e.product_id ORDER BY e.id)
)
SELECT p.sku, x.id, x.kind::text AS kind,
       'event ' || x.id || ' (' || x.kind || ') of ' || p.sku || ': quantity ' || x.quantity ||
       ', reserved ' || x.reserved || ', version ' || x.version || ' after quantity ' ||
       coalesce(x.prev_quantity::text, '-') || ', reserved ' ||
       coalesce(x.prev_reserved::text, '-') || ', version ' ||
       coalesce(x.prev_version::text, '-') || ' (product now ' || p.quantity || '/' ||
       p.reserved || ')' AS problem
FROM ledger_events x JOIN product p ON p.id = x.product_id
WHERE (x.prev_quantity IS NOT NULL
       AND (x.quantity <> x.prev_quantity + x.quantity_delta
            OR x.reserved <> x.prev_reserved + x.reserved_delta
            OR x.version < x.prev_version OR x.feed_key < x.prev_key))
   OR (x.from_end = 1 AND (x.quantity, x.reserved) <> (p.quantity, p.reserved))
UNION ALL
SELECT p.sku, c.id, c.kind::text,
       'crossing ' || c.id || ' (' || c.kind || ') of ' || p.sku || ' with available ' ||
       (c.quantity - c.reserved)
FROM stock_event c JOIN product p ON p.id = c.product_id
WHERE (c.kind = 'OUT_OF_STOCK' AND c.quantity <> c.reserved)
   OR (c.kind = 'BACK_IN_STOCK' AND c.quantity <= c.reserved)
ORDER BY 1, 2
LIMIT 100
"""


@dataclass
class Report:
    products: int = 0
    holds: int = 0
    # Request ids whose outcome was settled after a fault (the request held nothing):
    # information, not a problem. What clients were told is not in the database, so an
    # orphan hold (one whose client never got its id) cannot be told from any other.
    voided: int = 0
    # Buyers above a limit that was lowered below what they already had: information.
    above_lowered_limit: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def reconcile(conn: Connection, overdue_grace_seconds: float) -> Report:
    """Check every product and hold in one consistent snapshot."""
    report = Report()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        report.products = await conn.fetchval(COUNT_PRODUCTS)
        counts = await conn.fetchrow(COUNT_HOLDS)
        assert counts is not None, "an aggregate returns a row"
        report.holds, report.voided = counts["holds"], counts["voided"]
        for r in await conn.fetch(MISMATCHED_PRODUCTS):
            report.problems.append(
                f"{r['sku']}: quantity {r['quantity']} (ledger {r['ledger_quantity']}), "
                f"reserved {r['reserved']} (ledger {r['ledger_reserved']}, "
                f"pending holds {r['pending_reserved']})"
            )
        overdue = await conn.fetchval(OVERDUE_HOLDS, overdue_grace_seconds)
        if overdue:
            report.problems.append(
                f"{overdue} PENDING holds are more than {overdue_grace_seconds:g}s past expiry"
            )
        for r in await conn.fetch(MISRESOLVED_HOLDS):
            report.problems.append(
                f"hold {r['id']} ({r['status']}), product {r['product_id']}: reserved "
                f"{r['quantity']} (ledger {r['reserved_rows']} in {r['reserves']} rows), "
                f"confirmed {r['confirmed']} (ledger {r['confirmed_rows']}), "
                f"released {r['released']} (ledger {r['released_rows']}), held {r['held']}"
            )
        for r in await conn.fetch(MISCOUNTED_WAITING):
            report.problems.append(
                f"{r['sku']}: waiting {r['waiting']}, but its WAITING entries want {r['entries']}"
            )
        for r in await conn.fetch(PASSED_OVER):
            report.problems.append(
                f"{r['sku']}: the waiting list's head wants {r['head_quantity']} of "
                f"{r['available']} available; entries behind it offered: {r['offered_behind']}"
            )
        for r in await conn.fetch(OFFERS_WITHOUT_HOLD):
            report.problems.append(
                f"waiting-list entry {r['id']} ({r['buyer']}, {r['quantity']} units) is OFFERED "
                f"without its hold: reservation {r['reservation_id']} of buyer "
                f"{r['hold_buyer']}, {r['lines']} lines, {r['line_quantity']} units of its sku"
            )
        for r in await conn.fetch(ABOVE_LIMIT):
            report.problems.append(
                f"{r['sku']}: buyer {r['buyer']} holds or bought {r['tally']}, above the "
                f"limit of {r['purchase_limit']} with a hold made since it was set"
            )
        report.above_lowered_limit = await conn.fetchval(ABOVE_LOWERED_LIMIT)
        for r in await conn.fetch(EVENTS_OFF_LEDGER):
            report.problems.append(f"stock events: {r['problem']}")
        for r in await conn.fetch(EVENTS_UNCHAINED):
            report.problems.append(f"stock events: {r['problem']}")
    return report
