//! `--only mysql-shapes`: the statement shapes a `MySqlStore` claim could take, measured on
//! the store's own pool (a MariaDB of the benchmark's own) against the raw statements of the
//! MySQL rows of `on_sql.rs`, each pair sampled in turn. Not part of the full run: it is the
//! evidence behind the claim's shape (BENCHMARKS.md, "SQLite and MySQL"). `IDEM_SHAPES_LOG=0`
//! turns the server's general log off for the run.
//!
//! The shapes ([`Shape`]), each a claim that either takes a key or finds its live row:
//! - read first (the store's): a prepared `SELECT` of the live row; an insert only when it
//!   found none.
//! - insert first: the prepared insert; a replay meets the row (`ER_DUP_ENTRY`) and reads it.
//! - upsert: one text query of two statements, an insert that takes over an expired row only
//!   (`INSERT … ON DUPLICATE KEY UPDATE`) and the read of the row; values as hex literals.
//! - read first in one query: the read and the insert prepared once per connection (SQL
//!   `PREPARE`), run by one text query `EXECUTE read; guard; EXECUTE insert`, where the guard
//!   fails when the read found a row, which ends the query before the insert.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::TryStreamExt;
use idem::{MySqlOptions, MySqlStore};
use sqlx::mysql::MySqlDatabaseError;
use sqlx::{AssertSqlSafe, Either, MySqlPool, Row};

use crate::mariadb_server::MariaDb;
use crate::measure::{Plan, latency_pair, throughput_pair};
use crate::on_redis::CALLERS;
use crate::report::{Quantity, Report};
use crate::workload::below;

/// Now in milliseconds since the Unix epoch, by the server's clock: the store's expression.
const NOW: &str = "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000)";

/// Keys of the replay rows.
const REPLAYED: u64 = 1_024;

/// The key of the hot-key rows.
const HOT: u64 = 7;

/// The payload every completion stores (the workload's receipt as JSON).
const PAYLOAD: &[u8] = br#"{"order":1,"amount_cents":4999,"currency":"EUR","approved":true}"#;

/// `ER_LOCK_WAIT_TIMEOUT`.
const LOCKED: u16 = 1205;

/// A way to claim a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    ReadFirst,
    InsertFirst,
    Upsert,
    ReadFirstOneQuery,
}

const SHAPES: [Shape; 4] = [
    Shape::ReadFirst,
    Shape::InsertFirst,
    Shape::Upsert,
    Shape::ReadFirstOneQuery,
];

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::ReadFirst => "read first (SELECT; INSERT when none)",
            Shape::InsertFirst => "insert first (INSERT; SELECT when it met a row)",
            Shape::Upsert => "upsert (one text query: INSERT … ODKU; SELECT)",
            Shape::ReadFirstOneQuery => "read first in one query (EXECUTE; guard; EXECUTE)",
        }
    }
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
static NEXT_KEY: AtomicU64 = AtomicU64::new(1_000_000_000);
/// Claims of the hot-key rows that met a lock and read again.
static MET_LOCK: AtomicU64 = AtomicU64::new(0);

/// A token no other claim of the run has.
fn token() -> [u8; 16] {
    let mut token = [0x5e_u8; 16];
    token[..8].copy_from_slice(&NEXT_TOKEN.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    token
}

fn key(n: u64) -> String {
    format!("shape:{n}")
}

/// A key never claimed before.
fn fresh() -> String {
    key(NEXT_KEY.fetch_add(1, Ordering::Relaxed))
}

/// One of the stored keys, at random.
fn replayed() -> String {
    key(below(REPLAYED))
}

/// `X'…'`: bytes as a hex literal, which no byte can break out of.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(3 + bytes.len() * 2);
    out.push_str("X'");
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out.push('\'');
    out
}

/// The server's error number of `error`, if it is the server's.
fn number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(e) => e
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

fn live_select(key: &str) -> String {
    format!(
        "SELECT `state`, `token`, `fingerprint`, `payload`, `expires_at` - {NOW} \
         FROM idem_records WHERE `key` = {key} AND `expires_at` > {NOW}"
    )
}

