//! Worker processes killed at random moments while they run `tx = conn` calls: every key's
//! business row is written exactly once, the records agree, and a killed transaction frees its
//! key at once (no call waits for a lease).
//!
//! This test binary has no libtest harness (`harness = false`): run normally, it starts a
//! PostgreSQL and two copies of itself as workers (`IDEM_TX_WORKER` set). Each worker walks the
//! shared list of keys (those without a business row yet) in its own random order, two calls
//! at a time; each call is a transaction whose body inserts the key's business row and sleeps
//! a few milliseconds. The test SIGKILLs a random worker every 20 to 170 ms (and starts it
//! again), then lets both finish the list. It runs twice: with workers on sqlx, and with
//! workers on tokio-postgres (`IDEM_TX_DRIVER`), whose records the test then replays through
//! sqlx.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idem::Call;
use sqlx::Executor;
use sqlx::postgres::{PgConnection, PgPoolOptions};
use support::crash::{self, Random, Seen};
use support::postgres::PostgresServer;
use support::workers::Workers;

/// Set in a worker's environment to the PostgreSQL URL.
const WORKER: &str = "IDEM_TX_WORKER";
/// Set in a worker's environment to the driver its calls go through.
const DRIVER: &str = "IDEM_TX_DRIVER";
/// The driver of the tokio-postgres mode.
const TOKIO_POSTGRES: &str = "tokio-postgres";
const KEYS: u64 = 200;
/// Calls in flight in each worker.
const TASKS: usize = 2;
const MIN_KILLS: usize = 30;
/// The kills stop after this long, or once `MIN_KILLS` happened and half of it passed.
const KILLING: Duration = Duration::from_secs(16);
/// The lease each call is given: a call that waited for a lease would take at least this.
const LEASE: Duration = Duration::from_secs(10);
/// The longest any call may take: far below the lease.
const MAX_CALL: Duration = Duration::from_secs(2);
const SCOPE: &str = "tx-crash";

fn main() {
    if let Ok(url) = std::env::var(WORKER) {
        match std::env::var(DRIVER) {
            Ok(driver) if driver == TOKIO_POSTGRES => tokio_postgres_worker(&url),
            _ => worker(&url),
        }
        return;
    }
    support::harness::run_single(
        "killed_workers_write_each_key_once_and_free_their_keys_at_once",
        || killed_workers_write_each_key_once_and_free_their_keys_at_once("sqlx"),
    );
    support::harness::run_single(
        "killed_tokio_postgres_workers_write_each_key_once_and_free_their_keys_at_once",
        || killed_workers_write_each_key_once_and_free_their_keys_at_once(TOKIO_POSTGRES),
    );
}

fn killed_workers_write_each_key_once_and_free_their_keys_at_once(driver: &str) {
    let server = PostgresServer::quiet();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let pool = runtime.block_on(async {
        // Creates public.idem_records.
        idem::PostgresStore::open(&server.url())
            .await
            .expect("the plain store");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&server.url())
            .await
            .expect("the test's pool");
        pool.execute("CREATE TABLE items (id bigserial PRIMARY KEY, key int8 NOT NULL)")
            .await
            .expect("the business table");
        pool
    });

    let mut workers =
        Workers::start_quiet(2, [(WORKER, server.url()), (DRIVER, driver.to_owned())]);
    let mut seen = Seen::default();
    let (kills, killing) = crash::kill_at_random(&mut workers, &mut seen, MIN_KILLS, KILLING);
    // No more kills: both finish the list.
    crash::finish(workers, &mut seen, Duration::from_secs(60));

    let (rows, records, ids): (Vec<(i64, i64)>, i64, i64) = runtime.block_on(async {
        let rows = sqlx::query_as("SELECT key, id FROM items ORDER BY key, id")
            .fetch_all(&pool)
            .await
            .unwrap();
        let records = sqlx::query_scalar(
            "SELECT count(*) FROM idem_records WHERE state = 'completed' AND key LIKE 'idem:tx-crash:%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        // Sequences do not roll back: every id taken by a transaction that did not commit is
        // a body killed (or rolled back) before its commit.
        let ids = sqlx::query_scalar("SELECT last_value FROM items_id_seq")
            .fetch_one(&pool)
            .await
            .unwrap();
        (rows, records, ids)
    });
    let uncommitted = ids - rows.len() as i64;
    println!(
        "tx crash test ({driver}): {kills} SIGKILLs in {killing:.1?} ({uncommitted} bodies killed inside their transaction), {KEYS} keys, {} business rows, {records} records, {} committed calls; the longest call took {:?} (lease {LEASE:?})",
        rows.len(),
        seen.calls,
        seen.longest
    );
    assert!(kills >= MIN_KILLS, "{kills} kills");
    assert!(uncommitted > 0, "no kill hit a body inside its transaction");
    let per_key = crash::one_row_per_key(&rows, &seen, KEYS);
    // The records agree: each replays its key's row id, and the body never runs again.
    runtime.block_on(async {
        let mut conn = pool.acquire().await.unwrap();
        for (key, id) in &per_key {
            let replayed = Call::new(SCOPE, *key as u64)
                .run_tx(&mut conn, async |_: &mut PgConnection| -> i64 {
                    panic!("key {key} runs again")
                })
                .await
                .unwrap();
            assert_eq!(replayed.value, *id, "key {key}");
        }
    });
    assert_eq!(records as u64, KEYS, "one completed record per key");
    assert!(
        seen.longest < MAX_CALL,
        "a call took {:?}: it waited for more than a killed transaction",
        seen.longest
    );
}

