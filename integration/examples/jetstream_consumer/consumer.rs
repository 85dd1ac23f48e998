//! The consumer: a process that pulls "order placed" messages from a durable JetStream
//! consumer, writes each order to PostgreSQL through an idempotent handler, and acks after
//! the handler returns (whether it ran the write now or replayed an earlier run's result).
//!
//! In the transactional modes ([`Mode::Tx`] on PostgreSQL through sqlx, [`Mode::TokioTx`]
//! through tokio-postgres and deadpool-postgres, [`Mode::SqliteTx`] on a SQLite file,
//! [`Mode::MySqlTx`] on MySQL/MariaDB) the handler's insert, idem's claim and its result commit
//! in one transaction of the orders' database, before the ack.
//!
//! It prints one line per event on stdout (`delivery`, `acked`, `failed`), which the process
//! that started it counts; a line printed before a SIGKILL is already in the pipe.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt;
use idem::idempotent;
use serde::{Deserialize, Serialize};
use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool};

/// Any error, from any thread.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The stream the orders are published to.
pub const STREAM: &str = "ORDERS";
/// The subject of an "order placed" message.
pub const SUBJECT: &str = "orders.placed";
/// The durable pull consumer both consumer processes share.
pub const CONSUMER: &str = "order-writer";

/// The table of the orders on PostgreSQL, with no unique constraint on `order_id`: an order
/// written twice is two rows, which is what the runs count.
const ORDERS_TABLE: &str = "CREATE TABLE IF NOT EXISTS jetstream_orders (
    row_id    bigserial PRIMARY KEY,
    order_id  text NOT NULL,
    customer  text NOT NULL,
    cents     bigint NOT NULL,
    placed_by text NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT clock_timestamp()
)";

/// [`ORDERS_TABLE`] on SQLite.
const ORDERS_TABLE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS jetstream_orders (
    row_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id  TEXT NOT NULL,
    customer  TEXT NOT NULL,
    cents     INTEGER NOT NULL,
    placed_by TEXT NOT NULL,
    placed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
)";

/// [`ORDERS_TABLE`] on MySQL/MariaDB (InnoDB).
const ORDERS_TABLE_MYSQL: &str = "CREATE TABLE IF NOT EXISTS jetstream_orders (
    row_id    BIGINT AUTO_INCREMENT PRIMARY KEY,
    order_id  VARCHAR(64) NOT NULL,
    customer  VARCHAR(64) NOT NULL,
    cents     BIGINT NOT NULL,
    placed_by VARCHAR(64) NOT NULL,
    placed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE = InnoDB";

/// Set in a consumer process's environment: its name. The others say where everything is.
pub const ENV_WORKER: &str = "IDEM_JS_WORKER";
/// The NATS server's URL.
pub const ENV_NATS: &str = "IDEM_JS_NATS";
/// The orders' database URL.
pub const ENV_DATABASE: &str = "IDEM_JS_DATABASE";
/// The [`Mode`] ([`Mode::as_str`]).
pub const ENV_MODE: &str = "IDEM_JS_MODE";
/// Milliseconds of work after the order is written (the rest of the handling).
pub const ENV_WORK_MS: &str = "IDEM_JS_WORK_MS";
/// How many messages a consumer process handles at once.
pub const ENV_CONCURRENCY: &str = "IDEM_JS_CONCURRENCY";

/// Which guarantee the handler runs under: where idem keeps its record, and whether that
/// record commits with the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// idem's record in Redis (`IDEM_STORE=redis://…`): a lease; the order goes to PostgreSQL
    /// outside idem's record.
    Redis,
    /// idem's record in PostgreSQL through the plain `PostgresStore`
    /// (`IDEM_STORE=postgres://…`): a lease too, its statements committed apart from the
    /// order's insert.
    Postgres,
    /// idem's record in the orders' database, written in the order's own transaction
    /// (`#[idempotent(tx = conn)]`): the claim, the order and the result commit together or
    /// not at all, and a duplicate waits on PostgreSQL's lock of the key, not on a lease.
    Tx,
    /// [`Mode::Tx`] with the orders and idem's record in a SQLite file
    /// (`IDEM_STORE=sqlite://…`, the same file): each order's transaction begins with
    /// `BEGIN IMMEDIATE`, and a duplicate waits on the database's write lock.
    SqliteTx,
    /// [`Mode::Tx`] with the orders and idem's record in MySQL/MariaDB (`IDEM_STORE=mysql://…`,
    /// the same database): a duplicate waits on InnoDB's lock of the key's row.
    MySqlTx,
    /// [`Mode::Tx`] with the orders written through tokio-postgres (a deadpool-postgres pool,
    /// `tx = conn` on a `tokio_postgres::Transaction`): the same table and records as sqlx's.
    TokioTx,
}