fn insert(values: &str) -> String {
    format!(
        "SET STATEMENT innodb_lock_wait_timeout = 0 FOR INSERT INTO idem_records \
         (`key`, `state`, `token`, `fingerprint`, `payload`, `expires_at`) {values}"
    )
}

#[derive(Clone)]
struct Shapes {
    pool: MySqlPool,
}

impl Shapes {
    async fn raw_select(&self, key: &str) {
        let row: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT payload FROM idem_records WHERE `key` = ?")
                .bind(key.as_bytes())
                .fetch_optional(&self.pool)
                .await
                .expect("SELECT");
        assert!(black_box(row).is_some());
    }

    async fn raw_insert_update(&self, key: &str) {
        sqlx::query(
            "INSERT INTO idem_records (`key`, state, token, expires_at) \
             VALUES (?, 'in_progress', ?, UNIX_TIMESTAMP(NOW(3)) * 1000 + 30000)",
        )
        .bind(key.as_bytes())
        .bind(&[7_u8; 16][..])
        .execute(&self.pool)
        .await
        .expect("INSERT");
        sqlx::query(
            "UPDATE idem_records SET state = 'completed', payload = ?, \
             expires_at = UNIX_TIMESTAMP(NOW(3)) * 1000 + 3600000 WHERE `key` = ?",
        )
        .bind(PAYLOAD)
        .bind(key.as_bytes())
        .execute(&self.pool)
        .await
        .expect("UPDATE");
    }

    /// The store's completion (prepared, fenced on the token).
    async fn complete(&self, key: &str, token: &[u8; 16]) {
        let text = format!(
            "UPDATE idem_records SET `state` = 'completed', `payload` = ?, `expires_at` = {NOW} + ? \
             WHERE `key` = ? AND `token` = ? AND `state` = 'in_progress' AND `expires_at` > {NOW}"
        );
        let done = sqlx::query(AssertSqlSafe(text))
            .bind(PAYLOAD)
            .bind(3_600_000_i64)
            .bind(key.as_bytes())
            .bind(&token[..])
            .execute(&self.pool)
            .await
            .expect("complete");
        assert_eq!(done.rows_affected(), 1);
    }

    /// The store's read of the live row (prepared); `true` if there was one.
    async fn read_live(&self, key: &str) -> bool {
        let row = sqlx::query(AssertSqlSafe(live_select("?")))
            .bind(key.as_bytes())
            .fetch_optional(&self.pool)
            .await
            .expect("read");
        black_box(&row);
        row.is_some()
    }

    /// The same read as a text query, the key inlined.
    async fn read_live_text(&self, key: &str) -> bool {
        let rows = self.text(live_select(&hex(key.as_bytes()))).await;
        rows == 1
    }

