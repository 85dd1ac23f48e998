//! The statements of [`MySqlStore`](super::MySqlStore), as functions on any executor (a pool,
//! a connection, a transaction), so that the same SQL runs inside a caller's transaction.
//!
//! Every statement decides expiry by the server's clock ([`NOW`], milliseconds since the Unix
//! epoch from `UTC_TIMESTAMP(6)`, whatever the session's time zone), never the client's. In the
//! plain store each runs in its own implicit transaction (autocommit), so a plain `SELECT`
//! reads the newest committed rows; the claim's insert does not wait on a row lock
//! (`innodb_lock_wait_timeout` = 0 for that statement on MariaDB; MySQL's shortest is 1 s), and
//! the store's own connections keep 1 s for every other statement: only a caller's
//! transaction that has not ended holds a row for longer than one statement.
//!
//! | operation | statements |
//! |---|---|
//! | claim: read the live record (a replay and a duplicate stop here; while first calls clearly outnumber the rest, after the insert instead, see `order.rs`) | `SELECT … WHERE key, live` |
//! | claim: take an absent key | `SET STATEMENT innodb_lock_wait_timeout = 0 FOR INSERT` (MySQL: `SET @… = @@innodb_lock_wait_timeout, innodb_lock_wait_timeout = 0`, `INSERT`, `SET innodb_lock_wait_timeout = @…`) |
//! | claim: take an expired key (the insert met its row) | `UPDATE … WHERE key, expired` |
//! | complete | `UPDATE … SET state, payload, expires_at WHERE key, token, in progress, live` |
//! | release | `DELETE … WHERE key, token, in progress, live` |
//! | renew | `UPDATE … SET expires_at WHERE key, token, in progress, live` |
//! | lease left (waiters) | `SELECT expires_at - now … WHERE key, token, in progress, live` |
//! | wait for a claim it cannot see (a caller's transaction that has not ended) | `SET @… = @@innodb_lock_wait_timeout, innodb_lock_wait_timeout = whole seconds of wait`, `SELECT … LOCK IN SHARE MODE`, `SET innodb_lock_wait_timeout = @…` |
//! | inspect (operators) | `SELECT state, fingerprint, length(payload), expires_at - now … WHERE key, live` |
//! | forget (operators) | `DELETE … WHERE key, live`; when none was, `DELETE … WHERE key` |
//! | stats (operators) | `SELECT key, state … WHERE key in the prefix's range, live ORDER BY key LIMIT n`, batch after batch; the table's row estimate from `information_schema` |
//! | reap | `DELETE … WHERE expired ORDER BY expires_at LIMIT n` |
//!
//! The transactional mode (`tx.rs`) runs these through the caller's connection, inside its
//! transaction, where a plain `SELECT` would read the transaction's snapshot (REPEATABLE READ,
//! InnoDB's default): every read there is a locking read, which reads the newest committed row.
//!
//! | operation | statements |
//! |---|---|
//! | claim an absent key, waiting at most `wait` (whole seconds) for a concurrent transaction's uncommitted claim | MariaDB: `SET STATEMENT innodb_lock_wait_timeout = n FOR INSERT …`; MySQL: `SET @… = @@innodb_lock_wait_timeout, innodb_lock_wait_timeout = n`, `INSERT`, `SET innodb_lock_wait_timeout = @…` |
//! | read the record the insert met (a replay) | `SELECT … WHERE key LOCK IN SHARE MODE` |
//! | take it over when expired | `UPDATE … WHERE key, expired` |
//! | complete | `UPDATE … SET state, payload, expires_at WHERE key, token, in progress` |
//! | release (a released error, after the rollback to the savepoint) | `DELETE … WHERE key, token, in progress` |

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::mysql::{MySqlConnection, MySqlExecutor, MySqlRow};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr, SqlStr};

use super::table::Table;
use crate::record::{Claim, Fingerprint, Record, Token};
use crate::store::{Inspection, Stats};

/// Now, in milliseconds since the Unix epoch, by the server's clock (the same value throughout
/// one statement), independent of the session's `time_zone`.
const NOW: &str = "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000)";

/// How many keys one statement of `stats` reads at most.
const STATS_BATCH: usize = 1000;

/// The lock wait the store's own connections keep (`innodb_lock_wait_timeout`, seconds).
pub(super) const STORE_LOCK_WAIT: &str = "SET SESSION innodb_lock_wait_timeout = 1";

