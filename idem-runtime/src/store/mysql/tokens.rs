//! Server-issued tokens in MySQL or MariaDB: a table of their own beside the records
//! (`<table>_tokens`, see [`TOKENS_MIGRATION`]).
//!
//! | operation | statements |
//! |---|---|
//! | issue | `INSERT IGNORE … VALUES`, then `DELETE` of a few expired rows |
//! | issue within a bound | `INSERT … SELECT … WHERE (SELECT count(*) of the scope's live bounded tokens) < bound`: InnoDB reads the count with shared next-key locks on the scope's range, so two concurrent issues cannot both see room for one; the one of a deadlock that InnoDB rolls back (1213) asks again |
//! | redeem | `UPDATE … SET redeemed = 1, expires_at = keep WHERE live AND redeemed = 0`: one row changed is valid (exactly one of concurrent redemptions changes it); otherwise one `SELECT` tells redeemed (a live row) from unknown |
//! | count (operators) | `SELECT sum(…) FROM (… LIMIT n)` over the prefix's range |
//!
//! MySQL has no `UPDATE … RETURNING`: a redemption that is not valid costs a second statement,
//! a valid one none.

use std::time::Duration;

use sqlx::mysql::MySqlExecutor;
use sqlx::{AssertSqlSafe, Row, SqlSafeStr, SqlStr};

use super::table::Table;
use crate::store::{Issue, Redemption, TokenKey};

/// The SQL that creates the tokens' table and its index, for the default names
/// (`` `idem_records_tokens` ``); the same text is the migration file
/// `idem-runtime/migrations/mysql/20261203000001_idem_tokens.sql`. For another table of records,
/// the tokens' table is `<table>_tokens`. A store creates it when it creates tables
/// (`create_table`).
pub const TOKENS_MIGRATION: &str =
    include_str!("../../../migrations/mysql/20261203000001_idem_tokens.sql");

const DEFAULT_TABLE: &str = "`idem_records_tokens`";
const DEFAULT_INDEX: &str = "`idem_records_tokens_exp`";

/// Now, in milliseconds since the Unix epoch, by the server's clock (as in `sql.rs`).
const NOW: &str = "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000)";

/// How many expired rows an issue deletes after it.
const SWEEP: u32 = 2;

/// How often a bounded issue asks again after InnoDB chose it as a deadlock's victim.
const DEADLOCK_TRIES: u32 = 16;

/// InnoDB's deadlock error.
const DEADLOCK: &str = "1213";

/// The tokens' table of the records' `table`, and its statements.
pub(super) struct TokenStatements {
    name: String,
    migration: String,
    issue: SqlStr,
    issue_bounded: SqlStr,
    sweep: SqlStr,
    redeem: SqlStr,
    seen: SqlStr,
    count: SqlStr,
}

fn quote(identifier: &str) -> String {
    format!("`{}`", identifier.replace('`', "``"))
}

impl TokenStatements {
    pub(super) fn new(table: &Table) -> TokenStatements {
        let name = format!("{}_tokens", table.name);
        let t = quote(&name);
        let migration = TOKENS_MIGRATION
            .replace(DEFAULT_TABLE, &t)
            .replace(DEFAULT_INDEX, &quote(&format!("{name}_exp")));
        let sql = |text: String| AssertSqlSafe(text).into_sql_str();
        TokenStatements {
            issue: sql(format!(
                "INSERT IGNORE INTO {t} (`scope`, `token`, `redeemed`, `bounded`, `expires_at`) \
                 VALUES (?, ?, 0, 0, {NOW} + ?)"
            )),
            issue_bounded: sql(format!(
                "INSERT IGNORE INTO {t} (`scope`, `token`, `redeemed`, `bounded`, `expires_at`) \
                 SELECT ?, ?, 0, 1, {NOW} + ? FROM DUAL \
                 WHERE (SELECT count(*) FROM {t} AS live \
                    WHERE live.`scope` = ? AND live.`bounded` = 1 AND live.`expires_at` > {NOW}) < ?"
            )),
            sweep: sql(format!(
                "DELETE FROM {t} WHERE `expires_at` <= {NOW} ORDER BY `expires_at` LIMIT {SWEEP}"
            )),
            redeem: sql(format!(
                "UPDATE {t} SET `expires_at` = {NOW} + ?, `redeemed` = 1 \
                 WHERE `scope` = ? AND `token` = ? AND `redeemed` = 0 AND `expires_at` > {NOW}"
            )),
            seen: sql(format!(
                "SELECT 1 FROM {t} WHERE `scope` = ? AND `token` = ? AND `expires_at` > {NOW}"
            )),
            count: sql(format!(
                "SELECT CAST(coalesce(sum(`redeemed` = 0), 0) AS SIGNED), \
                    CAST(coalesce(sum(`redeemed` > 0), 0) AS SIGNED) \
                 FROM (SELECT `redeemed` FROM {t} \
                    WHERE `scope` >= ? AND LEFT(`scope`, LENGTH(?)) = ? \
                    AND `expires_at` > {NOW} LIMIT ?) AS counted"
            )),
            name,
            migration,
        }
    }

