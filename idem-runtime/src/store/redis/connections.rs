//! The connections that carry a store's commands: to one server, a few multiplexed
//! connections shared by every operation at once; to a Cluster, Cluster connections lent to
//! one operation at a time.
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
//! to that place makes a new connection (one at a time per place). An operation that was
//! dealt a connection the store did not yet know to be closed (the server dropped an idle
//! client, or a network device an idle socket) fails on it with a connection error, and is
//! sent once more on the new connection of the same place (see `Shared::query`). Checking
//! a connection costs no round trip: there is no `PING`. A connection is made, and driven, on
//! the runtime of the call that needs it while the store's calls all come from one runtime,
//! else on idem's own (see `runtimes.rs`): one made on another caller's runtime is replaced
//! like a broken one.
//!
//! On an application's `deadpool_redis::Pool` the store keeps no connection: each operation
//! checks one out of the pool through the same [`ConnectionSource`], and holds it until it returns (see
//! `pooled.rs`).
//!
//! A Cluster connection is never flagged: it holds one connection per node and repairs them
//! itself (a node whose socket closed is reconnected, a moved slot is looked up again), so
//! replacing it whole would only cost a new discovery of the cluster. It is not shared
//! between concurrent operations either: redis-rs follows an `ASK` redirection (a slot being
//! migrated) by sending `ASKING` to the target node and, once that is answered, the
//! command; another operation's command sent on the same node connection in between takes
//! the one-shot `ASKING`, and the redirected command bounces between the two nodes until its
//! retries run out (seen in the slot-migration test with one shared Cluster connection). So
//! an operation holds its Cluster connection, and `pool_size` Cluster connections carry that
//! many operations at once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use redis::{PushInfo, PushKind, RedisError};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::runtimes::{ConnectRuntime, DrivenBy};
use super::servers::{Conn, Servers, Timeouts};

/// A shared connection and whether it is known to be broken.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) conn: Conn,
    broken: Arc<AtomicBool>,
    /// The runtime that drives it.
    made_on: DrivenBy,
}

impl Link {
    fn is_healthy(&self) -> bool {
        !self.broken.load(Ordering::Acquire)
    }
}

/// Why no connection could be had.
pub(super) enum NoConnection {
    /// Connecting failed.
    Failed(RedisError),
    /// Connecting took longer than `connect_timeout`.
    TimedOut(Duration),
    /// The application's pool lent no connection (see `pooled.rs`).
    #[cfg(feature = "deadpool-redis")]
    Pool(super::pooled::Unpooled),
}

/// Where a store's operations get their connections: its own (one server or a Cluster), or an
/// application's pool. Either lends a [`LentConnection`] connection, so the command path after it is the
/// same for both (see `Shared::query`, which awaits the lending in place: one future layer
/// less on every operation than a `ConnectionSource::get` of its own).
pub(super) enum ConnectionSource {
    /// The store's own connections.
    Own(Connections),
    /// Connections checked out of an application's `deadpool_redis::Pool`, one per operation.
    #[cfg(feature = "deadpool-redis")]
    Pool(super::pooled::Pooled),
}

impl ConnectionSource {
    /// Makes every connection of the store's own now (see [`Connections::fill`]), or checks one out
    /// of the pool, and lends one: for the checks at connect time.
    pub(super) async fn fill(&self) -> Result<LentConnection<'_>, NoConnection> {
        match self {
            ConnectionSource::Own(links) => {
                let link = links.fill().await?;
                Ok(LentConnection::shared(link, 0))
            }
            #[cfg(feature = "deadpool-redis")]
            ConnectionSource::Pool(pool) => checkout(pool).await,
        }
    }

    /// Lends a connection for an operator's operation (see `stats.rs`); the calls' own path
    /// lends in place, in `Shared::query`.
    pub(super) async fn lend(&self) -> Result<LentConnection<'_>, NoConnection> {
        match self {
            ConnectionSource::Own(links) => links.get().await,
            #[cfg(feature = "deadpool-redis")]
            ConnectionSource::Pool(pool) => checkout(pool).await,
        }
    }
}

/// A connection checked out of an application's pool, lent until the `LentConnection` is dropped.
/// (Boxed: a checkout's future is large, and the store's own path would carry it.)
#[cfg(feature = "deadpool-redis")]
pub(super) async fn checkout(
    pool: &super::pooled::Pooled,
) -> Result<LentConnection<'_>, NoConnection> {
    lend_checkout(Box::pin(pool.get()).await)
}

