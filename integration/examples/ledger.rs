//! Transfers between two accounts in PostgreSQL, SQLite or MySQL/MariaDB, each applied exactly
//! once although a flaky client delivers them again and again: `#[idempotent(tx = conn)]`
//! writes idem's record in the transfer's own transaction, so the record and the balances
//! commit (or roll back) together.
//!
//! ```sh
//! cargo run -p idem-integration --example ledger            # PostgreSQL
//! cargo run -p idem-integration --example ledger -- sqlite  # SQLite, in a temporary file
//! cargo run -p idem-integration --example ledger -- mysql   # MariaDB (or MySQL)
//! cargo run -p idem-integration --example ledger -- tokio-postgres   # PostgreSQL through tokio-postgres
//! ```
//!
//! On PostgreSQL it runs against the server named by `DATABASE_URL` (it creates three tables
//! there: `ledger_accounts`, `ledger_entries` and idem's `idem_records`), or else starts one of
//! its own in a temporary directory on a free port, as the tests do. On MySQL the same with
//! `MYSQL_URL`, or a MariaDB of its own (`mariadbd` on a free port, never 3306). On SQLite it
//! makes a file in a temporary directory. The client loses answers after the commit (and retries), delivers
//! some transfers twice at once, and has some transactions cut before their commit; it prints,
//! per transfer, how often it was delivered, how often its body ran, and how many ledger
//! entries it left: always one.

#[path = "../tests/support/postgres.rs"]
#[allow(dead_code)]
mod postgres;

#[path = "../tests/support/mariadb.rs"]
#[allow(dead_code)]
mod mariadb;

use std::collections::BTreeMap;
use std::sync::Mutex;

use idem::idempotent;
use serde::{Deserialize, Serialize};
use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions};

#[derive(Debug, Clone, Serialize)]
struct Transfer {
    id: String,
    from: String,
    to: String,
    amount: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    entry: i64,
    from_balance: i64,
    to_balance: i64,
}

#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("insufficient funds in {0}")]
    InsufficientFunds(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database (tokio-postgres): {0}")]
    Tokio(#[from] tokio_postgres::Error),
    #[error("pool (deadpool-postgres): {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Idem(#[from] idem::Error),
    #[error("the client lost the answer")]
    Lost,
}

/// How often each transfer's body ran (rolled back runs included).
static BODY_RUNS: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

/// The transfer's statements: the same text for both databases (SQLite reads `$1` as a
/// parameter too).
const DEBIT: &str = "UPDATE ledger_accounts SET balance = balance - $1 WHERE name = $2 AND balance >= $1 RETURNING balance";
const CREDIT: &str =
    "UPDATE ledger_accounts SET balance = balance + $1 WHERE name = $2 RETURNING balance";
const ENTRY: &str = "INSERT INTO ledger_entries (transfer, from_account, to_account, amount) VALUES ($1, $2, $3, $4) RETURNING id";

/// The body of a transfer on either database: counts its run, then debits, credits and
/// writes the entry through `$conn`.
macro_rules! transfer_body {
    ($conn:expr, $transfer:expr) => {{
        let (conn, transfer) = ($conn, $transfer);
        *BODY_RUNS
            .lock()
            .unwrap()
            .entry(transfer.id.clone())
            .or_default() += 1;
        let from_balance: i64 = sqlx::query_scalar(DEBIT)
            .bind(transfer.amount)
            .bind(&transfer.from)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| TransferError::InsufficientFunds(transfer.from.clone()))?;
        let to_balance: i64 = sqlx::query_scalar(CREDIT)
            .bind(transfer.amount)
            .bind(&transfer.to)
            .fetch_one(&mut *conn)
            .await?;
        let entry: i64 = sqlx::query_scalar(ENTRY)
            .bind(&transfer.id)
            .bind(&transfer.from)
            .bind(&transfer.to)
            .bind(transfer.amount)
            .fetch_one(&mut *conn)
            .await?;
        Ok(Receipt {
            entry,
            from_balance,
            to_balance,
        })
    }};
}

/// Moves `amount` from one account to the other and writes the ledger entry: once per
/// transfer id, in the caller's PostgreSQL transaction.
#[idempotent(key = transfer.id, tx = conn, fingerprint = transfer, ttl = "7d")]
async fn apply(conn: &mut PgConnection, transfer: &Transfer) -> Result<Receipt, TransferError> {
    transfer_body!(conn, transfer)
}

