-- grant_singles gets a third path, for a drop: a batch on a limited product where every
-- request is another buyer's. Same signature and the same rows as 006's statements.
--
-- The coalescer's grant of single-line requests (one per array index, in arrival order):
-- FIFO per product, all in one round trip that holds the row locks only inside
-- PostgreSQL. It locks the products (in sku order) and, when pending holds per buyer are
-- capped, the buyers (after every product, as every writer does), then decides with a
-- fresh snapshot, so each buyer's tally is what is committed under those locks.
--
-- A request is granted when nobody waits for its product, its buyer stays within the
-- product's limit and the pending-hold cap counting its earlier requests here, and it
-- fits the stock after every earlier eligible request for its product. Three statements
-- decide that, the first that applies (the rows are locked first, so no limit can appear
-- or change meanwhile):
-- - no limited product and no cap: the stock alone (the buyers' numbers cost a tenth of
--   a batch's time under the lock);
-- - no cap and no buyer twice in the batch (a drop: another buyer per request): each
--   request against its buyer's tally, without the per-buyer windows, which change
--   nothing when no request has an earlier one of its buyer here;
-- - otherwise the full statement.
-- Per request: its product's public availability after the grant (0 while a queue waits),
-- the hold's times if granted, and the numbers that explain a refusal (the caller tries
-- again the requests a refusal does not explain: refused only behind an earlier one of
-- the batch).
CREATE OR REPLACE FUNCTION grant_singles(
    skus text[], quantities int[], ids uuid[], ttls float8[], buyers text[], max_pending int
) RETURNS TABLE (
    ord bigint, sku text, available_after int, created_at timestamptz, expires_at timestamptz,
    purchase_limit int, held_after int, pending_after int
) LANGUAGE plpgsql
-- One plan per statement per connection, made once: PL/pgSQL would otherwise plan the long
-- statement afresh on every call while it judged a generic plan costlier (on a young
-- database without statistics it did, for good), and planning took a third of a batch.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    limited boolean;
    each_buyer_once boolean;
