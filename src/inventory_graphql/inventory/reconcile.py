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
    -- What the pending holds say each product's reserved is.
    SELECT l.product_id, sum(l.quantity) AS reserved
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

# Every hold ends exactly once: one RESERVE row per line, and one closing row per line
# exactly when the hold has left PENDING, of the kind its status says.
MISRESOLVED_HOLDS = """
WITH closing (status, kind) AS (
    -- The ledger row that must close a hold of each final status.
    VALUES ('CONFIRMED'::reservation_status, 'CONFIRM'::movement_kind),
           ('RELEASED', 'RELEASE'), ('EXPIRED', 'EXPIRE')
), per_line AS (
    -- Per line of every hold: its RESERVE rows, its closing rows, and those that match.
    SELECT r.id, r.status, l.product_id,
           count(m.id) FILTER (WHERE m.kind = 'RESERVE') AS reserves,
           count(m.id) FILTER (WHERE m.kind <> 'RESERVE') AS closes,
           count(m.id) FILTER (WHERE m.kind = c.kind) AS matching
    FROM reservation r
    JOIN reservation_line l ON l.reservation_id = r.id
    LEFT JOIN closing c ON c.status = r.status
    LEFT JOIN stock_movement m ON m.reservation_id = r.id AND m.product_id = l.product_id
    GROUP BY r.id, r.status, l.product_id
)
SELECT * FROM per_line
WHERE reserves <> 1 OR closes <> (status <> 'PENDING')::int OR matching <> closes
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
                f"hold {r['id']} ({r['status']}): {r['reserves']} reserve and "
                f"{r['closes']} closing ledger rows for product {r['product_id']}"
            )
    return report
