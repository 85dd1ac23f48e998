//! [`Outcome`] and [`Status`]: what a call returned and how it obtained it.

/// The value of a call and how it was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<T> {
    /// The function's value: its own, or the one stored by an earlier call.
    pub value: T,
    /// Whether the body ran, and what became of its result.
    pub status: Status,
}

impl<T> Outcome<T> {
    /// True when the value was replayed from the store and the body did not run.
    pub fn replayed(&self) -> bool {
        matches!(self.status, Status::Replayed | Status::Waited)
    }
}

/// How a call obtained its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// The body ran and its result was stored (or, for a released error, not kept).
    Executed,
    /// A stored result was replayed; the body did not run.
    Replayed,
    /// The call waited for a concurrent call with the same key and replayed its result.
    Waited,
    /// The body ran, but the claim had been lost (its lease expired and another call took the
    /// key) so the result was not stored: the fencing rule kept the other call's record.
    LeaseLost,
    /// The body ran, but its result was not stored: storing it failed after retries (a later
    /// call may then run the body again once the lease ends), or the result cannot be stored
    /// so that it reads back as its type (later calls get
    /// [`Error::Unstorable`](crate::Error::Unstorable)). The result is returned either way.
    NotStored,
    /// The store was unavailable and the configuration is fail-open: the body ran without
    /// idempotency protection.
    Unprotected,
    /// The body ran as the attempt that took over an abandoned one (an earlier attempt began
    /// and never ended, and the call's policy is [`Abandoned::Rerun`](crate::Abandoned::Rerun)),
    /// and its result was stored (or, for a released error, not kept): what it did outside the
    /// store may have been done twice, unless its steps were recorded and its downstream keys
    /// derived. Counted as `executed`.
    TookOver,
}