/// The statements of one table, built once per store (sqlx prepares each once per connection
/// and caches it by its text).
#[derive(Debug)]
pub(super) struct Statements {
    table: String,
    live: SqlStr,
    insert: SqlStr,
    take_expired: SqlStr,
    complete: SqlStr,
    release: SqlStr,
    renew: SqlStr,
    lease_left: SqlStr,
    inspect: SqlStr,
    forget_live: SqlStr,
    forget_any: SqlStr,
    estimate: SqlStr,
    reap: SqlStr,
    lock_probe: SqlStr,
    row_locked: SqlStr,
    tx_complete: SqlStr,
    tx_release: SqlStr,
}

/// The condition of the plain store's fenced statements: the claim with token `?` (second)
/// holds key `?` (first).
const HELD: &str = "`key` = ? AND `token` = ? AND `state` = 'in_progress'";

impl Statements {
    pub(super) fn new(table: &Table) -> Statements {
        let t = table.quoted();
        let held = format!("{HELD} AND `expires_at` > {NOW}");
        let sql = |text: String| AssertSqlSafe(text).into_sql_str();
        Statements {
            live: sql(format!(
                "SELECT `state`, `token`, `fingerprint`, `payload`, `expires_at` - {NOW} FROM {t} \
                 WHERE `key` = ? AND `expires_at` > {NOW}"
            )),
            insert: sql(insert_text(&t)),
            take_expired: sql(format!(
                "UPDATE {t} SET `state` = 'in_progress', `token` = ?, `fingerprint` = ?, \
                    `payload` = NULL, `expires_at` = {NOW} + ? \
                 WHERE `key` = ? AND `expires_at` <= {NOW}"
            )),
            complete: sql(format!(
                "UPDATE {t} SET `state` = 'completed', `payload` = ?, `expires_at` = {NOW} + ? \
                 WHERE {held}"
            )),
            release: sql(format!("DELETE FROM {t} WHERE {held}")),
            renew: sql(format!(
                "UPDATE {t} SET `expires_at` = {NOW} + ? WHERE {held}"
            )),
            lease_left: sql(format!("SELECT `expires_at` - {NOW} FROM {t} WHERE {held}")),
            // The fingerprint column is the claim's, kept by the completion: the envelope's own
            // need not be read.
            inspect: sql(format!(
                "SELECT `state`, `fingerprint`, length(`payload`), `expires_at` - {NOW} FROM {t} \
                 WHERE `key` = ? AND `expires_at` > {NOW}"
            )),
            forget_live: sql(format!(
                "DELETE FROM {t} WHERE `key` = ? AND `expires_at` > {NOW}"
            )),
            forget_any: sql(format!("DELETE FROM {t} WHERE `key` = ?")),
            estimate: sql(
                "SELECT CAST(table_rows AS SIGNED) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = ?"
                    .to_owned(),
            ),
            reap: sql(format!(
                "DELETE FROM {t} WHERE `expires_at` <= {NOW} ORDER BY `expires_at` LIMIT ?"
            )),
            // Waits for the transaction that holds the key's row, reading nothing it needs.
            lock_probe: sql(format!(
                "SELECT 1 FROM {t} WHERE `key` = ? LOCK IN SHARE MODE"
            )),
            // The newest committed row (a locking read), expired or not.
            row_locked: sql(format!(
                "SELECT `state`, `token`, `fingerprint`, `payload`, `expires_at` - {NOW} FROM {t} \
                 WHERE `key` = ? LOCK IN SHARE MODE"
            )),
            // No expiry in the condition: the row is locked by the caller's transaction, so no
            // one else can take the key however long the body ran.
            tx_complete: sql(format!(
                "UPDATE {t} SET `state` = 'completed', `payload` = ?, `expires_at` = {NOW} + ? \
                 WHERE {HELD}"
            )),
            tx_release: sql(format!("DELETE FROM {t} WHERE {HELD}")),
            table: t,
        }
    }
}

/// The insert of a claim into table `t` (quoted).
fn insert_text(t: &str) -> String {
    format!(
        "INSERT INTO {t} (`key`, `state`, `token`, `fingerprint`, `payload`, `expires_at`) \
         VALUES (?, 'in_progress', ?, ?, NULL, {NOW} + ?)"
    )
}

/// Whole milliseconds, at least one, as the integer the statements take.
pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX / 2)
        // Far enough from overflow once added to now.
        .clamp(1, i64::MAX / 2)
}

