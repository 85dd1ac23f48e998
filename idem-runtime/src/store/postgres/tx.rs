//! The transactional mode (`tx = conn`) on PostgreSQL: [`PgTxStore`], the [`TxStore`] of the
//! records of one table written through the caller's connection, inside its transaction, and
//! PostgreSQL's answers as the errors a caller can act on. One implementation for every
//! driver's connection ([`Session`]: sqlx's [`PgConnection`] in `session.rs`,
//! tokio-postgres's in `tokio_postgres.rs`), so that both drivers share the table and its records. The engine's side (what
//! to do with the answers) is `engine/tx.rs`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;
use sqlx::{Postgres, Transaction};

use super::session::{Failure, Session};
use super::sql::{self, Statements};
use super::table::Table;
use super::{PostgresStore, check_key};
use crate::error::Error;
use crate::record::Claim;
use crate::store::tx::{Claimed, Transactional, TxFuture, TxStore, tx_connections};
use crate::store::{ClaimOrder, Store, StoreHandle};

/// SQLSTATEs the transactional mode tells apart.
mod code {
    /// `serialization_failure`.
    pub(super) const SERIALIZATION: &str = "40001";
    /// `deadlock_detected`.
    pub(super) const DEADLOCK: &str = "40P01";
    /// `lock_not_available`: `lock_timeout` expired.
    pub(super) const LOCK_TIMEOUT: &str = "55P03";
    /// `undefined_table`.
    pub(super) const NO_TABLE: &str = "42P01";
}

/// A call with `tx = conn` on a `&mut PgConnection` writes through [`PgTxStore`].
impl Transactional for PgConnection {
    type Store = PgTxStore;
}

tx_connections!(PgConnection: PgConnection, Transaction<'_, Postgres>, PoolConnection<Postgres>);

/// The table of the records written in callers' transactions, and how to wait for a holder
/// that is not in one (a call through the plain [`PostgresStore`]).
pub struct PgTxStore {
    sql: Arc<Statements>,
    table: Table,
    /// The configured store, when it is a `PostgresStore`: its listener wakes a waiter.
    store: Option<PostgresStore>,
}

/// The statements of the default table (`public.idem_records`), built once.
fn default_table() -> &'static (Arc<Statements>, Table) {
    static DEFAULT: OnceLock<(Arc<Statements>, Table)> = OnceLock::new();
    DEFAULT.get_or_init(|| {
        let table = Table::new("public", "idem_records").expect("the default names are valid");
        (
            Arc::new(Statements::new(&table, false, ClaimOrder::Learnt)),
            table,
        )
    })
}

/// How long a waiter sleeps between looks when no listener can wake it.
const POLL: Duration = Duration::from_millis(25);

/// One store for every driver's connection ([`Session`]): the same statements, the same
/// table, the same answers.
impl<C: Session> TxStore<C> for PgTxStore {
    type Transaction<'c>
        = C::Transaction<'c>
    where
        C: 'c;

    /// The table of `store` if it is a [`PostgresStore`], else the default one.
    fn of(store: &StoreHandle, scope: &str) -> PgTxStore {
        let records = match store.downcast_ref::<PostgresStore>() {
            Some(store) => PgTxStore {
                sql: store.shared.sql.clone(),
                table: store.shared.table.clone(),
                store: Some(store.clone()),
            },
            None => {
                let (sql, table) = default_table();
                PgTxStore {
                    sql: sql.clone(),
                    table: table.clone(),
                    store: None,
                }
            }
        };
        records.remember(scope);
        records
    }

    fn in_transaction(&self, conn: &C) -> bool {
        conn.in_transaction()
    }

