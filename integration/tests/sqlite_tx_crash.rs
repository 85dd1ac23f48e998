//! Worker processes killed at random moments while they run `tx = conn` calls on one SQLite
//! file: every key's business row is written exactly once, the records agree, and a killed
//! transaction frees the file's write lock at once (no call waits for a lease).
//!
//! This test binary has no libtest harness (`harness = false`): run normally, it creates the
//! file and starts two copies of itself as workers (`IDEM_SQLITE_TX_WORKER` set to the file's
//! path). Each worker walks the keys without a business row yet in its own random order, two
//! calls at a time; each call is a transaction of idem's own (`BEGIN IMMEDIATE` on a pool
//! connection) whose body inserts the key's business row, says so (`body <key>`) and sleeps a
//! few milliseconds. The test SIGKILLs a random worker every 20 to 170 ms (and starts it
//! again), then lets both finish the list.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idem::Call;
use sqlx::SqliteConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use support::crash::{self, Random, Seen};
use support::sqlite::TempDb;
use support::workers::Workers;

/// Set in a worker's environment to the database file's path.
const WORKER: &str = "IDEM_SQLITE_TX_WORKER";
const KEYS: u64 = 200;
/// Calls in flight in each worker.
const TASKS: usize = 2;
const MIN_KILLS: usize = 30;
/// The kills stop after this long, or once `MIN_KILLS` happened and half of it passed.
const KILLING: Duration = Duration::from_secs(16);
/// The lease each call is given: a call that waited for a lease would take at least this.
const LEASE: Duration = Duration::from_secs(10);
/// The longest any call may take: far below the lease.
const MAX_CALL: Duration = Duration::from_secs(3);
const SCOPE: &str = "sqlite-tx-crash";

fn main() {
    if let Ok(path) = std::env::var(WORKER) {
        worker(&path);
        return;
    }
    support::harness::run_single(
        "killed_workers_write_each_key_once_on_one_file",
        killed_workers_write_each_key_once_on_one_file,
    );
}

/// A pool on the file (WAL, `synchronous = FULL`), waiting up to 30 s for the write lock.
async fn open(path: &str, connections: u32) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .expect("open the test's file")
}

fn killed_workers_write_each_key_once_on_one_file() {
    let db = TempDb::new("tx-crash");
    let path = db.path().display().to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let pool = runtime.block_on(async {
        let pool = open(&path, 2).await;
        sqlx::raw_sql(idem::sqlite::MIGRATION)
            .execute(&pool)
            .await
            .expect("idem's table");
        sqlx::raw_sql(
            "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, key INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("the business table");
        pool
    });

    let mut workers = Workers::start_quiet(2, [(WORKER, path.clone())]);
    let mut seen = Seen::default();
    let (kills, killing) = crash::kill_at_random(&mut workers, &mut seen, MIN_KILLS, KILLING);
    crash::finish(workers, &mut seen, Duration::from_secs(60));

    let (rows, records): (Vec<(i64, i64)>, i64) = runtime.block_on(async {
        let rows = sqlx::query_as("SELECT key, id FROM items ORDER BY key, id")
            .fetch_all(&pool)
            .await
            .unwrap();
        let records = sqlx::query_scalar(
            "SELECT count(*) FROM idem_records WHERE state = 'completed' AND key LIKE 'idem:sqlite-tx-crash:%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (rows, records)
    });
    // A body that ran and whose call never reported is a body killed inside its transaction
    // (or, rarely, between its commit and its report: then its row is there). A call that
    // waited for the other worker's transaction of its key and replayed it reports without a
    // body of its own: the difference is a lower bound, and can be below zero.
    let unreported = seen.bodies.saturating_sub(seen.calls);
    println!(
        "sqlite tx crash test: {kills} SIGKILLs in {killing:.1?}, {} bodies ran, {unreported} never reported (killed inside their transaction or before the report), {KEYS} keys, {} business rows, {records} records, {} committed calls; the longest call took {:?} (lease {LEASE:?})",
        seen.bodies,
        rows.len(),
        seen.calls,
        seen.longest
    );
    assert!(kills >= MIN_KILLS, "{kills} kills");
    assert!(
        seen.bodies > rows.len(),
        "no kill hit a body inside its transaction"
    );
    let per_key = crash::one_row_per_key(&rows, &seen, KEYS);
    // The records agree: each replays its key's row id, and the body never runs again.
    runtime.block_on(async {
        let mut conn = pool.acquire().await.unwrap();
        for (key, id) in &per_key {
            let replayed = Call::new(SCOPE, *key as u64)
                .run_tx(&mut conn, async |_: &mut SqliteConnection| -> i64 {
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

/// Walks every key in a random order, `TASKS` calls at a time; prints each body and each
/// committed call.
fn worker(path: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let pool = open(path, TASKS as u32).await;
        let mut random = Random::new();
        let mut keys: Vec<u64> = Vec::new();
        for key in 0..KEYS {
            let present: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE key = ?1")
                .bind(key as i64)
                .fetch_one(&pool)
                .await
                .expect("the keys left");
            if present == 0 {
                keys.push(key);
            }
        }
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
                        let mut conn = pool.acquire().await.expect("a connection");
                        // Outside any transaction: idem begins one (BEGIN IMMEDIATE) and
                        // commits it with the body's row.
                        let id = Call::new(SCOPE, key)
                            .lease(LEASE)
                            .wait(Duration::from_secs(30))
                            .run_tx(&mut conn, async |conn: &mut SqliteConnection| {
                                let id: i64 = sqlx::query_scalar(
                                    "INSERT INTO items (key) VALUES (?1) RETURNING id",
                                )
                                .bind(key as i64)
                                .fetch_one(&mut *conn)
                                .await
                                .expect("the business row");
                                println!("body {key}");
                                tokio::time::sleep(pause).await;
                                id
                            })
                            .await
                            .expect("the call")
                            .value;
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
