//! The statements of [`PostgresStore`](super::PostgresStore), as functions on any
//! executor (a pool, a connection, a transaction), so that the same SQL can run inside a
//! caller's transaction.
//!
//! Every statement decides expiry by the database's clock (`clock_timestamp()`), never the
//! client's, and each operation is one statement, run in its own implicit transaction:
//!
//! | operation | statement |
//! |---|---|
//! | read the record (a claim that reads first, see `order.rs`) | `SELECT … WHERE key, live` |
//! | claim, without the read (a claim that inserts first, see `order.rs`) | `WITH cfg AS MATERIALIZED (SELECT set_config('lock_timeout', …, true)) INSERT … SELECT … FROM cfg ON CONFLICT (key) DO UPDATE … WHERE expired RETURNING true` |
//! | claim (or read the record) | `WITH live AS (SELECT the live row), cfg AS MATERIALIZED (SELECT set_config('lock_timeout', …, true)), claimed AS (INSERT … SELECT … FROM cfg WHERE NOT EXISTS live ON CONFLICT (key) DO UPDATE … WHERE expired RETURNING …) SELECT … FROM claimed UNION ALL SELECT … FROM live` |
//! | complete | `WITH done AS (UPDATE … WHERE key, token, in progress, live RETURNING …) SELECT pg_notify(…) FROM done` |
//! | release | `WITH gone AS (DELETE … WHERE key, token, in progress, live RETURNING …) SELECT pg_notify(…) FROM gone` |
//! | renew | `UPDATE … SET expires_at WHERE key, token, in progress, live` |
//! | completed by this claim? (after a lost completion only) | `SELECT … WHERE key, token, completed, live` |
//! | lease left (waiters) | `SELECT expires_at - clock_timestamp() … WHERE key, token, in progress, live` |
//! | inspect (operators) | `SELECT state, fingerprint, octet_length(payload), expires_at - clock_timestamp() … WHERE key, live` |
//! | forget (operators) | `WITH gone AS (DELETE … WHERE key RETURNING live) SELECT live, pg_notify(…) FROM gone` |
//! | stats (operators) | `WITH sample AS (SELECT key, state … WHERE key in the prefix's range, live LIMIT n + 1) SELECT scope, count(*) FILTER (…) … GROUP BY scope, reltuples` |
//! | reap | `DELETE … WHERE key IN (SELECT key … WHERE expired LIMIT n FOR UPDATE SKIP LOCKED)` |
//! | wait for a claim it cannot see (a caller's transaction that has not ended) | `BEGIN`, `WITH cfg AS MATERIALIZED (SELECT set_config('lock_timeout', …, true)) INSERT … SELECT … FROM cfg ON CONFLICT (key) DO NOTHING`, `ROLLBACK` |
//!
//! The transactional mode (`tx = conn`) runs three more through the caller's connection,
//! inside its transaction (see `tx.rs`):
//!
//! | operation | statement |
//! |---|---|
//! | read the record (a claim that reads first) | the plain store's read of the live row, as the caller's transaction sees it |
//! | claim (or read the record), waiting at most `wait` on a concurrent transaction's uncommitted claim | `WITH cfg AS MATERIALIZED (SELECT current_setting('lock_timeout'), set_config('lock_timeout', wait, true)), live AS (…), claimed AS (INSERT … SELECT … FROM cfg WHERE NOT EXISTS live ON CONFLICT … RETURNING 1), answer AS (claimed UNION ALL live) SELECT answer.*, set_config('lock_timeout', old, true) FROM cfg LEFT JOIN answer ON true` |
//! | complete | `UPDATE … WHERE key, token, in progress RETURNING true` (no notification: no one waits for it) |
//! | release (a released error, after the rollback to the savepoint) | `DELETE … WHERE key, token, in progress` |

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgExecutor};
use sqlx::{AssertSqlSafe, Connection, Row, SqlSafeStr, SqlStr};

use super::failure;
use super::sent::{Sent, Value, send};
use super::session::{Columns, Failure, Session};
use super::table::Table;
use crate::record::{Claim, Fingerprint, Record, Token};
use crate::store::ClaimOrder;
use crate::store::order::{First, Order, Start};
use crate::store::tx::Claimed;
use crate::store::{Inspection, Stats};

