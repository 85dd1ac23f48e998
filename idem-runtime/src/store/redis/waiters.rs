//! Waking the calls that wait for an in-flight call, by pub/sub instead of polling.
//!
//! The complete, release and forget scripts publish on the channel named like the key. One subscriber
//! connection per store (RESP3, messages delivered as pushes) carries the subscriptions of all
//! its waiters: a channel is subscribed while at least one waiter of this process waits on it,
//! and a message wakes all of them through a [`Notify`]. A waiter subscribes first and looks at
//! the key afterwards (the caller's job), so a completion cannot fall between the look and the
//! subscription. The waiters are kept in the store's wake registry (`store/wake.rs`); this
//! file hooks the subscriber into it: a channel stays registered while it is subscribed, and
//! its last waiter leaving unsubscribes it.
//!
//! The subscriber connection is made and driven like the command connections (see
//! `runtimes.rs`): on the runtime of the waiter that needs it while the store's calls all
//! come from one runtime, else on idem's own, so that it serves the waiters of every runtime.
//!
//! On one server the subscriber is a multiplexed connection and subscribes with `SUBSCRIBE`.
//! On a Redis Cluster it is a Cluster connection and subscribes with `SSUBSCRIBE` (sharded
//! pub/sub), which redis-rs sends to the node of the channel's slot, the node that runs the
//! key's scripts and their `SPUBLISH`.
//!
//! When the subscriber connection closes, every waiter is woken (it looks again, and the next
//! wait connects anew); when it cannot be made at all, waiters fall back to short sleeps. A
//! Cluster connection that loses one node reconnects it by itself, so it is kept: its waiters
//! are woken and subscribe again. A node that stops serving a channel's slot (the slot moved
//! to another master) unsubscribes its subscribers (`sunsubscribe` push): the channel's
//! waiters are woken too, and subscribe again where the slot now is.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::{PushInfo, PushKind, RedisError, Value};

use super::failure;
use super::runtimes::{self, ConnectRuntime, DrivenBy};
use super::servers::{Conn, Servers, Timeouts};
use crate::store::wake::{Hooks, Registry, Tags};

/// A waiter's registration on a channel; dropping the last one of a channel unsubscribes it.
pub(super) type Ticket = crate::store::wake::Ticket<Hub>;

/// What the registry keeps per channel: whether the current subscriber connection is
/// subscribed to it.
type Subscribed = bool;

/// The waiters of one store and its subscriber connection.
pub(super) struct Hub {
    /// The waiters by channel, shared with the push handler.
    board: Arc<Registry<Subscribed>>,
    /// Held while (un)subscribing, so that the commands reach the server in the order the
    /// board decided them.
    listener: tokio::sync::Mutex<Option<Listener>>,
    servers: Arc<Servers>,
    home: Arc<ConnectRuntime>,
    timeouts: Timeouts,
    command_timeout: Duration,
}

struct Listener {
    conn: Conn,
    alive: Arc<AtomicBool>,
    /// The runtime that drives it.
    made_on: DrivenBy,
}

/// Forgets every subscription: the connection that held them is gone or being replaced
/// (its pushes are ignored from now on).
fn forget(board: &mut Tags<Subscribed>) {
    board.generation += 1;
    board.reset_states();
}

/// Forgets every subscription and wakes every waiter, so that each looks at its key again
/// (and subscribes anew if it still has to wait).
fn reset(board: &mut Tags<Subscribed>) {
    forget(board);
    board.wake_all();
}

/// Marks every channel unsubscribed and wakes every waiter, keeping the connection (a
/// Cluster connection that lost one node): each waiter looks again and subscribes anew.
fn resubscribe(board: &mut Tags<Subscribed>) {
    board.reset_states();
    board.wake_all();
}

/// A channel stays registered while subscribed: its last waiter leaving unsubscribes it.
impl Hooks for Hub {
    type State = Subscribed;

    fn registry(&self) -> &Registry<Subscribed> {
        &self.board
    }

    fn keeps(subscribed: &Subscribed) -> bool {
        *subscribed
    }

    fn last_left(self: &Arc<Self>, channel: String) {
        // Unsubscribing is a round trip: sent in the background, on the caller's runtime (or,
        // without one, on idem's own).
        let hub = self.clone();
        runtimes::spawn(true, async move { hub.unsubscribe(channel).await });
    }
}

impl Hub {
    pub(super) fn new(
        servers: Arc<Servers>,
        home: Arc<ConnectRuntime>,
        timeouts: Timeouts,
        command_timeout: Duration,
    ) -> Self {
        Hub {
            board: Arc::default(),
            listener: tokio::sync::Mutex::new(None),
            servers,
            home,
            timeouts,
            command_timeout,
        }
    }

    /// Registers a waiter on `channel`. Enable a `notified()` of [`Ticket::wake`] before
    /// [`listen`](Hub::listen)ing and looking at the key.
    pub(super) fn register(self: &Arc<Self>, channel: &str) -> Ticket {
        Ticket::register(self, channel.to_owned())
    }