/// Milliseconds left, as a duration (none when negative).
fn left(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A lock wait as `innodb_lock_wait_timeout` takes it: whole seconds, rounded down, so that a
/// wait never lasts much longer than asked (MySQL raises 0 to 1; MariaDB's 0 waits not at
/// all). [`LOCK_WAIT_SLACK`] is added first: a call's `wait` of 10 s, of which a few
/// microseconds went before its claim, still waits 10 s on the lock.
pub(super) fn lock_wait_seconds(wait: Duration) -> u64 {
    (wait + LOCK_WAIT_SLACK).as_secs().min(1 << 30)
}

/// How much longer than asked a lock wait may last, for whole seconds.
const LOCK_WAIT_SLACK: Duration = Duration::from_millis(10);

/// The live record of `key`, if any.
pub(super) async fn live<'e>(
    executor: impl MySqlExecutor<'e>,
    sql: &Statements,
    key: &str,
) -> Result<Option<Record>, sqlx::Error> {
    let row = sqlx::query(sql.live.clone())
        .bind(key.as_bytes())
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(record).transpose()
}

/// Inserts the claim of an absent key; fails with `ER_DUP_ENTRY` when the key has a row.
async fn insert_claim<'e>(
    executor: impl MySqlExecutor<'e>,
    statement: SqlStr,
    key: &str,
    claim: &Claim,
    lease: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(statement)
        .bind(key.as_bytes())
        .bind(&claim.token.to_bytes()[..])
        .bind(claim.fingerprint.as_ref().map(|fp| &fp.as_bytes()[..]))
        .bind(millis(lease))
        .execute(executor)
        .await?;
    Ok(())
}

/// Whether a server of this process refused `SET STATEMENT` (MySQL): a claim then sets the
/// session's lock wait around its insert.
static NO_SET_STATEMENT: AtomicBool = AtomicBool::new(false);

/// Inserts the claim of an absent key, waiting at most `seconds` on a row lock held by
/// another transaction (past it: `ER_LOCK_WAIT_TIMEOUT`); fails with `ER_DUP_ENTRY` when the
/// key has a row. MariaDB: one statement (`SET STATEMENT innodb_lock_wait_timeout = n FOR
/// INSERT …`); MySQL: the session's `innodb_lock_wait_timeout` set around the insert and set
/// back (three).
pub(super) async fn insert(
    conn: &mut MySqlConnection,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    lease: Duration,
    seconds: u64,
) -> Result<(), sqlx::Error> {
    if !NO_SET_STATEMENT.load(Ordering::Relaxed) {
        let statement = AssertSqlSafe(format!(
            "SET STATEMENT innodb_lock_wait_timeout = {seconds} FOR {}",
            insert_text(&sql.table)
        ))
        .into_sql_str();
        match insert_claim(&mut *conn, statement, key, claim, lease).await {
            Err(error) if super::failure::syntax(&error) => {
                NO_SET_STATEMENT.store(true, Ordering::Relaxed);
            }
            done => return done,
        }
    }
    sqlx::query(
        "SET @idem_lock_wait = @@SESSION.innodb_lock_wait_timeout, \
         SESSION innodb_lock_wait_timeout = ?",
    )
    .bind(seconds)
    .execute(&mut *conn)
    .await?;
    let inserted = insert_claim(&mut *conn, sql.insert.clone(), key, claim, lease).await;
    sqlx::query("SET SESSION innodb_lock_wait_timeout = @idem_lock_wait")
        .execute(&mut *conn)
        .await?;
    inserted
}

/// Takes over the expired row of `key` for `claim`; `true` if it did (a live row is left
/// as it is).
pub(super) async fn take_expired<'e>(
    executor: impl MySqlExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(sql.take_expired.clone())
        .bind(&claim.token.to_bytes()[..])
        .bind(claim.fingerprint.as_ref().map(|fp| &fp.as_bytes()[..]))
        .bind(millis(lease))
        .bind(key.as_bytes())
        .execute(executor)
        .await?;
    // sqlx asks for the rows matched (`CLIENT_FOUND_ROWS`), not the rows changed.
    Ok(done.rows_affected() == 1)
}

/// The newest committed row of `key` (a locking read), live or not: the record, and whether
/// it is live.
pub(super) async fn row_locked<'e>(
    executor: impl MySqlExecutor<'e>,
    sql: &Statements,
    key: &str,
) -> Result<Option<(Record, bool)>, sqlx::Error> {
    let row = sqlx::query(sql.row_locked.clone())
        .bind(key.as_bytes())
        .fetch_optional(executor)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let ms: i64 = row.try_get(4)?;
    Ok(Some((record(&row)?, ms > 0)))
}

