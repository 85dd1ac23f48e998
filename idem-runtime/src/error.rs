//! The errors of idem: what went wrong with idempotency, never with the user's own code.

use std::error::Error as StdError;
use std::fmt;

/// What can go wrong when a call runs through idem.
///
/// Every variant is a failure of the idempotency machinery, not of the wrapped function: a
/// function returning `Result<T, E>` receives these through `E: From<idem::Error>`, and a
/// function returning a plain `T` becomes `Result<T, idem::Error>`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be reached or failed, so the call did not run (fail-closed mode).
    #[error("the idempotency store failed for key `{key}`, so the call did not run: {source}")]
    Store {
        /// The store key of the call.
        key: String,
        /// What the store reported.
        #[source]
        source: StoreError,
    },

    /// The store could not be reached when idem was set up ([`init`](crate::init),
    /// [`Idem::connect`](crate::Idem::connect), a store's own `connect`).
    #[error("cannot connect to the idempotency store at {store}: {source}")]
    Connect {
        /// The store, as its URL without credentials.
        store: String,
        /// What the store reported.
        #[source]
        source: StoreError,
    },

    /// Another call with the same key is running, and this one did not wait (or waited for
    /// longer than its `wait` allowed). Retry later; HTTP services answer 409. In
    /// transactional mode (`tx = conn`), a wait on the other transaction's lock that ran out
    /// has aborted the caller's transaction (PostgreSQL's `lock_timeout`): roll it back before
    /// retrying.
    #[error("a call with key `{key}` is already in progress; retry later")]
    InProgress {
        /// The store key of the call.
        key: String,
    },

    /// The key was used before with a different request (another fingerprint). The stored
    /// result belongs to that other request and is not replayed; HTTP services answer 422.
    #[error(
        "key `{key}` was already used with a different request (fingerprint mismatch); use a new key for a new request"
    )]
    KeyMismatch {
        /// The store key of the call.
        key: String,
    },

    /// The stored record cannot be read as the function's return type: corrupt bytes, or a
    /// return type that changed since the record was written. The body is not re-run.
    #[error("the record stored under `{key}` cannot be decoded as `{expected}`: {reason}")]
    Decode {
        /// The store key of the record.
        key: String,
        /// The Rust type the caller expected.
        expected: &'static str,
        /// What the decoder reported.
        reason: String,
    },

    /// The first call with this key ran, but its result could not be stored so that it reads
    /// back as its type (it does not serialize, or serializes as something that does not
    /// deserialize, such as a NaN float that JSON writes as `null`). That call got its value;
    /// later calls get this error, naming the type and the reason, instead of running the body
    /// again, until the record expires or is forgotten. Fix the type, or use a new key.
    #[error(
        "the first call with key `{key}` returned a `{type_name}` that cannot be stored ({reason}); it was returned to that call only, and this key has no value to replay: fix the type or use a new key"
    )]
    Unstorable {
        /// The store key of the call.
        key: String,
        /// The Rust type of the first call's result.
        type_name: String,
        /// Why it could not be stored.
        reason: String,
    },

    /// The fingerprint value could not be serialized, so the call did not run.
    #[error("the fingerprint of key `{key}` cannot be serialized: {reason}")]
    Fingerprint {
        /// The store key of the call.
        key: String,
        /// What the serializer reported.
        reason: String,
    },

    /// A call in transactional mode (`tx = conn`) met a concurrent transaction that the
    /// database could not order with the caller's. On PostgreSQL: a serialization failure
    /// (SQLSTATE `40001`, under `REPEATABLE READ` or `SERIALIZABLE`) or a deadlock (`40P01`),
    /// and PostgreSQL has aborted the caller's transaction. On SQLite: the database's write
    /// lock stayed held by another connection past the connection's `busy_timeout`
    /// (`SQLITE_BUSY`), or another connection wrote since the caller's transaction read
    /// (`SQLITE_BUSY_SNAPSHOT`; a transaction begun with `BEGIN IMMEDIATE` never meets it).
    /// Either way: roll it back and retry the whole transaction, which then replays the other
    /// transaction's result or runs the body once. Retryable.
    #[error(
        "the transaction of the call with key `{key}` conflicted with a concurrent one and the database refused it; roll it back and retry the whole transaction: {source}"
    )]
    Conflict {
        /// The store key of the call.
        key: String,
        /// What the database reported.
        #[source]
        source: StoreError,
    },

    /// A call that needs a server-issued token as its key
    /// ([`Call::redeeming`](crate::Call::redeeming)) was given one that was never issued for
    /// its scope (forged, or another scope's or principal's) or that expired: the body did
    /// not run. A token that was redeemed before is not this error: its call replays.
    #[error(
        "the token given to a call of `{scope}` was never issued for that scope, or it expired; the call did not run: ask for a new token"
    )]
    UnknownToken {
        /// The scope the token was redeemed in.
        scope: String,
    },

    /// [`tokens::issue_bounded`](crate::tokens::issue_bounded) found its scope holding as many
    /// live tokens as the bound allows: no token was issued. Wait until one expires.
    #[error(
        "the scope `{scope}` already holds {max_live} live tokens, the most it may; no token was issued: retry once one expires"
    )]
    TooManyTokens {
        /// The scope the token was asked for.
        scope: String,
        /// The bound.
        max_live: u32,
    },

    /// A re-run of a body that records steps ([`step`](crate::step)) asked for another step
    /// than the one recorded at the same place of the sequence (a step renamed, added before
    /// it, or skipped since the earlier attempt): the recorded output is not replayed as the
    /// output of another step, and the step does not run. Finish or forget the call before
    /// changing its steps.
    #[error(
        "step {index} of the call with key `{key}` is recorded under another name than `{name}`: the body's steps changed since an earlier attempt of this call; its recorded output is not replayed as `{name}`"
    )]
    StepMismatch {
        /// The store key of the call.
        key: String,
        /// The step's place in the body's sequence (1 for the first step).
        index: u32,
        /// The name the body gave the step.
        name: String,
    },

    /// The recorded outputs of a call's steps ([`step`](crate::step)) passed their bound
    /// ([`STEP_BYTES_LIMIT`](crate::STEP_BYTES_LIMIT) bytes of JSON per call): the step that
    /// passed it ran and its output is recorded, but the call fails here, on this and every
    /// later attempt. Record less (an id, not a whole response).
    #[error(
        "the recorded steps of the call with key `{key}` hold {bytes} bytes, more than the {limit} a call may record; record smaller step outputs"
    )]
    StepsTooLarge {
        /// The store key of the call.
        key: String,
        /// The bytes recorded so far, the last step's included.
        bytes: usize,
        /// The bound.
        limit: usize,
    },

    /// An earlier attempt of this call began and never ended (its process died, or stalled past
    /// its lease), so its body may have run in part, and the call's policy is
    /// [`Abandoned::Fail`](crate::Abandoned::Fail): the body did not run. Every later call
    /// fails so too, until an operator decides: [`forget`](crate::forget) the key (the next
    /// call runs as attempt 1) or [`complete`](crate::complete) it with the value the body
    /// would have returned (the next call replays it).
    #[error(
        "attempt {attempt} of the call with key `{key}` was abandoned (it began at {} and never ended; {}), and its policy is to fail: forget or complete the key to go on",
        humantime::format_rfc3339_millis(*since),
        match steps { Some(n) => format!("{n} of its steps completed"), None => "its steps are unknown".to_owned() }
    )]
    Abandoned {
        /// The store key of the call.
        key: String,
        /// The abandoned attempt's number (1 for the first).
        attempt: u32,
        /// When it began, by its process's clock.
        since: std::time::SystemTime,
        /// How many of its recorded steps completed, counted from the first; `None` when
        /// the store cannot tell.
        steps: Option<u32>,
    },

    /// The configuration is invalid: the message names the setting and what it accepts.
    #[error("invalid idem configuration: {0}")]
    Config(String),

    /// [`init`](crate::init) was called a second time.
    #[error("idem is already initialized; call idem::init once at start-up")]
    AlreadyInitialized,
}

