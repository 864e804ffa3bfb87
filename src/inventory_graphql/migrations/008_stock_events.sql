-- Stock events: an outbox that a consumer can follow without gaps.
--
-- Every ledger row (stock_movement) gets an event in the same transaction, with the
-- product's numbers right after it; so do threshold crossings (LOW_STOCK, OUT_OF_STOCK,
-- BACK_IN_STOCK), whatever caused them. The ledger stays the permanent record `check`
-- sums; stock_event is the feed, pruned after its retention.
--
-- Order and visibility. An event's id is its ledger row's id. Every writer takes a
-- product's ledger ids under that product's row lock, so per product, id order is commit
-- order. But ids are taken before commit: a reader at id 101 may not yet see 100, still
-- being written. So the feed is ordered by (feed_key, id), where feed_key is the writing
-- transaction's id (pg_current_xact_id()), raised where needed to the product's feed_key
-- (the greatest of the ids of the transactions that changed it), so that per product it
-- never goes down. A reader serves only events with
-- feed_key below its snapshot's xmin (pg_snapshot_xmin): every transaction below xmin has
-- ended, and every transaction still to write has an id (and so a feed_key) at or above
-- it. What a reader serves is therefore final, and anything committed later sorts after
-- it. No shared row is written: concurrent writers on different products never wait for
-- each other here.

-- A warehouse count: the stock set to a number (the delta is recorded).
ALTER TYPE movement_kind ADD VALUE 'SET';

-- Who made an admin change, and the caller's reference for it (an order, a PO number).
ALTER TABLE stock_movement
    ADD COLUMN actor text CHECK (char_length(actor) BETWEEN 1 AND 64),
    ADD COLUMN reference text CHECK (char_length(reference) BETWEEN 1 AND 255);

-- Capture reads a product's ledger rows after its last event: by product, then id.
CREATE INDEX stock_movement_by_product_id ON stock_movement (product_id, id);
DROP INDEX stock_movement_by_product;

-- LOW_STOCK fires when available drops below it; NULL: no threshold. feed_key: the
-- greatest id of the transactions that wrote the row, kept by the version trigger (an
-- event's feed_key is at least its product's, read from the row the event's statement
-- just changed: no index read per event).
ALTER TABLE product
    ADD COLUMN low_stock_threshold integer CHECK (low_stock_threshold BETWEEN 1 AND 1000000000),
    ADD COLUMN feed_key xid8 NOT NULL DEFAULT pg_current_xact_id();

CREATE OR REPLACE FUNCTION product_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    NEW.feed_key := greatest(OLD.feed_key, pg_current_xact_id());
    RETURN NEW;
END $$;

CREATE TYPE stock_event_kind AS ENUM (
    'CREATED', 'ADJUSTED', 'SET', 'RESERVED', 'OFFERED', 'CONFIRMED', 'RELEASED', 'EXPIRED',
    'LOW_STOCK', 'OUT_OF_STOCK', 'BACK_IN_STOCK'
);

