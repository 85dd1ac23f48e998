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
//! [`PostgresStore::wait`](super::PostgresStore)) instead of sleeping until woken.
//!
//! `LISTEN` may also succeed and carry nothing: behind a pooler in transaction mode
//! (PgBouncer), the server connection that ran it goes back to the pooler's pool, and its
//! notifications never reach the listener. So the listener does not trust its `LISTEN`: it
//! sends a probe, a notification with a random payload, from another connection of its own
//! (through the same URL, hence the same pooler), and counts as listening only once the probe
//! came back, within [`PROBE_WAIT`]. This tests the very path a completion's notification
//! takes; no setting can be wrong about it. A probe that does not come back leaves the waiters
//! polling; the listener probes again later (after [`REPROBE_MIN`], doubling up to
//! [`REPROBE_MAX`]), in case the probe was only slow.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};
use sqlx::{Connection, SqlSafeStr};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::sent::{Value, send};
use crate::store::wake::Registry;

/// A waiter's registration on a tag; dropping it forgets the tag when no one else waits.
pub(super) type Ticket = crate::store::wake::Ticket<Registry<()>>;

/// How long the listener waits before connecting again after a failure, at most.
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// How long the listener waits for its probe to come back (at most the connect timeout).
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// How long after a probe that did not come back the listener tries again, at first.
const REPROBE_MIN: Duration = Duration::from_secs(10);

/// How long after a probe that did not come back the listener tries again, at most.
const REPROBE_MAX: Duration = Duration::from_secs(600);

/// The start of a probe's payload; a tag is hex digits only, so no waiter has it.
const PROBE: &str = "idem-probe:";

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
    /// Whether the listener is connected, listening, and its probe came back: a completion
    /// committed now will be delivered.
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
        let mut reprobe = REPROBE_MIN;
        loop {
            match self.listen().await {
                Ok(mut listener) => match self.probe(&mut listener).await {
                    Ok(true) => {
                        pause = Duration::from_millis(50);
                        reprobe = REPROBE_MIN;
                        self.board.listening.store(true, Ordering::Release);
                        // Notifications sent while no listener was up may have been missed.
                        self.board.waiters.lock().wake_all();
                        self.receive(&mut listener).await;
                    }
                    Ok(false) => {
                        tracing::info!(
                            "idem's LISTEN on PostgreSQL receives no notification (a pooler in transaction mode?); waiters poll the store"
                        );
                        drop(listener);
                        self.board.lost();
                        tokio::time::sleep(reprobe).await;
                        reprobe = (reprobe * 2).min(REPROBE_MAX);
                        continue;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "idem's PostgreSQL listener could not probe its connection; connecting again");
                    }
                },
                Err(error) => {
                    tracing::debug!(%error, "idem cannot listen for completions on PostgreSQL; waiters look again periodically");
                }
            }
            self.board.lost();
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RECONNECT_MAX);
        }
    }

    /// Whether a notification sent from another connection reaches `listener`: one is sent
    /// with a random payload, and awaited for [`PROBE_WAIT`] at most (at most the connect
    /// timeout). Other notifications that arrive meanwhile wake their waiters. An error when
    /// the probe cannot be sent, or the listener's connection fails.
    async fn probe(&self, listener: &mut PgListener) -> Result<bool, sqlx::Error> {
        let payload = format!("{PROBE}{:032x}", rand::random::<u128>());
        let wait = PROBE_WAIT.min(self.connect_timeout);
        let sent = async {
            // Named apart from the store's own connections, in `pg_stat_activity` and logs.
            let name = match self.connect.get_application_name() {
                Some(name) => format!("{name}-probe"),
                None => "idem-probe".to_owned(),
            };
            let options = self.connect.clone().application_name(&name);
            let mut conn = PgConnection::connect_with(&options).await?;
            // The simple query protocol: no prepared statement, whatever is in between.
            let notify = send(
                &"SELECT pg_notify($1, $2)".into_sql_str(),
                &[Value::Text(&self.channel), Value::Text(&payload)],
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
        let deadline = Instant::now() + wait;
        loop {
            let received = tokio::time::timeout_at(deadline, listener.try_recv()).await;
            match received {
                Err(_) => return Ok(false),
                Ok(Ok(Some(notification))) if notification.payload() == payload => {
                    return Ok(true);
                }
                Ok(Ok(Some(notification))) => {
                    self.board.waiters.lock().wake(notification.payload());
                }
                Ok(Ok(None)) => return Err(sqlx::Error::PoolClosed),
                Ok(Err(error)) => return Err(error),
            }
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
