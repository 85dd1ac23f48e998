//! The connection pool: deadpool over redis-rs connections (one server's multiplexed
//! connections, or Cluster connections), recycled without I/O.
//!
//! deadpool-redis recycles a connection with `PING` every time it is taken from the pool, which
//! is one extra round trip per store operation. This manager keeps deadpool's pool (size limit,
//! wait and create timeouts, replacement of broken connections) and recycles by looking at a
//! flag instead: the flag is set by the connection itself when its socket closes (redis-rs sends
//! a `Disconnection` push on RESP3 connections), and by the store when a command on the
//! connection fails with a connection error or times out. A connection whose flag is set is
//! dropped at its next checkout and a new one is made; a healthy one costs no round trip.
//!
//! A Cluster connection is never flagged: it holds one connection per node and repairs them
//! itself (a node whose socket closed is reconnected, a moved slot is looked up again), so
//! replacing it whole would only cost a new discovery of the cluster.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::{PushInfo, PushKind, RedisError};

use super::servers::{Conn, Servers, Timeouts};

/// The pool of links.
pub(super) type Pool = managed::Pool<Links>;

/// One pooled connection and whether it is known to be broken.
pub(super) struct Link {
    pub(super) conn: Conn,
    broken: Arc<AtomicBool>,
}

impl Link {
    /// Marks a single-server connection as unusable: the pool drops it at its next checkout.
    /// A Cluster connection repairs itself and stays.
    pub(super) fn discard(&self) {
        if matches!(self.conn, Conn::Node(_)) {
            self.broken.store(true, Ordering::Release);
        }
    }
}

/// Makes links for the pool and recycles them without a round trip.
pub(super) struct Links {
    servers: Arc<Servers>,
    timeouts: Timeouts,
}

impl Links {
    /// Links to `servers` (which must speak RESP3), made with `timeouts`.
    pub(super) fn new(servers: Arc<Servers>, timeouts: Timeouts) -> Self {
        Links { servers, timeouts }
    }
}

impl managed::Manager for Links {
    type Type = Link;
    type Error = RedisError;

    async fn create(&self) -> Result<Link, RedisError> {
        let broken = Arc::new(AtomicBool::new(false));
        let flag = broken.clone();
        let on_push = move |push: PushInfo| {
            if push.kind == PushKind::Disconnection {
                flag.store(true, Ordering::Release);
            }
            Ok::<(), Infallible>(())
        };
        let conn = self.servers.connect(self.timeouts, on_push).await?;
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
