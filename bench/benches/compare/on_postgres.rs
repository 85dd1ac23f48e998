//! The PostgreSQL rows: idem on `PostgresStore` against raw prepared statements on the same
//! pool, with one caller and with 64, and the bytes a record takes in the table.

use std::hint::black_box;

use idem::{Config, Idem, PostgresOptions, PostgresStore};
use sqlx::PgPool;

use crate::measure::{Plan, latency_pair, throughput_pair};
use crate::on_redis::CALLERS;
use crate::postgres_server::PostgresServer;
use crate::report::{Quantity, Report, Target};
use crate::workload::{below, charge, fresh, receipt, store_key};

/// Keys of the replay rows: replays ask for one of them at random.
const REPLAYED: u64 = 1_024;

/// Records written for the bytes row.
const RECORDS: u64 = 10_000;

/// What the PostgreSQL rows share.
pub struct Setup {
    pub idem: Idem,
    /// The store's own pool, for the raw statements.
    pub pool: PgPool,
}

impl Setup {
    pub async fn new(server: &PostgresServer) -> Setup {
        let options = PostgresOptions::default().reaper_interval(None);
        let store = PostgresStore::connect_with(&server.url(), options)
            .await
            .expect("connect to the benchmark's PostgreSQL");
        let pool = store.pool().clone();
        let idem = Idem::with_settings(store, &Config::default());
        for order in 0..REPLAYED {
            idem.scope(charge(order)).await.unwrap();
        }
        Setup { idem, pool }
    }
}

/// The statement a hand-written replay sends: the row by its primary key.
async fn raw_select(pool: &PgPool, key: &str) {
    let row: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM idem_records WHERE key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await
            .expect("SELECT");
    assert!(black_box(row).is_some(), "the key is stored");
}

/// The two statements a hand-written first call sends: insert the claim, store the result.
async fn raw_insert_update(pool: &PgPool, order: u64) {
    let key = format!("raw:{order}");
    sqlx::query(
        "INSERT INTO idem_records (key, state, token, expires_at) \
         VALUES ($1, 'in_progress', $2, now() + interval '30 seconds')",
    )
    .bind(&key)
    .bind(&[7_u8; 16][..])
    .execute(pool)
    .await
    .expect("INSERT");
    let payload = serde_json::to_vec(&receipt(order)).expect("JSON");
    sqlx::query(
        "UPDATE idem_records SET state = 'completed', payload = $2, \
         expires_at = now() + interval '1 hour' WHERE key = $1",
    )
    .bind(&key)
    .bind(payload)
    .execute(pool)
    .await
    .expect("UPDATE");
}

/// One caller, then 64, then bytes per record.
pub async fn rows(report: &mut Report, plan: &Plan, setup: &Setup, server: &PostgresServer) {
    report.section("PostgreSQL, one caller (latency)");
    let pool = &setup.pool;
    let key = store_key(7);
    let pair = setup
        .idem
        .scope(latency_pair(
            plan,
            async || raw_select(pool, &key).await,
            async || {
                black_box(charge(black_box(7)).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "replay",
        "raw prepared SELECT by key",
        pair,
        Quantity::Nanos,
        Some(Target::RatioAtMost(1.3)),
    );
    let pair = setup
        .idem
        .scope(latency_pair(
            plan,
            async || raw_insert_update(pool, fresh()).await,
            async || {
                black_box(charge(fresh()).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "first call",
        "raw INSERT + UPDATE",
        pair,
        Quantity::Nanos,
        Some(Target::RatioAtMost(1.3)),
    );

    report.section("PostgreSQL, 64 concurrent callers (calls/s)");
    let raw = {
        let pool = setup.pool.clone();
        move || {
            let pool = pool.clone();
            async move { raw_select(&pool, &store_key(below(REPLAYED))).await }
        }
    };
    let replay = {
        let idem = setup.idem.clone();
        move || {
            let idem = idem.clone();
            async move {
                black_box(idem.scope(charge(below(REPLAYED))).await.unwrap());
            }
        }
    };
    let pair = throughput_pair(plan, CALLERS, raw, replay).await;
    report.add_pair(
        "replays/s",
        "raw SELECTs/s",
        pair,
        Quantity::PerSecond,
        None,
    );
    let raw = {
        let pool = setup.pool.clone();
        move || {
            let pool = pool.clone();
            async move { raw_insert_update(&pool, fresh()).await }
        }
    };
    let first = {
        let idem = setup.idem.clone();
        move || {
            let idem = idem.clone();
            async move {
                black_box(idem.scope(charge(fresh())).await.unwrap());
            }
        }
    };
    let pair = throughput_pair(plan, CALLERS, raw, first).await;
    report.add_pair(
        "first calls/s",
        "raw INSERT + UPDATE pairs/s",
        pair,
        Quantity::PerSecond,
        None,
    );

    bytes(report, server).await;
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
