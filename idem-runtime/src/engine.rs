//! The state machine of one call: claim or replay or wait, run under a renewed lease, then
//! complete or release, fenced by the claim's token.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::cache::{Cached, LocalCache};
use crate::codec::{self, Seal, Shape, Side};
use crate::config::{FailMode, check_lease, check_ttl};
use crate::context::Idem;
use crate::error::{Error, StoreError};
use crate::key;
use crate::observe::{self, Outcome as Counted, StoreOp, timed};
use crate::outcome::{Outcome, Status};
use crate::record::{Claim, Fingerprint, Record};
use crate::store::{Fence, StoreHandle};

#[cfg(feature = "postgres")]
pub(crate) mod tx;

/// How often and how long a successful result's store write is retried before the result is
/// returned unstored.
const COMPLETE_RETRIES: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(200),
];

/// What one call asks of the engine: a plain value, which [`Call`](crate::Call) builds.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) scope: Cow<'static, str>,
    /// The encoded key (see `key.rs`).
    pub(crate) key: String,
    pub(crate) ttl: Option<Duration>,
    pub(crate) lease: Option<Duration>,
    pub(crate) wait: Option<Duration>,
    /// The request's fingerprint, or why it could not be computed.
    pub(crate) fingerprint: Option<Result<Fingerprint, String>>,
    pub(crate) store: Option<StoreHandle>,
    pub(crate) heartbeat: bool,
}

/// Runs one call, and hands how it ended to `finish`, which makes the caller's output of it
/// (the runners of the attribute take the value out here, in place of a future of their own
/// around this one, which would be one more layer to poll and copy on every call).
pub(crate) async fn execute<R, F, S, O>(
    call: Request,
    body: F,
    shape: S,
    finish: impl FnOnce(Result<Outcome<R>, Error>) -> O,
) -> O
where
    F: Future<Output = R>,
    S: Shape<R>,
{
    // Looked up while the current idem is borrowed: a replay from the local cache takes no
    // reference to the store, the settings or the cache.
    let looked_up = |current: &Idem| {
        let settings = &current.settings;
        let key = key::store_key(&settings.prefix, &call.scope, &call.key, settings.hash_keys);
        // The local cache holds records of the configured store only.
        let cached = match (&call.store, &current.local) {
            (None, Some(cache)) => cache.get(&key),
            _ => None,
        };
        let found = match cached {
            Some(cached) => Found::Cached(cached),
            None => Found::Store {
                store: current.store.clone(),
                local: current.local.clone(),
                wait: settings.wait,
                fail_mode: settings.fail_mode,
            },
        };
        (key, settings.ttl, settings.lease, found)
    };
    // A call that names its store runs with the default settings when nothing is installed;
    // one that does not is refused then, never served by a store of this process alone.
    let current = match call.store {
        Some(_) => Ok(Idem::with_current_or_unconfigured(looked_up)),
        None => Idem::with_current(looked_up),
    };
    let (key, ttl, lease, found) = match current {
        Ok(current) => current,
        Err(error) => {
            observe::count(&call.scope, counted_error(&error));
            return finish(Err(error));
        }
    };
    let span = span_of(&call.scope, &key);
    let ttl = call.ttl.unwrap_or(ttl);
    let lease = call.lease.unwrap_or(lease);
    let fingerprint = match checked(call.fingerprint, &key, ttl, lease) {
        Ok(fingerprint) => fingerprint,
        Err(error) => {
            ended(&span, &call.scope, counted_error(&error));
            return finish(Err(error));
        }
    };
    let result = match found {
        Found::Cached(cached) => {
            let replay = || {
                open_text(&key, fingerprint.as_ref(), &cached.payload, &shape)
                    .map(|value| Ran::new(value, Status::Replayed))
            };
            // A disabled span still costs its enter and exit (more with tracing's `log`
            // feature, which sqlx turns on): only a span something listens to is entered.
            let replayed = if span.is_disabled() {
                replay()
            } else {
                span.in_scope(replay)
            };
            // A replay from the cache never waits: let a loop of them yield to the other
            // tasks now and then, as tokio's own resources do.
            tokio::task::consume_budget().await;
            replayed
        }
        Found::Store {
            store: configured,
            local,
            wait,
            fail_mode,
        } => {
            // The local cache holds records of the configured store only.
            let local = local.filter(|_| call.store.is_none());
            let run = Run {
                store: call.store.unwrap_or(configured),
                claim: Claim::new(fingerprint),
                key,
                ttl,
                lease,
                wait: call.wait.unwrap_or(wait),
                heartbeat: call.heartbeat,
                fail_mode,
                local,
            };
            // Boxed, so that this future stays small: callers move it around whole, and a
            // replay from the local cache should not pay for copying the store path's state.
            // Not instrumented when nothing listens to the span: entering and leaving it on
            // every poll would cost more than the rest of the engine's work on a replay.
            if span.is_disabled() {
                Box::pin(run.go(body, shape)).await
            } else {
                Box::pin(run.go(body, shape).instrument(span.clone())).await
            }
        }
    };
    let counted = match &result {
        Ok(ran) => ran.counted,
        Err(error) => counted_error(error),
    };
    ended(&span, &call.scope, counted);
    finish(result.map(|ran| ran.outcome))
}

