//! The PostgreSQL rows: idem on `PostgresStore` against raw prepared statements on the same
//! pool, with one caller and with 64 (`on_sql.rs`'s rows), the transactional mode on
//! tokio-postgres (a bare `Client`, and a deadpool-postgres `Object` with its statement cache)
//! against the same transaction written by hand, and the bytes a record takes in the table.

use std::hint::black_box;

use idem::{Config, Idem, PostgresOptions, PostgresStore};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Statement};

use crate::measure::{Plan, latency_pair, throughput_pair};
use crate::on_redis::CALLERS;
use crate::postgres_server::PostgresServer;
use crate::report::{Quantity, Report, Target};
use crate::workload::{Receipt, TTL, below, charge, fresh, receipt};

/// Records written for the bytes row.
const RECORDS: u64 = 10_000;

/// One caller, then 64 (the rows every SQL store has, `on_sql.rs`) on a `PostgresStore` and its
/// own pool, then bytes per record.
pub async fn rows(report: &mut Report, plan: &Plan, server: &PostgresServer) {
    let options = PostgresOptions::default().reaper_interval(None);
    let store = PostgresStore::connect_with(&server.url(), options)
        .await
        .expect("connect to the benchmark's PostgreSQL");
    let pool = store.pool().clone();
    let idem = Idem::with_settings(store, &Config::default());
    // Issue 23's: a replay and a first call within 1.25× the raw statements, 64 callers at
    // least 0.8× their rate.
    let targets = crate::on_sql::Targets {
        latency: 1.25,
        rate: Some(0.8),
    };
    crate::on_sql::rows(report, plan, ("PostgreSQL", targets), idem, pool).await;
    tokio_postgres_tx(report, plan, server).await;
    deadpool_tx_callers(report, plan, server).await;
    bytes(report, server).await;
}

/// A client of its own on the benchmark's server.
async fn client(server: &PostgresServer) -> Client {
    let (client, connection) = tokio_postgres::connect(&server.url(), NoTls)
        .await
        .expect("connect to the benchmark's PostgreSQL with tokio-postgres");
    tokio::spawn(connection);
    client
}

/// The transactional mode on tokio-postgres, one caller: `tx = conn` on a bare `Client`, whose
/// statements idem sends unnamed (parsed and planned on every call), then on a
/// deadpool-postgres `Object`, whose statements idem prepares once in the connection's
/// statement cache, each against the same transaction by hand on the same connection
/// ([`tx_rows`]).
async fn tokio_postgres_tx(report: &mut Report, plan: &Plan, server: &PostgresServer) {
    report.section(
        "PostgreSQL, transactional mode on tokio-postgres (`tx = conn` on a `Client`), one caller",
    );
    let own = Mutex::new(client(server).await);
    let call = async |order: u64| -> Receipt {
        let mut own = own.lock().await;
        let outcome = idem::Call::new("bench::tx", order)
            .ttl(TTL)
            .run_tx(&mut *own, async |_: &mut Client| receipt(order))
            .await
            .expect("a transactional call");
        outcome.value
    };
    let raw = async |statements: RawTx| {
        let mut own = own.lock().await;
        statements.run(&mut own).await;
    };
    let sql = Prepared::on(&*own.lock().await).await;
    tx_rows(report, plan, sql, call, raw).await;

    report.section(
        "PostgreSQL, transactional mode on deadpool-postgres (`tx = conn` on an `Object`, statements prepared in its cache), one caller",
    );
    let config: tokio_postgres::Config = server.url().parse().expect("the server's URL");
    let manager = deadpool_postgres::Manager::new(config, NoTls);
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(1)
        .build()
        .expect("a deadpool-postgres pool");
    let object = Mutex::new(pool.get().await.expect("a pool's connection"));
    let call = async |order: u64| -> Receipt {
        let mut object = object.lock().await;
        let outcome = idem::Call::new("bench::tx", order)
            .ttl(TTL)
            .run_tx(&mut *object, async |_: &mut Client| receipt(order))
            .await
            .expect("a transactional call");
        outcome.value
    };
    let raw = async |statements: RawTx| {
        let mut object = object.lock().await;
        statements.run(&mut object).await;
    };
    let sql = Prepared::on(&***object.lock().await).await;
    tx_rows(report, plan, sql, call, raw).await;
}

