//! The transactional mode (`Call::run_tx`, `#[idempotent(tx = conn)]`) on SQLite files of the
//! tests' own: the record commits or rolls back with the body's writes, duplicates in other
//! transactions replay, a released error undoes the body's writes, and SQLite's one write lock
//! gives the answers its module documents (`Error::InProgress` for a key held by a lease,
//! `Error::Conflict` for a stale snapshot, `Error::Config` for a missing table).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::testing::within;
use idem::{Call, Error, SqliteStore, Status, idempotent};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use support::sqlite::TempDb;
use tokio::sync::Barrier;

/// A pool on the test's file in WAL mode, with idem's table and a table of orders.
async fn pool(db: &TempDb, connections: u32) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(db.path())
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .expect("open the test's file");
    sqlx::raw_sql(idem::sqlite::MIGRATION)
        .execute(&pool)
        .await
        .expect("idem's table");
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS orders (key TEXT NOT NULL, amount INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .expect("the orders table");
    pool
}

/// Inserts an order row for `key`.
async fn insert_order(conn: &mut SqliteConnection, key: &str, amount: i64) {
    sqlx::query("INSERT INTO orders (key, amount) VALUES (?1, ?2)")
        .bind(key)
        .bind(amount)
        .execute(conn)
        .await
        .expect("insert an order");
}