/// The span of one call. Its key is logged as stored: readable when short and printable,
/// hashed otherwise, and with `hash_keys` hashed always; log lines never hold more of a key
/// than the store does.
fn span_of(scope: &str, key: &str) -> tracing::Span {
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
    fingerprint: Option<Result<Fingerprint, String>>,
    key: &str,
    ttl: Duration,
    lease: Duration,
) -> Result<Option<Fingerprint>, Error> {
    let fingerprint = match fingerprint {
        None => None,
        Some(Ok(fp)) => Some(fp),
        Some(Err(reason)) => {
            return Err(Error::Fingerprint {
                key: key.to_owned(),
                reason,
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
fn ended(span: &tracing::Span, scope: &Cow<'static, str>, counted: Counted) {
    if !span.is_disabled() {
        span.record("outcome", counted.label());
    }
    observe::count(scope, counted);
}

/// The `outcome` label of a call that failed with `error`.
fn counted_error(error: &Error) -> Counted {
    match error {
        Error::InProgress { .. } => Counted::Rejected,
        Error::KeyMismatch { .. } => Counted::Mismatch,
        Error::Decode { .. } => Counted::DecodeError,
        Error::Unstorable { .. } => Counted::Unstorable,
        Error::Config(_) => Counted::ConfigError,
        Error::Fingerprint { .. } => Counted::FingerprintError,
        Error::Conflict { .. } => Counted::Conflict,
        Error::Store { .. } | Error::Connect { .. } | Error::AlreadyInitialized => {
            Counted::StoreError
        }
    }
}

/// How a call that returned a value ended: its outcome, and the label it is counted under.
struct Ran<R> {
    outcome: Outcome<R>,
    counted: Counted,
}

impl<R> Ran<R> {
    fn new(value: R, status: Status) -> Self {
        let counted = match status {
            Status::Executed => Counted::Executed,
            Status::Replayed => Counted::Replayed,
            Status::Waited => Counted::Waited,
            Status::LeaseLost => Counted::LeaseLost,
            Status::NotStored => Counted::NotStored,
            Status::Unprotected => Counted::FailOpen,
        };
        Ran {
            outcome: Outcome { value, status },
            counted,
        }
    }
}

/// Where a call's record was found before it ran: in the local cache, or not, and then the
/// call goes to the configured store, with what it needs of the settings (taken out here, so
/// that a call holds no reference to the settings themselves).
enum Found {
    Cached(Arc<Cached>),
    Store {
        store: StoreHandle,
        local: Option<LocalCache>,
        wait: Duration,
        fail_mode: FailMode,
    },
}

/// One call, resolved against its store and settings.
struct Run {
    store: StoreHandle,
    key: String,
    claim: Claim,
    ttl: Duration,
    lease: Duration,
    wait: Duration,
    heartbeat: bool,
    fail_mode: FailMode,
    /// Where completed records are kept in process, if the local cache is on.
    local: Option<LocalCache>,
}

/// What the claim step decided.
enum Decision<R> {
    Hold,
    Replay(R, Status),
    Unprotected(StoreError),
}

impl Run {
    async fn go<R, F, S>(self, body: F, mut shape: S) -> Result<Ran<R>, Error>
    where
        F: Future<Output = R>,
        S: Shape<R>,
    {
        match self.claim_or_replay(&shape).await? {
            Decision::Replay(value, status) => Ok(Ran::new(value, status)),
            Decision::Unprotected(error) => {
                tracing::warn!(key = %self.key, %error, "idem store unavailable; running without idempotency (fail-open)");
                let value = body.await;
                Ok(Ran::new(value, Status::Unprotected))
            }
            // Boxed: running the body (lease renewal, completion retries) is most of this
            // future's size, and an unboxed one would be copied whole on every call, replays
            // included, where it costs more than the rest of the replay.
            Decision::Hold => Box::pin(self.hold(body, &mut shape)).await,
        }
    }

    /// Claims the key, or replays its result, or waits for the call that holds it.
    async fn claim_or_replay<R, S: Shape<R>>(&self, shape: &S) -> Result<Decision<R>, Error> {
        // Set when the key is first found in progress: a replay reads no clock for it.
        let mut deadline = None;
        let mut waited = false;
        loop {
            let sent = self.local.as_ref().map(|_| Instant::now());
            // With a local cache, a replay says how long its record still lives.
            let claimed = match self.local {
                Some(_) => self
                    .store
                    .claim_with_expiry(&self.key, &self.claim, self.lease),
                None => self.store.claim(&self.key, &self.claim, self.lease),
            };
            let found = timed(StoreOp::Claim, claimed).await;
            let holder = match found {
                Err(error) => return self.unavailable(error),
                Ok(None) => return Ok(Decision::Hold),
                Ok(Some(Record::Completed {
                    payload: bytes,
                    expires_in,
                })) => {
                    let status = if waited {
                        Status::Waited
                    } else {
                        Status::Replayed
                    };
                    let value = self.replay(&bytes, shape)?;
                    if let (Some(cache), Some(sent), Some(left)) = (&self.local, sent, expires_in) {
                        cache.keep(&self.key, bytes, sent, left);
                    }
                    return Ok(Decision::Replay(value, status));
                }
                Ok(Some(Record::InProgress(holder))) => holder,
            };
            if mismatch(self.claim.fingerprint.as_ref(), holder.fingerprint.as_ref()) {
                return Err(self.key_mismatch());
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + self.wait);
            if now >= deadline {
                return Err(Error::InProgress {
                    key: self.key.clone(),
                });
            }
            if let Err(error) = timed(
                StoreOp::Wait,
                self.store.wait(&self.key, &holder, deadline - now),
            )
            .await
            {
                return self.unavailable(error);
            }
            waited = true;
        }
    }

    fn unavailable<R>(&self, error: StoreError) -> Result<Decision<R>, Error> {
        match self.fail_mode {
            FailMode::Open => Ok(Decision::Unprotected(error)),
            FailMode::Closed => Err(Error::Store {
                key: self.key.clone(),
                source: error,
            }),
        }
    }

    fn key_mismatch(&self) -> Error {
        Error::KeyMismatch {
            key: self.key.clone(),
        }
    }

    fn replay<R, S: Shape<R>>(&self, bytes: &[u8], shape: &S) -> Result<R, Error> {
        open(&self.key, self.claim.fingerprint.as_ref(), bytes, shape)
    }

    /// Runs the body under the claim, then stores or releases its result.
    async fn hold<R, F, S>(self, body: F, shape: &mut S) -> Result<Ran<R>, Error>
    where
        F: Future<Output = R>,
        S: Shape<R>,
    {
        let mut holding = Holding { run: Some(self) };
        let run = holding
            .run
            .as_ref()
            .expect("held until the end of the call");
        let value = run.with_heartbeat(body).await;
        let fingerprint = run.claim.fingerprint.as_ref();
        let ran = match shape.seal(&value, fingerprint) {
            Seal::Release => {
                run.release().await;
                Ran::new(value, Status::Executed)
            }
            Seal::Unstorable(reason) => {
                tracing::error!(key = %run.key, %reason, type_name = shape.type_name(), "idem cannot store the result so that it reads back as its type; it is returned to this call only, and later calls with its key get Error::Unstorable");
                // Recorded as such: later calls learn why, instead of running the body again
                // or failing to decode a record that was written wrong.
                let marker = codec::seal_unstorable(fingerprint, shape.type_name(), &reason);
                run.complete(marker).await;
                Ran {
                    counted: Counted::Unstorable,
                    ..Ran::new(value, Status::NotStored)
                }
            }
            Seal::Store(payload) => {
                let status = run.complete(payload).await;
                Ran::new(value, status)
            }
        };
        holding.run = None;
        Ok(ran)
    }

    /// Drives the body, renewing the lease every `lease / 3` while it runs.
    async fn with_heartbeat<F: Future>(&self, body: F) -> F::Output {
        if !self.heartbeat {
            return body.await;
        }
        let beat = async {
            let period = self.lease / 3;
            loop {
                tokio::time::sleep(period).await;
                match timed(
                    StoreOp::Renew,
                    self.store.renew(&self.key, &self.claim, self.lease),
                )
                .await
                {
                    Ok(Fence::Held) => {}
                    Ok(Fence::Lost) => {
                        tracing::warn!(key = %self.key, "idem lease lost while the body runs; its result will not be stored");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(key = %self.key, %error, "idem lease renewal failed; retrying");
                    }
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            biased;
            value = body => value,
            () = beat => unreachable!("the heartbeat never ends"),
        }
    }

    async fn complete(&self, payload: Vec<u8>) -> Status {
        let mut retries = COMPLETE_RETRIES.iter();
        loop {
            let sent = self.local.as_ref().map(|_| Instant::now());
            match timed(
                StoreOp::Complete,
                self.store
                    .complete(&self.key, &self.claim, &payload, self.ttl),
            )
            .await
            {
                Ok(Fence::Held) => {
                    if let (Some(cache), Some(sent)) = (&self.local, sent) {
                        cache.keep(&self.key, payload, sent, self.ttl);
                    }
                    return Status::Executed;
                }
                Ok(Fence::Lost) => {
                    tracing::warn!(key = %self.key, "idem lease lost before completion: another call holds the key, so this result is returned but not stored");
                    return Status::LeaseLost;
                }
                Err(error) => match retries.next() {
                    Some(pause) => tokio::time::sleep(*pause).await,
                    None => {
                        tracing::error!(key = %self.key, %error, "idem could not store a successful result; it is returned unstored");
                        return Status::NotStored;
                    }
                },
            }
        }
    }

    async fn release(&self) {
        match timed(StoreOp::Release, self.store.release(&self.key, &self.claim)).await {
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(key = %self.key, %error, "idem could not release its claim; it ends with its lease")
            }
        }
    }
}

/// Decodes the envelope stored for `key` (by the store or the local cache), after checking
/// that it was stored for the same request as the caller's.
fn open<R, S: Shape<R>>(
    key: &str,
    fingerprint: Option<&Fingerprint>,
    bytes: &[u8],
    shape: &S,
) -> Result<R, Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => open_text(key, fingerprint, text, shape),
        Err(_) => parse(key, fingerprint, bytes, shape),
    }
}

/// [`open`] for an envelope known to be UTF-8 (the local cache checks it once, when it keeps
/// the record).
fn open_text<R, S: Shape<R>>(
    key: &str,
    fingerprint: Option<&Fingerprint>,
    text: &str,
    shape: &S,
) -> Result<R, Error> {
    // The envelope as this version writes it, read in place: the common case.
    if let Some(envelope) = codec::open_written(text)
        && !mismatch(fingerprint, envelope.fingerprint.as_ref())
        && let Ok(value) = shape.open(&envelope)
    {
        return Ok(value);
    }
    parse(key, fingerprint, text.as_bytes(), shape)
}

/// [`open`] by a full parse of the envelope, which decides every case but the common one.
#[cold]
fn parse<R, S: Shape<R>>(
    key: &str,
    fingerprint: Option<&Fingerprint>,
    bytes: &[u8],
    shape: &S,
) -> Result<R, Error> {
    // Anything else (another layout, corrupt bytes, another request): the full parse decides.
    let decode_error = |reason| Error::Decode {
        key: key.to_owned(),
        expected: shape.type_name(),
        reason,
    };
    let envelope = codec::open(bytes).map_err(decode_error)?;
    if mismatch(fingerprint, envelope.fingerprint.as_ref()) {
        return Err(Error::KeyMismatch {
            key: key.to_owned(),
        });
    }
    if envelope.side == Side::Unstorable {
        let what: codec::Unstorable =
            serde_json::from_str(envelope.value).map_err(|e| decode_error(e.to_string()))?;
        return Err(Error::Unstorable {
            key: key.to_owned(),
            type_name: what.type_name,
            reason: what.reason,
        });
    }
    shape.open(&envelope).map_err(decode_error)
}

/// Two fingerprints disagree only when both are known.
fn mismatch(mine: Option<&Fingerprint>, stored: Option<&Fingerprint>) -> bool {
    matches!((mine, stored), (Some(a), Some(b)) if a != b)
}

/// Releases the claim when the call ends early: the body panicked or the future was dropped.
struct Holding {
    run: Option<Run>,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let Some(run) = self.run.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { run.release().await });
            }
            Err(_) => {
                tracing::warn!(key = %run.key, "idem call dropped outside a tokio runtime; its claim ends with its lease")
            }
        }
    }
}
