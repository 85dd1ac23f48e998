//! What a body knows of its call ([`CallContext`], [`call_context`], [`derive_key`]) and what
//! the caller of an `#[idempotent]` function learns of how it ended ([`with_status`]).
//!
//! Both are task-locals: the engine sets the call's context around its body, and
//! [`with_status`] around the caller's future. Neither reaches a task the body spawns: pass
//! the [`CallContext`] along (it is `Clone + Send`).

use std::borrow::Cow;
use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::codec::{PlainCodec, ResultCodec};
use crate::engine::{self, CallRequest};
use crate::error::Error;
use crate::outcome::Status;
use crate::record::Fingerprint;
use crate::store::StoreHandle;

tokio::task_local! {
    /// The call whose body is running.
    static CALL: CallContext;
    /// The status [`with_status`] reports, and the depth of idempotent bodies it was entered
    /// at.
    static OBSERVED: Observed;
}

/// The identity of the idempotent call whose body is running: its scope and its key as
/// stored, and the keys it derives for the systems it calls.
///
/// Read it with [`call_context`] (or derive a key at once with [`derive_key`]) inside the
/// body of an `#[idempotent]` function or of a [`Call`](crate::Call), on every store and in
/// the transactional mode.
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// let idem = idem::Idem::with_settings(idem::MemoryStore::new(), &idem::Config::default());
/// let sent = idem
///     .scope(idem::Call::new("shop::checkout", "order-7").run(async {
///         let call = idem::call_context().expect("inside a call's body");
///         assert_eq!(call.scope(), "shop::checkout");
///         assert_eq!(call.key(), "idem:shop.checkout:order-7");
///         // The `Idempotency-Key` of the gateway's charge: the same on every attempt.
///         call.derive_key("charge")
///     }))
///     .await?;
/// assert_eq!(sent.value, "idem_34622d2a456d64bbed2ffa0cd83940ebfba503f3");
/// assert!(idem::call_context().is_none()); // outside a body
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The call's scope, as the call named it.
    scope: Cow<'static, str>,
    /// The store key (see `key.rs`).
    key: String,
    /// How many idempotent bodies run around this one, this one included (1 for a call made
    /// outside any body).
    depth: u32,
    /// What [`step`] does in this body.
    steps: StepMode,
    /// The attempt's number, when the call marks its attempts.
    attempt: Option<u32>,
}

impl PartialEq for CallContext {
    /// The same call: scope, key and depth (not the progress of its steps).
    fn eq(&self, other: &Self) -> bool {
        (&self.scope, &self.key, self.depth) == (&other.scope, &other.key, other.depth)
    }
}

impl Eq for CallContext {}

/// What [`step`] does in a body.
#[derive(Debug, Clone)]
pub(crate) enum StepMode {
    /// Records each step's output in the call's store (the plain path).
    Recorded(Steps),
    /// Runs each step's future, recording nothing: the transactional mode (the body's writes
    /// roll back together) and a fail-open call (the store is down).
    Direct,
    /// Inside a step's own future: steps do not nest.
    InStep,
}

/// The steps of one attempt of a call: where they are recorded, and how far the body got.
#[derive(Debug, Clone)]
pub(crate) struct Steps {
    /// The call's store.
    store: StoreHandle,
    /// The call's ttl: a step's record lives as long as the call's.
    ttl: Duration,
    /// The call's lease: a step's claim, and how long a step waits for the claim of an
    /// earlier attempt's step.
    lease: Duration,
    /// The steps the body asked for so far.
    taken: Cell<u32>,
    /// The bytes of their recorded outputs (JSON).
    bytes: Cell<usize>,
}

impl Steps {
    /// No step taken yet, recorded in `store`.
    pub(crate) fn new(store: &StoreHandle, ttl: Duration, lease: Duration) -> Steps {
        Steps {
            store: store.clone(),
            ttl,
            lease,
            taken: Cell::new(0),
            bytes: Cell::new(0),
        }
    }
}

/// The most bytes (of JSON) the steps of one call may record, all attempts together: step
/// outputs are kept with the call for its ttl, and read back on every re-run.
pub const STEP_BYTES_LIMIT: usize = 1 << 20;

/// The domain of a derived key's hash: no other hash of idem starts with these bytes.
const DERIVED_KEY_DOMAIN: &[u8] = b"idem derived key 1\0";