    /// The store's insert (prepared); `Ok(true)` if it inserted, `Ok(false)` if it met a row.
    async fn insert(&self, key: &str, token: &[u8; 16]) -> Result<bool, u16> {
        let done = sqlx::query(AssertSqlSafe(insert(&format!(
            "VALUES (?, 'in_progress', ?, ?, NULL, {NOW} + ?)"
        ))))
        .bind(key.as_bytes())
        .bind(&token[..])
        .bind(None::<&[u8]>)
        .bind(30_000_i64)
        .execute(&self.pool)
        .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if number(&e) == Some(1062) => Ok(false),
            Err(e) => Err(number(&e).unwrap_or_else(|| panic!("insert: {e}"))),
        }
    }

    /// A text query's rows, all read.
    async fn text(&self, text: String) -> usize {
        let rows = sqlx::raw_sql(AssertSqlSafe(text))
            .fetch_all(&self.pool)
            .await
            .expect("text query");
        black_box(rows.len())
    }

    /// The upsert's insert alone, prepared or as a text query: on a live row, it changes
    /// nothing.
    async fn upsert_alone(&self, key: &str, token: &[u8; 16], prepared: bool) {
        let update = upsert_update();
        if prepared {
            let text = insert(&format!(
                "VALUES (?, 'in_progress', ?, ?, NULL, {NOW} + ?) {update}"
            ));
            sqlx::query(AssertSqlSafe(text))
                .bind(key.as_bytes())
                .bind(&token[..])
                .bind(None::<&[u8]>)
                .bind(30_000_i64)
                .execute(&self.pool)
                .await
                .expect("upsert");
        } else {
            let text = insert(&format!(
                "VALUES ({}, 'in_progress', {}, NULL, NULL, {NOW} + 30000) {update}",
                hex(key.as_bytes()),
                hex(token)
            ));
            sqlx::raw_sql(AssertSqlSafe(text))
                .execute(&self.pool)
                .await
                .expect("upsert");
        }
    }

    /// Claims `key` with `token` in `shape`: `Ok(true)` if it took the key, `Ok(false)` if it
    /// found the live row; `Err` with the server's error number (1205: a lock held).
    async fn claim(&self, shape: Shape, key: &str, token: &[u8; 16]) -> Result<bool, u16> {
        match shape {
            Shape::ReadFirst => {
                if self.read_live(key).await {
                    return Ok(false);
                }
                assert!(self.insert(key, token).await?, "a fresh key");
                Ok(true)
            }
            Shape::InsertFirst => {
                if self.insert(key, token).await? {
                    return Ok(true);
                }
                assert!(self.read_live(key).await);
                Ok(false)
            }
            Shape::Upsert => self.upsert(key, token).await,
            Shape::ReadFirstOneQuery => self.read_first_one_query(key, token).await,
        }
    }

    /// The upsert: the insert that takes over an expired row only, then the row, whose token
    /// says whether this claim holds the key.
    async fn upsert(&self, key: &str, token: &[u8; 16]) -> Result<bool, u16> {
        let k = hex(key.as_bytes());
        let text = format!(
            "{}; SELECT `state`, `token`, `fingerprint`, `payload`, `expires_at` - {NOW} \
             FROM idem_records WHERE `key` = {k}",
            insert(&format!(
                "VALUES ({k}, 'in_progress', {}, NULL, NULL, {NOW} + 30000) {}",
                hex(token),
                upsert_update()
            ))
        );
        let row = sqlx::raw_sql(AssertSqlSafe(text))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| number(&e).unwrap_or_else(|| panic!("upsert: {e}")))?
            .expect("the row");
        let held: Vec<u8> = row.try_get(1).expect("token");
        let _: Option<Vec<u8>> = black_box(row.try_get(3).expect("payload"));
        let _: i64 = black_box(row.try_get(4).expect("lease left"));
        Ok(held == token)
    }

    /// Read first in one query (see the module's documentation); the statements are prepared
    /// on the connection when it does not have them yet (`ER_UNKNOWN_STMT_HANDLER`).
    async fn read_first_one_query(&self, key: &str, token: &[u8; 16]) -> Result<bool, u16> {
        let mut conn = self.pool.acquire().await.expect("a connection");
        let text = format!(
            "EXECUTE idem_shape_read USING {k}; \
             SELECT 1 FROM DUAL WHERE ~0 + FOUND_ROWS() = 0; \
             EXECUTE idem_shape_insert USING {k}, {t}, NULL, 30000",
            k = hex(key.as_bytes()),
            t = hex(token)
        );
        for _ in 0..2 {
            let mut rows = 0;
            let mut results = sqlx::raw_sql(AssertSqlSafe(text.clone())).fetch_many(&mut *conn);
            let failed = loop {
                match results.try_next().await {
                    Ok(Some(Either::Right(row))) => {
                        let _: Option<Vec<u8>> = black_box(row.try_get(3).expect("payload"));
                        rows += 1;
                    }
                    Ok(Some(Either::Left(_))) => {}
                    Ok(None) => break None,
                    Err(e) => break Some(number(&e).unwrap_or_else(|| panic!("query: {e}"))),
                }
            };
            drop(results);
            match failed {
                None => return Ok(true),
                // The guard: the read found the row.
                Some(1690) if rows == 1 => return Ok(false),
                Some(1243) => {
                    let prepare = format!(
                        "PREPARE idem_shape_read FROM {}; PREPARE idem_shape_insert FROM {}",
                        hex(live_select("?").as_bytes()),
                        hex(
                            insert(&format!("VALUES (?, 'in_progress', ?, ?, NULL, {NOW} + ?)"))
                                .as_bytes()
                        )
                    );
                    sqlx::raw_sql(AssertSqlSafe(prepare))
                        .execute(&mut *conn)
                        .await
                        .expect("PREPARE");
                }
                Some(n) => return Err(n),
            }
        }
        unreachable!("the statements were prepared")
    }
}