/// What a message says to enable `feature`: the package users depend on is `idem-fn` (the crate
/// named `idem` on crates.io is another one), at this version.
pub(crate) fn needs_feature(feature: &str) -> String {
    let version = env!("CARGO_PKG_VERSION");
    // `0.2.0` → `0.2`, what a Cargo.toml line names.
    let version = version.rsplit_once('.').map_or(version, |(minor, _)| minor);
    format!(
        "the `{feature}` feature of the `idem-fn` package: in Cargo.toml, \
         `idem-fn = {{ version = \"{version}\", features = [\"{feature}\"] }}`"
    )
}

/// Lets functions returning `std::io::Result<T>` carry idempotency failures.
impl From<Error> for std::io::Error {
    fn from(error: Error) -> Self {
        std::io::Error::other(error)
    }
}

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The backend could not be reached (connection refused, reset, DNS, TLS).
    Unavailable,
    /// The backend did not answer in time.
    Timeout,
    /// The backend answered something this store did not expect.
    Protocol,
    /// The store is full and refuses new records.
    Full,
    /// Anything else the backend reported.
    Other,
}

/// A failure reported by a [`Store`](crate::Store).
///
/// Store implementations build one with [`StoreError::new`], attaching the backend's own error
/// as the source with [`StoreError::with_source`].
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl StoreError {
    /// A store error of `kind`, described by `message`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the backend's error as the cause.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
