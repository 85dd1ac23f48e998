//! The transactional mode (`Call::run_tx`, `#[idempotent(tx = conn)]`) on a PostgreSQL the
//! test starts: the record commits and rolls back with the body's writes, a duplicate waits on
//! PostgreSQL's lock (not a lease), released errors leave no trace, a connection outside a
//! transaction gets its own, the plain store sees the records (and the reverse), serialization
//! failures are `Error::Conflict`, the statements each call sends, and 64 concurrent
//! transactions on one key.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::{Call, Error, PostgresOptions, PostgresStore, Status};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor};
use support::postgres::PostgresServer;
use tokio::sync::{Barrier, oneshot};
use tokio::time::Instant;

/// The application name of the connections whose statements a test counts.
const COUNTED: &str = "idem-tx-counted";

/// The server, the plain store on it (which creates `public.idem_records`), the business
/// table, and a pool of the application's own.
async fn setup() -> (PostgresServer, PostgresStore, PgPool) {
    let server = PostgresServer::start();
    let options = PostgresOptions::default().reaper_interval(None);
    let store = PostgresStore::connect_with(&server.url(), options)
        .await
        .expect("connect the plain store");
    let pool = PgPoolOptions::new()
        .max_connections(80)
        .connect(&server.url())
        .await
        .expect("the application's pool");
    pool.execute("CREATE TABLE items (key text PRIMARY KEY, note text NOT NULL)")
        .await
        .expect("the business table");
    (server, store, pool)
}

fn scope(name: &str) -> String {
    format!("tx::{name}")
}