impl Mode {
    /// The mode's word in `IDEM_JS_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Redis => "redis",
            Mode::Postgres => "postgres",
            Mode::Tx => "tx",
            Mode::SqliteTx => "sqlite",
            Mode::MySqlTx => "mysql",
            Mode::TokioTx => "tokio-postgres",
        }
    }

    /// Whether idem's record commits with the order (no lease).
    pub fn transactional(self) -> bool {
        matches!(
            self,
            Mode::Tx | Mode::SqliteTx | Mode::MySqlTx | Mode::TokioTx
        )
    }

    /// The mode named `word` ([`Mode::as_str`]).
    pub fn parse(word: &str) -> Result<Mode, String> {
        [
            Mode::Redis,
            Mode::Postgres,
            Mode::Tx,
            Mode::SqliteTx,
            Mode::MySqlTx,
            Mode::TokioTx,
        ]
        .into_iter()
        .find(|mode| mode.as_str() == word)
        .ok_or_else(|| format!("{ENV_MODE}={word}: not a mode of the consumer"))
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Redis => "redis (lease)",
            Mode::Postgres => "postgres (lease)",
            Mode::Tx => "postgres (tx)",
            Mode::SqliteTx => "sqlite (tx)",
            Mode::MySqlTx => "mysql (tx)",
            Mode::TokioTx => "tokio-pg (tx)",
        }
    }
}

/// An "order placed" message, as published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The business id of the order: the idempotency key.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// The amount.
    pub cents: i64,
}

/// What handling an order produced; a replay returns the first run's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The order's row.
    pub row_id: i64,
    /// The delivery that wrote it (`consumer/stream sequence/delivery count`).
    pub placed_by: String,
}

/// Why an order was not handled; the message is then not acked, and comes again.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The database of the orders failed.
    #[error("orders database: {0}")]
    Database(#[from] sqlx::Error),
    /// idem could not decide (store down, the key still in progress after `wait`).
    #[error(transparent)]
    Idempotency(#[from] idem::Error),
    /// The orders database failed, through tokio-postgres or its pool.
    #[error("orders database (tokio-postgres): {0}")]
    Tokio(String),
}

/// One delivery of a message, as its handler sees it.
pub struct Delivery {
    /// `consumer/stream sequence/delivery count`.
    pub name: String,
    /// Work after the write.
    pub work: Duration,
    /// When the handler's body began, if it ran.
    body_started: OnceLock<Instant>,
    /// In the transactional mode, when the transaction had begun: the call's claim starts
    /// there (the lease modes take their connection inside the body).
    tx_begun: OnceLock<Instant>,
}

impl Delivery {
    /// How long a call that began at `called` spent before running its body, or in all when
    /// it did not run it: the claim, and any wait for another holder of the key.
    fn before_body(&self, called: Instant) -> Duration {
        let called = *self.tx_begun.get().unwrap_or(&called);
        match self.body_started.get() {
            Some(started) => started.duration_since(called),
            None => called.elapsed(),
        }
    }
}

/// Writes the order: the database effect that must happen once. Not idempotent by itself.
pub async fn insert_order(
    conn: &mut PgConnection,
    order: &OrderPlaced,
    placed_by: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO jetstream_orders (order_id, customer, cents, placed_by)
         VALUES ($1, $2, $3, $4) RETURNING row_id",
    )
    .bind(&order.order_id)
    .bind(&order.customer)
    .bind(order.cents)
    .bind(placed_by)
    .fetch_one(conn)
    .await
}

/// [`insert_order`] on SQLite.
async fn insert_order_sqlite(
    conn: &mut SqliteConnection,
    order: &OrderPlaced,
    placed_by: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO jetstream_orders (order_id, customer, cents, placed_by)
         VALUES (?, ?, ?, ?) RETURNING row_id",
    )
    .bind(&order.order_id)
    .bind(&order.customer)
    .bind(order.cents)
    .bind(placed_by)
    .fetch_one(conn)
    .await
}

