-- The benchmark peer's reservation (bench.peer_postgraphile): a one-line reserve as one
-- VOLATILE function, which PostGraphile exposes as the mutation `reserve`. Only the schema
-- `peer` is exposed: the GraphQL schema holds this mutation and nothing else of ours.
--
-- It writes what the service's uncoalesced one-line reserve writes (reservations.py's
-- hold_lines), on the same tables, so the same triggers fire: the product's row locked
-- and its `reserved` raised by the service's own hold_line (migration 006: the stock
-- checked under the row lock, never an oversell), then the hold, its line and its ledger
-- row with the product's numbers after it (as INSERT_LINES writes them). Differences, all
-- in the peer's favour or neutral: no idempotency key (the service's insert carries an
-- ON CONFLICT for one), the hold is inserted after the product is locked rather than
-- before (a refusal then writes nothing, with no rollback), and the three inserts are one
-- statement. A refusal (no such product, not enough available, a queue waiting) returns
-- NULL: the mutation answers `reservation: null`.

DROP SCHEMA IF EXISTS peer CASCADE;
CREATE SCHEMA peer;

-- What the mutation answers; a composite type named so that its GraphQL type is
-- `Reservation`, as the service's answer is.
CREATE TYPE peer.reservation AS (id uuid, created_at timestamptz, expires_at timestamptz);

CREATE FUNCTION peer.reserve(sku text, quantity integer, ttl_seconds integer)
RETURNS peer.reservation LANGUAGE plpgsql VOLATILE STRICT AS $$
#variable_conflict use_column
DECLARE
    held record;
    made peer.reservation;
BEGIN
    -- The service's input bounds (validation.py's defaults), before anything is locked.
    IF reserve.quantity NOT BETWEEN 1 AND 1000000
       OR reserve.ttl_seconds NOT BETWEEN 1 AND 3600 THEN
        RAISE EXCEPTION 'quantity or ttl_seconds out of range' USING ERRCODE = 'check_violation';
    END IF;
    -- A VOLATILE function takes a fresh snapshot per statement: the statement below sees
    -- the product as hold_line left it, under its row lock.
    SELECT * INTO held FROM public.hold_line(reserve.sku, reserve.quantity, NULL);
    IF NOT FOUND OR NOT held.held THEN
        RETURN NULL;
    END IF;
    WITH hold AS (
        INSERT INTO public.reservation (expires_at)
        VALUES (now() + make_interval(secs => reserve.ttl_seconds))
        RETURNING id, created_at, expires_at
    ), line AS (
        INSERT INTO public.reservation_line (reservation_id, product_id, quantity)
        SELECT h.id, held.product_id, reserve.quantity FROM hold h
    ), movement AS (
        INSERT INTO public.stock_movement
            (product_id, kind, quantity_delta, reserved_delta, reservation_id,
             feed_key, quantity_after, reserved_after, version_after)
        SELECT p.id, 'RESERVE', 0, reserve.quantity, h.id,
               greatest(pg_current_xact_id(), p.feed_key), p.quantity, p.reserved, p.version
        FROM hold h JOIN public.product p ON p.id = held.product_id
    )
    SELECT h.id, h.created_at, h.expires_at INTO made FROM hold h;
    RETURN made;
END $$;
