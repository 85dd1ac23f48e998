//! The statements of [`SqliteStore`](super::SqliteStore), as functions on any executor (a pool,
//! a connection, a transaction).
//!
//! Every statement decides expiry by SQLite's clock ([`NOW`], milliseconds since the Unix
//! epoch, one value per statement), never the caller's, and each runs in its own implicit
//! transaction: a write holds the database's write lock for that one statement, and a reader
//! (WAL mode) sees a record whole or not at all, never half written.
//!
//! | operation | statement |
//! |---|---|
//! | claim: read the live record (a replay and a duplicate stop here) | `SELECT … WHERE key, live` |
//! | claim: take a key that is absent or expired | `INSERT … ON CONFLICT (key) DO UPDATE … WHERE expired RETURNING 1` |
//! | complete | `UPDATE … SET state, payload, expires_at WHERE key, token, in progress, live` |
//! | release | `DELETE … WHERE key, token, in progress, live` |
//! | renew | `UPDATE … SET expires_at WHERE key, token, in progress, live` |
//! | lease left (waiters) | `SELECT expires_at - now … WHERE key, token, in progress, live` |
//! | inspect (operators) | `SELECT state, fingerprint, octet_length(payload), expires_at - now … WHERE key, live` |
//! | forget (operators) | `DELETE … WHERE key RETURNING live` |
//! | stats (operators) | `SELECT key, state … WHERE key in the prefix's range, live ORDER BY key LIMIT n`, batch after batch; `SELECT count(*)` |
//! | reap | `DELETE … WHERE key IN (SELECT key … WHERE expired LIMIT n)` |
//!
//! In the transactional mode (`tx.rs`), the claim is the same two statements (read, then take)
//! inside the caller's transaction; completion and release drop the expiry from their
//! condition (`tx_complete`, `tx_release`): the transaction holds the database's write lock
//! from its claim on, so no one else can have taken the key, however long the body ran.

use std::time::Duration;

use sqlx::sqlite::{SqliteExecutor, SqliteRow};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr, SqlStr};

use super::table::Table;
use crate::record::{Claim, Fingerprint, Record, Token};
use crate::store::{Inspection, Stats};

/// Now, in milliseconds since the Unix epoch, by SQLite's clock: the same value throughout one
/// statement.
const NOW: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// How many keys one statement of `stats` reads at most.
const STATS_BATCH: usize = 1000;

/// The statements of one table, built once per store (sqlx prepares each once per connection
/// and caches it by its text).
#[derive(Debug)]
pub(super) struct Statements {
    table: String,
    live: SqlStr,
    take: SqlStr,
    complete: SqlStr,
    release: SqlStr,
    renew: SqlStr,
    lease_left: SqlStr,
    inspect: SqlStr,
    forget: SqlStr,
    count: SqlStr,
    reap: SqlStr,
    tx_complete: SqlStr,
    tx_release: SqlStr,
}

impl Statements {
    pub(super) fn new(table: &Table) -> Statements {
        let t = table.quoted();
        let held =
            format!("key = ?1 AND token = ?2 AND state = 'in_progress' AND expires_at > {NOW}");
        let sql = |text: String| AssertSqlSafe(text).into_sql_str();
        Statements {
            live: sql(format!(
                "SELECT state, token, fingerprint, payload, expires_at - {NOW} FROM {t} \
                 WHERE key = ?1 AND expires_at > {NOW}"
            )),
            // Inserts the claim, or takes over an expired row; a live row is left as it is and
            // nothing comes back (a concurrent claim took the key since it was read).
            take: sql(format!(
                "INSERT INTO {t} (key, state, token, fingerprint, payload, expires_at) \
                 VALUES (?1, 'in_progress', ?2, ?3, NULL, {NOW} + ?4) \
                 ON CONFLICT (key) DO UPDATE SET state = 'in_progress', token = excluded.token, \
                    fingerprint = excluded.fingerprint, payload = NULL, \
                    expires_at = excluded.expires_at \
                 WHERE expires_at <= {NOW} \
                 RETURNING 1"
            )),
            complete: sql(format!(
                "UPDATE {t} SET state = 'completed', payload = ?3, expires_at = {NOW} + ?4 \
                 WHERE {held}"
            )),
            release: sql(format!("DELETE FROM {t} WHERE {held}")),
            renew: sql(format!(
                "UPDATE {t} SET expires_at = {NOW} + ?3 WHERE {held}"
            )),
            lease_left: sql(format!("SELECT expires_at - {NOW} FROM {t} WHERE {held}")),
            // The fingerprint column is the claim's, kept by the completion: the envelope's own
            // need not be read.
            inspect: sql(format!(
                "SELECT state, fingerprint, octet_length(payload), expires_at - {NOW} FROM {t} \
                 WHERE key = ?1 AND expires_at > {NOW}"
            )),
            // An expired row goes too, but only a live one counts as forgotten.
            forget: sql(format!(
                "DELETE FROM {t} WHERE key = ?1 RETURNING expires_at > {NOW}"
            )),
            count: sql(format!("SELECT count(*) FROM {t}")),
            reap: sql(format!(
                "DELETE FROM {t} WHERE key IN (\
                    SELECT key FROM {t} WHERE expires_at <= {NOW} LIMIT ?1)"
            )),
            tx_complete: sql(format!(
                "UPDATE {t} SET state = 'completed', payload = ?3, expires_at = {NOW} + ?4 \
                 WHERE key = ?1 AND token = ?2 AND state = 'in_progress'"
            )),
            tx_release: sql(format!(
                "DELETE FROM {t} WHERE key = ?1 AND token = ?2 AND state = 'in_progress'"
            )),
            table: t,
        }
    }
}

