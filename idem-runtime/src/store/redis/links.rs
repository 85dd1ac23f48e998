//! The connections that carry a store's commands: a few multiplexed connections, shared by
//! every operation at once.
//!
//! A redis-rs [`MultiplexedConnection`](redis::aio::MultiplexedConnection) (and a Cluster
//! connection, which holds one per node) pipelines the commands of all its clones: an
//! operation clones it, sends, and awaits its own answer while any number of others are in
//! flight on the same socket. So operations never wait for a free connection, and the
//! commands of many concurrent calls leave in one write and come back in one read. (A pool
//! that lends a connection to one operation for its whole round trip allows only as many
//! operations in flight as it has connections, each in a write and a read of its own; with
//! 64 concurrent callers that cost idem four fifths of its throughput.)
//!
//! The store keeps `pool_size` connections and deals operations to them in turn. A connection
//! is replaced when it is known to be broken: the connection itself reports that its socket
//! closed (redis-rs sends a `Disconnection` push on RESP3 connections), and the store flags it
//! when a command on it fails with a connection error or times out. The next operation dealt
//! to that place makes a new connection (one at a time per place); operations already in
//! flight on the old one finish or fail on it. Checking a connection costs no round trip:
//! there is no `PING`.
//!
//! A Cluster connection is never flagged: it holds one connection per node and repairs them
//! itself (a node whose socket closed is reconnected, a moved slot is looked up again), so
//! replacing it whole would only cost a new discovery of the cluster.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use redis::{PushInfo, PushKind, RedisError};

use super::servers::{Conn, Servers, Timeouts};

/// A shared connection and whether it is known to be broken.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) conn: Conn,
    broken: Arc<AtomicBool>,
}

impl Link {
    /// Marks a single-server connection as unusable: the next operation dealt to its place
    /// makes a new one. A Cluster connection repairs itself and stays.
    pub(super) fn discard(&self) {
        if matches!(self.conn, Conn::Node(_)) {
            self.broken.store(true, Ordering::Release);
        }
    }

    fn is_healthy(&self) -> bool {
        !self.broken.load(Ordering::Acquire)
    }
}

/// Why no connection could be had.
pub(super) enum Unlinked {
    /// Connecting failed.
    Failed(RedisError),
    /// Connecting took longer than `connect_timeout`.
    TimedOut(Duration),
}

/// The connections of a store.
pub(super) struct Links {
    servers: Arc<Servers>,
    timeouts: Timeouts,
    places: Box<[Place]>,
    next: AtomicUsize,
}

/// One of the store's connections, once made.
#[derive(Default)]
struct Place {
    link: Mutex<Option<Link>>,
    /// Held while a connection for this place is being made, so that operations dealt to a
    /// broken place make one new connection between them, not one each.
    connecting: tokio::sync::Mutex<()>,
}

impl Place {
    fn healthy(&self) -> Option<Link> {
        let link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        link.as_ref().filter(|link| link.is_healthy()).cloned()
    }

    fn set(&self, link: Link) {
        *self.link.lock().unwrap_or_else(PoisonError::into_inner) = Some(link);
    }
}

impl Links {
    /// `count` (at least one) connections to `servers` (which must speak RESP3), made with
    /// `timeouts` when first needed.
    pub(super) fn new(servers: Arc<Servers>, timeouts: Timeouts, count: usize) -> Self {
        Links {
            servers,
            timeouts,
            places: (0..count.max(1)).map(|_| Place::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A connection for one operation: the next place's, made first if it has none or a
    /// broken one.
    pub(super) async fn get(&self) -> Result<Link, Unlinked> {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.places.len();
        self.at(at).await
    }

    /// Makes every connection now, all at once; the first one's failure is returned (the
    /// others are made again when needed).
    pub(super) async fn fill(&self) -> Result<Link, Unlinked> {
        let rest = (1..self.places.len()).map(|at| self.at(at));
        let (first, _) = tokio::join!(self.at(0), join_all(rest));
        first
    }

    async fn at(&self, at: usize) -> Result<Link, Unlinked> {
        let place = &self.places[at];
        if let Some(link) = place.healthy() {
            return Ok(link);
        }
        let _connecting = place.connecting.lock().await;
        if let Some(link) = place.healthy() {
            return Ok(link);
        }
        let link = self.create().await?;
        place.set(link.clone());
        Ok(link)
    }

    async fn create(&self) -> Result<Link, Unlinked> {
        let broken = Arc::new(AtomicBool::new(false));
        let flag = broken.clone();
        let on_push = move |push: PushInfo| {
            if push.kind == PushKind::Disconnection {
                flag.store(true, Ordering::Release);
            }
            Ok::<(), Infallible>(())
        };
        let within = self.timeouts.connect;
        match tokio::time::timeout(within, self.servers.connect(self.timeouts, on_push)).await {
            Ok(Ok(conn)) => Ok(Link { conn, broken }),
            Ok(Err(error)) => Err(Unlinked::Failed(error)),
            Err(_) => Err(Unlinked::TimedOut(within)),
        }
    }
}

/// Awaits every future of `futures`, all at once.
async fn join_all<F: Future>(futures: impl Iterator<Item = F>) {
    let mut pending: Vec<Pin<Box<F>>> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|future| future.as_mut().poll(cx).is_pending());
        if pending.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}
