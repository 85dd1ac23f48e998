//! The metrics idem reports (see the crate docs for the names).

use std::borrow::Cow;
use std::future::Future;
use std::time::Instant;

/// The counter of calls by scope and outcome.
pub const CALLS_TOTAL: &str = "idem_calls_total";
/// The histogram of store operation latency in seconds, by operation.
pub const STORE_SECONDS: &str = "idem_store_seconds";

/// How a call ended, as the `outcome` label of [`CALLS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Executed,
    Replayed,
    Waited,
    Rejected,
    Mismatch,
    StoreError,
    LeaseLost,
    FailOpen,
    DecodeError,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Replayed => "replayed",
            Outcome::Waited => "waited",
            Outcome::Rejected => "rejected",
            Outcome::Mismatch => "mismatch",
            Outcome::StoreError => "store_error",
            Outcome::LeaseLost => "lease_lost",
            Outcome::FailOpen => "fail_open",
            Outcome::DecodeError => "decode_error",
        }
    }
}

#[allow(
    clippy::ptr_arg,
    reason = "a borrowed static scope becomes a label without allocating"
)]
pub(crate) fn count(scope: &Cow<'static, str>, outcome: Outcome) {
    let scope = match scope {
        Cow::Borrowed(s) => metrics::SharedString::const_str(s),
        Cow::Owned(s) => metrics::SharedString::from(s.clone()),
    };
    metrics::counter!(CALLS_TOTAL, "scope" => scope, "outcome" => outcome.label()).increment(1);
}

/// Runs one store operation and records its latency.
pub(crate) async fn timed<T>(op: &'static str, future: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = future.await;
    metrics::histogram!(STORE_SECONDS, "op" => op).record(start.elapsed().as_secs_f64());
    out
}