/// The record of a row read by [`live`] or [`row_locked`].
fn record(row: &MySqlRow) -> Result<Record, sqlx::Error> {
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

/// Runs a completion statement (`complete` or `tx_complete`, which bind the same parameters);
/// `true` if it found the claim holding the key.
async fn store_result<'e>(
    executor: impl MySqlExecutor<'e>,
    statement: SqlStr,
    key: &str,
    claim: &Claim,
    payload: &[u8],
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(statement)
        .bind(payload)
        .bind(millis(ttl))
        .bind(key.as_bytes())
        .bind(&claim.token.to_bytes()[..])
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Stores `payload` for the claim with expiry `ttl`; `true` if the claim held the key.
pub(super) async fn complete<'e>(
    executor: impl MySqlExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    payload: &[u8],
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    store_result(executor, sql.complete.clone(), key, claim, payload, ttl).await
}

/// [`complete`] inside the caller's transaction, whatever the time (the transaction holds the
/// row's lock); `true` if the claim's row was there.
pub(super) async fn tx_complete<'e>(
    executor: impl MySqlExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    payload: &[u8],
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    store_result(executor, sql.tx_complete.clone(), key, claim, payload, ttl).await
}

/// Deletes the claim's row with `statement` (`release` or `tx_release`); `true` if it was
/// there.
async fn delete_claim<'e>(
    executor: impl MySqlExecutor<'e>,
    statement: SqlStr,
    key: &str,
    claim: &Claim,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(statement)
        .bind(key.as_bytes())
        .bind(&claim.token.to_bytes()[..])
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes the claim's row; `true` if the claim held the key.
pub(super) async fn release<'e>(
    executor: impl MySqlExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
) -> Result<bool, sqlx::Error> {
    delete_claim(executor, sql.release.clone(), key, claim).await
}

/// [`release`] inside the caller's transaction; `true` if the claim's row was there.
pub(super) async fn tx_release<'e>(
    executor: impl MySqlExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
) -> Result<bool, sqlx::Error> {
    delete_claim(executor, sql.tx_release.clone(), key, claim).await
}

/// Extends the claim's expiry to `lease` from now; `true` if the claim held the key.
pub(super) async fn renew<'e>(
    executor: impl MySqlExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(sql.renew.clone())
        .bind(millis(lease))
        .bind(key.as_bytes())
        .bind(&claim.token.to_bytes()[..])
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The lease left to `holder` on `key`, or `None` when it no longer holds the key.
pub(super) async fn lease_left<'e>(
    executor: impl MySqlExecutor<'e>,
    sql: &Statements,
    key: &str,
    holder: &Claim,
) -> Result<Option<Duration>, sqlx::Error> {
    let ms: Option<i64> = sqlx::query_scalar(sql.lease_left.clone())
        .bind(key.as_bytes())
        .bind(&holder.token.to_bytes()[..])
        .fetch_optional(executor)
        .await?;
    Ok(ms.map(left))
}

/// Waits at most `wait` (whole seconds, rounded down) for the transaction that holds `key`'s
/// row to end, reading nothing, on a connection of the store (outside any transaction): sets
/// the connection's `innodb_lock_wait_timeout` for the wait and back to what it was. Returns
/// when the lock is free or the wait ran out, which is not an error.
pub(super) async fn lock_wait(
    conn: &mut MySqlConnection,
    sql: &Statements,
    key: &str,
    wait: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SET @idem_lock_wait = @@SESSION.innodb_lock_wait_timeout, \
         SESSION innodb_lock_wait_timeout = ?",
    )
    .bind(lock_wait_seconds(wait))
    .execute(&mut *conn)
    .await?;
    let waited = sqlx::query(sql.lock_probe.clone())
        .bind(key.as_bytes())
        .fetch_optional(&mut *conn)
        .await;
    sqlx::query("SET SESSION innodb_lock_wait_timeout = @idem_lock_wait")
        .execute(&mut *conn)
        .await?;
    match waited {
        Err(error) if !super::failure::lock_timed_out(&error) => Err(error),
        _ => Ok(()),
    }
}