/// [`apply`] in the caller's SQLite transaction.
#[idempotent(key = transfer.id, tx = conn, fingerprint = transfer, ttl = "7d", scope = "ledger::apply")]
async fn apply_sqlite(
    conn: &mut SqliteConnection,
    transfer: &Transfer,
) -> Result<Receipt, TransferError> {
    transfer_body!(conn, transfer)
}

/// [`apply`] in the caller's MySQL transaction: MySQL has no `UPDATE … RETURNING`, so each
/// balance is read back in the transaction (InnoDB reads the transaction's own writes), and
/// the entry's id is the insert's `LAST_INSERT_ID()`.
#[idempotent(key = transfer.id, tx = conn, fingerprint = transfer, ttl = "7d", scope = "ledger::apply")]
async fn apply_mysql(
    conn: &mut MySqlConnection,
    transfer: &Transfer,
) -> Result<Receipt, TransferError> {
    *BODY_RUNS
        .lock()
        .unwrap()
        .entry(transfer.id.clone())
        .or_default() += 1;
    let debited = sqlx::query(
        "UPDATE ledger_accounts SET balance = balance - ? WHERE name = ? AND balance >= ?",
    )
    .bind(transfer.amount)
    .bind(&transfer.from)
    .bind(transfer.amount)
    .execute(&mut *conn)
    .await?;
    if debited.rows_affected() == 0 {
        return Err(TransferError::InsufficientFunds(transfer.from.clone()));
    }
    sqlx::query("UPDATE ledger_accounts SET balance = balance + ? WHERE name = ?")
        .bind(transfer.amount)
        .bind(&transfer.to)
        .execute(&mut *conn)
        .await?;
    let entry = sqlx::query(
        "INSERT INTO ledger_entries (transfer, from_account, to_account, amount) VALUES (?, ?, ?, ?)",
    )
    .bind(&transfer.id)
    .bind(&transfer.from)
    .bind(&transfer.to)
    .bind(transfer.amount)
    .execute(&mut *conn)
    .await?
    .last_insert_id();
    let balance = "SELECT balance FROM ledger_accounts WHERE name = ?";
    let from_balance: i64 = sqlx::query_scalar(balance)
        .bind(&transfer.from)
        .fetch_one(&mut *conn)
        .await?;
    let to_balance: i64 = sqlx::query_scalar(balance)
        .bind(&transfer.to)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Receipt {
        entry: i64::try_from(entry).expect("an entry id fits in an i64"),
        from_balance,
        to_balance,
    })
}

/// [`apply`] in the caller's transaction on tokio-postgres: the same statements, the same idem
/// table and records.
#[idempotent(key = transfer.id, tx = conn, fingerprint = transfer, ttl = "7d", scope = "ledger::apply")]
async fn apply_tokio(
    conn: &mut tokio_postgres::Transaction<'_>,
    transfer: &Transfer,
) -> Result<Receipt, TransferError> {
    *BODY_RUNS
        .lock()
        .unwrap()
        .entry(transfer.id.clone())
        .or_default() += 1;
    let from_balance: i64 = conn
        .query_opt(DEBIT, &[&transfer.amount, &transfer.from])
        .await?
        .ok_or_else(|| TransferError::InsufficientFunds(transfer.from.clone()))?
        .get(0);
    let to_balance: i64 = conn
        .query_one(CREDIT, &[&transfer.amount, &transfer.to])
        .await?
        .get(0);
    let entry: i64 = conn
        .query_one(
            ENTRY,
            &[&transfer.id, &transfer.from, &transfer.to, &transfer.amount],
        )
        .await?
        .get(0);
    Ok(Receipt {
        entry,
        from_balance,
        to_balance,
    })
}

/// The database the ledger is in: its pool.
#[derive(Clone)]
enum Bank {
    Postgres(PgPool),
    /// PostgreSQL through tokio-postgres (a deadpool-postgres pool) for the transfers; its
    /// sqlx pool for the example's own setup and counts.
    Tokio(deadpool_postgres::Pool, PgPool),
    Sqlite(SqlitePool),
    MySql(MySqlPool),
}

