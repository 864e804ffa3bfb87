-- Stock, holds and the ledger. The invariants live here as constraints and triggers,
-- so no writer (the service, a script, a person in psql) can break them.

CREATE TABLE product (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku         text NOT NULL UNIQUE CHECK (sku ~ '^[A-Za-z0-9._-]{1,64}$'),
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    quantity    integer NOT NULL CHECK (quantity <= 1000000000),
    reserved    integer NOT NULL DEFAULT 0,
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stock_within_bounds CHECK (0 <= reserved AND reserved <= quantity)
) WITH (fillfactor = 70);  -- room for HOT updates: a hot row is rewritten thousands of times a second

-- Every change to a row bumps its version, whoever writes it; subscribers order updates by it.
CREATE FUNCTION product_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER product_bump_version
    BEFORE UPDATE ON product
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION product_bump_version();

CREATE TYPE reservation_status AS ENUM ('PENDING', 'CONFIRMED', 'RELEASED', 'EXPIRED');

CREATE TABLE reservation (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    status           reservation_status NOT NULL DEFAULT 'PENDING',
    idempotency_key  text UNIQUE CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    resolved_at      timestamptz,
    CHECK ((status = 'PENDING') = (resolved_at IS NULL)),
    CHECK (expires_at > created_at)
);

CREATE INDEX reservation_pending_by_expiry ON reservation (expires_at) WHERE status = 'PENDING';

-- A hold ends exactly once: once it has left PENDING it never changes again.
CREATE FUNCTION reservation_resolves_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'PENDING' THEN
        RAISE EXCEPTION 'reservation % is already %', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER reservation_resolves_once
    BEFORE UPDATE ON reservation
    FOR EACH ROW EXECUTE FUNCTION reservation_resolves_once();

CREATE TABLE reservation_line (
    reservation_id  uuid NOT NULL REFERENCES reservation (id),
    product_id      bigint NOT NULL REFERENCES product (id),
    quantity        integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, product_id)
);

CREATE INDEX reservation_line_by_product ON reservation_line (product_id);

CREATE TYPE movement_kind AS ENUM ('CREATE', 'ADJUST', 'RESERVE', 'CONFIRM', 'RELEASE', 'EXPIRE');

-- The ledger: one row per change to a product's quantity or reserved, written in the
-- same transaction as the change. Summing it must give the product's numbers back.
CREATE TABLE stock_movement (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id      bigint NOT NULL REFERENCES product (id),
    kind            movement_kind NOT NULL,
    quantity_delta  integer NOT NULL,
    reserved_delta  integer NOT NULL,
    reservation_id  uuid REFERENCES reservation (id),
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((reservation_id IS NOT NULL) = (kind IN ('RESERVE', 'CONFIRM', 'RELEASE', 'EXPIRE'))),
    CHECK (reservation_id IS NOT NULL OR reason IS NOT NULL)
);

CREATE INDEX stock_movement_by_product ON stock_movement (product_id);
CREATE INDEX stock_movement_by_reservation ON stock_movement (reservation_id)
    WHERE reservation_id IS NOT NULL;

CREATE FUNCTION stock_movement_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'stock_movement is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER stock_movement_append_only
    BEFORE UPDATE OR DELETE ON stock_movement
    FOR EACH ROW EXECUTE FUNCTION stock_movement_append_only();
