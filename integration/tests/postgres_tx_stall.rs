//! A process that holds a key and stalls (SIGSTOP) for three times its lease: in transactional
//! mode the duplicates wait on PostgreSQL's lock and never run the body, then replay once the
//! holder resumes and commits; on the lease-based Redis store, the same scenario runs the body
//! twice (the lease ends while the holder is frozen). Both counts are printed: that is the
//! contrast the README's "Exactly once for database writes" explains.
//!
//! This test binary has no libtest harness (`harness = false`): run normally, it starts a
//! PostgreSQL, a redis-server and, for each store, a copy of itself as the holder
//! (`IDEM_STALL_WORKER` set), which it stops and resumes with `kill -STOP` / `kill -CONT`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idem::{Call, Outcome, RedisStore, Status};
use sqlx::Executor;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use support::postgres::PostgresServer;
use support::redis::RedisServer;
use support::workers::Workers;

/// Set in the holder's environment to `tx <postgres url>` or `redis <redis url>`.
const WORKER: &str = "IDEM_STALL_WORKER";
/// The lease of every call: the holder is frozen for three times as long.
const LEASE: Duration = Duration::from_millis(300);
const FROZEN: Duration = Duration::from_millis(900);
/// How long the holder's body runs (its own time, not counting the freeze).
const BODY: Duration = Duration::from_millis(500);
const DUPLICATES: usize = 3;
const SCOPE: &str = "tx-stall";
const KEY: &str = "stalled";

fn main() {
    if let Ok(what) = std::env::var(WORKER) {
        let (store, url) = what.split_once(' ').expect("`<store> <url>`");
        holder(store, url);
        return;
    }
    support::harness::run_single(
        "a_stalled_holder_never_lets_a_duplicate_run_in_tx_mode_unlike_a_lease",
        a_stalled_holder_never_lets_a_duplicate_run_in_tx_mode_unlike_a_lease,
    );
}

/// Starts the holder, waits until its body runs, and freezes it.
fn frozen_holder(store: &str, url: &str) -> Workers {
    let holder = Workers::start(1, [(WORKER, format!("{store} {url}"))]);
    let (_, first) = holder.line(Duration::from_secs(30));
    assert_eq!(first, "holding", "the holder starts its body");
    holder.signal(0, "-STOP");
    holder
}

/// Resumes the holder and waits for its last line (`done <value> <status>`).
fn resume(holder: Workers) -> String {
    holder.signal(0, "-CONT");
    let (_, done) = holder.line(Duration::from_secs(30));
    holder.finish(Duration::from_secs(30));
    done
}

fn a_stalled_holder_never_lets_a_duplicate_run_in_tx_mode_unlike_a_lease() {
    let postgres = PostgresServer::quiet();
    let redis = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let pool = runtime.block_on(async {
        idem::PostgresStore::open(&postgres.url())
            .await
            .expect("the plain store creates the table");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&postgres.url())
            .await
            .expect("the test's pool");
        pool.execute("CREATE TABLE items (key text NOT NULL, by text NOT NULL)")
            .await
            .expect("the business table");
        pool
    });

    // Transactional mode.
    let holder = frozen_holder("tx", &postgres.url());
    let runs = Arc::new(AtomicUsize::new(0));
    let frozen_at = Instant::now();
    let duplicates: Vec<_> = (0..DUPLICATES)
        .map(|n| {
            let (pool, runs) = (pool.clone(), runs.clone());
            runtime.spawn(async move {
                tokio::time::sleep(FROZEN / DUPLICATES as u32 * n as u32).await;
                tx_call(&pool, &runs).await
            })
        })
        .collect();
    std::thread::sleep(FROZEN.saturating_sub(frozen_at.elapsed()));
    let ran_while_frozen = runs.load(Ordering::SeqCst);
    let waiting = duplicates.iter().filter(|d| !d.is_finished()).count();
    let done = resume(holder);
    assert_eq!(done, "done 1 Executed", "the holder stored its result");
    let outcomes: Vec<Outcome<u32>> = runtime.block_on(async {
        let mut outcomes = Vec::new();
        for duplicate in duplicates {
            outcomes.push(duplicate.await.expect("a duplicate"));
        }
        outcomes
    });
    let tx_runs = 1 + runs.load(Ordering::SeqCst);
    let rows: i64 = runtime.block_on(async {
        sqlx::query_scalar("SELECT count(*) FROM items WHERE key = $1")
            .bind(KEY)
            .fetch_one(&pool)
            .await
            .unwrap()
    });

    // The lease-based Redis store, the same scenario.
    let store = runtime
        .block_on(RedisStore::open(&redis.url()))
        .expect("the Redis store");
    let holder = frozen_holder("redis", &redis.url());
    let frozen_at = Instant::now();
    let duplicates: Vec<_> = (0..DUPLICATES)
        .map(|n| {
            let (store, url) = (store.clone(), redis.url());
            runtime.spawn(async move {
                tokio::time::sleep(FROZEN / DUPLICATES as u32 * n as u32).await;
                redis_call(store, &url).await
            })
        })
        .collect();
    std::thread::sleep(FROZEN.saturating_sub(frozen_at.elapsed()));
    let redis_done = resume(holder);
    let redis_outcomes: Vec<Outcome<u32>> = runtime.block_on(async {
        let mut outcomes = Vec::new();
        for duplicate in duplicates {
            outcomes.push(duplicate.await.expect("a duplicate"));
        }
        outcomes
    });
    let redis_runs: i64 = redis.cmd(&["GET", "runs"]);

    println!(
        "stall test: holder frozen (SIGSTOP) for {FROZEN:?}, 3x its {LEASE:?} lease, {DUPLICATES} duplicates:\n  \
         tx mode:            body runs = {tx_runs} (duplicates {:?}; {waiting} still waiting on the lock when it resumed), business rows = {rows}\n  \
         Redis (lease-based): body runs = {redis_runs} (duplicates {:?}; holder: {redis_done})",
        outcomes.iter().map(|o| o.status).collect::<Vec<_>>(),
        redis_outcomes.iter().map(|o| o.status).collect::<Vec<_>>(),
    );
    assert_eq!(
        ran_while_frozen, 0,
        "no duplicate ran while the holder was frozen"
    );
    assert_eq!(waiting, DUPLICATES, "every duplicate waited on the lock");
    assert_eq!(tx_runs, 1, "tx mode: the body ran once");
    assert_eq!(rows, 1, "tx mode: one business row");
    assert!(
        outcomes
            .iter()
            .all(|o| o.value == 1 && o.status == Status::Waited),
        "tx mode: every duplicate replays the holder's value"
    );
    assert_eq!(
        redis_runs, 2,
        "the lease store runs the body again once the frozen holder's lease ends"
    );
    assert_eq!(
        redis_done, "done 1 LeaseLost",
        "the frozen holder lost its lease"
    );
}