/// A quoted string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The statements of one table, built once per store (sqlx prepares each once per connection
/// and caches it by its text), or sent with their values written in (see `sent.rs`).
#[derive(Debug)]
pub(super) struct Statements {
    /// Whether each statement is sent with its values written in, by the simple query
    /// protocol, instead of prepared and cached: behind a transaction-mode pooler.
    pub(super) inline: bool,
    /// Whether the transactional mode has found the table in this process: it looks for it
    /// (`to_regclass`, which cannot abort the caller's transaction) until it does.
    pub(super) table_found: AtomicBool,
    /// Whether a claim on this table reads before it claims, learnt from the claims of the
    /// plain store and of the transactional mode on it (`order.rs`).
    pub(super) order: Order,
    table_exists: SqlStr,
    live: SqlStr,
    claim: SqlStr,
    insert: SqlStr,
    complete: SqlStr,
    release: SqlStr,
    renew: SqlStr,
    lease_left: SqlStr,
    completed_by: SqlStr,
    inspect: SqlStr,
    forget: SqlStr,
    stats: SqlStr,
    reap: SqlStr,
    lock_wait: SqlStr,
    tx_claim: SqlStr,
    tx_complete: SqlStr,
    tx_release: SqlStr,
}

/// Milliseconds left until `expires_at`, by the database's clock.
const LEFT_MS: &str = "(extract(epoch FROM expires_at - clock_timestamp()) * 1000)::int8";

/// The condition of every fenced statement: the claim with token `$2` holds key `$1`.
const HELD: &str =
    "key = $1 AND token = $2 AND state = 'in_progress' AND expires_at > clock_timestamp()";

