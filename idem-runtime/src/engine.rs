//! The state machine of one call: claim or replay or wait, run under a renewed lease, then
//! complete or release, fenced by the claim's token.
//!
//! One concern per file:
//! - this file: [`CallRequest`], what a call asks, and the plain path ([`execute`]): a [`Store`]'s
//!   claim, the heartbeat that renews its lease, its fenced completion or release;
//! - `frame.rs`: what every path shares: the call resolved before it runs (store key, settings,
//!   store, span, checks), its record read back or sealed, and how it ends (counted, in its
//!   span);
//! - `tx.rs`: the transactional path (`tx = conn`): the same frame, with the claim and the
//!   result written through the caller's connection by the `TxStore` its type names
//!   (`store/tx.rs`).
//!
//! [`Store`]: crate::store::Store

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::codec::Codec;
use crate::config::FailMode;
use crate::error::{Error, StoreError};
use crate::observe::{StoreOp, timed};
use crate::outcome::{Outcome, Status};
use crate::record::{Claim, Record};
use crate::store::memory::{MemoryStore, Shared};
use crate::store::{Fence, StoreHandle};

mod frame;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) mod tx;

pub(crate) use self::frame::{CallRequest, Frame};
use self::frame::{Finished, Lookup, Source, Target};

/// How often and how long a successful result's store write is retried before the result is
/// returned unstored.
const COMPLETE_RETRIES: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(200),
];

/// Runs one call on the plain path, and hands how it ended to `answer`, with the call's
/// frame when it got one, which makes the caller's output of it (the runners of the attribute
/// take the value out here, in place of a future of their own around this one, which would be
/// one more layer to poll and copy on every call; the HTTP layer reads the store and lease of
/// a rejected call from the frame).
pub(crate) async fn execute<R, F, S, O>(
    call: CallRequest,
    body: F,
    shape: S,
    answer: impl FnOnce(Result<Outcome<R>, Error>, Option<&Frame<'_>>) -> O,
) -> O
where
    F: Future<Output = R>,
    S: Codec<R>,
{
    let frame = match Frame::open(&call, Lookup::Plain) {
        Ok(frame) => frame,
        Err(error) => return answer(Err(error), None),
    };
    let result = match &frame.source {
        Source::Cached(cached) => {
            let replay = || {
                frame
                    .replay_text(&cached.payload, &shape)
                    .map(|value| Finished::new(value, Status::Replayed))
            };
            // A disabled span still costs its enter and exit (more with tracing's `log`
            // feature, which sqlx turns on): only a span something listens to is entered.
            let replayed = if frame.span.is_disabled() {
                replay()
            } else {
                frame.span.in_scope(replay)
            };
            // A replay from the cache never waits: let a loop of them yield to the other
            // tasks now and then, as tokio's own resources do.
            tokio::task::consume_budget().await;
            replayed
        }
        Source::Store(target) => {
            let run = PlainCall {
                frame: &frame,
                target,
                claim: Claim::new(frame.fingerprint),
            };
            frame.in_span(Box::pin(run.go(body, shape))).await
        }
    };
    answer(frame.finish(result), Some(&frame))
}

/// One call on the plain path: its frame, the store it asks, and its claim.
struct PlainCall<'f> {
    /// The call, resolved.
    frame: &'f Frame<'f>,
    /// The store it asks, and the local cache.
    target: &'f Target,
    /// Its claim: a new token and the request's fingerprint.
    claim: Claim,
}

/// What the claim step decided.
enum Decision<R> {
    /// The key is the call's: run the body.
    Claimed,
    /// A stored result, replayed at once or after a wait.
    Replay(Finished<R>),
    /// The store failed and the call fails open: run the body without a claim.
    Unprotected(StoreError),
}