impl CallContext {
    /// The call's scope (for the attribute, the function's path unless `scope = …` names
    /// another).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The call's key as the store keeps it: prefix, scope and key encoded (and hashed when
    /// long, unprintable or with `hash_keys`), as `idem inspect` and the logs show it.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Which attempt of the call this body is: 1 for the first, n + 1 after it took over
    /// attempt n, which was abandoned (see [`Abandoned`](crate::Abandoned)). `None` when the
    /// call marks no attempts (it chose no policy, and none is configured), and in the
    /// transactional mode, where an attempt never outlives its transaction.
    pub fn attempt(&self) -> Option<u32> {
        self.attempt
    }

    /// A key for a downstream system (a gateway's `Idempotency-Key`, a message id, an outbox
    /// row's id), derived from this call's store key and `label`: **the same on every attempt
    /// of this call** (a re-run after a crash or a lost lease sends the same key, so the
    /// downstream system deduplicates it), different for every label and every other call.
    ///
    /// The format is part of what idem guarantees across versions: `idem_` followed by the
    /// first 40 lowercase hex digits (160 bits) of SHA-256 over the bytes
    /// `"idem derived key 1\0"`, the store key's length in bytes as a big-endian `u64`, the
    /// store key, and the label. 45 ASCII characters of `[a-z0-9_]`: accepted as an
    /// idempotency key by the common gateways (Stripe 255 characters, Adyen 64, PayPal 108,
    /// Square 45). The store key includes the prefix, so two deployments with different
    /// prefixes derive different keys.
    pub fn derive_key(&self, label: &str) -> String {
        let digest = self.digest(label);
        let mut out = String::with_capacity(45);
        out.push_str("idem_");
        out.push_str(&hex::encode(&digest[..20]));
        out
    }

    /// [`derive_key`](CallContext::derive_key) for a system that wants a UUID: the first 16
    /// bytes of the same hash as an RFC 9562 UUID of version 8 (custom), its version and
    /// variant bits set, in the hyphenated lowercase form (36 characters). Stable across
    /// versions like the key.
    pub fn derive_uuid(&self, label: &str) -> String {
        let digest = self.digest(label);
        let mut bytes: [u8; 16] = *digest.first_chunk().expect("SHA-256 has 32 bytes");
        bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // variant 10xx
        let hex = hex::encode(bytes);
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }

    /// SHA-256 of the domain, the store key (length first, so that no key and label pair
    /// shares its bytes with another) and `label`.
    fn digest(&self, label: &str) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(DERIVED_KEY_DOMAIN);
        hash.update((self.key.len() as u64).to_be_bytes());
        hash.update(self.key.as_bytes());
        hash.update(label.as_bytes());
        hash.finalize().into()
    }
}

/// The call whose body is running on this task, or `None` outside any idempotent body (or in
/// a task the body spawned: pass the context along).
///
/// In a body that calls another idempotent function, that function's body sees its own call.
pub fn call_context() -> Option<CallContext> {
    CALL.try_with(Clone::clone).ok()
}

/// [`CallContext::derive_key`] of the call whose body is running: a key for a downstream
/// system, the same on every attempt of this call.
///
/// Fails with [`Error::Config`] outside an idempotent body (a key derived from nothing would
/// be a new key on every attempt: the very thing it is for).
pub fn derive_key(label: &str) -> Result<String, Error> {
    CALL.try_with(|call| call.derive_key(label)).map_err(|_| {
        Error::Config(format!(
            "idem::derive_key({label:?}) was called outside the body of an idempotent call \
             (or in a task the body spawned: pass idem::call_context() to it)"
        ))
    })
}

