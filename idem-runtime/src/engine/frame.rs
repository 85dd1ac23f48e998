//! The frame of one call, the same on every path (the plain one in `engine.rs`, the
//! transactional one in `tx.rs`, the HTTP layer's through [`Call`](crate::Call)): what a call
//! resolves before it runs ([`Frame::open`]: the store key, the settings with the call's own
//! overrides, the store, the span, the checks), what its record means when read back
//! ([`Frame::replay`]) or written ([`Frame::seal`]), and how it ends ([`Frame::finish`]:
//! counted under its outcome, in its span).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::cache::{Cached, LocalCache};
use crate::call_context::{StepMode, Steps};
use crate::codec::{self, Codec, Disposition, RecordSide};
use crate::config::{FailMode, check_lease, check_ttl};
use crate::context::Idem;
use crate::error::Error;
use crate::key;
use crate::observe::{self, Ending};
use crate::outcome::{Outcome, Status};
use crate::record::Fingerprint;
use crate::store::StoreHandle;

/// What one call asks of the engine: a plain value, which [`Call`](crate::Call) builds.
#[derive(Debug)]
pub(crate) struct CallRequest {
    /// The namespace of the key.
    pub(crate) scope: Cow<'static, str>,
    /// The encoded key (see `key.rs`).
    pub(crate) key: String,
    /// The call's own ttl, lease and wait; `None` takes the settings'.
    pub(crate) ttl: Option<Duration>,
    /// See `ttl`.
    pub(crate) lease: Option<Duration>,
    /// See `ttl`.
    pub(crate) wait: Option<Duration>,
    /// The request's fingerprint, or why it could not be computed.
    pub(crate) fingerprint: Option<Result<Fingerprint, String>>,
    /// The call's own store; `None` takes the configured one.
    pub(crate) store: Option<StoreHandle>,
    /// Whether the lease is renewed while the body runs.
    pub(crate) heartbeat: bool,
    /// A recorded step of another call's body ([`step`](crate::step)): `key` is its store key
    /// already, and its future runs in the context of the call that records it.
    pub(crate) step: bool,
    /// What the call does when it finds an abandoned attempt; `None` takes the settings'
    /// (where `None` marks no attempt).
    pub(crate) abandoned: Option<crate::Abandoned>,
}

/// Where a call may find its record before it asks a store, and whether it needs an
/// installed idem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The plain path: the local cache first (it holds records of the configured store
    /// only); a call that names no store is refused when nothing is installed, never served
    /// by a store of this process alone.
    Plain,
    /// The transactional path: the records live in the caller's database, so the local cache
    /// is never read, and a call runs with the default settings when nothing is installed.
    Tx,
}

/// One call, resolved against the current idem: built by [`Frame::open`] from the call's
/// [`CallRequest`] (whose scope it borrows), ended by [`Frame::finish`]; the paths borrow it while
/// the call runs.
pub(crate) struct Frame<'c> {
    /// The call's scope, for its span and its count.
    pub(crate) scope: &'c Cow<'static, str>,
    /// The store key (see `key.rs`).
    pub(crate) key: String,
    /// The request's fingerprint, once checked.
    pub(crate) fingerprint: Option<Fingerprint>,
    /// How long a completed record is kept.
    pub(crate) ttl: Duration,
    /// How long a claim lives without renewal.
    pub(crate) lease: Duration,
    /// How long a duplicate waits for the call that holds the key.
    pub(crate) wait: Duration,
    /// Whether the lease is renewed while the body runs (the plain path).
    pub(crate) heartbeat: bool,
    /// A recorded step (see [`CallRequest::step`]).
    pub(crate) step: bool,
    /// What the call does when it finds an abandoned attempt (the call's, else the
    /// settings'); `None`: it marks no attempt. Never for a step.
    pub(crate) abandoned: Option<crate::Abandoned>,
    /// Whether its store operations are timed into `idem_store_seconds`
    /// ([`Config::store_latency`](crate::Config::store_latency)).
    pub(crate) store_latency: bool,
    /// The call's span (see [`span_of`]).
    pub(crate) span: tracing::Span,
    /// Where the call's record is.
    pub(crate) source: Source,
}

/// Where the call's record was found before it ran: in the local cache, or not, and then the
/// call goes to its store.
pub(crate) enum Source {
    /// In the local cache: no store is asked.
    Cached(Arc<Cached>),
    /// Not looked up yet: the call asks its store.
    Store(Target),
}

