//! `PostgresStore` behind PgBouncer in transaction mode (`PostgresOptions::pooler`): one
//! PostgreSQL and one `pgbouncer` (`pool_mode = transaction`, three server connections shared
//! by every client, handed out round robin) for the whole binary. Through the pooler: the store
//! conformance suite, unchanged; the statements a call sends (none prepared, a replay one and a
//! first call two); waiters that get the holder's value although `LISTEN` carries nothing, and
//! never wait past their `wait`; the transactional mode on the caller's own connection, whose
//! record commits and rolls back with the caller's transaction.
//!
//! Its own main (`harness = false`): every test shares the two servers, which a process per
//! test (cargo-nextest) could not.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use idem::testing::{Forwarding, Op};
use idem::{Call, Error, PostgresOptions, PostgresStore, Status, StoreHandle};
use sqlx::Executor;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use support::pgbouncer::PgBouncer;
use support::postgres::PostgresServer;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The server connections PgBouncer keeps: fewer than a store's ten, so that client
/// connections share them.
const SERVER_CONNECTIONS: usize = 3;

/// The application name of the store whose statements a test counts.
const COUNTED: &str = "idem-bouncer-counted";

/// The application name of a waiter's store.
const WAITER: &str = "idem-bouncer-waiter";

fn main() {
    support::harness::run_single("postgres_store_behind_pgbouncer_in_transaction_mode", run);
}

fn run() {
    let server = PostgresServer::start();
    let bouncer = PgBouncer::transaction_mode(&server, SERVER_CONNECTIONS);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let all = async {
            conformance(&bouncer).await;
            statements_are_sent_unprepared(&server, &bouncer).await;
            a_waiter_gets_the_value_without_listen(&server, &bouncer).await;
            a_waiter_never_waits_past_its_wait(&bouncer).await;
            the_transactional_mode_commits_and_rolls_back_with_the_callers_transaction(
                &server, &bouncer,
            )
            .await;
        };
        tokio::time::timeout(Duration::from_secs(240), all)
            .await
            .expect("the tests through PgBouncer did not end within 240 s");
    });
}

/// The store through the pooler, with `pooler(true)` and `options`' other settings.
async fn store(bouncer: &PgBouncer, options: PostgresOptions) -> PostgresStore {
    PostgresStore::connect_with(&bouncer.url(), options.pooler(true))
        .await
        .expect("connect to PostgreSQL through PgBouncer")
}

type Case = fn(StoreHandle) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Each case of `idem::testing`, by name.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        [$((stringify!($case), (|store| Box::pin(idem::testing::$case(store))) as Case)),*]
    };
}

/// The conformance suite, case after case, each on a store of its own through the pooler.
async fn conformance(bouncer: &PgBouncer) {
    let cases = cases![
        exactly_once_under_concurrency,
        many_keys_with_duplicates,
        replays_equal_values,
        fingerprint_mismatch,
        waiter_gets_result,
        reject_without_wait,
        lease_expiry_fences_late_completion,
        derived_keys_survive_a_takeover,
        steps_replay_after_a_takeover,
        abandoned_attempts_fail_or_rerun,
        renewal_keeps_long_body_exclusive,
        errors_release_and_cache_err_stores,
        panic_releases_claim,
        dropped_future_releases_claim,
        corrupt_record_is_decode_error,
        ttl_expiry_runs_again,
        fenced_operations,
        long_and_hashed_keys,
        unstorable_result_is_reported_never_rerun,
        inspect_and_forget,
        stats_count_by_state,
        tokens_redeem_once_under_concurrency,
        tokens_unknown_and_expired_are_refused,
        tokens_redeemed_duplicate_replays,
        tokens_bound_and_count,
    ];
    let names: Vec<&str> = cases.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        idem::testing::CASES,
        "every conformance case runs through the pooler"
    );
    for (name, case) in cases {
        let started = Instant::now();
        let store = store(bouncer, PostgresOptions::default()).await;
        case(StoreHandle::from(store)).await;
        println!("conformance {name} ... ok ({:?})", started.elapsed());
    }
}

