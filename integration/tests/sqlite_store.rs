//! `SqliteStore` on database files of the tests' own: records that survive reopening, two
//! stores on one file (as two processes), waiters woken or polling, corrupt rows, a file locked
//! by another connection, the table and its options, the reaper.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::testing::{Forwarding, Op};
use idem::{Call, Error, Inspection, SqliteOptions, SqliteStore, Status, Store, StoreErrorKind};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use support::sqlite::TempDb;
use tokio::sync::{Barrier, oneshot};

/// Far longer than any test: a wait that ends before it was ended by something else.
const LONG: Duration = Duration::from_secs(600);

fn scope(name: &str) -> String {
    format!("sqlite::{name}")
}

fn key(scope: &str, key: &str) -> String {
    idem::testing::store_key("idem", scope, key)
}

/// The application's own connection to the test's file (created if missing).
async fn own_connection(db: &TempDb) -> SqliteConnection {
    SqliteConnection::connect(&format!("{}?mode=rwc", db.url()))
        .await
        .expect("open the test's own connection")
}

/// Starts a call on `key` whose body waits for the returned sender, with a lease that does not
/// end during the test.
async fn held(
    store: impl Into<idem::StoreHandle>,
    scope: &str,
    key: &str,
) -> (
    oneshot::Sender<u32>,
    tokio::task::JoinHandle<Result<idem::Outcome<u32>, Error>>,
) {
    let (finish, finished) = oneshot::channel::<u32>();
    let (started, is_started) = oneshot::channel::<()>();
    let task = tokio::spawn(
        Call::new(scope.to_owned(), key.to_owned())
            .store(store)
            .lease(LONG)
            .run(async move {
                let _ = started.send(());
                finished.await.unwrap_or(0)
            }),
    );
    is_started.await.unwrap();
    (finish, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_reopening_the_file() {
    let db = TempDb::new("reopen");
    let scope = scope("reopen");
    {
        let store = SqliteStore::open(&db.url()).await.unwrap();
        let first = Call::new(scope.clone(), "order-1")
            .store(store.clone())
            .run(async { "receipt-1".to_owned() })
            .await
            .unwrap();
        assert_eq!(first.status, Status::Executed);
    }
    let runs = AtomicUsize::new(0);
    let store = SqliteStore::open(&db.url()).await.unwrap();
    let again = Call::new(scope.clone(), "order-1")
        .store(store.clone())
        .run(async {
            runs.fetch_add(1, Ordering::SeqCst);
            "receipt-2".to_owned()
        })
        .await
        .unwrap();
    assert_eq!(
        (again.value.as_str(), again.status),
        ("receipt-1", Status::Replayed)
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the body does not run again"
    );
    let inspected = idem::with_store(store, idem::inspect(&scope, "order-1"))
        .await
        .unwrap();
    assert!(
        matches!(inspected, Inspection::Completed { .. }),
        "{inspected:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_duplicates_across_two_stores_on_one_file_run_once() {
    let db = TempDb::new("two_stores");
    // Two stores on one file share nothing but the file, as two processes would.
    let stores = [
        SqliteStore::open(&db.url()).await.unwrap(),
        SqliteStore::open(&db.url()).await.unwrap(),
    ];
    let scope = scope("sixty_four");
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|caller| {
            let store = stores[caller % 2].clone();
            let (scope, runs, start) = (scope.clone(), runs.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                Call::new(scope, "order-64")
                    .store(store)
                    .wait(Duration::from_secs(30))
                    .run(async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        caller
                    })
                    .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut values = HashSet::new();
    for task in tasks {
        let outcome = task.await.unwrap().expect("every caller gets the result");
        statuses.push(outcome.status);
        values.insert(outcome.value);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one execution");
    assert_eq!(
        statuses.iter().filter(|s| **s == Status::Executed).count(),
        1
    );
    assert!(
        statuses
            .iter()
            .all(|s| matches!(s, Status::Executed | Status::Waited | Status::Replayed)),
        "{statuses:?}"
    );
    assert_eq!(values.len(), 1, "the same value for all: {values:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_of_this_stores_call_is_woken_by_its_completion() {
    let db = TempDb::new("woken");
    // Neither a poll nor the holder's lease can end the wait within the test: only a wake-up.
    let options = SqliteOptions::default().poll_interval(LONG);
    let store = Forwarding::new(
        SqliteStore::connect_with(&db.url(), options.clone())
            .await
            .unwrap(),
    );
    let scope = scope("woken");
    let (finish, holder) = held(store.clone(), &scope, "k").await;
    let waiter = tokio::spawn(
        Call::new(scope.clone(), "k")
            .store(store.clone())
            .wait(LONG)
            .run(async { 0_u32 }),
    );
    store.waiting().await;
    finish.send(7).unwrap();
    assert_eq!(holder.await.unwrap().unwrap().status, Status::Executed);
    let waited = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the waiter is woken by the completion, not by a poll 600 s away")
        .unwrap()
        .unwrap();
    assert_eq!((waited.value, waited.status), (7, Status::Waited));
    assert_eq!(store.calls(Op::Wait), 1, "one wait, ended by the wake-up");
    assert_eq!(
        store.calls(Op::Claim),
        3,
        "the holder's claim, and the waiter's before and after its wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_in_another_store_sees_the_result_by_polling() {
    let db = TempDb::new("polled");
    let holding = SqliteStore::open(&db.url()).await.unwrap();
    let waiting = Forwarding::new(SqliteStore::open(&db.url()).await.unwrap());
    let scope = scope("polled");
    let (finish, holder) = held(holding, &scope, "k").await;
    let waiter = tokio::spawn(
        Call::new(scope.clone(), "k")
            .store(waiting.clone())
            .wait(LONG)
            .run(async { 0_u32 }),
    );
    waiting.waiting().await;
    finish.send(9).unwrap();
    assert_eq!(holder.await.unwrap().unwrap().status, Status::Executed);
    let waited = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the waiter looks again every 25 ms, within its one wait")
        .unwrap()
        .unwrap();
    assert_eq!((waited.value, waited.status), (9, Status::Waited));
    assert_eq!(waiting.calls(Op::Wait), 1, "the polls are within one wait");
    assert_eq!(waiting.calls(Op::Claim), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_typed_errors_and_never_run_the_body() {
    let db = TempDb::new("corrupt");
    let store = SqliteStore::open(&db.url()).await.unwrap();
    let mut own = own_connection(&db).await;
    let scope = scope("corrupt");
    let runs = Arc::new(AtomicUsize::new(0));
    let call = |name: &str| {
        let runs = runs.clone();
        Call::new(scope.clone(), name.to_owned())
            .store(store.clone())
            .run(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                1_u32
            })
    };
    assert_eq!(call("payload").await.unwrap().status, Status::Executed);
    assert_eq!(call("no-payload").await.unwrap().status, Status::Executed);
    runs.store(0, Ordering::SeqCst);

    // Payload bytes that are not an envelope, and a completed row without a payload.
    sqlx::query("UPDATE idem_records SET payload = x'00ff' WHERE key = ?1")
        .bind(key(&scope, "payload"))
        .execute(&mut own)
        .await
        .unwrap();
    sqlx::query("UPDATE idem_records SET payload = NULL WHERE key = ?1")
        .bind(key(&scope, "no-payload"))
        .execute(&mut own)
        .await
        .unwrap();
    for name in ["payload", "no-payload"] {
        match call(name).await {
            Err(Error::Decode {
                key: k, expected, ..
            }) => {
                assert_eq!((k, expected), (key(&scope, name), "u32"));
            }
            other => panic!("{name}: a corrupt record must be Error::Decode, got {other:?}"),
        }
    }

    // A claim whose token is not a token: the store cannot read it.
    sqlx::query(
        "INSERT INTO idem_records (key, state, token, expires_at) \
         VALUES (?1, 'in_progress', x'010203', CAST(unixepoch('subsec') * 1000 AS INTEGER) + 3600000)",
    )
    .bind(key(&scope, "token"))
    .execute(&mut own)
    .await
    .unwrap();
    match call("token").await {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Protocol, "{source}");
            assert!(source.to_string().contains("not 16 bytes"), "{source}");
        }
        other => panic!("an unreadable claim must be Error::Store, got {other:?}"),
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "no body ran over a corrupt row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_locked_past_busy_timeout_is_in_progress_within_wait_even_fail_open() {
    let db = TempDb::new("locked");
    let options = SqliteOptions::default()
        .busy_timeout(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(20));
    let store = SqliteStore::connect_with(&db.url(), options.clone())
        .await
        .unwrap();
    let scope = scope("locked");
    let done = Call::new(scope.clone(), "done")
        .store(store.clone())
        .run(async { 1_u8 })
        .await
        .unwrap();
    assert_eq!(done.status, Status::Executed);

    // Another connection holds the write lock: an application's transaction left open, which
    // may hold the key (a transactional call's claim, invisible until it commits).
    let mut locker = own_connection(&db).await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .unwrap();

    let runs = AtomicUsize::new(0);
    for fail_mode in [idem::FailMode::Closed, idem::FailMode::Open] {
        let config = idem::Config::default().fail_mode(fail_mode);
        let started = tokio::time::Instant::now();
        let blocked = idem::Idem::with_settings(store.clone(), &config)
            .scope(
                Call::new(scope.clone(), "new")
                    .wait(Duration::from_millis(700))
                    .run(async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        2_u8
                    }),
            )
            .await;
        assert!(
            matches!(blocked, Err(Error::InProgress { .. })),
            "{fail_mode:?}: a claim behind the lock is in progress, got {blocked:?}"
        );
        // It waited its `wait` (plus at most one try of busy_timeout), not just one try.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
            "{fail_mode:?}: waited {waited:?}"
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the body never ran, fail closed or open"
    );
    let replay = Call::new(scope.clone(), "done")
        .store(store.clone())
        .run(async { 3_u8 })
        .await
        .expect("a replay is a read, which the lock does not hold up");
    assert_eq!((replay.value, replay.status), (1, Status::Replayed));

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let after = Call::new(scope.clone(), "new")
        .store(store.clone())
        .run(async { 4_u8 })
        .await
        .unwrap();
    assert_eq!((after.value, after.status), (4, Status::Executed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_in_wal_mode_with_full_sync_unless_told_otherwise() {
    let db = TempDb::new("pragmas");
    let store = SqliteStore::open(&db.url()).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!((mode.as_str(), sync), ("wal", 2), "WAL, synchronous = FULL");
    assert!(db.path().exists(), "the file was created");

    let normal = SqliteStore::connect_with(&db.url(), SqliteOptions::default().full_sync(false))
        .await
        .unwrap();
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(normal.pool())
        .await
        .unwrap();
    assert_eq!(sync, 1, "synchronous = NORMAL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_is_created_where_configured_or_named_in_an_error() {
    let db = TempDb::new("table");
    let off = SqliteOptions::default().table("keys").create_table(false);
    let error = SqliteStore::connect_with(&db.url(), off.clone())
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    assert!(
        message.contains(r#"CREATE TABLE IF NOT EXISTS "keys""#),
        "{message}"
    );

    // Created by the application with the public SQL, then used as it is.
    let mut own = own_connection(&db).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(off.migration().unwrap()))
        .execute(&mut own)
        .await
        .unwrap();
    let store = SqliteStore::connect_with(&db.url(), off.clone())
        .await
        .unwrap();
    let scope = scope("custom_table");
    Call::new(scope.clone(), "k")
        .store(store.clone())
        .run(async { "receipt".to_owned() })
        .await
        .unwrap();
    let (state, payload): (String, Vec<u8>) =
        sqlx::query_as("SELECT state, payload FROM keys WHERE key = ?1")
            .bind(key(&scope, "k"))
            .fetch_one(&mut own)
            .await
            .unwrap();
    assert_eq!(state, "completed");
    assert!(String::from_utf8_lossy(&payload).contains("receipt"));
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_schema WHERE name = 'idem_records'")
            .fetch_one(&mut own)
            .await
            .unwrap();
    assert_eq!(tables, 0, "the default table was not created");

    // On by default: the default table and its index appear.
    let _default = SqliteStore::open(&db.url()).await.unwrap();
    let made: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_schema WHERE name IN ('idem_records', 'idem_records_expires_at')",
    )
    .fetch_one(&mut own)
    .await
    .unwrap();
    assert_eq!(made, 2);

    // A table of another shape is refused.
    sqlx::query("CREATE TABLE other (key TEXT PRIMARY KEY)")
        .execute(&mut own)
        .await
        .unwrap();
    let error = SqliteStore::connect_with(&db.url(), SqliteOptions::default().table("other"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_migration_runs_through_sqlx_migrate() {
    let db = TempDb::new("migrate");
    let mut own = own_connection(&db).await;
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../idem-runtime/migrations/sqlite");
    let migrator = sqlx::migrate::Migrator::new(shipped.as_path())
        .await
        .unwrap();
    migrator.run(&mut own).await.expect("sqlx migrate runs it");
    migrator.run(&mut own).await.expect("and finds it applied");
    let file = std::fs::read_to_string(shipped.join("20261201000000_idem_records.sql")).unwrap();
    assert_eq!(file, idem::sqlite::MIGRATION);
    let no_table = SqliteOptions::default().create_table(false);
    let store = SqliteStore::connect_with(&db.url(), no_table.clone())
        .await
        .expect("the table made by sqlx migrate is idem's");
    let done = Call::new(scope("migrated"), "k")
        .store(store)
        .run(async { 1_u8 })
        .await
        .unwrap();
    assert_eq!(done.status, Status::Executed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_deletes_expired_rows_in_bounded_batches() {
    let db = TempDb::new("reaper");
    let options = SqliteOptions::default()
        .reaper_interval(Some(Duration::from_millis(200)))
        .reaper_batch(10);
    let store = SqliteStore::connect_with(&db.url(), options.clone())
        .await
        .unwrap();
    let scope = scope("reaper");
    for key in 0..35 {
        Call::new(scope.clone(), key)
            .store(store.clone())
            .ttl(Duration::from_millis(50))
            .run(async { 1_u8 })
            .await
            .unwrap();
    }
    let live = Call::new(scope.clone(), "live")
        .store(store.clone())
        .ttl(Duration::from_secs(3600))
        .run(async { 2_u8 })
        .await
        .unwrap();
    assert_eq!(live.status, Status::Executed);
    let mut own = own_connection(&db).await;
    let mut left = i64::MAX;
    for _ in 0..200 {
        left = sqlx::query_scalar("SELECT count(*) FROM idem_records")
            .fetch_one(&mut own)
            .await
            .unwrap();
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 1, "the expired rows are reaped, the live one kept");
    let replay = Call::new(scope.clone(), "live")
        .store(store.clone())
        .run(async { 3_u8 })
        .await
        .unwrap();
    assert_eq!((replay.value, replay.status), (2, Status::Replayed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_the_applications_own_pool_shares_it() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    let db = TempDb::new("from_pool");
    let file = SqliteConnectOptions::new()
        .filename(db.path())
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePool::connect_with(file).await.unwrap();
    let options = SqliteOptions::default().table("from_pool");
    let store = SqliteStore::from_pool(pool.clone(), options.clone())
        .await
        .unwrap();
    assert!(
        store.describe().ends_with(r#"idem.db ("from_pool")"#),
        "{}",
        store.describe()
    );
    let scope = scope("from_pool");
    for expected in [Status::Executed, Status::Replayed] {
        let outcome = Call::new(scope.clone(), "k")
            .store(store.clone())
            .run(async { 4_u8 })
            .await
            .unwrap();
        assert_eq!((outcome.value, outcome.status), (4, expected));
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM from_pool")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}