/// Whole milliseconds, at least one, as the integer the statements take.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX / 2)
        // Far enough from overflow once added to now.
        .clamp(1, i64::MAX / 2)
}

/// Milliseconds left, as a duration (none when negative).
fn left(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The live record of `key`, if any.
pub(super) async fn live<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
    key: &str,
) -> Result<Option<Record>, sqlx::Error> {
    let row = sqlx::query(sql.live.clone())
        .bind(key)
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(record).transpose()
}

/// Claims `key` for `claim` with expiry `lease` if no live row holds it; `true` if it did.
pub(super) async fn take<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(sql.take.clone())
        .bind(key)
        .bind(&claim.token.to_bytes()[..])
        .bind(claim.fingerprint.as_ref().map(|fp| &fp.as_bytes()[..]))
        .bind(millis(lease))
        .fetch_optional(executor)
        .await?;
    Ok(row.is_some())
}

/// The record of a live row read by [`live`].
fn record(row: &SqliteRow) -> Result<Record, sqlx::Error> {
    let state: String = row.try_get(0)?;
    match state.as_str() {
        "completed" => {
            let payload: Option<Vec<u8>> = row.try_get(3)?;
            let ms: i64 = row.try_get(4)?;
            Ok(Record::Completed {
                // A missing payload is corrupt: the engine reports it as `Error::Decode`.
                payload: payload.unwrap_or_default(),
                expires_in: Some(left(ms)),
            })
        }
        "in_progress" => {
            let token: Vec<u8> = row.try_get(1)?;
            let fingerprint: Option<Vec<u8>> = row.try_get(2)?;
            let token = <[u8; 16]>::try_from(token.as_slice())
                .map_err(|_| corrupt("a token that is not 16 bytes"))?;
            Ok(Record::InProgress(Claim {
                token: Token::from_bytes(token),
                fingerprint: fingerprint.as_deref().map(fingerprint_of).transpose()?,
            }))
        }
        other => Err(corrupt(&format!("the unknown state `{other}`"))),
    }
}

fn fingerprint_of(bytes: &[u8]) -> Result<Fingerprint, sqlx::Error> {
    <[u8; 32]>::try_from(bytes)
        .map(Fingerprint::from_bytes)
        .map_err(|_| corrupt("a fingerprint that is not 32 bytes"))
}

/// A row the store cannot read: a decoding error.
fn corrupt(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("the idem table holds a row with {what}").into())
}

/// Stores `payload` for the claim with expiry `ttl`; `true` if the claim held the key.
pub(super) async fn complete<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    payload: &[u8],
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(sql.complete.clone())
        .bind(key)
        .bind(&claim.token.to_bytes()[..])
        .bind(payload)
        .bind(millis(ttl))
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes the claim's row; `true` if the claim held the key.
pub(super) async fn release<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(sql.release.clone())
        .bind(key)
        .bind(&claim.token.to_bytes()[..])
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Extends the claim's expiry to `lease` from now; `true` if the claim held the key.
pub(super) async fn renew<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(sql.renew.clone())
        .bind(key)
        .bind(&claim.token.to_bytes()[..])
        .bind(millis(lease))
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The lease left to `holder` on `key`, or `None` when it no longer holds the key.
pub(super) async fn lease_left<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
    key: &str,
    holder: &Claim,
) -> Result<Option<Duration>, sqlx::Error> {
    let ms: Option<i64> = sqlx::query_scalar(sql.lease_left.clone())
        .bind(key)
        .bind(&holder.token.to_bytes()[..])
        .fetch_optional(executor)
        .await?;
    Ok(ms.map(left))
}

/// What the live row of `key` holds.
pub(super) async fn inspect<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
    key: &str,
) -> Result<Inspection, sqlx::Error> {
    let row = sqlx::query(sql.inspect.clone())
        .bind(key)
        .fetch_optional(executor)
        .await?;
    let Some(row) = row else {
        return Ok(Inspection::Absent);
    };
    let state: String = row.try_get(0)?;
    let fingerprint: Option<Vec<u8>> = row.try_get(1)?;
    let size: Option<i64> = row.try_get(2)?;
    let ms: i64 = row.try_get(3)?;
    let fingerprint = fingerprint.as_deref().map(fingerprint_of).transpose()?;
    match state.as_str() {
        "in_progress" => Ok(Inspection::InProgress {
            lease_left: Some(left(ms)),
            fingerprint,
        }),
        "completed" => Ok(Inspection::Completed {
            ttl_left: Some(left(ms)),
            fingerprint,
            size: size.and_then(|n| usize::try_from(n).ok()).unwrap_or(0),
        }),
        other => Err(corrupt(&format!("the unknown state `{other}`"))),
    }
}

