-- The table of idem's server-issued tokens (idem::tokens) in MySQL or MariaDB (InnoDB), beside
-- idem_records. One row per token: `scope` is the token scope's group key (a hash of the
-- scope), `token` the token, `redeemed` 0 until it is redeemed (then 1), `bounded` 1 for a
-- token issued within a bound; expires_at is in milliseconds since the Unix epoch, by the
-- server's clock. Issuing deletes a few expired rows.
CREATE TABLE IF NOT EXISTS `idem_records_tokens` (
    `scope`      VARBINARY(255) NOT NULL,
    `token`      VARBINARY(64)  NOT NULL,
    `redeemed`   TINYINT        NOT NULL,
    `bounded`    TINYINT        NOT NULL,
    `expires_at` BIGINT         NOT NULL,
    PRIMARY KEY (`scope`, `token`),
    INDEX `idem_records_tokens_exp` (`expires_at`)
) ENGINE = InnoDB;
