//! Bounded waits for the test support: a case that waits for an event fails, naming it,
//! rather than hanging when the event never comes (a store's task that panicked, a lost
//! wake-up).

use std::future::Future;
use std::time::Duration;

/// How long a test waits for one event: far longer than any wait a case asks of a store.
pub const EVENT_LIMIT: Duration = Duration::from_secs(60);

/// Awaits `event` (a task, a channel, a barrier), or panics naming `what` was awaited once
/// [`EVENT_LIMIT`] has passed: a test that waits for an event fails instead of hanging.
pub async fn within<T>(what: &str, event: impl Future<Output = T>) -> T {
    match tokio::time::timeout(EVENT_LIMIT, event).await {
        Ok(value) => value,
        Err(_) => panic!(
            "waited {EVENT_LIMIT:?} for {what}, which never came (did a task of the store panic?)"
        ),
    }
}
