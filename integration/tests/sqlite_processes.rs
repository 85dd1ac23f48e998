//! Two OS processes call the same keys at once through one SQLite file: each key runs once
//! across both, and the results outlive the processes.
//!
//! This test binary has no libtest harness (`harness = false`): run normally, it starts two
//! copies of itself as workers (`IDEM_TEST_WORKER` set to the file's URL) on a file that does
//! not exist yet (both create it, in WAL mode, at the same moment), lets them start together,
//! checks the keys whose bodies each worker ran (printed as `ran <key>`), and then replays
//! every key from the file in this process.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem::{Call, SqliteStore, Status};
use support::sqlite::TempDb;
use support::workers::{self, Workers};

/// Set in a worker's environment to the database URL.
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
    let db = TempDb::new("processes");
    let mut workers = Workers::start(2, [(WORKER, db.url())]);
    workers.ready(Duration::from_secs(60));
    workers.go();
    let lines = workers.finish(Duration::from_secs(120));

    let mut runs = BTreeMap::<usize, Vec<usize>>::new();
    let mut executed = [None, None];
    for (n, lines) in lines.iter().enumerate() {
        for line in lines {
            if let Some(key) = line.strip_prefix("ran ") {
                runs.entry(key.parse().expect("a key")).or_default().push(n);
            } else if let Some(count) = line.strip_prefix("executed ") {
                executed[n] = Some(count.parse::<usize>().expect("a count"));
            } else {
                panic!("worker {n} printed {line:?}");
            }
        }
    }
    let executed: Vec<usize> = executed
        .into_iter()
        .enumerate()
        .map(|(n, count)| count.unwrap_or_else(|| panic!("worker {n} printed no count")))
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
        assert_eq!(
            runs.get(&key).map_or(0, Vec::len),
            1,
            "key {key} ran in workers {:?}",
            runs.get(&key)
        );
    }

    // The workers have exited: their results are in the file.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let store = SqliteStore::open(&db.url()).await.expect("reopen the file");
        for key in 0..KEYS {
            let replay = Call::new(SCOPE, key)
                .store(store.clone())
                .run(async { usize::MAX })
                .await
                .expect("a replay");
            assert_eq!((replay.value, replay.status), (key * 10, Status::Replayed));
        }
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM idem_records WHERE state = 'completed'")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(rows, KEYS as i64, "one completed row per key");
    });
}

/// Calls every key `REPEATS` times concurrently; prints each key whose body ran here, then
/// how many ran.
fn worker(url: &str, index: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let store = runtime
        .block_on(SqliteStore::open(url))
        .expect("open the worker's store");
    workers::ready_then_wait_for_go();

    let ran = Arc::new(Mutex::new(Vec::new()));
    let executed = runtime.block_on(async {
        let mut calls = Vec::new();
        for repeat in 0..REPEATS {
            for key in 0..KEYS {
                let (store, ran) = (store.clone(), ran.clone());
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
                            ran.lock().unwrap().push(key);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            key * 10
                        })
                        .await
                        .expect("the call succeeds");
                    assert_eq!(outcome.value, key * 10);
                    outcome.status == Status::Executed
                }));
            }
        }
        let mut executed = 0;
        for call in calls {
            executed += usize::from(call.await.expect("a call task"));
        }
        executed
    });
    for key in ran.lock().unwrap().iter() {
        println!("ran {key}");
    }
    println!("executed {executed}");
}
