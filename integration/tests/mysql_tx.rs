//! The transactional mode (`Call::run_tx`, `#[idempotent(tx = conn)]`) on the MariaDB server of
//! the test process, each test on databases of its own: the record commits or rolls back with
//! the body's writes, duplicates in other transactions wait on InnoDB's row lock and replay or
//! run, `wait` bounds that lock wait (whole seconds), a released error undoes the body's
//! writes, and InnoDB's answers are the errors the module documents (`Error::InProgress` for a
//! lock wait that ran out or a key held by a lease, `Error::Conflict` for a deadlock,
//! `Error::Config` for a missing table), with what each leaves of the caller's transaction.
//! Statements are counted from the server's general log.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::{Call, Error, MySqlStore, Status, idempotent};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Connection, MySqlConnection, MySqlPool};
use support::mariadb::MariaDb;
use tokio::sync::Barrier;
use tokio::time::Instant;

/// A pool on a new database of the test's server, with idem's table and a table of orders.
async fn pool(name: &str, connections: u32) -> MySqlPool {
    let url = MariaDb::shared().database(name);
    let pool = MySqlPoolOptions::new()
        .max_connections(connections)
        .connect(&url)
        .await
        .expect("connect to the test's MariaDB");
    sqlx::raw_sql(idem::mysql::MIGRATION)
        .execute(&pool)
        .await
        .expect("idem's table");
    sqlx::raw_sql(
        "CREATE TABLE orders (k VARCHAR(64) NOT NULL, amount BIGINT NOT NULL) ENGINE = InnoDB",
    )
    .execute(&pool)
    .await
    .expect("the orders table");
    pool
}

/// Inserts an order row for `key`.
async fn insert_order(conn: &mut MySqlConnection, key: &str, amount: i64) {
    sqlx::query("INSERT INTO orders (k, amount) VALUES (?, ?)")
        .bind(key)
        .bind(amount)
        .execute(conn)
        .await
        .expect("insert an order");
}