/// The raw side's prepared statements, on the connection both sides use.
#[derive(Clone)]
struct Prepared {
    select: Statement,
    insert: Statement,
    update: Statement,
}

/// The raw side's read of a replay.
const RAW_SELECT: &str = "SELECT payload FROM idem_records WHERE key = $1";
/// The raw side's insert of a first call's claim.
const RAW_INSERT: &str = "INSERT INTO idem_records (key, state, token, expires_at) \
     VALUES ($1, 'in_progress', $2, now() + interval '30 seconds')";
/// The raw side's update of a first call's result.
const RAW_UPDATE: &str = "UPDATE idem_records SET state = 'completed', payload = $2, \
     expires_at = now() + interval '1 hour' WHERE key = $1";

impl Prepared {
    /// The raw side's statements, prepared on `conn`.
    async fn on(conn: &Client) -> Prepared {
        let prepare = async |sql: &str| conn.prepare(sql).await.expect("prepare a raw statement");
        Prepared {
            select: prepare(RAW_SELECT).await,
            insert: prepare(RAW_INSERT).await,
            update: prepare(RAW_UPDATE).await,
        }
    }

    /// The raw side's statements, from the statement cache of a pool's connection.
    async fn cached(conn: &deadpool_postgres::ClientWrapper) -> Prepared {
        let prepare = async |sql: &str| {
            conn.prepare_cached(sql)
                .await
                .expect("prepare a raw statement")
        };
        Prepared {
            select: prepare(RAW_SELECT).await,
            insert: prepare(RAW_INSERT).await,
            update: prepare(RAW_UPDATE).await,
        }
    }
}

/// One transaction of the raw side: a replay's read of `key`, or a first call's insert and
/// update of a fresh key.
enum RawTx {
    Replay(Prepared, String),
    First(Prepared),
}

impl RawTx {
    async fn run(self, client: &mut Client) {
        let tx = client.transaction().await.expect("BEGIN");
        match self {
            RawTx::Replay(sql, key) => {
                let row = tx.query_opt(&sql.select, &[&key]).await.expect("SELECT");
                assert!(black_box(row).is_some(), "the key is stored");
            }
            RawTx::First(sql) => {
                let order = fresh();
                let key = format!("raw:tx:{order}");
                let payload = serde_json::to_vec(&receipt(order)).expect("JSON");
                tx.execute(&sql.insert, &[&key, &&[7_u8; 16][..]])
                    .await
                    .expect("INSERT");
                tx.execute(&sql.update, &[&key, &payload])
                    .await
                    .expect("UPDATE");
            }
        }
        tx.commit().await.expect("COMMIT");
    }
}

/// A replay and a first call of `call` (idem's `BEGIN`, the claim, the completion on a first
/// call, `COMMIT`) against the same transaction sent by hand through `raw` with prepared
/// statements `sql` (`BEGIN`, a `SELECT` by key or the claim's `INSERT` and the result's
/// `UPDATE`, `COMMIT`), on the same connection: one server backend for both sides, so that where the
/// system places it counts the same for each. The body writes nothing of its own: its writes
/// would be the same on both sides.
async fn tx_rows(
    report: &mut Report,
    plan: &Plan,
    sql: Prepared,
    mut call: impl AsyncFnMut(u64) -> Receipt,
    mut raw: impl AsyncFnMut(RawTx),
) {
    // The key replayed (the scope is `bench::tx` on both sides), stored first; the raw side
    // reads its row.
    let replayed = 7;
    call(replayed).await;
    let key = "idem:bench.tx:7".to_owned();
    let pair = latency_pair(
        plan,
        async || raw(RawTx::Replay(sql.clone(), key.clone())).await,
        async || {
            black_box(call(replayed).await);
        },
    )
    .await;
    report.add_pair(
        "replay",
        "BEGIN, raw SELECT by key, COMMIT",
        pair,
        Quantity::Nanos,
        Some(Target::RatioAtMost(1.3)),
    );
    let pair = latency_pair(
        plan,
        async || raw(RawTx::First(sql.clone())).await,
        async || {
            black_box(call(fresh()).await);
        },
    )
    .await;
    report.add_pair(
        "first call",
        "BEGIN, raw INSERT + UPDATE, COMMIT",
        pair,
        Quantity::Nanos,
        Some(Target::RatioAtMost(1.3)),
    );
}

/// Keys stored before the 64-caller rows replay a random one of them.
const REPLAYED: u64 = 1_024;

