//! `PostgresStore` on a PostgreSQL the test starts: statements per call counted from the
//! server's log, waiters woken by `LISTEN`/`NOTIFY`, 64 concurrent duplicates, the table and
//! its options, the reaper.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::{Call, Error, PostgresOptions, PostgresStore, Status, Store};
use support::postgres::PostgresServer;
use tokio::sync::{Barrier, oneshot};
use tokio::time::Instant;

/// The application name of the store whose statements a test counts.
const COUNTED: &str = "idem-counted";

/// A store whose statements are told apart in the server's log, without the reaper's.
async fn counted_store(server: &PostgresServer) -> PostgresStore {
    let options = PostgresOptions::default()
        .application_name(COUNTED)
        .reaper_interval(None)
        .pool_size(1);
    PostgresStore::connect_with(&server.url(), options)
        .await
        .expect("connect to the test's PostgreSQL")
}

fn scope(name: &str) -> String {
    format!("pg::{name}::{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

/// The statements the store sent while `f` ran.
async fn sent_during<F: Future>(server: &PostgresServer, f: F) -> (F::Output, Vec<String>) {
    let before = server.statements(COUNTED).len();
    let out = f.await;
    let after = server.statements(COUNTED);
    (out, after[before..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_one_statement_and_a_first_call_two() {
    let server = PostgresServer::start();
    let store = counted_store(&server).await;
    let scope = scope("round_trips");
    // Prepares the statements on the store's one connection.
    for key in ["warm-up-a", "warm-up-b"] {
        for _ in 0..2 {
            Call::new(scope.clone(), key)
                .store(store.clone())
                .run(async { 0_u32 })
                .await
                .unwrap();
        }
    }

    let (first, first_sent) = sent_during(
        &server,
        Call::new(scope.clone(), "k")
            .store(store.clone())
            .run(async { 7_u32 }),
    )
    .await;
    assert_eq!(first.unwrap().status, Status::Executed);
    let (again, replay_sent) = sent_during(
        &server,
        Call::new(scope.clone(), "k")
            .store(store.clone())
            .run(async { 8_u32 }),
    )
    .await;
    let again = again.unwrap();
    assert_eq!((again.value, again.status), (7, Status::Replayed));

    println!("first call: {first_sent:#?}\nreplay: {replay_sent:#?}");
    assert_eq!(
        first_sent.len(),
        2,
        "a first call is claim + complete: {first_sent:#?}"
    );
    assert!(first_sent[0].starts_with("WITH live AS"), "{first_sent:#?}");
    assert!(first_sent[1].starts_with("WITH done AS"), "{first_sent:#?}");
    assert_eq!(
        replay_sent.len(),
        1,
        "a replay is the claim alone: {replay_sent:#?}"
    );
    assert!(
        replay_sent[0].starts_with("WITH live AS"),
        "{replay_sent:#?}"
    );

    // Every statement of the store ran prepared (`execute sqlx_s_N`), none in an explicit
    // transaction.
    let log = server.log();
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("] {COUNTED}: LOG:  ")))
        .collect();
    assert!(
        ours.iter()
            .filter(|l| l.contains("WITH "))
            .all(|l| l.contains("LOG:  execute sqlx_s_")),
        "hot-path statements are prepared: {ours:#?}"
    );
    let all = server.statements(COUNTED);
    assert!(
        !all.iter().any(|s| {
            let s = s.trim_start().to_ascii_uppercase();
            s.starts_with("BEGIN") || s.starts_with("COMMIT") || s.starts_with("START TRANSACTION")
        }),
        "no BEGIN/COMMIT: {all:#?}"
    );

    // Once replays clearly outnumber first calls (`ClaimOrder::Learnt`), a claim reads first:
    // a replay is a bare read of the live row, a first call three statements.
    for _ in 0..40 {
        let again = Call::new(scope.clone(), "k")
            .store(store.clone())
            .run(async { 9_u32 })
            .await
            .unwrap();
        assert_eq!((again.value, again.status), (7, Status::Replayed));
    }
    let (again, read) = sent_during(
        &server,
        Call::new(scope.clone(), "k")
            .store(store.clone())
            .run(async { 10_u32 }),
    )
    .await;
    let again = again.unwrap();
    assert_eq!((again.value, again.status), (7, Status::Replayed));
    assert_eq!(read.len(), 1, "a replay is the read alone: {read:#?}");
    assert!(read[0].starts_with("SELECT false, state"), "{read:#?}");
    let (first, first_sent) = sent_during(
        &server,
        Call::new(scope.clone(), "k2")
            .store(store.clone())
            .run(async { 11_u32 }),
    )
    .await;
    assert_eq!(first.unwrap().status, Status::Executed);
    assert_eq!(
        first_sent.len(),
        3,
        "read, claim, complete: {first_sent:#?}"
    );
    assert!(
        first_sent[0].starts_with("SELECT false, state"),
        "{first_sent:#?}"
    );
    // After the read found nothing, the bare upsert claims.
    assert!(
        first_sent[1].starts_with("WITH cfg AS MATERIALIZED (SELECT set_config('lock_timeout'")
            && first_sent[1].contains("INSERT INTO")
            && !first_sent[1].contains("WITH live AS"),
        "{first_sent:#?}"
    );
    assert!(first_sent[2].starts_with("WITH done AS"), "{first_sent:#?}");

    // Once first calls clearly outnumber the rest, a claim is the bare upsert alone: a first
    // call two statements (the upsert, the completion), a replay two (the upsert that meets
    // the live row, the read).
    for order in 0..100 {
        let first = Call::new(scope.clone(), format!("many-{order}"))
            .store(store.clone())
            .run(async { 12_u32 })
            .await
            .unwrap();
        assert_eq!(first.status, Status::Executed);
    }
    let (first, first_sent) = sent_during(
        &server,
        Call::new(scope.clone(), "k3")
            .store(store.clone())
            .run(async { 13_u32 }),
    )
    .await;
    assert_eq!(first.unwrap().status, Status::Executed);
    assert_eq!(first_sent.len(), 2, "upsert, complete: {first_sent:#?}");
    assert!(
        first_sent[0].starts_with("WITH cfg AS MATERIALIZED (SELECT set_config('lock_timeout'")
            && first_sent[0].contains("INSERT INTO"),
        "{first_sent:#?}"
    );
    assert!(first_sent[1].starts_with("WITH done AS"), "{first_sent:#?}");
    let (again, replay_sent) = sent_during(
        &server,
        Call::new(scope.clone(), "k3")
            .store(store.clone())
            .run(async { 14_u32 }),
    )
    .await;
    let again = again.unwrap();
    assert_eq!((again.value, again.status), (13, Status::Replayed));
    assert_eq!(replay_sent.len(), 2, "upsert, read: {replay_sent:#?}");
    assert!(
        replay_sent[0].starts_with("WITH cfg AS MATERIALIZED"),
        "{replay_sent:#?}"
    );
    assert!(
        replay_sent[1].starts_with("SELECT false, state"),
        "{replay_sent:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_reads_first_reports_the_holder_and_takes_over_an_expired_claim() {
    let server = PostgresServer::start();
    let options = PostgresOptions::default()
        .reaper_interval(None)
        .claim_order(idem::store::ClaimOrder::ReadFirst);
    let store = PostgresStore::connect_with(&server.url(), options)
        .await
        .unwrap();
    support::calls::a_claim_reports_the_holder_and_takes_over_an_expired_claim(&store, "idem:rf")
        .await;
    // A claim asked again by its holder (its first answer lost) finds the key its own.
    let holder = idem::store::Claim::new(None);
    let lease = Duration::from_secs(60);
    assert_eq!(
        store.claim("idem:rf:own", &holder, lease).await.unwrap(),
        None
    );
    assert_eq!(
        store.claim("idem:rf:own", &holder, lease).await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_inserts_first_reports_the_holder_and_takes_over_an_expired_claim() {
    let server = PostgresServer::start();
    let options = PostgresOptions::default()
        .reaper_interval(None)
        .claim_order(idem::store::ClaimOrder::InsertFirst);
    let store = PostgresStore::connect_with(&server.url(), options)
        .await
        .unwrap();
    support::calls::a_claim_reports_the_holder_and_takes_over_an_expired_claim(&store, "idem:if")
        .await;
    // A claim asked again by its holder (its first answer lost) finds the key its own: the
    // upsert meets the row, and the read finds the holder's own claim.
    let holder = idem::store::Claim::new(None);
    let lease = Duration::from_secs(60);
    assert_eq!(
        store.claim("idem:if:own", &holder, lease).await.unwrap(),
        None
    );
    assert_eq!(
        store.claim("idem:if:own", &holder, lease).await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_duplicates_run_once_and_the_others_get_the_result() {
    let server = PostgresServer::start();
    let store = PostgresStore::open(&server.url()).await.unwrap();
    let scope = scope("sixty_four");
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|caller| {
            let (store, scope, runs, start) =
                (store.clone(), scope.clone(), runs.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                Call::new(scope, "order-64")
                    .store(store)
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
    let mut values = std::collections::HashSet::new();
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

/// Starts a call on `key` whose body waits for the returned sender.
async fn held(
    store: &PostgresStore,
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
            .store(store.clone())
            .run(async move {
                let _ = started.send(());
                finished.await.unwrap_or(0)
            }),
    );
    is_started.await.unwrap();
    (finish, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_notify_within_milliseconds_without_polling() {
    let server = PostgresServer::start();
    let store = counted_store(&server).await;
    let scope = scope("notify");
    let mut latencies = Vec::new();
    for round in 0..5 {
        let key = format!("k{round}");
        let (finish, holder) = held(&store, &scope, &key).await;
        let waiter = {
            let (store, scope, key) = (store.clone(), scope.clone(), key.clone());
            tokio::spawn(async move {
                let outcome = Call::new(scope, key)
                    .store(store)
                    .wait(Duration::from_secs(20))
                    .run(async { 0_u32 })
                    .await;
                (outcome, Instant::now())
            })
        };
        // Long enough for the waiter to be asleep, many times the fallback poll.
        let ((), sent) = sent_during(&server, tokio::time::sleep(Duration::from_millis(600))).await;
        // The first wait starts the listener (lazily): its waiter looks again once it is up.
        let most = if round == 0 { 6 } else { 2 };
        assert!(
            sent.len() <= most,
            "a waiter does not poll while the listener is up: {sent:#?}"
        );
        finish.send(round).unwrap();
        let done = holder.await.unwrap().unwrap();
        let completed = Instant::now();
        assert_eq!(done.status, Status::Executed);
        let (waited, woken) = waiter.await.unwrap();
        let waited = waited.unwrap();
        assert_eq!((waited.value, waited.status), (round, Status::Waited));
        latencies.push(woken.saturating_duration_since(completed));
    }
    latencies.sort();
    println!("waiter got the result after the holder's completion returned: {latencies:?}");
    assert!(
        latencies[latencies.len() / 2] < Duration::from_millis(50),
        "woken within milliseconds: {latencies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_is_created_where_configured_or_named_in_an_error() {
    let server = PostgresServer::start();
    // Off, and missing: a configuration error that holds the SQL to run.
    let off = PostgresOptions::default()
        .schema("billing")
        .table("keys")
        .create_table(false);
    server.psql("CREATE SCHEMA billing");
    let error = PostgresStore::connect_with(&server.url(), off.clone())
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    assert!(
        message.contains(r#"CREATE TABLE IF NOT EXISTS "billing"."keys""#)
            && message.contains("IDEM_PG_CREATE_TABLE"),
        "{message}"
    );
    // Created by the user with the public SQL, then used as it is.
    server.psql(&off.migration().unwrap());
    let store = PostgresStore::connect_with(&server.url(), off)
        .await
        .unwrap();
    let scope = scope("custom_table");
    Call::new(scope.clone(), "k")
        .store(store.clone())
        .run(async { "receipt".to_owned() })
        .await
        .unwrap();
    let row = server.psql(&format!(
        "SELECT state, convert_from(payload, 'UTF8') FROM billing.keys WHERE key = '{}'",
        idem::testing::store_key("idem", &scope, "k")
    ));
    assert!(
        row.starts_with("completed|") && row.contains("receipt"),
        "{row}"
    );
    assert_eq!(
        server.psql("SELECT to_regclass('public.idem_records') IS NULL"),
        "t"
    );

    // On by default: the default table appears.
    let _default = PostgresStore::open(&server.url()).await.unwrap();
    assert_eq!(
        server.psql("SELECT to_regclass('public.idem_records') IS NOT NULL"),
        "t"
    );
    assert_eq!(
        server.psql("SELECT count(*) FROM pg_indexes WHERE indexname = 'idem_records_expires_at'"),
        "1"
    );
    assert!(idem::postgres::MIGRATION.contains(r#""public"."idem_records""#));

    // A table of another shape is refused.
    server.psql("CREATE TABLE public.other (key text PRIMARY KEY)");
    let error =
        PostgresStore::connect_with(&server.url(), PostgresOptions::default().table("other"))
            .await
            .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_deletes_expired_rows_in_bounded_batches() {
    let server = PostgresServer::start();
    let options = PostgresOptions::default()
        .application_name("idem-reaper")
        .reaper_interval(Some(Duration::from_millis(300)))
        .reaper_batch(10);
    let store = PostgresStore::connect_with(&server.url(), options)
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = server.psql("SELECT count(*) FROM idem_records");
        if left == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "expired rows left: {left}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reaps = server
        .statements("idem-reaper")
        .into_iter()
        .filter(|s| s.starts_with("DELETE") && s.contains("LIMIT $1"))
        .count();
    assert!(
        reaps >= 4,
        "35 rows in batches of 10 take 4 statements at least, saw {reaps}"
    );
    assert!(
        !server
            .statements("idem-reaper")
            .iter()
            .any(|s| s.starts_with("DELETE") && !s.contains("LIMIT")),
        "never an unbounded DELETE"
    );
    // The live record is kept, and stops with the store.
    let replay = Call::new(scope.clone(), "live")
        .store(store.clone())
        .run(async { 3_u8 })
        .await
        .unwrap();
    assert_eq!((replay.value, replay.status), (2, Status::Replayed));
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = server.statements("idem-reaper").len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        server.statements("idem-reaper").len(),
        before,
        "the reaper stops with the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_nul_is_a_store_error_not_a_panic() {
    let server = PostgresServer::start();
    let store = PostgresStore::open(&server.url()).await.unwrap();
    // Through the engine a NUL never reaches the store: a scope or key with a control
    // character is stored as its hash.
    let ran = Call::new("scope\0with-nul", "k\0")
        .store(store.clone())
        .run(async { 1_u8 })
        .await
        .unwrap();
    assert_eq!(ran.status, idem::Status::Executed);
    // A store key with NUL given to the store itself (text cannot hold it) is an error.
    let claim = idem::store::Claim::new(None);
    let result = idem::Store::claim(&store, "idem:s:\0", &claim, Duration::from_secs(5)).await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idem_store_postgres_url_selects_the_store() {
    let server = PostgresServer::start();
    let config = idem::Config::from_lookup(|name| match name {
        "IDEM_STORE" => Some(server.url().replace("postgres://", "postgresql://")),
        "IDEM_PG_TABLE" => Some("from_env".to_owned()),
        _ => None,
    })
    .unwrap();
    let idem = idem::Idem::connect(&config).await.unwrap();
    let describe = idem.store().describe();
    assert!(
        describe.starts_with("postgres://postgres@127.0.0.1:") && describe.contains("from_env"),
        "{describe}"
    );
    let outcome = idem
        .scope(Call::new("env", "k").run(async { 5_u8 }))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Executed);
    assert_eq!(server.psql("SELECT count(*) FROM public.from_env"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_a_read_that_a_row_lock_does_not_hold_up() {
    let server = PostgresServer::start();
    let options = PostgresOptions::default().statement_timeout(Duration::from_millis(500));
    let store = PostgresStore::connect_with(&server.url(), options)
        .await
        .unwrap();
    let scope = scope("row_lock");
    Call::new(scope.clone(), "k")
        .store(store.clone())
        .run(async { 1_u8 })
        .await
        .unwrap();
    // Another client holds the row for 3 s.
    let mut locker = server
        .psql_command()
        .arg("-c")
        .arg(format!(
            "BEGIN; SELECT 1 FROM idem_records WHERE key = '{}' FOR UPDATE; \
             SELECT pg_sleep(3); COMMIT;",
            idem::testing::store_key("idem", &scope, "k")
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run psql");
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.psql("SELECT count(*) FROM pg_locks WHERE mode = 'RowShareLock'") == "0" {
        assert!(
            Instant::now() < deadline,
            "the locker did not take its lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replay = Call::new(scope.clone(), "k")
        .store(store.clone())
        .run(async { 2_u8 })
        .await
        .expect("the replay does not wait for the lock");
    assert_eq!((replay.value, replay.status), (1, Status::Replayed));
    let _ = locker.kill();
    let _ = locker.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_the_applications_own_pool_shares_it() {
    let server = PostgresServer::start();
    let first = PostgresStore::open(&server.url()).await.unwrap();
    // The application's pool: here the first store's, as an application hands in its own.
    let pool = first.pool().clone();
    let options = PostgresOptions::default().table("from_pool");
    let store = PostgresStore::from_pool(pool.clone(), options)
        .await
        .unwrap();
    assert!(
        store.describe().ends_with(r#"("public"."from_pool")"#),
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
    assert_eq!(server.psql("SELECT count(*) FROM from_pool"), "1");
    assert_eq!(server.psql("SELECT count(*) FROM idem_records"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_sent_again_after_it_was_applied_is_held_and_a_stranger_is_not() {
    // What a completion retried on another connection sees when the first attempt was applied
    // but its answer lost with its connection.
    let server = PostgresServer::start();
    let store = PostgresStore::open(&server.url()).await.unwrap();
    let key = format!("idem:{}:k", scope("completion_again"));
    let lease = Duration::from_secs(10);
    let mine = idem::store::Claim::new(None);
    let stranger = idem::store::Claim::new(None);
    assert_eq!(store.claim(&key, &mine, lease).await.unwrap(), None);
    for _ in 0..2 {
        assert_eq!(
            store.complete(&key, &mine, b"done", lease).await.unwrap(),
            idem::store::Fence::Held
        );
    }
    assert_eq!(
        store
            .complete(&key, &stranger, b"other", lease)
            .await
            .unwrap(),
        idem::store::Fence::Lost
    );
    let row = server.psql(&format!(
        "SELECT convert_from(payload, 'UTF8') FROM idem_records WHERE key = '{key}'"
    ));
    assert_eq!(row, "done");
}

/// `IDEM_STORE` naming a PostgreSQL port as Redis: the error says that the server there does not
/// answer as Redis, not only the socket's "broken pipe".
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_url_naming_postgresql_says_the_server_is_not_redis() {
    let server = PostgresServer::start();
    let config = idem::Config::default()
        .store(format!("redis://127.0.0.1:{}/0", server.port()))
        .connect_timeout(Duration::from_secs(10));
    let error = idem::Idem::connect(&config).await.unwrap_err();
    let Error::Connect { source, .. } = &error else {
        panic!("expected a connect error, got {error:?}");
    };
    let message = error.to_string();
    assert!(message.contains("did not answer as Redis"), "{message}");
    assert_eq!(
        source.kind(),
        idem::StoreErrorKind::Unavailable,
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_runs_as_raw_sql_or_through_sqlx_migrate_not_as_one_prepared_statement() {
    use sqlx::Executor;
    let server = PostgresServer::start();
    let no_table = || {
        PostgresOptions::default()
            .create_table(false)
            .reaper_interval(None)
    };
    server.psql("CREATE DATABASE by_raw_sql");
    server.psql("CREATE DATABASE by_migrator");
    let url = |db: &str| format!("postgres://postgres@127.0.0.1:{}/{db}", server.port());

    // Several statements: one prepared statement cannot hold them.
    let pool = sqlx::PgPool::connect(&url("by_raw_sql")).await.unwrap();
    let error = sqlx::query(idem::postgres::MIGRATION)
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("cannot insert multiple commands into a prepared statement"),
        "{error}"
    );
    // `raw_sql` sends them as they are (the simple query protocol), and again is harmless.
    for _ in 0..2 {
        sqlx::raw_sql(idem::postgres::MIGRATION)
            .execute(&pool)
            .await
            .unwrap();
    }
    let store = PostgresStore::connect_with(&url("by_raw_sql"), no_table())
        .await
        .expect("the table made by raw_sql is idem's");
    let done = Call::new(scope("migrated"), "raw")
        .store(store)
        .run(async { 1_u8 })
        .await
        .unwrap();
    assert_eq!(done.status, Status::Executed);

    // `sqlx migrate`: the constant written as a migration file, run by sqlx's migrator.
    let dir = std::env::temp_dir().join(format!("idem-migrations-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("20261130000000_idem_records.sql"),
        idem::postgres::MIGRATION,
    )
    .unwrap();
    let pool = sqlx::PgPool::connect(&url("by_migrator")).await.unwrap();
    let migrator = sqlx::migrate::Migrator::new(dir.as_path()).await.unwrap();
    migrator
        .run(&pool)
        .await
        .expect("sqlx migrate runs MIGRATION");
    migrator.run(&pool).await.expect("and finds it applied");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, 1);
    // The folder shipped with idem, too: the same file, already applied.
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../idem-runtime/migrations");
    sqlx::migrate::Migrator::new(shipped.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .expect("the shipped folder is the same migration");
    let _ = std::fs::remove_dir_all(&dir);
    let store = PostgresStore::connect_with(&url("by_migrator"), no_table())
        .await
        .expect("the table made by sqlx migrate is idem's");
    let done = Call::new(scope("migrated"), "migrator")
        .store(store)
        .run(async { 2_u8 })
        .await
        .unwrap();
    assert_eq!(done.status, Status::Executed);
    pool.execute("SELECT 1").await.unwrap();
}