/// Which database the ledger is in, from the example's first argument.
#[derive(Clone, Copy, PartialEq)]
enum Database {
    Postgres,
    Sqlite,
    MySql,
    Tokio,
}

/// One delivery's transaction, then `fate`; `Ok` with the receipt when the answer arrives.
macro_rules! deliver_in {
    ($pool:expr, $apply:ident, $transfer:expr, $fate:expr) => {{
        // On SQLite, `BEGIN IMMEDIATE`: a duplicate waits for the write lock instead of
        // meeting a stale snapshot (see the README's "On SQLite").
        let mut tx = $pool.await?;
        let receipt = $apply(&mut tx, $transfer).await?;
        match $fate {
            Fate::CutBeforeCommit => {
                drop(tx);
                Err(TransferError::Lost)
            }
            Fate::LostAfterCommit => {
                tx.commit().await?;
                Err(TransferError::Lost)
            }
            Fate::Fine => {
                tx.commit().await?;
                Ok(receipt)
            }
        }
    }};
}

impl Bank {
    /// One delivery of `transfer`: its own transaction, and whatever `fate` does to it.
    async fn deliver(&self, transfer: &Transfer, fate: Fate) -> Result<Receipt, TransferError> {
        match self {
            Bank::Postgres(pool) => deliver_in!(pool.begin(), apply, transfer, fate),
            Bank::Sqlite(pool) => {
                deliver_in!(
                    pool.begin_with("BEGIN IMMEDIATE"),
                    apply_sqlite,
                    transfer,
                    fate
                )
            }
            Bank::MySql(pool) => deliver_in!(pool.begin(), apply_mysql, transfer, fate),
            Bank::Tokio(pool, _) => {
                let mut client = pool.get().await?;
                let mut tx = client.transaction().await?;
                let receipt = apply_tokio(&mut tx, transfer).await?;
                match fate {
                    Fate::CutBeforeCommit => {
                        drop(tx);
                        Err(TransferError::Lost)
                    }
                    Fate::LostAfterCommit => {
                        tx.commit().await?;
                        Err(TransferError::Lost)
                    }
                    Fate::Fine => {
                        tx.commit().await?;
                        Ok(receipt)
                    }
                }
            }
        }
    }

    /// Runs a statement of this example's own, with no result.
    async fn execute(&self, sql: String) -> Result<(), sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(sql);
        match self {
            Bank::Postgres(pool) | Bank::Tokio(_, pool) => {
                sqlx::raw_sql(sql).execute(pool).await.map(drop)
            }
            Bank::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
            Bank::MySql(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
        }
    }

    /// Opens an account.
    async fn open(&self, name: &str, balance: i64) -> Result<(), sqlx::Error> {
        let sql = "INSERT INTO ledger_accounts (name, balance) VALUES ($1, $2)";
        match self {
            Bank::Postgres(pool) | Bank::Tokio(_, pool) => {
                let query = sqlx::query(sql).bind(name).bind(balance);
                query.execute(pool).await.map(drop)
            }
            Bank::Sqlite(pool) => {
                let query = sqlx::query(sql).bind(name).bind(balance);
                query.execute(pool).await.map(drop)
            }
            Bank::MySql(pool) => {
                let sql = "INSERT INTO ledger_accounts (name, balance) VALUES (?, ?)";
                let query = sqlx::query(sql).bind(name).bind(balance);
                query.execute(pool).await.map(drop)
            }
        }
    }

    /// The ledger entries of this run's transfers, by transfer.
    async fn entries(&self, like: String) -> Result<BTreeMap<String, i64>, sqlx::Error> {
        let sql = "SELECT transfer, count(*) FROM ledger_entries WHERE transfer LIKE $1 GROUP BY transfer";
        let rows: Vec<(String, i64)> = match self {
            Bank::Postgres(pool) | Bank::Tokio(_, pool) => {
                sqlx::query_as(sql).bind(like).fetch_all(pool).await?
            }
            Bank::Sqlite(pool) => sqlx::query_as(sql).bind(like).fetch_all(pool).await?,
            Bank::MySql(pool) => {
                let sql = "SELECT transfer, count(*) FROM ledger_entries WHERE transfer LIKE ? GROUP BY transfer";
                sqlx::query_as(sql).bind(like).fetch_all(pool).await?
            }
        };
        Ok(rows.into_iter().collect())
    }

