//! The transactional mode (`tx = conn`) on sqlx's [`SqliteConnection`]: [`SqliteTxStore`], the
//! [`TxStore`] of the records of one table written through the caller's connection, inside its
//! transaction, and SQLite's answers as the errors a caller can act on. The engine's side
//! (what to do with them) is `engine/tx.rs`.
//!
//! SQLite has one write lock per database, not a lock per row: the claim's insert takes it,
//! and the caller's transaction holds it until it commits or rolls back. So:
//! - a call on a connection outside any transaction begins its own with `BEGIN IMMEDIATE`,
//!   which takes the write lock first (waiting up to the connection's `busy_timeout` for
//!   another writer) and then reads the newest records: a duplicate in another transaction
//!   waits for the first to commit, then replays it;
//! - in the caller's own transaction, the claim reads and then inserts; if another connection
//!   wrote since the transaction's snapshot (a `BEGIN` that read first, or a deferred one that
//!   raced a duplicate), SQLite refuses the upgrade at once (`SQLITE_BUSY_SNAPSHOT`), and the
//!   call is [`Error::Conflict`]: roll back and retry, or begin with `BEGIN IMMEDIATE`
//!   (`conn.begin_with("BEGIN IMMEDIATE")`), which never meets it;
//! - a key held by a call of the plain [`SqliteStore`] (a lease, outside any transaction) is
//!   [`Error::InProgress`] at once: that holder needs the write lock this transaction holds (or
//!   will take) to complete, and this transaction's snapshot would not see it complete.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Sqlite, Transaction};

use super::sql::{self, Statements};
use super::table::Table;
use super::{SqliteStore, failure};
use crate::error::Error;
use crate::record::Claim;
use crate::store::StoreHandle;
use crate::store::tx::{Claimed, Transactional, TxFuture, TxStore, tx_connections};

/// A call with `tx = conn` on a `&mut SqliteConnection` writes through [`SqliteTxStore`].
impl Transactional for SqliteConnection {
    type Store = SqliteTxStore;
}

tx_connections!(SqliteConnection: SqliteConnection, Transaction<'_, Sqlite>, PoolConnection<Sqlite>);

/// The table of the records written in callers' transactions.
pub struct SqliteTxStore {
    sql: Arc<Statements>,
    table: Table,
}

/// The statements of the default table (`idem_records`), built once.
fn default_table() -> &'static (Arc<Statements>, Table) {
    static DEFAULT: OnceLock<(Arc<Statements>, Table)> = OnceLock::new();
    DEFAULT.get_or_init(|| {
        let table = Table::new("idem_records").expect("the default name is valid");
        (Arc::new(Statements::new(&table)), table)
    })
}

impl TxStore<SqliteConnection> for SqliteTxStore {
    type Transaction<'c> = Transaction<'c, Sqlite>;

    /// The table of `store` if it is a [`SqliteStore`], else the default one.
    fn of(store: &StoreHandle, _scope: &str) -> SqliteTxStore {
        match store.downcast_ref::<SqliteStore>() {
            Some(store) => SqliteTxStore {
                sql: store.shared.sql.clone(),
                table: store.shared.table.clone(),
            },
            None => {
                let (sql, table) = default_table();
                SqliteTxStore {
                    sql: sql.clone(),
                    table: table.clone(),
                }
            }
        }
    }

    fn in_transaction(&self, conn: &SqliteConnection) -> bool {
        conn.is_in_transaction()
    }

    /// `BEGIN IMMEDIATE` outside any transaction (the write lock first, then the newest
    /// records), a savepoint inside one.
    fn begin<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        key: &'a str,
    ) -> TxFuture<'a, Transaction<'a, Sqlite>> {
        Box::pin(async move {
            let begun = if conn.is_in_transaction() {
                conn.begin().await
            } else {
                conn.begin_with("BEGIN IMMEDIATE").await
            };
            begun.map_err(|error| self.failed(key, error))
        })
    }

    fn commit<'a>(
        &'a self,
        transaction: Transaction<'a, Sqlite>,
        key: &'a str,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            transaction
                .commit()
                .await
                .map_err(|error| self.failed(key, error))
        })
    }

    fn rollback<'a>(
        &'a self,
        transaction: Transaction<'a, Sqlite>,
        key: &'a str,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            transaction
                .rollback()
                .await
                .map_err(|error| self.failed(key, error))
        })
    }

    /// Nothing to send: a statement on a missing table fails when SQLite prepares it, which
    /// leaves the caller's transaction as it was (the error says how to create the table).
    fn prepare<'a>(&'a self, _conn: &'a mut SqliteConnection, _key: &'a str) -> TxFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The live record, read first (a replay is one read); without one, the insert that takes
    /// the key, which holds the write lock from then on. `wait` is not used: the insert waits
    /// for the write lock as long as the connection's `busy_timeout`.
    fn claim<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
        _wait: Duration,
    ) -> TxFuture<'a, Claimed> {
        Box::pin(async move {
            let failed = |error| self.failed(key, error);
            if let Some(record) = sql::live(&mut *conn, &self.sql, key)
                .await
                .map_err(failed)?
            {
                return Ok(Claimed::Found(record));
            }
            if sql::take(&mut *conn, &self.sql, key, claim, lease)
                .await
                .map_err(failed)?
            {
                return Ok(Claimed::Held);
            }
            // A live row appeared between the read and the insert: read it again.
            Ok(Claimed::Unseen)
        })
    }

    fn complete<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        key: &'a str,
        claim: &'a Claim,
        payload: &'a [u8],
        ttl: Duration,
    ) -> TxFuture<'a, bool> {
        Box::pin(async move {
            sql::tx_complete(conn, &self.sql, key, claim, payload, ttl)
                .await
                .map_err(|error| self.failed(key, error))
        })
    }

    fn release<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        key: &'a str,
        claim: &'a Claim,
    ) -> TxFuture<'a, bool> {
        Box::pin(async move {
            sql::tx_release(conn, &self.sql, key, claim)
                .await
                .map_err(|error| self.failed(key, error))
        })
    }

    /// Never waits: see the module's documentation.
    fn wait<'a>(
        &'a self,
        _key: &'a str,
        _holder: &'a Claim,
        _timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(std::future::ready(false))
    }
}

impl SqliteTxStore {
    /// A statement's failure as the error a caller acts on.
    fn failed(&self, key: &str, error: sqlx::Error) -> Error {
        let key = key.to_owned();
        if failure::locked(&error) {
            return Error::Conflict {
                source: failure::store_error(error, &self.describe(), None),
                key,
            };
        }
        if failure::no_such_table(&error) {
            return Error::Config(format!(
                "the table {} does not exist in the database of the transaction's connection, and idem never creates a table inside a caller's transaction; idem wrote nothing, so the transaction is still usable (the table can even be created in it); create it with:\n{}",
                self.table.quoted(),
                self.table.migration()
            ));
        }
        Error::Store {
            source: failure::store_error(error, &self.describe(), None),
            key,
        }
    }

    /// The caller's connection and the table, for messages.
    fn describe(&self) -> String {
        format!(
            "of the transaction's connection (table {})",
            self.table.quoted()
        )
    }
}
