//! Waking the calls that wait for an in-flight call, by `LISTEN`/`NOTIFY` instead of polling.
//!
//! The complete and release statements notify the table's channel with a tag of the key (a
//! hash, so that notifications stay small whatever the key). One listener connection per
//! store, started by the first wait, listens on the channel; a notification wakes every
//! waiter of its tag in this process, registered in the store's wake registry
//! (`store/wake.rs`). A waiter registers first and looks at the key afterwards (the store's
//! job), so a completion cannot fall between the look and the wake-up.
//!
//! When the listener connection drops, notifications sent meanwhile are lost: every waiter is
//! woken to look again, and until the listener is back waiters look again every
//! [`FALLBACK_POLL`](super::FALLBACK_POLL) instead of sleeping until woken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::task::AbortHandle;

use crate::store::wake::Registry;

/// A waiter's registration on a tag; dropping it forgets the tag when no one else waits.
pub(super) type Ticket = crate::store::wake::Ticket<Registry<()>>;

/// How long the listener waits before connecting again after a failure, at most.
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// The tag a completion of `key` notifies: 32 hex digits of its SHA-256.
pub(super) fn tag(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

/// The waiters of one store and its listener task.
pub(super) struct Hub {
    board: Arc<Board>,
    /// Set once the listener task runs; aborted when the store is dropped.
    task: Mutex<Option<AbortHandle>>,
    connect: PgConnectOptions,
    connect_timeout: Duration,
    channel: String,
}

/// What the listener task and the waiters share.
#[derive(Default)]
struct Board {
    /// The waiters by tag.
    waiters: Arc<Registry<()>>,
    /// Whether the listener is connected and listening: a completion committed now will be
    /// delivered.
    listening: AtomicBool,
}

impl Board {
    /// Marks the listener down and wakes every waiter, so that each looks at its key again.
    fn lost(&self) {
        self.listening.store(false, Ordering::Release);
        self.waiters.lock().wake_all();
    }
}

impl Hub {
    pub(super) fn new(connect: PgConnectOptions, connect_timeout: Duration, channel: &str) -> Hub {
        Hub {
            board: Arc::default(),
            task: Mutex::new(None),
            connect,
            connect_timeout,
            channel: channel.to_owned(),
        }
    }

    /// Registers a waiter on `tag` and starts the listener if it does not run yet. Enable a
    /// `notified()` of [`Ticket::wake`] before looking at the key.
    pub(super) fn register(&self, tag: String) -> Ticket {
        self.start();
        Ticket::register(&self.board.waiters, tag)
    }

    /// Whether a completion committed from now on will wake its waiters.
    pub(super) fn listening(&self) -> bool {
        self.board.listening.load(Ordering::Acquire)
    }

    fn start(&self) {
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if task.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let listener = Listener {
            board: self.board.clone(),
            connect: self.connect.clone(),
            connect_timeout: self.connect_timeout,
            channel: self.channel.clone(),
        };
        *task = Some(runtime.spawn(listener.run()).abort_handle());
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().unwrap_or_else(|p| p.into_inner()) {
            task.abort();
        }
    }
}

/// The listener task: one connection, `LISTEN` on the channel, notifications to the board.
struct Listener {
    board: Arc<Board>,
    connect: PgConnectOptions,
    connect_timeout: Duration,
    channel: String,
}

impl Listener {
    async fn run(self) {
        let mut pause = Duration::from_millis(50);
        loop {
            match self.listen().await {
                Ok(mut listener) => {
                    pause = Duration::from_millis(50);
                    self.board.listening.store(true, Ordering::Release);
                    // Notifications sent while no listener was up may have been missed.
                    self.board.waiters.lock().wake_all();
                    self.receive(&mut listener).await;
                }
                Err(error) => {
                    tracing::debug!(%error, "idem cannot listen for completions on PostgreSQL; waiters look again periodically");
                }
            }
            self.board.lost();
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RECONNECT_MAX);
        }
    }

    /// A new listener connection, listening on the channel.
    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        // A pool of one lets `PgListener` own its connection; reconnecting is done here, so
        // that the board knows when notifications may have been lost.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(self.connect.clone());
        let setup = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.ignore_pool_close_event(true);
            listener.eager_reconnect(false);
            listener.listen(&self.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(self.connect_timeout, setup).await {
            Ok(listening) => listening,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }

    /// Wakes the waiters of each notification until the connection fails.
    async fn receive(&self, listener: &mut PgListener) {
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    self.board.waiters.lock().wake(notification.payload());
                }
                Ok(None) => return,
                Err(error) => {
                    tracing::debug!(%error, "idem's PostgreSQL listener connection failed; connecting again");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_short_and_distinct() {
        assert_eq!(tag("idem:s:k").len(), 32);
        assert_ne!(tag("idem:s:a"), tag("idem:s:b"));
    }
}