    /// Makes sure the subscriber connection is subscribed to the ticket's channel.
    ///
    /// A subscriber made on another caller's runtime is replaced first (see `ConnectRuntime`), and one
    /// found closed while subscribing is replaced once and the subscription sent again, as
    /// commands are (its waiters are woken either way, and subscribe again on the new one).
    pub(super) async fn listen(&self, ticket: &Ticket) -> Result<(), RedisError> {
        let channel = ticket.tag();
        let mut listener = self.listener.lock().await;
        if listener
            .as_ref()
            .is_some_and(|current| !self.home.serves(current.made_on))
        {
            self.replace(&mut listener, channel);
        }
        let mut resent = false;
        loop {
            match self.subscribe(&mut listener, channel).await {
                Err(error) if !resent && failure::resend(&error) => resent = true,
                Err(error) => {
                    // Not subscribed: the channel's other waiters look again too.
                    self.board.lock().wake(channel);
                    return Err(error);
                }
                Ok(()) => return Ok(()),
            }
        }
    }

    /// Subscribes `listener` (made first if there is none or it closed) to `channel`, unless it
    /// is already; drops it when the subscription fails, waking the waiters of the other
    /// channels (the caller subscribes `channel` again, or wakes its waiters).
    async fn subscribe(
        &self,
        listener: &mut Option<Listener>,
        channel: &str,
    ) -> Result<(), RedisError> {
        if let Some(current) = listener.as_ref() {
            let board = self.board.lock();
            let subscribed = board.get(channel).is_some_and(|c| c.state);
            if subscribed && current.alive.load(Ordering::Acquire) {
                return Ok(());
            }
        }
        let mut conn = match listener.as_ref() {
            Some(current) if current.alive.load(Ordering::Acquire) => current.conn.clone(),
            _ => {
                let fresh = self.connect().await?;
                let conn = fresh.conn.clone();
                *listener = Some(fresh);
                conn
            }
        };
        match tokio::time::timeout(self.command_timeout, conn.subscribe(channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                self.replace(listener, channel);
                return Err(error);
            }
            Err(_) => {
                self.replace(listener, channel);
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "(S)SUBSCRIBE did not answer within command_timeout",
                )));
            }
        }
        let mut board = self.board.lock();
        let alive = listener
            .as_ref()
            .is_some_and(|l| l.alive.load(Ordering::Acquire));
        if let (true, Some(channel)) = (alive, board.get_mut(channel)) {
            channel.state = true;
        }
        Ok(())
    }

    /// Unsubscribes from `channel` if no waiter came back to it meanwhile.
    async fn unsubscribe(&self, channel: String) {
        let mut listener = self.listener.lock().await;
        {
            let mut board = self.board.lock();
            match board.get(&channel) {
                Some(c) if c.waiters() == 0 && c.state => {}
                Some(c) if c.waiters() == 0 => {
                    board.remove(&channel);
                    return;
                }
                _ => return,
            }
        }
        let Some(current) = listener.as_ref() else {
            return;
        };
        let mut conn = current.conn.clone();
        let done = tokio::time::timeout(self.command_timeout, conn.unsubscribe(&channel)).await;
        if !matches!(done, Ok(Ok(()))) {
            // The connection's subscriptions are now unknown: start over on a new one.
            self.abandon(&mut listener);
            return;
        }
        let mut board = self.board.lock();
        if let Some(c) = board.get_mut(&channel) {
            if c.waiters() == 0 {
                board.remove(&channel);
            } else {
                // A waiter registered meanwhile: it subscribes again once it gets the listener.
                c.state = false;
            }
        }
    }

    /// Drops the subscriber connection and wakes every waiter.
    fn abandon(&self, listener: &mut Option<Listener>) {
        reset(&mut self.board.lock());
        *listener = None;
    }

    /// Drops the subscriber connection and wakes the waiters of every channel but `spare`,
    /// whose waiter is subscribing: waking it would only make it look at its key once more.
    fn replace(&self, listener: &mut Option<Listener>, spare: &str) {
        let mut board = self.board.lock();
        forget(&mut board);
        board.wake_all_but(Some(spare));
        *listener = None;
    }

    /// A new subscriber connection, whose pushes wake the waiters of the board.
    async fn connect(&self) -> Result<Listener, RedisError> {
        let alive = Arc::new(AtomicBool::new(true));
        let generation = {
            let mut board = self.board.lock();
            forget(&mut board);
            board.generation
        };
        let board = Arc::downgrade(&self.board);
        let flag = alive.clone();
        let cluster = self.servers.is_cluster();
        let on_push = move |push: PushInfo| {
            if let Some(board) = board.upgrade() {
                let mut board = board.lock();
                if board.generation == generation {
                    on_push(&mut board, &flag, cluster, push);
                }
            }
            Ok::<(), Infallible>(())
        };
        let (conn, made_on) = self
            .servers
            .subscriber(self.timeouts, on_push, &self.home)
            .await?;
        Ok(Listener {
            conn,
            alive,
            made_on,
        })
    }
}

fn on_push(board: &mut Tags<Subscribed>, alive: &AtomicBool, cluster: bool, push: PushInfo) {
    let channel = || match push.data.first() {
        Some(Value::BulkString(bytes)) => Some(String::from_utf8_lossy(bytes)),
        _ => None,
    };
    match push.kind {
        PushKind::Message | PushKind::SMessage => {
            if let Some(name) = channel() {
                board.wake(&name);
            }
        }
        PushKind::SUnsubscribe => {
            if let Some(channel) = channel().and_then(|name| board.get_mut(&name)) {
                channel.state = false;
                channel.wake();
            }
        }
        PushKind::Disconnection if cluster => resubscribe(board),
        PushKind::Disconnection => {
            alive.store(false, Ordering::Release);
            reset(board);
        }
        _ => {}
    }
}
