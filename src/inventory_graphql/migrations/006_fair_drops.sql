-- Fair drops: buyers, per-buyer purchase limits, and a waiting list that hands out holds.
--
-- One lock order everywhere: a product's row is locked before anything that depends on it
-- (its waiting-list entries, a buyer's tally of it), and every writer of those holds that
-- row lock. So a statement that starts after the lock was granted sees every committed
-- change of them: the functions below lock first, then decide in a later statement
-- (a VOLATILE function takes a fresh snapshot per statement), all in one round trip.

-- Buyers. A hold belongs to the buyer its token named (NULL: anonymous), and idempotency
-- keys are per buyer: another buyer's key is another key.
ALTER TABLE reservation
    ADD COLUMN buyer text CHECK (char_length(buyer) BETWEEN 1 AND 255),
    DROP CONSTRAINT reservation_idempotency_key_key;

CREATE UNIQUE INDEX reservation_key_per_buyer ON reservation (buyer, idempotency_key)
    NULLS NOT DISTINCT WHERE idempotency_key IS NOT NULL;
CREATE INDEX reservation_by_buyer ON reservation (buyer) WHERE buyer IS NOT NULL;

-- Purchase limits: units of a product one buyer may hold (PENDING) plus have bought.
-- `waiting` is the units the product's WAITING entries want (kept by the statements
-- that add and remove entries, under the product's row lock).
ALTER TABLE product
    ADD COLUMN purchase_limit integer CHECK (purchase_limit BETWEEN 1 AND 1000000000),
    ADD COLUMN purchase_limit_set_at timestamptz,
    ADD COLUMN waiting integer NOT NULL DEFAULT 0 CHECK (waiting >= 0);

-- When the limit last changed, whoever changed it: what buyers had before a lowered
-- limit stands, and `check` tells that apart from a buyer let past a limit in force.
CREATE FUNCTION product_limit_set() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.purchase_limit_set_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER product_limit_set
    BEFORE UPDATE OF purchase_limit ON product
    FOR EACH ROW WHEN (OLD.purchase_limit IS DISTINCT FROM NEW.purchase_limit)
    EXECUTE FUNCTION product_limit_set();

-- What a buyer holds or bought of a product: every line keeps `quantity - released`
-- units counted (held plus confirmed), whatever its hold's status. Written so that the
-- only plan is the buyer's holds (by index), then each one's line (by primary key): as a
-- join, a planner without statistics (a young database) scanned every line of the
-- product instead, for each request: a hot product's limit got slower with every sale.
-- grant_singles reads it the same way, inline.
CREATE FUNCTION buyer_tally(who text, product bigint) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum((SELECT l.quantity - l.released FROM reservation_line l
                         WHERE l.reservation_id = r.id AND l.product_id = product)), 0)::int
    FROM reservation r WHERE r.buyer = who
$$;

-- The waiting list: entries in join order per product. WAITING -> OFFERED (with the hold
-- it was given) or WAITING -> LEFT, once.
CREATE TYPE waitlist_status AS ENUM ('WAITING', 'OFFERED', 'LEFT');