/// Walks every key in a random order, `TASKS` calls at a time; prints each committed call.
fn worker(url: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(TASKS as u32)
            .connect(url)
            .await
            .expect("the worker's pool");
        let mut random = Random::new();
        // The shared list: the keys without a business row yet.
        let mut keys: Vec<u64> = sqlx::query_scalar::<_, i64>(
            "SELECT k FROM generate_series(0, $1 - 1) AS k WHERE NOT EXISTS (SELECT FROM items WHERE items.key = k)",
        )
        .bind(KEYS as i64)
        .fetch_all(&pool)
        .await
        .expect("the keys left")
        .into_iter()
        .map(|k| k as u64)
        .collect();
        random.shuffle(&mut keys);
        let keys = Arc::new(keys);
        let next = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (pool, keys, next) = (pool.clone(), keys.clone(), next.clone());
                tokio::spawn(async move {
                    let mut random = Random::new();
                    while let Some(&key) = keys.get(next.fetch_add(1, Ordering::SeqCst)) {
                        let pause = Duration::from_millis(2 + random.below(30));
                        let start = Instant::now();
                        let mut tx = pool.begin().await.expect("begin");
                        let id = Call::new(SCOPE, key)
                            .lease(LEASE)
                            .wait(Duration::from_secs(30))
                            .run_tx(&mut tx, async |conn: &mut PgConnection| {
                                let id: i64 = sqlx::query_scalar(
                                    "INSERT INTO items (key) VALUES ($1) RETURNING id",
                                )
                                .bind(key as i64)
                                .fetch_one(&mut *conn)
                                .await
                                .expect("the business row");
                                tokio::time::sleep(pause).await;
                                id
                            })
                            .await
                            .expect("the call")
                            .value;
                        tx.commit().await.expect("commit");
                        println!("call {key} {id} {}", start.elapsed().as_micros());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a worker task");
        }
        pool.close().await;
    });
    println!("done {}", std::process::id());
}

/// [`worker`] on tokio-postgres: each call in a transaction of a client of its own. A call on
/// a `tokio_postgres::Transaction` is not `Send`: the calls are tasks of a `LocalSet`.
fn tokio_postgres_worker(url: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let connect = || async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("the worker's client");
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
        };
        let mut random = Random::new();
        // The shared list: the keys without a business row yet.
        let mut keys: Vec<u64> = connect()
            .await
            .query(
                "SELECT k FROM generate_series(0, $1::int8 - 1) AS k WHERE NOT EXISTS (SELECT FROM items WHERE items.key = k)",
                &[&(KEYS as i64)],
            )
            .await
            .expect("the keys left")
            .iter()
            .map(|row| row.get::<_, i64>(0) as u64)
            .collect();
        random.shuffle(&mut keys);
        let keys = Arc::new(keys);
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (keys, next) = (keys.clone(), next.clone());
            let mut client = connect().await;
            tasks.push(tokio::task::spawn_local(async move {
                let mut random = Random::new();
                while let Some(&key) = keys.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let pause = Duration::from_millis(2 + random.below(30));
                    let start = Instant::now();
                    let mut tx = client.transaction().await.expect("begin");
                    let id = Call::new(SCOPE, key)
                        .lease(LEASE)
                        .wait(Duration::from_secs(30))
                        .run_tx(&mut tx, async |conn: &mut tokio_postgres::Transaction<'_>| {
                            let id: i64 = conn
                                .query_one(
                                    "INSERT INTO items (key) VALUES ($1) RETURNING id",
                                    &[&(key as i64)],
                                )
                                .await
                                .expect("the business row")
                                .get(0);
                            tokio::time::sleep(pause).await;
                            id
                        })
                        .await
                        .expect("the call")
                        .value;
                    tx.commit().await.expect("commit");
                    println!("call {key} {id} {}", start.elapsed().as_micros());
                }
            }));
        }
        for task in tasks {
            task.await.expect("a worker task");
        }
    });
    println!("done {}", std::process::id());
}