/// The store a call asks, with what it needs of the settings (taken out of them, so that a
/// call holds no reference to the settings themselves).
pub(crate) struct Target {
    /// The call's own store, else the configured one.
    pub(crate) store: StoreHandle,
    /// Where completed records are kept in process, if the local cache is on and the store is
    /// the configured one.
    pub(crate) local: Option<LocalCache>,
    /// What a failure of the store does to the call.
    pub(crate) fail_mode: FailMode,
}

impl<'c> Frame<'c> {
    /// Resolves `call`: its store key (prefix, scope, key, hashing), its ttl, lease and wait
    /// (its own, else the settings'), its store or local-cache record, its span; then checks
    /// its fingerprint, ttl and lease. A failure is counted already, as [`finish`] would.
    ///
    /// The frame borrows the call's scope: the call stays where it is, in the caller's future,
    /// and only what was resolved is moved.
    ///
    /// [`finish`]: Frame::finish
    pub(crate) fn open(call: &'c CallRequest, lookup: Lookup) -> Result<Frame<'c>, Error> {
        // Looked up while the current idem is borrowed: a replay from the local cache takes no
        // reference to the store, the settings or the cache.
        let resolve = |current: &Idem| {
            let settings = &current.settings;
            let key = if call.step {
                call.key.clone()
            } else {
                key::store_key(&settings.prefix, &call.scope, &call.key, settings.hash_keys)
            };
            let local = match (lookup, &call.store) {
                (Lookup::Plain, None) => current.local.as_ref(),
                _ => None,
            };
            let source = match local.and_then(|cache| cache.get(&key)) {
                Some(cached) => Source::Cached(cached),
                None => Source::Store(Target {
                    store: call.store.as_ref().unwrap_or(&current.store).clone(),
                    local: local.cloned(),
                    fail_mode: settings.fail_mode,
                }),
            };
            let ttl = call.ttl.unwrap_or(settings.ttl);
            let lease = call.lease.unwrap_or(settings.lease);
            let wait = call.wait.unwrap_or(settings.wait);
            let abandoned = call.abandoned.or(settings.abandoned);
            let timed = settings.store_latency;
            (key, ttl, lease, wait, abandoned, timed, source)
        };
        let current = if call.store.is_some() || lookup == Lookup::Tx {
            Ok(Idem::with_current_or_unconfigured(resolve))
        } else {
            Idem::with_current(resolve)
        };
        let (key, ttl, lease, wait, abandoned, store_latency, source) = match current {
            Ok(current) => current,
            Err(error) => {
                observe::count(&call.scope, counted_error(&error));
                return Err(error);
            }
        };
        let span = span_of(&call.scope, &key);
        let fingerprint = match checked(&call.fingerprint, &key, ttl, lease) {
            Ok(fingerprint) => fingerprint,
            Err(error) => {
                ended(&span, &call.scope, counted_error(&error));
                return Err(error);
            }
        };
        Ok(Frame {
            scope: &call.scope,
            key,
            fingerprint,
            ttl,
            lease,
            wait,
            heartbeat: call.heartbeat,
            step: call.step,
            abandoned: abandoned.filter(|_| !call.step),
            store_latency,
            span,
            source,
        })
    }

    /// The store the call asks; `None` when its record came from the local cache.
    #[cfg_attr(
        not(any(feature = "http", feature = "postgres")),
        allow(dead_code, reason = "for the transactional path and the HTTP layer")
    )]
    pub(crate) fn store(&self) -> Option<&StoreHandle> {
        match &self.source {
            Source::Store(target) => Some(&target.store),
            Source::Cached(_) => None,
        }
    }

    /// Runs `path`, the part of the call that asks its store, in the call's span when
    /// something listens to it: entering and leaving a span on every poll would cost more than
    /// the rest of the engine's work on a replay. The caller boxes `path` (so that its own
    /// future stays small: it is moved whole, and a replay from the local cache should not pay
    /// for copying the store path's state), and boxes it where it is made: it is copied once.
    pub(crate) async fn in_span<F: Future>(&self, path: Pin<Box<F>>) -> F::Output {
        if self.span.is_disabled() {
            path.await
        } else {
            path.instrument(self.span.clone()).await
        }
    }

    /// Records how the call ended, in its span and in `idem_calls_total`, and gives its
    /// outcome.
    pub(crate) fn finish<R>(
        &self,
        result: Result<Finished<R>, Error>,
    ) -> Result<Outcome<R>, Error> {
        let counted = match &result {
            Ok(ran) => ran.counted,
            Err(error) => counted_error(error),
        };
        if self.step {
            // A step is part of its call, which is counted once, when it ends.
            if !self.span.is_disabled() {
                self.span.record("outcome", counted.label());
            }
        } else {
            ended(&self.span, self.scope, counted);
        }
        if let Ok(ran) = &result {
            crate::call_context::ended_with(ran.outcome.status);
        }
        result.map(|ran| ran.outcome)
    }

    /// Runs `body` as this call's body: [`call_context`](crate::call_context) and
    /// [`derive_key`](crate::derive_key) inside it answer for this call, and with `recorded`
    /// its [`step`](crate::step)s are recorded in the call's store (the plain path, holding
    /// its claim); else they run unrecorded. The future of a recorded step runs in the context
    /// of the call that records it.
    pub(crate) fn in_body<F: Future>(
        &self,
        body: F,
        recorded: bool,
        attempt: Option<u32>,
    ) -> impl Future<Output = F::Output> {
        let steps = match (self.step, recorded, self.store()) {
            (true, _, _) => StepMode::InStep,
            (false, true, Some(store)) => {
                StepMode::Recorded(Steps::new(store, self.ttl, self.lease))
            }
            (false, _, _) => StepMode::Direct,
        };
        crate::call_context::in_body(self.scope, &self.key, steps, attempt, body)
    }

    /// Decodes the envelope stored for the call (by its store or the local cache), after
    /// checking that it was stored for the same request.
    pub(crate) fn replay<R, S: Codec<R>>(&self, bytes: &[u8], shape: &S) -> Result<R, Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.replay_text(text, shape),
            Err(_) => self.parse(bytes, shape),
        }
    }

    /// [`replay`](Frame::replay) of an envelope known to be UTF-8 (the local cache checks it
    /// once, when it keeps the record).
    pub(crate) fn replay_text<R, S: Codec<R>>(&self, text: &str, shape: &S) -> Result<R, Error> {
        // The envelope as this version writes it, read in place: the common case.
        if let Some(envelope) = codec::open_written(text)
            && !self.mismatch(envelope.fingerprint.as_ref())
            && let Ok(value) = shape.open(&envelope)
        {
            return Ok(value);
        }
        self.parse(text.as_bytes(), shape)
    }

    /// [`replay`](Frame::replay) by a full parse of the envelope, which decides every case
    /// but the common one.
    #[cold]
    fn parse<R, S: Codec<R>>(&self, bytes: &[u8], shape: &S) -> Result<R, Error> {
        // Anything else (another layout, corrupt bytes, another request): the full parse decides.
        let decode_error = |reason| Error::Decode {
            key: self.key.clone(),
            expected: shape.type_name(),
            reason,
        };
        let envelope = codec::open(bytes).map_err(decode_error)?;
        if self.mismatch(envelope.fingerprint.as_ref()) {
            return Err(self.key_mismatch());
        }
        if envelope.side == RecordSide::Unstorable {
            let what: codec::Unstorable =
                serde_json::from_str(envelope.value).map_err(|e| decode_error(e.to_string()))?;
            return Err(Error::Unstorable {
                key: self.key.clone(),
                type_name: what.type_name,
                reason: what.reason,
            });
        }
        shape.open(&envelope).map_err(decode_error)
    }

    /// Whether `stored`, the fingerprint of a record or of its holder, disagrees with the
    /// call's: only when both are known.
    pub(crate) fn mismatch(&self, stored: Option<&Fingerprint>) -> bool {
        matches!((&self.fingerprint, stored), (Some(a), Some(b)) if a != b)
    }

    /// The key holds a record of another request.
    pub(crate) fn key_mismatch(&self) -> Error {
        Error::KeyMismatch {
            key: self.key.clone(),
        }
    }

    /// The key is held by a call that did not end within the call's wait.
    pub(crate) fn in_progress(&self) -> Error {
        Error::InProgress {
            key: self.key.clone(),
        }
    }

    /// What to store for the body's `value`, or `None` to release the claim.
    pub(crate) fn seal<R, S: Codec<R>>(&self, value: &R, shape: &mut S) -> Option<Sealed> {
        let fingerprint = self.fingerprint.as_ref();
        match shape.seal(value, fingerprint) {
            Disposition::Release => None,
            Disposition::Store(bytes) => Some(Sealed {
                bytes,
                unstorable: false,
            }),
            Disposition::Unstorable(reason) => {
                tracing::error!(key = %self.key, %reason, type_name = shape.type_name(), "idem cannot store the result so that it reads back as its type; it is returned to this call only, and later calls with its key get Error::Unstorable");
                // Recorded as such: later calls learn why, instead of running the body again
                // or failing to decode a record that was written wrong.
                Some(Sealed {
                    bytes: codec::seal_unstorable(fingerprint, shape.type_name(), &reason),
                    unstorable: true,
                })
            }
        }
    }
}