CREATE TABLE waitlist_entry (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- join order
    product_id      bigint NOT NULL REFERENCES product (id),
    buyer           text NOT NULL CHECK (char_length(buyer) BETWEEN 1 AND 255),
    quantity        integer NOT NULL CHECK (quantity > 0),
    status          waitlist_status NOT NULL DEFAULT 'WAITING',
    reservation_id  uuid UNIQUE REFERENCES reservation (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    CHECK ((status = 'OFFERED') = (reservation_id IS NOT NULL)),
    CHECK ((status = 'WAITING') = (resolved_at IS NULL))
);

-- One WAITING entry per buyer per product; the queue in order.
CREATE UNIQUE INDEX waitlist_one_per_buyer ON waitlist_entry (product_id, buyer)
    WHERE status = 'WAITING';
CREATE INDEX waitlist_queue ON waitlist_entry (product_id, seq) WHERE status = 'WAITING';

CREATE FUNCTION waitlist_resolves_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'WAITING' THEN
        RAISE EXCEPTION 'waiting-list entry % is already %', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER waitlist_resolves_once
    BEFORE UPDATE ON waitlist_entry
    FOR EACH ROW EXECUTE FUNCTION waitlist_resolves_once();

-- Units that become available on a product with a queue go to the queue, in the same
-- transaction that made them available, whatever statement did (a release, an expiry,
-- a restock, the head leaving, a plain SQL UPDATE): the head entry is offered a PENDING
-- hold for its buyer when its whole quantity fits; while it does not, nobody behind it
-- is served. The limit applies at join; a head whose buyer would now pass a limit
-- lowered since then leaves the queue when its turn comes. The offers' own updates of the product fire this trigger again; that inner
-- call has nothing to do (the outer loop serves the queue), so it returns at once.
CREATE FUNCTION product_offer_to_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER product_offer_to_waiting
    AFTER UPDATE ON product
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION product_offer_to_waiting();

-- Live availability now carries what the queue wants too (a sixth item per product).
CREATE OR REPLACE FUNCTION product_notify_availability() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    FOR payload IN
        SELECT json_agg(json_build_array(sku, quantity, reserved, version, updated_at, waiting))::text
        FROM (SELECT sku, quantity, reserved, version, updated_at, waiting,
                     (row_number() OVER (ORDER BY sku) - 1) / 40 AS chunk
              FROM changed) AS c
        GROUP BY chunk
    LOOP
        PERFORM pg_notify('inventory_availability', payload);
    END LOOP;
    RETURN NULL;
END $$;

-- The coalescer's grant of single-line requests (one per array index, in arrival order):
-- FIFO per product, all in one round trip that holds the row locks only inside
-- PostgreSQL. It locks the products (in sku order) and, when pending holds per buyer are
-- capped, the buyers (after every product, as every writer does), then decides with a
-- fresh snapshot, so each buyer's tally is what is committed under those locks.
--
-- A request is granted when nobody waits for its product, its buyer stays within the
-- product's limit and the pending-hold cap counting its earlier requests here, and it
-- fits the stock after every earlier eligible request for its product. A batch with no
-- limited product and no cap takes a leaner statement that judges the stock alone: the
-- buyers' numbers cost a tenth of a batch's time under the lock. Per request: its
-- product's public availability after the grant (0 while a queue waits), the hold's
-- times if granted, and the numbers that explain a refusal (the caller tries again the
-- requests a refusal does not explain: refused only behind an earlier one of the batch).
CREATE FUNCTION grant_singles(
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
BEGIN
    SELECT coalesce(bool_or(p.purchase_limit IS NOT NULL), false) INTO limited
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

-- A line of a cart (the per-request path, and carts in a batch): the same decision for
-- one product, its row locked first. Returns the product's id when the line was held;
-- otherwise the numbers that say why not (no row at all: there is no such product).
CREATE FUNCTION hold_line(want_sku text, want int, who text) RETURNS TABLE (
    product_id bigint, held boolean, available int, purchase_limit int, held_by_buyer int
) LANGUAGE plpgsql AS $$
DECLARE
    p record;
    tally int;
BEGIN
    SELECT id, quantity - reserved AS available, waiting, product.purchase_limit AS lim
    INTO p FROM product WHERE sku = want_sku FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p.lim IS NOT NULL AND who IS NOT NULL THEN
        tally := buyer_tally(who, p.id);
    END IF;
    IF p.waiting > 0 OR p.available < want
       OR (p.lim IS NOT NULL AND (who IS NULL OR tally + want > p.lim)) THEN
        RETURN QUERY SELECT p.id, false,
            (CASE WHEN p.waiting > 0 THEN 0 ELSE p.available END)::int, p.lim, tally;
        RETURN;
    END IF;
    UPDATE product SET reserved = reserved + want, updated_at = now() WHERE id = p.id;
    RETURN QUERY SELECT p.id, true, (p.available - want)::int, p.lim, tally + want;
END $$;
