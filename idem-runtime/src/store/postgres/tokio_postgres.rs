//! The transactional mode (`tx = conn`) on tokio-postgres (feature `tokio-postgres`): a
//! [`Session`] for a `Client` (outside a transaction: idem begins one for the call) and for a
//! `Transaction` (inside the caller's: a savepoint), and, with `deadpool-postgres`, the pool's
//! `Object` and `Transaction` as [`TxConnection`](crate::TxConnection)s that lend them. The
//! statements, the table and the store are the sqlx driver's (`sql.rs`, `tx.rs`): records
//! written through either driver are the same rows.
//!
//! On a bare `Client` or `Transaction`, each statement is sent by `query_typed` (its
//! parameters' types given, an unnamed statement): one round trip, nothing prepared or cached
//! on the connection, so it also works behind a transaction-mode pooler, but PostgreSQL parses
//! and plans it on every call (the claim, a CTE, costs about four times as much unnamed as
//! prepared). tokio-postgres gives a `Client` nothing to key a cache of prepared statements
//! by; deadpool-postgres does: each of its connections carries a `StatementCache`. So a call
//! on a pool's `Object` (or the `ClientWrapper` it derefs to) or a pool's `Transaction`
//! prepares each of idem's statements (the claim, the completion, the release, the look for
//! the table) once per connection, with their parameters' types, in that connection's cache,
//! and then executes the prepared statement: one round trip, no planning after the first.
//! The body still receives the `Client` or the tokio-postgres `Transaction`
//! ([`TxConnection::lend`](crate::TxConnection::lend)). Not when the configured
//! [`PostgresStore`](crate::PostgresStore) was built with
//! [`PostgresOptions::pooler`](crate::PostgresOptions::pooler) (a transaction-mode pooler
//! between the application and PostgreSQL, where a named statement may be missing on the
//! next transaction's server connection): then the deadpool types send `query_typed` too.
//! `BEGIN`, `COMMIT`, the savepoints and their ends are simple queries either way.
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
use ::tokio_postgres::{Client, Row, Statement, Transaction};
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

/// A tokio-postgres connection: a client, or a transaction on one, bare or with the statement
/// cache of deadpool-postgres' connection.
pub trait TokioConnection: Send + Sync {
    /// Whether it is inside a transaction (a `Transaction` always is; a `Client` is taken to be
    /// outside one: tokio-postgres reaches a transaction through its `Transaction` type).
    const IN_TRANSACTION: bool;

    /// The client its statements go through.
    fn client(&self) -> &Client;

    /// The cache of prepared statements of its connection, if it has one (deadpool-postgres'):
    /// idem's statements are then prepared in it once, unless sent inline (behind a pooler).
    #[cfg(feature = "deadpool-postgres")]
    fn cache(&self) -> Option<&deadpool_postgres::StatementCache> {
        None
    }
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
    type Session = Transaction<'t>;

    fn connection(&mut self) -> &mut Transaction<'t> {
        self
    }

    fn session(&mut self) -> &mut Transaction<'t> {
        self
    }

    fn lend<'s>(session: &'s mut Transaction<'t>) -> &'s mut Transaction<'t> {
        session
    }
}

#[cfg(feature = "deadpool-postgres")]
impl TokioConnection for deadpool_postgres::ClientWrapper {
    const IN_TRANSACTION: bool = false;

    fn client(&self) -> &Client {
        self
    }

    fn cache(&self) -> Option<&deadpool_postgres::StatementCache> {
        Some(&self.statement_cache)
    }
}

#[cfg(feature = "deadpool-postgres")]
impl TokioConnection for deadpool_postgres::Transaction<'_> {
    const IN_TRANSACTION: bool = true;

    fn client(&self) -> &Client {
        Transaction::client(self)
    }

    fn cache(&self) -> Option<&deadpool_postgres::StatementCache> {
        Some(&self.statement_cache)
    }
}

/// A call on a pool's client writes through [`PgTxStore`], in a transaction of its own, with
/// its statements prepared in the connection's cache.
#[cfg(feature = "deadpool-postgres")]
impl Transactional for deadpool_postgres::ClientWrapper {
    type Store = PgTxStore;
}

