-- The ledger is the feed.
--
-- 008 copied every ledger row into stock_event from a statement trigger: one more row,
-- three more index entries and a trigger call per statement, +20-30% of PostgreSQL's time
-- per reservation. Now each ledger row carries its place in the feed (feed_key) and the
-- product's numbers right after it, written by the statement that writes the row: the
-- service's writers take them from the product row they have just changed (UPDATE ...
-- RETURNING); any other writer (psql, a script, the waiting-list trigger) gets them from
-- stock_movement_feed, which reads the product row when the ledger row is inserted (so
-- such a writer changes the product first, then writes its ledger row). Threshold
-- crossings, which have no ledger row, live in stock_crossing. stock_event is now a view
-- of the two, with 008's columns, so readers are unchanged. The order and visibility
-- rules are 008's: ordered by (feed_key, id), served below pg_snapshot_xmin.
--
-- Retention moves the horizon (and deletes crossings); the ledger itself is never pruned.

ALTER TABLE stock_movement
    ADD COLUMN feed_key xid8,
    ADD COLUMN quantity_after integer,
    ADD COLUMN reserved_after integer,
    ADD COLUMN version_after bigint,
    ADD CONSTRAINT stock_movement_feed_whole CHECK (
        (feed_key IS NULL) = (quantity_after IS NULL)
        AND (feed_key IS NULL) = (reserved_after IS NULL)
        AND (feed_key IS NULL) = (version_after IS NULL));