/// A checkout's answer as a lent connection, or why there is none (awaited in place by the
/// command path: no future of its own around the pool's).
#[cfg(feature = "deadpool-redis")]
pub(super) fn lend_checkout<'a>(
    checkout: Result<(Conn, Box<super::pooled::Checkout>), super::pooled::NotCheckedOut>,
) -> Result<LentConnection<'a>, NoConnection> {
    use super::pooled::NotCheckedOut;
    match checkout {
        Ok((conn, checkout)) => Ok(LentConnection::pooled(conn, checkout)),
        Err(NotCheckedOut::Connect(error)) => Err(NoConnection::Failed(error)),
        Err(NotCheckedOut::Pool(unpooled)) => Err(NoConnection::Pool(unpooled)),
    }
}

/// The connections of a store.
pub(super) struct Connections {
    servers: Arc<Servers>,
    home: Arc<ConnectRuntime>,
    timeouts: Timeouts,
    places: Box<[Slot]>,
    next: AtomicUsize,
    /// Whether an operation holds its connection alone (Cluster connections).
    exclusive: bool,
}

/// A connection handed to one operation; with exclusive use (a Cluster connection, a pooled
/// connection), the operation holds it until this is dropped.
pub(super) struct LentConnection<'a> {
    pub(super) conn: Conn,
    hold: LentKind<'a>,
    /// Where the connection is kept, for [`Connections::again`].
    pub(super) place: usize,
}

/// What a [`LentConnection`] connection keeps while the operation runs.
enum LentKind<'a> {
    /// A shared connection of the store's own to one server: the flag that marks it broken.
    Multiplexed(Arc<AtomicBool>),
    /// A Cluster connection's permit. The connection repairs itself, so it is never flagged.
    Exclusive(#[allow(dead_code)] SemaphorePermit<'a>),
    /// A connection checked out of an application's pool, back in it when this is dropped.
    /// Boxed: deadpool's object is large, and every `LentConnection` of the store's own connections
    /// would be as large (and copied with `memcpy` on every operation).
    #[cfg(feature = "deadpool-redis")]
    Pooled(Box<super::pooled::Checkout>),
}

impl<'a> LentConnection<'a> {
    /// A shared connection of the store's own.
    fn shared(link: Link, place: usize) -> Self {
        LentConnection {
            conn: link.conn,
            hold: LentKind::Multiplexed(link.broken),
            place,
        }
    }

    /// A Cluster connection, held with `permit`.
    fn exclusive(link: Link, permit: SemaphorePermit<'a>, place: usize) -> Self {
        LentConnection {
            conn: link.conn,
            hold: LentKind::Exclusive(permit),
            place,
        }
    }

    /// A connection checked out of a pool.
    #[cfg(feature = "deadpool-redis")]
    pub(super) fn pooled(conn: Conn, checkout: Box<super::pooled::Checkout>) -> Self {
        LentConnection {
            conn,
            hold: LentKind::Pooled(checkout),
            place: 0,
        }
    }

    /// Marks the connection as unusable: a single-server connection of the store's own is made
    /// anew by the next operation dealt to its place, a pooled one is taken out of the pool
    /// (and closed) instead of going back. A Cluster connection repairs itself and stays.
    pub(super) fn discard(&mut self) {
        match &mut self.hold {
            LentKind::Multiplexed(broken) => broken.store(true, Ordering::Release),
            LentKind::Exclusive(_) => {}
            #[cfg(feature = "deadpool-redis")]
            LentKind::Pooled(checkout) => checkout.discard(),
        }
    }

    /// Whether this is a connection to one server (not a Cluster connection).
    pub(super) fn is_node(&self) -> bool {
        matches!(self.conn, Conn::Node(_))
    }
}

/// One of the store's connections, once made.
struct Slot {
    link: Mutex<Option<Link>>,
    /// Held while a connection for this place is being made, so that operations dealt to a
    /// broken place make one new connection between them, not one each.
    connecting: tokio::sync::Mutex<()>,
    /// One permit: held by the operation using the connection, with exclusive use.
    user: Semaphore,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            link: Mutex::default(),
            connecting: tokio::sync::Mutex::default(),
            user: Semaphore::new(1),
        }
    }
}

impl Slot {
    fn healthy(&self) -> Option<Link> {
        let link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        link.as_ref().filter(|link| link.is_healthy()).cloned()
    }

    fn set(&self, link: Link) {
        *self.link.lock().unwrap_or_else(PoisonError::into_inner) = Some(link);
    }
}

impl Connections {
    /// `count` (at least one) connections to `servers` (which must speak RESP3), made with
    /// `timeouts` when first needed; each used by one operation at a time if `exclusive`.
    pub(super) fn new(
        servers: Arc<Servers>,
        home: Arc<ConnectRuntime>,
        timeouts: Timeouts,
        count: usize,
        exclusive: bool,
    ) -> Self {
        Connections {
            servers,
            home,
            timeouts,
            places: (0..count.max(1)).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            exclusive,
        }
    }

