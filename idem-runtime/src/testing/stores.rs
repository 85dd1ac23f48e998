//! The test stores: [`Forwarding`], which wraps another store to watch it and change what it
//! answers, and [`DownStore`], whose backend is down.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::bounded::within;
use crate::store::{Claim, Fence, Record, StoreFuture};
use crate::{Inspection, Store, StoreError, StoreErrorKind, StoreHandle};

/// An operation of the [`Store`] trait, as [`Forwarding`] counts, records, fails and delays
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Store::claim`].
    Claim,
    /// [`Store::claim_with_expiry`] (what the engine calls instead of `claim` when a local
    /// cache is on).
    ClaimWithExpiry,
    /// [`Store::complete`].
    Complete,
    /// [`Store::release`].
    Release,
    /// [`Store::renew`].
    Renew,
    /// [`Store::wait`].
    Wait,
    /// [`Store::inspect`].
    Inspect,
    /// [`Store::forget`].
    Forget,
}

impl Op {
    /// Every operation, in the order of the trait.
    pub const ALL: [Op; 8] = [
        Op::Claim,
        Op::ClaimWithExpiry,
        Op::Complete,
        Op::Release,
        Op::Renew,
        Op::Wait,
        Op::Inspect,
        Op::Forget,
    ];

    /// The name of the trait's method: `claim`, `claim_with_expiry`, `complete`…
    pub fn name(self) -> &'static str {
        match self {
            Op::Claim => "claim",
            Op::ClaimWithExpiry => "claim_with_expiry",
            Op::Complete => "complete",
            Op::Release => "release",
            Op::Renew => "renew",
            Op::Wait => "wait",
            Op::Inspect => "inspect",
            Op::Forget => "forget",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a [`Forwarding`] store has seen, shared by its clones.
#[derive(Default)]
struct Seen {
    /// Calls per operation (by [`Op::index`]), counted when the call is made.
    calls: [usize; Op::ALL.len()],
    /// Every call's operation and key, in the order they were made.
    keys: Vec<(Op, String)>,
    /// The claims (as bytes) a claim answered with a record in progress: the duplicates.
    in_progress: HashSet<Vec<u8>>,
}

/// A store that forwards every operation to another, with twists a test chooses, and tells
/// the test what it was asked.
///
/// Watching: it counts the calls of each [`Op`] ([`calls`](Forwarding::calls),
/// [`total_calls`](Forwarding::total_calls)), records the key of each
/// ([`keys`](Forwarding::keys)), and counts the distinct claims told that the key is in
/// progress ([`in_progress_seen`](Forwarding::in_progress_seen)). A test can wait for any of
/// these ([`called`](Forwarding::called), [`waiting`](Forwarding::waiting),
/// [`told_in_progress`](Forwarding::told_in_progress)): an observable event instead of a
/// sleep, so that a slow machine cannot reorder a test.
///
/// Twists, set when it is built: [`fail`](Forwarding::fail) an operation with an error of a
/// chosen [`StoreErrorKind`] (the inner store is not asked); [`delay`](Forwarding::delay) the
/// answer of an operation after the inner store acted (as a network would);
/// [`hide_expiry`](Forwarding::hide_expiry) of completed records from claims (as a store that
/// cannot tell it); [`describe_as`](Forwarding::describe_as) another name.
///
/// ```
/// # use idem_runtime as idem;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use idem::testing::{Forwarding, Op};
/// use idem::{Call, MemoryStore, Status, StoreErrorKind};
///
/// // Completions fail as if the store went down after the claim.
/// let store = Forwarding::new(MemoryStore::new()).fail(Op::Complete, StoreErrorKind::Unavailable);
/// let outcome = Call::new("pay", "k").store(store.clone()).run(async { 1 }).await.unwrap();
/// assert_eq!(outcome.status, Status::NotStored);
/// assert_eq!(store.calls(Op::Claim), 1);
/// assert!(store.calls(Op::Complete) >= 1, "the engine tried to store the result");
/// assert_eq!(store.keys(Op::Claim), ["idem:pay:k"]);
/// # });
/// ```
///
/// Clones share what they have seen; set the twists before cloning (each clone keeps the
/// twists it was cloned with). Every call is remembered until the store is dropped: meant for
/// tests, not for millions of calls.
#[derive(Clone)]
pub struct Forwarding {
    inner: StoreHandle,
    /// The operations that fail, with the kind of their error.
    fails: [Option<StoreErrorKind>; Op::ALL.len()],
    /// How long after the inner store each operation answers.
    delays: [Duration; Op::ALL.len()],
    hide_expiry: bool,
    name: Option<String>,
    seen: Arc<watch::Sender<Seen>>,
}