/// [`insert_order`] on MySQL/MariaDB: the row's id is the insert's `LAST_INSERT_ID()`.
async fn insert_order_mysql(
    conn: &mut MySqlConnection,
    order: &OrderPlaced,
    placed_by: &str,
) -> Result<i64, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO jetstream_orders (order_id, customer, cents, placed_by) VALUES (?, ?, ?, ?)",
    )
    .bind(&order.order_id)
    .bind(&order.customer)
    .bind(order.cents)
    .bind(placed_by)
    .execute(conn)
    .await?;
    Ok(i64::try_from(done.last_insert_id()).expect("a row id fits in an i64"))
}

/// The orders' database, by mode: PostgreSQL for the lease modes and [`Mode::Tx`].
#[derive(Clone)]
pub enum Orders {
    /// PostgreSQL.
    Postgres(PgPool),
    /// A SQLite file (WAL).
    Sqlite(SqlitePool),
    /// MySQL/MariaDB.
    MySql(MySqlPool),
    /// PostgreSQL through tokio-postgres, on a deadpool-postgres pool.
    Tokio(deadpool_postgres::Pool),
}

impl Orders {
    /// A pool of `connections` on the orders' database `url` of `mode`: a `sqlite://<path>`
    /// URL for [`Mode::SqliteTx`] (the file is made when missing).
    pub async fn connect(mode: Mode, url: &str, connections: u32) -> Result<Orders, BoxError> {
        Ok(match mode {
            Mode::Redis | Mode::Postgres | Mode::Tx => Orders::Postgres(
                PgPoolOptions::new()
                    .max_connections(connections)
                    .connect(url)
                    .await?,
            ),
            Mode::SqliteTx => {
                let path = url
                    .strip_prefix("sqlite://")
                    .ok_or_else(|| format!("{url}: not a sqlite:// URL"))?;
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(10));
                Orders::Sqlite(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(connections)
                        .connect_with(options)
                        .await?,
                )
            }
            Mode::MySqlTx => Orders::MySql(
                MySqlPoolOptions::new()
                    .max_connections(connections)
                    .connect(url)
                    .await?,
            ),
            Mode::TokioTx => {
                let config: tokio_postgres::Config = url.parse()?;
                let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
                Orders::Tokio(
                    deadpool_postgres::Pool::builder(manager)
                        .max_size(connections as usize)
                        .build()?,
                )
            }
        })
    }

    /// Creates the orders' table, and idem's (its migration) in the transactional modes,
    /// which write to it in the order's transaction and never create it.
    pub async fn create_tables(&self, mode: Mode) -> Result<(), BoxError> {
        let with_idem = |table: &str, migration: &str| {
            let idem = if mode.transactional() { migration } else { "" };
            sqlx::AssertSqlSafe(format!("{table};\n{idem}"))
        };
        match self {
            Orders::Postgres(pool) => {
                let sql = with_idem(ORDERS_TABLE, idem::postgres::MIGRATION);
                sqlx::raw_sql(sql).execute(pool).await?;
            }
            Orders::Sqlite(pool) => {
                let sql = with_idem(ORDERS_TABLE_SQLITE, idem::sqlite::MIGRATION);
                sqlx::raw_sql(sql).execute(pool).await?;
            }
            Orders::MySql(pool) => {
                let sql = with_idem(ORDERS_TABLE_MYSQL, idem::mysql::MIGRATION);
                sqlx::raw_sql(sql).execute(pool).await?;
            }
            Orders::Tokio(pool) => {
                let sql = with_idem(ORDERS_TABLE, idem::postgres::MIGRATION);
                pool.get().await?.batch_execute(sql.0.as_str()).await?;
            }
        }
        Ok(())
    }

    /// The rows written for the orders whose id is `LIKE` `like`, and how many distinct
    /// orders they are.
    pub async fn count(&self, like: &str) -> Result<(u64, u64), BoxError> {
        let sql =
            "SELECT count(*), count(DISTINCT order_id) FROM jetstream_orders WHERE order_id LIKE ";
        let (rows, orders): (i64, i64) = match self {
            Orders::Postgres(pool) => {
                let sql = sqlx::AssertSqlSafe(format!("{sql}$1"));
                sqlx::query_as(sql).bind(like).fetch_one(pool).await?
            }
            Orders::Sqlite(pool) => {
                let sql = sqlx::AssertSqlSafe(format!("{sql}?"));
                sqlx::query_as(sql).bind(like).fetch_one(pool).await?
            }
            Orders::MySql(pool) => {
                let sql = sqlx::AssertSqlSafe(format!("{sql}?"));
                sqlx::query_as(sql).bind(like).fetch_one(pool).await?
            }
            Orders::Tokio(pool) => {
                let row = pool
                    .get()
                    .await?
                    .query_one(&format!("{sql}$1"), &[&like])
                    .await?;
                (row.get(0), row.get(1))
            }
        };
        Ok((rows as u64, orders as u64))
    }
}

