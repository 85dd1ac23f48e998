//! The caller's connection the transactional mode (`tx = conn`) sends its statements through,
//! whichever driver it belongs to: [`Session`], implemented here for sqlx's [`PgConnection`]
//! and in `tokio.rs` for tokio-postgres's `Client` and `Transaction`, so that the statements
//! (`sql.rs`) and the store (`tx.rs`) are written once for both. A driver differs only in how
//! a statement is sent, how a transaction begins and ends, how a row's columns are read
//! ([`Columns`]) and what its errors say ([`Failure`]).

use std::borrow::Cow;
use std::future::Future;
use std::ops::DerefMut;

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection, Postgres, Row, SqlStr, Transaction};

use super::failure;
use super::sent::{Value, send};
use crate::error::StoreError;

/// A PostgreSQL connection of the caller's, through which the transactional mode runs its
/// statements inside the caller's transaction.
pub trait Session: Send {
    /// A row of an answer.
    type Row: Columns<Error = Self::Error> + Send;
    /// A statement's failure.
    type Error: Failure + Send;
    /// A transaction begun on the connection: its own (`BEGIN`), or a savepoint inside the
    /// caller's. Dropped without [`commit`](Session::commit) or
    /// [`rollback`](Session::rollback), it rolls back.
    type Transaction<'c>: DerefMut<Target = Self> + Send
    where
        Self: 'c;

    /// Whether the connection is inside a transaction (the caller's).
    fn in_transaction(&self) -> bool;

    /// `BEGIN` outside a transaction, a savepoint inside one.
    fn begin(&mut self) -> impl Future<Output = Result<Self::Transaction<'_>, Self::Error>> + Send;

    /// Commits `transaction` (releases the savepoint).
    fn commit<'c>(
        transaction: Self::Transaction<'c>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'c
    where
        Self: 'c;

    /// Rolls `transaction` back (to the savepoint).
    fn rollback<'c>(
        transaction: Self::Transaction<'c>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'c
    where
        Self: 'c;

    /// The first row `statement` answers with `values` bound to `$1`…, if any; `inline` when
    /// the values are to be written into the statement's text (behind a transaction-mode
    /// pooler, see `sent.rs`), for a driver that would otherwise prepare a named statement.
    fn query_opt<'a>(
        &'a mut self,
        statement: &'a SqlStr,
        values: &'a [Value<'a>],
        inline: bool,
    ) -> impl Future<Output = Result<Option<Self::Row>, Self::Error>> + Send + 'a;

    /// The number of rows `statement` affected with `values`.
    fn execute<'a>(
        &'a mut self,
        statement: &'a SqlStr,
        values: &'a [Value<'a>],
        inline: bool,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send + 'a;
}

/// The columns of a row, by position, as the types the statements answer; NULL is `None`.
pub trait Columns {
    /// A column that cannot be read as asked.
    type Error: Failure;

    /// A `boolean`.
    fn flag(&self, at: usize) -> Result<Option<bool>, Self::Error>;
    /// A `text`.
    fn text(&self, at: usize) -> Result<Option<String>, Self::Error>;
    /// A `bytea`.
    fn bytes(&self, at: usize) -> Result<Option<Vec<u8>>, Self::Error>;
    /// An `int8`.
    fn int(&self, at: usize) -> Result<Option<i64>, Self::Error>;
}

/// What a driver's error tells the transactional mode.
pub trait Failure: Sized {
    /// The SQLSTATE the server answered, if it answered one.
    fn sqlstate(&self) -> Option<Cow<'_, str>>;

    /// As the store error a caller reads, for the connection `store` describes.
    fn into_store_error(self, store: &str) -> StoreError;

    /// A row that the store cannot read (`what` it holds): a decoding error, not a broken
    /// connection.
    fn corrupt(what: String) -> Self;
}

impl Session for PgConnection {
    type Row = PgRow;
    type Error = sqlx::Error;
    type Transaction<'c> = Transaction<'c, Postgres>;

    fn in_transaction(&self) -> bool {
        self.is_in_transaction()
    }

    async fn begin(&mut self) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
        Connection::begin(self).await
    }

    async fn commit<'c>(transaction: Transaction<'c, Postgres>) -> Result<(), sqlx::Error>
    where
        Self: 'c,
    {
        transaction.commit().await
    }

    async fn rollback<'c>(transaction: Transaction<'c, Postgres>) -> Result<(), sqlx::Error>
    where
        Self: 'c,
    {
        transaction.rollback().await
    }

    async fn query_opt<'a>(
        &'a mut self,
        statement: &'a SqlStr,
        values: &'a [Value<'a>],
        inline: bool,
    ) -> Result<Option<PgRow>, sqlx::Error> {
        send(statement, values, inline).fetch_optional(self).await
    }

    async fn execute<'a>(
        &'a mut self,
        statement: &'a SqlStr,
        values: &'a [Value<'a>],
        inline: bool,
    ) -> Result<u64, sqlx::Error> {
        let done = send(statement, values, inline).execute(self).await?;
        Ok(done.rows_affected())
    }
}

impl Columns for PgRow {
    type Error = sqlx::Error;

    fn flag(&self, at: usize) -> Result<Option<bool>, sqlx::Error> {
        self.try_get(at)
    }

    fn text(&self, at: usize) -> Result<Option<String>, sqlx::Error> {
        self.try_get(at)
    }

    fn bytes(&self, at: usize) -> Result<Option<Vec<u8>>, sqlx::Error> {
        self.try_get(at)
    }

    fn int(&self, at: usize) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(at)
    }
}

impl Failure for sqlx::Error {
    fn sqlstate(&self) -> Option<Cow<'_, str>> {
        match self {
            sqlx::Error::Database(db) => db.code(),
            _ => None,
        }
    }

    fn into_store_error(self, store: &str) -> StoreError {
        failure::store_error(self, store)
    }

    fn corrupt(what: String) -> sqlx::Error {
        sqlx::Error::Decode(format!("the idem table holds a row with {what}").into())
    }
}
