//! The transactional mode (`tx = conn`) on tokio-postgres (feature `tokio-postgres`): a
//! [`Session`] for a `Client` (outside a transaction: idem begins one for the call) and for a
//! `Transaction` (inside the caller's: a savepoint), and, with `deadpool-postgres`, the pool's
//! `Object` and `Transaction` as [`TxConnection`](crate::TxConnection)s that lend them. The
//! statements, the table and the store are the sqlx driver's (`sql.rs`, `tx.rs`): records
//! written through either driver are the same rows.
//!
//! Each statement is sent by `query_typed` (its parameters' types given, an unnamed statement):
//! one round trip, nothing prepared or cached on the connection, so it also works behind a
//! transaction-mode pooler.
//!
//! A transaction idem begins ([`Begun`]) that is dropped before it ended (a dropped call, a
//! panic in the body) rolls back as tokio-postgres's own `Transaction` does: its drop queues
//! `ROLLBACK` (or `ROLLBACK TO SAVEPOINT`, then `RELEASE SAVEPOINT`) on the client at once,
//! without awaiting the answer. tokio-postgres puts a request in its connection's queue on the
//! first poll of the statement's future, before it awaits anything; the drop polls it once, so
//! the rollback is ahead of anything the application sends next on that client.

use std::borrow::Cow;
use std::ops::{Deref, DerefMut};
use std::pin::pin;
use std::task::{Context, Waker};

use ::tokio_postgres::error::SqlState;
use ::tokio_postgres::types::{ToSql, Type};
use ::tokio_postgres::{Client, Row, Transaction};
use sqlx::SqlStr;

use super::sent::Value;
use super::session::{Columns, Failure, Session};
use super::tx::PgTxStore;
use crate::error::{StoreError, StoreErrorKind};
use crate::store::tx::{Transactional, TxConnection, sealed, tx_connections};

/// The savepoint idem sets in a caller's transaction. Calls nest (a body that makes another
/// call on its connection) last in, first out, and PostgreSQL names the latest savepoint of a
/// name: each call's release or rollback reaches its own.
const SAVEPOINT: &str = "SAVEPOINT idem_call";

/// A call's savepoint kept.
const RELEASE: &str = "RELEASE SAVEPOINT idem_call";

/// A call's savepoint undone, and released: left in place, it would be the one a call around
/// this one rolls back to.
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT idem_call; RELEASE SAVEPOINT idem_call";

/// A tokio-postgres connection: a client, or a transaction on one.
pub trait TokioConnection: Send + Sync {
    /// Whether it is inside a transaction (a `Transaction` always is; a `Client` is taken to be
    /// outside one: tokio-postgres reaches a transaction through its `Transaction` type).
    const IN_TRANSACTION: bool;

    /// The client its statements go through.
    fn client(&self) -> &Client;
}

impl TokioConnection for Client {
    const IN_TRANSACTION: bool = false;

    fn client(&self) -> &Client {
        self
    }
}

impl TokioConnection for Transaction<'_> {
    const IN_TRANSACTION: bool = true;

    fn client(&self) -> &Client {
        Transaction::client(self)
    }
}

/// A call with `tx = conn` on a `&mut Client` writes through [`PgTxStore`], in a transaction
/// of its own.
impl Transactional for Client {
    type Store = PgTxStore;
}

/// A call with `tx = conn` on a `&mut Transaction<'_>` writes through [`PgTxStore`], in the
/// caller's transaction.
impl Transactional for Transaction<'_> {
    type Store = PgTxStore;
}

tx_connections!(Client: Client);

impl sealed::Sealed for Transaction<'_> {}

impl<'t> TxConnection for Transaction<'t> {
    type Conn = Transaction<'t>;

    fn connection(&mut self) -> &mut Transaction<'t> {
        self
    }
}

#[cfg(feature = "deadpool-postgres")]
tx_connections!(Client: deadpool_postgres::Object);

#[cfg(feature = "deadpool-postgres")]
impl sealed::Sealed for deadpool_postgres::Transaction<'_> {}

#[cfg(feature = "deadpool-postgres")]
impl<'t> TxConnection for deadpool_postgres::Transaction<'t> {
    type Conn = Transaction<'t>;

    fn connection(&mut self) -> &mut Transaction<'t> {
        self
    }
}

/// A transaction idem began for a call on a tokio-postgres connection: `BEGIN` on a client, a
/// savepoint in the caller's transaction. It lends the connection to the body; dropped before
/// it was committed or rolled back, it queues its rollback (see the module's docs).
pub struct Begun<'c, C: TokioConnection> {
    conn: &'c mut C,
    /// A savepoint, not a transaction of its own.
    savepoint: bool,
    /// Committed or rolled back (or never begun): nothing to undo.
    done: bool,
}

impl<C: TokioConnection> Begun<'_, C> {
    /// The statement that keeps (`COMMIT`, `RELEASE SAVEPOINT`) or undoes what it holds.
    fn ending(&self, keep: bool) -> &'static str {
        match (self.savepoint, keep) {
            (true, true) => RELEASE,
            (true, false) => ROLLBACK_TO,
            (false, true) => "COMMIT",
            (false, false) => "ROLLBACK",
        }
    }

    /// Commits it (`keep`) or rolls it back.
    async fn end(mut self, keep: bool) -> Result<(), TokioError> {
        // Sent on the first poll: from then on, dropping this is not a reason to roll back.
        self.done = true;
        let statement = self.ending(keep);
        self.conn.client().batch_execute(statement).await?;
        Ok(())
    }
}