    /// A shared connection to one server, when the next slot holds a healthy one that may
    /// serve a call made here: the common case, lent without a future of its own. `None` for
    /// Cluster connections (held one operation at a time) and when the slot's connection must
    /// be made; then [`get`](Connections::get), which is dealt the same slot again (the turn
    /// is handed back): dealt the next slot instead, a slot whose connection closed would be
    /// passed over for good, and the store would run on fewer connections than it has slots.
    pub(super) fn ready(&self) -> Option<LentConnection<'_>> {
        if self.exclusive {
            return None;
        }
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.places.len();
        match self.usable(&self.places[at]) {
            Some(link) => Some(LentConnection::shared(link, at)),
            None => {
                self.next.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// A connection for one operation: the next place's, made first if it has none or a
    /// broken one. With exclusive use, the first free place from there on, or else the next
    /// place's once its operation is done.
    pub(super) async fn get(&self) -> Result<LentConnection<'_>, NoConnection> {
        let next = self.next.fetch_add(1, Ordering::Relaxed);
        let mut at = next % self.places.len();
        let mut held = None;
        if self.exclusive {
            let free = (0..self.places.len())
                .map(|step| (next + step) % self.places.len())
                .find_map(|at| Some((at, self.places[at].user.try_acquire().ok()?)));
            held = Some(match free {
                Some((free, permit)) => {
                    at = free;
                    permit
                }
                None => self.places[at]
                    .user
                    .acquire()
                    .await
                    .expect("the semaphore is never closed"),
            });
        }
        let link = self.at(at).await?;
        Ok(match held {
            Some(permit) => LentConnection::exclusive(link, permit, at),
            None => LentConnection::shared(link, at),
        })
    }

    /// The connection of `place` once more, made anew if it was discarded: for an operation
    /// sent again after the connection it was dealt turned out to be closed. (Dealt the next
    /// place instead, it could meet another connection that closed at the same time, as when
    /// the server dropped all its clients.)
    pub(super) async fn again(&self, place: usize) -> Result<LentConnection<'_>, NoConnection> {
        let at = place % self.places.len();
        let held = match self.exclusive {
            true => Some(
                self.places[at]
                    .user
                    .acquire()
                    .await
                    .expect("the semaphore is never closed"),
            ),
            false => None,
        };
        let link = self.at(at).await?;
        Ok(match held {
            Some(permit) => LentConnection::exclusive(link, permit, at),
            None => LentConnection::shared(link, at),
        })
    }

    /// Makes every connection now, all at once; the first one's failure is returned (the
    /// others are made again when needed).
    pub(super) async fn fill(&self) -> Result<Link, NoConnection> {
        let rest = (1..self.places.len()).map(|at| self.at(at));
        let (first, _) = tokio::join!(self.at(0), join_all(rest));
        first
    }

    async fn at(&self, at: usize) -> Result<Link, NoConnection> {
        let place = &self.places[at];
        if let Some(link) = self.usable(place) {
            return Ok(link);
        }
        // Boxed: making a connection is rare and its future is large (kilobytes), and every
        // operation's future would otherwise carry it, and copy it, on every call.
        Box::pin(self.replace(place)).await
    }

    /// The place's connection, if it is healthy and may serve a call made here (a connection
    /// driven by another caller's runtime is replaced too: see `ConnectRuntime`).
    fn usable(&self, place: &Slot) -> Option<Link> {
        place
            .healthy()
            .filter(|link| self.home.serves(link.made_on))
    }

    /// Makes the place's connection anew, once between the operations that found it unusable.
    async fn replace(&self, place: &Slot) -> Result<Link, NoConnection> {
        let _connecting = place.connecting.lock().await;
        if let Some(link) = self.usable(place) {
            return Ok(link);
        }
        let link = self.create().await?;
        place.set(link.clone());
        Ok(link)
    }

    async fn create(&self) -> Result<Link, NoConnection> {
        let broken = Arc::new(AtomicBool::new(false));
        let flag = broken.clone();
        let on_push = move |push: PushInfo| {
            if push.kind == PushKind::Disconnection {
                flag.store(true, Ordering::Release);
            }
            Ok::<(), Infallible>(())
        };
        let within = self.timeouts.connect;
        let connect = self.servers.connect(self.timeouts, on_push, &self.home);
        match tokio::time::timeout(within, connect).await {
            Ok(Ok((conn, made_on))) => Ok(Link {
                conn,
                broken,
                made_on,
            }),
            Ok(Err(error)) => Err(NoConnection::Failed(error)),
            Err(_) => Err(NoConnection::TimedOut(within)),
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
