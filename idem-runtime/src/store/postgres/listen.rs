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
//! woken to look again, and until the listener is back waiters poll the key (see
//! [`PostgresStore::wait`](super::PostgresStore)) instead of sleeping until woken. While it
//! connects, waiters sleep until it is up or has failed (both wake every waiter), looking again
//! only if that takes long.
//!
//! `LISTEN` may also succeed and carry nothing: behind a pooler in transaction mode
//! (PgBouncer), the server connection that ran it goes back to the pooler's pool, and its
//! notifications never reach the listener. Worse, that server connection keeps listening for
//! whichever client the pooler hands it to next, and a notification arriving in the middle of
//! that client's statement is a protocol error to it (sqlx reports an unexpected message). So:
//!
//! - a store with [`PostgresOptions::pooler`](super::PostgresOptions::pooler) on never sends
//!   `LISTEN` (no pooler in transaction mode carries it); its waiters poll;
//! - any other store does not trust its `LISTEN`: the listener first listens on a probe
//!   channel of its own (a random name), sends a notification on it from another connection
//!   (through the same URL, hence the same pooler), and listens on the table's channel only
//!   once the probe came back, within [`PROBE_WAIT`]. The probe tests the very path a
//!   completion's notification takes. A probe that does not come back stops the listener for
//!   the store's life and leaves its waiters polling: probing again would leave another
//!   `LISTEN` on some pooled server connection. What a failed probe leaves behind is a
//!   `LISTEN` on a channel no one notifies again.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};
use sqlx::{Connection, SqlSafeStr};
use tokio::task::AbortHandle;

use super::sent::{Value, send};
use crate::store::wake::Registry;

/// A waiter's registration on a tag; dropping it forgets the tag when no one else waits.
pub(super) type Ticket = crate::store::wake::Ticket<Registry<()>>;

/// How long the listener waits before connecting again after a failure, at most.
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// How long the listener waits for its probe to come back (at most the connect timeout).
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// The tag a completion of `key` notifies: 32 hex digits of its SHA-256.
pub(super) fn tag(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

/// The waiters of one store and its listener task.
pub(super) struct Hub {
    /// Whether the store listens at all (not behind a pooler in transaction mode).
    enabled: bool,
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
    /// What the listener does now: a [`Listening`] as a `u8`.
    state: AtomicU8,
}

/// What a store's listener does, and so how its waiters wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listening {
    /// None runs, or it failed, or its `LISTEN` carries nothing: waiters poll.
    Down = 0,
    /// It connects and probes: waiters are woken when it is up or has failed.
    Starting = 1,
    /// Connected, listening, and its probe came back: a completion committed now wakes its
    /// waiters.
    Up = 2,
}

impl Board {
    fn set(&self, state: Listening) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Marks the listener down and wakes every waiter, so that each looks at its key again.
    fn lost(&self) {
        self.set(Listening::Down);
        self.waiters.lock().wake_all();
    }
}

impl Hub {
    /// The waiters of a store whose listener connects with `connect` and listens on
    /// `channel`; a store behind a pooler in transaction mode (`enabled` false) never listens.
    pub(super) fn new(
        connect: PgConnectOptions,
        connect_timeout: Duration,
        channel: &str,
        enabled: bool,
    ) -> Hub {
        Hub {
            enabled,
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

    /// What the listener does now: [`Listening::Up`] when a completion committed from now on
    /// will wake its waiters.
    pub(super) fn listening(&self) -> Listening {
        match self.board.state.load(Ordering::Acquire) {
            2 => Listening::Up,
            1 => Listening::Starting,
            _ => Listening::Down,
        }
    }

    fn start(&self) {
        if !self.enabled {
            return;
        }
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
            self.board.set(Listening::Starting);
            match self.listen().await {
                Ok(Some(mut listener)) => {
                    pause = Duration::from_millis(50);
                    self.board.set(Listening::Up);
                    // Notifications sent while no listener was up may have been missed.
                    self.board.waiters.lock().wake_all();
                    self.receive(&mut listener).await;
                }
                Ok(None) => {
                    tracing::info!(
                        "idem's LISTEN on PostgreSQL receives no notification (a pooler in transaction mode?); waiters poll the store"
                    );
                    self.board.lost();
                    return;
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

    /// A new listener connection, listening on the channel once a probe showed that
    /// notifications reach it; `None` when the probe did not come back.
    async fn listen(&self) -> Result<Option<PgListener>, sqlx::Error> {
        // A pool of one lets `PgListener` own its connection; reconnecting is done here, so
        // that the board knows when notifications may have been lost.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(self.connect.clone());
        let probe = format!("idem_probe_{:016x}", rand::random::<u64>());
        let setup = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.ignore_pool_close_event(true);
            listener.eager_reconnect(false);
            listener.listen(&probe).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match tokio::time::timeout(self.connect_timeout, setup).await {
            Ok(listening) => listening?,
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        };
        if !self.probe(&mut listener, &probe).await? {
            return Ok(None);
        }
        // The probe's channel stays: no one notifies it again.
        match tokio::time::timeout(self.connect_timeout, listener.listen(&self.channel)).await {
            Ok(listening) => listening?,
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        }
        Ok(Some(listener))
    }

    /// Whether a notification on `channel` sent from another connection reaches `listener`,
    /// which listens on it: awaited for [`PROBE_WAIT`] at most (at most the connect timeout).
    /// An error when the probe cannot be sent, or the listener's connection fails.
    async fn probe(&self, listener: &mut PgListener, channel: &str) -> Result<bool, sqlx::Error> {
        let sent = async {
            // Named apart from the store's own connections, in `pg_stat_activity` and logs.
            let name = match self.connect.get_application_name() {
                Some(name) => format!("{name}-probe"),
                None => "idem-probe".to_owned(),
            };
            let options = self.connect.clone().application_name(&name);
            let mut conn = PgConnection::connect_with(&options).await?;
            // The simple query protocol: nothing prepared, whatever is in between.
            let notify = send(
                &"SELECT pg_notify($1, $2)".into_sql_str(),
                &[Value::Text(channel), Value::Text("probe")],
                true,
            )
            .execute(&mut conn)
            .await;
            let _ = conn.close().await;
            notify.map(|_| ())
        };
        match tokio::time::timeout(self.connect_timeout, sent).await {
            Ok(sent) => sent?,
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        }
        let wait = PROBE_WAIT.min(self.connect_timeout);
        match tokio::time::timeout(wait, listener.try_recv()).await {
            Err(_) => Ok(false),
            Ok(Ok(Some(notification))) => Ok(notification.channel() == channel),
            Ok(Ok(None)) => Err(sqlx::Error::PoolClosed),
            Ok(Err(error)) => Err(error),
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
