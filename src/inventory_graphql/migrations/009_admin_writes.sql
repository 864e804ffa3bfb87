-- Safe admin writes: idempotency keys for adjustStock, setStock and adjustStocks.
--
-- A key belongs to the admin that sent it (the name of its token): another admin's key is
-- another key. The first request with a key inserts its row, applies, and writes its answer
-- in the same transaction; a concurrent request with the key waits on the primary key
-- until that transaction ends, then finds the row (replays the answer, or refuses other
-- arguments) or, if it rolled back, takes the key itself. Rows are pruned after their
-- retention (inventory/admin_writes.py).
CREATE TABLE admin_write_key (
    actor        text NOT NULL CHECK (char_length(actor) BETWEEN 1 AND 64),
    key          text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    operation    text NOT NULL CHECK (operation IN ('adjustStock', 'setStock', 'adjustStocks')),
    -- SHA-256 of the operation and its arguments: same key, other arguments is refused.
    fingerprint  bytea NOT NULL CHECK (octet_length(fingerprint) = 32),
    -- The answer given. NULL only inside the transaction that took the key (it is written
    -- before that transaction commits), so no other transaction ever reads it NULL.
    answer       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor, key)
);

-- Pruning takes the oldest first.
CREATE INDEX admin_write_key_by_age ON admin_write_key (created_at);
