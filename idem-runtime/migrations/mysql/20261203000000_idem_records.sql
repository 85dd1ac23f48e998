-- The table of idem's MySqlStore (MySQL 8 and MariaDB 10.6 or later, InnoDB): one row per
-- idempotency key. A row lives until expires_at (milliseconds since the Unix epoch, by the
-- server's clock: the lease while a call runs, the ttl once it completed); past it, the row is
-- absent to every operation and a reaper deletes it in small batches. The key is compared
-- byte by byte (VARBINARY: no collation, no trailing-space padding).
CREATE TABLE IF NOT EXISTS `idem_records` (
    `key`         VARBINARY(1024) NOT NULL PRIMARY KEY,
    `state`       VARCHAR(11)     CHARACTER SET ascii NOT NULL CHECK (`state` IN ('in_progress', 'completed')),
    `token`       VARBINARY(16)   NOT NULL,
    `fingerprint` VARBINARY(32),
    `payload`     LONGBLOB,
    `expires_at`  BIGINT          NOT NULL,
    INDEX `idem_records_expires_at` (`expires_at`)
) ENGINE = InnoDB;