impl Statements {
    /// The statements of `table`, sent with their values written in when `inline`, whose
    /// claims read first or claim first as `order` says.
    pub(super) fn new(table: &Table, inline: bool, order: ClaimOrder) -> Statements {
        let t = table.qualified();
        let channel = literal(table.channel());
        let sql = |text: String| AssertSqlSafe(text).into_sql_str();
        Statements {
            inline,
            table_found: AtomicBool::new(false),
            order: Order::new(order, Start::OneStatement),
            table_exists: sql(format!("SELECT to_regclass({}) IS NOT NULL", literal(&t))),
            // The live row alone, in the columns of the claim's answer (its `held` false): what
            // a claim that reads first sends before it claims.
            live: sql(format!(
                "SELECT false, state, token, fingerprint, payload, {LEFT_MS} FROM {t} \
                 WHERE key = $1 AND expires_at > clock_timestamp()"
            )),
            // The live row, read first: a replay is a read (no insert attempt, no row lock).
            // Without one, the upsert claims the key (absent or expired). A conflicting row
            // that another claim committed after this statement's snapshot was taken makes the
            // upsert return nothing (it waited for that claim) while the snapshot misses the
            // row: then no row comes back at all, and `claim` asks again.
            //
            // The upsert also waits for a transaction that holds the key's row and has not
            // ended (a caller's transaction in transactional mode, whose claim is invisible
            // here): at most `lock_timeout` = `$5` ms, set in `cfg` before the insert reads it
            // and local to this statement's own implicit transaction. Past it PostgreSQL
            // answers `lock_not_available`, which `claim` reports as a key held by a claim it
            // cannot see. A replay never reads `cfg` (the insert's `NOT EXISTS` is false
            // before it is scanned).
            claim: sql(format!(
                "WITH live AS (\
                    SELECT state, token, fingerprint, payload, {LEFT_MS} AS left_ms FROM {t} \
                    WHERE key = $1 AND expires_at > clock_timestamp()), \
                 cfg AS MATERIALIZED (SELECT set_config('lock_timeout', $5, true)), \
                 claimed AS (\
                    INSERT INTO {t} AS r (key, state, token, fingerprint, payload, expires_at) \
                    SELECT $1, 'in_progress', $2, $3, NULL, clock_timestamp() + $4 * interval '1 millisecond' FROM cfg \
                    WHERE NOT EXISTS (SELECT FROM live) \
                    ON CONFLICT (key) DO UPDATE SET state = 'in_progress', token = excluded.token, \
                        fingerprint = excluded.fingerprint, payload = NULL, expires_at = excluded.expires_at \
                    WHERE r.expires_at <= clock_timestamp() \
                    RETURNING 1) \
                 SELECT true, NULL::text, NULL::bytea, NULL::bytea, NULL::bytea, NULL::int8 FROM claimed \
                 UNION ALL \
                 SELECT false, state, token, fingerprint, payload, left_ms FROM live"
            )),
            // The claim alone, without the read of the live row: the upsert takes an absent
            // or expired key and returns nothing when a live row holds it (which it locks, as
            // every `ON CONFLICT DO UPDATE` does, until the statement ends), and the read
            // follows. A first call's claim in a workload of mostly first calls (`order.rs`):
            // it costs the server less than the one-statement claim. The same `lock_timeout`
            // as the claim's.
            insert: sql(format!(
                "WITH cfg AS MATERIALIZED (SELECT set_config('lock_timeout', $5, true)) \
                 INSERT INTO {t} AS r (key, state, token, fingerprint, payload, expires_at) \
                 SELECT $1, 'in_progress', $2, $3, NULL, clock_timestamp() + $4 * interval '1 millisecond' FROM cfg \
                 ON CONFLICT (key) DO UPDATE SET state = 'in_progress', token = excluded.token, \
                     fingerprint = excluded.fingerprint, payload = NULL, expires_at = excluded.expires_at \
                 WHERE r.expires_at <= clock_timestamp() \
                 RETURNING true"
            )),
            complete: sql(format!(
                "WITH done AS (\
                    UPDATE {t} SET state = 'completed', payload = $3, \
                        expires_at = clock_timestamp() + $4 * interval '1 millisecond' \
                    WHERE {HELD} RETURNING 1) \
                 SELECT pg_notify({channel}, $5)::text FROM done"
            )),
            release: sql(format!(
                "WITH gone AS (DELETE FROM {t} WHERE {HELD} RETURNING 1) \
                 SELECT pg_notify({channel}, $3)::text FROM gone"
            )),
            renew: sql(format!(
                "UPDATE {t} SET expires_at = clock_timestamp() + $3 * interval '1 millisecond' WHERE {HELD}"
            )),
            lease_left: sql(format!("SELECT {LEFT_MS} FROM {t} WHERE {HELD}")),
            completed_by: sql(format!(
                "SELECT true FROM {t} WHERE key = $1 AND token = $2 AND state = 'completed' \
                 AND expires_at > clock_timestamp()"
            )),
            // The fingerprint column is the claim's, kept by the completion: the envelope's own
            // need not be read.
            inspect: sql(format!(
                "SELECT state, fingerprint, octet_length(payload)::int8, {LEFT_MS} FROM {t} \
                 WHERE key = $1 AND expires_at > clock_timestamp()"
            )),
            // An expired row goes too, but only a live one counts as forgotten.
            forget: sql(format!(
                "WITH gone AS (DELETE FROM {t} WHERE key = $1 \
                    RETURNING expires_at > clock_timestamp() AS live) \
                 SELECT live, pg_notify({channel}, $2)::text FROM gone"
            )),
            // At most `$3 + 1` live rows of the keys that start with `$1` (a range of the
            // primary key, up to `$2`, the first text past the prefix, when there is one), the
            // first `$3` of them counted by state and by scope (the key past the prefix up to
            // its first unescaped `:`, by the regular expression `$4`); whether there were
            // more; and the planner's estimate of the table's rows (-1 before the table was
            // first analyzed). One row per scope, or one row of no scope when none was counted.
            stats: sql(format!(
                "WITH sample AS (\
                    SELECT key, state FROM {t} \
                    WHERE key >= $1 AND ($2::text IS NULL OR key < $2) AND starts_with(key, $1) \
                    AND expires_at > clock_timestamp() LIMIT $3 + 1), \
                 numbered AS (SELECT key, state, row_number() OVER () AS n FROM sample), \
                 scopes AS (\
                    SELECT substring(substr(key, length($1) + 1) FROM $4) AS scope, \
                        count(*) FILTER (WHERE state = 'in_progress') AS in_progress, \
                        count(*) FILTER (WHERE state = 'completed') AS completed \
                    FROM numbered WHERE n <= $3 GROUP BY 1) \
                 SELECT scopes.scope, coalesce(scopes.in_progress, 0), \
                    coalesce(scopes.completed, 0), \
                    (SELECT count(*) > $3 FROM sample), \
                    (SELECT reltuples::int8 FROM pg_class WHERE oid = to_regclass({table})) \
                 FROM (SELECT) AS one LEFT JOIN scopes ON true",
                table = literal(&t),
            )),
            // Waits at most `$2` ms for the transaction that holds the key's row to end,
            // claiming nothing: run in a transaction of its own that is rolled back (an insert
            // of an absent key is undone). A waiter of a claim it cannot see sends it.
            lock_wait: sql(format!(
                "WITH cfg AS MATERIALIZED (SELECT set_config('lock_timeout', $2, true)) \
                 INSERT INTO {t} (key, state, token, expires_at) \
                 SELECT $1, 'in_progress', ''::bytea, clock_timestamp() FROM cfg \
                 ON CONFLICT (key) DO NOTHING"
            )),
            // In a caller's transaction: the same claim-or-read, and the wait for a concurrent
            // transaction's uncommitted claim of the key (PostgreSQL's own lock, which the
            // upsert waits on) bounded by `lock_timeout` = `$5` ms, set before the insert
            // (`cfg` is read by it) and set back to the caller's value once the answer is known,
            // in the same statement. A row always comes back: `held` is NULL when the upsert
            // waited for a claim committed after this statement's snapshot (asking again, in
            // a new statement, sees it under READ COMMITTED).
            tx_claim: sql(format!(
                "WITH cfg AS MATERIALIZED (\
                    SELECT current_setting('lock_timeout') AS old, set_config('lock_timeout', $5, true) AS new), \
                 live AS (\
                    SELECT state, token, fingerprint, payload, {LEFT_MS} AS left_ms FROM {t} \
                    WHERE key = $1 AND expires_at > clock_timestamp()), \
                 claimed AS (\
                    INSERT INTO {t} AS r (key, state, token, fingerprint, payload, expires_at) \
                    SELECT $1, 'in_progress', $2, $3, NULL, clock_timestamp() + $4 * interval '1 millisecond' FROM cfg \
                    WHERE NOT EXISTS (SELECT FROM live) \
                    ON CONFLICT (key) DO UPDATE SET state = 'in_progress', token = excluded.token, \
                        fingerprint = excluded.fingerprint, payload = NULL, expires_at = excluded.expires_at \
                    WHERE r.expires_at <= clock_timestamp() \
                    RETURNING 1), \
                 answer AS (\
                    SELECT true AS held, NULL::text AS state, NULL::bytea AS token, NULL::bytea AS fingerprint, \
                        NULL::bytea AS payload, NULL::int8 AS left_ms FROM claimed \
                    UNION ALL \
                    SELECT false, state, token, fingerprint, payload, left_ms FROM live) \
                 SELECT answer.held, answer.state, answer.token, answer.fingerprint, answer.payload, answer.left_ms, \
                    set_config('lock_timeout', cfg.old, true) \
                 FROM cfg LEFT JOIN answer ON true"
            )),
            // No expiry in the condition: the row is invisible to other transactions until the
            // caller commits, so no one else can take the key however long the body ran. No
            // `pg_notify` either: no one can be waiting for this claim's notification. A claim
            // made in a transaction is never seen in progress by anyone else (committed, it is
            // completed); a duplicate waits on its row lock instead, and a waiter of the
            // expired claim it took over stops at that claim's lease. A notification would
            // only cost every commit PostgreSQL's notification queue lock, which serializes
            // all the committing transactions that notify.
            tx_complete: sql(format!(
                "UPDATE {t} SET state = 'completed', payload = $3, \
                    expires_at = clock_timestamp() + $4 * interval '1 millisecond' \
                 WHERE key = $1 AND token = $2 AND state = 'in_progress' RETURNING true"
            )),
            tx_release: sql(format!(
                "DELETE FROM {t} WHERE key = $1 AND token = $2 AND state = 'in_progress'"
            )),
            // `now()`, not `clock_timestamp()`: a stable value, so the index on expires_at
            // finds the batch.
            reap: sql(format!(
                "DELETE FROM {t} WHERE key IN (\
                    SELECT key FROM {t} WHERE expires_at < now() LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 AND expires_at < now()"
            )),
        }
    }
}