/// The handler of the lease modes: once per order id while idem's record lives; the insert
/// commits on its own, before idem stores the result.
#[idempotent(key = order.order_id, ttl = "24h")]
async fn place_order(
    orders: &PgPool,
    order: &OrderPlaced,
    delivery: &Delivery,
) -> Result<Placed, HandlerError> {
    let _ = delivery.body_started.set(Instant::now());
    let mut conn = orders.acquire().await?;
    let row_id = insert_order(&mut conn, order, &delivery.name).await?;
    // The rest of the handling (a confirmation sent, a cache warmed): a crash here leaves the
    // order written and idem's record still in progress.
    tokio::time::sleep(delivery.work).await;
    Ok(Placed {
        row_id,
        placed_by: delivery.name.clone(),
    })
}

/// The handler of the transactional mode: the same work, with the order written through
/// `conn`, in the caller's transaction, where idem writes its claim and the result too. A kill
/// before the commit rolls back all three; the redelivery then runs the body once more, on a
/// clean slate.
#[idempotent(key = order.order_id, ttl = "24h", tx = conn)]
async fn place_order_tx(
    conn: &mut PgConnection,
    order: &OrderPlaced,
    delivery: &Delivery,
) -> Result<Placed, HandlerError> {
    let _ = delivery.body_started.set(Instant::now());
    let row_id = insert_order(conn, order, &delivery.name).await?;
    // The rest of the handling, inside the transaction: a crash here rolls the order back.
    tokio::time::sleep(delivery.work).await;
    Ok(Placed {
        row_id,
        placed_by: delivery.name.clone(),
    })
}

/// [`place_order_tx`] on SQLite.
#[idempotent(key = order.order_id, ttl = "24h", tx = conn)]
async fn place_order_tx_sqlite(
    conn: &mut SqliteConnection,
    order: &OrderPlaced,
    delivery: &Delivery,
) -> Result<Placed, HandlerError> {
    let _ = delivery.body_started.set(Instant::now());
    let row_id = insert_order_sqlite(conn, order, &delivery.name).await?;
    tokio::time::sleep(delivery.work).await;
    Ok(Placed {
        row_id,
        placed_by: delivery.name.clone(),
    })
}

/// [`place_order_tx`] on MySQL/MariaDB.
#[idempotent(key = order.order_id, ttl = "24h", tx = conn)]
async fn place_order_tx_mysql(
    conn: &mut MySqlConnection,
    order: &OrderPlaced,
    delivery: &Delivery,
) -> Result<Placed, HandlerError> {
    let _ = delivery.body_started.set(Instant::now());
    let row_id = insert_order_mysql(conn, order, &delivery.name).await?;
    tokio::time::sleep(delivery.work).await;
    Ok(Placed {
        row_id,
        placed_by: delivery.name.clone(),
    })
}

/// [`place_order_tx`] through tokio-postgres.
#[idempotent(key = order.order_id, ttl = "24h", tx = conn)]
async fn place_order_tx_tokio(
    conn: &mut tokio_postgres::Transaction<'_>,
    order: &OrderPlaced,
    delivery: &Delivery,
) -> Result<Placed, HandlerError> {
    let _ = delivery.body_started.set(Instant::now());
    let row_id: i64 = conn
        .query_one(
            "INSERT INTO jetstream_orders (order_id, customer, cents, placed_by)
             VALUES ($1, $2, $3, $4) RETURNING row_id",
            &[
                &order.order_id,
                &order.customer,
                &order.cents,
                &delivery.name,
            ],
        )
        .await
        .map_err(|error| HandlerError::Tokio(error.to_string()))?
        .get(0);
    tokio::time::sleep(delivery.work).await;
    Ok(Placed {
        row_id,
        placed_by: delivery.name.clone(),
    })
}

