//! `PostgresStore` under faults of the test's own PostgreSQL: stopped, killed, restarted, its
//! backends terminated mid-call, a statement stuck on a lock, a corrupt payload.

mod support;

use std::process::Stdio;
use std::time::Duration;

use idem::{
    Call, Config, Error, FailMode, Idem, PostgresOptions, PostgresStore, Status, StoreErrorKind,
};
use support::postgres::PostgresServer;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The application name of the store's connections, which the tests terminate.
const APP: &str = "idem-faults";

async fn store(server: &PostgresServer) -> PostgresStore {
    let options = PostgresOptions::default()
        .application_name(APP)
        .pool_size(4)
        .statement_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_secs(2));
    PostgresStore::connect_with(&server.url(), options)
        .await
        .expect("connect to the test's PostgreSQL")
}

fn call(store: &PostgresStore, key: &str) -> Call {
    Call::new("faults", key.to_owned()).store(store.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_fails_closed_at_once_or_runs_unprotected_and_a_restart_heals() {
    let mut server = PostgresServer::start();
    let store = store(&server).await;
    // Every pooled connection in use once, so that all go stale with the stop.
    let warm: Vec<_> = (0..4)
        .map(|n| call(&store, &format!("warm-{n}")).run(async { 0_u8 }))
        .collect();
    for outcome in futures_join(warm).await {
        outcome.unwrap();
    }
    server.stop();

    let started = Instant::now();
    let closed = call(&store, "down").run(async { 1_u8 }).await;
    let took = started.elapsed();
    match &closed {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Unavailable, "{source}")
        }
        other => panic!("fail closed: {other:?}"),
    }
    assert!(took < Duration::from_secs(1), "at once, took {took:?}");
    let started = Instant::now();
    let again = call(&store, "down").run(async { 1_u8 }).await;
    assert!(matches!(again, Err(Error::Store { .. })), "{again:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let open = Idem::with_settings(store.clone(), &Config::default().fail_mode(FailMode::Open));
    let unprotected = open
        .scope(Call::new("faults", "down").run(async { 2_u8 }))
        .await
        .unwrap();
    assert_eq!(
        (unprotected.value, unprotected.status),
        (2, Status::Unprotected)
    );

    server.start_again();
    // The pool's connections all died with the server: the first call after the restart
    // already works.
    let healed = call(&store, "after-restart")
        .run(async { 3_u8 })
        .await
        .unwrap();
    assert_eq!((healed.value, healed.status), (3, Status::Executed));
    let replay = call(&store, "after-restart")
        .run(async { 4_u8 })
        .await
        .unwrap();
    assert_eq!((replay.value, replay.status), (3, Status::Replayed));
}

async fn futures_join<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for future in futures {
        out.push(future.await);
    }
    out
}

/// Starts a call on `key` whose body waits for the returned sender.
async fn held(
    store: &PostgresStore,
    key: &str,
) -> (
    oneshot::Sender<u32>,
    tokio::task::JoinHandle<Result<idem::Outcome<u32>, Error>>,
) {
    let (finish, finished) = oneshot::channel::<u32>();
    let (started, is_started) = oneshot::channel::<()>();
    let task = tokio::spawn(call(store, key).run(async move {
        let _ = started.send(());
        finished.await.unwrap_or(0)
    }));
    is_started.await.unwrap();
    (finish, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_mid_body_leave_the_caller_its_result_and_wake_waiters() {
    let server = PostgresServer::start();
    let store = store(&server).await;
    let (finish, holder) = held(&store, "k").await;
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            call(&store, "k")
                .wait(Duration::from_secs(20))
                .run(async { 0_u32 })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every connection of the store, the listener's too.
    let ended = server.terminate(APP);
    assert!(
        ended >= 2,
        "the pool's and the listener's connections: {ended}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    finish.send(9).unwrap();
    let done = holder
        .await
        .expect("no panic")
        .expect("the caller gets its own result");
    assert_eq!(done.value, 9);
    assert!(
        matches!(done.status, Status::Executed | Status::NotStored),
        "{:?}",
        done.status
    );
    let waited = waiter
        .await
        .expect("no panic")
        .expect("the waiter gets the result");
    assert_eq!((waited.value, waited.status), (9, Status::Waited));
    let replay = call(&store, "k").run(async { 1_u32 }).await.unwrap();
    assert_eq!((replay.value, replay.status), (9, Status::Replayed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_body_gives_the_caller_its_result_not_stored() {
    let mut server = PostgresServer::start();
    let store = store(&server).await;
    let (finish, holder) = held(&store, "killed").await;
    server.kill();
    finish.send(5).unwrap();
    let started = Instant::now();
    let done = holder
        .await
        .expect("no panic")
        .expect("the caller gets its own result");
    assert_eq!((done.value, done.status), (5, Status::NotStored));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    server.start_again();
    let after = call(&store, "killed-after")
        .run(async { 6_u32 })
        .await
        .unwrap();
    assert_eq!(after.status, Status::Executed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_stuck_on_a_lock_times_out() {
    let server = PostgresServer::start();
    let store = store(&server).await;
    call(&store, "locked").run(async { 1_u8 }).await.unwrap();
    // Another client holds the whole table for 3 s (a migration gone wrong).
    let mut locker = server
        .psql_command()
        .arg("-c")
        .arg(
            "BEGIN; LOCK TABLE idem_records IN ACCESS EXCLUSIVE MODE; \
             SELECT pg_sleep(3); COMMIT;",
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("run psql");
    let deadline = Instant::now() + Duration::from_secs(5);
    let locked = "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' \
                  AND relation = 'idem_records'::regclass";
    while server.psql(locked) == "0" {
        assert!(
            Instant::now() < deadline,
            "the locker did not take its lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Even a replay (a read) waits for that lock: the timeout ends it.
    let started = Instant::now();
    let stuck = call(&store, "locked").run(async { 2_u8 }).await;
    let took = started.elapsed();
    match &stuck {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Timeout, "{source}")
        }
        other => panic!("a statement past its timeout: {other:?}"),
    }
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let _ = locker.wait();
    let replay = call(&store, "locked").run(async { 3_u8 }).await.unwrap();
    assert_eq!((replay.value, replay.status), (1, Status::Replayed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_payload_is_a_decode_error() {
    let server = PostgresServer::start();
    let store = store(&server).await;
    call(&store, "corrupt").run(async { 1_u32 }).await.unwrap();
    server.psql(
        "UPDATE idem_records SET payload = '\\xff00fe'::bytea WHERE key = 'idem:faults:corrupt'",
    );
    let result = call(&store, "corrupt").run(async { 2_u32 }).await;
    match result {
        Err(Error::Decode { key, expected, .. }) => {
            assert_eq!((key.as_str(), expected), ("idem:faults:corrupt", "u32"))
        }
        other => panic!("a corrupt payload: {other:?}"),
    }
    // A row whose token is not a token is a store error, not a panic.
    let (finish, holder) = held(&store, "bad-token").await;
    server
        .psql("UPDATE idem_records SET token = '\\x01'::bytea WHERE key = 'idem:faults:bad-token'");
    let result = call(&store, "bad-token")
        .wait(Duration::ZERO)
        .run(async { 0_u32 })
        .await;
    match &result {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Protocol, "{source}")
        }
        other => panic!("a row that is not a record: {other:?}"),
    }
    finish.send(1).unwrap();
    let _ = holder.await.expect("no panic");
}