    /// The SQL that creates the table.
    pub(super) fn migration(&self) -> &str {
        &self.migration
    }

    /// The store error of a token operation on a database without the table.
    pub(super) fn missing(&self, describe: &str) -> crate::error::StoreError {
        crate::error::StoreError::new(
            crate::error::StoreErrorKind::Other,
            format!(
                "the tokens' table {} does not exist in the MySQL database {describe}; create it with:\n{}",
                self.name, self.migration
            ),
        )
    }
}

/// Whether `error` says the table does not exist (1146).
pub(super) fn no_table(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("1146") || db.message().contains("doesn't exist"))
}

fn deadlock(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(DEADLOCK) || db.message().contains("Deadlock found"))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX / 2)
        .clamp(1, i64::MAX / 2)
}

/// Stores `token`, within `max_live` bounded tokens of its scope when given.
pub(super) async fn issue(
    pool: &sqlx::MySqlPool,
    sql: &TokenStatements,
    token: &TokenKey,
    ttl: Duration,
    max_live: Option<u32>,
) -> Result<Issue, sqlx::Error> {
    let Some(bound) = max_live else {
        let done = sqlx::query(sql.issue.clone())
            .bind(token.group())
            .bind(token.token())
            .bind(millis(ttl))
            .execute(pool)
            .await?;
        // No row only for a token that exists already: 128 random bits never repeat.
        return Ok(if done.rows_affected() == 1 {
            Issue::Issued
        } else {
            Issue::Full
        });
    };
    let mut tries = 0;
    loop {
        let done = sqlx::query(sql.issue_bounded.clone())
            .bind(token.group())
            .bind(token.token())
            .bind(millis(ttl))
            .bind(token.group())
            .bind(i64::from(bound))
            .execute(pool)
            .await;
        match done {
            Ok(done) if done.rows_affected() == 1 => return Ok(Issue::Issued),
            Ok(_) => return Ok(Issue::Full),
            Err(error) if deadlock(&error) && tries < DEADLOCK_TRIES => {
                tries += 1;
                tokio::task::yield_now().await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Deletes a few expired tokens.
pub(super) async fn sweep<'e>(
    executor: impl MySqlExecutor<'e>,
    sql: &TokenStatements,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql.sweep.clone()).execute(executor).await?;
    Ok(())
}

/// Redeems `token`, keeping it for `keep` more when it was valid.
pub(super) async fn redeem(
    pool: &sqlx::MySqlPool,
    sql: &TokenStatements,
    token: &TokenKey,
    keep: Duration,
) -> Result<Redemption, sqlx::Error> {
    let done = sqlx::query(sql.redeem.clone())
        .bind(millis(keep))
        .bind(token.group())
        .bind(token.token())
        .execute(pool)
        .await?;
    if done.rows_affected() == 1 {
        return Ok(Redemption::Valid);
    }
    let seen = sqlx::query(sql.seen.clone())
        .bind(token.group())
        .bind(token.token())
        .fetch_optional(pool)
        .await?;
    Ok(if seen.is_some() {
        Redemption::Redeemed
    } else {
        Redemption::Unknown
    })
}

/// At most `limit` live tokens under `prefix`: (not redeemed, redeemed).
pub(super) async fn count<'e>(
    executor: impl MySqlExecutor<'e>,
    sql: &TokenStatements,
    prefix: &str,
    limit: usize,
) -> Result<(u64, u64), sqlx::Error> {
    let row = sqlx::query(sql.count.clone())
        .bind(prefix)
        .bind(prefix)
        .bind(prefix)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_one(executor)
        .await?;
    let (live, redeemed): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    Ok((
        u64::try_from(live).unwrap_or(0),
        u64::try_from(redeemed).unwrap_or(0),
    ))
}
