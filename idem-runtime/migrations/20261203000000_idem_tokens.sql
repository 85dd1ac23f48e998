-- The table of idem's server-issued tokens (idem::tokens), beside idem_records.
-- One row per token: `scope` is the token scope's group key (a hash of the scope), `token`
-- the token, `redeemed` whether it was redeemed; past expires_at the row is absent to every
-- operation. A bounded scope also has one row with the empty token, whose `issued` holds the
-- expiries of the tokens issued within the bound. Issuing deletes a few expired rows.
CREATE TABLE IF NOT EXISTS "public"."idem_records_tokens" (
    scope      text COLLATE "C" NOT NULL,
    token      text COLLATE "C" NOT NULL,
    redeemed   boolean     NOT NULL,
    issued     timestamptz[],
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (scope, token)
);
CREATE INDEX IF NOT EXISTS "idem_records_tokens_exp" ON "public"."idem_records_tokens" (expires_at);
