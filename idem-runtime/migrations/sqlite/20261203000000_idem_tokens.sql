-- The table of idem's server-issued tokens (idem::tokens) in a SQLite file, beside idem_records.
-- One row per token: `scope` is the token scope's group key (a hash of the scope), `token` the
-- token, `redeemed` 0 until it is redeemed (then 2), `bounded` 1 for a token issued within a
-- bound; expires_at is in milliseconds since the Unix epoch, by SQLite's clock. Issuing deletes
-- a few expired rows.
CREATE TABLE IF NOT EXISTS "idem_records_tokens" (
    scope      TEXT    NOT NULL,
    token      TEXT    NOT NULL,
    redeemed   INTEGER NOT NULL,
    bounded    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (scope, token)
) STRICT;
CREATE INDEX IF NOT EXISTS "idem_records_tokens_exp" ON "idem_records_tokens" (expires_at);
