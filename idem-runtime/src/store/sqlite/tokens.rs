//! Server-issued tokens in a SQLite file: a table of their own beside the records
//! (`<table>_tokens`, see [`TOKENS_MIGRATION`]), one statement per operation (SQLite runs one
//! write statement at a time, on the newest data):
//!
//! | operation | statement |
//! |---|---|
//! | issue (within a bound or not) | `INSERT … SELECT … WHERE no bound OR (SELECT count(*) of the scope's live bounded tokens) < bound ON CONFLICT DO NOTHING RETURNING 1`, then `DELETE` of a few expired rows |
//! | redeem | `UPDATE … SET redeemed = min(redeemed + 1, 2), expires_at = keep if it was 0 WHERE live RETURNING redeemed`: 1 is valid, 2 redeemed before, no row unknown |
//! | count (operators) | `SELECT sum(…) FROM (… LIMIT n)` over the prefix's range |

use std::time::Duration;

use sqlx::sqlite::SqliteExecutor;
use sqlx::{AssertSqlSafe, Row, SqlSafeStr, SqlStr};

use super::table::Table;
use crate::store::{Issue, Redemption, TokenKey};

/// The SQL that creates the tokens' table and its index, for the default names
/// (`"idem_records_tokens"`); the same text is the migration file
/// `idem-runtime/migrations/sqlite/20261203000000_idem_tokens.sql`. For another table of
/// records, the tokens' table is `<table>_tokens`. `SqliteStore::open` creates it when it
/// creates tables (`create_table`).
pub const TOKENS_MIGRATION: &str =
    include_str!("../../../migrations/sqlite/20261203000000_idem_tokens.sql");

const DEFAULT_TABLE: &str = r#""idem_records_tokens""#;
const DEFAULT_INDEX: &str = r#""idem_records_tokens_exp""#;

/// Now, in milliseconds since the Unix epoch, by SQLite's clock (as in `sql.rs`).
const NOW: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// How many expired rows an issue deletes after it.
const SWEEP: i64 = 2;

/// The tokens' table of the records' `table`, and its statements.
pub(super) struct TokenStatements {
    name: String,
    migration: String,
    issue: SqlStr,
    sweep: SqlStr,
    redeem: SqlStr,
    count: SqlStr,
}

impl TokenStatements {
    pub(super) fn new(table: &Table) -> TokenStatements {
        let name = format!("{}_tokens", table.name);
        let t = format!("\"{}\"", name.replace('"', "\"\""));
        let index = format!("\"{}\"", format!("{name}_exp").replace('"', "\"\""));
        let migration = TOKENS_MIGRATION
            .replace(DEFAULT_TABLE, &t)
            .replace(DEFAULT_INDEX, &index);
        let sql = |text: String| AssertSqlSafe(text).into_sql_str();
        TokenStatements {
            issue: sql(format!(
                "INSERT INTO {t} (scope, token, redeemed, bounded, expires_at) \
                 SELECT ?1, ?2, 0, ?4 IS NOT NULL, {NOW} + ?3 \
                 WHERE ?4 IS NULL OR (SELECT count(*) FROM {t} \
                    WHERE scope = ?1 AND bounded = 1 AND expires_at > {NOW}) < ?4 \
                 ON CONFLICT DO NOTHING RETURNING 1"
            )),
            sweep: sql(format!(
                "DELETE FROM {t} WHERE rowid IN (\
                    SELECT rowid FROM {t} WHERE expires_at <= {NOW} LIMIT {SWEEP})"
            )),
            redeem: sql(format!(
                "UPDATE {t} SET redeemed = min(redeemed + 1, 2), \
                    expires_at = CASE WHEN redeemed = 0 THEN {NOW} + ?3 ELSE expires_at END \
                 WHERE scope = ?1 AND token = ?2 AND expires_at > {NOW} RETURNING redeemed"
            )),
            count: sql(format!(
                "SELECT coalesce(sum(redeemed = 0), 0), coalesce(sum(redeemed > 0), 0) \
                 FROM (SELECT redeemed FROM {t} \
                    WHERE scope >= ?1 AND substr(scope, 1, length(?1)) = ?1 \
                    AND expires_at > {NOW} LIMIT ?2)"
            )),
            name,
            migration,
        }
    }

    /// The SQL that creates the table.
    pub(super) fn migration(&self) -> &str {
        &self.migration
    }

    /// The store error of a token operation on a file without the table.
    pub(super) fn missing(&self, describe: &str) -> crate::error::StoreError {
        crate::error::StoreError::new(
            crate::error::StoreErrorKind::Other,
            format!(
                "the tokens' table {} does not exist in the SQLite database {describe}; create it with:\n{}",
                self.name, self.migration
            ),
        )
    }
}

/// Whether `error` says the table does not exist.
pub(super) fn no_table(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.message().contains("no such table"))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX / 2)
        .clamp(1, i64::MAX / 2)
}

pub(super) async fn issue<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &TokenStatements,
    token: &TokenKey,
    ttl: Duration,
    max_live: Option<u32>,
) -> Result<Issue, sqlx::Error> {
    let made = sqlx::query(sql.issue.clone())
        .bind(token.group())
        .bind(token.token())
        .bind(millis(ttl))
        .bind(max_live.map(i64::from))
        .fetch_optional(executor)
        .await?;
    Ok(if made.is_some() {
        Issue::Issued
    } else {
        Issue::Full
    })
}

/// Deletes a few expired tokens.
pub(super) async fn sweep<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &TokenStatements,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql.sweep.clone()).execute(executor).await?;
    Ok(())
}

pub(super) async fn redeem<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &TokenStatements,
    token: &TokenKey,
    keep: Duration,
) -> Result<Redemption, sqlx::Error> {
    let state: Option<i64> = sqlx::query_scalar(sql.redeem.clone())
        .bind(token.group())
        .bind(token.token())
        .bind(millis(keep))
        .fetch_optional(executor)
        .await?;
    Ok(match state {
        None => Redemption::Unknown,
        Some(1) => Redemption::Valid,
        Some(_) => Redemption::Redeemed,
    })
}

/// At most `limit` live tokens under `prefix`: (not redeemed, redeemed).
pub(super) async fn count<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &TokenStatements,
    prefix: &str,
    limit: usize,
) -> Result<(u64, u64), sqlx::Error> {
    let row = sqlx::query(sql.count.clone())
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