impl Statements {
    /// `statement` with `values`, to send the way this store sends statements.
    fn send<'a>(&self, statement: &SqlStr, values: &[Value<'a>]) -> Sent<'a> {
        send(statement, values, self.inline)
    }
}

/// Whole milliseconds, at least one, as the `int8` the statements take.
pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

/// Claims `key` for `claim` with expiry `lease`, waiting at most `lock_wait` for a transaction
/// that holds the key's row to end. With `one_statement`, the claim statement, which also reads
/// the live record that holds the key ([`Claimed::Found`]; [`Claimed::Unseen`]: a claim
/// committed after its snapshot); else the bare upsert, which reads nothing
/// ([`Claimed::Unseen`]: a live row holds the key, which [`live`] reads). Both answer a claim
/// they made with `true` in their first column.
pub(super) async fn claim<'e>(
    executor: impl PgExecutor<'e>,
    sql: &Statements,
    one_statement: bool,
    key: &str,
    claim: &Claim,
    lease: Duration,
    lock_wait: Duration,
) -> Result<Claimed, sqlx::Error> {
    let token = claim.token.to_bytes();
    let lock_wait = millis(lock_wait).to_string();
    let statement = if one_statement {
        &sql.claim
    } else {
        &sql.insert
    };
    let row = sql
        .send(
            statement,
            &claim_values(key, &token, claim, lease, &lock_wait),
        )
        .fetch_optional(executor)
        .await;
    let row = match row {
        Err(error) if failure::lock_timed_out(&error) => return Ok(Claimed::Locked),
        row => row?,
    };
    let Some(row) = row else {
        return Ok(Claimed::Unseen);
    };
    if row.try_get::<bool, _>(0)? {
        return Ok(Claimed::Held);
    }
    record(&row).map(Claimed::Found)
}

