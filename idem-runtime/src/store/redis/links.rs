//! The connection pool: deadpool over redis-rs multiplexed connections, recycled without I/O.
//!
//! deadpool-redis recycles a connection with `PING` every time it is taken from the pool, which
//! is one extra round trip per store operation. This manager keeps deadpool's pool (size limit,
//! wait and create timeouts, replacement of broken connections) and recycles by looking at a
//! flag instead: the flag is set by the connection itself when its socket closes (redis-rs sends
//! a `Disconnection` push on RESP3 connections), and by the store when a command on the
//! connection fails with a connection error or times out. A connection whose flag is set is
//! dropped at its next checkout and a new one is made; a healthy one costs no round trip.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, PushInfo, PushKind, RedisError};

/// The pool of links.
pub(super) type Pool = managed::Pool<Links>;

/// One pooled connection and whether it is known to be broken.
pub(super) struct Link {
    pub(super) conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

impl Link {
    /// Marks the connection as unusable: the pool drops it at its next checkout.
    pub(super) fn discard(&self) {
        self.broken.store(true, Ordering::Release);
    }
}

/// Makes links for the pool and recycles them without a round trip.
pub(super) struct Links {
    client: Client,
    config: AsyncConnectionConfig,
}

impl Links {
    /// Links to the server of `client` (which must speak RESP3), made with `config`.
    pub(super) fn new(client: Client, config: AsyncConnectionConfig) -> Self {
        Links { client, config }
    }
}

impl managed::Manager for Links {
    type Type = Link;
    type Error = RedisError;

    async fn create(&self) -> Result<Link, RedisError> {
        let broken = Arc::new(AtomicBool::new(false));
        let flag = broken.clone();
        let config = self.config.clone().set_push_sender(move |push: PushInfo| {
            if push.kind == PushKind::Disconnection {
                flag.store(true, Ordering::Release);
            }
            Ok::<(), Infallible>(())
        });
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Link { conn, broken })
    }

    async fn recycle(&self, link: &mut Link, _: &Metrics) -> RecycleResult<RedisError> {
        if link.broken.load(Ordering::Acquire) {
            Err(RecycleError::message("the connection to Redis is closed"))
        } else {
            Ok(())
        }
    }
}
