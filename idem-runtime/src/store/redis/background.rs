//! The runtime that drives the store's connections, whichever runtime its calls come from.
//!
//! A redis-rs connection is a handle on a task, its driver, that owns the socket: redis-rs
//! spawns it on the runtime current where the connection is made, and registers the socket
//! with that runtime's I/O driver. Made on an application's runtime, a connection dies with
//! it: an `idem::init` inside one `#[tokio::test]`, or an application with a runtime per
//! thread or per job, would leave the store with dead connections once that runtime ends, and
//! the next call would fail. So the store makes every connection (the command connections, the
//! Cluster connections with their node connections, the pub/sub subscriber) on a runtime of
//! idem's own, started with the first connection and kept for the life of the process. Calls
//! on any runtime only exchange messages with the drivers (channels work across runtimes) and
//! time themselves on their own runtime.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::runtime::{Builder, Handle, Runtime};
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

/// Runs `future` (one that makes a connection) on idem's connection runtime and returns its
/// output; dropping the returned future stops it there.
pub(super) async fn run<T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
) -> io::Result<T> {
    let task = Task(handle()?.spawn(future));
    task.await
        .map_err(|e| io::Error::other(format!("idem's connection task ended early: {e}")))
}

/// Runs `future` on idem's connection runtime, in the background; nothing if that runtime
/// cannot start.
pub(super) fn spawn(future: impl Future<Output = ()> + Send + 'static) {
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
                spawn(async move {
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
}