    fn begin<'a>(&'a self, conn: &'a mut C, key: &'a str) -> TxFuture<'a, C::Transaction<'a>> {
        Box::pin(async move { conn.begin().await.map_err(|error| self.failed(key, error)) })
    }

    fn commit<'a>(&'a self, transaction: C::Transaction<'a>, key: &'a str) -> TxFuture<'a, ()> {
        Box::pin(async move {
            C::commit(transaction)
                .await
                .map_err(|error| self.failed(key, error))
        })
    }

    fn rollback<'a>(&'a self, transaction: C::Transaction<'a>, key: &'a str) -> TxFuture<'a, ()> {
        Box::pin(async move {
            C::rollback(transaction)
                .await
                .map_err(|error| self.failed(key, error))
        })
    }

    /// Refuses a key with a NUL character, and looks for the table before the first claim
    /// through it in this process: a statement on a missing table would abort the caller's
    /// transaction, this look (`to_regclass`) does not.
    fn prepare<'a>(&'a self, conn: &'a mut C, key: &'a str) -> TxFuture<'a, ()> {
        Box::pin(async move {
            check_key(key).map_err(|source| Error::Store {
                key: key.to_owned(),
                source,
            })?;
            if self.sql.table_found.load(Ordering::Relaxed) {
                return Ok(());
            }
            let found = sql::table_exists(&mut *conn, &self.sql)
                .await
                .map_err(|error| self.failed(key, error))?;
            if !found {
                return Err(Error::Config(format!(
                    "the table {} does not exist in the database of the transaction's connection, and idem never creates a table inside a caller's transaction; idem wrote nothing, so the transaction is still usable (the table can even be created in it); create it with:\n{}",
                    self.table.qualified(),
                    self.table.migration()
                )));
            }
            self.sql.table_found.store(true, Ordering::Relaxed);
            Ok(())
        })
    }

    fn claim<'a>(
        &'a self,
        conn: &'a mut C,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
        wait: Duration,
    ) -> TxFuture<'a, Claimed> {
        Box::pin(async move {
            sql::tx_claim(conn, &self.sql, key, claim, lease, wait)
                .await
                .map_err(|error| self.failed(key, error))
        })
    }

    fn complete<'a>(
        &'a self,
        conn: &'a mut C,
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
        conn: &'a mut C,
        key: &'a str,
        claim: &'a Claim,
    ) -> TxFuture<'a, bool> {
        Box::pin(async move {
            sql::tx_release(conn, &self.sql, key, claim)
                .await
                .map_err(|error| self.failed(key, error))
        })
    }

    /// On the configured store's listener when it is a [`PostgresStore`], else for a short
    /// while.
    fn wait<'a>(
        &'a self,
        key: &'a str,
        holder: &'a Claim,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            match &self.store {
                Some(store) => {
                    if store.wait(key, holder, timeout).await.is_err() {
                        tokio::time::sleep(timeout.min(POLL)).await;
                    }
                }
                None => tokio::time::sleep(timeout.min(POLL)).await,
            }
            // A row lock per key: the holder completes whatever this transaction holds.
            true
        })
    }
}

impl PgTxStore {
    /// A statement's failure, through either driver, as the error a caller acts on.
    fn failed(&self, key: &str, error: impl Failure) -> Error {
        let code = error.sqlstate().map(Cow::into_owned);
        let key = key.to_owned();
        match code.as_deref() {
            Some(code::SERIALIZATION | code::DEADLOCK) => Error::Conflict {
                source: error.into_store_error(&self.describe()),
                key,
            },
            Some(code::LOCK_TIMEOUT) => Error::InProgress { key },
            // Found once in this process, since dropped (or missing in another database).
            Some(code::NO_TABLE) => Error::Config(format!(
                "the table {} does not exist in the database of the transaction's connection, and idem never creates a table inside a caller's transaction; PostgreSQL has aborted the transaction: roll it back, then create the table with:\n{}",
                self.table.qualified(),
                self.table.migration()
            )),
            _ => Error::Store {
                source: error.into_store_error(&self.describe()),
                key,
            },
        }
    }

    /// The caller's connection and the table, for messages.
    fn describe(&self) -> String {
        format!("the transaction's connection ({})", self.table.qualified())
    }
}

/// The tables the transactional mode wrote each scope's records to in this process, so that
/// [`inspect`](crate::inspect) and [`forget`](crate::forget) through another store can say
/// where those records are instead of answering that there are none.
fn written_to() -> &'static RwLock<HashMap<String, Vec<Table>>> {
    static WRITTEN: OnceLock<RwLock<HashMap<String, Vec<Table>>>> = OnceLock::new();
    WRITTEN.get_or_init(RwLock::default)
}

impl PgTxStore {
    /// Notes that calls of `scope` write their records to this table: a shared read after the
    /// first call of the scope on it, a write the first time.
    fn remember(&self, scope: &str) {
        let known = written_to()
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(scope)
            .is_some_and(|tables| tables.contains(&self.table));
        if !known {
            let mut written = written_to().write().unwrap_or_else(PoisonError::into_inner);
            let tables = written.entry(scope.to_owned()).or_default();
            if !tables.contains(&self.table) {
                tables.push(self.table.clone());
            }
        }
    }
}

/// Fails when calls of `scope` in this process wrote records through the transactional mode
/// into a table that `store` (the store [`inspect`](crate::inspect) or
/// [`forget`](crate::forget) would ask) does not read: those would answer "absent" about
/// records that exist. The error names the table and how to reach it.
pub(crate) fn check_reachable(scope: &str, store: &StoreHandle) -> Result<(), Error> {
    let written = written_to().read().unwrap_or_else(PoisonError::into_inner);
    let Some(tables) = written.get(scope) else {
        return Ok(());
    };
    let read = store
        .downcast_ref::<PostgresStore>()
        .map(|store| &store.shared.table);
    let Some(table) = tables.iter().find(|table| Some(*table) != read) else {
        return Ok(());
    };
    Err(Error::Config(format!(
        "the records of scope `{scope}` are written by the transactional mode (`tx = conn`) into the PostgreSQL table {} through the application's own connection, not into the configured store ({}); reach them with `idem --store postgres://user@host/db inspect …` (IDEM_PG_SCHEMA and IDEM_PG_TABLE name another table), or in code with a PostgresStore on that database and table: `Idem::with_settings(store, &config).scope(idem::inspect(..))`",
        table.qualified(),
        store.describe()
    )))
}
