-- Live hold status: every statement that changes holds or their lines names the holds it
-- changed on inventory_reservation. The payload is ids only: subscribers re-read each hold,
-- so what they see is what the database holds, whatever wrote it.
--
-- Statement-level, like availability (002): one NOTIFY per 150 holds a statement changed
-- (a sweep expiring a batch sends one or a few), each payload at most ~5,900 bytes, below
-- PostgreSQL's 8000. Writers that change holds already notify availability in the same
-- transaction, so this adds no commit-time lock of its own.
CREATE FUNCTION reservation_notify_ids(ids uuid[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    FOR payload IN
        SELECT json_agg(id)::text
        FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / 150 AS chunk
              FROM unnest(ids) AS u(id)) AS c
        GROUP BY chunk
    LOOP
        PERFORM pg_notify('inventory_reservation', payload);
    END LOOP;
END $$;

CREATE FUNCTION reservation_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM reservation_notify_ids(ARRAY(SELECT id FROM changed));
    RETURN NULL;
END $$;

CREATE TRIGGER reservation_notify
    AFTER UPDATE ON reservation
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION reservation_notify();

-- A partial confirm or release may change only lines.
CREATE FUNCTION reservation_line_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM reservation_notify_ids(ARRAY(SELECT DISTINCT reservation_id FROM changed));
    RETURN NULL;
END $$;

CREATE TRIGGER reservation_line_notify
    AFTER UPDATE ON reservation_line
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION reservation_line_notify();
