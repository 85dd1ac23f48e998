//! What the transactional mode (`tx = conn`) asks of a database: [`TxStore`], the records of
//! calls written through a caller's own connection, inside its transaction;
//! [`Transactional`], the connection types that name their [`TxStore`]; and [`TxConnection`],
//! what [`Call::run_tx`](crate::Call::run_tx) accepts (a connection, a transaction or a pool's
//! connection of such a type). The engine's side (what to do with the answers) is
//! `engine/tx.rs`; each backend implements these in its own folder (PostgreSQL through sqlx
//! or tokio-postgres: `postgres/tx.rs`, one store for both drivers' `postgres/session.rs`;
//! SQLite through sqlx: `sqlite/tx.rs`; MySQL through sqlx: `mysql/tx.rs`).
//!
//! Only [`TxConnection`] is public, and sealed: [`Transactional`] and [`TxStore`] are public
//! in this crate-private module (nameable by no one outside), since every backend lives in
//! this crate and the shape of these traits (their futures, the answers of a claim, the errors
//! a backend maps its own to) may still change with the next backend.

use std::future::Future;
use std::ops::DerefMut;
use std::pin::Pin;
use std::time::Duration;

use crate::error::Error;
use crate::record::{Claim, Record};
use crate::store::StoreHandle;

/// The future a [`TxStore`] operation returns: boxed, like a [`Store`](crate::Store)'s, so
/// that the engine's future, generic over the backend, is `Send` wherever the backend's
/// futures are.
pub(crate) type TxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// How often a claim asks again when it answered [`Claimed::Unseen`].
pub(crate) const UNSEEN_RETRIES: u32 = 8;

/// What a claim statement answered.
#[derive(Debug)]
pub enum Claimed {
    /// The key was free (absent or expired) and is now held by the claim.
    Held,
    /// A live record holds the key.
    Found(Record),
    /// Nothing: a concurrent claim committed the key after this statement's snapshot was
    /// taken. Asking again sees it.
    Unseen,
    /// A transaction that has not ended holds the key's row (a claim in a caller's
    /// transaction, invisible until it commits), and the claim's lock wait ran out: the key
    /// is held by a claim this statement cannot see.
    Locked,
}

/// A connection type the transactional mode writes records through: the engine runs a call
/// on a `&mut C` with the [`TxStore`] that `C` names.
pub trait Transactional: Send {
    /// The records of calls made through connections of this type.
    type Store: TxStore<Self>;
}

/// What [`Call::run_tx`](crate::Call::run_tx) and its siblings write a call's record through,
/// borrowed mutably: a connection whose database idem's transactional mode knows, or a
/// transaction or a pool's connection of one, which the body receives as the connection
/// itself ([`Conn`](TxConnection::Conn)).
///
/// Implemented (sealed) for, with the feature of each database:
/// - `postgres`: `sqlx::PgConnection`, `sqlx::Transaction<'_, sqlx::Postgres>`,
///   `sqlx::pool::PoolConnection<sqlx::Postgres>`;
/// - `sqlite`: `sqlx::SqliteConnection`, `sqlx::Transaction<'_, sqlx::Sqlite>`,
///   `sqlx::pool::PoolConnection<sqlx::Sqlite>`;
/// - `mysql`: `sqlx::MySqlConnection`, `sqlx::Transaction<'_, sqlx::MySql>`,
///   `sqlx::pool::PoolConnection<sqlx::MySql>`;
/// - `tokio-postgres`: `tokio_postgres::Client` (outside a transaction) and
///   `tokio_postgres::Transaction<'_>`;
/// - `deadpool-postgres`: `deadpool_postgres::Object` (its body receives the
///   `tokio_postgres::Client`), `deadpool_postgres::ClientWrapper` (what an `Object` derefs
///   to; its body receives it) and `deadpool_postgres::Transaction<'_>` (its body receives the
///   `tokio_postgres::Transaction<'_>`); idem's statements on them are prepared once per
///   connection, in the pool's statement cache (unless the configured `PostgresStore` is
///   behind a pooler).
///
/// Inside a transaction (a `Transaction`, or a sqlx connection on which one was begun), the
/// call runs in it; on a connection outside any, in one of its own. A tokio-postgres `Client`
/// is always taken to be outside one (tokio-postgres reaches a transaction through its
/// `Transaction`): a `BEGIN` sent by hand on it is not seen, and the call's `COMMIT` would
/// end it.
#[diagnostic::on_unimplemented(
    message = "the transactional mode writes through a sqlx connection, transaction or pool connection of PostgreSQL, SQLite or MySQL (sqlx 0.9), or a tokio-postgres client or transaction (0.7, or deadpool-postgres' of them), not `{Self}`",
    label = "the connection the record is written through, inside its transaction",
    note = "pass `&mut transaction` (a `sqlx::Transaction<'_, Postgres>`, `<'_, Sqlite>` or `<'_, MySql>`, a `tokio_postgres::Transaction<'_>`), `&mut connection` or `&mut *conn`; each database needs its feature of idem-fn (`postgres`, `sqlite`, `mysql`, `tokio-postgres`, `deadpool-postgres`)"
)]
pub trait TxConnection: sealed::Sealed {
    /// The connection the body receives.
    type Conn: Transactional + ?Sized;