/// Inserts the business row of `key` through `conn`.
async fn insert(conn: &mut PgConnection, key: &str, note: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO items (key, note) VALUES ($1, $2)")
        .bind(key)
        .bind(note)
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

async fn items(pool: &PgPool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items WHERE key = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The committed records whose store key ends with `key`, and their state.
async fn records(pool: &PgPool, key: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT state FROM idem_records WHERE key LIKE '%:' || $1")
        .bind(key)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_commits_and_rolls_back_with_the_body_and_a_replay_does_not_run_it() {
    let (_server, store, pool) = setup().await;
    let runs = AtomicUsize::new(0);
    let call = || Call::new(scope("commit"), "k1").store(store.clone());
    let body = async |conn: &mut PgConnection| {
        runs.fetch_add(1, Ordering::SeqCst);
        insert(conn, "k1", "first").await.unwrap();
        41_u32
    };

    // Rolled back: neither the business row nor the record stays.
    let mut tx = pool.begin().await.unwrap();
    let first = call().run_tx(&mut tx, body).await.unwrap();
    assert_eq!((first.value, first.status), (41, Status::Executed));
    tx.rollback().await.unwrap();
    assert_eq!(items(&pool, "k1").await, 0);
    assert!(records(&pool, "k1").await.is_empty());

    // Committed: both.
    let mut tx = pool.begin().await.unwrap();
    let body = async |conn: &mut PgConnection| {
        runs.fetch_add(1, Ordering::SeqCst);
        insert(conn, "k1", "second").await.unwrap();
        42_u32
    };
    let second = call().run_tx(&mut tx, body).await.unwrap();
    assert_eq!((second.value, second.status), (42, Status::Executed));
    tx.commit().await.unwrap();
    assert_eq!(items(&pool, "k1").await, 1);
    assert_eq!(records(&pool, "k1").await, ["completed"]);

    // A replay, in another transaction: the stored value, the body not run.
    let mut tx = pool.begin().await.unwrap();
    let again = call()
        .run_tx(&mut tx, async |_: &mut PgConnection| -> u32 {
            unreachable!("replayed")
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((again.value, again.status), (42, Status::Replayed));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Starts a transaction that claims `key` and runs a body that inserts its business row and
/// then waits; returns the sender that ends the transaction (`true` commits, `false` rolls
/// back, dropped: the connection is closed mid-transaction).
async fn holder(
    server: &PostgresServer,
    store: &PostgresStore,
    name: &'static str,
    key: &'static str,
) -> (oneshot::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (end, ended) = oneshot::channel::<bool>();
    let (started, is_started) = oneshot::channel::<()>();
    let options: PgConnectOptions = server.url().parse().unwrap();
    let mut conn = PgConnection::connect_with(&options.application_name("idem-tx-holder"))
        .await
        .unwrap();
    let store = store.clone();
    let task = tokio::spawn(async move {
        let mut tx = conn.begin().await.unwrap();
        let outcome = Call::new(scope(name), key)
            .store(store)
            .run_tx(&mut tx, async |conn: &mut PgConnection| {
                insert(conn, key, "holder").await.unwrap();
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
                drop(tx);
                conn.close_hard().await.unwrap();
            }
        }
    });
    is_started.await.unwrap();
    (end, task)
}

/// A duplicate in another transaction: runs `call` with a body that counts its runs.
fn duplicate(
    pool: &PgPool,
    store: &PostgresStore,
    name: &'static str,
    key: &'static str,
    wait: Duration,
    runs: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<(Result<idem::Outcome<u32>, Error>, Duration)> {
    let (pool, store) = (pool.clone(), store.clone());
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tx = pool.begin().await.unwrap();
        let outcome = Call::new(scope(name), key)
            .store(store)
            .wait(wait)
            .run_tx(&mut tx, async |conn: &mut PgConnection| {
                runs.fetch_add(1, Ordering::SeqCst);
                insert(conn, key, "duplicate").await.unwrap();
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
    let (server, store, pool) = setup().await;
    for (key, ending) in [
        ("commits", Some(true)),
        ("rolls-back", Some(false)),
        ("dies", None),
    ] {
        let (end, held) = holder(&server, &store, "lock", key).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let waiter = duplicate(
            &pool,
            &store,
            "lock",
            key,
            Duration::from_secs(10),
            runs.clone(),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiter.is_finished(),
            "{key}: the duplicate waits on the lock"
        );
        let ended_at = Instant::now();
        match ending {
            Some(commit) => end.send(commit).unwrap(),
            None => drop(end),
        }
        held.await.unwrap();
        let (outcome, _) = waiter.await.unwrap();
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
        assert_eq!(items(&pool, key).await, 1, "{key}");
        assert_eq!(records(&pool, key).await, ["completed"], "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_bounds_the_lock_wait_with_in_progress_and_the_caller_rolls_back() {
    let (server, store, pool) = setup().await;
    let (end, held) = holder(&server, &store, "bounded", "b1").await;
    let runs = Arc::new(AtomicUsize::new(0));
    let (outcome, took) = duplicate(
        &pool,
        &store,
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
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '1234ms'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let replay = Call::new(scope("bounded"), "b1")
        .store(store.clone())
        .run_tx(&mut tx, async |_: &mut PgConnection| 0_u32)
        .await
        .unwrap();
    assert_eq!((replay.value, replay.status), (7, Status::Replayed));
    let timeout: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(timeout, "1234ms");
    tx.commit().await.unwrap();
}

#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
struct Refused(String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_error_leaves_no_trace_and_a_stored_one_keeps_the_writes() {
    let (_server, store, pool) = setup().await;
    let mut tx = pool.begin().await.unwrap();
    insert(&mut tx, "before", "the caller's own").await.unwrap();
    let failed = Call::new(scope("errors"), "e1")
        .store(store.clone())
        .run_result_tx(&mut tx, async |conn: &mut PgConnection| {
            insert(conn, "e1", "written, then undone").await.unwrap();
            Err::<u32, _>(Refused("transient".into()))
        })
        .await
        .unwrap();
    assert_eq!(failed.value, Err(Refused("transient".into())));
    // The transaction is usable, without the body's row or the claim, with the caller's.
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE key = 'e1'")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(inside, 0);
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM idem_records WHERE key LIKE '%:e1'")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(claims, 0);
    // A retry in the same transaction runs again.
    let retried = Call::new(scope("errors"), "e1")
        .store(store.clone())
        .run_result_tx(&mut tx, async |conn: &mut PgConnection| {
            insert(conn, "e1", "the retry").await.unwrap();
            Ok::<u32, Refused>(5)
        })
        .await
        .unwrap();
    assert_eq!((retried.value, retried.status), (Ok(5), Status::Executed));
    tx.commit().await.unwrap();
    assert_eq!(items(&pool, "before").await, 1);
    assert_eq!(items(&pool, "e1").await, 1);

    // A stored error keeps the body's writes, and is replayed.
    for expect in [Status::Executed, Status::Replayed] {
        let mut tx = pool.begin().await.unwrap();
        let stored = Call::new(scope("errors"), "e2")
            .store(store.clone())
            .run_result_caching_tx(
                &mut tx,
                |_: &Refused| true,
                async |conn: &mut PgConnection| {
                    insert(conn, "e2", "kept with the error").await.unwrap();
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
    assert_eq!(items(&pool, "e2").await, 1);
    assert_eq!(records(&pool, "e2").await, ["completed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_outside_a_transaction_gets_one_of_its_own() {
    let (_server, store, pool) = setup().await;
    let mut conn = pool.acquire().await.unwrap();
    assert!(!conn.is_in_transaction());
    let done = Call::new(scope("own"), "o1")
        .store(store.clone())
        .run_tx(&mut conn, async |conn: &mut PgConnection| {
            assert!(conn.is_in_transaction(), "the body runs in a transaction");
            insert(conn, "o1", "committed by idem").await.unwrap();
            3_u8
        })
        .await
        .unwrap();
    assert_eq!(done.value, 3);
    assert!(!conn.is_in_transaction());
    assert_eq!(items(&pool, "o1").await, 1);
    assert_eq!(records(&pool, "o1").await, ["completed"]);
    // A released error rolls the call's own transaction back.
    let failed = Call::new(scope("own"), "o2")
        .store(store.clone())
        .run_result_tx(&mut conn, async |conn: &mut PgConnection| {
            insert(conn, "o2", "rolled back").await.unwrap();
            Err::<u8, _>("no")
        })
        .await
        .unwrap();
    assert_eq!(failed.value, Err("no"));
    assert!(!conn.is_in_transaction());
    assert_eq!(items(&pool, "o2").await, 0);
    assert!(records(&pool, "o2").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_store_replays_a_transactional_record_and_the_reverse() {
    let (_server, store, pool) = setup().await;
    let mut tx = pool.begin().await.unwrap();
    Call::new(scope("interop"), "i1")
        .store(store.clone())
        .run_tx(&mut tx, async |conn: &mut PgConnection| {
            insert(conn, "i1", "tx").await.unwrap();
            "from tx".to_owned()
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
        ("from tx", Status::Replayed)
    );

    Call::new(scope("interop"), "i2")
        .store(store.clone())
        .run(async { "from the plain store".to_owned() })
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let replayed = Call::new(scope("interop"), "i2")
        .store(store.clone())
        .run_tx(&mut tx, async |_: &mut PgConnection| -> String {
            unreachable!("replayed")
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (replayed.value.as_str(), replayed.status),
        ("from the plain store", Status::Replayed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_repeatable_read_a_concurrent_claim_is_a_retryable_conflict() {
    let (server, store, pool) = setup().await;
    for (level, begin, key) in [
        (
            "REPEATABLE READ",
            "BEGIN ISOLATION LEVEL REPEATABLE READ",
            "r1",
        ),
        ("SERIALIZABLE", "BEGIN ISOLATION LEVEL SERIALIZABLE", "s1"),
    ] {
        let (end, held) = holder(&server, &store, "isolation", key).await;
        let conn = pool.acquire().await.unwrap();
        let store2 = store.clone();
        let (snapshot, has_snapshot) = oneshot::channel::<()>();
        let attempt = tokio::spawn(async move {
            let mut conn = conn;
            let mut tx = conn.begin_with(begin).await.unwrap();
            // The snapshot is taken before the holder commits.
            sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
            let _ = snapshot.send(());
            let outcome = Call::new(scope("isolation"), key)
                .store(store2)
                .run_tx(&mut tx, async |_: &mut PgConnection| 0_u32)
                .await;
            tx.rollback().await.unwrap();
            (outcome, conn)
        });
        has_snapshot.await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        end.send(true).unwrap();
        held.await.unwrap();
        let (outcome, mut conn) = attempt.await.unwrap();
        let Err(Error::Conflict { .. }) = outcome else {
            panic!("{level}: {outcome:?}")
        };
        // Retried as a whole: the committed record is replayed.
        let mut tx = conn.begin_with(begin).await.unwrap();
        let retried = Call::new(scope("isolation"), key)
            .store(store.clone())
            .run_tx(&mut tx, async |_: &mut PgConnection| 0_u32)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            (retried.value, retried.status),
            (7, Status::Replayed),
            "{level}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_a_config_error_with_the_sql_to_run_and_the_transaction_stays_usable() {
    let server = PostgresServer::start();
    let mut conn = PgConnection::connect(&server.url()).await.unwrap();
    conn.execute("CREATE TABLE items (key text PRIMARY KEY, note text NOT NULL)")
        .await
        .unwrap();
    // Configured explicitly: a store that is not PostgreSQL, so the default table is used.
    idem::with_store(idem::MemoryStore::new(), async {
        let mut tx = conn.begin().await.unwrap();
        insert(&mut tx, "before", "the caller's own").await.unwrap();
        let error = Call::new(scope("no_table"), "n1")
            .run_tx(&mut tx, async |_: &mut PgConnection| 0_u32)
            .await
            .unwrap_err();
        let Error::Config(message) = &error else {
            panic!("{error:?}")
        };
        assert!(message.contains("CREATE TABLE"), "{message}");
        assert!(message.contains(r#""public"."idem_records""#), "{message}");
        assert!(message.contains("still usable"), "{message}");
        // Not aborted: the caller's writes are there, the table can be created in the same
        // transaction (the constant through `raw_sql`: it holds several statements), and
        // the call run again in it.
        assert_eq!(items_in(&mut tx, "before").await, 1);
        sqlx::raw_sql(idem::postgres::MIGRATION)
            .execute(&mut *tx)
            .await
            .unwrap();
        let done = Call::new(scope("no_table"), "n1")
            .run_tx(&mut tx, async |conn: &mut PgConnection| {
                insert(conn, "n1", "after the table").await.unwrap();
                5_u32
            })
            .await
            .unwrap();
        assert_eq!((done.value, done.status), (5, Status::Executed));
        tx.commit().await.unwrap();

        // Found once, the table is not looked for again: dropped since, it aborts the
        // transaction, and the error says so.
        let mut tx = conn.begin().await.unwrap();
        tx.execute("DROP TABLE idem_records").await.unwrap();
        let error = Call::new(scope("no_table"), "n2")
            .run_tx(&mut tx, async |_: &mut PgConnection| 0_u32)
            .await
            .unwrap_err();
        let Error::Config(message) = &error else {
            panic!("{error:?}")
        };
        assert!(message.contains("roll it back"), "{message}");
        tx.rollback().await.unwrap();
    })
    .await;
    let replayed: i64 = sqlx::query_scalar("SELECT count(*) FROM idem_records")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(replayed, 1, "the rollback kept the table and its record");
}

/// The business rows of `key` that `conn`'s transaction sees.
async fn items_in(conn: &mut PgConnection, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items WHERE key = $1")
        .bind(key)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_forget_through_another_store_say_where_transactional_records_live() {
    let (server, store, pool) = setup().await;
    let elsewhere = PostgresStore::connect_with(
        &server.url(),
        PostgresOptions::default()
            .table("other_records")
            .reaper_interval(None),
    )
    .await
    .unwrap();
    let config = idem::Config::default();
    // Written through the default table (the configured store is not PostgreSQL).
    let memory = idem::Idem::with_settings(idem::MemoryStore::new(), &config);
    memory
        .scope(async {
            let mut tx = pool.begin().await.unwrap();
            Call::new(scope("where"), "w1")
                .run_tx(&mut tx, async |conn: &mut PgConnection| {
                    insert(conn, "w1", "tx").await.unwrap();
                    1_u32
                })
                .await
                .unwrap();
            tx.commit().await.unwrap();
        })
        .await;
    for idem in [
        memory.clone(),
        idem::Idem::with_settings(elsewhere, &config),
    ] {
        let inspected = idem.scope(idem::inspect(&scope("where"), "w1")).await;
        let Err(Error::Config(message)) = &inspected else {
            panic!("{inspected:?}")
        };
        assert!(message.contains(r#""public"."idem_records""#), "{message}");
        assert!(message.contains("idem --store postgres://"), "{message}");
        let forgotten = idem.scope(idem::forget(&scope("where"), "w1")).await;
        assert!(matches!(forgotten, Err(Error::Config(_))), "{forgotten:?}");
        // Other scopes are answered as before.
        let other = idem.scope(idem::inspect(&scope("plain"), "w1")).await;
        assert_eq!(other.unwrap(), idem::Inspection::Absent);
    }
    // Through the PostgresStore on that table: the record, and it can be forgotten.
    let right = idem::Idem::with_settings(store, &config);
    let inspected = right
        .scope(idem::inspect(&scope("where"), "w1"))
        .await
        .unwrap();
    assert!(
        matches!(inspected, idem::Inspection::Completed { .. }),
        "{inspected:?}"
    );
    assert!(
        right
            .scope(idem::forget(&scope("where"), "w1"))
            .await
            .unwrap()
    );
    assert!(records(&pool, "w1").await.is_empty());
}

/// The statements `conn` sent while `f` ran, from the server's log.
async fn sent_during<F: Future>(server: &PostgresServer, f: F) -> (F::Output, Vec<String>) {
    let before = server.statements(COUNTED).len();
    let out = f.await;
    let after = server.statements(COUNTED);
    (out, after[before..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_call_adds_two_statements_or_four_with_the_savepoint_and_a_replay_one_or_a_bare_read()
 {
    let (server, store, _pool) = setup().await;
    let options: PgConnectOptions = server.url().parse().unwrap();
    let mut conn = PgConnection::connect_with(&options.application_name(COUNTED))
        .await
        .unwrap();
    let call = |key: &str| Call::new(scope("count"), key.to_owned()).store(store.clone());
    let body = |key: &'static str| {
        async move |conn: &mut PgConnection| {
            insert(conn, key, "counted").await.unwrap();
            1_u32
        }
    };
    // Prepares the statements on the connection.
    let mut tx = conn.begin().await.unwrap();
    for key in ["warm-a", "warm-b"] {
        call(key).run_tx(&mut tx, body(key)).await.unwrap();
        call(key).run_tx(&mut tx, body(key)).await.unwrap();
        call(key)
            .run_result_tx(&mut tx, async |conn: &mut PgConnection| {
                insert(conn, &format!("{key}-r"), "counted").await.unwrap();
                Ok::<u32, String>(1)
            })
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let mut tx = conn.begin().await.unwrap();
    let (first, plain) = sent_during(&server, call("c1").run_tx(&mut tx, body("c1"))).await;
    assert_eq!(first.unwrap().status, Status::Executed);
    let (again, replay) = sent_during(&server, call("c1").run_tx(&mut tx, body("c1"))).await;
    assert_eq!(again.unwrap().status, Status::Replayed);
    let (result, savepoint) = sent_during(
        &server,
        call("c2").run_result_tx(&mut tx, async |conn: &mut PgConnection| {
            insert(conn, "c2", "counted").await.unwrap();
            Ok::<u32, String>(2)
        }),
    )
    .await;
    assert_eq!(result.unwrap().status, Status::Executed);
    let (stored, every) = sent_during(&server, storing_errors(call("c3"), &mut tx)).await;
    assert_eq!(stored, Status::Executed);
    tx.commit().await.unwrap();

    println!(
        "first call (plain T): {plain:#?}\nreplay: {replay:#?}\nfirst call (Result, releasable errors): {savepoint:#?}\nfirst call (cache_err = true): {every:#?}"
    );
    let body_sent = |sent: &[String]| {
        sent.iter()
            .filter(|s| s.starts_with("INSERT INTO items"))
            .count()
    };
    assert_eq!(body_sent(&plain), 1);
    assert_eq!(plain.len() - 1, 2, "claim + complete: {plain:#?}");
    assert!(plain[0].starts_with("WITH cfg AS"), "{plain:#?}");
    assert!(plain[2].starts_with("UPDATE "), "{plain:#?}");
    assert_eq!(replay.len(), 1, "a replay is the claim alone: {replay:#?}");
    assert!(replay[0].starts_with("WITH cfg AS"), "{replay:#?}");
    assert_eq!(
        savepoint.len() - body_sent(&savepoint),
        4,
        "claim, SAVEPOINT, complete, RELEASE: {savepoint:#?}"
    );
    assert!(savepoint[1].starts_with("SAVEPOINT"), "{savepoint:#?}");
    assert!(
        savepoint[4].starts_with("RELEASE SAVEPOINT"),
        "{savepoint:#?}"
    );
    assert_eq!(
        every.len() - body_sent(&every),
        2,
        "claim + complete: {every:#?}"
    );

    // Once replays clearly outnumber first calls on the table (`ClaimOrder::Learnt`), a claim
    // reads first: a replay is the bare read of the live row, a first call adds three
    // statements (read, claim, complete).
    let mut tx = conn.begin().await.unwrap();
    for _ in 0..40 {
        let again = call("c1").run_tx(&mut tx, body("c1")).await.unwrap();
        assert_eq!(again.status, Status::Replayed);
    }
    let (again, read) = sent_during(&server, call("c1").run_tx(&mut tx, body("c1"))).await;
    assert_eq!(again.unwrap().status, Status::Replayed);
    assert_eq!(read.len(), 1, "a replay is the read alone: {read:#?}");
    assert!(read[0].starts_with("SELECT false, state"), "{read:#?}");
    let (first, sent) = sent_during(&server, call("c4").run_tx(&mut tx, body("c4"))).await;
    assert_eq!(first.unwrap().status, Status::Executed);
    tx.commit().await.unwrap();
    assert_eq!(body_sent(&sent), 1);
    assert_eq!(sent.len() - 1, 3, "read, claim, complete: {sent:#?}");
    assert!(sent[0].starts_with("SELECT false, state"), "{sent:#?}");
    assert!(sent[1].starts_with("WITH cfg AS"), "{sent:#?}");
    assert!(sent[3].starts_with("UPDATE "), "{sent:#?}");
}

/// `cache_err = true` through the attribute's runner: every error stored, no savepoint.
async fn storing_errors(call: Call, conn: &mut PgConnection) -> Status {
    let result: Result<u32, Refused> = idem::__private::run_result_storing_errors_tx(
        call,
        conn,
        async |conn: &mut PgConnection| {
            insert(conn, "c3", "counted").await.unwrap();
            Err(Refused("kept".into()))
        },
    )
    .await;
    assert_eq!(result, Err(Refused("kept".into())));
    Status::Executed
}

impl From<Error> for Refused {
    fn from(error: Error) -> Self {
        Refused(error.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_transactions_on_one_key_write_one_row_and_get_one_value() {
    let (_server, store, pool) = setup().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(64));
    let tasks: Vec<_> = (0..64_u32)
        .map(|caller| {
            let (store, pool, runs, start) =
                (store.clone(), pool.clone(), runs.clone(), start.clone());
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                start.wait().await;
                let outcome = Call::new(scope("sixty_four"), "order-64")
                    .store(store)
                    .wait(Duration::from_secs(20))
                    .run_tx(&mut tx, async |conn: &mut PgConnection| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        insert(conn, "order-64", "the one").await.unwrap();
                        tokio::time::sleep(Duration::from_millis(50)).await;
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
    assert_eq!(items(&pool, "order-64").await, 1, "one business row");
    assert_eq!(
        statuses.iter().filter(|s| **s == Status::Executed).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(values.len(), 1, "the same value for all: {values:?}");
}

/// The attribute: the body is unchanged, the connection keeps its name.
#[idem::idempotent(key = key, tx = conn, scope = "tx::macro")]
async fn record_item(conn: &mut PgConnection, key: &str, runs: &AtomicUsize) -> u32 {
    runs.fetch_add(1, Ordering::SeqCst);
    insert(conn, key, "by the attribute").await.unwrap();
    key.len() as u32
}

#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Idem(#[from] Error),
}

/// A fallible one: its errors roll the body's writes back to a savepoint.
#[idem::idempotent(key = key, tx = conn, scope = "tx::macro_result")]
async fn maybe_record(
    conn: &mut PgConnection,
    key: &str,
    fail: bool,
) -> Result<u32, TransferError> {
    insert(conn, key, "maybe").await.unwrap();
    if fail {
        return Err(TransferError::Refused(key.to_owned()));
    }
    Ok(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attribute_runs_the_body_once_in_the_callers_transaction() {
    let (_server, store, pool) = setup().await;
    let runs = AtomicUsize::new(0);
    let idem = idem::Idem::with_settings(store, &idem::Config::default());
    idem.scope(async {
        for _ in 0..3 {
            let mut tx = pool.begin().await.unwrap();
            assert_eq!(record_item(&mut tx, "m1", &runs).await.unwrap(), 2);
            tx.commit().await.unwrap();
        }
        let mut tx = pool.begin().await.unwrap();
        let failed = maybe_record(&mut tx, "m2", true).await;
        assert!(
            matches!(failed, Err(TransferError::Refused(_))),
            "{failed:?}"
        );
        assert_eq!(maybe_record(&mut tx, "m2", false).await.unwrap(), 1);
        tx.commit().await.unwrap();
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(items(&pool, "m1").await, 1);
    assert_eq!(items(&pool, "m2").await, 1);
    assert_eq!(records(&pool, "m1").await, ["completed"]);
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
async fn a_plain_duplicate_waits_past_the_statement_timeout_for_an_uncommitted_holder_and_replays()
{
    let (server, store, pool) = setup().await;
    let (end, held) = holder(&server, &store, "plain_waits", "p1").await;
    let runs = Arc::new(AtomicUsize::new(0));
    let waiter = plain_duplicate(
        &store,
        "plain_waits",
        "p1",
        Duration::from_secs(10),
        runs.clone(),
    );
    // Longer than the store's statement timeout (2 s): the lock wait is not a store failure.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert!(!waiter.is_finished(), "the duplicate still waits");
    let ended_at = Instant::now();
    end.send(true).unwrap();
    held.await.unwrap();
    let (outcome, _) = waiter.await.unwrap();
    let outcome = outcome.expect("the duplicate gets the committed value");
    let after = ended_at.elapsed();
    println!("the plain duplicate returned {after:?} after the holder committed");
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
    assert!(after < Duration::from_secs(1), "{after:?}");
    assert_eq!(items(&pool, "p1").await, 1);
    assert_eq!(records(&pool, "p1").await, ["completed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_duplicate_of_an_uncommitted_holder_gets_in_progress_after_its_wait_never_fail_open()
 {
    let (server, store, pool) = setup().await;
    let (end, held) = holder(&server, &store, "plain_bounded", "p2").await;
    // A wait shorter than the statement timeout, and one longer.
    for wait in [Duration::from_millis(300), Duration::from_millis(2_600)] {
        let runs = Arc::new(AtomicUsize::new(0));
        let (outcome, took) = plain_duplicate(&store, "plain_bounded", "p2", wait, runs.clone())
            .await
            .unwrap();
        println!("wait {wait:?}: {outcome:?} after {took:?}");
        assert!(
            matches!(outcome, Err(Error::InProgress { .. })),
            "wait {wait:?}: {outcome:?}"
        );
        assert!(
            took >= wait && took < wait + Duration::from_millis(700),
            "wait {wait:?}: {took:?}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 0, "no fail-open execution");
    }
    end.send(true).unwrap();
    held.await.unwrap();
    // Once the holder committed, a plain call replays its value.
    let runs = Arc::new(AtomicUsize::new(0));
    let (outcome, _) = plain_duplicate(
        &store,
        "plain_bounded",
        "p2",
        Duration::from_secs(1),
        runs.clone(),
    )
    .await
    .unwrap();
    let outcome = outcome.unwrap();
    assert_eq!((outcome.value, outcome.status), (7, Status::Replayed));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(items(&pool, "p2").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_duplicate_of_a_plain_holder_waits_or_gets_in_progress_and_its_transaction_stays_usable()
 {
    let (_server, store, pool) = setup().await;
    for (key, holds, expect_waited) in [
        ("r1", Duration::from_millis(2_500), true),
        ("r2", Duration::from_millis(4_000), false),
    ] {
        // The plain holder: its claim commits at once, its body runs for `holds`.
        let plain = {
            let store = store.clone();
            tokio::spawn(async move {
                Call::new(scope("reverse"), key)
                    .store(store)
                    .run(async move {
                        tokio::time::sleep(holds).await;
                        7_u32
                    })
                    .await
                    .unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tx = pool.begin().await.unwrap();
        let start = Instant::now();
        let outcome = Call::new(scope("reverse"), key)
            .store(store.clone())
            .wait(Duration::from_secs(3))
            .run_tx(&mut tx, async |_: &mut PgConnection| {
                runs.fetch_add(1, Ordering::SeqCst);
                8_u32
            })
            .await;
        let took = start.elapsed();
        println!("{key}: {outcome:?} after {took:?}");
        if expect_waited {
            let outcome = outcome.unwrap();
            assert_eq!((outcome.value, outcome.status), (7, Status::Waited));
        } else {
            assert!(
                matches!(outcome, Err(Error::InProgress { .. })),
                "{outcome:?}"
            );
            assert!(took >= Duration::from_secs(3), "{took:?}");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        // No lock wait ran out: the caller's transaction is still usable.
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(one, 1);
        tx.commit().await.unwrap();
        assert_eq!(plain.await.unwrap().status, Status::Executed);
    }
}