/// One order in a transaction of its own, then the commit. An error (a failed insert, a
/// duplicate that waited past `wait`) drops the transaction, which rolls back. On SQLite the
/// transaction begins with `BEGIN IMMEDIATE`: a duplicate waits for the write lock instead of
/// meeting a stale snapshot.
async fn place_order_in_tx(
    orders: &Orders,
    order: &OrderPlaced,
    delivery: &Delivery,
) -> Result<Placed, HandlerError> {
    macro_rules! in_tx {
        ($begin:expr, $handler:ident) => {{
            let mut tx = $begin.await?;
            let _ = delivery.tx_begun.set(Instant::now());
            let placed = $handler(&mut tx, order, delivery).await?;
            tx.commit().await?;
            Ok(placed)
        }};
    }
    match orders {
        Orders::Postgres(pool) => in_tx!(pool.begin(), place_order_tx),
        Orders::Sqlite(pool) => in_tx!(pool.begin_with("BEGIN IMMEDIATE"), place_order_tx_sqlite),
        Orders::MySql(pool) => in_tx!(pool.begin(), place_order_tx_mysql),
        Orders::Tokio(pool) => {
            let tokio = |error: &dyn std::fmt::Display| HandlerError::Tokio(error.to_string());
            let mut client = pool.get().await.map_err(|e| tokio(&e))?;
            let mut tx = client.transaction().await.map_err(|e| tokio(&e))?;
            let _ = delivery.tx_begun.set(Instant::now());
            let placed = place_order_tx_tokio(&mut tx, order, delivery).await?;
            tx.commit().await.map_err(|e| tokio(&e))?;
            Ok(placed)
        }
    }
}

/// Runs the consumer process named by `IDEM_JS_WORKER` until its stdin closes.
pub async fn run_worker() -> Result<(), BoxError> {
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let name = env(ENV_WORKER)?;
    let work = Duration::from_millis(env(ENV_WORK_MS)?.parse()?);
    let concurrency: usize = env(ENV_CONCURRENCY)?.parse()?;
    let mode = Mode::parse(&env(ENV_MODE)?)?;

    idem::init(idem::Config::from_env()?).await?;
    let orders = Orders::connect(mode, &env(ENV_DATABASE)?, concurrency as u32 + 1).await?;
    let jetstream = jetstream::new(async_nats::connect(env(ENV_NATS)?).await?);
    let consumer: PullConsumer = jetstream
        .get_stream(STREAM)
        .await?
        .get_consumer(CONSUMER)
        .await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(concurrency * 2)
        .messages()
        .await?;
    // The process that started this one closes stdin to stop it.
    std::thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        std::process::exit(0);
    });
    println!("ready");

    messages
        .for_each_concurrent(concurrency, |message| {
            let (orders, name) = (&orders, &name);
            async move {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => return eprintln!("{name}: pull: {error}"),
                };
                let Ok(info) = message.info() else {
                    return eprintln!("{name}: a message without JetStream metadata");
                };
                let (seq, count) = (info.stream_sequence, info.delivered);
                println!("delivery {seq} {count}");
                let order: OrderPlaced = match serde_json::from_slice(&message.payload) {
                    Ok(order) => order,
                    Err(error) => {
                        // Not an order: never handled, so never redelivered.
                        let _ = message.ack_with(AckKind::Term).await;
                        return eprintln!("{name}: message {seq}: {error}");
                    }
                };
                let delivery = Delivery {
                    name: format!("{name}/{seq}/{count}"),
                    work,
                    body_started: OnceLock::new(),
                    tx_begun: OnceLock::new(),
                };
                let called = Instant::now();
                let placed = match mode {
                    Mode::Redis | Mode::Postgres => match orders {
                        Orders::Postgres(pool) => place_order(pool, &order, &delivery).await,
                        _ => unreachable!("the lease modes write their orders to PostgreSQL"),
                    },
                    Mode::Tx | Mode::SqliteTx | Mode::MySqlTx | Mode::TokioTx => {
                        place_order_in_tx(orders, &order, &delivery).await
                    }
                };
                let before_body = delivery.before_body(called).as_micros();
                let ran = if delivery.body_started.get().is_some() {
                    "executed"
                } else {
                    "skipped"
                };
                match placed {
                    Ok(_) => match message.double_ack().await {
                        Ok(()) => println!("acked {seq} {count} {ran} {before_body}"),
                        Err(error) => println!("failed {seq} {count} ack: {error}"),
                    },
                    Err(error) => {
                        let _ = message
                            .ack_with(AckKind::Nak(Some(Duration::from_millis(200))))
                            .await;
                        println!("failed {seq} {count} {error}");
                    }
                }
            }
        })
        .await;
    Err("the consumer's message stream ended".into())
}