    /// The connection idem's own statements go through: [`Conn`](TxConnection::Conn) itself,
    /// or, for a pool's connection that keeps a statement cache beside it (deadpool-postgres'
    /// `Object` and `Transaction`), that wrapper, so that the statements are prepared once
    /// per connection. The body still receives [`Conn`](TxConnection::Conn), lent by
    /// [`lend`](TxConnection::lend).
    type Session: Transactional + ?Sized;

    /// The connection itself.
    fn connection(&mut self) -> &mut Self::Conn;

    /// The connection idem's statements go through.
    fn session(&mut self) -> &mut Self::Session;

    /// The connection the body receives, from the one idem's statements go through (or from
    /// the transaction idem began on it, which derefs to it).
    fn lend(session: &mut Self::Session) -> &mut Self::Conn;
}

/// Only this crate implements [`TxConnection`]: the transactional mode must know the
/// database's statements.
pub(crate) mod sealed {
    /// The types [`TxConnection`](super::TxConnection) is implemented for.
    pub trait Sealed {}
}

/// Implements [`TxConnection`] for each type listed, whose connection (itself, or by
/// `DerefMut`) is `$conn`, both the body's and the one idem's statements go through.
macro_rules! tx_connections {
    ($conn:ty: $($ty:ty),+ $(,)?) => {
        $(
            impl $crate::store::tx::sealed::Sealed for $ty {}

            impl $crate::store::tx::TxConnection for $ty {
                type Conn = $conn;
                type Session = $conn;

                fn connection(&mut self) -> &mut $conn {
                    &mut *self
                }

                fn session(&mut self) -> &mut $conn {
                    &mut *self
                }

                fn lend(session: &mut $conn) -> &mut $conn {
                    session
                }
            }
        )+
    };
}
pub(crate) use tx_connections;

/// The records of transactional calls written through connections of type `C`: each
/// operation is a statement (or a transaction's begin or end) on the caller's connection, and
/// each failure is already the [`Error`] a caller acts on.
///
/// Every operation but [`wait`](TxStore::wait) runs through `C`, inside its transaction, and
/// so commits or rolls back with the body's own writes. The engine counts and times them.
pub trait TxStore<C: ?Sized + Send>: Sized + Send + Sync {
    /// A transaction begun on a connection: its own, or a savepoint inside the caller's. The
    /// body and the statements run on the connection it gives; dropped without
    /// [`commit`](TxStore::commit) or [`rollback`](TxStore::rollback) (an error, a dropped
    /// call), it rolls back.
    type Transaction<'c>: DerefMut<Target = C> + Send
    where
        Self: 'c,
        C: 'c;

    /// The records of a call of `scope` whose resolved store is `store` (the configured one,
    /// or the call's own): a backend takes its table from a store of its own kind and falls
    /// back to its default one otherwise. It also notes where the scope's records go, for
    /// [`inspect`](crate::inspect) and [`forget`](crate::forget) through another store.
    fn of(store: &StoreHandle, scope: &str) -> Self;

    /// Whether `conn` is inside a transaction (the caller's): then the call runs in it, else
    /// in one of its own.
    fn in_transaction(&self, conn: &C) -> bool;

    /// Begins a transaction on `conn`: `BEGIN` outside any, a savepoint inside one.
    fn begin<'a>(&'a self, conn: &'a mut C, key: &'a str) -> TxFuture<'a, Self::Transaction<'a>>;

    /// Commits `transaction` (releases the savepoint).
    fn commit<'a>(&'a self, transaction: Self::Transaction<'a>, key: &'a str) -> TxFuture<'a, ()>;

    /// Rolls `transaction` back (to the savepoint).
    fn rollback<'a>(&'a self, transaction: Self::Transaction<'a>, key: &'a str)
    -> TxFuture<'a, ()>;

    /// Checks, before a call's first claim, that its record can be written through `conn`
    /// without aborting the caller's transaction: the key is one the database can hold, the
    /// table exists (a backend may look once per table and process). A failure leaves the
    /// transaction usable.
    fn prepare<'a>(&'a self, conn: &'a mut C, key: &'a str) -> TxFuture<'a, ()>;

    /// Claims `key` for `claim` with expiry `lease`, or reads the live record that holds it,
    /// waiting at most `wait` for a concurrent transaction that claimed it and has not ended
    /// (past it: [`Error::InProgress`], or [`Claimed::Locked`]).
    fn claim<'a>(
        &'a self,
        conn: &'a mut C,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
        wait: Duration,
    ) -> TxFuture<'a, Claimed>;

    /// Stores `payload` for `claim` with expiry `ttl` and wakes the waiters when the
    /// transaction commits; `false` when the claim's row is gone.
    fn complete<'a>(
        &'a self,
        conn: &'a mut C,
        key: &'a str,
        claim: &'a Claim,
        payload: &'a [u8],
        ttl: Duration,
    ) -> TxFuture<'a, bool>;

    /// Deletes `claim`'s row (a released error); `false` when it is gone.
    fn release<'a>(&'a self, conn: &'a mut C, key: &'a str, claim: &'a Claim)
    -> TxFuture<'a, bool>;

    /// Waits (at most `timeout`, and it may return early) for `holder`, a claim made outside
    /// any caller's transaction (through the plain store), to end, and answers `true`; the
    /// engine then looks again. Answers `false` at once when the holder cannot end while the
    /// transaction is open (SQLite: the transaction holds, or will need, the database's one
    /// write lock that the holder needs to complete, and its snapshot would not see the end
    /// anyway): the call is then [`Error::InProgress`]. Never fails.
    fn wait<'a>(
        &'a self,
        key: &'a str,
        holder: &'a Claim,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}