impl Forwarding {
    /// Forwards every operation to `inner`, unchanged.
    pub fn new(inner: impl Into<StoreHandle>) -> Self {
        Forwarding {
            inner: inner.into(),
            fails: [None; Op::ALL.len()],
            delays: [Duration::ZERO; Op::ALL.len()],
            hide_expiry: false,
            name: None,
            seen: Arc::new(watch::Sender::new(Seen::default())),
        }
    }

    /// Makes every call of `op` fail with a [`StoreError`] of `kind`, without asking the inner
    /// store. The call is still counted and recorded.
    pub fn fail(mut self, op: Op, kind: StoreErrorKind) -> Self {
        self.fails[op.index()] = Some(kind);
        self
    }

    /// Makes every call of `op` answer `by` after the inner store answered: the store acted
    /// (a record's lifetime started) before the caller hears of it, as over a slow network.
    pub fn delay(mut self, op: Op, by: Duration) -> Self {
        self.delays[op.index()] = by;
        self
    }

    /// Makes [`claim`](Store::claim) and [`claim_with_expiry`](Store::claim_with_expiry)
    /// report completed records without their remaining lifetime (`expires_in: None`), as a
    /// store that cannot tell it.
    pub fn hide_expiry(mut self) -> Self {
        self.hide_expiry = true;
        self
    }

    /// Makes [`describe`](Store::describe) return `name` instead of the inner store's
    /// description.
    pub fn describe_as(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The store this one forwards to.
    pub fn inner(&self) -> &StoreHandle {
        &self.inner
    }

    /// How many calls of `op` were made (failed ones included).
    pub fn calls(&self, op: Op) -> usize {
        self.seen.borrow().calls[op.index()]
    }

    /// How many calls of any operation were made.
    pub fn total_calls(&self) -> usize {
        self.seen.borrow().calls.iter().sum()
    }

    /// The keys `op` was called with, in the order of the calls.
    pub fn keys(&self, op: Op) -> Vec<String> {
        self.seen
            .borrow()
            .keys
            .iter()
            .filter(|(called, _)| *called == op)
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// How many distinct claims were answered that the key is in progress (by
    /// [`claim`](Store::claim) or [`claim_with_expiry`](Store::claim_with_expiry)): the
    /// duplicates of a running call, each counted once however often it looked again.
    pub fn in_progress_seen(&self) -> usize {
        self.seen.borrow().in_progress.len()
    }

    /// Returns once `op` has been called `n` times (at once if it already was).
    pub async fn called(&self, op: Op, n: usize) {
        self.until(&format!("{n} call(s) of {op}"), |seen| {
            seen.calls[op.index()] >= n
        })
        .await;
    }

    /// Returns once some call has started to wait on this store (at once if one already did).
    pub async fn waiting(&self) {
        self.called(Op::Wait, 1).await;
    }

    /// Returns once `n` distinct claims were told that the key is in progress (see
    /// [`in_progress_seen`](Forwarding::in_progress_seen)).
    pub async fn told_in_progress(&self, n: usize) {
        self.until(&format!("{n} claims told the key is in progress"), |seen| {
            seen.in_progress.len() >= n
        })
        .await;
    }

    /// Returns once `condition` holds; fails the test naming `what` if it never does.
    async fn until(&self, what: &str, condition: impl Fn(&Seen) -> bool) {
        let mut seen = self.seen.subscribe();
        within(what, seen.wait_for(|seen| condition(seen)))
            .await
            .expect("the sender lives in self");
    }

    /// Counts and records a call of `op`, then fails it, or forwards it (`forward` asks the
    /// inner store) and delays its answer, as the twists say.
    fn forward<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        key: &str,
        forward: impl FnOnce() -> StoreFuture<'a, T>,
    ) -> StoreFuture<'a, T> {
        self.seen.send_modify(|seen| {
            seen.calls[op.index()] += 1;
            seen.keys.push((op, key.to_owned()));
        });
        if let Some(kind) = self.fails[op.index()] {
            let error = StoreError::new(kind, format!("{op} failed (a twist of the test store)"));
            return Box::pin(std::future::ready(Err(error)));
        }
        let delay = self.delays[op.index()];
        if delay.is_zero() {
            return forward();
        }
        let answer = forward();
        Box::pin(async move {
            let answer = answer.await;
            tokio::time::sleep(delay).await;
            answer
        })
    }

    /// What a claim found, seen (a record in progress) and changed (a hidden expiry).
    fn found<'a>(
        &'a self,
        claim: &'a Claim,
        found: StoreFuture<'a, Option<Record>>,
    ) -> StoreFuture<'a, Option<Record>> {
        Box::pin(async move {
            Ok(match found.await? {
                Some(Record::InProgress(holder)) => {
                    self.seen.send_modify(|seen| {
                        seen.in_progress.insert(claim.to_bytes());
                    });
                    Some(Record::InProgress(holder))
                }
                Some(Record::Completed { payload, .. }) if self.hide_expiry => {
                    Some(Record::Completed {
                        payload,
                        expires_in: None,
                    })
                }
                other => other,
            })
        })
    }
}