/// Runs `future` as a **recorded step** of the idempotent call whose body is running: its
/// output is stored with the call, and an attempt that takes the call over after an earlier
/// one died (a crash, a lost lease) replays it **without running the future again**. The first
/// step that did not complete runs again; give the downstream system a key from
/// [`derive_key`] and it deduplicates that re-run too.
///
/// Steps are numbered in the order the body asks for them, and recorded under the call's
/// store key, its number and its `name`: a re-run whose step at some place has another name
/// (renamed, added before it, or one skipped) fails with [`Error::StepMismatch`] instead of
/// replaying another step's output. A step waits (up to the call's lease) for the same step of
/// an attempt that still runs it; an attempt whose step lost its claim while it ran (the
/// process stalled past the call's lease, and another attempt took the step over) gets
/// [`Error::InProgress`] from it, not its own unrecorded output. A step's output must be
/// `Serialize + DeserializeOwned`, as a call's; the outputs of a call's steps may hold
/// [`STEP_BYTES_LIMIT`] bytes of JSON together ([`Error::StepsTooLarge`] past it). Each step
/// costs a first run two store round trips, a replay one.
///
/// Where the body's effects cannot outlive it, the step records nothing and runs its future
/// on every attempt: in the transactional mode (`tx = conn`: the body's writes and the call's
/// record roll back together, so a re-run starts from nothing) and in a call that runs
/// unprotected (fail-open with the store down). Outside an idempotent body, and inside another
/// step's future, it is [`Error::Config`].
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// let idem = idem::Idem::with_settings(idem::MemoryStore::new(), &idem::Config::default());
/// let order = idem
///     .scope(idem::Call::new("shop::order", "order-7").run_result(async {
///         let reserved = idem::step("reserve", async { 3_u32 }).await?;
///         // The gateway's idempotency key, for the step that may run again.
///         let charge_key = idem::derive_key("charge")?;
///         let charged = idem::step("charge", async move { format!("ch_{}", &charge_key[5..13]) })
///             .await?;
///         Ok::<_, idem::Error>((reserved, charged))
///     }))
///     .await?;
/// assert_eq!(order.value?.0, 3);
/// # Ok(())
/// # }
/// ```
pub async fn step<T, F>(name: &str, future: F) -> Result<T, Error>
where
    T: Serialize + DeserializeOwned,
    F: Future<Output = T>,
{
    let Some((request, recorded)) = plan(name)? else {
        return Ok(future.await);
    };
    let outcome = engine::execute(request, future, PlainCodec::new(), |result, _| result)
        .await
        .map_err(|error| recorded.mismatch(error, name))?;
    recorded.kept(outcome.status)?;
    recorded.account(&outcome.value)?;
    Ok(outcome.value)
}

/// [`step`] for a fallible future: an `Ok` output is recorded and replayed; an `Err` is
/// returned as it is and records nothing, so that the next attempt runs the step again (as
/// [`Call::run_result`](crate::Call::run_result) does for a call).
pub async fn try_step<T, E, F>(name: &str, future: F) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    E: From<Error>,
    F: Future<Output = Result<T, E>>,
{
    let Some((request, recorded)) = plan(name)? else {
        return future.await;
    };
    let outcome = engine::execute(request, future, ResultCodec::new(), |result, _| result)
        .await
        .map_err(|error| recorded.mismatch(error, name))?;
    recorded.kept(outcome.status)?;
    let value = outcome.value?;
    recorded.account(&value)?;
    Ok(value)
}

/// A step to record: where.
struct Recorded {
    /// The store key of the call whose step it is.
    call_key: String,
    /// The step's number.
    index: u32,
}

impl Recorded {
    /// A step recorded under another name at this place is [`Error::StepMismatch`].
    fn mismatch(&self, error: Error, name: &str) -> Error {
        match error {
            Error::KeyMismatch { .. } => Error::StepMismatch {
                key: self.call_key.clone(),
                index: self.index,
                name: name.to_owned(),
            },
            other => other,
        }
    }

