//! Two OS processes call the same keys at once through one Redis: each key runs once across
//! both.
//!
//! This test binary has no libtest harness (`harness = false`): run normally, it starts a
//! `redis-server` and two copies of itself as workers (`IDEM_TEST_WORKER` set), lets them
//! start together, and checks the execution counters the workers' bodies kept in Redis.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::{Call, RedisStore, Status};
use support::redis::RedisServer;
use support::workers::{self, Workers};

/// Set in a worker's environment to the Redis URL.
const WORKER: &str = "IDEM_TEST_WORKER";
const KEYS: usize = 40;
/// Calls per key in each process.
const REPEATS: usize = 2;
const SCOPE: &str = "two-processes";

fn main() {
    if let Ok(url) = std::env::var(WORKER) {
        worker(&url, workers::index());
        return;
    }
    support::harness::run_single(
        "two_processes_run_each_key_once",
        two_processes_run_each_key_once,
    );
}

fn two_processes_run_each_key_once() {
    let server = RedisServer::start();
    let mut workers = Workers::start(2, [(WORKER, server.url())]);
    // Both connect first; then both start calling at the same moment.
    workers.ready(Duration::from_secs(60));
    workers.go();
    let lines = workers.finish(Duration::from_secs(120));

    let executed: Vec<usize> = lines
        .iter()
        .enumerate()
        .map(|(n, lines)| {
            let [line] = lines.as_slice() else {
                panic!("worker {n} printed {lines:?}");
            };
            let count = line
                .strip_prefix("executed ")
                .unwrap_or_else(|| panic!("worker {n} printed {line:?}"));
            count.parse::<usize>().expect("a count")
        })
        .collect();
    println!(
        "executions per process: {executed:?} ({KEYS} keys, each called {REPEATS}x in each of 2 processes)"
    );
    assert_eq!(
        executed.iter().sum::<usize>(),
        KEYS,
        "each key runs once across both processes"
    );
    for key in 0..KEYS {
        let runs: i64 = server.cmd(&["GET", &format!("runs:{key}")]);
        assert_eq!(runs, 1, "key {key} ran {runs} times");
    }
}

/// Calls every key `REPEATS` times concurrently and prints how many bodies this process ran.
fn worker(url: &str, index: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (store, counter) = runtime.block_on(async {
        let store = RedisStore::open(url)
            .await
            .expect("connect the worker's store");
        let counter = redis::Client::open(url)
            .expect("the URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect the worker's counter");
        (store, counter)
    });
    workers::ready_then_wait_for_go();

    let executed = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        let mut calls = Vec::new();
        for repeat in 0..REPEATS {
            for key in 0..KEYS {
                let (store, mut counter, executed) =
                    (store.clone(), counter.clone(), executed.clone());
                // The two processes walk the keys in opposite orders, so that first calls
                // meet both first calls and duplicates of the other process.
                let key = if (repeat + index).is_multiple_of(2) {
                    key
                } else {
                    KEYS - 1 - key
                };
                calls.push(tokio::spawn(async move {
                    let outcome = Call::new(SCOPE, key)
                        .store(store)
                        .wait(Duration::from_secs(30))
                        .run(async move {
                            let _: i64 = redis::cmd("INCR")
                                .arg(format!("runs:{key}"))
                                .query_async(&mut counter)
                                .await
                                .expect("count the execution");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            key * 10
                        })
                        .await
                        .expect("the call succeeds");
                    assert_eq!(outcome.value, key * 10);
                    if outcome.status == Status::Executed {
                        executed.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            }
        }
        for call in calls {
            call.await.expect("a call task");
        }
    });
    println!("executed {}", executed.load(Ordering::SeqCst));
}