/// What the live row of `key` holds.
pub(super) async fn inspect<'e>(
    executor: impl MySqlExecutor<'e>,
    sql: &Statements,
    key: &str,
) -> Result<Inspection, sqlx::Error> {
    let row = sqlx::query(sql.inspect.clone())
        .bind(key.as_bytes())
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
pub(super) async fn forget(
    pool: &sqlx::MySqlPool,
    sql: &Statements,
    key: &str,
) -> Result<bool, sqlx::Error> {
    let live = sqlx::query(sql.forget_live.clone())
        .bind(key.as_bytes())
        .execute(pool)
        .await?;
    if live.rows_affected() > 0 {
        return Ok(true);
    }
    sqlx::query(sql.forget_any.clone())
        .bind(key.as_bytes())
        .execute(pool)
        .await?;
    Ok(false)
}

/// One batch of the live rows whose keys start with `prefix`, in key order: at most `limit`
/// of them, from `after` (excluded) or from the start of the prefix's range. Returns each key
/// and whether it is in progress.
async fn stats_batch(
    pool: &sqlx::MySqlPool,
    sql: &Statements,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, bool)>, sqlx::Error> {
    let end = past(prefix);
    let text = format!(
        "SELECT `key`, `state` = 'in_progress' FROM {t} \
         WHERE `key` {lower} ? {upper} AND left(`key`, length(?)) = ? \
         AND `expires_at` > {NOW} ORDER BY `key` LIMIT ?",
        t = sql.table,
        lower = if after.is_some() { ">" } else { ">=" },
        upper = if end.is_some() { "AND `key` < ?" } else { "" },
    );
    let mut query = sqlx::query(AssertSqlSafe(text).into_sql_str()).bind(after.unwrap_or(prefix));
    if let Some(end) = end {
        query = query.bind(end);
    }
    let rows = query
        .bind(prefix)
        .bind(prefix)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let in_progress: i64 = row.try_get(1)?;
            Ok((row.try_get(0)?, in_progress != 0))
        })
        .collect()
}

/// Counts the live rows of `prefix` by state and scope, at most `limit` of them, in batches of
/// at most [`STATS_BATCH`] keys (one statement each, so that no read lasts long).
pub(super) async fn stats(
    pool: &sqlx::MySqlPool,
    sql: &Statements,
    table: &Table,
    prefix: &str,
    limit: usize,
) -> Result<Stats, sqlx::Error> {
    let mut stats = Stats::new(0, 0, true);
    let mut counted = 0_usize;
    let mut after: Option<Vec<u8>> = None;
    loop {
        // One more than the limit: whether there were more.
        let want = (limit + 1 - counted).min(STATS_BATCH);
        let batch = stats_batch(pool, sql, prefix.as_bytes(), after.as_deref(), want).await?;
        let full = batch.len() == want;
        for (key, in_progress) in &batch {
            if counted == limit {
                stats.exact = false;
                break;
            }
            stats.count(prefix, key, *in_progress);
            counted += 1;
        }
        if !stats.exact || !full {
            break;
        }
        after = batch.last().map(|(key, _)| key.clone());
    }
    let estimate: Option<Option<i64>> = sqlx::query_scalar(sql.estimate.clone())
        .bind(&table.name)
        .fetch_optional(pool)
        .await?;
    let rows = estimate.flatten().and_then(|n| u64::try_from(n).ok());
    Ok(stats.with_store_keys(rows))
}

/// The first byte string past every one that starts with `prefix` (the `key` column compares
/// bytes): `prefix` with its last byte below 0xff grown by one and the rest cut off; `None`
/// when there is none.
fn past(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut bytes = prefix.to_vec();
    while let Some(last) = bytes.pop() {
        if last < u8::MAX {
            bytes.push(last + 1);
            return Some(bytes);
        }
    }
    None
}

/// Deletes at most `batch` expired rows; returns how many.
pub(super) async fn reap(
    pool: &sqlx::MySqlPool,
    sql: &Statements,
    batch: u32,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(sql.reap.clone())
        .bind(i64::from(batch))
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_of_a_prefix_ends_past_every_key_that_starts_with_it() {
        assert_eq!(past(b"idem:").as_deref(), Some(&b"idem;"[..]));
        assert_eq!(past(b"a\xff").as_deref(), Some(&b"b"[..]));
        assert_eq!(past(b""), None);
        assert_eq!(past(b"\xff\xff"), None);
    }

    #[test]
    fn durations_are_whole_positive_milliseconds_and_lock_waits_whole_seconds() {
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
        assert_eq!(millis(Duration::MAX), i64::MAX / 2);
        assert_eq!(lock_wait_seconds(Duration::from_millis(985)), 0);
        assert_eq!(lock_wait_seconds(Duration::from_millis(9995)), 10);
        assert_eq!(lock_wait_seconds(Duration::from_millis(2500)), 2);
    }
}