/// The values of a claim statement: the key, the claim's token and fingerprint, the lease and
/// the lock wait.
fn claim_values<'v>(
    key: &'v str,
    token: &'v [u8],
    claim: &'v Claim,
    lease: Duration,
    lock_wait: &'v str,
) -> [Value<'v>; 5] {
    [
        Value::Text(key),
        Value::Bytes(token),
        Value::OptBytes(claim.fingerprint.as_ref().map(|fp| &fp.as_bytes()[..])),
        Value::Int(millis(lease)),
        Value::Text(lock_wait),
    ]
}

/// The live record of `key`, if any, as `conn` sees it: a read, claiming nothing (the plain
/// store's and the transactional mode's claim that reads first).
pub(super) async fn live<S: Session>(
    conn: &mut S,
    sql: &Statements,
    key: &str,
) -> Result<Option<Record>, S::Error> {
    let row = conn
        .query_opt(&sql.live, &[Value::Text(key)], sql.inline)
        .await?;
    row.as_ref().map(record).transpose()
}

/// The record of a live row read by a claim statement (the plain store's or the
/// transactional mode's, through either driver).
fn record<R: Columns>(row: &R) -> Result<Record, R::Error> {
    let corrupt = |what: &str| R::Error::corrupt(what.to_owned());
    match row.text(1)?.as_deref() {
        Some("completed") => Ok(Record::Completed {
            // A missing payload is corrupt: the engine reports it as `Error::Decode`.
            payload: row.bytes(4)?.unwrap_or_default(),
            expires_in: row
                .int(5)?
                .and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis),
        }),
        Some("in_progress") => {
            let token = row.bytes(2)?.unwrap_or_default();
            let token = <[u8; 16]>::try_from(token.as_slice())
                .map_err(|_| corrupt("a token that is not 16 bytes"))?;
            let fingerprint = row
                .bytes(3)?
                .map(|fp| {
                    <[u8; 32]>::try_from(fp.as_slice())
                        .map_err(|_| corrupt("a fingerprint that is not 32 bytes"))
                })
                .transpose()?;
            Ok(Record::InProgress(Claim {
                token: Token::from_bytes(token),
                fingerprint: fingerprint.map(Fingerprint::from_bytes),
            }))
        }
        Some(other) => Err(corrupt(&format!("the unknown state `{other}`"))),
        None => Err(corrupt("no state")),
    }
}

