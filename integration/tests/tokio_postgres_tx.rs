//! The transactional mode (`Call::run_tx`, `#[idempotent(tx = conn)]`) on tokio-postgres and
//! deadpool-postgres, on one PostgreSQL the test process starts: the record commits and rolls
//! back with the body's writes, a duplicate waits on PostgreSQL's lock, `wait` bounds it,
//! released errors leave no trace, a `Client` outside a transaction gets its own, a dropped
//! call rolls back, the plain (sqlx) store and the tokio-postgres mode share records both ways,
//! the statements each call sends, deadpool-postgres' connections preparing them once in
//! their statement cache (not behind a pooler), and 64 concurrent transactions on one key.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::{Call, Error, PostgresOptions, PostgresStore, Status};
use support::postgres::PostgresServer;
use tokio::sync::{Barrier, oneshot};
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, Transaction};

/// The server of this process, with the records' table and the business table.
fn server() -> &'static PostgresServer {
    static READY: std::sync::Once = std::sync::Once::new();
    let server = PostgresServer::shared();
    READY.call_once(|| {
        server.psql(idem::postgres::MIGRATION);
        server.psql("CREATE TABLE items (key text PRIMARY KEY, note text NOT NULL)");
    });
    server
}

/// The plain (sqlx) store on the server's table.
async fn store() -> PostgresStore {
    let options = PostgresOptions::default()
        .create_table(false)
        .reaper_interval(None);
    PostgresStore::connect_with(&server().url(), options)
        .await
        .expect("connect the plain store")
}

/// A tokio-postgres client of the application's, named `application` on the server.
async fn client(application: &str) -> Client {
    let config = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres application_name={application}",
        server().port()
    );
    let (client, connection) = tokio_postgres::connect(&config, NoTls)
        .await
        .expect("connect the application's client");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Runs `test` on a `LocalSet`, where the tasks of calls on a `tokio_postgres::Transaction`
/// are spawned.
async fn local(test: impl Future<Output = ()>) {
    tokio::task::LocalSet::new().run_until(test).await;
}

fn scope(name: &str) -> String {
    format!("tokio_tx::{name}")
}

/// Inserts the business row of `key` through `conn`.
async fn insert(conn: &Client, key: &str, note: &str) -> Result<u64, tokio_postgres::Error> {
    conn.execute(
        "INSERT INTO items (key, note) VALUES ($1, $2)",
        &[&key, &note],
    )
    .await
}

/// The committed business rows of `key`.
async fn items(key: &str) -> i64 {
    let reader = client("idem-tokio-reader").await;
    reader
        .query_one("SELECT count(*) FROM items WHERE key = $1", &[&key])
        .await
        .unwrap()
        .get(0)
}

