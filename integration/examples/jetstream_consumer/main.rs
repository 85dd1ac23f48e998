//! "Order placed" messages on NATS JetStream, written to PostgreSQL once per order, while a
//! consumer process is SIGKILLed mid-work and its messages are redelivered.
//!
//! A durable pull consumer with explicit acks and a short `ack_wait` feeds two consumer
//! processes (copies of this program). Each handles a message with
//! `#[idempotent(key = order.order_id)]` around the order's insert and acks after the call
//! returns, executed or replayed (in the transactional mode, after the commit). Meanwhile this
//! program publishes the orders (one in ten again after the stream's duplicate window, as a
//! publisher that retried late; one in twenty again at once, which JetStream's `Nats-Msg-Id`
//! check drops), kills the second consumer at random moments, starts it again, and at the end
//! prints what happened.
//!
//! ```text
//! cargo run -p idem-integration --example jetstream_consumer     # starts nats-server -js and a PostgreSQL of its own
//! IDEM_STORE=redis://127.0.0.1:6379/0 cargo run -p idem-integration --example jetstream_consumer
//! IDEM_STORE=postgres://app@127.0.0.1/app cargo run -p idem-integration --example jetstream_consumer
//! NATS_URL=nats://127.0.0.1:4222 DATABASE_URL=postgres://app@127.0.0.1/app cargo run -p idem-integration --example jetstream_consumer
//! IDEM_JS_MODE=sqlite cargo run -p idem-integration --example jetstream_consumer   # orders and records in a SQLite file
//! IDEM_JS_MODE=mysql cargo run -p idem-integration --example jetstream_consumer    # in a MariaDB of its own (or MYSQL_URL)
//! ```
//!
//! `IDEM_JS_MODE` (`tx`, `tokio-postgres`, `sqlite`, `mysql`, `postgres`, `redis`) names the
//! mode directly (`tokio-postgres`: the transactional mode through tokio-postgres); the
//! transactional modes on SQLite and MySQL keep the orders and idem's records in that database
//! (a file in a temporary directory; the server `MYSQL_URL` names, or a MariaDB started here).
//!
//! `IDEM_STORE` chooses the mode. Without it, the transactional mode: the handler is
//! `#[idempotent(key = order.order_id, tx = conn)]`, idem's record is in the orders' database
//! (its `PostgresStore` table) and is written in the order's own transaction, so a consumer
//! killed before the commit leaves neither the order nor the record, and its redelivery writes
//! the order once. With `redis://…` (a lease in Redis) or `postgres://…` (a lease in
//! PostgreSQL, through the plain `PostgresStore`), the order's insert commits on its own, so a
//! consumer killed between the insert and idem's completion can leave an order written twice
//! (counted below). `NATS_URL` and `DATABASE_URL` name servers to use instead of starting
//! them (the stream `ORDERS` is made afresh; orders go to the table `jetstream_orders`).
//! `ORDERS` sets how many orders are published (default 300).

#[allow(dead_code)]
#[path = "../../tests/support/mariadb.rs"]
mod mariadb;
#[allow(dead_code)]
#[path = "../../tests/support/nats.rs"]
mod nats;
#[allow(dead_code)]
#[path = "../../tests/support/postgres.rs"]
mod postgres;

mod consumer;
mod run;

use std::process::Command;
use std::time::Duration;

use consumer::{BoxError, Mode};
use run::{Plan, Setup};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    if std::env::var_os(consumer::ENV_WORKER).is_some() {
        return consumer::run_worker().await;
    }
    let orders = match std::env::var("ORDERS") {
        Ok(n) => n.parse()?,
        Err(_) => 300,
    };
    let plan = Plan {
        orders,
        republish_every: 10,
        in_window_every: 20,
        publish_over: Duration::from_millis(orders as u64 * 10),
        duplicate_window: Duration::from_secs(1),
        ack_wait: Duration::from_secs(2),
        lease: Duration::from_secs(2),
        wait: Duration::from_secs(5),
        work: Duration::from_millis(5),
        concurrency: 4,
        min_kills: 5,
        kill_every_ms: (300, 600),
        deadline: Duration::from_secs(60 + orders as u64 / 20),
    };

    // What is not configured is started here, and stopped at the end.
    let nats_server;
    let nats_url = match std::env::var("NATS_URL") {
        Ok(url) => url,
        Err(_) => {
            nats_server = nats::NatsServer::start();
            println!("started nats-server -js on {}", nats_server.url());
            nats_server.url()
        }
    };
    let store = std::env::var("IDEM_STORE").ok();
    let mode = match std::env::var(consumer::ENV_MODE) {
        Ok(word) => Mode::parse(&word)?,
        Err(_) => mode_of_store(store.as_deref())?,
    };
    let (postgres_server, mariadb_server);
    let dir = std::env::temp_dir().join(format!("idem-jetstream-{}", std::process::id()));
    let database_url = match mode {
        Mode::SqliteTx => {
            std::fs::create_dir_all(&dir)?;
            format!("sqlite://{}", dir.join("orders.db").display())
        }
        Mode::MySqlTx => match std::env::var("MYSQL_URL") {
            Ok(url) => url,
            Err(_) => {
                mariadb_server = mariadb::MariaDb::start();
                println!("started MariaDB on port {}", mariadb_server.port());
                mariadb_server.database("orders")
            }
        },
        Mode::Redis | Mode::Postgres | Mode::Tx | Mode::TokioTx => {
            match std::env::var("DATABASE_URL") {
                Ok(url) => url,
                Err(_) => {
                    postgres_server = postgres::PostgresServer::quiet();
                    println!("started PostgreSQL on {}", postgres_server.url());
                    postgres_server.url()
                }
            }
        }
    };
    // In the transactional modes the configured store is the store on the orders' database:
    // its table is the one the transactions write to.
    let store_url = match (mode.transactional(), store) {
        (false, Some(store)) => store,
        _ => database_url.clone(),
    };
    let setup = Setup {
        mode,
        nats_url,
        database_url,
        store_url,
        program: || Command::new(std::env::current_exe().expect("this program's path")),
    };
    // The transactional mode has no lease: a killed consumer's transaction frees its keys.
    let lease = if mode.transactional() {
        String::new()
    } else {
        format!(", lease {:?}", plan.lease)
    };
    println!(
        "mode: {}; {} orders, two consumers, ack_wait {:?}{lease}",
        mode.name(),
        plan.orders,
        plan.ack_wait,
    );
    let report = run::run(&plan, &setup).await?;
    print!("{}", run::table(std::slice::from_ref(&report)));
    println!(
        "{} deliveries ({} seen redelivered) for {} messages; {} order writes for {} orders \
         ({} written twice); {} duplicates skipped",
        report.deliveries,
        report.redeliveries_seen,
        report.messages,
        report.rows,
        report.orders,
        report.written_twice(),
        report.duplicates_skipped
    );
    if mode == Mode::SqliteTx {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// The mode of an `IDEM_STORE` URL: the transactional mode when there is none.
fn mode_of_store(url: Option<&str>) -> Result<Mode, String> {
    let Some(url) = url else {
        return Ok(Mode::Tx);
    };
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(Mode::Redis)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Mode::Postgres)
    } else {
        Err(format!(
            "IDEM_STORE={url}: the consumer runs on redis://… or postgres://…"
        ))
    }
}