/// The statements of `application` the server logged while `f` ran, PgBouncer's own `SET`s
/// of the client's parameters left out.
async fn sent_during<F: Future>(
    server: &PostgresServer,
    application: &str,
    f: F,
) -> (F::Output, Vec<String>) {
    let ours = || -> Vec<String> {
        server
            .statements(application)
            .into_iter()
            .filter(|sql| !sql.starts_with("SET "))
            .collect()
    };
    let before = ours().len();
    let out = f.await;
    (out, ours()[before..].to_vec())
}

/// A first call is two statements and a replay one, as without the pooler, and the server
/// prepared none of them: each came by the simple query protocol with its values in it.
async fn statements_are_sent_unprepared(server: &PostgresServer, bouncer: &PgBouncer) {
    let options = PostgresOptions::default()
        .application_name(COUNTED)
        .reaper_interval(None)
        .pool_size(2);
    let store = store(bouncer, options).await;
    let scope = "bouncer::statements";
    let (first, first_sent) = sent_during(
        server,
        COUNTED,
        Call::new(scope, "k")
            .store(store.clone())
            .run(async { 7_u32 }),
    )
    .await;
    assert_eq!(first.unwrap().status, Status::Executed);
    let (again, replay_sent) = sent_during(
        server,
        COUNTED,
        Call::new(scope, "k")
            .store(store.clone())
            .run(async { 8_u32 }),
    )
    .await;
    let again = again.unwrap();
    assert_eq!((again.value, again.status), (7, Status::Replayed));
    println!("first call: {first_sent:#?}\nreplay: {replay_sent:#?}");
    assert_eq!(first_sent.len(), 2, "claim + complete: {first_sent:#?}");
    assert!(first_sent[0].starts_with("WITH live AS"), "{first_sent:#?}");
    assert!(first_sent[1].starts_with("WITH done AS"), "{first_sent:#?}");
    assert_eq!(replay_sent.len(), 1, "the claim alone: {replay_sent:#?}");
    assert!(replay_sent[0].starts_with("WITH live AS"));
    // The key is in the statement's text, as a literal.
    assert!(replay_sent[0].contains(":k'::text)"), "{replay_sent:#?}");

    // A store that reads first (the order one of mostly replays learns): the read is sent the
    // same way, and a first call is the read, the upsert, the completion.
    let options = PostgresOptions::default()
        .application_name(COUNTED)
        .reaper_interval(None)
        .pool_size(2)
        .claim_order(idem::store::ClaimOrder::ReadFirst);
    let reading = self::store(bouncer, options).await;
    let (again, read_sent) = sent_during(
        server,
        COUNTED,
        Call::new(scope, "k")
            .store(reading.clone())
            .run(async { 9_u32 }),
    )
    .await;
    let again = again.unwrap();
    assert_eq!((again.value, again.status), (7, Status::Replayed));
    assert_eq!(read_sent.len(), 1, "the read alone: {read_sent:#?}");
    assert!(
        read_sent[0].starts_with("SELECT false, state"),
        "{read_sent:#?}"
    );
    assert!(read_sent[0].contains(":k'::text)"), "{read_sent:#?}");
    let (first, first_sent) = sent_during(
        server,
        COUNTED,
        Call::new(scope, "k2")
            .store(reading.clone())
            .run(async { 10_u32 }),
    )
    .await;
    assert_eq!(first.unwrap().status, Status::Executed);
    assert_eq!(
        first_sent.len(),
        3,
        "read, claim, complete: {first_sent:#?}"
    );
    // After the read, the bare upsert claims, sent the same way.
    assert!(
        first_sent[1].starts_with("WITH cfg AS MATERIALIZED")
            && first_sent[1].contains(":k2'::text)"),
        "{first_sent:#?}"
    );

    let log = server.log();
    let ours: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(&format!("] {COUNTED}: LOG:  ")))
        .collect();
    assert!(!ours.is_empty());
    assert!(
        ours.iter().all(|line| !line.contains("LOG:  execute ")),
        "no statement of the store was prepared: {ours:#?}"
    );
}