/// Deletes the row of `key`, live or expired; `true` if it was live.
pub(super) async fn forget<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
    key: &str,
) -> Result<bool, sqlx::Error> {
    let live: Option<bool> = sqlx::query_scalar(sql.forget.clone())
        .bind(key)
        .fetch_optional(executor)
        .await?;
    Ok(live.unwrap_or(false))
}

/// One batch of the live rows whose keys start with `prefix`, in key order: at most `limit`
/// of them, from `after` (excluded) or from the start of the prefix's range. Returns each key
/// and whether it is in progress.
pub(super) async fn stats_batch<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, bool)>, sqlx::Error> {
    let end = past(prefix);
    // The lower bound and the upper one (none for an empty prefix) as index ranges of the
    // primary key, so that each batch starts where the last one ended.
    let text = format!(
        "SELECT key, state = 'in_progress' FROM {t} \
         WHERE key {lower} ?1 {upper} AND substr(key, 1, length(?3)) = ?3 \
         AND expires_at > {NOW} ORDER BY key LIMIT ?4",
        t = sql.table,
        lower = if after.is_some() { ">" } else { ">=" },
        upper = if end.is_some() {
            "AND key < ?2"
        } else {
            "AND ?2 IS NULL"
        },
    );
    let rows = sqlx::query(AssertSqlSafe(text).into_sql_str())
        .bind(after.unwrap_or(prefix))
        .bind(end)
        .bind(prefix)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(executor)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// How many rows the table holds, expired ones the reaper has not deleted yet included.
pub(super) async fn count<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
) -> Result<u64, sqlx::Error> {
    let rows: i64 = sqlx::query_scalar(sql.count.clone())
        .fetch_one(executor)
        .await?;
    Ok(u64::try_from(rows).unwrap_or(0))
}

/// Counts the live rows of `prefix` by state and scope, at most `limit` of them, in batches of
/// at most [`STATS_BATCH`] keys (one statement each, so that no read lasts long).
pub(super) async fn stats(
    pool: &sqlx::SqlitePool,
    sql: &Statements,
    prefix: &str,
    limit: usize,
) -> Result<Stats, sqlx::Error> {
    let mut stats = Stats::new(0, 0, true);
    let mut counted = 0_usize;
    let mut after: Option<String> = None;
    loop {
        // One more than the limit: whether there were more.
        let want = (limit + 1 - counted).min(STATS_BATCH);
        let batch = stats_batch(pool, sql, prefix, after.as_deref(), want).await?;
        let full = batch.len() == want;
        for (key, in_progress) in &batch {
            if counted == limit {
                stats.exact = false;
                break;
            }
            stats.count(prefix, key.as_bytes(), *in_progress);
            counted += 1;
        }
        if !stats.exact || !full {
            break;
        }
        after = batch.last().map(|(key, _)| key.clone());
    }
    let rows = count(pool, sql).await?;
    Ok(stats.with_store_keys(Some(rows)))
}

/// The first text past every text that starts with `prefix`, in the byte order of the `key`
/// column (SQLite's `BINARY` collation compares UTF-8 bytes, the order of code points):
/// `prefix` with its last character that can grow grown by one and the rest cut off; `None`
/// when there is none (an empty prefix).
fn past(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            // The surrogates are not characters: the one after U+D7FF is U+E000.
            '\u{d7ff}' => Some('\u{e000}'),
            last => char::from_u32(u32::from(last) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Deletes at most `batch` expired rows; returns how many.
pub(super) async fn reap<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
    batch: u32,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(sql.reap.clone())
        .bind(i64::from(batch))
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}

/// [`complete`] inside the caller's transaction, which holds the write lock: the claim's row,
/// however long ago its lease ended; `true` if it was there.
pub(super) async fn tx_complete<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    payload: &[u8],
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(sql.tx_complete.clone())
        .bind(key)
        .bind(&claim.token.to_bytes()[..])
        .bind(payload)
        .bind(millis(ttl))
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// [`release`] inside the caller's transaction; `true` if the claim's row was there.
pub(super) async fn tx_release<'e>(
    executor: impl SqliteExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(sql.tx_release.clone())
        .bind(key)
        .bind(&claim.token.to_bytes()[..])
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_of_a_prefix_ends_past_every_key_that_starts_with_it() {
        assert_eq!(past("idem:").as_deref(), Some("idem;"));
        assert_eq!(past("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(past("\u{d7ff}").as_deref(), Some("\u{e000}"));
        assert_eq!(past(""), None);
    }

    #[test]
    fn durations_are_whole_positive_milliseconds_that_cannot_overflow() {
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
        assert_eq!(millis(Duration::MAX), i64::MAX / 2);
    }
}
