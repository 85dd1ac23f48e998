//! The JetStream consumer example under crashes: 2,000 orders (one in ten published again as a
//! new message after the duplicate window), two consumer processes, one of them SIGKILLed at
//! random moments at least 20 times and started again; once every message is acked, the
//! orders are counted. Run once per mode of idem's record (a lease in Redis, a lease in
//! PostgreSQL, the transactional mode on PostgreSQL through sqlx and through tokio-postgres, on
//! a SQLite file and on MariaDB), reported
//! side by side: each transactional mode must write every order exactly once.
//!
//! This test binary has no libtest harness (`harness = false`): run normally, it starts
//! nats-server (JetStream), PostgreSQL and Redis of its own and copies of itself as the
//! consumers (`IDEM_JS_WORKER` set), which run the example's own consumer code.

mod support;

#[path = "../examples/jetstream_consumer/consumer.rs"]
mod consumer;
#[path = "../examples/jetstream_consumer/run.rs"]
mod run;

use std::process::Command;
use std::time::Duration;

use consumer::Mode;
use run::{Plan, Report, Setup};
use support::mariadb::MariaDb;
use support::nats::NatsServer;
use support::postgres::PostgresServer;
use support::redis::RedisServer;
use support::sqlite::TempDb;

const ORDERS: usize = 2_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if std::env::var_os(consumer::ENV_WORKER).is_some() {
        if let Err(error) = runtime.block_on(consumer::run_worker()) {
            eprintln!("consumer: {error}");
            std::process::exit(1);
        }
        return;
    }
    support::harness::run_single("jetstream_consumers_killed_mid_work", || {
        runtime.block_on(jetstream_consumers_killed_mid_work())
    });
}

fn plan() -> Plan {
    Plan {
        orders: ORDERS,
        republish_every: 10,
        in_window_every: 20,
        publish_over: Duration::from_secs(7),
        duplicate_window: Duration::from_secs(1),
        ack_wait: Duration::from_secs(2),
        lease: Duration::from_secs(2),
        wait: Duration::from_secs(5),
        work: Duration::from_millis(5),
        concurrency: 4,
        min_kills: 20,
        kill_every_ms: (300, 500),
        deadline: Duration::from_secs(40),
    }
}

async fn jetstream_consumers_killed_mid_work() {
    let nats = NatsServer::start();
    let postgres = PostgresServer::quiet();
    let redis = RedisServer::start();
    let database = |name: &str| {
        postgres.psql(&format!("CREATE DATABASE {name}"));
        format!("postgres://postgres@127.0.0.1:{}/{name}", postgres.port())
    };
    let program = || Command::new(std::env::current_exe().expect("the test binary's path"));

    let mariadb = MariaDb::start();
    let sqlite = TempDb::new("jetstream");
    let modes = [
        (Mode::Redis, database("orders_redis"), redis.url()),
        (Mode::Postgres, database("orders_postgres"), String::new()),
        (Mode::Tx, database("orders_tx"), String::new()),
        (Mode::TokioTx, database("orders_tokio"), String::new()),
        (Mode::SqliteTx, sqlite.url(), String::new()),
        (Mode::MySqlTx, mariadb.database("orders_tx"), String::new()),
    ];
    let plan = plan();
    let mut reports = Vec::new();
    for (mode, database_url, store_url) in modes {
        // The plain PostgresStore keeps idem's table in the orders' database; in the
        // transactional mode it is the table the orders' transactions write the records to.
        let store_url = match mode {
            Mode::Redis => store_url,
            _ => database_url.clone(),
        };
        let setup = Setup {
            mode,
            nats_url: nats.url(),
            database_url,
            store_url,
            program,
        };
        // SQLite writes one transaction at a time across both consumer processes: under a
        // loaded machine (the whole suite at once) its redeliveries pile up and draining them
        // takes longer. A bound on the run, not a measure of it.
        let plan = match mode {
            Mode::SqliteTx => Plan {
                deadline: Duration::from_secs(120),
                ..plan.clone()
            },
            _ => plan.clone(),
        };
        let report = run::run(&plan, &setup)
            .await
            .unwrap_or_else(|e| panic!("the {} run failed: {e}", mode.name()));
        check(&plan, &report);
        reports.push(report);
    }
    println!("{}", run::table(&reports));
}

/// What every mode must show; how many orders were written twice is reported, not asserted,
/// for the lease modes (the order's insert commits apart from idem's record). The
/// transactional mode writes every order exactly once.
fn check(plan: &Plan, report: &Report) {
    let mode = report.mode;
    let republished = plan.orders.div_ceil(plan.republish_every) as u64;
    let in_window = (plan.orders - 1).div_ceil(plan.in_window_every);
    assert_eq!(
        report.messages,
        plan.orders as u64 + republished,
        "{mode}: every late re-publish is a new message"
    );
    assert_eq!(
        report.dropped_by_window, in_window,
        "{mode}: JetStream drops the re-publishes inside its window"
    );
    assert!(
        report.kills >= plan.min_kills,
        "{mode}: {} kills",
        report.kills
    );
    assert_eq!(report.unacked, 0, "{mode}: every message acked");
    assert_eq!(
        report.orders, plan.orders as u64,
        "{mode}: every order written"
    );
    assert!(
        report.redeliveries_seen > 0,
        "{mode}: redeliveries observed"
    );
    assert!(report.cut_by_kills > 0, "{mode}: kills hit work in flight");
    assert!(
        report.duplicates_skipped > 0,
        "{mode}: duplicates skipped by idem"
    );
    if [Mode::Tx, Mode::TokioTx, Mode::SqliteTx, Mode::MySqlTx]
        .iter()
        .any(|tx| tx.name() == mode)
    {
        assert_eq!(
            report.rows, plan.orders as u64,
            "{mode}: exactly one row per order"
        );
        assert_eq!(report.written_twice(), 0, "{mode}: no order written twice");
    }
    assert!(
        report.wall < plan.deadline,
        "{mode}: took {:?}",
        report.wall
    );
}