    /// An account's balance.
    async fn balance(&self, name: &str) -> Result<i64, sqlx::Error> {
        let sql = "SELECT balance FROM ledger_accounts WHERE name = $1";
        match self {
            Bank::Postgres(pool) | Bank::Tokio(_, pool) => {
                sqlx::query_scalar(sql).bind(name).fetch_one(pool).await
            }
            Bank::Sqlite(pool) => sqlx::query_scalar(sql).bind(name).fetch_one(pool).await,
            Bank::MySql(pool) => {
                let sql = "SELECT balance FROM ledger_accounts WHERE name = ?";
                sqlx::query_scalar(sql).bind(name).fetch_one(pool).await
            }
        }
    }
}

/// What goes wrong with one delivery.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Fine,
    /// The transaction commits, then the answer is lost (a timeout after the commit).
    LostAfterCommit,
    /// The connection is cut before the commit: the transaction rolls back.
    CutBeforeCommit,
}

/// Delivers `transfer` until an answer arrives; returns how many deliveries it took.
async fn retry(bank: &Bank, transfer: &Transfer, fates: &mut Fates) -> (Receipt, usize) {
    let mut deliveries = 0;
    loop {
        deliveries += 1;
        let fate = fates.next();
        let answer = if fates.duplicate() {
            // Delivered twice at once: the second waits on the first's lock, then replays.
            deliveries += 1;
            let (a, b) = tokio::join!(
                bank.deliver(transfer, fate),
                bank.deliver(transfer, Fate::Fine)
            );
            a.or(b)
        } else {
            bank.deliver(transfer, fate).await
        };
        match answer {
            Ok(receipt) => return (receipt, deliveries),
            Err(TransferError::Lost) => {}
            Err(error) => panic!("transfer {}: {error}", transfer.id),
        }
    }
}

/// The client's bad luck, from a fixed seed so that every run is the same, and its tally.
struct Fates {
    state: u64,
    lost: usize,
    cut: usize,
    duplicates: usize,
}

impl Fates {
    fn roll(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % 100
    }

    fn next(&mut self) -> Fate {
        match self.roll() {
            0..40 => {
                self.lost += 1;
                Fate::LostAfterCommit
            }
            40..60 => {
                self.cut += 1;
                Fate::CutBeforeCommit
            }
            _ => Fate::Fine,
        }
    }

    fn duplicate(&mut self) -> bool {
        let twice = self.roll() < 35;
        self.duplicates += usize::from(twice);
        twice
    }
}