/// The upsert's update: an expired row is taken over (`expires_at` last: each assignment sees
/// the ones before it), a live one left as it is.
fn upsert_update() -> String {
    let expired = format!("`expires_at` <= {NOW}");
    format!(
        "ON DUPLICATE KEY UPDATE \
         `state` = IF({expired}, 'in_progress', `state`), \
         `token` = IF({expired}, VALUES(`token`), `token`), \
         `fingerprint` = IF({expired}, VALUES(`fingerprint`), `fingerprint`), \
         `payload` = IF({expired}, NULL, `payload`), \
         `expires_at` = IF({expired}, VALUES(`expires_at`), `expires_at`)"
    )
}

/// A replay in `shape`; a claim that met a lock reads the live row, as the store would.
async fn replay(s: &Shapes, shape: Shape, key: &str) {
    match s.claim(shape, key, &token()).await {
        Ok(taken) => assert!(!taken, "{key} is stored"),
        Err(LOCKED) => {
            MET_LOCK.fetch_add(1, Ordering::Relaxed);
            assert!(s.read_live(key).await);
        }
        Err(n) => panic!("{shape:?}: error {n}"),
    }
}

/// A first call in `shape`: the claim of a fresh key and its completion.
async fn first_call(s: &Shapes, shape: Shape) {
    let (k, t) = (fresh(), token());
    assert_eq!(s.claim(shape, &k, &t).await, Ok(true), "{shape:?}");
    s.complete(&k, &t).await;
}