/// A duplicate in transactional mode: its body would insert a second row and return 2.
async fn tx_call(pool: &PgPool, runs: &AtomicUsize) -> Outcome<u32> {
    let mut tx = pool.begin().await.expect("begin");
    let outcome = Call::new(SCOPE, KEY)
        .lease(LEASE)
        .wait(Duration::from_secs(20))
        .run_tx(&mut tx, async |conn: &mut PgConnection| {
            runs.fetch_add(1, Ordering::SeqCst);
            insert(conn, "duplicate").await;
            2_u32
        })
        .await
        .expect("the duplicate's call");
    tx.commit().await.expect("commit");
    outcome
}

async fn insert(conn: &mut PgConnection, by: &str) {
    sqlx::query("INSERT INTO items (key, by) VALUES ($1, $2)")
        .bind(KEY)
        .bind(by)
        .execute(&mut *conn)
        .await
        .expect("the business row");
}

/// A duplicate on the Redis store: its body counts its run in Redis and returns 2.
async fn redis_call(store: RedisStore, url: &str) -> Outcome<u32> {
    let mut counter = redis::Client::open(url)
        .expect("the URL")
        .get_multiplexed_async_connection()
        .await
        .expect("the counter's connection");
    Call::new(SCOPE, KEY)
        .store(store)
        .lease(LEASE)
        .wait(Duration::from_secs(20))
        .run(async move {
            let _: i64 = redis::cmd("INCR")
                .arg("runs")
                .query_async(&mut counter)
                .await
                .expect("count the run");
            2_u32
        })
        .await
        .expect("the duplicate's call")
}

/// The holder process: claims the key, prints `holding` from inside its body (and is frozen
/// there by the test), then prints `done <value> <status>`.
fn holder(store: &str, url: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = runtime.block_on(async {
        match store {
            "tx" => {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await
                    .expect("the holder's pool");
                let mut tx = pool.begin().await.expect("begin");
                let outcome = Call::new(SCOPE, KEY)
                    .lease(LEASE)
                    .run_tx(&mut tx, async |conn: &mut PgConnection| {
                        insert(conn, "holder").await;
                        println!("holding");
                        tokio::time::sleep(BODY).await;
                        1_u32
                    })
                    .await
                    .expect("the holder's call");
                tx.commit().await.expect("commit");
                outcome
            }
            _ => {
                let store = RedisStore::open(url).await.expect("the holder's store");
                let mut counter = redis::Client::open(url)
                    .expect("the URL")
                    .get_multiplexed_async_connection()
                    .await
                    .expect("the counter's connection");
                Call::new(SCOPE, KEY)
                    .store(store)
                    .lease(LEASE)
                    .run(async move {
                        let _: i64 = redis::cmd("INCR")
                            .arg("runs")
                            .query_async(&mut counter)
                            .await
                            .expect("count the run");
                        println!("holding");
                        tokio::time::sleep(BODY).await;
                        1_u32
                    })
                    .await
                    .expect("the holder's call")
            }
        }
    });
    println!("done {} {:?}", outcome.value, outcome.status);
}
