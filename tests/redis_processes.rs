//! Two OS processes call the same keys at once through one Redis: each key runs once across
//! both.
//!
//! This test binary has no libtest harness (`harness = false`): run normally, it starts a
//! `redis-server` and two copies of itself as workers (`IDEM_TEST_WORKER` set), lets them
//! start together, and checks the execution counters the workers' bodies kept in Redis.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use idem::{Call, RedisStore, Status};
use support::redis::RedisServer;

/// Set in a worker's environment to the Redis URL.
const WORKER: &str = "IDEM_TEST_WORKER";
/// Set in a worker's environment to its number, 0 or 1.
const WORKER_INDEX: &str = "IDEM_TEST_WORKER_INDEX";
const KEYS: usize = 40;
/// Calls per key in each process.
const REPEATS: usize = 2;
const SCOPE: &str = "two-processes";

fn main() {
    if let Ok(url) = std::env::var(WORKER) {
        let index = std::env::var(WORKER_INDEX).map_or(0, |n| n.parse().expect("a worker number"));
        worker(&url, index);
        return;
    }
    support::harness::run_single(
        "two_processes_run_each_key_once",
        two_processes_run_each_key_once,
    );
}

fn two_processes_run_each_key_once() {
    let server = RedisServer::start();
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut workers: Vec<Child> = (0..2)
        .map(|index| {
            Command::new(&exe)
                .env(WORKER, server.url())
                .env(WORKER_INDEX, index.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a worker process")
        })
        .collect();

    // Each worker prints lines to its stdout; gather them per worker on threads, so that a
    // stuck worker shows up as a timeout here instead of a hang.
    let (lines_tx, lines) = mpsc::channel::<(usize, String)>();
    for (n, worker) in workers.iter_mut().enumerate() {
        let stdout = BufReader::new(worker.stdout.take().expect("piped stdout"));
        let lines_tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = lines_tx.send((n, line));
            }
        });
    }
    drop(lines_tx);
    let next_line = || {
        lines
            .recv_timeout(Duration::from_secs(60))
            .expect("a worker line within 60 s")
    };

    // Both connect first; then both start calling at the same moment.
    let mut ready = [false, false];
    while !(ready[0] && ready[1]) {
        let (n, line) = next_line();
        assert_eq!(line, "ready", "worker {n}");
        ready[n] = true;
    }
    for worker in &mut workers {
        writeln!(worker.stdin.as_mut().expect("piped stdin"), "go").expect("start a worker");
    }

    let mut executed = [None, None];
    while executed.iter().any(Option::is_none) {
        let (n, line) = next_line();
        let count = line
            .strip_prefix("executed ")
            .unwrap_or_else(|| panic!("worker {n} printed {line:?}"));
        executed[n] = Some(count.parse::<usize>().expect("a count"));
    }
    for mut worker in workers {
        let status = worker.wait().expect("a worker's exit status");
        assert!(status.success(), "a worker failed: {status}");
    }

    let executed: Vec<usize> = executed.into_iter().map(Option::unwrap).collect();
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
    println!("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("wait for go");

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