impl<C: TokioConnection> Deref for Begun<'_, C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.conn
    }
}

impl<C: TokioConnection> DerefMut for Begun<'_, C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn
    }
}

impl<C: TokioConnection> Drop for Begun<'_, C> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let undo = self.ending(false);
        // The first poll queues the statement; its answer is not awaited (nor is it needed:
        // a failed rollback means a broken connection, which ends the transaction too).
        let queued = pin!(self.conn.client().batch_execute(undo));
        let _ = queued.poll(&mut Context::from_waker(Waker::noop()));
    }
}

impl<C: TokioConnection> Session for C {
    type Row = Row;
    type Error = TokioError;
    type Transaction<'c>
        = Begun<'c, C>
    where
        C: 'c;

    fn in_transaction(&self) -> bool {
        C::IN_TRANSACTION
    }

    async fn begin(&mut self) -> Result<Begun<'_, C>, TokioError> {
        let savepoint = C::IN_TRANSACTION;
        // The guard first: dropped while the `BEGIN` is on its way, it rolls back after it.
        let mut begun = Begun {
            conn: self,
            savepoint,
            done: false,
        };
        let start = if savepoint { SAVEPOINT } else { "BEGIN" };
        if let Err(error) = begun.conn.client().batch_execute(start).await {
            begun.done = true;
            return Err(error.into());
        }
        Ok(begun)
    }

    async fn commit<'c>(transaction: Begun<'c, C>) -> Result<(), TokioError>
    where
        C: 'c,
    {
        transaction.end(true).await
    }

    async fn rollback<'c>(transaction: Begun<'c, C>) -> Result<(), TokioError>
    where
        C: 'c,
    {
        transaction.end(false).await
    }

    async fn query_opt<'a>(
        &'a mut self,
        statement: &'a SqlStr,
        values: &'a [Value<'a>],
        _inline: bool,
    ) -> Result<Option<Row>, TokioError> {
        let params = typed(values);
        let rows = self
            .client()
            .query_typed(statement.as_str(), &params)
            .await?;
        Ok(rows.into_iter().next())
    }

    async fn execute<'a>(
        &'a mut self,
        statement: &'a SqlStr,
        values: &'a [Value<'a>],
        _inline: bool,
    ) -> Result<u64, TokioError> {
        let params = typed(values);
        Ok(self
            .client()
            .execute_typed(statement.as_str(), &params)
            .await?)
    }
}

/// `values` with the types sqlx declares for them, for `query_typed`.
fn typed<'a>(values: &'a [Value<'a>]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    values
        .iter()
        .map(|value| -> (&'a (dyn ToSql + Sync), Type) {
            match value {
                Value::Text(text) => (text, Type::TEXT),
                Value::OptText(text) => (text, Type::TEXT),
                Value::Bytes(bytes) => (bytes, Type::BYTEA),
                Value::OptBytes(bytes) => (bytes, Type::BYTEA),
                Value::Int(n) => (n, Type::INT8),
            }
        })
        .collect()
}

impl Columns for Row {
    type Error = TokioError;

    fn flag(&self, at: usize) -> Result<Option<bool>, TokioError> {
        Ok(self.try_get(at)?)
    }

    fn text(&self, at: usize) -> Result<Option<String>, TokioError> {
        Ok(self.try_get(at)?)
    }

    fn bytes(&self, at: usize) -> Result<Option<Vec<u8>>, TokioError> {
        Ok(self.try_get(at)?)
    }

    fn int(&self, at: usize) -> Result<Option<i64>, TokioError> {
        Ok(self.try_get(at)?)
    }
}

/// A statement's failure on tokio-postgres, or a row the store cannot read.
#[derive(Debug)]
pub enum TokioError {
    /// What tokio-postgres reported.
    Postgres(::tokio_postgres::Error),
    /// A row of the table that holds something else than a record.
    Corrupt(String),
}

impl From<::tokio_postgres::Error> for TokioError {
    fn from(error: ::tokio_postgres::Error) -> Self {
        TokioError::Postgres(error)
    }
}

impl Failure for TokioError {
    fn sqlstate(&self) -> Option<Cow<'_, str>> {
        match self {
            TokioError::Postgres(error) => error.code().map(|code| Cow::Borrowed(code.code())),
            TokioError::Corrupt(_) => None,
        }
    }

    fn into_store_error(self, store: &str) -> StoreError {
        let error = match self {
            TokioError::Postgres(error) => error,
            TokioError::Corrupt(what) => {
                return StoreError::new(
                    StoreErrorKind::Protocol,
                    format!("PostgreSQL at {store} holds a row with {what}"),
                );
            }
        };
        let kind = match error.code() {
            Some(code) if *code == SqlState::QUERY_CANCELED => StoreErrorKind::Timeout,
            Some(code)
                if code.code().starts_with("08")
                    || code.code().starts_with("57P")
                    || *code == SqlState::CANNOT_CONNECT_NOW =>
            {
                StoreErrorKind::Unavailable
            }
            Some(_) => StoreErrorKind::Other,
            // No answer of the server's: the connection closed or broke, or an answer that
            // could not be read.
            None if error.is_closed()
                || std::error::Error::source(&error).is_some_and(|s| s.is::<std::io::Error>()) =>
            {
                StoreErrorKind::Unavailable
            }
            None => StoreErrorKind::Protocol,
        };
        StoreError::new(kind, format!("PostgreSQL at {store} failed")).with_source(error)
    }

    fn corrupt(what: String) -> TokioError {
        TokioError::Corrupt(what)
    }
}