/// A row the store cannot read: a decoding error (not a broken connection).
fn corrupt(what: &str) -> sqlx::Error {
    <sqlx::Error as Failure>::corrupt(what.to_owned())
}

/// Stores `payload` for the claim with expiry `ttl` and notifies `tag` on the table's channel;
/// `true` if the claim held the key.
pub(super) async fn complete<'e>(
    executor: impl PgExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    payload: &[u8],
    ttl: Duration,
    tag: &str,
) -> Result<bool, sqlx::Error> {
    let token = claim.token.to_bytes();
    let row = sql
        .send(
            &sql.complete,
            &result_values(key, &token, payload, ttl, tag),
        )
        .fetch_optional(executor)
        .await?;
    Ok(row.is_some())
}

/// Whether the live record of `key` is the one `claim` completed: a completion whose answer
/// was lost (the connection broke after the server applied it) and that was sent again finds
/// the key no longer held, by itself.
pub(super) async fn completed_by<'e>(
    executor: impl PgExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
) -> Result<bool, sqlx::Error> {
    let token = claim.token.to_bytes();
    let row = sql
        .send(&sql.completed_by, &[Value::Text(key), Value::Bytes(&token)])
        .fetch_optional(executor)
        .await?;
    Ok(row.is_some())
}

/// Deletes the claim's row and notifies `tag`; `true` if the claim held the key.
pub(super) async fn release<'e>(
    executor: impl PgExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    tag: &str,
) -> Result<bool, sqlx::Error> {
    let token = claim.token.to_bytes();
    let row = sql
        .send(
            &sql.release,
            &[Value::Text(key), Value::Bytes(&token), Value::Text(tag)],
        )
        .fetch_optional(executor)
        .await?;
    Ok(row.is_some())
}

/// Extends the claim's expiry to `lease` from now; `true` if the claim held the key.
pub(super) async fn renew<'e>(
    executor: impl PgExecutor<'e>,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let token = claim.token.to_bytes();
    let done = sql
        .send(
            &sql.renew,
            &[
                Value::Text(key),
                Value::Bytes(&token),
                Value::Int(millis(lease)),
            ],
        )
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The lease left to `holder` on `key`, or `None` when it no longer holds the key.
pub(super) async fn lease_left<'e>(
    executor: impl PgExecutor<'e>,
    sql: &Statements,
    key: &str,
    holder: &Claim,
) -> Result<Option<Duration>, sqlx::Error> {
    let token = holder.token.to_bytes();
    let row = sql
        .send(&sql.lease_left, &[Value::Text(key), Value::Bytes(&token)])
        .fetch_optional(executor)
        .await?;
    let left: Option<i64> = row.map(|row| row.try_get(0)).transpose()?;
    Ok(left.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
}

/// What the live row of `key` holds.
pub(super) async fn inspect<'e>(
    executor: impl PgExecutor<'e>,
    sql: &Statements,
    key: &str,
) -> Result<Inspection, sqlx::Error> {
    let row = sql
        .send(&sql.inspect, &[Value::Text(key)])
        .fetch_optional(executor)
        .await?;
    let Some(row) = row else {
        return Ok(Inspection::Absent);
    };
    let state: String = row.try_get(0)?;
    let fingerprint: Option<Vec<u8>> = row.try_get(1)?;
    let size: Option<i64> = row.try_get(2)?;
    let left: Option<i64> = row.try_get(3)?;
    let fingerprint = fingerprint
        .map(|fp| {
            <[u8; 32]>::try_from(fp.as_slice())
                .map(Fingerprint::from_bytes)
                .map_err(|_| corrupt("a fingerprint that is not 32 bytes"))
        })
        .transpose()?;
    let left = left.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
    match state.as_str() {
        "in_progress" => Ok(Inspection::InProgress {
            lease_left: left,
            fingerprint,
        }),
        "completed" => Ok(Inspection::Completed {
            ttl_left: left,
            fingerprint,
            size: size.and_then(|n| usize::try_from(n).ok()).unwrap_or(0),
        }),
        other => Err(corrupt(&format!("the unknown state `{other}`"))),
    }
}