impl PlainCall<'_> {
    /// Claims or replays, then runs the body under the claim (or unprotected).
    async fn go<R, F, S>(self, body: F, mut shape: S) -> Result<Finished<R>, Error>
    where
        F: Future<Output = R>,
        S: Codec<R>,
    {
        match self.claim_or_replay(&shape).await? {
            Decision::Replay(ran) => Ok(ran),
            Decision::Unprotected(error) => {
                tracing::warn!(key = %self.frame.key, %error, "idem store unavailable; running without idempotency (fail-open)");
                let value = self.frame.in_body(body, false, None).await;
                Ok(Finished::new(value, Status::Unprotected))
            }
            // Boxed: running the body (lease renewal, completion retries) is most of this
            // future's size, and an unboxed one would be copied whole on every call, replays
            // included, where it costs more than the rest of the replay.
            Decision::Claimed => Box::pin(self.hold(body, &mut shape)).await,
        }
    }

    /// Claims the key, or replays its result, or waits for the call that holds it.
    async fn claim_or_replay<R, S: Codec<R>>(&self, shape: &S) -> Result<Decision<R>, Error> {
        let PlainCall {
            frame,
            target,
            claim,
        } = self;
        let (key, store) = (&frame.key, &target.store);
        // Set when the key is first found in progress: a replay reads no clock for it.
        let mut deadline = None;
        let mut waited = false;
        loop {
            let sent = target.local.as_ref().map(|_| Instant::now());
            let found = match store.downcast_ref::<MemoryStore>() {
                // The in-process store, called as itself: its claim is ready at once, and the
                // box of a claim through the handle, and a copy of the payload made under the
                // shard's lock, would cost as much as the claim.
                Some(memory) => {
                    let claimed = async { memory.claim_shared(key, claim, frame.lease) };
                    match timed(frame.store_latency, StoreOp::Claim, claimed).await {
                        Ok(Some(Shared::Completed {
                            bytes,
                            start,
                            expires_in,
                        })) => {
                            let payload = &bytes[start..];
                            let value = frame.replay(payload, shape)?;
                            if let (Some(cache), Some(sent)) = (&target.local, sent) {
                                cache.keep(key, payload.to_vec(), sent, expires_in);
                            }
                            return Ok(Decision::Replay(Finished::replayed(value, waited)));
                        }
                        found => found.map(|found| found.map(Shared::into_record)),
                    }
                }
                None => {
                    // With a local cache, a replay says how long its record still lives.
                    let claimed = match target.local {
                        Some(_) => store.claim_with_expiry(key, claim, frame.lease),
                        None => store.claim(key, claim, frame.lease),
                    };
                    timed(frame.store_latency, StoreOp::Claim, claimed).await
                }
            };
            let holder = match found {
                Err(error) => return self.unavailable(error),
                Ok(None) => return Ok(Decision::Claimed),
                Ok(Some(Record::Completed {
                    payload: bytes,
                    expires_in,
                })) => {
                    let value = frame.replay(&bytes, shape)?;
                    if let (Some(cache), Some(sent), Some(left)) = (&target.local, sent, expires_in)
                    {
                        cache.keep(key, bytes, sent, left);
                    }
                    return Ok(Decision::Replay(Finished::replayed(value, waited)));
                }
                Ok(Some(Record::InProgress(holder))) => holder,
            };
            if frame.mismatch(holder.fingerprint.as_ref()) {
                return Err(frame.key_mismatch());
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + frame.wait);
            if now >= deadline {
                return Err(frame.in_progress());
            }
            if let Err(error) = timed(
                frame.store_latency,
                StoreOp::Wait,
                store.wait(key, &holder, deadline - now),
            )
            .await
            {
                return self.unavailable(error);
            }
            waited = true;
        }
    }

    /// The store failed: fail closed with [`Error::Store`], or open.
    fn unavailable<R>(&self, error: StoreError) -> Result<Decision<R>, Error> {
        match self.target.fail_mode {
            FailMode::Open => Ok(Decision::Unprotected(error)),
            FailMode::Closed => Err(Error::Store {
                key: self.frame.key.clone(),
                source: error,
            }),
        }
    }

    /// Runs the body under the claim, then stores or releases its result.
    async fn hold<R, F, S>(&self, body: F, shape: &mut S) -> Result<Finished<R>, Error>
    where
        F: Future<Output = R>,
        S: Codec<R>,
    {
        let mut holding = Holding { run: Some(self) };
        let attempt = match self.frame.abandoned {
            None => None,
            Some(policy) => {
                let frame = self.frame;
                match crate::abandoned::begin(&self.target.store, &frame.key, frame.ttl, policy)
                    .await
                {
                    Ok(attempt) => Some(attempt),
                    Err(error) => {
                        holding.run = None;
                        self.release().await;
                        return Err(error);
                    }
                }
            }
        };
        let value = self
            .with_heartbeat(self.frame.in_body(body, true, attempt))
            .await;
        let ran = match self.frame.seal(&value, shape) {
            None => {
                // A result not stored ends the attempt: the next call is not told of an
                // abandoned one.
                if attempt.is_some() {
                    crate::abandoned::end(&self.target.store, &self.frame.key).await;
                }
                self.release().await;
                Finished::new(value, took_over(Status::Executed, attempt))
            }
            Some(sealed) => {
                let status = took_over(self.complete(sealed.bytes).await, attempt);
                Finished::stored(value, status, sealed.unstorable)
            }
        };
        holding.run = None;
        Ok(ran)
    }

    /// Drives the body, renewing the lease every `lease / 3` while it runs.
    async fn with_heartbeat<F: Future>(&self, body: F) -> F::Output {
        let PlainCall {
            frame,
            target,
            claim,
        } = self;
        if !frame.heartbeat {
            return body.await;
        }
        let beat = async {
            let period = frame.lease / 3;
            loop {
                tokio::time::sleep(period).await;
                match timed(
                    frame.store_latency,
                    StoreOp::Renew,
                    target.store.renew(&frame.key, claim, frame.lease),
                )
                .await
                {
                    Ok(Fence::Held) => {}
                    Ok(Fence::Lost) => {
                        tracing::warn!(key = %frame.key, "idem lease lost while the body runs; its result will not be stored");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(key = %frame.key, %error, "idem lease renewal failed; retrying");
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

    /// Stores `payload` under the claim, retrying a failed write briefly (see
    /// [`COMPLETE_RETRIES`]); the status of the call's value.
    async fn complete(&self, payload: Vec<u8>) -> Status {
        let PlainCall {
            frame,
            target,
            claim,
        } = self;
        let key = &frame.key;
        let mut retries = COMPLETE_RETRIES.iter();
        loop {
            let sent = target.local.as_ref().map(|_| Instant::now());
            match timed(
                frame.store_latency,
                StoreOp::Complete,
                target.store.complete(key, claim, &payload, frame.ttl),
            )
            .await
            {
                Ok(Fence::Held) => {
                    if let (Some(cache), Some(sent)) = (&target.local, sent) {
                        cache.keep(key, payload, sent, frame.ttl);
                    }
                    return Status::Executed;
                }
                Ok(Fence::Lost) => {
                    tracing::warn!(key = %key, "idem lease lost before completion: another call holds the key, so this result is returned but not stored");
                    return Status::LeaseLost;
                }
                Err(error) => match retries.next() {
                    Some(pause) => tokio::time::sleep(*pause).await,
                    None => {
                        tracing::error!(key = %key, %error, "idem could not store a successful result; it is returned unstored");
                        return Status::NotStored;
                    }
                },
            }
        }
    }

    /// Releases the claim, so that a retry runs the body again.
    async fn release(&self) {
        let frame = self.frame;
        release(
            &self.target.store,
            &frame.key,
            &self.claim,
            frame.store_latency,
        )
        .await;
    }
}

/// [`Status::TookOver`] for a body that ran and ended as attempt 2 or later (it took over an
/// abandoned attempt), else `status`.
fn took_over(status: Status, attempt: Option<u32>) -> Status {
    match (status, attempt) {
        (Status::Executed, Some(attempt)) if attempt > 1 => Status::TookOver,
        (status, _) => status,
    }
}

/// Deletes `claim` on `key` (timed when `timed_on`); a failure is logged, and the claim ends with
/// its lease.
async fn release(store: &StoreHandle, key: &str, claim: &Claim, timed_on: bool) {
    match timed(timed_on, StoreOp::Release, store.release(key, claim)).await {
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(key = %key, %error, "idem could not release its claim; it ends with its lease")
        }
    }
}

/// Releases the claim when the call ends early: the body panicked or the future was dropped.
struct Holding<'r, 'f> {
    /// The call while it holds its claim; `None` once it stored or released it.
    run: Option<&'r PlainCall<'f>>,
}

impl Drop for Holding<'_, '_> {
    fn drop(&mut self) {
        let Some(run) = self.run.take() else { return };
        let key = &run.frame.key;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let (store, key, claim) =
                    (run.target.store.clone(), key.clone(), run.claim.clone());
                let timed_on = run.frame.store_latency;
                runtime.spawn(async move { release(&store, &key, &claim, timed_on).await });
            }
            Err(_) => {
                tracing::warn!(key = %key, "idem call dropped outside a tokio runtime; its claim ends with its lease")
            }
        }
    }
}
