-- The table of idem's SqliteStore: one row per idempotency key.
-- A row lives until expires_at (milliseconds since the Unix epoch, by SQLite's clock: the lease
-- while a call runs, the ttl once it completed); past it, the row is absent to every operation
-- and a reaper deletes it in small batches.
CREATE TABLE IF NOT EXISTS "idem_records" (
    key         TEXT    NOT NULL PRIMARY KEY,
    state       TEXT    NOT NULL CHECK (state IN ('in_progress', 'completed')),
    token       BLOB    NOT NULL,
    fingerprint BLOB,
    payload     BLOB,
    expires_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS "idem_records_expires_at" ON "idem_records" (expires_at);