/// The bytes to store for a body's value.
pub(crate) struct Sealed {
    /// The envelope of the value, or of why it cannot be stored.
    pub(crate) bytes: Vec<u8>,
    /// The value cannot be stored so that it reads back as its type: `bytes` say why.
    pub(crate) unstorable: bool,
}

/// The span of one call. Its key is logged as stored: readable when short and printable,
/// hashed otherwise, and with `hash_keys` hashed always; log lines never hold more of a key
/// than the store does.
fn span_of(scope: &str, key: &str) -> tracing::Span {
    // Nothing can listen: no tracing subscriber was ever set, and no `log` logger prints
    // debug lines (which tracing's `log` feature, turned on by sqlx, would send a span to).
    // A disabled span made by the macro would still record its fields for `log` and log its
    // end when dropped, a cost of every call.
    if !tracing::dispatcher::has_been_set() && log::max_level() < log::LevelFilter::Debug {
        return tracing::Span::none();
    }
    let span = tracing::debug_span!(
        "idem",
        scope = %scope,
        key = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    if !span.is_disabled() {
        span.record("key", key);
    }
    span
}

/// The call's fingerprint, once it is known and its ttl and lease are within their minimums.
fn checked(
    fingerprint: &Option<Result<Fingerprint, String>>,
    key: &str,
    ttl: Duration,
    lease: Duration,
) -> Result<Option<Fingerprint>, Error> {
    let fingerprint = match fingerprint {
        None => None,
        Some(Ok(fp)) => Some(*fp),
        Some(Err(reason)) => {
            return Err(Error::Fingerprint {
                key: key.to_owned(),
                reason: reason.clone(),
            });
        }
    };
    check_ttl(ttl)?;
    check_lease(lease)?;
    Ok(fingerprint)
}

/// Records how a call of `scope` ended, in its span and in `idem_calls_total`.
#[allow(
    clippy::ptr_arg,
    reason = "a borrowed static scope becomes a label without allocating"
)]
fn ended(span: &tracing::Span, scope: &Cow<'static, str>, counted: Ending) {
    if !span.is_disabled() {
        span.record("outcome", counted.label());
    }
    observe::count(scope, counted);
}