/// The committed records whose store key ends with `key`, and their state.
async fn records(key: &str) -> Vec<String> {
    let reader = client("idem-tokio-reader").await;
    reader
        .query(
            "SELECT state FROM idem_records WHERE key LIKE '%:' || $1",
            &[&key],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The business rows of `key` that `conn`'s transaction sees.
async fn items_in(conn: &Client, key: &str) -> i64 {
    conn.query_one("SELECT count(*) FROM items WHERE key = $1", &[&key])
        .await
        .unwrap()
        .get(0)
}

/// Waits (at most 10 s) until a backend of `application` waits on a lock.
async fn waiting_on_a_lock(application: &str) {
    let watcher = client("idem-tokio-watcher").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&application],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{application} never waited on a lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_commits_and_rolls_back_with_the_body_and_a_replay_does_not_run_it() {
    let store = store().await;
    let mut conn = client("idem-tokio-commit").await;
    let runs = AtomicUsize::new(0);
    let call = || Call::new(scope("commit"), "k1").store(store.clone());

    // Rolled back: neither the business row nor the record stays.
    let mut tx = conn.transaction().await.unwrap();
    let first = call()
        .run_tx(&mut tx, async |conn: &mut Transaction<'_>| {
            runs.fetch_add(1, Ordering::SeqCst);
            insert(conn.client(), "k1", "first").await.unwrap();
            41_u32
        })
        .await
        .unwrap();
    assert_eq!((first.value, first.status), (41, Status::Executed));
    tx.rollback().await.unwrap();
    assert_eq!(items("k1").await, 0);
    assert!(records("k1").await.is_empty());

    // Committed: both.
    let mut tx = conn.transaction().await.unwrap();
    let second = call()
        .run_tx(&mut tx, async |conn: &mut Transaction<'_>| {
            runs.fetch_add(1, Ordering::SeqCst);
            insert(conn.client(), "k1", "second").await.unwrap();
            42_u32
        })
        .await
        .unwrap();
    assert_eq!((second.value, second.status), (42, Status::Executed));
    tx.commit().await.unwrap();
    assert_eq!(items("k1").await, 1);
    assert_eq!(records("k1").await, ["completed"]);

    // A replay, in another transaction: the stored value, the body not run.
    let mut tx = conn.transaction().await.unwrap();
    let again = call()
        .run_tx(&mut tx, async |_: &mut Transaction<'_>| -> u32 {
            unreachable!("replayed")
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((again.value, again.status), (42, Status::Replayed));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Starts a transaction on a client of its own that claims `key` and runs a body that inserts
/// its business row; returns once the body ran, with the sender that ends the transaction
/// (`true` commits, `false` rolls back, dropped: the client is dropped mid-transaction).
async fn holder(
    store: &PostgresStore,
    name: &'static str,
    key: &'static str,
) -> (oneshot::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (end, ended) = oneshot::channel::<bool>();
    let (started, is_started) = oneshot::channel::<()>();
    let mut conn = client("idem-tokio-holder").await;
    let store = store.clone();
    let task = tokio::task::spawn_local(async move {
        let mut tx = conn.transaction().await.unwrap();
        let outcome = Call::new(scope(name), key)
            .store(store)
            .run_tx(&mut tx, async |conn| {
                insert(conn.client(), key, "holder").await.unwrap();
                7_u32
            })
            .await
            .unwrap();
        assert_eq!(outcome.status, Status::Executed);
        let _ = started.send(());
        match ended.await {
            Ok(true) => tx.commit().await.unwrap(),
            Ok(false) => tx.rollback().await.unwrap(),
            Err(_) => {
                // The client and its connection go: the server rolls back.
                std::mem::forget(tx);
                drop(conn);
            }
        }
    });
    is_started.await.unwrap();
    (end, task)
}

/// A duplicate in a transaction of another client, named `application`: runs the call with a
/// body that counts its runs.
fn duplicate(
    store: &PostgresStore,
    application: &'static str,
    name: &'static str,
    key: &'static str,
    wait: Duration,
    runs: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<(Result<idem::Outcome<u32>, Error>, Duration)> {
    let store = store.clone();
    tokio::task::spawn_local(async move {
        let mut conn = client(application).await;
        let start = Instant::now();
        let mut tx = conn.transaction().await.unwrap();
        let outcome = Call::new(scope(name), key)
            .store(store)
            .wait(wait)
            .run_tx(&mut tx, async |conn| {
                runs.fetch_add(1, Ordering::SeqCst);
                insert(conn.client(), key, "duplicate").await.unwrap();
                8_u32
            })
            .await;
        if outcome.is_ok() {
            tx.commit().await.unwrap();
        }
        (outcome, start.elapsed())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_waits_on_the_key_lock_then_replays_or_runs_when_the_holder_ends() {
    // A call on a `tokio_postgres::Transaction` is not `Send` (see the README): its tasks
    // are local ones.
    local(async move {
        let store = store().await;
        for (key, application, ending) in [
            ("commits", "idem-tokio-dup-commits", Some(true)),
            ("rolls-back", "idem-tokio-dup-rolls-back", Some(false)),
            ("dies", "idem-tokio-dup-dies", None),
        ] {
            let (end, held) = holder(&store, "lock", key).await;
            let runs = Arc::new(AtomicUsize::new(0));
            let waiter = duplicate(
                &store,
                application,
                "lock",
                key,
                Duration::from_secs(10),
                runs.clone(),
            );
            waiting_on_a_lock(application).await;
            assert!(!waiter.is_finished(), "{key}: the duplicate waits");
            let ended_at = Instant::now();
            match ending {
                Some(commit) => end.send(commit).unwrap(),
                None => drop(end),
            }
            held.await.unwrap();
            let (outcome, _) = tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("the duplicate returns")
                .unwrap();
            let outcome = outcome.unwrap();
            let after = ended_at.elapsed();
            println!("{key}: the duplicate returned {after:?} after the holder ended");
            assert!(after < Duration::from_secs(2), "{key}: {after:?}");
            match ending {
                Some(true) => {
                    assert_eq!((outcome.value, outcome.status), (7, Status::Waited));
                    assert_eq!(runs.load(Ordering::SeqCst), 0);
                }
                _ => {
                    assert_eq!((outcome.value, outcome.status), (8, Status::Executed));
                    assert_eq!(runs.load(Ordering::SeqCst), 1);
                }
            }
            assert_eq!(items(key).await, 1, "{key}");
            assert_eq!(records(key).await, ["completed"], "{key}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_bounds_the_lock_wait_with_in_progress_and_the_callers_settings_are_kept() {
    // A call on a `tokio_postgres::Transaction` is not `Send` (see the README): its tasks
    // are local ones.
    local(async move {
        let store = store().await;
        let (end, held) = holder(&store, "bounded", "b1").await;
        let runs = Arc::new(AtomicUsize::new(0));
        let (outcome, took) = duplicate(
            &store,
            "idem-tokio-bounded",
            "bounded",
            "b1",
            Duration::from_millis(200),
            runs.clone(),
        )
        .await
        .unwrap();
        assert!(
            matches!(outcome, Err(Error::InProgress { .. })),
            "{outcome:?}"
        );
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        end.send(true).unwrap();
        held.await.unwrap();
        // The caller's session is left as it was: its own lock_timeout is back.
        let mut conn = client("idem-tokio-bounded-2").await;
        let mut tx = conn.transaction().await.unwrap();
        tx.batch_execute("SET LOCAL lock_timeout = '1234ms'")
            .await
            .unwrap();
        let replay = Call::new(scope("bounded"), "b1")
            .store(store.clone())
            .run_tx(&mut tx, async |_: &mut Transaction<'_>| 0_u32)
            .await
            .unwrap();
        assert_eq!((replay.value, replay.status), (7, Status::Replayed));
        let timeout: String = tx.query_one("SHOW lock_timeout", &[]).await.unwrap().get(0);
        assert_eq!(timeout, "1234ms");
        tx.commit().await.unwrap();
    })
    .await;
}

#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
struct Refused(String);

impl From<Error> for Refused {
    fn from(error: Error) -> Self {
        Refused(error.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_error_leaves_no_trace_and_the_callers_transaction_usable() {
    let store = store().await;
    let mut conn = client("idem-tokio-errors").await;
    let mut tx = conn.transaction().await.unwrap();
    insert(tx.client(), "t-before", "the caller's own")
        .await
        .unwrap();
    let failed = Call::new(scope("errors"), "e1")
        .store(store.clone())
        .run_result_tx(&mut tx, async |conn: &mut Transaction<'_>| {
            insert(conn.client(), "e1", "written, then undone")
                .await
                .unwrap();
            Err::<u32, _>(Refused("transient".into()))
        })
        .await
        .unwrap();
    assert_eq!(failed.value, Err(Refused("transient".into())));
    // The transaction is usable, without the body's row or the claim, with the caller's.
    assert_eq!(items_in(tx.client(), "e1").await, 0);
    let claims: i64 = tx
        .query_one(
            "SELECT count(*) FROM idem_records WHERE key LIKE '%:e1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(claims, 0);
    // A retry in the same transaction runs again.
    let retried = Call::new(scope("errors"), "e1")
        .store(store.clone())
        .run_result_tx(&mut tx, async |conn: &mut Transaction<'_>| {
            insert(conn.client(), "e1", "the retry").await.unwrap();
            Ok::<u32, Refused>(5)
        })
        .await
        .unwrap();
    assert_eq!((retried.value, retried.status), (Ok(5), Status::Executed));
    tx.commit().await.unwrap();
    assert_eq!(items("t-before").await, 1);
    assert_eq!(items("e1").await, 1);

    // A stored error keeps the body's writes, and is replayed.
    for expect in [Status::Executed, Status::Replayed] {
        let mut tx = conn.transaction().await.unwrap();
        let stored = Call::new(scope("errors"), "e2")
            .store(store.clone())
            .run_result_caching_tx(
                &mut tx,
                |_: &Refused| true,
                async |conn: &mut Transaction<'_>| {
                    insert(conn.client(), "e2", "kept with the error")
                        .await
                        .unwrap();
                    Err::<u32, _>(Refused("permanent".into()))
                },
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            (stored.value, stored.status),
            (Err(Refused("permanent".into())), expect)
        );
    }
    assert_eq!(items("e2").await, 1);
    assert_eq!(records("e2").await, ["completed"]);
}

/// Whether `conn` is outside any transaction: a row it inserts is seen at once by another
/// client (the insert committed by itself). The row is deleted again.
async fn outside_a_transaction(conn: &Client, key: &str) -> bool {
    insert(conn, key, "probe").await.unwrap();
    let seen = items(key).await == 1;
    conn.execute("DELETE FROM items WHERE key = $1", &[&key])
        .await
        .unwrap();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_outside_a_transaction_gets_one_of_its_own() {
    // A call on a `Client` is `Send`: this one runs in a task of the multi-thread runtime.
    tokio::spawn(async move {
        let store = store().await;
        let mut conn = client("idem-tokio-own").await;
        let done = Call::new(scope("own"), "o1")
            .store(store.clone())
            .run_tx(&mut conn, async |conn: &mut Client| {
                insert(conn, "o1", "committed by idem").await.unwrap();
                // Not committed yet: another client does not see it.
                assert_eq!(items("o1").await, 0, "the body runs in a transaction");
                3_u8
            })
            .await
            .unwrap();
        assert_eq!(done.value, 3);
        assert_eq!(items("o1").await, 1);
        assert_eq!(records("o1").await, ["completed"]);
        assert!(outside_a_transaction(&conn, "o1-probe").await);
        // A released error rolls the call's own transaction back.
        let failed = Call::new(scope("own"), "o2")
            .store(store.clone())
            .run_result_tx(&mut conn, async |conn: &mut Client| {
                insert(conn, "o2", "rolled back").await.unwrap();
                Err::<u8, _>("no".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(failed.value, Err("no".to_owned()));
        assert_eq!(items("o2").await, 0);
        assert!(records("o2").await.is_empty());
        assert!(outside_a_transaction(&conn, "o2-probe").await);
        // A replay on the client.
        let again = Call::new(scope("own"), "o1")
            .store(store.clone())
            .run_tx(&mut conn, async |_: &mut Client| -> u8 {
                unreachable!("replayed")
            })
            .await
            .unwrap();
        assert_eq!((again.value, again.status), (3, Status::Replayed));
        assert!(outside_a_transaction(&conn, "o3-probe").await);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_rolls_back_its_transaction_or_its_savepoint_at_once() {
    let store = store().await;

    // On a client: idem's own transaction is rolled back; the client is usable outside one.
    let mut conn = client("idem-tokio-dropped").await;
    let (inside, is_inside) = oneshot::channel::<()>();
    let call = Call::new(scope("dropped"), "d1")
        .store(store.clone())
        .run_tx(&mut conn, async |conn: &mut Client| {
            insert(conn, "d1", "never committed").await.unwrap();
            let _ = inside.send(());
            std::future::pending::<u32>().await
        });
    tokio::select! {
        _ = call => unreachable!("the body never ends"),
        _ = is_inside => {}
    }
    assert!(outside_a_transaction(&conn, "d1-probe").await);
    assert_eq!(items("d1").await, 0);
    assert!(records("d1").await.is_empty());

    // In the caller's transaction: rolled back to the savepoint, the transaction usable and
    // what the caller wrote before kept.
    let mut tx = conn.transaction().await.unwrap();
    insert(tx.client(), "d2-before", "the caller's own")
        .await
        .unwrap();
    let (inside, is_inside) = oneshot::channel::<()>();
    let call = Call::new(scope("dropped"), "d2")
        .store(store.clone())
        .run_result_tx(&mut tx, async |conn: &mut Transaction<'_>| {
            insert(conn.client(), "d2", "undone").await.unwrap();
            let _ = inside.send(());
            std::future::pending::<Result<u32, String>>().await
        });
    tokio::select! {
        _ = call => unreachable!("the body never ends"),
        _ = is_inside => {}
    }
    assert_eq!(items_in(tx.client(), "d2").await, 0);
    assert_eq!(items_in(tx.client(), "d2-before").await, 1);
    // The claim, made before the savepoint, stays in the caller's transaction (committed, it
    // would hold the key until its lease ends): the caller rolls back, as after any error.
    let again = Call::new(scope("dropped"), "d2")
        .store(store.clone())
        .wait(Duration::from_millis(100))
        .run_result_tx(&mut tx, async |_: &mut Transaction<'_>| {
            Ok::<u32, String>(0)
        })
        .await;
    assert!(matches!(again, Err(Error::InProgress { .. })), "{again:?}");
    tx.rollback().await.unwrap();
    let retried = Call::new(scope("dropped"), "d2")
        .store(store.clone())
        .run_result_tx(&mut conn, async |conn: &mut Client| {
            insert(conn, "d2", "the retry").await.unwrap();
            Ok::<u32, String>(2)
        })
        .await
        .unwrap();
    assert_eq!((retried.value, retried.status), (Ok(2), Status::Executed));
    assert_eq!(items("d2").await, 1);
    assert_eq!(items("d2-before").await, 0);
    assert_eq!(records("d2").await, ["completed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_store_and_tokio_postgres_share_records_both_ways() {
    let store = store().await;
    let mut conn = client("idem-tokio-interop").await;
    let mut tx = conn.transaction().await.unwrap();
    Call::new(scope("interop"), "i1")
        .store(store.clone())
        .run_tx(&mut tx, async |conn: &mut Transaction<'_>| {
            insert(conn.client(), "i1", "tx").await.unwrap();
            "from tokio-postgres".to_owned()
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let plain = Call::new(scope("interop"), "i1")
        .store(store.clone())
        .run(async { unreachable!("replayed") as String })
        .await
        .unwrap();
    assert_eq!(
        (plain.value.as_str(), plain.status),
        ("from tokio-postgres", Status::Replayed)
    );

    Call::new(scope("interop"), "i2")
        .store(store.clone())
        .run(async { "from the plain store".to_owned() })
        .await
        .unwrap();
    let replayed = Call::new(scope("interop"), "i2")
        .store(store.clone())
        .run_tx(&mut conn, async |_: &mut Client| -> String {
            unreachable!("replayed")
        })
        .await
        .unwrap();
    assert_eq!(
        (replayed.value.as_str(), replayed.status),
        ("from the plain store", Status::Replayed)
    );
}

/// A plain call of `name`'s scope (see `support::calls::plain_duplicate`).
fn plain_duplicate(
    store: &PostgresStore,
    name: &'static str,
    key: &'static str,
    wait: Duration,
    runs: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<(Result<idem::Outcome<u32>, Error>, Duration)> {
    support::calls::plain_duplicate(store, scope(name), key, wait, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_duplicate_of_an_uncommitted_tokio_postgres_holder_waits_within_wait_and_never_runs_twice()
 {
    // A call on a `tokio_postgres::Transaction` is not `Send` (see the README): its tasks
    // are local ones.
    local(async move {
        let store = store().await;
        let (end, held) = holder(&store, "plain", "p1").await;
        // Bounded: in progress after its wait, the body not run (fail-open or not).
        let runs = Arc::new(AtomicUsize::new(0));
        let wait = Duration::from_millis(300);
        let (outcome, took) = plain_duplicate(&store, "plain", "p1", wait, runs.clone())
            .await
            .unwrap();
        assert!(
            matches!(outcome, Err(Error::InProgress { .. })),
            "{outcome:?}"
        );
        assert!(
            took >= wait && took < wait + Duration::from_millis(700),
            "{took:?}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 0, "no fail-open execution");

        // Waiting: the holder's commit ends the wait with its value.
        let waiter = plain_duplicate(&store, "plain", "p1", Duration::from_secs(10), runs.clone());
        let ended_at = Instant::now();
        end.send(true).unwrap();
        held.await.unwrap();
        let (outcome, _) = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the plain duplicate returns")
            .unwrap();
        let outcome = outcome.expect("the plain duplicate gets the committed value");
        println!(
            "the plain duplicate returned {:?} after the holder committed",
            ended_at.elapsed()
        );
        assert_eq!(outcome.value, 7, "{outcome:?}");
        assert!(
            matches!(outcome.status, Status::Waited | Status::Replayed),
            "{outcome:?}"
        );
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "the body ran once, in the holder"
        );
        assert_eq!(items("p1").await, 1);
        assert_eq!(records("p1").await, ["completed"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokio_postgres_duplicate_of_a_plain_holder_waits_and_its_transaction_stays_usable() {
    // A call on a `tokio_postgres::Transaction` is not `Send` (see the README): its tasks
    // are local ones.
    local(async move {
        let store = store().await;
        let (release, released) = oneshot::channel::<()>();
        let (running, is_running) = oneshot::channel::<()>();
        // The plain holder: its claim commits at once, its body runs until released.
        let plain = {
            let store = store.clone();
            tokio::spawn(async move {
                Call::new(scope("reverse"), "r1")
                    .store(store)
                    .run(async move {
                        let _ = running.send(());
                        released.await.unwrap();
                        7_u32
                    })
                    .await
                    .unwrap()
            })
        };
        is_running.await.unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let waiter = {
            let (store, runs) = (store.clone(), runs.clone());
            tokio::task::spawn_local(async move {
                let mut conn = client("idem-tokio-reverse").await;
                let mut tx = conn.transaction().await.unwrap();
                let outcome = Call::new(scope("reverse"), "r1")
                    .store(store)
                    .wait(Duration::from_secs(10))
                    .run_tx(&mut tx, async |_| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        8_u32
                    })
                    .await;
                // No lock wait ran out: the caller's transaction is still usable.
                let one: i32 = tx.query_one("SELECT 1", &[]).await.unwrap().get(0);
                tx.commit().await.unwrap();
                (outcome, one)
            })
        };
        release.send(()).unwrap();
        let (outcome, one) = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the duplicate returns")
            .unwrap();
        let outcome = outcome.unwrap();
        assert_eq!(outcome.value, 7, "{outcome:?}");
        assert!(
            matches!(outcome.status, Status::Waited | Status::Replayed),
            "{outcome:?}"
        );
        assert_eq!(one, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        assert_eq!(plain.await.unwrap().status, Status::Executed);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_repeatable_read_a_concurrent_claim_is_a_retryable_conflict() {
    // A call on a `tokio_postgres::Transaction` is not `Send` (see the README): its tasks
    // are local ones.
    local(async move {
        let store = store().await;
        let (end, held) = holder(&store, "isolation", "rr1").await;
        let (snapshot, has_snapshot) = oneshot::channel::<()>();
        let attempt = {
            let store = store.clone();
            tokio::task::spawn_local(async move {
                let mut conn = client("idem-tokio-isolation").await;
                let mut tx = conn
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .start()
                    .await
                    .unwrap();
                // The snapshot is taken before the holder commits.
                tx.batch_execute("SELECT 1").await.unwrap();
                let _ = snapshot.send(());
                let outcome = Call::new(scope("isolation"), "rr1")
                    .store(store)
                    .run_tx(&mut tx, async |_| 0_u32)
                    .await;
                tx.rollback().await.unwrap();
                outcome
            })
        };
        has_snapshot.await.unwrap();
        waiting_on_a_lock("idem-tokio-isolation").await;
        end.send(true).unwrap();
        held.await.unwrap();
        let outcome = attempt.await.unwrap();
        let Err(Error::Conflict { .. }) = outcome else {
            panic!("{outcome:?}")
        };
        // Retried as a whole: the committed record is replayed.
        let mut conn = client("idem-tokio-isolation").await;
        let mut tx = conn
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await
            .unwrap();
        let retried = Call::new(scope("isolation"), "rr1")
            .store(store.clone())
            .run_tx(&mut tx, async |_: &mut Transaction<'_>| 0_u32)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!((retried.value, retried.status), (7, Status::Replayed));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_a_config_error_and_the_transaction_stays_usable() {
    let server = server();
    server.psql("CREATE DATABASE no_table");
    let config = format!(
        "host=127.0.0.1 port={} user=postgres dbname=no_table",
        server.port()
    );
    let (mut conn, connection) = tokio_postgres::connect(&config, NoTls).await.unwrap();
    tokio::spawn(connection);
    conn.batch_execute("CREATE TABLE items (key text PRIMARY KEY, note text NOT NULL)")
        .await
        .unwrap();
    // A store that is not PostgreSQL: the default table, missing in this database.
    idem::with_store(idem::MemoryStore::new(), async {
        let mut tx = conn.transaction().await.unwrap();
        insert(tx.client(), "before", "the caller's own")
            .await
            .unwrap();
        let error = Call::new(scope("no_table"), "n1")
            .run_tx(&mut tx, async |_: &mut Transaction<'_>| 0_u32)
            .await
            .unwrap_err();
        let Error::Config(message) = &error else {
            panic!("{error:?}")
        };
        assert!(message.contains("CREATE TABLE"), "{message}");
        assert!(message.contains("still usable"), "{message}");
        // Not aborted: the table can be created in the same transaction, the call run again.
        assert_eq!(items_in(tx.client(), "before").await, 1);
        tx.batch_execute(idem::postgres::MIGRATION).await.unwrap();
        let done = Call::new(scope("no_table"), "n1")
            .run_tx(&mut tx, async |conn: &mut Transaction<'_>| {
                insert(conn.client(), "n1", "after the table")
                    .await
                    .unwrap();
                5_u32
            })
            .await
            .unwrap();
        assert_eq!((done.value, done.status), (5, Status::Executed));
        tx.commit().await.unwrap();
    })
    .await;
}

/// The statements `application`'s connections sent while `f` ran, from the server's log.
async fn sent_during<F: Future>(application: &str, f: F) -> (F::Output, Vec<String>) {
    let before = server().statements(application).len();
    let out = f.await;
    let after = server().statements(application);
    (out, after[before..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_call_sends_two_statements_or_four_with_the_savepoint_and_a_replay_one() {
    const COUNTED: &str = "idem-tokio-counted";
    let store = store().await;
    let mut conn = client(COUNTED).await;
    let call = |key: &str| Call::new(scope("count"), key.to_owned()).store(store.clone());

    let mut tx = conn.transaction().await.unwrap();
    let (first, plain) = sent_during(
        COUNTED,
        call("c1").run_tx(&mut tx, async |conn: &mut Transaction<'_>| {
            insert(conn.client(), "c1", "counted").await.unwrap();
            1_u32
        }),
    )
    .await;
    assert_eq!(first.unwrap().status, Status::Executed);
    let (again, replay) = sent_during(
        COUNTED,
        call("c1").run_tx(&mut tx, async |_: &mut Transaction<'_>| -> u32 {
            unreachable!("replayed")
        }),
    )
    .await;
    assert_eq!(again.unwrap().status, Status::Replayed);
    let (result, savepoint) = sent_during(
        COUNTED,
        call("c2").run_result_tx(&mut tx, async |conn: &mut Transaction<'_>| {
            insert(conn.client(), "c2", "counted").await.unwrap();
            Ok::<u32, String>(2)
        }),
    )
    .await;
    assert_eq!(result.unwrap().status, Status::Executed);
    tx.commit().await.unwrap();
    let (own, on_client) = sent_during(
        COUNTED,
        call("c3").run_tx(&mut conn, async |conn: &mut Client| {
            insert(conn, "c3", "counted").await.unwrap();
            3_u32
        }),
    )
    .await;
    assert_eq!(own.unwrap().status, Status::Executed);

    println!(
        "first call (plain T): {plain:#?}\nreplay: {replay:#?}\nfirst call (Result, releasable errors): {savepoint:#?}\nfirst call on a Client: {on_client:#?}"
    );
    let body_sent = |sent: &[String]| {
        sent.iter()
            .filter(|s| s.starts_with("INSERT INTO items"))
            .count()
    };
    // The first claim of the process looked for the table once: that look is the store's
    // (a `to_regclass`), not counted among a call's statements below.
    let idem_sent = |sent: &[String]| -> Vec<String> {
        sent.iter()
            .filter(|s| !s.starts_with("INSERT INTO items") && !s.contains("to_regclass"))
            .cloned()
            .collect()
    };
    assert_eq!(body_sent(&plain), 1);
    let plain = idem_sent(&plain);
    assert_eq!(plain.len(), 2, "claim + complete: {plain:#?}");
    assert!(plain[0].starts_with("WITH cfg AS"), "{plain:#?}");
    assert!(plain[1].starts_with("UPDATE "), "{plain:#?}");
    assert_eq!(replay.len(), 1, "a replay is the claim alone: {replay:#?}");
    assert!(replay[0].starts_with("WITH cfg AS"), "{replay:#?}");
    let savepoint = idem_sent(&savepoint);
    assert_eq!(
        savepoint.len(),
        4,
        "claim, SAVEPOINT, complete, RELEASE: {savepoint:#?}"
    );
    assert!(savepoint[1].starts_with("SAVEPOINT"), "{savepoint:#?}");
    assert!(
        savepoint[3].starts_with("RELEASE SAVEPOINT"),
        "{savepoint:#?}"
    );
    let on_client = idem_sent(&on_client);
    assert_eq!(
        on_client.len(),
        4,
        "BEGIN, claim, complete, COMMIT: {on_client:#?}"
    );
    assert_eq!(on_client[0], "BEGIN", "{on_client:#?}");
    assert_eq!(on_client[3], "COMMIT", "{on_client:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_transactions_on_one_key_write_one_row_and_get_one_value() {
    // A call on a `tokio_postgres::Transaction` is not `Send` (see the README): its tasks
    // are local ones.
    local(async move {
        let store = store().await;
        let runs = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(64));
        let tasks: Vec<_> = (0..64_u32)
            .map(|caller| {
                let (store, runs, start) = (store.clone(), runs.clone(), start.clone());
                tokio::task::spawn_local(async move {
                    let mut conn = client("idem-tokio-64").await;
                    let mut tx = conn.transaction().await.unwrap();
                    start.wait().await;
                    let outcome = Call::new(scope("sixty_four"), "order-64")
                        .store(store)
                        .wait(Duration::from_secs(20))
                        .run_tx(&mut tx, async |conn| {
                            runs.fetch_add(1, Ordering::SeqCst);
                            insert(conn.client(), "order-64", "the one").await.unwrap();
                            caller
                        })
                        .await
                        .expect("every caller gets the value");
                    tx.commit().await.unwrap();
                    outcome
                })
            })
            .collect();
        let mut statuses = Vec::new();
        let mut values = HashSet::new();
        for task in tasks {
            let outcome = task.await.unwrap();
            statuses.push(outcome.status);
            values.insert(outcome.value);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one execution");
        assert_eq!(items("order-64").await, 1, "one business row");
        assert_eq!(
            statuses.iter().filter(|s| **s == Status::Executed).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(values.len(), 1, "the same value for all: {values:?}");
    })
    .await;
}

/// The attribute on a tokio-postgres transaction: the body is unchanged.
#[idem::idempotent(key = key, tx = conn, scope = "tokio_tx::macro")]
async fn record_item(conn: &mut Transaction<'_>, key: &str, runs: &AtomicUsize) -> u32 {
    runs.fetch_add(1, Ordering::SeqCst);
    insert(conn.client(), key, "by the attribute")
        .await
        .unwrap();
    key.len() as u32
}

/// The attribute on a client outside a transaction.
#[idem::idempotent(key = key, tx = conn, scope = "tokio_tx::macro_client")]
async fn record_on_client(conn: &mut Client, key: &str) -> Result<u32, Refused> {
    insert(conn, key, "by the attribute, on a client")
        .await
        .map_err(|error| Refused(error.to_string()))?;
    Ok(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_objects_and_transactions_and_the_attribute_run_the_body_once() {
    let store = store().await;
    let mut config = deadpool_postgres::Config::new();
    config.host = Some("127.0.0.1".into());
    config.port = Some(server().port());
    config.user = Some("postgres".into());
    config.dbname = Some("postgres".into());
    config.application_name = Some("idem-tokio-deadpool".into());
    let pool = config
        .create_pool(Some(deadpool_postgres::Runtime::Tokio1), NoTls)
        .unwrap();
    let runs = AtomicUsize::new(0);
    let idem = idem::Idem::with_settings(store, &idem::Config::default());
    idem.scope(async {
        // `Call::run_tx` on a pool's `Object`: the body receives its client.
        let mut object = pool.get().await.unwrap();
        for expect in [Status::Executed, Status::Replayed] {
            let done = Call::new(scope("deadpool"), "dp1")
                .run_tx(&mut object, async |conn: &mut Client| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    insert(conn, "dp1", "on an object").await.unwrap();
                    1_u32
                })
                .await
                .unwrap();
            assert_eq!((done.value, done.status), (1, expect));
        }
        // On a pool's `Transaction`: the body receives tokio-postgres's.
        for _ in 0..2 {
            let mut tx = object.transaction().await.unwrap();
            Call::new(scope("deadpool"), "dp2")
                .run_tx(&mut tx, async |conn: &mut Transaction<'_>| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    insert(conn.client(), "dp2", "in a transaction")
                        .await
                        .unwrap();
                    2_u32
                })
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        // The attribute, called with them (deref): a transaction and an object.
        for _ in 0..3 {
            let mut tx = object.transaction().await.unwrap();
            assert_eq!(record_item(&mut tx, "dp3", &runs).await.unwrap(), 3);
            tx.commit().await.unwrap();
            assert_eq!(record_on_client(&mut object, "dp4").await, Ok(1));
        }
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 3, "one run per key");
    for key in ["dp1", "dp2", "dp3", "dp4"] {
        assert_eq!(items(key).await, 1, "{key}");
        assert_eq!(records(key).await, ["completed"], "{key}");
    }
}

/// A deadpool-postgres pool of one connection, named `application` on the server.
fn deadpool(application: &str) -> deadpool_postgres::Pool {
    let mut config = deadpool_postgres::Config::new();
    config.host = Some("127.0.0.1".into());
    config.port = Some(server().port());
    config.user = Some("postgres".into());
    config.dbname = Some("postgres".into());
    config.application_name = Some(application.into());
    config.pool = Some(deadpool_postgres::PoolConfig::new(1));
    config
        .create_pool(Some(deadpool_postgres::Runtime::Tokio1), NoTls)
        .unwrap()
}

/// How the server logged the executions of `application`'s statements that start with
/// `start`: `true` for a named (prepared) statement, `false` for an unnamed one.
fn named_executions(application: &str, start: &str) -> Vec<bool> {
    let marker = format!("] {application}: LOG:  execute ");
    server()
        .log()
        .lines()
        .filter_map(|line| line.split_once(&marker).map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once(": "))
        .filter(|(_, sql)| sql.starts_with(start))
        .map(|(name, _)| name != "<unnamed>")
        .collect()
}

/// The statements of a call that are idem's (not the body's insert, not the look for the
/// table, which only the first claim of a process through a table sends).
fn idem_statements(sent: &[String]) -> Vec<String> {
    sent.iter()
        .filter(|s| !s.starts_with("INSERT INTO items") && !s.contains("to_regclass"))
        .map(|s| {
            // The same statement, whoever sent it: its text up to its first line's end.
            s.lines().next().unwrap_or_default().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadpool_object_prepares_the_claim_and_completion_once_a_bare_client_prepares_nothing() {
    const CACHED: &str = "idem-tokio-cached";
    const BARE: &str = "idem-tokio-bare";
    let store = store().await;
    let call = |key: &str| Call::new(scope("cached"), key.to_owned()).store(store.clone());
    let pool = deadpool(CACHED);
    let mut object = pool.get().await.unwrap();
    assert_eq!(object.statement_cache.size(), 0, "a new connection");

    // Two first calls and a replay on the pool's `Object`, the body on its `Client`.
    let mut on_object = Vec::new();
    let mut sizes = Vec::new();
    for (key, expect) in [
        ("p1", Status::Executed),
        ("p2", Status::Executed),
        ("p2", Status::Replayed),
    ] {
        let (done, sent) = sent_during(
            CACHED,
            call(key).run_tx(&mut object, async |conn: &mut Client| {
                insert(conn, key, "prepared").await.unwrap();
                1_u32
            }),
        )
        .await;
        assert_eq!(done.unwrap().status, expect, "{key}");
        on_object.push(sent);
        sizes.push(object.statement_cache.size());
    }
    // The first call looked for the table if it was the first claim of this process.
    let looked = on_object[0].iter().any(|s| s.contains("to_regclass"));
    assert_eq!(
        sizes,
        [2 + usize::from(looked); 3],
        "claim and completion (and the look for the table) prepared once: {on_object:#?}"
    );
    // In the pool's `Transaction`: the same connection's cache, nothing more to prepare.
    let mut tx = object.transaction().await.unwrap();
    let (done, in_tx) = sent_during(
        CACHED,
        call("p3").run_tx(&mut tx, async |conn: &mut Transaction<'_>| {
            insert(conn.client(), "p3", "prepared, in a transaction")
                .await
                .unwrap();
            3_u32
        }),
    )
    .await;
    assert_eq!(done.unwrap().status, Status::Executed);
    tx.commit().await.unwrap();
    assert_eq!(object.statement_cache.size(), 2 + usize::from(looked));
    assert_eq!(
        idem_statements(&in_tx).len(),
        2,
        "claim, complete: {in_tx:#?}"
    );

    // The same calls on a bare `Client`.
    let mut bare = client(BARE).await;
    let mut on_client = Vec::new();
    for (key, expect) in [
        ("b1", Status::Executed),
        ("b2", Status::Executed),
        ("b2", Status::Replayed),
    ] {
        let (done, sent) = sent_during(
            BARE,
            call(key).run_tx(&mut bare, async |conn: &mut Client| {
                insert(conn, key, "unnamed").await.unwrap();
                1_u32
            }),
        )
        .await;
        assert_eq!(done.unwrap().status, expect, "{key}");
        on_client.push(sent);
    }

    // The same statements, as many, in the same order, whichever the connection.
    for (object, client) in on_object.iter().zip(&on_client) {
        assert_eq!(
            idem_statements(object),
            idem_statements(client),
            "on the object: {object:#?}\non a client: {client:#?}"
        );
    }
    assert_eq!(
        idem_statements(&on_object[0]).len(),
        4,
        "BEGIN, claim, complete, COMMIT"
    );
    assert_eq!(
        idem_statements(&on_object[2]).len(),
        3,
        "BEGIN, claim, COMMIT"
    );
    // The object's claims and completions are executions of named (prepared) statements, the
    // client's of unnamed ones.
    for (start, on_object, on_client) in [("WITH cfg AS", 4, 3), ("UPDATE ", 3, 2)] {
        assert_eq!(
            named_executions(CACHED, start),
            vec![true; on_object],
            "{start} on the object"
        );
        assert_eq!(
            named_executions(BARE, start),
            vec![false; on_client],
            "{start} on a client"
        );
    }
    for key in ["p1", "p2", "p3", "b1", "b2"] {
        assert_eq!(items(key).await, 1, "{key}");
        assert_eq!(records(key).await, ["completed"], "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_pooler_a_deadpool_object_prepares_nothing() {
    const POOLED: &str = "idem-tokio-pooler";
    let options = PostgresOptions::default()
        .create_table(false)
        .reaper_interval(None)
        .pooler(true);
    let store = PostgresStore::connect_with(&server().url(), options)
        .await
        .expect("connect the plain store");
    let call = |key: &str| Call::new(scope("pooler"), key.to_owned()).store(store.clone());
    let pool = deadpool(POOLED);
    let mut object = pool.get().await.unwrap();
    for (key, expect) in [
        ("q1", Status::Executed),
        ("q1", Status::Replayed),
        ("q2", Status::Executed),
    ] {
        let done = call(key)
            .run_tx(&mut object, async |conn: &mut Client| {
                insert(conn, key, "behind a pooler").await.unwrap();
                1_u32
            })
            .await
            .unwrap();
        assert_eq!(done.status, expect, "{key}");
    }
    let mut tx = object.transaction().await.unwrap();
    let done = call("q3")
        .run_tx(&mut tx, async |conn: &mut Transaction<'_>| {
            insert(conn.client(), "q3", "behind a pooler, in a transaction")
                .await
                .unwrap();
            1_u32
        })
        .await
        .unwrap();
    assert_eq!(done.status, Status::Executed);
    tx.commit().await.unwrap();
    assert_eq!(object.statement_cache.size(), 0, "nothing prepared");
    for (start, count) in [("WITH cfg AS", 4), ("UPDATE ", 3)] {
        assert_eq!(
            named_executions(POOLED, start),
            vec![false; count],
            "{start}"
        );
    }
    for key in ["q1", "q2", "q3"] {
        assert_eq!(records(key).await, ["completed"], "{key}");
    }
}

/// The attribute on a pool's `ClientWrapper`, called with an `Object`: its statements are
/// prepared in the connection's cache.
#[idem::idempotent(key = key, tx = conn, scope = "tokio_tx::macro_wrapper")]
async fn record_on_wrapper(
    conn: &mut deadpool_postgres::ClientWrapper,
    key: &str,
) -> Result<usize, Refused> {
    insert(conn, key, "by the attribute, on a pool's client")
        .await
        .map_err(|error| Refused(error.to_string()))?;
    Ok(conn.statement_cache.size())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attribute_on_a_client_wrapper_prepares_its_statements_in_the_pool_cache() {
    let idem = idem::Idem::with_settings(store().await, &idem::Config::default());
    let pool = deadpool("idem-tokio-wrapper");
    let mut object = pool.get().await.unwrap();
    idem.scope(async {
        // The body sees the claim prepared (and the look for the table: the first claim of
        // this process through the table); the completion comes after it.
        let first = record_on_wrapper(&mut object, "w1").await.unwrap();
        assert!((1..=2).contains(&first), "{first}");
        assert_eq!(object.statement_cache.size(), first + 1);
        // Replayed: the body's value, nothing more prepared.
        assert_eq!(record_on_wrapper(&mut object, "w1").await, Ok(first));
        assert_eq!(object.statement_cache.size(), first + 1);
    })
    .await;
    assert_eq!(items("w1").await, 1);
    assert_eq!(records("w1").await, ["completed"]);
}
