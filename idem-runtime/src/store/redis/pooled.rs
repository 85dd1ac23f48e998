//! An application's `deadpool_redis::Pool` as the connections of a store
//! ([`RedisStore::from_deadpool`](super::RedisStore::from_deadpool)).
//!
//! Each operation checks a connection out of the pool ([`Pooled::get`]), sends its command (or
//! its pipeline: `PTTL`, `WAIT`, the `SCRIPT LOAD` after a `NOSCRIPT`) on it, and gives it back
//! when it returns, through the same path as the store's own connections (see
//! `Shared::query`): the pooled connection is a redis-rs `MultiplexedConnection`, so the
//! operation carries a clone of its handle and the checkout holds the pool's object. The pool's
//! own rules apply: its `max_size` bounds the operations in flight, its wait, create and recycle
//! timeouts bound a checkout, and deadpool-redis checks every connection it lends again with a
//! pipelined `UNWATCH` and `PING` (its `recycle`, one more round trip per operation).
//!
//! A connection that broke under an operation (a connection error, or no answer within
//! `command_timeout`) is taken out of the pool instead of going back, and the operation is sent
//! once more on another checkout when the connection was found closed, as on the store's own.
//! A checkout is bounded by `connect_timeout` too, so that a pool without a wait timeout that
//! stays exhausted fails the call with [`StoreErrorKind::Timeout`] instead of hanging it.
//!
//! Nothing is held between operations: a waiting call looks at its key with one checkout every
//! 50 ms (pooled connections speak whatever protocol the application chose, and carry no
//! pub/sub), so waiting never keeps a connection from the holder, even in a pool of one.

use std::fmt;
use std::time::Duration;

use deadpool_redis::{Pool, PoolError, Status, TimeoutType};
use redis::aio::MultiplexedConnection;

use crate::error::{StoreError, StoreErrorKind};

use super::servers::Conn;

/// What a store built on an application's pool calls itself in messages and in `describe`.
pub(super) const DESCRIBED: &str = "redis://(an application's deadpool-redis pool)";

/// An application's pool, lending one connection per operation.
pub(super) struct Pooled {
    pool: Pool,
    /// How long a checkout may take at most (`connect_timeout`), whatever the pool's own
    /// timeouts are.
    within: Duration,
}

impl Pooled {
    pub(super) fn new(pool: Pool, within: Duration) -> Self {
        Pooled { pool, within }
    }

    /// The most connections the pool keeps.
    pub(super) fn max_size(&self) -> usize {
        self.pool.status().max_size
    }

    /// A connection checked out of the pool, back in it when the returned [`Checkout`] is
    /// dropped (`connections.rs` lends the two as one `LentConnection`).
    pub(super) async fn get(&self) -> Result<(Conn, Box<Checkout>), NotCheckedOut> {
        match tokio::time::timeout(self.within, self.pool.get()).await {
            Ok(Ok(object)) => {
                let conn = Conn::Node(MultiplexedConnection::clone(&object));
                let checkout = Box::new(Checkout {
                    object: Some(object),
                    broken: false,
                });
                Ok((conn, checkout))
            }
            // The pool's manager could not make a connection: as when the store makes one.
            Ok(Err(PoolError::Backend(error))) => Err(NotCheckedOut::Connect(error)),
            Ok(Err(error)) => Err(NotCheckedOut::Pool(Unpooled {
                error: Some(error),
                within: self.within,
                status: self.pool.status(),
            })),
            Err(_) => Err(NotCheckedOut::Pool(Unpooled {
                error: None,
                within: self.within,
                status: self.pool.status(),
            })),
        }
    }
}

/// A connection checked out of the pool for one operation.
pub(super) struct Checkout {
    object: Option<deadpool_redis::Connection>,
    /// Whether the connection broke under the operation: it is then taken out of the pool.
    broken: bool,
}

impl Checkout {
    /// Keeps the connection from going back to the pool.
    pub(super) fn discard(&mut self) {
        self.broken = true;
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(object) = self.object.take()
            && self.broken
        {
            // Out of the pool, which makes a new connection in its place when it needs one;
            // closed once the last handle (an undo still under way) is dropped.
            drop(deadpool_redis::Connection::take(object));
        }
    }
}

/// Why a checkout lent no connection.
pub(super) enum NotCheckedOut {
    /// The pool's manager could not make a connection.
    Connect(redis::RedisError),
    /// The pool itself: exhausted, closed, timed out.
    Pool(Unpooled),
}

/// Why the pool lent no connection (other than its manager failing to make one).
pub(super) struct Unpooled {
    /// The pool's error; `None` when the checkout took longer than `within`.
    error: Option<PoolError>,
    within: Duration,
    /// The pool's state when it failed.
    status: Status,
}

impl Unpooled {
    /// The store error for an operation on the Redis described as `url`.
    pub(super) fn store_error(self, url: &str) -> StoreError {
        let Unpooled {
            error,
            within,
            status,
        } = self;
        let state = PoolState(status);
        let (kind, message) = match &error {
            None => (
                StoreErrorKind::Timeout,
                format!(
                    "no connection of the deadpool-redis pool of {url} could be checked out \
                     within {within:?} (connect_timeout): the pool is exhausted or cannot \
                     connect ({state})"
                ),
            ),
            Some(PoolError::Timeout(TimeoutType::Wait)) => (
                StoreErrorKind::Timeout,
                format!(
                    "no connection of the deadpool-redis pool of {url} became free within the \
                     pool's wait timeout: the pool is exhausted ({state})"
                ),
            ),
            Some(PoolError::Timeout(TimeoutType::Create)) => (
                StoreErrorKind::Timeout,
                format!(
                    "the deadpool-redis pool of {url} could not make a connection within its \
                     create timeout ({state})"
                ),
            ),
            Some(PoolError::Timeout(TimeoutType::Recycle)) => (
                StoreErrorKind::Timeout,
                format!(
                    "the deadpool-redis pool of {url} could not check a connection within its \
                     recycle timeout ({state})"
                ),
            ),
            Some(PoolError::Closed) => (
                StoreErrorKind::Unavailable,
                format!("the deadpool-redis pool of {url} is closed"),
            ),
            Some(PoolError::NoRuntimeSpecified) => (
                StoreErrorKind::Other,
                format!(
                    "the deadpool-redis pool of {url} has timeouts but no runtime to time them \
                     with; build it with `deadpool_redis::Config::create_pool(\
                     Some(deadpool_redis::Runtime::Tokio1))`"
                ),
            ),
            Some(PoolError::PostCreateHook(_) | PoolError::Backend(_)) => (
                StoreErrorKind::Unavailable,
                format!("the deadpool-redis pool of {url} lent no connection"),
            ),
        };
        let failed = StoreError::new(kind, message);
        match error {
            Some(error) => failed.with_source(error),
            None => failed,
        }
    }
}

/// The `Status` of a pool, for messages.
struct PoolState(Status);

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Status {
            max_size,
            size,
            available,
            waiting,
            ..
        } = self.0;
        write!(
            f,
            "max_size {max_size}, {size} connections, {available} available, {waiting} waiting"
        )
    }
}