/// A call on a pool's transaction writes through [`PgTxStore`], in it, with its statements
/// prepared in the connection's cache.
#[cfg(feature = "deadpool-postgres")]
impl Transactional for deadpool_postgres::Transaction<'_> {
    type Store = PgTxStore;
}

// The body receives the `ClientWrapper` itself (a function whose `tx = conn` argument is one).
#[cfg(feature = "deadpool-postgres")]
tx_connections!(deadpool_postgres::ClientWrapper: deadpool_postgres::ClientWrapper);

#[cfg(feature = "deadpool-postgres")]
impl sealed::Sealed for deadpool_postgres::Object {}

/// The body receives the `Client`; idem's statements go through the `ClientWrapper` and its
/// cache.
#[cfg(feature = "deadpool-postgres")]
impl TxConnection for deadpool_postgres::Object {
    type Conn = Client;
    type Session = deadpool_postgres::ClientWrapper;

    fn connection(&mut self) -> &mut Client {
        self
    }

    fn session(&mut self) -> &mut deadpool_postgres::ClientWrapper {
        self
    }

    fn lend(session: &mut deadpool_postgres::ClientWrapper) -> &mut Client {
        session
    }
}

#[cfg(feature = "deadpool-postgres")]
impl sealed::Sealed for deadpool_postgres::Transaction<'_> {}

/// The body receives tokio-postgres's `Transaction`; idem's statements go through the pool's,
/// and its connection's cache.
#[cfg(feature = "deadpool-postgres")]
impl<'t> TxConnection for deadpool_postgres::Transaction<'t> {
    type Conn = Transaction<'t>;
    type Session = deadpool_postgres::Transaction<'t>;

    fn connection(&mut self) -> &mut Transaction<'t> {
        self
    }

    fn session(&mut self) -> &mut deadpool_postgres::Transaction<'t> {
        self
    }

    fn lend<'s>(session: &'s mut deadpool_postgres::Transaction<'t>) -> &'s mut Transaction<'t> {
        session
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
        inline: bool,
    ) -> Result<Option<Row>, TokioError> {
        let params = typed(values);
        let client = self.client();
        let rows = match prepared(self, statement, &params, inline).await? {
            Some(prepared) => client.query(&prepared, &bound(&params)).await?,
            None => client.query_typed(statement.as_str(), &params).await?,
        };
        Ok(rows.into_iter().next())
    }

    async fn execute<'a>(
        &'a mut self,
        statement: &'a SqlStr,
        values: &'a [Value<'a>],
        inline: bool,
    ) -> Result<u64, TokioError> {
        let params = typed(values);
        let client = self.client();
        Ok(match prepared(self, statement, &params, inline).await? {
            Some(prepared) => client.execute(&prepared, &bound(&params)).await?,
            None => client.execute_typed(statement.as_str(), &params).await?,
        })
    }
}

/// `statement` prepared (with the types of `params`) in `conn`'s statement cache, once per
/// connection: `None` (send it unnamed) without a cache, or when `inline` (behind a
/// transaction-mode pooler, where a named statement may be missing on the next transaction's
/// server connection).
#[cfg(feature = "deadpool-postgres")]
async fn prepared<C: TokioConnection>(
    conn: &C,
    statement: &SqlStr,
    params: &[(&(dyn ToSql + Sync), Type)],
    inline: bool,
) -> Result<Option<Statement>, TokioError> {
    let Some(cache) = conn.cache().filter(|_| !inline) else {
        return Ok(None);
    };
    let types: Vec<Type> = params.iter().map(|(_, ty)| ty.clone()).collect();
    let prepared = cache
        .prepare_typed(conn.client(), statement.as_str(), &types)
        .await?;
    Ok(Some(prepared))
}

/// Without deadpool-postgres, no connection has a statement cache: every statement is sent
/// unnamed.
#[cfg(not(feature = "deadpool-postgres"))]
async fn prepared<C: TokioConnection>(
    _conn: &C,
    _statement: &SqlStr,
    _params: &[(&(dyn ToSql + Sync), Type)],
    _inline: bool,
) -> Result<Option<Statement>, TokioError> {
    Ok(None)
}

/// The values of `params`, for a prepared statement (which knows their types).
fn bound<'a>(params: &[(&'a (dyn ToSql + Sync), Type)]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|(value, _)| *value).collect()
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
