-- The table of idem's PostgresStore: one row per idempotency key.
-- A row lives until expires_at (the lease while a call runs, the ttl once it completed);
-- past it, the row is absent to every operation and a reaper deletes it in small batches.
CREATE TABLE IF NOT EXISTS "public"."idem_records" (
    key         text COLLATE "C" PRIMARY KEY,
    state       text        NOT NULL CHECK (state IN ('in_progress', 'completed')),
    token       bytea       NOT NULL,
    fingerprint bytea,
    payload     bytea,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS "idem_records_expires_at" ON "public"."idem_records" (expires_at);
