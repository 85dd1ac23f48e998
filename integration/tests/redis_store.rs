//! `RedisStore` on real `redis-server` processes started by the tests: round trips counted
//! by the server, waiting by pub/sub, expiry by Redis, and the faults a deployment meets
//! (kill, restart, pause, freeze, script flush, corrupt records, bad credentials).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::store::{Claim, Fence};
use idem::{
    Call, Config, Error, FailMode, Idem, RedisOptions, RedisStore, Status, Store, StoreErrorKind,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use support::redis::{RedisServer, free_port};

/// A store on `server` with short timeouts, so that fault tests end quickly.
async fn store_on(server: &RedisServer, command_timeout: Duration) -> RedisStore {
    let config = Config::default()
        .store(server.url())
        .command_timeout(command_timeout)
        .connect_timeout(Duration::from_millis(500));
    RedisStore::connect(&config)
        .await
        .expect("connect to the test's redis-server")
}

/// The store key of `key` in `scope` with the default prefix.
fn store_key(scope: &str, key: &str) -> String {
    format!("idem:{scope}:{key}")
}

/// Polls `check` until it holds, for at most `within`.
async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn subscribers(server: &RedisServer, channel: &str) -> u64 {
    let (_, count): (String, u64) = server.cmd(&["PUBSUB", "NUMSUB", channel]);
    count
}

fn calls(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|(name, n)| (name.to_string(), *n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_one_command_and_a_first_call_two() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    // Warm up the pool's connection, so that only the calls' own commands are counted.
    Call::new("rt", "warm-up")
        .store(store.clone())
        .run(async { 0 })
        .await
        .unwrap();

    let monitor = server.monitor();
    let first = Call::new("rt", "order-1")
        .store(store.clone())
        .run(async { 1 })
        .await
        .unwrap();
    assert_eq!(first.status, Status::Executed);
    assert_eq!(
        monitor.stop(),
        calls(&[("set", 1), ("evalsha", 1)]),
        "a first call is SET NX GET (claim) and EVALSHA (complete)"
    );

    let monitor = server.monitor();
    let replay = Call::new("rt", "order-1")
        .store(store.clone())
        .run(async { 2 })
        .await
        .unwrap();
    assert_eq!((replay.value, replay.status), (1, Status::Replayed));
    assert_eq!(
        monitor.stop(),
        calls(&[("set", 1)]),
        "a replay is one SET NX GET"
    );

    // Many calls on one pooled connection: still no PING, no GET, nothing else.
    let monitor = server.monitor();
    for i in 0..50 {
        let key = format!("bulk-{}", i % 25);
        Call::new("rt", key)
            .store(store.clone())
            .run(async move { i })
            .await
            .unwrap();
    }
    assert_eq!(
        monitor.stop(),
        calls(&[("set", 50), ("evalsha", 25)]),
        "25 first calls and 25 replays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_call_on_a_new_store_is_two_commands_too() {
    // `connect` loads the scripts, so even the first complete is a single EVALSHA.
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    let monitor = server.monitor();
    let first = Call::new("rt", "first")
        .store(store.clone())
        .run(async { 1 })
        .await
        .unwrap();
    assert_eq!(first.status, Status::Executed);
    assert_eq!(monitor.stop(), calls(&[("set", 1), ("evalsha", 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_reloaded_after_script_flush() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    Call::new("flush", "a")
        .store(store.clone())
        .run(async { 1 })
        .await
        .unwrap();

    let _: () = server.cmd(&["SCRIPT", "FLUSH"]);
    let monitor = server.monitor();
    let second = Call::new("flush", "b")
        .store(store.clone())
        .run(async { 2 })
        .await
        .unwrap();
    assert_eq!(second.status, Status::Executed, "the completion was stored");
    assert_eq!(
        monitor.stop(),
        calls(&[("set", 1), ("evalsha", 2), ("script|load", 1)]),
        "EVALSHA answered NOSCRIPT, the script was loaded and run again"
    );
    let replay = Call::new("flush", "b")
        .store(store.clone())
        .run(async { 3 })
        .await
        .unwrap();
    assert_eq!((replay.value, replay.status), (2, Status::Replayed));
}

/// `min_replicas` on a server with no replica: `WAIT` follows the claim in its round trip, runs
/// out after `replica_timeout` (here longer than the command timeout, which it extends), and
/// the claim it did not protect is withdrawn: the call is refused, its body never runs, the
/// key is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_replicas_with_no_replica_refuses_the_call_and_withdraws_its_claim() {
    let server = RedisServer::start();
    let options = RedisOptions::default()
        .command_timeout(Duration::from_millis(200))
        .min_replicas(1)
        .replica_timeout(Duration::from_millis(600));
    let store = RedisStore::connect_with(&server.url(), options)
        .await
        .unwrap();
    let monitor = server.monitor();
    let runs = Arc::new(AtomicUsize::new(0));
    let refused = Call::new("replicas", "k")
        .store(store.clone())
        .run({
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        })
        .await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the body never ran");
    match refused {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Unavailable, "{source}");
            assert!(source.to_string().contains("only 0 of the 1"), "{source}");
        }
        other => panic!("expected the claim refused for min_replicas, got {other:?}"),
    }
    let sent = monitor.stop();
    assert_eq!(
        (sent.get("set"), sent.get("wait")),
        (Some(&1), Some(&1)),
        "the claim and its WAIT: {sent:?}"
    );
    let exists: i64 = server.cmd(&["EXISTS", &store_key("replicas", "k")]);
    assert_eq!(exists, 0, "the unreplicated claim was withdrawn");
}

/// An error the server answers (here a key of another type) is the call's, sent once: only a
/// connection found closed is a reason to send a command again, and only `NOSCRIPT` one to
/// load a script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_the_server_answers_is_not_sent_again() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    let key = store_key("wrongtype", "k");
    let _: i64 = server.cmd(&["LPUSH", &key, "not a record"]);
    let monitor = server.monitor();
    let refused = Call::new("wrongtype", "k")
        .store(store.clone())
        .run(async { 1 })
        .await;
    match refused {
        Err(Error::Store { source, .. }) => {
            assert!(source.to_string().contains("WRONGTYPE"), "{source}")
        }
        other => panic!("expected the server's WRONGTYPE, got {other:?}"),
    }
    let renewed = store
        .renew(&key, &Claim::new(None), Duration::from_secs(30))
        .await;
    let error = renewed.expect_err("a list is not a claim to renew");
    assert!(error.to_string().contains("WRONGTYPE"), "{error}");
    assert_eq!(
        monitor.stop(),
        calls(&[("set", 1), ("evalsha", 1)]),
        "one SET and one EVALSHA: neither sent again, no script loaded"
    );
}

/// A command that closes its connection every time (a result over the server's query buffer
/// limit) is sent once more on a new connection, and then fails: never sent again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_closes_its_connection_again_is_sent_twice_then_fails() {
    let server = RedisServer::start();
    let _: () = server.cmd(&["CONFIG", "SET", "client-query-buffer-limit", "1mb"]);
    let store = store_on(&server, Duration::from_secs(2)).await;
    let key = store_key("closing", "k");
    let claim = Claim::new(None);
    let lease = Duration::from_secs(30);
    assert_eq!(store.claim(&key, &claim, lease).await.unwrap(), None);
    let connections = || -> u64 {
        let info: String = server.cmd(&["INFO", "stats"]);
        info.lines()
            .find_map(|line| line.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("INFO stats counts connections")
    };
    let before = connections();
    let too_large = vec![b'x'; 2 << 20];
    // Two attempts take at most a command timeout and a new connection's connect timeout
    // each: the bound leaves room for a slow machine, and ends a resend that never stops.
    let failed = tokio::time::timeout(
        Duration::from_secs(15),
        store.complete(&key, &claim, &too_large, lease),
    )
    .await
    .expect("the completion fails within two attempts, not sent again and again");
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(
        connections() - before,
        1,
        "one new connection for the one resend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_overwritten_with_garbage_is_a_decode_error() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    Call::new("garbage", "k")
        .store(store.clone())
        .run(async { 1_u64 })
        .await
        .unwrap();
    let key = store_key("garbage", "k");
    assert_eq!(server.keys(), vec![key.clone()]);
    let _: () = server.cmd_bytes("SET", &[key.as_bytes(), b"\xff{not an envelope"]);

    let runs = AtomicUsize::new(0);
    let result = Call::new("garbage", "k")
        .store(store.clone())
        .run(async {
            runs.fetch_add(1, Ordering::SeqCst);
            2_u64
        })
        .await;
    match result {
        Err(Error::Decode {
            key: k, expected, ..
        }) => {
            assert_eq!(k, key);
            assert_eq!(expected, "u64");
        }
        other => panic!("expected Error::Decode, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the body is not re-run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_always_carry_a_redis_expiry() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    let key = store_key("expiry", "k");
    let (running_tx, running_rx) = oneshot::channel();
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let call = tokio::spawn({
        let store = store.clone();
        async move {
            Call::new("expiry", "k")
                .store(store)
                .lease(Duration::from_secs(30))
                .ttl(Duration::from_secs(3600))
                .run(async move {
                    running_tx.send(()).unwrap();
                    finish_rx.await.unwrap();
                    "done".to_owned()
                })
                .await
        }
    });
    running_rx.await.unwrap();
    let lease_left: i64 = server.cmd(&["PTTL", &key]);
    assert!(
        (1..=30_000).contains(&lease_left),
        "an in-progress claim expires with its lease: PTTL {lease_left}"
    );
    let stored: Vec<u8> = server.cmd(&["GET", &key]);
    assert!(stored.starts_with(b"claim:1:"), "the record is the claim");

    finish_tx.send(()).unwrap();
    assert_eq!(call.await.unwrap().unwrap().status, Status::Executed);
    let ttl_left: i64 = server.cmd(&["PTTL", &key]);
    assert!(
        (3_590_000..=3_600_000).contains(&ttl_left),
        "a completed record expires with its ttl: PTTL {ttl_left}"
    );
    let stored: String = server.cmd(&["GET", &key]);
    assert!(
        stored.contains("done"),
        "the record is readable JSON: {stored}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_the_completion_within_milliseconds() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    let mut delays = Vec::new();
    for round in 0..20 {
        delays.push(woken_after_completion(&server, &store, &format!("wake:{round}")).await);
    }
    delays.sort();
    let median = delays[delays.len() / 2];
    let max = delays[delays.len() - 1];
    println!("waiter wake-up after completion: median {median:?}, max {max:?}");
    // A poll every 50 ms would have a median near 25 ms.
    assert!(
        median < Duration::from_millis(10),
        "median wake-up {median:?}"
    );
    assert!(max < Duration::from_millis(500), "slowest wake-up {max:?}");

    // The subscriptions end with their waiters.
    eventually("no subscription is left", Duration::from_secs(5), || {
        let channels: Vec<String> = server.cmd(&["PUBSUB", "CHANNELS"]);
        channels.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_sends_a_bounded_number_of_commands_not_a_poll() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    // Warm up the pool's connection and the subscriber connection.
    Call::new("waiting", "warm-up")
        .store(store.clone())
        .run(async { 0 })
        .await
        .unwrap();
    woken_after_completion(&server, &store, "waiting:warm-up-wait").await;
    // The warm-up's subscription ends in the background: not one of the commands counted.
    eventually("the warm-up unsubscribed", Duration::from_secs(5), || {
        subscribers(&server, "waiting:warm-up-wait") == 0
    })
    .await;
    let key = store_key("waiting", "k");
    let (running_tx, running_rx) = oneshot::channel();
    let (finish_tx, finish_rx) = oneshot::channel::<()>();

    let monitor = server.monitor();
    let holder = tokio::spawn({
        let store = store.clone();
        async move {
            Call::new("waiting", "k")
                .store(store)
                .run(async move {
                    running_tx.send(()).unwrap();
                    finish_rx.await.unwrap();
                    "held".to_owned()
                })
                .await
        }
    });
    running_rx.await.unwrap();
    let waiter = tokio::spawn({
        let store = store.clone();
        async move {
            Call::new("waiting", "k")
                .store(store)
                .wait(Duration::from_secs(10))
                .run(async { "waiter ran".to_owned() })
                .await
        }
    });
    eventually("the waiter subscribed", Duration::from_secs(5), || {
        subscribers(&server, &key) == 1
    })
    .await;
    // The holder keeps the key for a while: a polling waiter would send commands meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during_wait = monitor.stop();
    assert_eq!(
        during_wait,
        calls(&[("set", 2), ("evalsha", 1), ("subscribe", 1)]),
        "while the holder runs: two claims, one look at the lease, one subscription, no poll"
    );

    let monitor = server.monitor();
    finish_tx.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap().status, Status::Executed);
    let waited = waiter.await.unwrap().unwrap();
    assert_eq!(
        (waited.value.as_str(), waited.status),
        ("held", Status::Waited)
    );
    let mut after = monitor.stop();
    // The subscription ends in the background once nobody waits on the key. On a busy machine
    // the woken waiter may claim before the holder's connection is back in the pool, and the
    // pool then opens a second connection: its HELLO handshake is not a round trip of a call.
    after.remove("unsubscribe");
    after.remove("hello");
    assert_eq!(
        after,
        calls(&[("set", 1), ("evalsha", 1)]),
        "the holder completes, and the woken waiter claims once more and replays"
    );
}

/// Claims `key`, waits on it in a task, completes it once the waiter subscribed, and returns
/// how long after the completion the waiter returned.
async fn woken_after_completion(server: &RedisServer, store: &RedisStore, key: &str) -> Duration {
    let holder = Claim::new(None);
    assert_eq!(
        store
            .claim(key, &holder, Duration::from_secs(30))
            .await
            .unwrap(),
        None
    );
    let waiter = tokio::spawn({
        let (store, key, holder) = (store.clone(), key.to_owned(), holder.clone());
        async move {
            store
                .wait(&key, &holder, Duration::from_secs(10))
                .await
                .unwrap();
            Instant::now()
        }
    });
    eventually("the waiter subscribed", Duration::from_secs(5), || {
        subscribers(server, key) == 1
    })
    .await;
    let completed_at = Instant::now();
    let fence = store
        .complete(key, &holder, b"done", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(fence, Fence::Held);
    waiter.await.unwrap() - completed_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_returns_when_a_crashed_holders_lease_ends() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    // A holder that claimed and then died: no completion, no message, only its lease.
    let crashed = Claim::new(None);
    let key = store_key("crash", "k");
    let lease = Duration::from_millis(400);
    assert_eq!(store.claim(&key, &crashed, lease).await.unwrap(), None);
    let started = Instant::now();
    store
        .wait(&key, &crashed, Duration::from_secs(10))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500),
        "the wait ends with the lease ({lease:?}), not the timeout: {waited:?}"
    );

    // Through the engine: a duplicate of the crashed call runs once the lease is over.
    let crashed = Claim::new(None);
    assert_eq!(store.claim(&key, &crashed, lease).await.unwrap(), None);
    let started = Instant::now();
    let outcome = Call::new("crash", "k")
        .store(store.clone())
        .wait(Duration::from_secs(10))
        .run(async { "ran after the crash".to_owned() })
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Executed);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_the_body_runs_the_caller_keeps_its_result_and_calls_recover_after_restart() {
    let mut server = RedisServer::start();
    let store = store_on(&server, Duration::from_millis(300)).await;
    let (running_tx, running_rx) = oneshot::channel();
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let call = tokio::spawn({
        let store = store.clone();
        async move {
            Call::new("kill", "k")
                .store(store)
                .run(async move {
                    running_tx.send(()).unwrap();
                    finish_rx.await.unwrap();
                    7
                })
                .await
        }
    });
    running_rx.await.unwrap();
    server.kill();
    finish_tx.send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("no hang")
        .unwrap()
        .expect("a successful result is returned even though it cannot be stored");
    assert_eq!((outcome.value, outcome.status), (7, Status::NotStored));

    // While Redis is down: Error::Store at once (fail closed), the body does not run.
    let runs = AtomicUsize::new(0);
    let started = Instant::now();
    let down = Call::new("kill", "other")
        .store(store.clone())
        .run(async {
            runs.fetch_add(1, Ordering::SeqCst);
        })
        .await;
    match down {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Unavailable, "{source}")
        }
        other => panic!("expected Error::Store, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Back up (empty, and without the scripts): the same store works again.
    server.restart();
    let again = Call::new("kill", "k")
        .store(store.clone())
        .run(async { 8 })
        .await
        .unwrap();
    assert_eq!((again.value, again.status), (8, Status::Executed));
    let replay = Call::new("kill", "k")
        .store(store.clone())
        .run(async { 9 })
        .await
        .unwrap();
    assert_eq!((replay.value, replay.status), (8, Status::Replayed));

    // And waiters are woken by pub/sub again, on a new subscriber connection.
    let delay = woken_after_completion(&server, &store, "kill:wait").await;
    assert!(
        delay < Duration::from_millis(200),
        "woken by the message: {delay:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_longer_than_the_lease_lets_a_second_caller_run_and_fences_out_the_first() {
    let server = RedisServer::start();
    let store = store_on(&server, Duration::from_millis(100)).await;
    let (running_tx, running_rx) = oneshot::channel();
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let first = tokio::spawn({
        let store = store.clone();
        async move {
            Call::new("pause", "k")
                .store(store)
                .lease(Duration::from_millis(300))
                .run(async move {
                    running_tx.send(()).unwrap();
                    finish_rx.await.unwrap();
                    "first".to_owned()
                })
                .await
        }
    });
    running_rx.await.unwrap();

    // Nothing answers for a second: the first caller cannot renew, its lease runs out.
    server.pause(Duration::from_millis(1000));
    tokio::task::block_in_place(|| server.wait_unpaused());

    let second = Call::new("pause", "k")
        .store(store.clone())
        .lease(Duration::from_secs(10))
        .run(async { "second".to_owned() })
        .await
        .unwrap();
    assert_eq!(
        (second.value.as_str(), second.status),
        ("second", Status::Executed),
        "the expired claim does not block the second caller"
    );

    finish_tx.send(()).unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(
        (first.value.as_str(), first.status),
        ("first", Status::LeaseLost),
        "the late completion is fenced out; the first caller still gets its own value"
    );
    let replay = Call::new("pause", "k")
        .store(store.clone())
        .run(async { "third".to_owned() })
        .await
        .unwrap();
    assert_eq!(
        (replay.value.as_str(), replay.status),
        ("second", Status::Replayed),
        "the second caller's record was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_times_out_and_calls_work_again_after_it_resumes() {
    let server = RedisServer::start();
    let store = store_on(&server, Duration::from_millis(200)).await;
    Call::new("freeze", "warm-up")
        .store(store.clone())
        .run(async { 0 })
        .await
        .unwrap();

    server.freeze();
    let runs = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let frozen = Call::new("freeze", "k")
        .store(store.clone())
        .lease(Duration::from_secs(30))
        .run({
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        })
        .await;
    let took = started.elapsed();
    server.thaw();
    match frozen {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Timeout, "{source}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert!(
        took < Duration::from_secs(1),
        "bounded by command_timeout: {took:?}"
    );

    // The timed-out claim reaches the server late, and is undone right after it: the key is
    // free at once rather than blocked for its 30 s lease.
    let key = store_key("freeze", "k");
    eventually("the late claim is undone", Duration::from_secs(5), || {
        let exists: i64 = server.cmd(&["EXISTS", &key]);
        exists == 0
    })
    .await;
    let again = Call::new("freeze", "k")
        .store(store.clone())
        .wait(Duration::ZERO)
        .run({
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        })
        .await
        .unwrap();
    assert_eq!(again.status, Status::Executed);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_quickly_and_clearly() {
    let quick = |url: String| {
        Config::default()
            .store(url)
            .connect_timeout(Duration::from_millis(500))
    };

    // Nothing listens on the port.
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let started = Instant::now();
    match RedisStore::connect(&quick(url.clone())).await {
        Err(Error::Connect { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Unavailable);
            assert!(source.to_string().contains(&url), "{source}");
        }
        other => panic!("expected Error::Connect, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // A wrong password, and no password, are configuration errors that do not echo it.
    let server = RedisServer::with_password("right-secret");
    for url in [
        format!("redis://:wrong-secret@127.0.0.1:{}/0", server.port()),
        format!("redis://127.0.0.1:{}/0", server.port()),
    ] {
        match RedisStore::connect(&quick(url.clone())).await {
            Err(Error::Config(message)) => {
                assert!(message.contains("credentials"), "{message}");
                assert!(
                    !message.contains("secret"),
                    "the password leaked: {message}"
                );
            }
            other => panic!("{url}: expected Error::Config, got {other:?}"),
        }
    }
    let right = RedisStore::connect(&quick(server.url()))
        .await
        .expect("the right password");
    assert_eq!(
        right.describe(),
        format!("redis://127.0.0.1:{}/0", server.port())
    );
    assert!(!format!("{right:?}").contains("secret"));

    // A server that accepts the connection and never answers.
    let frozen = RedisServer::start();
    frozen.freeze();
    let started = Instant::now();
    match RedisStore::connect(&quick(frozen.url())).await {
        Err(Error::Connect { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Timeout, "{source}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    frozen.thaw();

    // URLs that do not parse, or name no single Redis.
    for url in [
        "redis://127.0.0.1:notaport/0",
        "redis+cluster://127.0.0.1:notaport,127.0.0.1:alsonot",
        "http://127.0.0.1",
    ] {
        assert!(
            matches!(
                RedisStore::connect(&quick(url.into())).await,
                Err(Error::Config(_))
            ),
            "{url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_fail_open_runs_unprotected_and_fail_closed_refuses() {
    let mut server = RedisServer::start();
    let store = store_on(&server, Duration::from_millis(200)).await;
    server.kill();
    let runs = Arc::new(AtomicUsize::new(0));
    let body = |runs: Arc<AtomicUsize>| async move {
        runs.fetch_add(1, Ordering::SeqCst);
        "ran".to_owned()
    };

    let open = Idem::with_settings(store.clone(), &Config::default().fail_mode(FailMode::Open));
    let outcome = open
        .scope(Call::new("down", "k").run(body(runs.clone())))
        .await
        .unwrap();
    assert_eq!(
        (outcome.value.as_str(), outcome.status),
        ("ran", Status::Unprotected)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let closed = Idem::with_settings(store.clone(), &Config::default());
    let refused = closed
        .scope(Call::new("down", "k").run(body(runs.clone())))
        .await;
    assert!(matches!(refused, Err(Error::Store { .. })), "{refused:?}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "fail-closed does not run the body"
    );
}

/// The store's command connections, by id: every client but the store's subscriber (whose
/// last command is a `SUBSCRIBE` or an `UNSUBSCRIBE`) and the connection asking. (Not by a
/// call's command: a connection's last one may be a waiter's `GET` or a `PTTL` as well as a
/// `SET` or an `EVALSHA`.)
fn command_connections(server: &RedisServer) -> Vec<String> {
    let list: String = server.cmd(&["CLIENT", "LIST"]);
    list.lines()
        .filter(|line| {
            let cmd = line.split_whitespace().find_map(|f| f.strip_prefix("cmd="));
            !matches!(
                cmd,
                Some("client|list" | "subscribe" | "unsubscribe" | "ssubscribe" | "sunsubscribe")
            )
        })
        .filter_map(|line| line.split_whitespace().next()?.strip_prefix("id="))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_pool_size_connections_and_a_killed_one_is_replaced() {
    let server = RedisServer::start();
    let config = Config::default()
        .store(server.url())
        .pool_size(2)
        .connect_timeout(Duration::from_millis(500));
    let store = RedisStore::connect(&config).await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let burst = |round: usize| {
        let tasks: Vec<_> = (0..256)
            .map(|i| {
                let (store, runs) = (store.clone(), runs.clone());
                tokio::spawn(async move {
                    Call::new("shared", format!("order-{}", i % 64))
                        .store(store)
                        .run(async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            round
                        })
                        .await
                })
            })
            .collect();
        async move {
            let mut outcomes = Vec::new();
            for task in tasks {
                outcomes.push(task.await.unwrap());
            }
            outcomes
        }
    };

    // 256 calls at once on 64 keys: every key runs once, and all of them went over the
    // store's two connections (made when it connected), none more.
    for outcome in burst(1).await {
        assert_eq!(outcome.unwrap().value, 1);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 64);
    let shared = command_connections(&server);
    assert_eq!(shared.len(), 2, "the calls used {shared:?}");

    // Both connections are killed under the store: the following calls make new ones. A call
    // dealt to a connection before the store learned of its end is sent again on the new
    // connection of its place: no call fails, and nothing runs twice.
    for id in &shared {
        let _: i64 = server.cmd(&["CLIENT", "KILL", "ID", id]);
    }
    for outcome in burst(2).await {
        let outcome = outcome.expect("a call on a killed connection is sent again");
        assert_eq!((outcome.value, outcome.status), (1, Status::Replayed));
    }
    for outcome in burst(3).await {
        let outcome = outcome.expect("the replaced connections serve every call");
        assert_eq!((outcome.value, outcome.status), (1, Status::Replayed));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 64, "a key ran twice");
    let replaced = command_connections(&server);
    assert_eq!(replaced.len(), 2, "the calls used {replaced:?}");
    assert!(
        replaced.iter().all(|id| !shared.contains(id)),
        "{shared:?} → {replaced:?}"
    );

    // Killed again, and this time the store hears of both ends (the server's close reaches
    // the connections' readers) before the next calls are dealt: each place makes its
    // connection anew, rather than the calls of a closed place going to the other one for
    // good. (Nothing outside the store can await its reader's flag: a short pause lets it
    // land; were it late, the calls would take the path above, which also makes both anew.)
    for id in &replaced {
        let _: i64 = server.cmd(&["CLIENT", "KILL", "ID", id]);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // One call after another: dealt in turn, each place gets calls (concurrent calls could
    // mix the turns and hide a place that is passed over).
    for i in 0..64 {
        let outcome = Call::new("shared", format!("order-{i}"))
            .store(store.clone())
            .run(async { 4 })
            .await
            .expect("the places make their connections anew");
        assert_eq!((outcome.value, outcome.status), (1, Status::Replayed));
    }
    let remade = command_connections(&server);
    assert_eq!(remade.len(), 2, "the calls used {remade:?}");
    assert!(
        remade.iter().all(|id| !replaced.contains(id)),
        "{replaced:?} → {remade:?}"
    );
}