/// Deletes the row of `key`, live or expired, and notifies `tag`; `true` if it was live.
pub(super) async fn forget<'e>(
    executor: impl PgExecutor<'e>,
    sql: &Statements,
    key: &str,
    tag: &str,
) -> Result<bool, sqlx::Error> {
    let row = sql
        .send(&sql.forget, &[Value::Text(key), Value::Text(tag)])
        .fetch_optional(executor)
        .await?;
    match row {
        Some(row) => row.try_get::<bool, _>(0),
        None => Ok(false),
    }
}

/// The live rows whose keys start with `prefix`, at most `limit` of them counted by state and
/// by scope.
pub(super) async fn stats<'e>(
    executor: impl PgExecutor<'e>,
    sql: &Statements,
    prefix: &str,
    limit: usize,
) -> Result<Stats, sqlx::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX - 1);
    let past = past(prefix);
    let rows = sql
        .send(
            &sql.stats,
            &[
                Value::Text(prefix),
                Value::OptText(past.as_deref()),
                Value::Int(limit),
                Value::Text(STORED_SCOPE),
            ],
        )
        .fetch_all(executor)
        .await?;
    let mut stats = Stats::new(0, 0, true);
    for row in &rows {
        let count = |at: usize| -> Result<u64, sqlx::Error> {
            Ok(u64::try_from(row.try_get::<i64, _>(at)?).unwrap_or(0))
        };
        if let Some(scope) = row.try_get::<Option<String>, _>(0)? {
            stats.add(&scope, count(1)?, count(2)?);
        }
    }
    if let Some(row) = rows.first() {
        let more: bool = row.try_get(3)?;
        let estimate: Option<i64> = row.try_get(4)?;
        stats.exact = !more;
        stats = stats.with_store_keys(estimate.and_then(|rows| u64::try_from(rows).ok()));
    }
    Ok(stats)
}

/// The scope of a store key past its prefix, as a PostgreSQL regular expression (its first
/// group): escaped characters (`\` and any one) or any other than `:`, up to the first
/// unescaped `:` (the rule of `key.rs`).
const STORED_SCOPE: &str = r"^((?:[^\\:]|\\.)*)";