/// A duplicate waits for the holder through the pooler, where `LISTEN` carries nothing: it
/// polls, and gets the holder's value soon after the holder completes, long before its
/// `wait` or the holder's lease would end it; its store never sent `LISTEN`.
async fn a_waiter_gets_the_value_without_listen(server: &PostgresServer, bouncer: &PgBouncer) {
    let holder_store = store(bouncer, PostgresOptions::default()).await;
    let waiter_store =
        Forwarding::new(store(bouncer, PostgresOptions::default().application_name(WAITER)).await);
    let scope = "bouncer::waiter";
    let (started, is_started) = oneshot::channel::<()>();
    let (finish, finished) = oneshot::channel::<()>();
    let holder = tokio::spawn(
        Call::new(scope, "k")
            .store(holder_store)
            .lease(Duration::from_secs(60))
            .run(async move {
                let _ = started.send(());
                let _ = finished.await;
                "held".to_owned()
            }),
    );
    is_started.await.expect("the holder's body started");
    let waiter = tokio::spawn(
        Call::new(scope, "k")
            .store(waiter_store.clone())
            .wait(Duration::from_secs(60))
            .run(async { "duplicate ran".to_owned() }),
    );
    waiter_store.waiting().await;
    // Time for a listener, were there one, to be up: a store that relied on a `LISTEN`
    // through the pooler would sleep out the waiter's minute.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        waiter_store.calls(Op::Complete),
        0,
        "the waiter only waited"
    );
    let completed = Instant::now();
    finish.send(()).expect("the holder waits");
    let held = holder.await.unwrap().unwrap();
    assert_eq!(
        (held.value.as_str(), held.status),
        ("held", Status::Executed)
    );
    let waited = waiter.await.unwrap().unwrap();
    let after = completed.elapsed();
    assert_eq!(
        (waited.value.as_str(), waited.status),
        ("held", Status::Waited)
    );
    // The waiter's wait and the holder's lease are a minute: only a look at the key can have
    // told it so soon. A look every 100 ms at most, with room for a slow machine.
    assert!(
        after < Duration::from_secs(5),
        "the waiter got the value {after:?} after the completion"
    );
    println!("a waiter through the pooler got the value {after:?} after the completion");
    let listens: Vec<String> = server
        .statements(WAITER)
        .into_iter()
        .filter(|sql| sql.contains("LISTEN"))
        .collect();
    assert!(
        listens.is_empty(),
        "a store behind a pooler in transaction mode never listens: {listens:#?}"
    );
}

/// A duplicate of a holder that never completes gives up when its `wait` ends, through the
/// pooler as anywhere else.
async fn a_waiter_never_waits_past_its_wait(bouncer: &PgBouncer) {
    let store = store(bouncer, PostgresOptions::default()).await;
    let scope = "bouncer::wait_bound";
    let (started, is_started) = oneshot::channel::<()>();
    let (finish, finished) = oneshot::channel::<()>();
    let holder = tokio::spawn(
        Call::new(scope, "k")
            .store(store.clone())
            .lease(Duration::from_secs(60))
            .run(async move {
                let _ = started.send(());
                let _ = finished.await;
                1_u32
            }),
    );
    is_started.await.expect("the holder's body started");
    let wait = Duration::from_millis(700);
    let asked = Instant::now();
    let refused = Call::new(scope, "k")
        .store(store.clone())
        .wait(wait)
        .run(async { 2_u32 })
        .await;
    let took = asked.elapsed();
    assert!(
        matches!(refused, Err(Error::InProgress { .. })),
        "{refused:?}"
    );
    assert!(took >= wait, "gave up after {took:?}, before its wait");
    // A look in flight when the wait ends is cut short; a statement's round trip or two of
    // slack, on a slow machine.
    assert!(
        took < wait + Duration::from_secs(1),
        "gave up {took:?} after asking, its wait being {wait:?}"
    );
    finish.send(()).expect("the holder waits");
    assert_eq!(holder.await.unwrap().unwrap().value, 1);
}