const TRANSFERS: usize = 12;
const OPENING: i64 = 1_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database = match std::env::args().nth(1).as_deref() {
        None | Some("postgres") => Database::Postgres,
        Some("sqlite") => Database::Sqlite,
        Some("mysql") => Database::MySql,
        Some("tokio-postgres") => Database::Tokio,
        Some(other) => {
            return Err(format!(
                "unknown database `{other}`: postgres, tokio-postgres, sqlite or mysql"
            )
            .into());
        }
    };
    let (own_postgres, own_mariadb);
    let dir = std::env::temp_dir().join(format!("idem-ledger-{}", std::process::id()));
    let (bank, store): (Bank, idem::StoreHandle) = match database {
        Database::Sqlite => {
            std::fs::create_dir_all(&dir)?;
            let file = dir.join("ledger.db");
            println!("SQLite: {}", file.display());
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(&file)
                        .create_if_missing(true)
                        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal),
                )
                .await?;
            // The store creates idem's table when it is missing; `tx` calls write to it.
            let store =
                idem::SqliteStore::from_pool(pool.clone(), idem::SqliteOptions::default()).await?;
            (Bank::Sqlite(pool), store.into())
        }
        Database::Postgres | Database::Tokio => {
            let url = match std::env::var("DATABASE_URL") {
                Ok(url) => url,
                Err(_) => {
                    println!(
                        "DATABASE_URL is not set: starting a PostgreSQL of this example's own"
                    );
                    own_postgres = postgres::PostgresServer::quiet();
                    own_postgres.url()
                }
            };
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .connect(&url)
                .await?;
            let store = idem::PostgresStore::open(&url).await?;
            let bank = if database == Database::Tokio {
                let config: tokio_postgres::Config = url.parse()?;
                let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
                let tokio = deadpool_postgres::Pool::builder(manager)
                    .max_size(4)
                    .build()?;
                Bank::Tokio(tokio, pool)
            } else {
                Bank::Postgres(pool)
            };
            (bank, store.into())
        }
        Database::MySql => {
            let url = match std::env::var("MYSQL_URL") {
                Ok(url) => url,
                Err(_) => {
                    println!("MYSQL_URL is not set: starting a MariaDB of this example's own");
                    own_mariadb = mariadb::MariaDb::start();
                    own_mariadb.database("ledger")
                }
            };
            let pool = MySqlPoolOptions::new()
                .max_connections(4)
                .connect(&url)
                .await?;
            // The store creates idem's table when it is missing; `tx` calls write to it.
            let store =
                idem::MySqlStore::from_pool(pool.clone(), idem::MySqlOptions::default()).await?;
            (Bank::MySql(pool), store.into())
        }
    };
    let (name, serial) = match database {
        Database::Sqlite => ("text", "INTEGER PRIMARY KEY AUTOINCREMENT"),
        Database::Postgres | Database::Tokio => ("text", "bigserial PRIMARY KEY"),
        Database::MySql => ("varchar(100)", "bigint AUTO_INCREMENT PRIMARY KEY"),
    };
    bank.execute(format!(
        "CREATE TABLE IF NOT EXISTS ledger_accounts (name {name} PRIMARY KEY, balance bigint NOT NULL)"
    ))
    .await?;
    bank.execute(format!(
        "CREATE TABLE IF NOT EXISTS ledger_entries (id {serial}, transfer {name} NOT NULL, from_account {name} NOT NULL, to_account {name} NOT NULL, amount bigint NOT NULL)"
    ))
    .await?;
    let run = format!("{:x}", std::process::id());
    let (alice, bob) = (format!("alice-{run}"), format!("bob-{run}"));
    for name in [&alice, &bob] {
        bank.open(name, OPENING).await?;
    }

    let idem = idem::Idem::with_settings(store, &idem::Config::default());
    let mut fates = Fates {
        state: 1_234_567,
        lost: 0,
        cut: 0,
        duplicates: 0,
    };
    let mut delivered = BTreeMap::new();
    for n in 0..TRANSFERS {
        let (from, to) = if n % 3 == 2 {
            (&bob, &alice)
        } else {
            (&alice, &bob)
        };
        let transfer = Transfer {
            id: format!("transfer-{run}-{n:02}"),
            from: from.clone(),
            to: to.clone(),
            amount: 10 * (n as i64 + 1),
        };
        let (_, deliveries) = idem.scope(retry(&bank, &transfer, &mut fates)).await;
        delivered.insert(
            transfer.id.clone(),
            (transfer.amount, from.clone(), deliveries),
        );
    }

    let entries = bank.entries(format!("transfer-{run}-%")).await?;
    let runs = BODY_RUNS.lock().unwrap().clone();
    println!(
        "{:<24} {:>7} {:>11} {:>10} {:>14}",
        "transfer", "amount", "deliveries", "body runs*", "ledger entries"
    );
    let mut expected = [OPENING, OPENING];
    for (id, (amount, from, deliveries)) in &delivered {
        let count = entries.get(id).copied().unwrap_or(0);
        println!(
            "{id:<24} {amount:>7} {deliveries:>11} {:>10} {count:>14}",
            runs.get(id).copied().unwrap_or(0)
        );
        assert_eq!(count, 1, "{id} is in the ledger once");
        let (debit, credit) = if *from == alice { (0, 1) } else { (1, 0) };
        expected[debit] -= amount;
        expected[credit] += amount;
    }
    println!(
        "* a body that ran in a transaction cut before its commit left nothing: its writes rolled back with idem's record"
    );
    println!(
        "the client lost {} answers after the commit, had {} transactions cut before it, and delivered {} times twice at once",
        fates.lost, fates.cut, fates.duplicates
    );
    let balances = [bank.balance(&alice).await?, bank.balance(&bob).await?];
    println!(
        "balances: {alice} {} (expected {}), {bob} {} (expected {}); every transfer applied once",
        balances[0], expected[0], balances[1], expected[1]
    );
    assert_eq!(balances, expected);
    if database == Database::Sqlite {
        drop(bank);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