/// The `outcome` label of a call that failed with `error`.
fn counted_error(error: &Error) -> Ending {
    match error {
        Error::InProgress { .. } => Ending::Rejected,
        Error::Abandoned { .. } => Ending::Abandoned,
        Error::KeyMismatch { .. } | Error::StepMismatch { .. } => Ending::Mismatch,
        Error::StepsTooLarge { .. } => Ending::Unstorable,
        Error::Decode { .. } => Ending::DecodeError,
        Error::Unstorable { .. } => Ending::Unstorable,
        Error::Config(_) => Ending::ConfigError,
        Error::Fingerprint { .. } => Ending::FingerprintError,
        Error::Conflict { .. } => Ending::Conflict,
        // Token errors come before the engine runs; never a call's ending.
        Error::UnknownToken { .. } | Error::TooManyTokens { .. } => Ending::Rejected,
        Error::Store { .. } | Error::Connect { .. } | Error::AlreadyInitialized => {
            Ending::StoreError
        }
    }
}

/// How a call that returned a value ended: its outcome, and the label it is counted under.
pub(crate) struct Finished<R> {
    /// What the caller gets.
    outcome: Outcome<R>,
    /// The `outcome` label of `idem_calls_total`.
    counted: Ending,
}

impl<R> Finished<R> {
    /// `value`, ended with `status`.
    pub(crate) fn new(value: R, status: Status) -> Self {
        let counted = match status {
            Status::Executed | Status::TookOver => Ending::Executed,
            Status::Replayed => Ending::Replayed,
            Status::Waited => Ending::Waited,
            Status::LeaseLost => Ending::LeaseLost,
            Status::NotStored => Ending::NotStored,
            Status::Unprotected => Ending::FailOpen,
        };
        Finished {
            outcome: Outcome { value, status },
            counted,
        }
    }

    /// `value`, whose sealed record was written with `status`: a value that could not be
    /// sealed as itself is not stored, whatever the write, and is counted as unstorable.
    pub(crate) fn stored(value: R, status: Status, unstorable: bool) -> Self {
        if unstorable {
            return Finished {
                counted: Ending::Unstorable,
                ..Finished::new(value, Status::NotStored)
            };
        }
        Finished::new(value, status)
    }

    /// A stored value replayed, at once or after `waited` for the call that held its key.
    pub(crate) fn replayed(value: R, waited: bool) -> Self {
        let status = if waited {
            Status::Waited
        } else {
            Status::Replayed
        };
        Finished::new(value, status)
    }
}