pub async fn run(report: &mut Report, plan: &Plan) {
    let server = MariaDb::start();
    let log = std::env::var("IDEM_SHAPES_LOG").map_or(true, |v| v != "0");
    if !log {
        server.sql("SET GLOBAL general_log = 0");
    }
    let options = MySqlOptions::default().reaper_interval(None);
    let store = MySqlStore::connect_with(&server.database("shapes"), options)
        .await
        .expect("connect to the benchmark's MariaDB");
    let version = server.sql("SELECT VERSION()");
    report.context.push((
        "mysql".into(),
        format!(
            "MariaDB {version} on 127.0.0.1:{}, general log {}",
            server.port(),
            if log { "on" } else { "off" }
        ),
    ));
    let s = Shapes {
        pool: store.pool().clone(),
    };
    for n in 0..REPLAYED {
        s.raw_insert_update(&key(n)).await;
    }

    report.section("MySQL claim shapes, one caller: a replay's claim (latency)");
    for shape in SHAPES {
        let pair = latency_pair(
            plan,
            async || s.raw_select(&replayed()).await,
            async || replay(&s, shape, &replayed()).await,
        )
        .await;
        report.add_pair(shape.name(), "raw SELECT", pair, Quantity::Nanos, None);
    }

    report.section("MySQL claim shapes, one caller: a first call, claim and completion (latency)");
    for shape in SHAPES {
        let pair = latency_pair(
            plan,
            async || s.raw_insert_update(&fresh()).await,
            async || first_call(&s, shape).await,
        )
        .await;
        report.add_pair(
            shape.name(),
            "raw INSERT + UPDATE",
            pair,
            Quantity::Nanos,
            None,
        );
    }

    report.section("MySQL claim shapes, one caller: a mix of replays and first calls (latency)");
    for replays in [1, 5, 9] {
        for shape in [Shape::ReadFirst, Shape::InsertFirst] {
            let pair = latency_pair(
                plan,
                async || {
                    if below(10) < replays {
                        s.raw_select(&replayed()).await;
                    } else {
                        s.raw_insert_update(&fresh()).await;
                    }
                },
                async || {
                    if below(10) < replays {
                        replay(&s, shape, &replayed()).await;
                    } else {
                        first_call(&s, shape).await;
                    }
                },
            )
            .await;
            report.add_pair(
                &format!("{}0 % replays, {}", replays, shape.name()),
                "the raw statements of each",
                pair,
                Quantity::Nanos,
                None,
            );
        }
    }

    report.section("MySQL statement costs, one caller (latency)");
    let statements: [(&str, u8); 7] = [
        ("prepared SELECT 1", 0),
        ("text SELECT 1", 1),
        ("text SELECT 1; SELECT 1", 2),
        ("text read of the live row", 3),
        ("text read of the live row, twice in one query", 4),
        ("prepared upsert of a live row (no change)", 5),
        ("text upsert of a live row (no change)", 6),
    ];
    for (name, statement) in statements {
        let pair = latency_pair(
            plan,
            async || s.raw_select(&replayed()).await,
            async || {
                let k = replayed();
                match statement {
                    0 => {
                        let one: i32 = sqlx::query_scalar("SELECT 1")
                            .fetch_one(&s.pool)
                            .await
                            .expect("SELECT 1");
                        black_box(one);
                    }
                    1 => assert_eq!(s.text("SELECT 1".into()).await, 1),
                    2 => assert_eq!(s.text("SELECT 1; SELECT 1".into()).await, 2),
                    3 => assert!(s.read_live_text(&k).await),
                    4 => {
                        let one = live_select(&hex(k.as_bytes()));
                        assert_eq!(s.text(format!("{one}; {one}")).await, 2);
                    }
                    5 => s.upsert_alone(&k, &token(), true).await,
                    _ => s.upsert_alone(&k, &token(), false).await,
                }
            },
        )
        .await;
        report.add_pair(name, "raw SELECT", pair, Quantity::Nanos, None);
    }

    report.section("MySQL claim shapes, 64 callers (calls/s)");
    let s = Arc::new(s);
    for (what, hot) in [("replays/s", false), ("replays/s of one hot key", true)] {
        for shape in SHAPES {
            let base = {
                let s = s.clone();
                move || {
                    let s = s.clone();
                    let k = if hot { key(HOT) } else { replayed() };
                    async move { s.raw_select(&k).await }
                }
            };
            let subject = {
                let s = s.clone();
                move || {
                    let s = s.clone();
                    let k = if hot { key(HOT) } else { replayed() };
                    async move { replay(&s, shape, &k).await }
                }
            };
            MET_LOCK.store(0, Ordering::Relaxed);
            let pair = throughput_pair(plan, CALLERS, base, subject).await;
            report.add_pair(
                &format!("{what}, {}", shape.name()),
                "raw SELECTs/s",
                pair,
                Quantity::PerSecond,
                None,
            );
            let met = MET_LOCK.load(Ordering::Relaxed);
            if met > 0 {
                eprintln!("   ({met} claims met a lock (1205) and read again)");
            }
        }
    }
    for shape in SHAPES {
        let base = {
            let s = s.clone();
            move || {
                let s = s.clone();
                async move { s.raw_insert_update(&fresh()).await }
            }
        };
        let subject = {
            let s = s.clone();
            move || {
                let s = s.clone();
                async move { first_call(&s, shape).await }
            }
        };
        let pair = throughput_pair(plan, CALLERS, base, subject).await;
        report.add_pair(
            &format!("first calls/s, {}", shape.name()),
            "raw INSERT + UPDATE pairs/s",
            pair,
            Quantity::PerSecond,
            None,
        );
    }
    drop(store);
}
