//! A store the application built itself serves the whole process once installed: two OS
//! processes each install a `RedisStore::from_deadpool` store with `idem::install`, then call an
//! `#[idempotent]` function from spawned tasks and serve an axum router behind the
//! `Idempotency-Key` layer, neither naming a store. Every record lands in the shared Redis
//! (read back with the test's own client), and each key runs once across both processes.
//!
//! This test binary has no libtest harness (`harness = false`): run normally, it starts a
//! `redis-server` and two copies of itself as workers (`IDEM_TEST_WORKER` set).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::http::IdempotencyLayer;
use idem::{Config, Idem, RedisStore, idempotent};
use support::http::App;
use support::redis::RedisServer;
use support::workers::{self, Workers};

/// Set in a worker's environment to the Redis URL.
const WORKER: &str = "IDEM_TEST_WORKER";
/// Keys called through the function, each by every spawned task of both processes.
const KEYS: u64 = 24;
/// Idempotency keys sent to each process's router.
const REQUESTS: usize = 12;
/// The prefix of the installed idem: its records are the only keys under it.
const PREFIX: &str = "installed";

fn main() {
    if let Ok(url) = std::env::var(WORKER) {
        worker(&url);
        return;
    }
    support::harness::run_single(
        "an_installed_application_store_serves_every_call_of_both_processes",
        an_installed_application_store_serves_every_call_of_both_processes,
    );
}

fn an_installed_application_store_serves_every_call_of_both_processes() {
    let server = RedisServer::start();
    let mut workers = Workers::start(2, [(WORKER, server.url())]);
    workers.ready(Duration::from_secs(60));
    workers.go();
    let lines = workers.finish(Duration::from_secs(120));

    let (mut executed, mut handled) = (0, 0);
    for (n, lines) in lines.iter().enumerate() {
        let [line] = lines.as_slice() else {
            panic!("worker {n} printed {lines:?}");
        };
        let counts: Vec<usize> = line
            .split_whitespace()
            .filter_map(|word| word.parse().ok())
            .collect();
        let [calls, requests] = counts[..] else {
            panic!("worker {n} printed {line:?}");
        };
        executed += calls;
        handled += requests;
    }
    println!("executions: {executed} of {KEYS} keys; handler runs: {handled} of {REQUESTS} keys");
    assert_eq!(
        executed, KEYS as usize,
        "each key runs once across both processes"
    );
    assert_eq!(
        handled, REQUESTS,
        "each request key runs once across both processes"
    );
    for key in 0..KEYS {
        let runs: i64 = server.cmd(&["GET", &format!("runs:{key}")]);
        assert_eq!(runs, 1, "key {key} ran {runs} times");
    }
    // Every record is in Redis, none in a store of a process: the function's and the layer's.
    let records: Vec<String> = server
        .keys()
        .into_iter()
        .filter(|key| key.starts_with(&format!("{PREFIX}:")))
        .collect();
    let of = |scope: &str| {
        records
            .iter()
            .filter(|key| key.starts_with(&format!("{PREFIX}:{scope}:")))
            .count()
    };
    assert_eq!(of("installed.charge"), KEYS as usize, "{records:?}");
    assert_eq!(of("installed-http"), REQUESTS, "{records:?}");
}

/// How many bodies of [`charge`] this process ran.
static EXECUTED: AtomicUsize = AtomicUsize::new(0);

/// The function of the worker's spawned tasks: it names no store.
#[idempotent(key = id, scope = "installed::charge", wait = "30s")]
async fn charge(id: u64, counter: &redis::aio::MultiplexedConnection) -> u64 {
    EXECUTED.fetch_add(1, Ordering::SeqCst);
    let _: i64 = redis::cmd("INCR")
        .arg(format!("runs:{id}"))
        .query_async(&mut counter.clone())
        .await
        .expect("count the execution");
    // Long enough that the other process's calls of this key meet it in progress.
    tokio::time::sleep(Duration::from_millis(20)).await;
    id * 10
}

/// Installs a store on the application's own pool, then calls and serves; prints how many
/// bodies and handlers this process ran.
fn worker(url: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (counter, app) = runtime.block_on(async {
        let pool = deadpool_redis::Config::from_url(url)
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .expect("the application's pool");
        let store = RedisStore::from_deadpool(pool)
            .await
            .expect("a store on the pool");
        idem::install(Idem::with_settings(
            store,
            &Config::default().prefix(PREFIX),
        ))
        .expect("the first install");
        let counter = redis::Client::open(url)
            .expect("the URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect the worker's counter");
        // The layer names no store either.
        let layer = IdempotencyLayer::new()
            .scope("installed-http")
            .required(true)
            .wait(Duration::from_secs(30));
        (counter, Arc::new(App::serve(layer).await))
    });
    workers::ready_then_wait_for_go();

    runtime.block_on(async {
        let mut tasks = Vec::new();
        for round in 0..3 {
            // The rounds walk the keys in opposite orders, so that first calls meet both
            // first calls and duplicates of the other process.
            for id in 0..KEYS {
                let id = if round % 2 == 0 { id } else { KEYS - 1 - id };
                let counter = counter.clone();
                tasks.push(tokio::spawn(async move {
                    assert_eq!(
                        charge(id, &counter).await.expect("the call succeeds"),
                        id * 10
                    );
                }));
            }
            for n in 0..REQUESTS {
                let app = app.clone();
                tasks.push(tokio::spawn(async move {
                    let reply = app
                        .post("/orders")
                        .key(&format!("order-{n}"))
                        .body("{}")
                        .send()
                        .await;
                    assert!(reply.status.is_success(), "{reply:?}");
                }));
            }
        }
        for task in tasks {
            task.await.expect("a task of the worker");
        }
    });
    println!(
        "executed {} handled {}",
        EXECUTED.load(Ordering::SeqCst),
        app.runs()
    );
}