/// The first text past every text that starts with `prefix`, in the byte order of the `key`
/// column (`COLLATE "C"`, the order of code points): `prefix` with its last character that can
/// grow grown by one and the rest cut off; `None` when there is none (an empty prefix).
pub(super) fn past(prefix: &str) -> Option<String> {
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

/// Whether the table exists, asked through `conn` without touching it (a missing table aborts
/// no transaction).
pub(super) async fn table_exists<S: Session>(
    conn: &mut S,
    sql: &Statements,
) -> Result<bool, S::Error> {
    let row = conn.query_opt(&sql.table_exists, &[], sql.inline).await?;
    let found = match &row {
        Some(row) => row.flag(0)?,
        None => None,
    };
    found.ok_or_else(|| S::Error::corrupt("no answer to the look for the table".to_owned()))
}

/// [`claim`] inside the caller's transaction, waiting at most `wait` for a concurrent
/// transaction's uncommitted claim of the key.
pub(super) async fn tx_claim<S: Session>(
    conn: &mut S,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    lease: Duration,
    wait: Duration,
) -> Result<Claimed, S::Error> {
    // Reading first (while replays clearly outnumber first calls, `order.rs`): the live row
    // as this transaction sees it, committed or its own, as the claim's `live` reads it; a
    // claim of a transaction that has not committed is invisible to both, and the claim that
    // follows waits on its lock. Otherwise the one statement, inserting first or not: a bare
    // upsert in a caller's transaction would lock a live row it met until the caller commits.
    if sql.order.first() == First::Read
        && let Some(record) = live(conn, sql, key).await?
    {
        sql.order.found(true);
        return Ok(Claimed::Found(record));
    }
    let token = claim.token.to_bytes();
    let wait = millis(wait).to_string();
    let values = claim_values(key, &token, claim, lease, &wait);
    let Some(row) = conn.query_opt(&sql.tx_claim, &values, sql.inline).await? else {
        return Err(S::Error::corrupt("no answer to a claim".to_owned()));
    };
    match row.flag(0)? {
        None => Ok(Claimed::Unseen),
        Some(true) => {
            sql.order.found(false);
            Ok(Claimed::Held)
        }
        Some(false) => {
            sql.order.found(true);
            record(&row).map(Claimed::Found)
        }
    }
}

/// [`complete`] inside the caller's transaction, whatever the time (the claim cannot have
/// been taken by another); `true` if the claim held the key.
pub(super) async fn tx_complete<S: Session>(
    conn: &mut S,
    sql: &Statements,
    key: &str,
    claim: &Claim,
    payload: &[u8],
    ttl: Duration,
) -> Result<bool, S::Error> {
    let token = claim.token.to_bytes();
    let values = [
        Value::Text(key),
        Value::Bytes(&token),
        Value::Bytes(payload),
        Value::Int(millis(ttl)),
    ];
    let row = conn
        .query_opt(&sql.tx_complete, &values, sql.inline)
        .await?;
    Ok(row.is_some())
}

/// The values of the plain store's completion statement.
fn result_values<'a>(
    key: &'a str,
    token: &'a [u8],
    payload: &'a [u8],
    ttl: Duration,
    tag: &'a str,
) -> [Value<'a>; 5] {
    [
        Value::Text(key),
        Value::Bytes(token),
        Value::Bytes(payload),
        Value::Int(millis(ttl)),
        Value::Text(tag),
    ]
}

/// Deletes the claim's row inside the caller's transaction (no notification: the row was
/// never visible to anyone else); `true` if it was there.
pub(super) async fn tx_release<S: Session>(
    conn: &mut S,
    sql: &Statements,
    key: &str,
    claim: &Claim,
) -> Result<bool, S::Error> {
    let token = claim.token.to_bytes();
    let values = [Value::Text(key), Value::Bytes(&token)];
    let deleted = conn.execute(&sql.tx_release, &values, sql.inline).await?;
    Ok(deleted == 1)
}

/// Waits at most `wait` for the transaction that holds `key`'s row to end (it committed or
/// rolled back), claiming nothing: one statement in a transaction of its own, rolled back.
/// Returns when the lock is free or `wait` ran out, which is not an error.
pub(super) async fn lock_wait(
    conn: &mut PgConnection,
    sql: &Statements,
    key: &str,
    wait: Duration,
) -> Result<(), sqlx::Error> {
    let mut own = Connection::begin(conn).await?;
    let wait = millis(wait).to_string();
    let waited = sql
        .send(&sql.lock_wait, &[Value::Text(key), Value::Text(&wait)])
        .execute(&mut *own)
        .await;
    own.rollback().await?;
    match waited {
        Err(error) if !failure::lock_timed_out(&error) => Err(error),
        _ => Ok(()),
    }
}

/// Deletes at most `batch` expired rows; returns how many.
pub(super) async fn reap<'e>(
    executor: impl PgExecutor<'e>,
    sql: &Statements,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let done = sql
        .send(&sql.reap, &[Value::Int(batch)])
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
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
    fn literals_are_quoted() {
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn durations_are_whole_positive_milliseconds() {
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
        assert_eq!(millis(Duration::MAX), i64::MAX);
    }
}