impl std::fmt::Debug for Forwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarding")
            .field("inner", &self.inner)
            .field("fails", &self.fails)
            .field("delays", &self.delays)
            .field("hide_expiry", &self.hide_expiry)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Store for Forwarding {
    async fn claim(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Option<Record>, StoreError> {
        let found = self.forward(Op::Claim, key, || self.inner.claim(key, claim, lease));
        self.found(claim, found).await
    }
    async fn claim_with_expiry(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Option<Record>, StoreError> {
        let found = self.forward(Op::ClaimWithExpiry, key, || {
            self.inner.claim_with_expiry(key, claim, lease)
        });
        self.found(claim, found).await
    }
    async fn complete(
        &self,
        key: &str,
        claim: &Claim,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<Fence, StoreError> {
        self.forward(Op::Complete, key, || {
            self.inner.complete(key, claim, payload, ttl)
        })
        .await
    }
    async fn release(&self, key: &str, claim: &Claim) -> Result<Fence, StoreError> {
        self.forward(Op::Release, key, || self.inner.release(key, claim))
            .await
    }
    async fn renew(&self, key: &str, claim: &Claim, lease: Duration) -> Result<Fence, StoreError> {
        self.forward(Op::Renew, key, || self.inner.renew(key, claim, lease))
            .await
    }
    async fn wait(&self, key: &str, holder: &Claim, timeout: Duration) -> Result<(), StoreError> {
        self.forward(Op::Wait, key, || self.inner.wait(key, holder, timeout))
            .await
    }
    async fn inspect(&self, key: &str) -> Result<Inspection, StoreError> {
        self.forward(Op::Inspect, key, || self.inner.inspect(key))
            .await
    }
    async fn forget(&self, key: &str) -> Result<bool, StoreError> {
        self.forward(Op::Forget, key, || self.inner.forget(key))
            .await
    }
    /// Forwarded as it is: not counted, recorded or failed.
    async fn issue_token(
        &self,
        token: &crate::store::TokenKey,
        ttl: Duration,
        max_live: Option<u32>,
    ) -> Result<crate::store::Issue, StoreError> {
        self.inner.issue_token(token, ttl, max_live).await
    }
    /// Forwarded as it is: not counted, recorded or failed.
    async fn redeem_token(
        &self,
        token: &crate::store::TokenKey,
        keep: Duration,
    ) -> Result<crate::store::Redemption, StoreError> {
        self.inner.redeem_token(token, keep).await
    }
    fn describe(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.inner.describe())
    }
}

/// The name [`Forwarding`] had when all it did was tell when a call waits
/// ([`Forwarding::waiting`]); `Watched::new(store)` still builds one.
pub type Watched = Forwarding;

/// A store whose backend is down: every operation fails with
/// [`StoreErrorKind::Unavailable`]. For testing what a service does when its store is
/// unreachable (fail-closed, fail-open, HTTP 503).
#[derive(Debug, Clone, Copy, Default)]
pub struct DownStore;

fn down<T>() -> StoreFuture<'static, T> {
    Box::pin(async {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "connection refused",
        ))
    })
}

impl Store for DownStore {
    async fn claim(&self, _: &str, _: &Claim, _: Duration) -> Result<Option<Record>, StoreError> {
        down().await
    }
    async fn complete(
        &self,
        _: &str,
        _: &Claim,
        _: &[u8],
        _: Duration,
    ) -> Result<Fence, StoreError> {
        down().await
    }
    async fn release(&self, _: &str, _: &Claim) -> Result<Fence, StoreError> {
        down().await
    }
    async fn renew(&self, _: &str, _: &Claim, _: Duration) -> Result<Fence, StoreError> {
        down().await
    }
    async fn wait(&self, _: &str, _: &Claim, _: Duration) -> Result<(), StoreError> {
        down().await
    }
    async fn inspect(&self, _: &str) -> Result<Inspection, StoreError> {
        down().await
    }
    async fn forget(&self, _: &str) -> Result<bool, StoreError> {
        down().await
    }
    async fn issue_token(
        &self,
        _: &crate::store::TokenKey,
        _: Duration,
        _: Option<u32>,
    ) -> Result<crate::store::Issue, StoreError> {
        down().await
    }
    async fn redeem_token(
        &self,
        _: &crate::store::TokenKey,
        _: Duration,
    ) -> Result<crate::store::Redemption, StoreError> {
        down().await
    }
    fn describe(&self) -> String {
        "down".into()
    }
}