/// The scope of the 64-caller transactional rows.
const CALLERS_SCOPE: &str = "bench::txc";

/// `tx = conn` on an `Object` of `pool` for `order`.
async fn pooled_call(pool: &deadpool_postgres::Pool, order: u64) -> Receipt {
    let mut object = pool.get().await.expect("a pool's connection");
    let outcome = idem::Call::new(CALLERS_SCOPE, order)
        .ttl(TTL)
        .run_tx(&mut object, async |_: &mut Client| receipt(order))
        .await
        .expect("a transactional call");
    outcome.value
}

/// 64 callers of `tx = conn` on the `Object`s of a deadpool-postgres pool of 10 connections
/// (the plain store's pool size), each call on a connection of its own from the pool, against
/// the same transactions by hand on the same pool's connections with statements prepared in
/// their caches: replays of a random one of [`REPLAYED`] keys, and first calls.
async fn deadpool_tx_callers(report: &mut Report, plan: &Plan, server: &PostgresServer) {
    report.section(
        "PostgreSQL, transactional mode on deadpool-postgres (`tx = conn` on an `Object`), 64 concurrent callers (calls/s)",
    );
    let config: tokio_postgres::Config = server.url().parse().expect("the server's URL");
    let manager = deadpool_postgres::Manager::new(config, NoTls);
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(10)
        .build()
        .expect("a deadpool-postgres pool");
    for order in 0..REPLAYED {
        pooled_call(&pool, order).await;
    }
    let base = {
        let pool = pool.clone();
        move || {
            let pool = pool.clone();
            async move {
                let key = format!("idem:bench.txc:{}", below(REPLAYED));
                let mut object = pool.get().await.expect("a pool's connection");
                let sql = Prepared::cached(&object).await;
                RawTx::Replay(sql, key).run(&mut object).await;
            }
        }
    };
    let replay = {
        let pool = pool.clone();
        move || {
            let pool = pool.clone();
            async move {
                black_box(pooled_call(&pool, below(REPLAYED)).await);
            }
        }
    };
    let pair = throughput_pair(plan, CALLERS, base, replay).await;
    report.add_pair(
        "replays/s",
        "BEGIN, raw SELECT, COMMIT /s",
        pair,
        Quantity::PerSecond,
        None,
    );
    let base = {
        let pool = pool.clone();
        move || {
            let pool = pool.clone();
            async move {
                let mut object = pool.get().await.expect("a pool's connection");
                let sql = Prepared::cached(&object).await;
                RawTx::First(sql).run(&mut object).await;
            }
        }
    };
    let first = {
        let pool = pool.clone();
        move || {
            let pool = pool.clone();
            async move {
                black_box(pooled_call(&pool, fresh()).await);
            }
        }
    };
    let pair = throughput_pair(plan, CALLERS, base, first).await;
    report.add_pair(
        "first calls/s",
        "BEGIN, raw INSERT + UPDATE, COMMIT /s",
        pair,
        Quantity::PerSecond,
        None,
    );
}

/// The bytes of table and indexes per completed record, in a table of their own, compacted.
async fn bytes(report: &mut Report, server: &PostgresServer) {
    report.section("PostgreSQL, bytes per stored record");
    let options = PostgresOptions::default()
        .table("bench_bytes")
        .reaper_interval(None);
    let store = PostgresStore::connect_with(&server.url(), options)
        .await
        .expect("connect to the benchmark's PostgreSQL");
    let idem = Idem::with_settings(store, &Config::default());
    for order in 0..RECORDS {
        idem.scope(charge(order)).await.unwrap();
    }
    // Each first call leaves an old row version behind (the claim): rewrite the table
    // compactly, as autovacuum eventually makes it.
    server.psql("VACUUM FULL bench_bytes");
    let total: f64 = server
        .psql("SELECT pg_total_relation_size('bench_bytes')")
        .parse()
        .expect("a size");
    let row: f64 = server
        .psql("SELECT avg(pg_column_size(t.*)) FROM bench_bytes t")
        .parse()
        .expect("a size");
    report.add(
        "table + indexes per record (64-byte result, short key)",
        (Quantity::Bytes(total / RECORDS as f64), None),
        None,
        None,
    );
    report.add(
        "row data per record",
        (Quantity::Bytes(row), None),
        None,
        None,
    );
}
