//! Two OS processes call the same keys at once through one PostgreSQL: each key runs once
//! across both.
//!
//! This test binary has no libtest harness (`harness = false`): run normally, it starts a
//! PostgreSQL and two copies of itself as workers (`IDEM_TEST_WORKER` set), lets them start
//! together, and checks the keys whose bodies each worker ran (printed as `ran <key>`).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use idem::{Call, PostgresStore, Status};
use support::postgres::PostgresServer;

/// Set in a worker's environment to the PostgreSQL URL.
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
    let server = PostgresServer::start();
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

    // Lines of every worker, gathered on threads, so that a stuck worker is a timeout here.
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

    // Both connect first (the first creates the table); then both start at the same moment.
    let mut ready = [false, false];
    while !(ready[0] && ready[1]) {
        let (n, line) = next_line();
        assert_eq!(line, "ready", "worker {n}");
        ready[n] = true;
    }
    for worker in &mut workers {
        writeln!(worker.stdin.as_mut().expect("piped stdin"), "go").expect("start a worker");
    }

    let mut runs = BTreeMap::<usize, Vec<usize>>::new();
    let mut executed = [None, None];
    while executed.iter().any(Option::is_none) {
        let (n, line) = next_line();
        if let Some(key) = line.strip_prefix("ran ") {
            runs.entry(key.parse().expect("a key")).or_default().push(n);
        } else if let Some(count) = line.strip_prefix("executed ") {
            executed[n] = Some(count.parse::<usize>().expect("a count"));
        } else {
            panic!("worker {n} printed {line:?}");
        }
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
        assert_eq!(
            runs.get(&key).map_or(0, Vec::len),
            1,
            "key {key} ran in workers {:?}",
            runs.get(&key)
        );
    }
    let rows = server.psql("SELECT count(*) FROM idem_records WHERE state = 'completed'");
    assert_eq!(rows, KEYS.to_string(), "one completed row per key");
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
        .block_on(PostgresStore::open(url))
        .expect("connect the worker's store");
    println!("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("wait for go");

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
