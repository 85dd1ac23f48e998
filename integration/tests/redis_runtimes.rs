//! A `RedisStore` outlives the runtime it was made on, and never fails a call for a connection
//! that died while idle: made (or `idem::init`ed) on one tokio runtime, it serves calls and
//! waiters on the next one after the first has ended; and a connection the server dropped is
//! replaced without an error.

mod support;

use std::time::Duration;

use idem::store::{Claim, Fence};
use idem::{Call, Config, RedisStore, Status, Store};
use tokio::runtime::Runtime;
use tokio::time::Instant;

use support::redis::RedisServer;

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn subscribers(server: &RedisServer, channel: &str) -> u64 {
    let (_, count): (String, u64) = server.cmd(&["PUBSUB", "NUMSUB", channel]);
    count
}

/// Claims `key`, waits on it in a task until the waiter is subscribed (by pub/sub: a waiter
/// that could not subscribe polls instead and is never seen here), completes it, and checks
/// that the waiter returns without an error.
///
/// A waiter that meets the subscriber connection in the moment the server closed it (the store
/// has not read the close yet) may fall back to polling, which is allowed; the next waiter must
/// then subscribe on a new connection. So a second waiter is started if the first is not seen
/// subscribed, and one of the two must be.
async fn waiter_is_woken(server: &RedisServer, store: &RedisStore, key: &str) {
    let holder = Claim::new(None);
    let claimed = store.claim(key, &holder, Duration::from_secs(30)).await;
    assert_eq!(claimed.unwrap(), None, "{key} was free");
    let wait = || {
        let (store, key, holder) = (store.clone(), key.to_owned(), holder.clone());
        tokio::spawn(async move { store.wait(&key, &holder, Duration::from_secs(20)).await })
    };
    let subscribed_within = |limit: Duration| async move {
        let deadline = Instant::now() + limit;
        while subscribers(server, key) != 1 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    };
    let mut waiters = vec![wait()];
    if !subscribed_within(Duration::from_secs(5)).await {
        waiters.push(wait());
        assert!(
            subscribed_within(Duration::from_secs(5)).await,
            "neither waiter of {key} subscribed"
        );
    }
    let fence = store
        .complete(key, &holder, b"done", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(fence, Fence::Held);
    for waiter in waiters {
        waiter
            .await
            .unwrap()
            .expect("the waiter returns without an error");
    }
}

async fn call(store: &RedisStore, key: &str, value: u32) -> (u32, Status) {
    let outcome = Call::new("runtimes", key)
        .store(store.clone())
        .run(async move { value })
        .await
        .unwrap_or_else(|e| panic!("the call on {key} failed: {e}"));
    (outcome.value, outcome.status)
}

#[test]
fn a_store_made_on_a_runtime_that_ended_serves_the_next_one() {
    let server = RedisServer::start();
    let first = multi_thread();
    let store = first.block_on(async {
        let store = RedisStore::open(&server.url()).await.unwrap();
        assert_eq!(call(&store, "before", 1).await, (1, Status::Executed));
        // Makes the subscriber connection on this runtime too.
        waiter_is_woken(&server, &store, "idem:runtimes:wait-before").await;
        store
    });
    drop(first);

    let second = current_thread();
    second.block_on(async {
        // Each first command on the next runtime: a replay, a first call, a waiter.
        assert_eq!(call(&store, "before", 2).await, (1, Status::Replayed));
        assert_eq!(call(&store, "after", 3).await, (3, Status::Executed));
        waiter_is_woken(&server, &store, "idem:runtimes:wait-after").await;
    });
    drop(second);

    // And once more, from a runtime of another kind.
    multi_thread().block_on(async {
        assert_eq!(call(&store, "after", 4).await, (3, Status::Replayed));
        waiter_is_woken(&server, &store, "idem:runtimes:wait-third").await;
    });
}

#[test]
fn init_in_one_runtime_then_calls_from_another() {
    // The only test of this file that configures the process-wide idem.
    let server = RedisServer::start();
    current_thread().block_on(async {
        idem::init(Config::default().store(server.url()))
            .await
            .unwrap();
        let outcome = Call::new("global", "k").run(async { 1 }).await.unwrap();
        assert_eq!(outcome.status, Status::Executed);
    });
    for round in 0..2 {
        // Every test of an application's suite builds its own runtime, like this.
        current_thread().block_on(async {
            let replay = Call::new("global", "k").run(async { 2 }).await.unwrap();
            assert_eq!((replay.value, replay.status), (1, Status::Replayed));
            let first = Call::new("global", format!("round-{round}"))
                .run(async { 3 })
                .await
                .unwrap();
            assert_eq!(first.status, Status::Executed);
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_dropped_while_idle_fail_no_call() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    assert_eq!(call(&store, "idle", 1).await, (1, Status::Executed));
    waiter_is_woken(&server, &store, "idem:runtimes:idle-wait-0").await;
    for round in 1..=5 {
        // Every client of the server but the harness's own (`SKIPME yes`): the store's command
        // connection and its subscriber.
        let killed: u64 = server.cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
        let _: u64 = server.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert!(
            killed >= 1,
            "round {round}: the store's connection was killed"
        );
        // Right away, and many at once: the store may not have learnt of the kill yet.
        let replays: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { call(&store, "idle", 2).await })
            })
            .collect();
        for replay in replays {
            assert_eq!(replay.await.unwrap(), (1, Status::Replayed));
        }
        assert_eq!(
            call(&store, &format!("idle-{round}"), round).await,
            (round, Status::Executed)
        );
        waiter_is_woken(&server, &store, &format!("idem:runtimes:idle-wait-{round}")).await;
    }
}