BEGIN
    SELECT coalesce(bool_or(p.purchase_limit IS NOT NULL), false),
           CASE WHEN bool_or(p.purchase_limit IS NOT NULL) AND max_pending IS NULL THEN
               (SELECT count(DISTINCT b COLLATE "C") = count(b) FROM unnest(buyers) AS b) END
    INTO limited, each_buyer_once
    FROM (SELECT p.purchase_limit FROM product p WHERE p.sku = any(skus)
          ORDER BY p.sku FOR UPDATE) AS p;
    IF NOT limited AND max_pending IS NULL THEN
        -- No limit on these products (the rows are locked: none can be set meanwhile)
        -- and no cap: FIFO on the stock alone, at the cost of a batch without buyers.
        RETURN QUERY
        WITH request AS (
            SELECT * FROM unnest(skus, quantities, ids, ttls, buyers) WITH ORDINALITY
                AS r(sku, quantity, id, ttl, buyer, ord)
        ), locked AS (
            SELECT p.id, p.sku, p.quantity - p.reserved AS available, p.waiting
            FROM product p WHERE p.sku = any(skus) FOR UPDATE
        ), fifo AS (
            SELECT r.*, k.id AS product_id, k.available, k.waiting,
                   sum(r.quantity) OVER (PARTITION BY k.id ORDER BY r.ord) AS wanted_so_far
            FROM request r JOIN locked k ON k.sku = r.sku
        ), granted AS (
            SELECT * FROM fifo f WHERE f.waiting = 0 AND f.wanted_so_far <= f.available
        ), per_product AS (
            SELECT g.product_id, sum(g.quantity)::int AS quantity
            FROM granted g GROUP BY g.product_id
        ), held AS (
            UPDATE product p SET reserved = p.reserved + g.quantity, updated_at = now()
            FROM per_product g
            WHERE p.id = g.product_id
        ), hold AS (
            INSERT INTO reservation (id, buyer, expires_at)
            SELECT g.id, g.buyer, now() + make_interval(secs => g.ttl) FROM granted g
            RETURNING id, reservation.created_at, reservation.expires_at
        ), line AS (
            INSERT INTO reservation_line (reservation_id, product_id, quantity)
            SELECT g.id, g.product_id, g.quantity FROM granted g
        ), movement AS (
            INSERT INTO stock_movement
                (product_id, kind, quantity_delta, reserved_delta, reservation_id)
            SELECT g.product_id, 'RESERVE', 0, g.quantity, g.id FROM granted g
        )
        SELECT f.ord, f.sku,
               CASE WHEN f.waiting > 0 THEN 0
                    ELSE f.available - coalesce(pp.quantity, 0) END::int,
               h.created_at, h.expires_at, NULL::int, NULL::int, NULL::int
        FROM fifo f
        LEFT JOIN per_product pp ON pp.product_id = f.product_id
        LEFT JOIN hold h ON h.id = f.id;
        RETURN;
    END IF;
    IF each_buyer_once THEN
        -- A limited product, no cap, and no buyer twice in the batch (a drop: another
        -- buyer per request). Then no request has an earlier one of its buyer here, so
        -- the full statement's per-buyer windows change nothing (may = could) and what
        -- the statement gave a buyer of a product is the request's own quantity when it
        -- was granted: the same rows without those windows, aggregates and joins.
        RETURN QUERY
        WITH request AS (
            SELECT * FROM unnest(skus, quantities, ids, ttls, buyers) WITH ORDINALITY
                AS r(sku, quantity, id, ttl, buyer, ord)
        ), locked AS (
            SELECT p.id, p.sku, p.quantity - p.reserved AS available, p.waiting,
                   p.purchase_limit
            FROM product p WHERE p.sku = any(skus) FOR UPDATE
        ), judged AS (
            -- The buyer's tally as the full statement reads it (the buyer's holds by
            -- index, then each one's line by key), read once per request by a lateral
            -- subquery, which costs less than materializing a CTE; it reads nothing for
            -- an unlimited product (a one-time filter) and is NULL there, as the full
            -- statement's, and for anonymous requests.
            SELECT r.*, k.id AS product_id, k.available, k.waiting, k.purchase_limit, t.tally
            FROM request r JOIN locked k ON k.sku = r.sku
            CROSS JOIN LATERAL (
                SELECT CASE WHEN k.purchase_limit IS NOT NULL AND r.buyer IS NOT NULL THEN
                           coalesce(sum((SELECT l.quantity - l.released
                                         FROM reservation_line l
                                         WHERE l.reservation_id = v.id
                                           AND l.product_id = k.id)), 0)::int END AS tally
                FROM reservation v
                WHERE v.buyer = r.buyer AND k.purchase_limit IS NOT NULL) AS t
        ), fifo AS (
            SELECT a.*, sum(CASE WHEN a.could THEN a.quantity ELSE 0 END) OVER (
                            PARTITION BY a.product_id ORDER BY a.ord) AS wanted_so_far
            FROM (SELECT j.*,
                         (j.waiting = 0
                          AND (j.purchase_limit IS NULL
                               OR (j.buyer IS NOT NULL
                                   AND j.tally + j.quantity <= j.purchase_limit))) AS could
                  FROM judged j) AS a
        ), granted AS (
            SELECT * FROM fifo f WHERE f.could AND f.wanted_so_far <= f.available
        ), per_product AS (
            SELECT g.product_id, sum(g.quantity)::int AS quantity
            FROM granted g GROUP BY g.product_id
        ), held AS (
            UPDATE product p SET reserved = p.reserved + g.quantity, updated_at = now()
            FROM per_product g
            WHERE p.id = g.product_id
        ), hold AS (
            INSERT INTO reservation (id, buyer, expires_at)
            SELECT g.id, g.buyer, now() + make_interval(secs => g.ttl) FROM granted g
            RETURNING id, reservation.created_at, reservation.expires_at
        ), line AS (
            INSERT INTO reservation_line (reservation_id, product_id, quantity)
            SELECT g.id, g.product_id, g.quantity FROM granted g
        ), movement AS (
            INSERT INTO stock_movement
                (product_id, kind, quantity_delta, reserved_delta, reservation_id)
            SELECT g.product_id, 'RESERVE', 0, g.quantity, g.id FROM granted g
        )
        SELECT f.ord, f.sku,
               CASE WHEN f.waiting > 0 THEN 0
                    ELSE f.available - coalesce(pp.quantity, 0) END::int,
               h.created_at, h.expires_at, f.purchase_limit,
               (f.tally + CASE WHEN h.id IS NULL THEN 0 ELSE f.quantity END)::int,
               NULL::int
        FROM fifo f
        LEFT JOIN per_product pp ON pp.product_id = f.product_id
        LEFT JOIN hold h ON h.id = f.id;
        RETURN;
    END IF;
    IF max_pending IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('inventory.buyer'), h)
        FROM (SELECT DISTINCT hashtext(b) AS h FROM unnest(buyers) AS b
              WHERE b IS NOT NULL ORDER BY 1) AS x;
    END IF;
    RETURN QUERY
    WITH request AS (
        SELECT * FROM unnest(skus, quantities, ids, ttls, buyers) WITH ORDINALITY
            AS r(sku, quantity, id, ttl, buyer, ord)
    ), locked AS (
        SELECT p.id, p.sku, p.quantity - p.reserved AS available, p.waiting, p.purchase_limit
        FROM product p WHERE p.sku = any(skus) FOR UPDATE
    ), judged AS MATERIALIZED (
        -- The buyer's numbers only where they matter (CASE runs a subquery only when its
        -- branch is taken): the tally for limited products, the count under a cap.
        -- Materialized: each is read once per request, however often it is used below.
        SELECT r.*, k.id AS product_id, k.available, k.waiting, k.purchase_limit,
               -- As buyer_tally: the buyer's holds, then each one's line by key. And the
               -- pending count by the buyer's holds too (a FILTER, not a WHERE, so that no
               -- plan walks every pending hold instead).
               CASE WHEN k.purchase_limit IS NOT NULL AND r.buyer IS NOT NULL THEN
                   (SELECT coalesce(sum((SELECT l.quantity - l.released
                                         FROM reservation_line l
                                         WHERE l.reservation_id = v.id
                                           AND l.product_id = k.id)), 0)::int
                    FROM reservation v WHERE v.buyer = r.buyer) END AS tally,
               CASE WHEN max_pending IS NOT NULL AND r.buyer IS NOT NULL THEN
                   (SELECT (count(*) FILTER (WHERE v.status = 'PENDING'))::int
                    FROM reservation v WHERE v.buyer = r.buyer) END AS pending
        FROM request r JOIN locked k ON k.sku = r.sku
    ), alone AS (
        -- Whether the request could be granted on its own, after the committed numbers.
        SELECT j.*,
               (j.waiting = 0
                AND (j.purchase_limit IS NULL
                     OR (j.buyer IS NOT NULL AND j.tally + j.quantity <= j.purchase_limit))
                AND (j.pending IS NULL OR j.pending + 1 <= max_pending)) AS could
        FROM judged j
    ), eligible AS (
        -- And after the buyer's earlier requests here that could be granted too. One that
        -- could alone but not after those ("uncertain": the caller tries it again in the
        -- next pass, once they are decided) still keeps its place in its product's line.
        SELECT a.*,
               (a.could
                AND (a.purchase_limit IS NULL
                     OR a.tally + sum(CASE WHEN a.could THEN a.quantity ELSE 0 END) OVER (
                            PARTITION BY a.buyer, a.product_id ORDER BY a.ord)
                        <= a.purchase_limit)
                AND (a.pending IS NULL
                     OR a.pending + count(*) FILTER (WHERE a.could) OVER (
                            PARTITION BY a.buyer ORDER BY a.ord) <= max_pending)) AS may
        FROM alone a
    ), fifo AS (
        SELECT e.*, sum(CASE WHEN e.could THEN e.quantity ELSE 0 END) OVER (
                        PARTITION BY e.product_id ORDER BY e.ord) AS wanted_so_far
        FROM eligible e
    ), granted AS (
        SELECT * FROM fifo f WHERE f.may AND f.wanted_so_far <= f.available
    ), per_product AS (
        SELECT g.product_id, sum(g.quantity)::int AS quantity FROM granted g GROUP BY g.product_id
    ), held AS (
        UPDATE product p SET reserved = p.reserved + g.quantity, updated_at = now()
        FROM per_product g
        WHERE p.id = g.product_id
    ), hold AS (
        INSERT INTO reservation (id, buyer, expires_at)
        SELECT g.id, g.buyer, now() + make_interval(secs => g.ttl) FROM granted g
        RETURNING id, reservation.created_at, reservation.expires_at
    ), line AS (
        INSERT INTO reservation_line (reservation_id, product_id, quantity)
        SELECT g.id, g.product_id, g.quantity FROM granted g
    ), movement AS (
        INSERT INTO stock_movement
            (product_id, kind, quantity_delta, reserved_delta, reservation_id)
        SELECT g.product_id, 'RESERVE', 0, g.quantity, g.id FROM granted g
    ), granted_units AS (
        -- What this statement gave each buyer, for the numbers after it.
        SELECT g.buyer, g.product_id, sum(g.quantity)::int AS units
        FROM granted g WHERE g.tally IS NOT NULL GROUP BY g.buyer, g.product_id
    ), granted_holds AS (
        SELECT g.buyer, count(*)::int AS holds
        FROM granted g WHERE g.pending IS NOT NULL GROUP BY g.buyer
    )
    SELECT f.ord, f.sku,
           CASE WHEN f.waiting > 0 THEN 0
                ELSE f.available - coalesce(pp.quantity, 0) END::int,
           h.created_at, h.expires_at, f.purchase_limit,
           (f.tally + coalesce(gu.units, 0))::int,
           (f.pending + coalesce(gh.holds, 0))::int
    FROM fifo f
    LEFT JOIN per_product pp ON pp.product_id = f.product_id
    LEFT JOIN hold h ON h.id = f.id
    LEFT JOIN granted_units gu ON gu.buyer = f.buyer AND gu.product_id = f.product_id
    LEFT JOIN granted_holds gh ON gh.buyer = f.buyer;
END $$;