CREATE TABLE stock_crossing (
    id           bigint PRIMARY KEY,  -- from the ledger's sequence: one id space with it
    feed_key     xid8 NOT NULL,
    product_id   bigint NOT NULL,
    kind         stock_event_kind NOT NULL
                 CHECK (kind IN ('LOW_STOCK', 'OUT_OF_STOCK', 'BACK_IN_STOCK')),
    quantity     integer NOT NULL,  -- the product's numbers right after the crossing
    reserved     integer NOT NULL,
    version      bigint NOT NULL,
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX stock_crossing_feed ON stock_crossing (feed_key, id);

-- The events 008 wrote move to where they now live.
ALTER TABLE stock_movement DISABLE TRIGGER stock_movement_append_only;
UPDATE stock_movement m
SET feed_key = e.feed_key, quantity_after = e.quantity, reserved_after = e.reserved,
    version_after = e.version
FROM stock_event e WHERE e.id = m.id;
ALTER TABLE stock_movement ENABLE TRIGGER stock_movement_append_only;
INSERT INTO stock_crossing (id, feed_key, product_id, kind, quantity, reserved, version,
                            occurred_at)
SELECT id, feed_key, product_id, kind, quantity, reserved, version, occurred_at
FROM stock_event WHERE kind IN ('LOW_STOCK', 'OUT_OF_STOCK', 'BACK_IN_STOCK');
-- Ledger rows whose events retention had pruned stay out of the feed: the origin moves
-- past them (every later ledger row has its place).
UPDATE stock_event_origin
SET movement_id = (SELECT coalesce(max(id), 0) FROM stock_movement WHERE feed_key IS NULL);

-- Rows from before the feed have no key: they are in no range of keys a reader asks for.
-- (Not a partial index: the planner reads a UNION ALL branch with a WHERE clause, as the
-- view below would need, by sorting the whole table instead of walking the index.)
CREATE INDEX stock_movement_feed ON stock_movement (feed_key, id);

-- For writers that do not give the numbers. The WHEN clause runs in C: rows that carry
-- them (every row the service writes in one statement with its product's update) cost
-- nothing here.
CREATE FUNCTION stock_movement_feed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT greatest(pg_current_xact_id(), p.feed_key), p.quantity, p.reserved, p.version
    INTO NEW.feed_key, NEW.quantity_after, NEW.reserved_after, NEW.version_after
    FROM product p WHERE p.id = NEW.product_id;
    RETURN NEW;
END $$;

CREATE TRIGGER stock_movement_feed
    BEFORE INSERT ON stock_movement
    FOR EACH ROW WHEN (NEW.feed_key IS NULL)
    EXECUTE FUNCTION stock_movement_feed();

-- Crossings, as in 008, into their own table.
CREATE OR REPLACE FUNCTION product_crossing() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was int := OLD.quantity - OLD.reserved;
    now_available int := NEW.quantity - NEW.reserved;
    key xid8 := greatest(pg_current_xact_id(), NEW.feed_key);
BEGIN
    INSERT INTO stock_crossing (id, feed_key, product_id, kind, quantity, reserved, version,
                                occurred_at)
    SELECT nextval(pg_get_serial_sequence('stock_movement', 'id')), key, NEW.id, k.kind,
           NEW.quantity, NEW.reserved, NEW.version, now()
    FROM (VALUES
        (1, 'LOW_STOCK'::stock_event_kind,
         NEW.low_stock_threshold IS NOT NULL AND was >= NEW.low_stock_threshold
         AND now_available < NEW.low_stock_threshold),
        (2, 'OUT_OF_STOCK', was > 0 AND now_available = 0),
        (3, 'BACK_IN_STOCK', was = 0 AND now_available > 0)
    ) AS k(ord, kind, crossed)
    WHERE k.crossed
    ORDER BY k.ord;
    RETURN NULL;
END $$;

-- Waiting-list offers: as in 008, without capturing first (each ledger row now carries
-- its own numbers, taken when it is written). The offer's ledger row follows the
-- product's update, so stock_movement_feed reads the numbers right after it.
CREATE OR REPLACE FUNCTION product_offer_to_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    product record;
    head record;
    hold uuid;
    ttl float8 := coalesce(
        nullif(current_setting('inventory.waitlist_hold_seconds', true), '')::float8, 300);
BEGIN
    IF pg_trigger_depth() > 1 THEN
        RETURN NULL;
    END IF;
    FOR product IN
        SELECT id, purchase_limit FROM changed
        WHERE waiting > 0 AND quantity > reserved ORDER BY sku
    LOOP
        LOOP
            SELECT w.id, w.buyer, w.quantity INTO head FROM waitlist_entry w
            WHERE w.product_id = product.id AND w.status = 'WAITING'
            ORDER BY w.seq LIMIT 1;
            EXIT WHEN NOT FOUND;
            IF product.purchase_limit IS NOT NULL
               AND buyer_tally(head.buyer, product.id) + head.quantity > product.purchase_limit
            THEN
                UPDATE waitlist_entry SET status = 'LEFT', resolved_at = now()
                WHERE id = head.id;
                UPDATE product p SET waiting = p.waiting - head.quantity WHERE p.id = product.id;
                CONTINUE;
            END IF;
            UPDATE product p SET reserved = p.reserved + head.quantity,
                                 waiting = p.waiting - head.quantity
            WHERE p.id = product.id AND p.quantity - p.reserved >= head.quantity;
            EXIT WHEN NOT FOUND;  -- the head does not fit: strict FIFO, nobody else is served
            INSERT INTO reservation (buyer, expires_at)
            VALUES (head.buyer, now() + make_interval(secs => ttl))
            RETURNING id INTO hold;
            INSERT INTO reservation_line (reservation_id, product_id, quantity)
            VALUES (hold, product.id, head.quantity);
            INSERT INTO stock_movement
                (product_id, kind, quantity_delta, reserved_delta, reservation_id, reason)
            VALUES (product.id, 'RESERVE', 0, head.quantity, hold, 'waiting list');
            UPDATE waitlist_entry SET status = 'OFFERED', reservation_id = hold,
                                      resolved_at = now()
            WHERE id = head.id;
        END LOOP;
    END LOOP;
    RETURN NULL;
END $$;

-- The statement trigger and its helper go; the table becomes a view.
DROP TRIGGER stock_movement_capture ON stock_movement;
DROP FUNCTION stock_movement_capture();
DROP FUNCTION stock_event_capture(bigint[]);
DROP FUNCTION stock_event_page(xid8, bigint, int);
DROP TABLE stock_event;

CREATE VIEW stock_event AS
    SELECT m.id, m.feed_key, m.product_id, stock_event_kind_of(m.kind, m.reason) AS kind,
           m.quantity_delta, m.reserved_delta, m.quantity_after AS quantity,
           m.reserved_after AS reserved, m.version_after AS version, m.reservation_id,
           m.reason, m.reference, m.actor, m.created_at AS occurred_at
    FROM stock_movement m  -- feed_key NULL: from before the feed (see the index above)
    UNION ALL
    SELECT c.id, c.feed_key, c.product_id, c.kind, 0, 0, c.quantity, c.reserved, c.version,
           NULL::uuid, NULL::text, NULL::text, NULL::text, c.occurred_at
    FROM stock_crossing c;

-- As 008's: events of ended transactions only, in feed order (a merge of the two
-- indexes).
CREATE FUNCTION stock_event_page(after_key xid8, after_id bigint, page int)
RETURNS SETOF stock_event LANGUAGE sql STABLE AS $$
    SELECT * FROM stock_event e
    WHERE (e.feed_key, e.id) > (after_key, after_id)
      AND e.feed_key < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY e.feed_key, e.id
    LIMIT page
$$;

-- grant_singles (007) writes its ledger rows' numbers: the same statement, with the
-- product's update returning its numbers and each line's taken from them.
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
            RETURNING p.id, p.quantity, p.reserved, p.version,
                      greatest(pg_current_xact_id(), p.feed_key) AS feed_key
        ), hold AS (
            INSERT INTO reservation (id, buyer, expires_at)
            SELECT g.id, g.buyer, now() + make_interval(secs => g.ttl) FROM granted g
            RETURNING id, reservation.created_at, reservation.expires_at
        ), line AS (
            INSERT INTO reservation_line (reservation_id, product_id, quantity)
            SELECT g.id, g.product_id, g.quantity FROM granted g
        ), movement AS (
            -- Each line's numbers right after it: the product's after the statement, less
            -- the lines after it (ids follow the ORDER BY).
            INSERT INTO stock_movement
                (product_id, kind, quantity_delta, reserved_delta, reservation_id,
                 feed_key, quantity_after, reserved_after, version_after)
            SELECT g.product_id, 'RESERVE', 0, g.quantity, g.id, h.feed_key, h.quantity,
                   h.reserved - sum(g.quantity) OVER (PARTITION BY g.product_id)
                              + sum(g.quantity) OVER (PARTITION BY g.product_id ORDER BY g.ord),
                   h.version
            FROM granted g JOIN held h ON h.id = g.product_id
            ORDER BY g.product_id, g.ord
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
            RETURNING p.id, p.quantity, p.reserved, p.version,
                      greatest(pg_current_xact_id(), p.feed_key) AS feed_key
        ), hold AS (
            INSERT INTO reservation (id, buyer, expires_at)
            SELECT g.id, g.buyer, now() + make_interval(secs => g.ttl) FROM granted g
            RETURNING id, reservation.created_at, reservation.expires_at
        ), line AS (
            INSERT INTO reservation_line (reservation_id, product_id, quantity)
            SELECT g.id, g.product_id, g.quantity FROM granted g
        ), movement AS (
            -- Each line's numbers right after it: the product's after the statement, less
            -- the lines after it (ids follow the ORDER BY).
            INSERT INTO stock_movement
                (product_id, kind, quantity_delta, reserved_delta, reservation_id,
                 feed_key, quantity_after, reserved_after, version_after)
            SELECT g.product_id, 'RESERVE', 0, g.quantity, g.id, h.feed_key, h.quantity,
                   h.reserved - sum(g.quantity) OVER (PARTITION BY g.product_id)
                              + sum(g.quantity) OVER (PARTITION BY g.product_id ORDER BY g.ord),
                   h.version
            FROM granted g JOIN held h ON h.id = g.product_id
            ORDER BY g.product_id, g.ord
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
        RETURNING p.id, p.quantity, p.reserved, p.version,
                  greatest(pg_current_xact_id(), p.feed_key) AS feed_key
    ), hold AS (
        INSERT INTO reservation (id, buyer, expires_at)
        SELECT g.id, g.buyer, now() + make_interval(secs => g.ttl) FROM granted g
        RETURNING id, reservation.created_at, reservation.expires_at
    ), line AS (
        INSERT INTO reservation_line (reservation_id, product_id, quantity)
        SELECT g.id, g.product_id, g.quantity FROM granted g
    ), movement AS (
        INSERT INTO stock_movement
            (product_id, kind, quantity_delta, reserved_delta, reservation_id,
             feed_key, quantity_after, reserved_after, version_after)
        SELECT g.product_id, 'RESERVE', 0, g.quantity, g.id, h.feed_key, h.quantity,
               h.reserved - sum(g.quantity) OVER (PARTITION BY g.product_id)
                          + sum(g.quantity) OVER (PARTITION BY g.product_id ORDER BY g.ord),
               h.version
        FROM granted g JOIN held h ON h.id = g.product_id
        ORDER BY g.product_id, g.ord
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