/// The application's pool through the pooler. What its own statements do there is the
/// application's business: the tests send theirs unprepared (the simple query protocol).
async fn application_pool(bouncer: &PgBouncer) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(&bouncer.url())
        .await
        .expect("the application's pool through PgBouncer")
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    let row = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap();
    let text: String = sqlx::Row::try_get(&row, 0).unwrap();
    text.parse().unwrap()
}

/// `tx = conn` through the pooler: idem's statements go through the caller's connection,
/// inside its transaction (which holds one server connection from `BEGIN` to its end), and
/// the record commits and rolls back with it; transactions after transactions, on server
/// connections handed out round robin, find none of idem's statements missing.
async fn the_transactional_mode_commits_and_rolls_back_with_the_callers_transaction(
    server: &PostgresServer,
    bouncer: &PgBouncer,
) {
    let store = store(bouncer, PostgresOptions::default()).await;
    let pool = application_pool(bouncer).await;
    server.psql("CREATE TABLE items (key text PRIMARY KEY, note text NOT NULL)");
    let records = |key: &str| {
        format!(
            "SELECT count(*)::text FROM idem_records WHERE key LIKE '%:{key}' AND state = 'completed'"
        )
    };
    let items = |key: &str| format!("SELECT count(*)::text FROM items WHERE key = '{key}'");
    async fn insert(conn: &mut PgConnection, key: &str) {
        conn.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO items (key, note) VALUES ('{key}', 'n')"
        )))
        .await
        .expect("the business row");
    }

    for round in 0..4 {
        let rolled_back = format!("rolled-back-{round}");
        let committed = format!("committed-{round}");

        // Rolled back: neither the business row nor the record stays.
        let mut tx = pool.begin().await.unwrap();
        let key = rolled_back.clone();
        let first = Call::new("bouncer::tx", rolled_back.as_str())
            .store(store.clone())
            .run_tx(&mut tx, async move |conn: &mut PgConnection| {
                insert(conn, &key).await;
                41_u32
            })
            .await
            .unwrap();
        assert_eq!((first.value, first.status), (41, Status::Executed));
        tx.rollback().await.unwrap();
        assert_eq!(count(&pool, &items(&rolled_back)).await, 0);
        assert_eq!(count(&pool, &records(&rolled_back)).await, 0);

        // Committed: both; and a replay in another transaction runs nothing.
        let mut tx = pool.begin().await.unwrap();
        let key = committed.clone();
        let second = Call::new("bouncer::tx", committed.as_str())
            .store(store.clone())
            .run_tx(&mut tx, async move |conn: &mut PgConnection| {
                insert(conn, &key).await;
                42_u32
            })
            .await
            .unwrap();
        assert_eq!((second.value, second.status), (42, Status::Executed));
        tx.commit().await.unwrap();
        assert_eq!(count(&pool, &items(&committed)).await, 1);
        assert_eq!(count(&pool, &records(&committed)).await, 1);

        let mut tx = pool.begin().await.unwrap();
        let again = Call::new("bouncer::tx", committed.as_str())
            .store(store.clone())
            .run_tx(&mut tx, async |_: &mut PgConnection| -> u32 {
                unreachable!("replayed")
            })
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!((again.value, again.status), (42, Status::Replayed));

        // The plain store sees what the transaction committed.
        let plain = Call::new("bouncer::tx", committed.as_str())
            .store(store.clone())
            .run(async { 0_u32 })
            .await
            .unwrap();
        assert_eq!((plain.value, plain.status), (42, Status::Replayed));
    }
    pool.close().await;
}
