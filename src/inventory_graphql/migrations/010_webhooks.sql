-- Webhooks: endpoints that receive the stock event feed (008), each with its durable place
-- in the feed and the message it is delivering.
--
-- Delivery (webhooks/delivery.py) is at-least-once and in feed order per endpoint. An
-- endpoint's progress is the feed cursor (feed_key, event_id) of the last event it
-- acknowledged. Before its first attempt a message is fixed here by its first and last
-- cursor: the events of the endpoint's kinds in (progress, last] are final (below the
-- feed's xmin when read), so every retry, by this process or one that takes over,
-- resends the same events under the same webhook-id. One process delivers to an endpoint
-- at a time: it holds a session advisory lock (hashtext('inventory.webhook'), id) on a
-- connection of its own, and every write of delivery state checks that lock (a process
-- that lost its connection has lost the lock too and can move nothing).

CREATE TYPE webhook_status AS ENUM ('ACTIVE', 'FAILING', 'DISABLED');

CREATE TABLE webhook_endpoint (
    id                integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url               text NOT NULL CHECK (char_length(url) BETWEEN 1 AND 2048),
    kinds             stock_event_kind[] CHECK (cardinality(kinds) BETWEEN 1 AND 32),  -- NULL: all
    secret            bytea NOT NULL CHECK (octet_length(secret) BETWEEN 24 AND 64),
    created_at        timestamptz NOT NULL DEFAULT now(),
    created_by        text CHECK (char_length(created_by) BETWEEN 1 AND 64),
    status            webhook_status NOT NULL DEFAULT 'ACTIVE',
    disabled_at       timestamptz,
    disabled_reason   text CHECK (char_length(disabled_reason) BETWEEN 1 AND 500),
    -- Durable progress: the last event delivered (or passed over: not of its kinds).
    feed_key          xid8 NOT NULL,
    event_id          bigint NOT NULL,
    -- The message being delivered: events of its kinds in (progress, last], first the
    -- first of them; fixed before its first attempt.
    first_key         xid8,
    first_id          bigint,
    last_key          xid8,
    last_id           bigint,
    message_events    integer CHECK (message_events BETWEEN 1 AND 10000),
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    first_failure_at  timestamptz,
    next_attempt_at   timestamptz,
    last_success_at   timestamptz,
    delivered_events  bigint NOT NULL DEFAULT 0 CHECK (delivered_events >= 0),
    -- A message is whole or absent, after the progress, its first event not after its last.
    CHECK ((first_key IS NULL) = (first_id IS NULL)
       AND (first_key IS NULL) = (last_key IS NULL)
       AND (first_key IS NULL) = (last_id IS NULL)
       AND (first_key IS NULL) = (message_events IS NULL)),
    CHECK ((feed_key, event_id) < (first_key, first_id)),
    CHECK ((first_key, first_id) <= (last_key, last_id)),
    -- Failures belong to a message being delivered.
    CHECK (first_key IS NOT NULL OR (attempts = 0 AND first_failure_at IS NULL)),
    CHECK ((status = 'DISABLED') = (disabled_at IS NOT NULL AND disabled_reason IS NOT NULL))
);

-- The last failures of each endpoint (a trigger keeps WEBHOOK_FAILURES_KEPT of them).
CREATE TABLE webhook_failure (
    endpoint_id  integer NOT NULL REFERENCES webhook_endpoint ON DELETE CASCADE,
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    at           timestamptz NOT NULL DEFAULT now(),
    webhook_id   text NOT NULL CHECK (char_length(webhook_id) BETWEEN 1 AND 100),
    attempt      integer NOT NULL CHECK (attempt >= 1),
    status_code  integer CHECK (status_code BETWEEN 100 AND 599),  -- NULL: no answer
    error        text NOT NULL CHECK (char_length(error) BETWEEN 1 AND 500),
    PRIMARY KEY (endpoint_id, seq)
);

-- Keep an endpoint's last 20 failures: a dead endpoint retried for days stays bounded.
CREATE FUNCTION webhook_failure_keep_last() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhook_failure f
    WHERE f.endpoint_id = NEW.endpoint_id
      AND f.seq <= (SELECT g.seq FROM webhook_failure g WHERE g.endpoint_id = NEW.endpoint_id
                    ORDER BY g.seq DESC OFFSET 20 LIMIT 1);
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_failure_keep_last
    AFTER INSERT ON webhook_failure
    FOR EACH ROW EXECUTE FUNCTION webhook_failure_keep_last();

-- Whether this session holds the delivery lock of an endpoint: every write of delivery
-- state checks it, so a process whose lock went with its connection cannot move it.
CREATE FUNCTION webhook_lock_held(endpoint integer) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.granted
          AND l.classid = hashtext('inventory.webhook')::oid
          AND l.objid = endpoint::oid AND l.objsubid = 2)
$$;
