//! `RedisStore::from_deadpool` on real `redis-server` processes started by the tests: the store
//! runs on the application's own pool (its connections, its size, its checkout commands), a
//! pool of one connection serves concurrent calls and their waiters, an exhausted or closed
//! pool is a typed error, and the connect-time checks run on a pooled connection.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use idem::store::redis::RedisOptions;
use idem::{Call, Error, RedisStore, Status, Store, StoreErrorKind};
use tokio::time::Instant;

use support::redis::RedisServer;

/// The application's pool on `server`: `max_size` connections, and a wait timeout if given.
fn pool(server: &RedisServer, max_size: usize, wait: Option<Duration>) -> Pool {
    let mut config = deadpool_redis::Config::from_url(server.url());
    let mut pool = PoolConfig::new(max_size);
    pool.timeouts = Timeouts {
        wait,
        ..Timeouts::default()
    };
    config.pool = Some(pool);
    config
        .create_pool(Some(Runtime::Tokio1))
        .expect("a pool for the test's redis-server")
}

/// Short timeouts, so that the failing cases end quickly.
fn options() -> RedisOptions {
    RedisOptions::default()
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_millis(500))
}

fn calls(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|(name, n)| (name.to_string(), *n))
        .collect()
}

/// The server's clients, but the harness's own: `(id, last command)`.
fn clients(server: &RedisServer) -> Vec<(String, String)> {
    let list: String = server.cmd(&["CLIENT", "LIST"]);
    list.lines()
        .filter(|line| !line.contains(" cmd=client|list ") && !line.contains(" cmd=monitor "))
        .filter_map(|line| {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .map(str::to_owned)
            };
            Some((field("id=")?, field("cmd=")?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_checks_a_connection_out_of_the_applications_pool() {
    let server = RedisServer::start();
    let pool = pool(&server, 4, None);
    let store = RedisStore::from_deadpool(pool.clone()).await.unwrap();
    // The connect-time checks took one connection of the pool, and gave it back.
    let status = pool.status();
    assert_eq!((status.size, status.available), (1, 1), "{status:?}");
    assert_eq!(clients(&server).len(), 1, "{:?}", clients(&server));
    assert!(format!("{store:?}").contains("pool_size: 4"), "{store:?}");
    assert!(store.describe().contains("deadpool-redis pool"));

    // The calls' commands, as the server counts them: every operation checks a connection
    // out, and deadpool-redis checks it with UNWATCH and PING (pipelined) before lending it.
    let monitor = server.monitor();
    let first = Call::new("pooled", "order-1")
        .store(store.clone())
        .run(async { 1 })
        .await
        .unwrap();
    assert_eq!(first.status, Status::Executed);
    assert_eq!(
        monitor.stop(),
        calls(&[("set", 1), ("evalsha", 1), ("unwatch", 2), ("ping", 2)]),
        "a first call is two checkouts: SET NX GET (claim) and EVALSHA (complete)"
    );
    let monitor = server.monitor();
    let replay = Call::new("pooled", "order-1")
        .store(store.clone())
        .run(async { 2 })
        .await
        .unwrap();
    assert_eq!((replay.value, replay.status), (1, Status::Replayed));
    assert_eq!(
        monitor.stop(),
        calls(&[("set", 1), ("unwatch", 1), ("ping", 1)]),
        "a replay is one checkout and SET NX GET"
    );

    // Concurrent calls use the pool's connections and no others, at most `max_size`; the
    // application's own commands share them.
    let runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (store, runs) = (store.clone(), runs.clone());
            tokio::spawn(async move {
                Call::new("pooled", format!("burst-{}", i % 16))
                    .store(store)
                    .wait(Duration::from_secs(10))
                    .run(async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        i % 16
                    })
                    .await
            })
        })
        .collect();
    let mut own = pool.get().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("app:key")
        .arg("app")
        .query_async(&mut *own)
        .await
        .unwrap();
    drop(own);
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().unwrap().value, i % 16);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 16, "every key ran once");
    let status = pool.status();
    assert!(status.size <= 4, "{status:?}");
    assert_eq!(status.available, status.size, "every connection is back");
    let seen = clients(&server);
    assert_eq!(seen.len(), status.size, "the server's clients: {seen:?}");
    let value: String = server.cmd(&["GET", "app:key"]);
    assert_eq!(value, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_of_one_connection_serves_a_holder_its_waiters_and_other_calls() {
    let server = RedisServer::start();
    let pool = pool(&server, 1, None);
    let store = RedisStore::from_deadpool(pool.clone()).await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let (running_tx, running_rx) = tokio::sync::oneshot::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn({
        let (store, runs) = (store.clone(), runs.clone());
        async move {
            Call::new("one", "slow")
                .store(store)
                .run(async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    running_tx.send(()).unwrap();
                    finish_rx.await.unwrap();
                    7_u32
                })
                .await
        }
    });
    running_rx.await.unwrap();
    // While the holder's body runs: 16 waiters on its key, and 32 calls on other keys, all on
    // the one connection (none of them keeps it while it waits).
    let waiters: Vec<_> = (0..16)
        .map(|_| {
            let (store, runs) = (store.clone(), runs.clone());
            tokio::spawn(async move {
                Call::new("one", "slow")
                    .store(store)
                    .wait(Duration::from_secs(10))
                    .run(async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        0_u32
                    })
                    .await
            })
        })
        .collect();
    let others: Vec<_> = (0..32_u32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                Call::new("one", format!("other-{i}"))
                    .store(store)
                    .run(async move { i })
                    .await
            })
        })
        .collect();
    for (i, other) in others.into_iter().enumerate() {
        let other = other.await.unwrap().expect("calls go on while others wait");
        assert_eq!(other.value as usize, i);
    }
    let status = pool.status();
    assert_eq!(status.max_size, 1, "{status:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let finished = Instant::now();
    finish_tx.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap().status, Status::Executed);
    for waiter in waiters {
        let waited = waiter.await.unwrap().expect("a waiter gets the result");
        assert_eq!((waited.value, waited.status), (7, Status::Waited));
    }
    // Waiters look again every 50 ms: all of them have the result soon after it is stored.
    assert!(
        finished.elapsed() < Duration::from_secs(1),
        "{:?}",
        finished.elapsed()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran once");
    assert_eq!(clients(&server).len(), 1, "{:?}", clients(&server));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_fails_the_call_with_a_timeout_that_says_so() {
    let server = RedisServer::start();
    // The pool's own wait timeout.
    let pool = pool(&server, 1, Some(Duration::from_millis(100)));
    let store = RedisStore::from_deadpool_with(pool.clone(), options())
        .await
        .unwrap();
    let held = pool.get().await.unwrap();
    let started = Instant::now();
    let refused = Call::new("exhausted", "k")
        .store(store.clone())
        .run(async { unreachable!("the body must not run without a claim") as u32 })
        .await;
    match refused {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Timeout, "{source}");
            let message = source.to_string();
            assert!(message.contains("exhausted"), "{message}");
            assert!(message.contains("max_size 1"), "{message}");
        }
        other => panic!("expected a store error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(450));
    drop(held);
    let after = Call::new("exhausted", "k")
        .store(store.clone())
        .run(async { 1 })
        .await
        .expect("the pool serves calls again once a connection is free");
    assert_eq!(after.status, Status::Executed);

    // A pool without a wait timeout: the store's connect_timeout bounds the checkout.
    let pool = self::pool(&server, 1, None);
    let store = RedisStore::from_deadpool_with(pool.clone(), options())
        .await
        .unwrap();
    let held = pool.get().await.unwrap();
    let started = Instant::now();
    match Call::new("exhausted", "k2")
        .store(store)
        .run(async { 1 })
        .await
    {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Timeout, "{source}");
            assert!(source.to_string().contains("connect_timeout"), "{source}");
        }
        other => panic!("expected a store error, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pool_is_unavailable() {
    let server = RedisServer::start();
    let pool = pool(&server, 2, None);
    let store = RedisStore::from_deadpool_with(pool.clone(), options())
        .await
        .unwrap();
    pool.close();
    match Call::new("closed", "k").store(store).run(async { 1 }).await {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Unavailable, "{source}");
            assert!(source.to_string().contains("closed"), "{source}");
        }
        other => panic!("expected a store error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_checks_run_on_a_pooled_connection() {
    // A server that may evict records is refused, unless allow_eviction accepts it.
    let server =
        RedisServer::with_args(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]);
    match RedisStore::from_deadpool(pool(&server, 2, None)).await {
        Err(Error::Config(message)) => {
            assert!(message.contains("allkeys-lru"), "{message}");
            assert!(message.contains("allow_eviction"), "{message}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let store =
        RedisStore::from_deadpool_with(pool(&server, 2, None), options().allow_eviction(true))
            .await
            .expect("allow_eviction accepts the risk");
    let outcome = Call::new("evicting", "k")
        .store(store)
        .run(async { 1 })
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Executed);

    // The scripts are loaded: a first call is SET and one EVALSHA, no SCRIPT LOAD.
    let server = RedisServer::start();
    let store = RedisStore::from_deadpool(pool(&server, 2, None))
        .await
        .unwrap();
    let loaded: Vec<bool> = {
        let monitor = server.monitor();
        Call::new("loaded", "k")
            .store(store)
            .run(async { 1 })
            .await
            .unwrap();
        let counted = monitor.stop();
        vec![
            counted.get("evalsha") == Some(&1),
            !counted.contains_key("script|load"),
        ]
    };
    assert_eq!(loaded, vec![true, true]);

    // Nothing listens: a server that is down is an error within connect_timeout, not a hang.
    let down = support::redis::free_port();
    let pool = deadpool_redis::Config::from_url(format!("redis://127.0.0.1:{down}/0"))
        .create_pool(Some(Runtime::Tokio1))
        .unwrap();
    let started = Instant::now();
    match RedisStore::from_deadpool_with(pool, options()).await {
        Err(Error::Connect { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Unavailable, "{source}")
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_taken_out_of_the_pool_and_calls_go_on() {
    let server = RedisServer::start();
    let pool = pool(&server, 2, None);
    let store = RedisStore::from_deadpool_with(pool.clone(), options())
        .await
        .unwrap();
    let burst = |round: u32| {
        let tasks: Vec<_> = (0..64_u32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    Call::new("killed", format!("k-{}", i % 16))
                        .store(store)
                        .wait(Duration::from_secs(5))
                        .run(async move { round })
                        .await
                })
            })
            .collect();
        async move {
            let mut values = Vec::new();
            for task in tasks {
                values.push(task.await.unwrap().expect("every call succeeds").value);
            }
            values
        }
    };
    assert!(burst(1).await.iter().all(|&v| v == 1));
    let before = clients(&server);
    for (id, _) in &before {
        let _: i64 = server.cmd(&["CLIENT", "KILL", "ID", id]);
    }
    // The pool finds its connections dead when it checks them (or the store when a command
    // fails on one): new ones serve every call, and nothing runs again.
    assert!(burst(2).await.iter().all(|&v| v == 1));
    let after = clients(&server);
    assert!(!after.is_empty() && after.len() <= 2, "{after:?}");
    assert!(
        after.iter().all(|client| !before.contains(client)),
        "{before:?} → {after:?}"
    );
    assert!(pool.status().size <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_times_out_and_calls_work_again_after_it_resumes() {
    let server = RedisServer::start();
    let pool = pool(&server, 2, None);
    let store = RedisStore::from_deadpool_with(pool.clone(), options())
        .await
        .unwrap();
    Call::new("frozen", "warm")
        .store(store.clone())
        .run(async { 0 })
        .await
        .unwrap();
    server.freeze();
    let started = Instant::now();
    let frozen = Call::new("frozen", "k")
        .store(store.clone())
        .run(async { 1 })
        .await;
    match frozen {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Timeout, "{source}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server.thaw();
    let after = Call::new("frozen", "k")
        .store(store)
        .wait(Duration::from_secs(5))
        .run(async { 2 })
        .await
        .expect("calls work again once the server resumes");
    assert!(after.value == 1 || after.value == 2);
}
