//! Abandoned attempts: what a call does when an earlier attempt of its key began and never
//! ended (its process died, or stalled past its lease), so that its body may have run in part.
//!
//! A call that chooses a policy ([`Abandoned`]: the attribute's `abandoned = "…"`,
//! [`Call::abandoned`](crate::Call::abandoned), or [`Config::abandoned`](crate::Config::abandoned)
//! for every call) leaves a mark of its attempt in its store before its body runs: a record
//! under `<prefix>:#attempt:<the rest of the call's key>`, which no call's key can be (a call's
//! scope never starts with `#`), held for the call's ttl by a claim whose fingerprint carries
//! the attempt's number and the time it began. It is the same operation every store has (a
//! claim), so every store keeps marks, a third party's included.
//!
//! - A call that claims its key and finds no mark is attempt 1, and marks it.
//! - A call that claims its key and finds a mark found an **abandoned attempt**: the key was
//!   free (its claim had ended), and a call that completes keeps its result for longer than its
//!   mark lives, and a call that ends with an error it does not store deletes its mark first.
//!   Then [`Abandoned::Rerun`] replaces the mark with the next attempt's (the body runs, with
//!   [`CallContext::attempt`](crate::CallContext::attempt) telling which one it is and its
//!   recorded [`step`](crate::step)s replayed); [`Abandoned::Fail`] lets the key go and fails
//!   with [`Error::Abandoned`](crate::Error::Abandoned), on this call and every later one,
//!   until an operator forgets the key ([`forget`](crate::forget): the next call is the first
//!   attempt) or completes it with a value ([`complete`](crate::complete): the next call
//!   replays it).
//!
//! A completed call leaves its mark to expire: its mark was written before its result, with
//! the same ttl, so it ends first. The cost, only for calls that choose a policy: one more
//! round trip before the body (the mark's claim), one more when the body's error is not stored
//! (the mark's deletion), and two more for a takeover under `Rerun` (the old mark released,
//! the new one claimed). A replay costs nothing more.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::error::Error;
use crate::record::{Claim, Fingerprint, Record};
use crate::store::{Inspection, StoreHandle};

/// What a call does when it finds an abandoned attempt of its key: an earlier attempt that began
/// and never ended (its process died, or stalled past its lease), so that its body may have run
/// in part.
///
/// A call that chooses a policy (the attribute's `abandoned = "rerun"` or `"fail"`,
/// [`Call::abandoned`](crate::Call::abandoned), or [`Config::abandoned`](crate::Config::abandoned)
/// for every call) marks each attempt in its store before its body runs, under
/// `<prefix>:#attempt:<the rest of the call's key>`, for the call's ttl: one more round trip
/// per call that runs its body (none for a replay), one more when the body's error is not
/// stored (the mark is deleted), two more when an abandoned attempt is taken over under
/// `Rerun`. A call that chooses none re-runs the body as `Rerun` does, without the mark: its
/// body does not know its attempt's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Abandoned {
    /// Runs the body again, as attempt n + 1: [`CallContext::attempt`](crate::CallContext::attempt)
    /// tells it which, and its recorded steps replay. What every call does when it chooses
    /// no policy, then without attempt numbers and without the mark's round trip.
    Rerun,
    /// Fails with [`Error::Abandoned`](crate::Error::Abandoned) instead of running the body,
    /// until an operator forgets the key or completes it by hand.
    Fail,
}

impl Abandoned {
    /// The policy named `word` (`rerun` or `fail`, any case), for `IDEM_ABANDONED`.
    pub(crate) fn parse(word: &str) -> Option<Abandoned> {
        match word.trim().to_ascii_lowercase().as_str() {
            "rerun" => Some(Abandoned::Rerun),
            "fail" => Some(Abandoned::Fail),
            _ => None,
        }
    }
}

/// An attempt's mark, as its claim's fingerprint carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// 1 for the first attempt.
    pub(crate) attempt: u32,
    /// When the attempt began, in milliseconds since the Unix epoch (by its process's clock).
    pub(crate) since_ms: u64,
}

/// What a mark's fingerprint begins with: no SHA-256 of a request is likely to.
const MARK_TAG: &[u8; 16] = b"idem attempt 1\0\0";

impl Mark {
    /// Attempt `attempt`, beginning now.
    fn now(attempt: u32) -> Mark {
        let since_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
            });
        Mark { attempt, since_ms }
    }

    /// The claim that holds the mark.
    fn claim(self) -> Claim {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(MARK_TAG);
        bytes[16..20].copy_from_slice(&self.attempt.to_be_bytes());
        bytes[20..28].copy_from_slice(&self.since_ms.to_be_bytes());
        Claim::new(Some(Fingerprint::from_bytes(bytes)))
    }

    /// The mark a claim's fingerprint carries; `None` for a claim that is no mark.
    fn of(fingerprint: Option<&Fingerprint>) -> Option<Mark> {
        let bytes = fingerprint?.as_bytes();
        if &bytes[..16] != MARK_TAG {
            return None;
        }
        Some(Mark {
            attempt: u32::from_be_bytes(bytes[16..20].try_into().expect("4 bytes")),
            since_ms: u64::from_be_bytes(bytes[20..28].try_into().expect("8 bytes")),
        })
    }

    /// When the attempt began.
    pub(crate) fn since(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.since_ms)
    }
}