async fn orders(pool: &SqlitePool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE key = ?1")
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn records(pool: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM idem_records")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn call(key: &str) -> Call {
    // Records go to the default table of the connection's file: no store is installed.
    Call::new("sqlite-tx", key.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_commits_and_rolls_back_with_the_body() {
    let db = TempDb::new("tx-commit");
    let pool = pool(&db, 2).await;
    let runs = AtomicUsize::new(0);
    let body = async |conn: &mut SqliteConnection| {
        runs.fetch_add(1, Ordering::SeqCst);
        insert_order(conn, "o1", 10).await;
        10_i64
    };

    // Rolled back: no order, no record; the next call runs.
    let mut tx = pool.begin().await.unwrap();
    let first = call("o1").run_tx(&mut tx, body).await.unwrap();
    assert_eq!(first.status, Status::Executed);
    tx.rollback().await.unwrap();
    assert_eq!((orders(&pool, "o1").await, records(&pool).await), (0, 0));

    // Committed: one order, one record.
    let mut tx = pool.begin().await.unwrap();
    let second = call("o1").run_tx(&mut tx, body).await.unwrap();
    assert_eq!((second.value, second.status), (10, Status::Executed));
    tx.commit().await.unwrap();
    assert_eq!((orders(&pool, "o1").await, records(&pool).await), (1, 1));

    // Replayed in another transaction and on a bare pool connection (a transaction of its own).
    let mut tx = pool.begin().await.unwrap();
    let again = call("o1").run_tx(&mut tx, body).await.unwrap();
    tx.commit().await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let bare = call("o1").run_tx(&mut conn, body).await.unwrap();
    assert!(!conn.is_in_transaction());
    assert_eq!((again.value, again.status), (10, Status::Replayed));
    assert_eq!((bare.value, bare.status), (10, Status::Replayed));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(orders(&pool, "o1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_error_undoes_the_body_and_leaves_the_transaction_usable() {
    let db = TempDb::new("tx-release");
    let pool = pool(&db, 2).await;
    let mut tx = pool.begin().await.unwrap();
    insert_order(&mut tx, "before", 1).await;
    let failed = call("o2")
        .run_result_tx(&mut tx, async |conn: &mut SqliteConnection| {
            insert_order(conn, "o2", 20).await;
            Err::<i64, _>("declined".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(failed.value, Err("declined".to_owned()));
    // The caller's own write stays; the body's and the claim are gone.
    insert_order(&mut tx, "after", 1).await;
    tx.commit().await.unwrap();
    assert_eq!(orders(&pool, "before").await, 1);
    assert_eq!(orders(&pool, "after").await, 1);
    assert_eq!(orders(&pool, "o2").await, 0);
    assert_eq!(records(&pool).await, 0);

    // The key runs again, and a success is stored.
    let mut conn = pool.acquire().await.unwrap();
    let ok = call("o2")
        .run_result_tx(&mut conn, async |conn: &mut SqliteConnection| {
            insert_order(conn, "o2", 20).await;
            Ok::<i64, String>(20)
        })
        .await
        .unwrap();
    assert_eq!((ok.value, ok.status), (Ok(20), Status::Executed));
    assert_eq!((orders(&pool, "o2").await, records(&pool).await), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_error_on_a_bare_connection_leaves_neither_the_body_nor_a_record() {
    let db = TempDb::new("tx-release-bare");
    let pool = pool(&db, 2).await;
    let mut conn = pool.acquire().await.unwrap();
    // Outside any transaction: the call's own one, rolled back whole.
    let failed = call("o8")
        .run_result_tx(&mut conn, async |conn: &mut SqliteConnection| {
            insert_order(conn, "o8", 80).await;
            Err::<i64, _>("declined".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(
        (failed.value, failed.status),
        (Err("declined".to_owned()), Status::Executed)
    );
    assert!(!conn.is_in_transaction(), "its own transaction ended");
    assert_eq!((orders(&pool, "o8").await, records(&pool).await), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_in_their_own_transactions_run_the_body_once() {
    const CALLERS: usize = 64;
    let db = TempDb::new("tx-concurrent");
    let pool = pool(&db, CALLERS as u32).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(CALLERS));
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let (pool, runs, start) = (pool.clone(), runs.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            within("the other callers at the start", start.wait()).await;
            // Half on a bare connection (BEGIN IMMEDIATE by idem), half in a transaction the
            // caller began with BEGIN IMMEDIATE, as the module recommends.
            if caller % 2 == 0 {
                call("o3")
                    .run_tx(&mut conn, async |conn: &mut SqliteConnection| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        insert_order(conn, "o3", 30).await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        30_i64
                    })
                    .await
            } else {
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
                let outcome = call("o3")
                    .run_tx(&mut tx, async |conn: &mut SqliteConnection| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        insert_order(conn, "o3", 30).await;
                        30_i64
                    })
                    .await;
                tx.commit().await.unwrap();
                outcome
            }
        }));
    }
    let mut executed = 0;
    for task in tasks {
        let outcome = within("a caller's task", task)
            .await
            .unwrap()
            .expect("every duplicate replays");
        assert_eq!(outcome.value, 30);
        executed += usize::from(outcome.status == Status::Executed);
    }
    assert_eq!((executed, runs.load(Ordering::SeqCst)), (1, 1));
    assert_eq!((orders(&pool, "o3").await, records(&pool).await), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_by_a_plain_call_is_in_progress_at_once() {
    let db = TempDb::new("tx-held");
    let pool = pool(&db, 2).await;
    let store = SqliteStore::from_pool(pool.clone(), idem::SqliteOptions::default())
        .await
        .unwrap();
    let (finish, finished) = tokio::sync::oneshot::channel::<i64>();
    let (started, is_started) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(
        Call::new("sqlite-tx", "o4")
            .store(store.clone())
            .lease(Duration::from_secs(600))
            .run(async move {
                let _ = started.send(());
                finished.await.unwrap_or(0)
            }),
    );
    within("the holder's body to start", is_started)
        .await
        .unwrap();

    let mut conn = pool.acquire().await.unwrap();
    let begun = tokio::time::Instant::now();
    let error = Call::new("sqlite-tx", "o4")
        .store(store.clone())
        .wait(Duration::from_secs(30))
        .run_tx(&mut conn, async |_: &mut SqliteConnection| 0_i64)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InProgress { .. }), "{error}");
    assert!(
        begun.elapsed() < Duration::from_secs(10),
        "no wait on a holder that needs this transaction's lock"
    );
    assert!(!conn.is_in_transaction(), "its own transaction rolled back");
    finish.send(4).unwrap();
    let held = within("the holder's task", holder).await.unwrap();
    assert_eq!(held.unwrap().value, 4);

    // Once the holder completed, the transactional call replays it.
    let replay = Call::new("sqlite-tx", "o4")
        .store(store)
        .run_tx(&mut conn, async |_: &mut SqliteConnection| 0_i64)
        .await
        .unwrap();
    assert_eq!((replay.value, replay.status), (4, Status::Replayed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_snapshot_is_a_conflict_and_a_retry_replays() {
    let db = TempDb::new("tx-stale");
    let pool = pool(&db, 3).await;
    // A deferred transaction that read: its snapshot is taken.
    let mut stale = pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut *stale)
        .await
        .unwrap();
    // Another connection completes the key meanwhile.
    let mut other = pool.acquire().await.unwrap();
    call("o5")
        .run_tx(&mut other, async |conn: &mut SqliteConnection| {
            insert_order(conn, "o5", 50).await;
            50_i64
        })
        .await
        .unwrap();
    let runs = AtomicUsize::new(0);
    let error = call("o5")
        .run_tx(&mut stale, async |_: &mut SqliteConnection| {
            runs.fetch_add(1, Ordering::SeqCst);
            0_i64
        })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Conflict { .. }), "{error}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    stale.rollback().await.unwrap();

    // Retried in a new transaction, it replays.
    let mut tx = pool.begin().await.unwrap();
    let retried = call("o5")
        .run_tx(&mut tx, async |_: &mut SqliteConnection| 0_i64)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((retried.value, retried.status), (50, Status::Replayed));
    assert_eq!(orders(&pool, "o5").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_a_config_error_and_the_transaction_stays_usable() {
    let db = TempDb::new("tx-no-table");
    let mut conn = SqliteConnection::connect(&format!("{}?mode=rwc", db.url()))
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE orders (key TEXT NOT NULL, amount INTEGER NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut tx = conn.begin().await.unwrap();
    insert_order(&mut tx, "kept", 1).await;
    let error = call("o6")
        .run_tx(&mut tx, async |_: &mut SqliteConnection| 0_i64)
        .await
        .unwrap_err();
    let Error::Config(message) = &error else {
        panic!("expected a configuration error, got {error}");
    };
    assert!(message.contains("CREATE TABLE IF NOT EXISTS"), "{message}");
    // The migration runs in the same transaction, then the call succeeds, all in one commit.
    sqlx::raw_sql(idem::sqlite::MIGRATION)
        .execute(&mut *tx)
        .await
        .unwrap();
    let ran = call("o6")
        .run_tx(&mut tx, async |conn: &mut SqliteConnection| {
            insert_order(conn, "o6", 6).await;
            6_i64
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((ran.value, ran.status), (6, Status::Executed));
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 2);
}

/// The attribute on a SQLite connection, with the records in the table of the installed
/// `SqliteStore`'s file (the same file as the connection's).
#[idempotent(key = order, tx = conn)]
async fn place(conn: &mut SqliteConnection, order: &str, amount: i64) -> Result<i64, PlaceError> {
    if amount < 0 {
        return Err(PlaceError::Refused);
    }
    insert_order(conn, order, amount).await;
    Ok(amount)
}

#[derive(Debug, thiserror::Error)]
enum PlaceError {
    #[error("refused")]
    Refused,
    #[error(transparent)]
    Idem(#[from] idem::Error),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attribute_writes_through_the_connection() {
    let db = TempDb::new("tx-attribute");
    let pool = pool(&db, 2).await;
    let store = SqliteStore::from_pool(pool.clone(), idem::SqliteOptions::default())
        .await
        .unwrap();
    let idem = idem::Idem::with_settings(store, &idem::Config::default());
    idem.scope(async {
        let mut tx = pool.begin().await.unwrap();
        assert_eq!(place(&mut tx, "a1", 5).await.unwrap(), 5);
        assert_eq!(place(&mut tx, "a1", 99).await.unwrap(), 5, "replayed");
        assert!(matches!(
            place(&mut tx, "a2", -1).await,
            Err(PlaceError::Refused)
        ));
        tx.commit().await.unwrap();
        // The installed store reads the same table: an operator sees the record.
        let inspected = idem::inspect(concat!(module_path!(), "::place"), "a1")
            .await
            .unwrap();
        assert!(
            matches!(inspected, idem::Inspection::Completed { .. }),
            "{inspected:?}"
        );
    })
    .await;
    assert_eq!(
        (orders(&pool, "a1").await, orders(&pool, "a2").await),
        (1, 0)
    );
    assert_eq!(records(&pool).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_duplicate_of_an_uncommitted_holder_waits_and_never_runs_even_fail_open() {
    let db = TempDb::new("tx-plain-dup");
    let pool = pool(&db, 2).await;
    let options = idem::SqliteOptions::default()
        .busy_timeout(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(10));
    let store = SqliteStore::connect_with(&db.url(), options).await.unwrap();
    let open = idem::Config::default().fail_mode(idem::FailMode::Open);
    let plain = idem::Idem::with_settings(store.clone(), &open);
    let runs = AtomicUsize::new(0);

    // A transactional holder that has claimed the key and not committed.
    let mut tx = pool.begin().await.unwrap();
    let held = call("o7")
        .store(store.clone())
        .run_tx(&mut tx, async |conn: &mut SqliteConnection| {
            insert_order(conn, "o7", 70).await;
            70_i64
        })
        .await
        .unwrap();
    assert_eq!(held.status, Status::Executed);

    // A plain duplicate meanwhile: in progress within its wait, fail-open or not.
    let short = plain
        .scope(
            call("o7")
                .wait(Duration::from_millis(300))
                .run(async { runs.fetch_add(1, Ordering::SeqCst) as i64 }),
        )
        .await;
    assert!(matches!(short, Err(Error::InProgress { .. })), "{short:?}");

    // One that waits longer sees the commit and replays.
    let waiting = plain.scope(
        call("o7")
            .wait(Duration::from_secs(20))
            .run(async { runs.fetch_add(1, Ordering::SeqCst) as i64 }),
    );
    let commit = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.commit().await.unwrap();
    };
    let (replayed, ()) = tokio::join!(waiting, commit);
    let replayed = replayed.unwrap();
    assert_eq!((replayed.value, replayed.status), (70, Status::Waited));
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the plain body never ran");
    assert_eq!((orders(&pool, "o7").await, records(&pool).await), (1, 1));
}

/// The statements sqlx ran on a table, by their text, as the driver logs them (target
/// `sqlx::query`): counted for the statements that name `table` only, so that the other tests
/// of this process do not add to them.
#[derive(Clone, Default)]
struct Logged {
    table: &'static str,
    statements: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Logged {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.statements.lock().unwrap())
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logged {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if matches!(field.name(), "summary" | "db.statement") {
                    self.0.push_str(&format!("{value:?} "));
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if matches!(field.name(), "summary" | "db.statement") {
                    self.0.push_str(value);
                    self.0.push(' ');
                }
            }
        }
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let mut text = Text(String::new());
        event.record(&mut text);
        if text.0.contains(self.table) {
            let verb = text
                .0
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_uppercase();
            self.statements.lock().unwrap().push(verb);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_per_call_counted_through_the_driver() {
    use tracing_subscriber::layer::SubscriberExt;
    let logged = Logged {
        table: "idem_counted",
        ..Logged::default()
    };
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(logged.clone()))
        .expect("the only subscriber of this test's process");
    let db = TempDb::new("tx-statements");
    let pool = pool(&db, 2).await;
    let store = SqliteStore::from_pool(
        pool.clone(),
        idem::SqliteOptions::default().table("idem_counted"),
    )
    .await
    .unwrap();
    logged.take();
    let counted = |key: &str| call(key).store(store.clone());

    let mut tx = pool.begin().await.unwrap();
    counted("s1")
        .run_tx(&mut tx, async |_: &mut SqliteConnection| 1_i64)
        .await
        .unwrap();
    assert_eq!(
        logged.take(),
        ["SELECT", "INSERT", "UPDATE"],
        "a first call"
    );
    let replay = counted("s1")
        .run_tx(&mut tx, async |_: &mut SqliteConnection| 2_i64)
        .await
        .unwrap();
    assert_eq!(replay.status, Status::Replayed);
    assert_eq!(logged.take(), ["SELECT"], "a replay");
    // A released error: its claim is deleted after the rollback to the savepoint.
    counted("s2")
        .run_result_tx(&mut tx, async |_: &mut SqliteConnection| {
            Err::<i64, String>("no".into())
        })
        .await
        .unwrap();
    assert_eq!(
        logged.take(),
        ["SELECT", "INSERT", "DELETE"],
        "a released error"
    );
    tx.commit().await.unwrap();
}

/// A transactional body reads its call as a plain one does: the key it derives for a
/// downstream system is the one a plain call of the same scope and key derives, and a retry
/// after a rollback derives it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_body_derives_the_keys_of_its_call() {
    let db = TempDb::new("tx-derived");
    let pool = pool(&db, 2).await;
    let derived = async |conn: &mut SqliteConnection| {
        insert_order(conn, "derived", 1).await;
        let call = idem::call_context().expect("a transactional body sees its call");
        (call.key().to_owned(), idem::derive_key("charge").unwrap())
    };
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let rolled_back = call("derived").run_tx(&mut tx, derived).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let committed = call("derived").run_tx(&mut tx, derived).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(committed.status, Status::Executed);
    assert_eq!(
        committed.value, rolled_back.value,
        "the retry after a rollback derives the same key"
    );
    assert_eq!(committed.value.0, "idem:sqlite-tx:derived");
    let plain = idem::Idem::with_settings(idem::MemoryStore::new(), &idem::Config::default())
        .scope(call("derived").run(async { idem::derive_key("charge").unwrap() }))
        .await
        .unwrap();
    assert_eq!(
        committed.value.1, plain.value,
        "the plain call's derived key"
    );
    assert_eq!(orders(&pool, "derived").await, 1);
}

/// In the transactional mode a step records nothing: its future runs on every attempt, since
/// the body's writes and the call's record roll back together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_step_runs_on_every_attempt_and_records_nothing() {
    let db = TempDb::new("tx-steps");
    let pool = pool(&db, 2).await;
    let runs = AtomicUsize::new(0);
    let body = async |conn: &mut SqliteConnection| {
        let n = idem::step("reserve", async { runs.fetch_add(1, Ordering::SeqCst) + 1 })
            .await
            .unwrap();
        insert_order(conn, "stepped", n as i64).await;
        n
    };
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    call("stepped").run_tx(&mut tx, body).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let second = call("stepped").run_tx(&mut tx, body).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (second.value, runs.load(Ordering::SeqCst)),
        (2, 2),
        "the step ran again after the rollback"
    );
    assert_eq!(records(&pool).await, 1, "only the call's record, no step's");
}
