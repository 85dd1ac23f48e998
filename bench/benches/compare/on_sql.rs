//! The rows of the SQL stores: idem against the raw statements a hand-written version sends, on
//! the store's own pool, with one caller and with 64 ([`rows`], the same for every database;
//! only the raw statements differ, [`Raw`]). PostgreSQL's setup is in `on_postgres.rs`; the
//! SQLite (a file in a temporary directory, WAL) and MySQL (a MariaDB of the benchmark's own)
//! setups are here.

use std::future::Future;
use std::hint::black_box;

use idem::{Config, Idem, MySqlOptions, MySqlStore, SqliteOptions, SqliteStore};
use sqlx::{MySqlPool, PgPool, SqlitePool};

use crate::mariadb_server::MariaDb;
use crate::measure::{Plan, latency_pair, throughput_pair};
use crate::on_redis::CALLERS;
use crate::report::{Quantity, Report, Target};
use crate::workload::{below, charge, fresh, receipt, store_key};

/// Keys of the replay rows: replays ask for one of them at random.
const REPLAYED: u64 = 1_024;

/// The raw statements of one database: a replay's read by key, a first call's insert of the
/// claim and update to the result.
pub trait Raw: Clone + Send + Sync + 'static {
    fn select(&self, key: String) -> impl Future<Output = ()> + Send;
    fn insert_update(&self, order: u64) -> impl Future<Output = ()> + Send;
}

impl Raw for PgPool {
    async fn select(&self, key: String) {
        let row: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT payload FROM idem_records WHERE key = $1")
                .bind(key)
                .fetch_optional(self)
                .await
                .expect("SELECT");
        assert!(black_box(row).is_some(), "the key is stored");
    }

    async fn insert_update(&self, order: u64) {
        let key = format!("raw:{order}");
        sqlx::query(
            "INSERT INTO idem_records (key, state, token, expires_at) \
             VALUES ($1, 'in_progress', $2, now() + interval '30 seconds')",
        )
        .bind(&key)
        .bind(&[7_u8; 16][..])
        .execute(self)
        .await
        .expect("INSERT");
        let payload = serde_json::to_vec(&receipt(order)).expect("JSON");
        sqlx::query(
            "UPDATE idem_records SET state = 'completed', payload = $2, \
             expires_at = now() + interval '1 hour' WHERE key = $1",
        )
        .bind(&key)
        .bind(payload)
        .execute(self)
        .await
        .expect("UPDATE");
    }
}

impl Raw for SqlitePool {
    async fn select(&self, key: String) {
        let row: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT payload FROM idem_records WHERE key = ?1")
                .bind(key)
                .fetch_optional(self)
                .await
                .expect("SELECT");
        assert!(black_box(row).is_some(), "the key is stored");
    }

    async fn insert_update(&self, order: u64) {
        let key = format!("raw:{order}");
        sqlx::query(
            "INSERT INTO idem_records (key, state, token, expires_at) \
             VALUES (?1, 'in_progress', ?2, unixepoch('subsec') * 1000 + 30000)",
        )
        .bind(&key)
        .bind(&[7_u8; 16][..])
        .execute(self)
        .await
        .expect("INSERT");
        let payload = serde_json::to_vec(&receipt(order)).expect("JSON");
        sqlx::query(
            "UPDATE idem_records SET state = 'completed', payload = ?2, \
             expires_at = unixepoch('subsec') * 1000 + 3600000 WHERE key = ?1",
        )
        .bind(&key)
        .bind(payload)
        .execute(self)
        .await
        .expect("UPDATE");
    }
}

impl Raw for MySqlPool {
    async fn select(&self, key: String) {
        let row: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT payload FROM idem_records WHERE `key` = ?")
                .bind(key.into_bytes())
                .fetch_optional(self)
                .await
                .expect("SELECT");
        assert!(black_box(row).is_some(), "the key is stored");
    }

    async fn insert_update(&self, order: u64) {
        let key = format!("raw:{order}").into_bytes();
        sqlx::query(
            "INSERT INTO idem_records (`key`, state, token, expires_at) \
             VALUES (?, 'in_progress', ?, UNIX_TIMESTAMP(NOW(3)) * 1000 + 30000)",
        )
        .bind(&key)
        .bind(&[7_u8; 16][..])
        .execute(self)
        .await
        .expect("INSERT");
        let payload = serde_json::to_vec(&receipt(order)).expect("JSON");
        sqlx::query(
            "UPDATE idem_records SET state = 'completed', payload = ?, \
             expires_at = UNIX_TIMESTAMP(NOW(3)) * 1000 + 3600000 WHERE `key` = ?",
        )
        .bind(payload)
        .bind(&key)
        .execute(self)
        .await
        .expect("UPDATE");
    }
}

