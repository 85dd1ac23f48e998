//! Which runtime drives the store's connections: the one its calls come from while there is
//! only one, else a runtime of idem's own.
//!
//! A redis-rs connection is a handle on a task, its driver, that owns the socket: redis-rs
//! spawns it on the runtime current where the connection is made, and registers the socket
//! with that runtime's I/O driver. Made on an application's runtime, a connection depends on
//! it: once that runtime ends (an `idem::init` inside one `#[tokio::test]`, an application
//! with a runtime per job) the connection is dead, and while a current-thread runtime is not
//! being driven (no `block_on` running) its connections do not move, and calls from any other
//! runtime wait on them until they time out.
//!
//! Driving every connection on idem's own runtime would avoid both, at a price: each command
//! and each answer would then cross between threads, two wake-ups of another thread per round
//! trip, on the hot path of every call. So a store makes its connections on the runtime of the
//! call that needs one, as long as all its calls come from that one runtime; a call from any
//! other runtime (also after the first one ended) moves the store's connections for good to a
//! multi-thread runtime of idem's own, started then and kept for the life of the process (see
//! [`ConnectRuntime`]). Calls on any runtime only exchange messages with the drivers (channels work
//! across runtimes) and time themselves on their own runtime.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use redis::RedisResult;
use tokio::runtime::{Builder, Handle, Id, Runtime};
use tokio::task::JoinHandle;

/// The most threads that drive connections. A driver frames and parses the commands of its
/// connection, so one thread keeps up with a connection; a few let a pool of connections (and
/// a Cluster's node connections) use a few cores, and more would only sit idle.
const MAX_THREADS: usize = 4;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The handle of idem's connection runtime, started on first use.
fn handle() -> io::Result<&'static Handle> {
    let runtime = RUNTIME.get_or_init(|| {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS);
        Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("idem-redis")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match runtime {
        Ok(runtime) => Ok(runtime.handle()),
        Err(reason) => Err(io::Error::other(format!(
            "idem cannot start the threads that drive its Redis connections: {reason}"
        ))),
    }
}

/// Where one store makes its connections: on the runtime of the call that needs one, until a
/// call comes from another runtime; from then on, on idem's own.
#[derive(Debug, Default)]
pub(super) struct ConnectRuntime {
    /// Whether the store has served calls from more than one runtime.
    moved: AtomicBool,
}

/// The runtime a connection was made on; `None` for idem's own.
pub(super) type DrivenBy = Option<Id>;

impl ConnectRuntime {
    /// Whether a connection made on `made_on` may carry a command of a call made here: one made
    /// on idem's own runtime always, one made on a caller's runtime for calls on that runtime.
    /// When it may not, the store's connections move to idem's own runtime, for good.
    pub(super) fn serves(&self, made_on: DrivenBy) -> bool {
        let Some(made_on) = made_on else {
            return true;
        };
        if current() == Some(made_on) {
            return true;
        }
        self.moved.store(true, Ordering::Release);
        false
    }

    /// Makes a connection with `make`: on the caller's runtime while the store has served no
    /// other, else on idem's own.
    pub(super) async fn make<T: Send + 'static>(
        &self,
        make: impl Future<Output = RedisResult<T>> + Send + 'static,
    ) -> RedisResult<(T, DrivenBy)> {
        match (self.moved.load(Ordering::Acquire), current()) {
            (false, Some(here)) => Ok((make.await?, Some(here))),
            _ => Ok((run(make).await??, None)),
        }
    }
}

/// The runtime of the calling task.
fn current() -> Option<Id> {
    Handle::try_current().ok().map(|handle| handle.id())
}

/// Runs `future` (one that makes a connection) on idem's connection runtime and returns its
/// output; dropping the returned future stops it there.
async fn run<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> io::Result<T> {
    let task = Task(handle()?.spawn(future));
    task.await
        .map_err(|e| io::Error::other(format!("idem's connection task ended early: {e}")))
}

/// Runs `future` in the background: on the caller's runtime if `here`, else (or without one)
/// on idem's connection runtime; nothing if that runtime cannot start.
pub(super) fn spawn(here: bool, future: impl Future<Output = ()> + Send + 'static) {
    if here && let Ok(runtime) = Handle::try_current() {
        drop(runtime.spawn(future));
        return;
    }
    match handle() {
        Ok(handle) => drop(handle.spawn(future)),
        Err(error) => tracing::debug!(%error, "idem dropped a background Redis command"),
    }
}

/// A task on the connection runtime, stopped when its caller stops waiting for it.
struct Task<T>(JoinHandle<T>);

impl<T> Future for Task<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_started_on_a_runtime_that_ended_goes_on() {
        let first = Builder::new_current_thread().enable_all().build().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let (echo_tx, mut echo_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        // A task made from the first runtime, like a connection's driver.
        first
            .block_on(run(async move {
                spawn(true, async move {
                    while let Some(n) = rx.recv().await {
                        let _ = echo_tx.send(n + 1);
                    }
                });
            }))
            .unwrap();
        drop(first);
        let second = Builder::new_current_thread().enable_all().build().unwrap();
        let echoed = second.block_on(async {
            tx.send(41).unwrap();
            echo_rx.recv().await
        });
        assert_eq!(echoed, Some(42));
    }

    #[test]
    fn connections_move_to_idems_runtime_once_a_second_runtime_calls() {
        let home = ConnectRuntime::default();
        let make = || async { Ok::<_, redis::RedisError>(()) };
        let first = Builder::new_current_thread().enable_all().build().unwrap();
        let (_, made_on) = first.block_on(home.make(make())).unwrap();
        assert_eq!(
            made_on,
            Some(first.handle().id()),
            "made where the call runs"
        );
        assert!(first.block_on(async { home.serves(made_on) }));
        let second = Builder::new_current_thread().enable_all().build().unwrap();
        assert!(!second.block_on(async { home.serves(made_on) }));
        for runtime in [&first, &second] {
            let (_, made_on) = runtime.block_on(home.make(make())).unwrap();
            assert_eq!(made_on, None, "made on idem's own runtime from now on");
            assert!(runtime.block_on(async { home.serves(made_on) }));
        }
    }
}