    /// A step whose claim ended while its future ran (its lease passed: the process stalled)
    /// lost it to another attempt, whose output is the step's: this attempt's is not, so it
    /// stops here with [`Error::InProgress`].
    fn kept(&self, status: Status) -> Result<(), Error> {
        match status {
            Status::LeaseLost => Err(Error::InProgress {
                key: self.call_key.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Counts `value`'s bytes against the call's bound.
    fn account<T: Serialize>(&self, value: &T) -> Result<(), Error> {
        let size = serde_json::to_vec(value).map_or(0, |bytes| bytes.len());
        let total = CALL
            .try_with(|call| match &call.steps {
                StepMode::Recorded(steps) => {
                    let total = steps.bytes.get() + size;
                    steps.bytes.set(total);
                    total
                }
                _ => 0,
            })
            .unwrap_or(0);
        if total > STEP_BYTES_LIMIT {
            return Err(Error::StepsTooLarge {
                key: self.call_key.clone(),
                bytes: total,
                limit: STEP_BYTES_LIMIT,
            });
        }
        Ok(())
    }
}

/// What [`step`] does with a step named `name` here: the call that records it (its store key,
/// the call's store, ttl and lease), or `None` to run it unrecorded.
fn plan(name: &str) -> Result<Option<(CallRequest, Recorded)>, Error> {
    let outside = || {
        Error::Config(format!(
            "idem::step({name:?}) was called outside the body of an idempotent call (or in a \
             task the body spawned): a step is recorded with its call"
        ))
    };
    CALL.try_with(|call| match &call.steps {
        StepMode::Direct => Ok(None),
        StepMode::InStep => Err(Error::Config(format!(
            "idem::step({name:?}) was called inside the future of another step of the call \
             with key `{}`: steps do not nest; make it a step of the body",
            call.key
        ))),
        StepMode::Recorded(steps) => {
            let index = steps.taken.get() + 1;
            steps.taken.set(index);
            Ok(Some((
                CallRequest {
                    scope: call.scope.clone(),
                    key: step_key(&call.key, index),
                    ttl: Some(steps.ttl),
                    lease: Some(steps.lease),
                    wait: Some(steps.lease),
                    fingerprint: Some(Ok(Fingerprint::of_bytes(name.as_bytes()))),
                    store: Some(steps.store.clone()),
                    heartbeat: true,
                    step: true,
                    abandoned: None,
                },
                Recorded {
                    call_key: call.key.clone(),
                    index,
                },
            )))
        }
    })
    .map_err(|_| outside())?
}

/// The store key of step `index` of the call of store key `call_key`:
/// `<prefix>:#step:<the rest of the call's key>:<index>`. No call has this key: a call's
/// scope is readable and never starts with `#`, or hashed as `#` and 64 hex digits (see
/// `key.rs`); and the call's key is whole in it, so two calls' steps never share a key.
pub(crate) fn step_key(call_key: &str, index: u32) -> String {
    beside(call_key, "#step", Some(index))
}

/// A key of the records kept beside the call of store key `call_key`:
/// `<prefix>:<kind>:<the rest of the call's key>`, and `:<index>` with one. `kind` starts
/// with `#` and is no hex number, so no call's key is one of these (see [`step_key`]).
pub(crate) fn beside(call_key: &str, kind: &str, index: Option<u32>) -> String {
    // The prefix ends at the first `:` not escaped by a `\` (see `key.rs`).
    let mut escaped = false;
    let split = call_key
        .char_indices()
        .find(|&(_, c)| {
            let found = c == ':' && !escaped;
            escaped = c == '\\' && !escaped;
            found
        })
        .map_or(call_key.len(), |(at, _)| at);
    let (prefix, rest) = call_key.split_at(split);
    let rest = rest.strip_prefix(':').unwrap_or(rest);
    match index {
        Some(index) => format!("{prefix}:{kind}:{rest}:{index}"),
        None => format!("{prefix}:{kind}:{rest}"),
    }
}

/// Runs `future` and reports how the last `#[idempotent]` function (or [`Call`](crate::Call))
/// it awaited directly ended: executed, replayed, waited for, … (`None` when no such call
/// returned a value). Calls made inside those calls' bodies are not reported, only the ones
/// `future` itself awaits (inside a body, a [`step`] it awaits is reported as a call:
/// `Executed` when it ran, `Replayed` when an earlier attempt's output came back).
///
/// The attribute's functions return their value only; this is how their caller learns
/// whether the body ran, for its own metrics or its response.
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// let idem = idem::Idem::with_settings(idem::MemoryStore::new(), &idem::Config::default());
/// let charge = || idem::Call::new("shop::charge", "order-7").run(async { 1250 });
/// let (first, status) = idem.scope(idem::with_status(charge())).await;
/// assert_eq!((first?.value, status), (1250, Some(idem::Status::Executed)));
/// let (again, status) = idem.scope(idem::with_status(charge())).await;
/// assert_eq!((again?.value, status), (1250, Some(idem::Status::Replayed)));
/// # Ok(())
/// # }
/// ```
pub async fn with_status<F: Future>(future: F) -> (F::Output, Option<Status>) {
    let observed = Observed {
        status: Cell::new(None),
        depth: CALL.try_with(|call| call.depth).unwrap_or(0),
    };
    OBSERVED
        .scope(observed, async {
            let output = future.await;
            let status = OBSERVED.with(|observed| observed.status.get());
            (output, status)
        })
        .await
}

/// What [`with_status`] collects.
struct Observed {
    /// The status of the last call it reports.
    status: Cell<Option<Status>>,
    /// The depth of idempotent bodies around `with_status`: the calls it reports are made at
    /// this depth.
    depth: u32,
}

/// Runs `body` as the body of the call of `scope` and store key `key`.
#[allow(
    clippy::ptr_arg,
    reason = "a borrowed static scope is kept without allocating"
)]
pub(crate) fn in_body<F: Future>(
    scope: &Cow<'static, str>,
    key: &str,
    steps: StepMode,
    attempt: Option<u32>,
    body: F,
) -> impl Future<Output = F::Output> {
    let inherited = match steps {
        // A step's future runs in its call's context, where steps do not nest.
        StepMode::InStep => CALL
            .try_with(|call| CallContext {
                steps: StepMode::InStep,
                ..call.clone()
            })
            .ok(),
        _ => None,
    };
    let context = inherited.unwrap_or_else(|| CallContext {
        scope: scope.clone(),
        key: key.to_owned(),
        depth: CALL.try_with(|call| call.depth).unwrap_or(0) + 1,
        steps,
        attempt,
    });
    CALL.scope(context, body)
}

/// A call ended with `status`: tell the [`with_status`] around it, if there is one and the
/// call was made at its depth.
pub(crate) fn ended_with(status: Status) {
    let _ = OBSERVED.try_with(|observed| {
        let depth = CALL.try_with(|call| call.depth).unwrap_or(0);
        if depth == observed.depth {
            observed.status.set(Some(status));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(key: &str) -> CallContext {
        CallContext {
            scope: Cow::Borrowed("shop::checkout"),
            key: key.to_owned(),
            depth: 1,
            steps: StepMode::Direct,
            attempt: None,
        }
    }

    /// The format is stored in other systems (a gateway keeps the keys it saw): these values
    /// must never change. A change here is a breaking change of idem's stored format. (The
    /// values were also computed apart from this code, from the format `derive_key`
    /// documents, with Python's hashlib.)
    #[test]
    fn derived_keys_are_pinned_across_versions() {
        let call = context("idem:shop.checkout:order-7");
        assert_eq!(
            call.derive_key("charge"),
            "idem_34622d2a456d64bbed2ffa0cd83940ebfba503f3"
        );
        assert_eq!(
            call.derive_uuid("charge"),
            "34622d2a-456d-84bb-ad2f-fa0cd83940eb"
        );
    }

    #[test]
    fn derived_keys_have_a_fixed_length_and_charset_and_differ_per_label_and_call() {
        let a = context("idem:shop.checkout:order-7");
        let b = context("idem:shop.checkout:order-8");
        let mut seen = std::collections::HashSet::new();
        for call in [&a, &b] {
            for label in ["charge", "notify", "", "charge\0", "ch", "arge"] {
                let key = call.derive_key(label);
                assert_eq!(key.len(), 45, "{key}");
                assert!(key.starts_with("idem_"), "{key}");
                assert!(
                    key[5..]
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                    "{key}"
                );
                assert!(seen.insert(key.clone()), "{key} derived twice");
                let uuid = call.derive_uuid(label);
                assert_eq!(uuid.len(), 36);
                assert_eq!(&uuid[14..15], "8", "version 8: {uuid}");
                assert!("89ab".contains(&uuid[19..20]), "variant 10xx: {uuid}");
                assert_eq!(uuid.replace('-', "")[..12], key[5..17]);
            }
        }
        // The key's length goes first: a key and a label never pass for another pair.
        assert_ne!(context("ab").derive_key("c"), context("a").derive_key("bc"));
    }

    #[test]
    fn step_keys_put_a_scope_no_call_has_after_the_prefix() {
        assert_eq!(
            step_key("idem:shop.order:o-7", 2),
            "idem:#step:shop.order:o-7:2"
        );
        assert_eq!(step_key(r"a\:b:s:k", 1), r"a\:b:#step:s:k:1");
        assert_eq!(step_key(r"a\\:s:k", 1), r"a\\:#step:s:k:1");
        assert_eq!(step_key("idem:s:a:b", 10), "idem:#step:s:a:b:10");
    }

    #[tokio::test]
    async fn outside_a_body_there_is_no_context_and_no_derived_key() {
        assert!(call_context().is_none());
        let error = derive_key("charge").unwrap_err();
        assert!(
            matches!(&error, Error::Config(message) if message.contains("outside the body")),
            "{error}"
        );
        let inside = in_body(
            &Cow::Borrowed("s"),
            "idem:s:k",
            StepMode::Direct,
            None,
            async { (call_context(), derive_key("charge")) },
        )
        .await;
        assert_eq!(inside.0.map(|c| c.depth), Some(1));
        assert_eq!(inside.1.unwrap(), context("idem:s:k").derive_key("charge"));
    }
}