/// The SQLite rows, on a file in a temporary directory (removed at the end).
pub async fn sqlite(report: &mut Report, plan: &Plan) {
    let dir = std::env::temp_dir().join(format!("idem-bench-sqlite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let url = format!("sqlite://{}", dir.join("idem.db").display());
    let options = SqliteOptions::default().reaper_interval(None);
    let store = SqliteStore::connect_with(&url, options)
        .await
        .expect("open the benchmark's SQLite file");
    let pool = store.pool().clone();
    report.context.push((
        "sqlite".into(),
        format!("a file in {} (WAL)", dir.display()),
    ));
    rows(
        report,
        plan,
        ("SQLite", EMBEDDED_AND_MYSQL),
        Idem::with_settings(store, &Config::default()),
        pool,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The MySQL rows, on a MariaDB of the benchmark's own.
pub async fn mysql(report: &mut Report, plan: &Plan) {
    let server = MariaDb::start();
    let options = MySqlOptions::default().reaper_interval(None);
    let store = MySqlStore::connect_with(&server.database("bench"), options)
        .await
        .expect("connect to the benchmark's MariaDB");
    let pool = store.pool().clone();
    let version = server.sql("SELECT VERSION()");
    report.context.push((
        "mysql".into(),
        format!("MariaDB {version} on 127.0.0.1:{}", server.port()),
    ));
    rows(
        report,
        plan,
        ("MySQL", EMBEDDED_AND_MYSQL),
        Idem::with_settings(store, &Config::default()),
        pool,
    )
    .await;
}

/// What the rows of one database must reach: idem / raw at most `latency` on one caller, at
/// least `rate` with 64 (none for the databases whose issue set no rate target).
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub latency: f64,
    pub rate: Option<f64>,
}

/// SQLite's and MySQL's: the one-caller ratio of the issue that brought them.
pub const EMBEDDED_AND_MYSQL: Targets = Targets {
    latency: 1.3,
    rate: None,
};

/// One caller, then 64: replays and first calls against the raw statements, in sections named
/// after `name` (the database).
pub async fn rows<P: Raw>(
    report: &mut Report,
    plan: &Plan,
    (name, targets): (&str, Targets),
    idem: Idem,
    raw: P,
) {
    for order in 0..REPLAYED {
        idem.scope(charge(order)).await.unwrap();
    }
    report.section(&format!("{name}, one caller (latency)"));
    let key = store_key(7);
    let pair = idem
        .scope(latency_pair(
            plan,
            async || raw.select(key.clone()).await,
            async || {
                black_box(charge(black_box(7)).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "replay",
        "raw SELECT by key",
        pair,
        Quantity::Nanos,
        Some(Target::RatioAtMost(targets.latency)),
    );
    let pair = idem
        .scope(latency_pair(
            plan,
            async || raw.insert_update(fresh()).await,
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
        Some(Target::RatioAtMost(targets.latency)),
    );

    report.section(&format!("{name}, 64 concurrent callers (calls/s)"));
    let base = {
        let raw = raw.clone();
        move || {
            let raw = raw.clone();
            async move { raw.select(store_key(below(REPLAYED))).await }
        }
    };
    let replay = {
        let idem = idem.clone();
        move || {
            let idem = idem.clone();
            async move {
                black_box(idem.scope(charge(below(REPLAYED))).await.unwrap());
            }
        }
    };
    let pair = throughput_pair(plan, CALLERS, base, replay).await;
    report.add_pair(
        "replays/s",
        "raw SELECTs/s",
        pair,
        Quantity::PerSecond,
        targets.rate.map(Target::RatioAtLeast),
    );
    let base = {
        let raw = raw.clone();
        move || {
            let raw = raw.clone();
            async move { raw.insert_update(fresh()).await }
        }
    };
    let first = {
        let idem = idem.clone();
        move || {
            let idem = idem.clone();
            async move {
                black_box(idem.scope(charge(fresh())).await.unwrap());
            }
        }
    };
    let pair = throughput_pair(plan, CALLERS, base, first).await;
    report.add_pair(
        "first calls/s",
        "raw INSERT + UPDATE pairs/s",
        pair,
        Quantity::PerSecond,
        targets.rate.map(Target::RatioAtLeast),
    );
}