async fn orders(pool: &MySqlPool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE k = ?")
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn records(pool: &MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM idem_records")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Whether the server has a transaction open on `conn` (InnoDB ends one on a deadlock without
/// the client's word).
async fn in_transaction(conn: &mut MySqlConnection) -> bool {
    let open: u64 = sqlx::query_scalar("SELECT @@in_transaction")
        .fetch_one(conn)
        .await
        .unwrap();
    open != 0
}

fn call(key: &str) -> Call {
    // Records go to the default table of the connection's database: no store is installed.
    Call::new("mysql-tx", key.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_commits_and_rolls_back_with_the_body() {
    let pool = pool("tx_commit", 2).await;
    let runs = AtomicUsize::new(0);
    let body = async |conn: &mut MySqlConnection| {
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
    assert!(
        !in_transaction(&mut conn).await,
        "its own transaction ended"
    );
    assert_eq!((again.value, again.status), (10, Status::Replayed));
    assert_eq!((bare.value, bare.status), (10, Status::Replayed));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(orders(&pool, "o1").await, 1);
}

/// The statements the server ran for `conn` since `from`, by their first words.
fn logged(id: u64, from: usize) -> Vec<String> {
    MariaDb::shared().statements(id)[from..]
        .iter()
        .map(|sql| sql.split_whitespace().take(6).collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_per_call_are_counted_by_the_server() {
    let pool = pool("tx_count", 1).await;
    let mut conn = pool.acquire().await.unwrap();
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let body = async |conn: &mut MySqlConnection| {
        insert_order(conn, "c1", 1).await;
        1_i64
    };
    let server = MariaDb::shared();

    // A first call in the caller's transaction: the claim and the completion.
    let from = server.statements(id).len();
    let mut tx = conn.begin().await.unwrap();
    call("c1").run_tx(&mut tx, body).await.unwrap();
    tx.commit().await.unwrap();
    let first = logged(id, from);
    assert_eq!(first.len(), 5, "{first:#?}");
    assert_eq!(first[0], "BEGIN");
    assert!(
        first[1].starts_with("SET STATEMENT innodb_lock_wait_timeout = 10 FOR"),
        "{first:#?}"
    );
    assert!(first[2].starts_with("INSERT INTO orders"), "{first:#?}");
    assert!(
        first[3].starts_with("UPDATE `idem_records` SET"),
        "{first:#?}"
    );
    assert_eq!(first[4], "COMMIT");

    // A replay in the caller's transaction: the insert that meets the row, a locking read.
    let from = server.statements(id).len();
    let mut tx = conn.begin().await.unwrap();
    let replay = call("c1").run_tx(&mut tx, body).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(replay.status, Status::Replayed);
    let again = logged(id, from);
    assert_eq!(again.len(), 4, "{again:#?}");
    assert!(again[1].starts_with("SET STATEMENT"), "{again:#?}");
    assert!(
        again[2].starts_with("SELECT `state`, `token`"),
        "{again:#?}"
    );

    // A fallible body on a bare connection: BEGIN and COMMIT of its own, no savepoint.
    let from = server.statements(id).len();
    let ok = call("c2")
        .run_result_tx(&mut *conn, async |conn: &mut MySqlConnection| {
            insert_order(conn, "c2", 2).await;
            Ok::<i64, String>(2)
        })
        .await
        .unwrap();
    assert_eq!(ok.status, Status::Executed);
    let bare = logged(id, from);
    assert_eq!(bare.len(), 5, "{bare:#?}");
    assert_eq!((bare[0].as_str(), bare[4].as_str()), ("BEGIN", "COMMIT"));

    // A fallible body in the caller's transaction: a savepoint around the body.
    let from = server.statements(id).len();
    let mut tx = conn.begin().await.unwrap();
    call("c3")
        .run_result_tx(&mut tx, async |conn: &mut MySqlConnection| {
            insert_order(conn, "c3", 3).await;
            Ok::<i64, String>(3)
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let saved = logged(id, from);
    assert_eq!(saved.len(), 7, "{saved:#?}");
    assert!(saved[2].starts_with("SAVEPOINT"), "{saved:#?}");
    assert!(saved[5].starts_with("RELEASE SAVEPOINT"), "{saved:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_error_undoes_the_body_and_leaves_the_transaction_usable() {
    let pool = pool("tx_release", 2).await;
    let mut tx = pool.begin().await.unwrap();
    insert_order(&mut tx, "before", 1).await;
    let failed = call("o2")
        .run_result_tx(&mut tx, async |conn: &mut MySqlConnection| {
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
        .run_result_tx(&mut conn, async |conn: &mut MySqlConnection| {
            insert_order(conn, "o2", 20).await;
            Ok::<i64, String>(20)
        })
        .await
        .unwrap();
    assert_eq!((ok.value, ok.status), (Ok(20), Status::Executed));
    assert_eq!((orders(&pool, "o2").await, records(&pool).await), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_transactions_on_one_key_run_the_body_once() {
    const CALLERS: usize = 64;
    let pool = pool("tx_concurrent", CALLERS as u32).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(CALLERS));
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let (pool, runs, start) = (pool.clone(), runs.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            start.wait().await;
            let body = async |conn: &mut MySqlConnection| {
                runs.fetch_add(1, Ordering::SeqCst);
                insert_order(conn, "o3", 30).await;
                // Long enough for every other caller to meet the claim's lock.
                tokio::time::sleep(Duration::from_millis(50)).await;
                30_i64
            };
            let call = call("o3").wait(Duration::from_secs(30));
            // Half on a bare connection (a transaction of idem's own), half in the caller's.
            if caller % 2 == 0 {
                call.run_tx(&mut conn, body).await
            } else {
                let mut tx = conn.begin().await.unwrap();
                let outcome = call.run_tx(&mut tx, body).await;
                tx.commit().await.unwrap();
                outcome
            }
        }));
    }
    let mut executed = 0;
    for task in tasks {
        let outcome = task.await.unwrap().expect("every duplicate replays");
        assert_eq!(outcome.value, 30);
        executed += usize::from(outcome.status == Status::Executed);
    }
    assert_eq!((executed, runs.load(Ordering::SeqCst)), (1, 1));
    assert_eq!((orders(&pool, "o3").await, records(&pool).await), (1, 1));
}

/// Runs `key` in a transaction of `pool` that stays open: the body wrote its order and the
/// claim holds the key's row until the returned transaction ends.
async fn hold(pool: &MySqlPool, key: &str, amount: i64) -> sqlx::Transaction<'static, sqlx::MySql> {
    let mut tx = pool.begin().await.unwrap();
    let held = call(key)
        .run_tx(&mut tx, async |conn: &mut MySqlConnection| {
            insert_order(conn, key, amount).await;
            amount
        })
        .await
        .unwrap();
    assert_eq!(held.status, Status::Executed);
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_waits_on_the_lock_and_replays_after_a_commit_or_runs_after_a_rollback() {
    let pool = pool("tx_wait", 4).await;
    for commit in [true, false] {
        let key = if commit { "w-commit" } else { "w-rollback" };
        let holder = hold(&pool, key, 40).await;
        let (claimed, is_claimed) = tokio::sync::oneshot::channel::<()>();
        let duplicate = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.acquire().await.unwrap();
                let _ = claimed.send(());
                call(key)
                    .wait(Duration::from_secs(20))
                    .run_tx(&mut conn, async |conn: &mut MySqlConnection| {
                        insert_order(conn, key, 41).await;
                        41_i64
                    })
                    .await
            })
        };
        is_claimed.await.unwrap();
        // The duplicate waits on the row lock: it has not finished while the holder is open.
        // (It cannot end before the holder does: the holder's row is locked until then.)
        assert!(!duplicate.is_finished());
        if commit {
            holder.commit().await.unwrap();
        } else {
            holder.rollback().await.unwrap();
        }
        let outcome = duplicate.await.unwrap().expect("the duplicate's answer");
        if commit {
            assert_eq!((outcome.value, outcome.status), (40, Status::Replayed));
        } else {
            assert_eq!((outcome.value, outcome.status), (41, Status::Executed));
        }
        assert_eq!((orders(&pool, key).await), 1, "{key}");
    }
    assert_eq!(records(&pool).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_bounds_the_lock_wait_in_whole_seconds_and_the_transaction_stays_usable() {
    let pool = pool("tx_bound", 3).await;
    let holder = hold(&pool, "b1", 50).await;
    let mut tx = pool.begin().await.unwrap();
    insert_order(&mut tx, "kept", 1).await;
    let runs = AtomicUsize::new(0);
    for (wait, at_least, at_most) in [
        (Duration::ZERO, Duration::ZERO, Duration::from_millis(500)),
        (
            Duration::from_millis(1900),
            Duration::from_millis(900),
            Duration::from_millis(1900),
        ),
    ] {
        let begun = Instant::now();
        let error = call("b1")
            .wait(wait)
            .run_tx(&mut tx, async |_: &mut MySqlConnection| {
                runs.fetch_add(1, Ordering::SeqCst);
                0_i64
            })
            .await
            .unwrap_err();
        let took = begun.elapsed();
        assert!(matches!(error, Error::InProgress { .. }), "{error}");
        assert!(
            (at_least..at_most).contains(&took),
            "wait {wait:?}: InProgress after {took:?}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    // InnoDB rolled back the statement only: the caller's transaction goes on.
    assert!(in_transaction(&mut tx).await);
    insert_order(&mut tx, "kept", 2).await;
    tx.commit().await.unwrap();
    holder.commit().await.unwrap();
    assert_eq!(orders(&pool, "kept").await, 2);
    assert_eq!(orders(&pool, "b1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_is_a_conflict_and_innodb_rolled_the_transaction_back() {
    let pool = pool("tx_deadlock", 3).await;
    let mut first = hold(&pool, "d-a", 1).await;
    let mut second = hold(&pool, "d-b", 2).await;
    // Each waits for the other's key: InnoDB picks one as the victim.
    let (a, b) = tokio::join!(cross(&mut first, "d-b"), cross(&mut second, "d-a"));
    let (victim, survivor, outcome) = match (a, b) {
        (Err(error), Ok(outcome)) => ((error, &mut first), &mut second, outcome),
        (Ok(outcome), Err(error)) => ((error, &mut second), &mut first, outcome),
        other => panic!("expected one deadlock victim, got {other:?}"),
    };
    let (error, victim) = victim;
    assert!(matches!(error, Error::Conflict { .. }), "{error}");
    assert!(
        !in_transaction(victim).await,
        "InnoDB rolled the victim's whole transaction back"
    );
    // The survivor claimed the key the victim's rollback freed, and ran.
    assert_eq!(outcome.status, Status::Executed);
    assert!(in_transaction(survivor).await);
    first.rollback().await.unwrap();
    second.rollback().await.unwrap();
}

/// Claims `key` in `tx`, waiting for it up to 20 s, and writes its order.
async fn cross(
    tx: &mut sqlx::Transaction<'static, sqlx::MySql>,
    key: &'static str,
) -> Result<idem::Outcome<i64>, Error> {
    call(key)
        .wait(Duration::from_secs(20))
        .run_tx(tx, async |conn: &mut MySqlConnection| {
            insert_order(conn, key, 3).await;
            3_i64
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_isolation_level_replays_the_committed_record_not_its_snapshot() {
    let pool = pool("tx_isolation", 4).await;
    sqlx::raw_sql("CREATE TABLE other (n INT) ENGINE = InnoDB")
        .execute(&pool)
        .await
        .unwrap();
    for level in [
        "READ UNCOMMITTED",
        "READ COMMITTED",
        "REPEATABLE READ",
        "SERIALIZABLE",
    ] {
        let key = format!("i-{}", level.replace(' ', "-"));
        let holder = hold(&pool, &key, 60).await;
        // A transaction at `level` whose snapshot is taken before the holder commits.
        let mut conn = pool.acquire().await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET SESSION TRANSACTION ISOLATION LEVEL {level}"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        let mut reader = conn.begin().await.unwrap();
        let _: i64 = sqlx::query_scalar("SELECT count(*) FROM other")
            .fetch_one(&mut *reader)
            .await
            .unwrap();
        let duplicate = call(&key)
            .wait(Duration::from_secs(20))
            .run_tx(&mut reader, async |_: &mut MySqlConnection| 0_i64);
        let commit = async {
            // The duplicate is behind the holder's lock once it sent its claim; the commit
            // releases it whenever it comes.
            tokio::task::yield_now().await;
            holder.commit().await.unwrap();
        };
        let (replayed, ()) = tokio::join!(duplicate, commit);
        let replayed = replayed.unwrap_or_else(|e| panic!("{level}: {e}"));
        assert_eq!(
            (replayed.value, replayed.status),
            (60, Status::Replayed),
            "{level}"
        );
        reader.commit().await.unwrap();
        sqlx::raw_sql("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *conn)
            .await
            .unwrap();
        assert_eq!(orders(&pool, &key).await, 1, "{level}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_by_a_plain_call_is_in_progress_at_once() {
    let pool = pool("tx_held", 3).await;
    let store = MySqlStore::from_pool(pool.clone(), idem::MySqlOptions::default())
        .await
        .unwrap();
    let (finish, finished) = tokio::sync::oneshot::channel::<i64>();
    let (started, is_started) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(
        Call::new("mysql-tx", "o4")
            .store(store.clone())
            .lease(Duration::from_secs(600))
            .run(async move {
                let _ = started.send(());
                finished.await.unwrap_or(0)
            }),
    );
    is_started.await.unwrap();

    let mut conn = pool.acquire().await.unwrap();
    let begun = Instant::now();
    let error = Call::new("mysql-tx", "o4")
        .store(store.clone())
        .wait(Duration::from_secs(30))
        .run_tx(&mut conn, async |_: &mut MySqlConnection| 0_i64)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InProgress { .. }), "{error}");
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "no wait on a holder that needs this transaction's lock"
    );
    assert!(
        !in_transaction(&mut conn).await,
        "its own transaction rolled back"
    );
    finish.send(4).unwrap();
    assert_eq!(holder.await.unwrap().unwrap().value, 4);

    // Once the holder completed, the transactional call replays it.
    let replay = Call::new("mysql-tx", "o4")
        .store(store)
        .run_tx(&mut conn, async |_: &mut MySqlConnection| 0_i64)
        .await
        .unwrap();
    assert_eq!((replay.value, replay.status), (4, Status::Replayed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_a_config_error_and_the_transaction_stays_usable() {
    let url = MariaDb::shared().database("tx_no_table");
    let mut conn = MySqlConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE orders (k VARCHAR(64) NOT NULL, amount BIGINT NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut tx = conn.begin().await.unwrap();
    insert_order(&mut tx, "kept", 1).await;
    let error = call("o6")
        .run_tx(&mut tx, async |_: &mut MySqlConnection| 0_i64)
        .await
        .unwrap_err();
    let Error::Config(message) = &error else {
        panic!("expected a configuration error, got {error}");
    };
    assert!(
        message.contains("CREATE TABLE IF NOT EXISTS `idem_records`"),
        "{message}"
    );
    // The caller's transaction goes on and commits its write.
    assert!(in_transaction(&mut tx).await);
    insert_order(&mut tx, "kept", 2).await;
    tx.commit().await.unwrap();
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 2);
    // Created outside any transaction (DDL commits), the next call runs.
    sqlx::raw_sql(idem::mysql::MIGRATION)
        .execute(&mut conn)
        .await
        .unwrap();
    let ran = call("o6")
        .run_tx(&mut conn, async |conn: &mut MySqlConnection| {
            insert_order(conn, "o6", 6).await;
            6_i64
        })
        .await
        .unwrap();
    assert_eq!((ran.value, ran.status), (6, Status::Executed));
}

/// The attribute on a MySQL connection, with the records in the table of the installed
/// `MySqlStore`'s database (the same database as the connection's).
#[idempotent(key = order, tx = conn)]
async fn place(conn: &mut MySqlConnection, order: &str, amount: i64) -> Result<i64, PlaceError> {
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
    let pool = pool("tx_attribute", 2).await;
    let store = MySqlStore::from_pool(pool.clone(), idem::MySqlOptions::default())
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
    let pool = pool("tx_plain_dup", 2).await;
    let options = idem::MySqlOptions::default().poll_interval(Duration::from_millis(10));
    let store = MySqlStore::from_pool(pool.clone(), options).await.unwrap();
    let open = idem::Config::default().fail_mode(idem::FailMode::Open);
    let plain = idem::Idem::with_settings(store.clone(), &open);
    let runs = AtomicUsize::new(0);

    // A transactional holder that has claimed the key and not committed.
    let tx = hold(&pool, "o7", 70).await;

    // A plain duplicate meanwhile: in progress within its wait, fail-open or not.
    let begun = Instant::now();
    let short = plain
        .scope(
            call("o7")
                .wait(Duration::from_millis(300))
                .run(async { runs.fetch_add(1, Ordering::SeqCst) as i64 }),
        )
        .await;
    assert!(matches!(short, Err(Error::InProgress { .. })), "{short:?}");
    assert!(
        begun.elapsed() < Duration::from_millis(800),
        "{:?}",
        begun.elapsed()
    );

    // One that waits longer sees the commit and replays.
    let waiting = plain.scope(
        call("o7")
            .wait(Duration::from_secs(20))
            .run(async { runs.fetch_add(1, Ordering::SeqCst) as i64 }),
    );
    let commit = async {
        tokio::task::yield_now().await;
        tx.commit().await.unwrap();
    };
    let (replayed, ()) = tokio::join!(waiting, commit);
    let replayed = replayed.unwrap();
    assert_eq!(replayed.value, 70);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the plain body never ran");
    assert_eq!((orders(&pool, "o7").await, records(&pool).await), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_stores_statements_are_counted_by_the_server() {
    // One connection: every statement of the store is on it.
    let pool = pool("plain_count", 1).await;
    let options = idem::MySqlOptions::default().reaper_interval(None);
    let store = MySqlStore::from_pool(pool.clone(), options).await.unwrap();
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let server = MariaDb::shared();
    let run = || {
        Call::new("mysql-plain", "p1")
            .store(store.clone())
            .run(async { 7_i64 })
    };

    let from = server.statements(id).len();
    assert_eq!(run().await.unwrap().status, Status::Executed);
    let first = logged(id, from);
    assert_eq!(first.len(), 3, "{first:#?}");
    assert!(first[0].starts_with("SELECT `state`"), "{first:#?}");
    assert!(
        first[1].starts_with("SET STATEMENT innodb_lock_wait_timeout = 0 FOR"),
        "{first:#?}"
    );
    assert!(
        first[2].starts_with("UPDATE `idem_records` SET"),
        "{first:#?}"
    );

    let from = server.statements(id).len();
    assert_eq!(run().await.unwrap().status, Status::Replayed);
    let replay = logged(id, from);
    assert_eq!(replay.len(), 1, "{replay:#?}");
    assert!(replay[0].starts_with("SELECT `state`"), "{replay:#?}");
}