-- The event kind of a ledger row (a waiting-list offer's hold is OFFERED). One SQL
-- expression, inlined where it is called.
CREATE FUNCTION stock_event_kind_of(kind movement_kind, reason text) RETURNS stock_event_kind
LANGUAGE sql STABLE AS $$
    SELECT (CASE kind::text
                WHEN 'CREATE' THEN 'CREATED'
                WHEN 'ADJUST' THEN 'ADJUSTED'
                WHEN 'SET' THEN 'SET'
                WHEN 'RESERVE' THEN CASE WHEN reason = 'waiting list' THEN 'OFFERED'
                                         ELSE 'RESERVED' END
                WHEN 'CONFIRM' THEN 'CONFIRMED'
                WHEN 'RELEASE' THEN 'RELEASED'
                WHEN 'EXPIRE' THEN 'EXPIRED'
            END)::stock_event_kind
$$;

-- No foreign keys: an event is derived from rows that have them (and a foreign key check
-- per row would cost every reservation a trigger call).
CREATE TABLE stock_event (
    id              bigint PRIMARY KEY,  -- the ledger row's; a crossing takes the next one
    feed_key        xid8 NOT NULL,
    product_id      bigint NOT NULL,
    kind            stock_event_kind NOT NULL,
    quantity_delta  integer NOT NULL,
    reserved_delta  integer NOT NULL,
    quantity        integer NOT NULL,    -- the product's numbers right after this event
    reserved        integer NOT NULL,
    version         bigint NOT NULL,     -- the product's version after the statement
    reservation_id  uuid,
    reason          text,
    reference       text,
    actor           text,
    occurred_at     timestamptz NOT NULL
);

CREATE INDEX stock_event_feed ON stock_event (feed_key, id);
CREATE INDEX stock_event_by_product ON stock_event (product_id, id);

-- Ledger rows before this migration have no events: the feed starts here.
CREATE TABLE stock_event_origin (
    movement_id bigint NOT NULL,
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO stock_event_origin (movement_id) SELECT coalesce(max(id), 0) FROM stock_movement;

-- The feed's pruned prefix: a cursor at or after it still sees every later event.
CREATE TABLE stock_event_horizon (
    feed_key    xid8 NOT NULL,
    id          bigint NOT NULL,
    pruned_at   timestamptz NOT NULL DEFAULT now(),
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO stock_event_horizon (feed_key, id) VALUES ('0', 0);

-- Turn these products' ledger rows that have no event yet into events: the rows after
-- each product's last event. A waiting-list offer (below) calls it before it changes the
-- product again, while the product's row holds exactly the numbers after its last ledger
-- row: the numbers after each earlier one follow by subtracting the deltas after it. The
-- caller holds the products' row locks, so every such ledger row is this transaction's.
CREATE FUNCTION stock_event_capture(products bigint[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO stock_event (id, feed_key, product_id, kind, quantity_delta, reserved_delta,
                             quantity, reserved, version, reservation_id, reason, reference,
                             actor, occurred_at)
    SELECT m.id, greatest(pg_current_xact_id(), p.feed_key), m.product_id,
           stock_event_kind_of(m.kind, m.reason),
           m.quantity_delta, m.reserved_delta,
           p.quantity - coalesce(sum(m.quantity_delta) OVER later, 0),
           p.reserved - coalesce(sum(m.reserved_delta) OVER later, 0),
           p.version, m.reservation_id, m.reason, m.reference, m.actor, m.created_at
    FROM (SELECT DISTINCT u.id FROM unnest(products) AS u(id)) AS x
    JOIN product p ON p.id = x.id
    CROSS JOIN stock_event_origin o
    LEFT JOIN LATERAL (SELECT e.id FROM stock_event e WHERE e.product_id = x.id
                       ORDER BY e.id DESC LIMIT 1) AS last ON true
    -- The rows after the last event only, by index range (OFFSET 0 keeps the subquery a
    -- parameterized scan: as a join, the planner read every row of the product and
    -- filtered, a cost that grew with every sale).
    JOIN LATERAL (SELECT * FROM stock_movement s
                  WHERE s.product_id = x.id AND s.id > greatest(last.id, o.movement_id)
                  OFFSET 0) AS m ON true
    WINDOW later AS (PARTITION BY m.product_id ORDER BY m.id DESC
                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
$$;

-- A statement's own ledger rows become events from its transition table, with its
-- products' rows as the statement left them (by key; no index read on stock_event). Rows
-- a waiting-list offer captured already are passed over. Measured against the grant
-- alone (SQL only, backend CPU per batch of 8-32): +17-22%, where reading each product's
-- last event for its feed_key (before products kept one) cost +23-36%.
CREATE FUNCTION stock_movement_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stock_event (id, feed_key, product_id, kind, quantity_delta, reserved_delta,
                             quantity, reserved, version, reservation_id, reason, reference,
                             actor, occurred_at)
    SELECT m.id, k.feed_key, m.product_id,
           stock_event_kind_of(m.kind, m.reason),
           m.quantity_delta, m.reserved_delta,
           k.quantity - coalesce(sum(m.quantity_delta) OVER later, 0),
           k.reserved - coalesce(sum(m.reserved_delta) OVER later, 0),
           k.version, m.reservation_id, m.reason, m.reference, m.actor, m.created_at
    FROM added m
    JOIN (SELECT x.product_id, p.quantity, p.reserved, p.version,
                 greatest(pg_current_xact_id(), p.feed_key) AS feed_key
          FROM (SELECT DISTINCT a.product_id FROM added a) AS x
          -- By key, per product (OFFSET 0 keeps it a parameterized scan: a transition
          -- table has no statistics, and the planner may otherwise read every product).
          JOIN LATERAL (SELECT q.quantity, q.reserved, q.version, q.feed_key
                        FROM product q WHERE q.id = x.product_id OFFSET 0) AS p ON true) AS k
      ON k.product_id = m.product_id
    WINDOW later AS (PARTITION BY m.product_id ORDER BY m.id DESC
                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
    ON CONFLICT (id) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER stock_movement_capture
    AFTER INSERT ON stock_movement
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION stock_movement_capture();

-- Threshold crossings, once each, whatever changed the row (the service, a plain SQL
-- UPDATE). Deferred to commit, so a crossing follows the ledger events of its
-- transaction; it carries the numbers right after the crossing. The WHEN clause is
-- evaluated at the update, in C: rows that cross nothing queue nothing.
CREATE FUNCTION product_crossing() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was int := OLD.quantity - OLD.reserved;
    now_available int := NEW.quantity - NEW.reserved;
    key xid8 := greatest(pg_current_xact_id(), NEW.feed_key);
BEGIN
    INSERT INTO stock_event (id, feed_key, product_id, kind, quantity_delta, reserved_delta,
                             quantity, reserved, version, occurred_at)
    SELECT nextval(pg_get_serial_sequence('stock_movement', 'id')), key, NEW.id, k.kind,
           0, 0, NEW.quantity, NEW.reserved, NEW.version, now()
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

CREATE CONSTRAINT TRIGGER product_crossing
    AFTER UPDATE ON product
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN ((OLD.quantity - OLD.reserved > 0) <> (NEW.quantity - NEW.reserved > 0)
          OR (NEW.low_stock_threshold IS NOT NULL
              AND OLD.quantity - OLD.reserved >= NEW.low_stock_threshold
              AND NEW.quantity - NEW.reserved < NEW.low_stock_threshold))
    EXECUTE FUNCTION product_crossing();

-- Waiting-list offers (006) change the product again inside the statement that freed the
-- units: the events of that statement are captured first, with the numbers it left.
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
        PERFORM stock_event_capture(ARRAY[product.id]);
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

-- What a reader may serve: events of ended transactions only, in feed order.
CREATE FUNCTION stock_event_page(after_key xid8, after_id bigint, page int)
RETURNS SETOF stock_event LANGUAGE sql STABLE AS $$
    SELECT * FROM stock_event e
    WHERE (e.feed_key, e.id) > (after_key, after_id)
      AND e.feed_key < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY e.feed_key, e.id
    LIMIT page
$$;
