-- Live availability: every statement that changes products publishes their new numbers.
--
-- Statement-level with a transition table, not per row: a transaction that NOTIFYs takes
-- a cluster-wide lock at commit, so one NOTIFY per statement (however many rows it
-- changed) instead of one per row. Payloads stay far below PostgreSQL's 8000-byte limit:
-- at most 40 products per notification, each at most ~150 bytes.
CREATE FUNCTION product_notify_availability() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    FOR payload IN
        SELECT json_agg(json_build_array(sku, quantity, reserved, version, updated_at))::text
        FROM (SELECT sku, quantity, reserved, version, updated_at,
                     (row_number() OVER (ORDER BY sku) - 1) / 40 AS chunk
              FROM changed) AS c
        GROUP BY chunk
    LOOP
        PERFORM pg_notify('inventory_availability', payload);
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER product_notify_availability
    AFTER UPDATE ON product
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION product_notify_availability();