/// The key of the marks of the call whose store key is `call_key`:
/// `<prefix>:#attempt:<the rest of the call's key>`.
pub(crate) fn mark_key(call_key: &str) -> String {
    crate::call_context::beside(call_key, "#attempt", None)
}

/// Marks the beginning of an attempt of the call whose store key is `key`, which the caller
/// holds: attempt 1, or the next one after an abandoned attempt under `Rerun`. Under `Fail`
/// an abandoned attempt is [`Error::Abandoned`]. Returns the attempt's number.
pub(crate) async fn begin(
    store: &StoreHandle,
    key: &str,
    ttl: Duration,
    policy: Abandoned,
) -> Result<u32, Error> {
    let marks = mark_key(key);
    let failed = |source| Error::Store {
        key: key.to_owned(),
        source,
    };
    let mut mark = Mark::now(1);
    // Twice at most: the mark found, then released and replaced. Only the call that holds the
    // key writes its marks, so nothing else takes the mark in between.
    for _ in 0..2 {
        let claim = mark.claim();
        let found = match store.claim(&marks, &claim, ttl).await.map_err(failed)? {
            None => return Ok(mark.attempt),
            Some(Record::InProgress(found)) => found,
            Some(Record::Completed { .. }) => {
                return Err(Error::Config(format!(
                    "the attempt mark of the key `{key}` holds a result, not a mark: something \
                     other than idem wrote `{marks}`; forget the key to start again"
                )));
            }
        };
        let Some(earlier) = Mark::of(found.fingerprint.as_ref()) else {
            return Err(Error::Config(format!(
                "the attempt mark of the key `{key}` is not one idem wrote (`{marks}`); forget \
                 the key to start again"
            )));
        };
        if policy == Abandoned::Fail {
            return Err(Error::Abandoned {
                key: key.to_owned(),
                attempt: earlier.attempt,
                since: earlier.since(),
                steps: completed_steps(store, key).await,
            });
        }
        store.release(&marks, &found).await.map_err(failed)?;
        mark = Mark::now(earlier.attempt.saturating_add(1));
    }
    Err(Error::InProgress {
        key: key.to_owned(),
    })
}

/// Deletes the mark of the call whose store key is `key`: its attempt ended with an error it
/// does not store, so the next call is not told of an abandoned attempt. A failure is logged:
/// the next call then finds the mark, and under `Fail` an operator decides.
pub(crate) async fn end(store: &StoreHandle, key: &str) {
    if let Err(error) = store.forget(&mark_key(key)).await {
        tracing::warn!(key = %key, %error, "idem could not delete its attempt's mark; the next call will find an abandoned attempt");
    }
}

/// The abandoned attempt the store remembers for the call whose store key is `key`, if any: the
/// key holds no live record and its mark is live. For [`inspect`](crate::inspect).
pub(crate) async fn abandoned(store: &StoreHandle, key: &str) -> Option<Mark> {
    match store.inspect(&mark_key(key)).await {
        Ok(Inspection::InProgress { fingerprint, .. }) => Mark::of(fingerprint.as_ref()),
        _ => None,
    }
}

/// How many of the call's recorded steps completed, counted from the first until one is
/// missing; `None` when the store cannot tell (it does not implement `inspect`).
pub(crate) async fn completed_steps(store: &StoreHandle, key: &str) -> Option<u32> {
    let mut index = 1u32;
    loop {
        match store
            .inspect(&crate::call_context::step_key(key, index))
            .await
        {
            Ok(Inspection::Completed { .. }) if index < u32::MAX => index += 1,
            Ok(_) => return Some(index - 1),
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_from_its_claim() {
        let mark = Mark {
            attempt: 3,
            since_ms: 1_764_000_000_123,
        };
        assert_eq!(Mark::of(mark.claim().fingerprint.as_ref()), Some(mark));
        assert_eq!(
            mark.since(),
            UNIX_EPOCH + Duration::from_millis(1_764_000_000_123)
        );
        // A request's fingerprint is no mark.
        let claim = Claim::new(Some(Fingerprint::of_bytes(b"request")));
        assert_eq!(Mark::of(claim.fingerprint.as_ref()), None);
        assert_eq!(Mark::of(None), None);
    }

    #[test]
    fn mark_keys_put_a_scope_no_call_has_after_the_prefix() {
        assert_eq!(
            mark_key("idem:shop.order:o-7"),
            "idem:#attempt:shop.order:o-7"
        );
        assert_eq!(mark_key(r"a\:b:s:k"), r"a\:b:#attempt:s:k");
    }

    #[test]
    fn policies_are_named_rerun_and_fail() {
        assert_eq!(Abandoned::parse(" Fail "), Some(Abandoned::Fail));
        assert_eq!(Abandoned::parse("rerun"), Some(Abandoned::Rerun));
        assert_eq!(Abandoned::parse("retry"), None);
    }
}
