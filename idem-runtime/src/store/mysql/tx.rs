//! The transactional mode (`tx = conn`) on sqlx's [`MySqlConnection`]: [`MySqlTxStore`], the
//! [`TxStore`] of the records of one table written through the caller's connection, inside its
//! transaction, and InnoDB's answers as the errors a caller can act on. The engine's side
//! (what to do with them) is `engine/tx.rs`.
//!
//! InnoDB differs from PostgreSQL where it matters here:
//! - REPEATABLE READ is the default, and a plain `SELECT` reads the transaction's snapshot,
//!   which may predate the commit of the claim a duplicate waited for. So the claim is an
//!   `INSERT` (which waits on the row lock of a concurrent transaction's uncommitted claim and
//!   then meets the committed row), and the record it met is read with a locking read (`LOCK
//!   IN SHARE MODE`), which reads the newest committed row whatever the isolation level.
//! - The insert's lock wait is bounded by `innodb_lock_wait_timeout`, in whole seconds: `wait`
//!   rounded down (MariaDB: `SET STATEMENT … FOR`, one statement; MySQL, which has no such
//!   statement: the session's value set around the insert and set back). Past it, InnoDB
//!   answers 1205 and rolls back that statement only (unless the server runs with
//!   `innodb_rollback_on_timeout`): the call is [`Error::InProgress`] and the caller's
//!   transaction is usable.
//! - A deadlock (1213) rolls back the caller's whole transaction: the call is
//!   [`Error::Conflict`]; the caller rolls back (sqlx still thinks the transaction open) and
//!   retries.
//! - A key held by a call of the plain [`MySqlStore`] (a lease, outside any transaction) is
//!   [`Error::InProgress`] at once: the claim's insert left a shared lock on its row, which the
//!   holder's completion needs, until this transaction ends.
//! - A statement on a missing table fails alone (1146) and leaves the transaction as it was.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::mysql::MySqlConnection;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, MySql, Transaction};

use super::MySqlStore;
use super::failure::{self, code};
use super::sql::{self, Statements};
use super::table::Table;
use crate::error::Error;
use crate::record::Claim;
use crate::store::StoreHandle;
use crate::store::tx::{Claimed, Transactional, TxFuture, TxStore, tx_connections};

/// A call with `tx = conn` on a `&mut MySqlConnection` writes through [`MySqlTxStore`].
impl Transactional for MySqlConnection {
    type Store = MySqlTxStore;
}

tx_connections!(MySqlConnection: MySqlConnection, Transaction<'_, MySql>, PoolConnection<MySql>);

/// The table of the records written in callers' transactions.
pub struct MySqlTxStore {
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

impl TxStore<MySqlConnection> for MySqlTxStore {
    type Transaction<'c> = Transaction<'c, MySql>;

    /// The table of `store` if it is a [`MySqlStore`], else the default one.
    fn of(store: &StoreHandle, _scope: &str) -> MySqlTxStore {
        match store.downcast_ref::<MySqlStore>() {
            Some(store) => MySqlTxStore {
                sql: store.shared.sql.clone(),
                table: store.shared.table.clone(),
            },
            None => {
                let (sql, table) = default_table();
                MySqlTxStore {
                    sql: sql.clone(),
                    table: table.clone(),
                }
            }
        }
    }

    fn in_transaction(&self, conn: &MySqlConnection) -> bool {
        conn.is_in_transaction()
    }

    fn begin<'a>(
        &'a self,
        conn: &'a mut MySqlConnection,
        key: &'a str,
    ) -> TxFuture<'a, Transaction<'a, MySql>> {
        Box::pin(async move { conn.begin().await.map_err(|error| self.failed(key, error)) })
    }

    fn commit<'a>(&'a self, transaction: Transaction<'a, MySql>, key: &'a str) -> TxFuture<'a, ()> {
        Box::pin(async move {
            transaction
                .commit()
                .await
                .map_err(|error| self.failed(key, error))
        })
    }

    fn rollback<'a>(
        &'a self,
        transaction: Transaction<'a, MySql>,
        key: &'a str,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            transaction
                .rollback()
                .await
                .map_err(|error| self.failed(key, error))
        })
    }

    /// Nothing to send: a statement on a missing table fails alone, which leaves the caller's
    /// transaction as it was (the error says how to create the table).
    fn prepare<'a>(&'a self, _conn: &'a mut MySqlConnection, _key: &'a str) -> TxFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The insert of the claim, waiting at most `wait` (whole seconds) on a concurrent
    /// transaction's lock; when the key has a row, a locking read of it (a replay is these two
    /// statements), and the takeover of an expired one.
    fn claim<'a>(
        &'a self,
        conn: &'a mut MySqlConnection,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
        wait: Duration,
    ) -> TxFuture<'a, Claimed> {
        Box::pin(async move {
            let failed = |error| self.failed(key, error);
            let seconds = sql::lock_wait_seconds(wait);
            match sql::insert(&mut *conn, &self.sql, key, claim, lease, seconds).await {
                Ok(()) => return Ok(Claimed::Held),
                Err(error) if failure::duplicate(&error) => {}
                Err(error) => return Err(failed(error)),
            }
            match sql::row_locked(&mut *conn, &self.sql, key)
                .await
                .map_err(failed)?
            {
                Some((record, true)) => Ok(Claimed::Found(record)),
                Some((_, false)) => {
                    if sql::take_expired(&mut *conn, &self.sql, key, claim, lease)
                        .await
                        .map_err(failed)?
                    {
                        Ok(Claimed::Held)
                    } else {
                        Ok(Claimed::Unseen)
                    }
                }
                // Deleted since the insert met it (a forget): ask again.
                None => Ok(Claimed::Unseen),
            }
        })
    }

    fn complete<'a>(
        &'a self,
        conn: &'a mut MySqlConnection,
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
        conn: &'a mut MySqlConnection,
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

impl MySqlTxStore {
    /// A statement's failure as the error a caller acts on.
    fn failed(&self, key: &str, error: sqlx::Error) -> Error {
        let key = key.to_owned();
        match failure::number(&error) {
            Some(code::DEADLOCK) => Error::Conflict {
                source: failure::store_error(error, &self.describe()),
                key,
            },
            Some(code::LOCK_WAIT_TIMEOUT | code::LOCK_NOWAIT) => Error::InProgress { key },
            Some(code::NO_TABLE) => Error::Config(format!(
                "the table {} does not exist in the database of the transaction's connection, and idem never creates a table inside a caller's transaction (in MySQL a CREATE TABLE commits it); idem wrote nothing, so the transaction is still usable; create the table outside it with:\n{}",
                self.table.quoted(),
                self.table.migration()
            )),
            _ => Error::Store {
                source: failure::store_error(error, &self.describe()),
                key,
            },
        }
    }

    /// The caller's connection and the table, for messages.
    fn describe(&self) -> String {
        format!("the transaction's connection ({})", self.table.quoted())
    }
}
