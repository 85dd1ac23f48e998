//! The [`Store`] trait, [`DynStore`] (its boxed form, which a [`StoreHandle`] holds), and the
//! stores that implement it.
//!
//! This file holds the trait and what every store shares; the rest, one concern per file:
//! - `memory.rs`: [`MemoryStore`](memory::MemoryStore), for one process (its waiters wait on
//!   a `Notify` kept in the record they wait for, under the record's own lock);
//! - `redis/`, `postgres/`, `mysql/`: the stores shared by processes and machines, each with its options
//!   (`options.rs`, read from a `Config` there);
//! - `registry.rs`: which store a URL's scheme names (`IDEM_STORE`), the built-in schemes and
//!   those registered by other crates ([`registry::register_scheme`]);
//! - `wake.rs`: the wake registry of the shared stores, the calls of this process that wait
//!   for an in-flight call, by tag, which `redis/waiters.rs` and `postgres/listen.rs` wake;
//! - `stats.rs`: the operator's count of records;
//! - `token_table.rs`: the memory store's tokens;
//! - `token.rs`: where a server-issued token is kept ([`TokenKey`]) and what issuing and
//!   redeeming it answer ([`Issue`], [`Redemption`]);
//! - `tx.rs`: what the transactional mode asks of a database (`TxStore`), which each
//!   transactional backend implements in its own folder, and what it accepts as a connection
//!   ([`TxConnection`](crate::TxConnection)).

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{StoreError, StoreErrorKind};
use crate::record::Fingerprint;
pub use crate::record::{Claim, Record, Token};

pub mod memory;
pub mod registry;
mod stats;
pub use stats::{ScopeStats, Stats};
pub(crate) mod token;
mod token_table;
pub use token::{Issue, Redemption, TokenKey};
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub mod mysql;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod order;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;
#[cfg(any(feature = "postgres", feature = "mysql"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "mysql"))))]
pub use order::ClaimOrder;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub(crate) mod tx;
#[cfg(any(
    feature = "redis",
    feature = "postgres",
    feature = "sqlite",
    feature = "mysql"
))]
// Each backend uses part of it: with one of the two, the other's part goes unused.
#[cfg_attr(not(all(feature = "redis", feature = "postgres")), allow(dead_code))]
mod wake;

/// The future a [`DynStore`] operation returns: a [`Store`]'s, boxed.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Whether a fenced write found its claim still holding the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The claim held the key and the write was applied.
    Held,
    /// The key is no longer held by the claim (its lease expired, another call claimed it, or
    /// it was completed or released): nothing was written.
    Lost,
}

impl Fence {
    /// `Held` when a fenced statement found its claim (its row count said so), else `Lost`.
    #[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
    pub(crate) fn from_held(held: bool) -> Fence {
        if held { Fence::Held } else { Fence::Lost }
    }
}

/// What a store holds under a key, as [`Store::inspect`] reports it: for operators, never on
/// the path of a call. A record past its expiry is [`Absent`](Inspection::Absent).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inspection {
    /// No live record: the next call with this key runs.
    Absent,
    /// A call is running.
    InProgress {
        /// How long the holder's lease still lasts (unless renewed); `None` if the store
        /// cannot tell.
        lease_left: Option<Duration>,
        /// The fingerprint of the request that claimed the key, if it has one.
        fingerprint: Option<Fingerprint>,
    },
    /// A call completed and its result is replayed.
    Completed {
        /// How long the record still lives; `None` if the store cannot tell.
        ttl_left: Option<Duration>,
        /// The fingerprint of the request that stored the result: `None` if it has none, or
        /// if the store cannot tell without decoding more than the envelope's head (a
        /// payload that is not an idem envelope).
        fingerprint: Option<Fingerprint>,
        /// The stored payload's length in bytes (the encoded envelope of the result).
        size: usize,
    },
    /// No live record, and an attempt that began and never ended is remembered (a call with
    /// an [`Abandoned`](crate::Abandoned) policy marked it): reported by
    /// [`idem::inspect`](crate::inspect), never by a store's own `inspect`.
    Abandoned {
        /// The abandoned attempt's number (1 for the first).
        attempt: u32,
        /// When it began, by its process's clock.
        since: std::time::SystemTime,
        /// How many of its recorded steps completed, counted from the first; `None` when the
        /// store cannot tell.
        steps: Option<u32>,
    },
}

impl Inspection {
    /// What a record read as bytes (a claim's byte form or a payload) is, given the lifetime
    /// the store reports for it: for stores that keep records as bytes.
    pub fn of_bytes(bytes: &[u8], left: Option<Duration>) -> Inspection {
        match Claim::from_bytes(bytes) {
            Some(claim) => Inspection::InProgress {
                lease_left: left,
                fingerprint: claim.fingerprint,
            },
            None => Inspection::Completed {
                ttl_left: left,
                fingerprint: crate::codec::fingerprint_of(bytes),
                size: bytes.len(),
            },
        }
    }
}

/// The error of an operation a store does not implement.
fn unsupported(store: &(impl Store + ?Sized), operation: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Other,
        format!(
            "the store {} does not support {operation}",
            store.describe()
        ),
    )
}

/// A backend that keeps one [`Record`] per key with an expiry.
///
/// The engine drives the state machine; a store only has to make each operation atomic on one
/// key, decide expiry by its own clock, and never keep a record without an expiry. Implement
/// it to bring another backend, and prove it with the conformance suite in `idem::testing`.
///
/// Fenced operations ([`complete`](Store::complete), [`release`](Store::release),
/// [`renew`](Store::renew)) apply only while `claim` still holds the key (compare-and-set on the
/// claim) and report [`Fence::Lost`] otherwise.
///
/// Each operation returns a future of the store's own type: implement them as `async fn`
/// (the futures must be `Send`). A [`StoreHandle`] keeps any store behind one pointer and calls
/// it through [`DynStore`], which every `Store` implements:
///
/// ```
/// # use idem_runtime as idem;
/// use std::time::Duration;
/// use idem::{Store, StoreError};
/// use idem::store::{Claim, Fence, Record};
///
/// /// Wraps another store and logs each claim.
/// struct Logged<S>(S);
///
/// impl<S: Store> Store for Logged<S> {
///     async fn claim(&self, key: &str, claim: &Claim, lease: Duration) -> Result<Option<Record>, StoreError> {
///         println!("claim {key}");
///         self.0.claim(key, claim, lease).await
///     }
///     async fn complete(&self, key: &str, claim: &Claim, payload: &[u8], ttl: Duration) -> Result<Fence, StoreError> {
///         self.0.complete(key, claim, payload, ttl).await
///     }
///     async fn release(&self, key: &str, claim: &Claim) -> Result<Fence, StoreError> {
///         self.0.release(key, claim).await
///     }
///     async fn renew(&self, key: &str, claim: &Claim, lease: Duration) -> Result<Fence, StoreError> {
///         self.0.renew(key, claim, lease).await
///     }
///     async fn wait(&self, key: &str, holder: &Claim, timeout: Duration) -> Result<(), StoreError> {
///         self.0.wait(key, holder, timeout).await
///     }
///     fn describe(&self) -> String {
///         format!("logged {}", self.0.describe())
///     }
/// }
///
/// let handle = idem::StoreHandle::new(Logged(idem::MemoryStore::new()));
/// assert_eq!(handle.describe(), "logged memory");
/// ```
pub trait Store: std::any::Any + Send + Sync {
    /// Claims `key` for `claim` with expiry `lease` if no record holds it and returns `None`;
    /// otherwise leaves the record unchanged and returns it.
    fn claim(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;

    /// Like [`claim`](Store::claim), and a completed record it finds tells how long it still
    /// lives ([`Record::Completed::expires_in`]), for the local cache. The engine calls this
    /// one when a local cache is on. Stores that report the lifetime anyway need not override
    /// it; one that reports it at a cost (a Redis `PTTL`) pays only here.
    fn claim_with_expiry(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        self.claim(key, claim, lease)
    }

    /// Replaces `claim` by the completed `payload` with expiry `ttl`, and wakes the waiters.
    fn complete(
        &self,
        key: &str,
        claim: &Claim,
        payload: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<Fence, StoreError>> + Send;

    /// Deletes `claim`, so that the next call runs again, and wakes the waiters.
    fn release(
        &self,
        key: &str,
        claim: &Claim,
    ) -> impl Future<Output = Result<Fence, StoreError>> + Send;

    /// Extends the expiry of `claim` to `lease` from now.
    fn renew(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> impl Future<Output = Result<Fence, StoreError>> + Send;

    /// Waits until `key` is no longer held by `holder` (completed, released, expired or
    /// claimed anew) or `timeout` has passed. It may return early; the caller looks again.
    fn wait(
        &self,
        key: &str,
        holder: &Claim,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// What `key` holds now, for operators (see [`idem::inspect`](crate::inspect)); never
    /// called on the path of a call. A record past its expiry is [`Inspection::Absent`].
    ///
    /// The default fails with a [`StoreError`] of kind [`StoreErrorKind::Other`]: stores
    /// written before it existed keep compiling.
    fn inspect(&self, key: &str) -> impl Future<Output = Result<Inspection, StoreError>> + Send {
        let _ = key;
        std::future::ready(Err(unsupported(self, "inspect")))
    }

    /// Deletes whatever `key` holds (a claim or a completed record), so that the next call
    /// runs again, and wakes the waiters; returns whether a live record was deleted. A call
    /// still running when its claim is forgotten loses its lease: its result is not stored.
    ///
    /// The default fails with a [`StoreError`] of kind [`StoreErrorKind::Other`]: stores
    /// written before it existed keep compiling.
    fn forget(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = key;
        std::future::ready(Err(unsupported(self, "forget")))
    }

    /// How many live records the store holds under the keys that start with `prefix` (the
    /// encoded prefix and its `:`, such as `idem:`), by state and by scope, counting at most
    /// `limit` of them ([`Stats::exact`] is `false` when there were more); for operators (see
    /// [`idem::stats`](crate::stats)), never called on the path of a call. It must not block
    /// the store for long: a store reads its keys in bounded batches (Redis: `SCAN`, never
    /// `KEYS`). A store that reads the keys starts from `Stats::new(0, 0, true)` and counts each
    /// record with [`Stats::count`], which files it under its scope; one built with counts
    /// (`Stats::new(in_progress, completed, exact)`) reports no scopes.
    ///
    /// The default fails with a [`StoreError`] of kind [`StoreErrorKind::Other`]: stores
    /// written before it existed keep compiling.
    fn stats(
        &self,
        prefix: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Stats, StoreError>> + Send {
        let _ = (prefix, limit);
        std::future::ready(Err(unsupported(self, "stats")))
    }

    /// Stores the server-issued token `token` (see [`idem::tokens`](crate::tokens)), live for
    /// `ttl`, in one atomic step; with `max_live`, only while its scope holds fewer than that
    /// many tokens issued with a bound whose ttl has not ended (redeemed or not: the bound is a
    /// rate limit per ttl), and answers [`Issue::Full`] otherwise. Token records live apart
    /// from call records (see [`TokenKey`]): no call key reaches them.
    ///
    /// The default fails with a [`StoreError`] of kind [`StoreErrorKind::Other`]: stores
    /// written before it existed keep compiling.
    fn issue_token(
        &self,
        token: &TokenKey,
        ttl: Duration,
        max_live: Option<u32>,
    ) -> impl Future<Output = Result<Issue, StoreError>> + Send {
        let _ = (token, ttl, max_live);
        std::future::ready(Err(unsupported(self, "tokens")))
    }

    /// Redeems `token` in one atomic step: a live token not yet redeemed becomes redeemed
    /// ([`Redemption::Valid`], for exactly one of any number of concurrent redemptions) and
    /// is kept, as redeemed, for at least `keep` more, so that a second submission with it
    /// is told [`Redemption::Redeemed`] for as long as the call it keys is replayed; an
    /// absent or expired token is [`Redemption::Unknown`].
    ///
    /// The token is found by its key, never by comparing it with others, so the time the
    /// store takes does not depend on how much of a guess matches a real token.
    ///
    /// The default fails with a [`StoreError`] of kind [`StoreErrorKind::Other`]: stores
    /// written before it existed keep compiling.
    fn redeem_token(
        &self,
        token: &TokenKey,
        keep: Duration,
    ) -> impl Future<Output = Result<Redemption, StoreError>> + Send {
        let _ = (token, keep);
        std::future::ready(Err(unsupported(self, "tokens")))
    }

    /// A short description for logs and examples, such as `memory` or `redis://host:6379/0`.
    fn describe(&self) -> String;
}

/// [`Store`] behind a pointer: each operation's future boxed ([`StoreFuture`]), so that a
/// [`StoreHandle`] holds any store as one type. Every `Store` implements it; implement
/// `Store`, never this.
pub trait DynStore: std::any::Any + Send + Sync {
    /// [`Store::claim`].
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Record>>;
    /// [`Store::claim_with_expiry`].
    fn claim_with_expiry<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Record>>;
    /// [`Store::complete`].
    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        payload: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Fence>;
    /// [`Store::release`].
    fn release<'a>(&'a self, key: &'a str, claim: &'a Claim) -> StoreFuture<'a, Fence>;
    /// [`Store::renew`].
    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Fence>;
    /// [`Store::wait`].
    fn wait<'a>(
        &'a self,
        key: &'a str,
        holder: &'a Claim,
        timeout: Duration,
    ) -> StoreFuture<'a, ()>;
    /// [`Store::inspect`].
    fn inspect<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Inspection>;
    /// [`Store::forget`].
    fn forget<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;
    /// [`Store::stats`].
    fn stats<'a>(&'a self, prefix: &'a str, limit: usize) -> StoreFuture<'a, Stats>;
    /// [`Store::issue_token`].
    fn issue_token<'a>(
        &'a self,
        token: &'a TokenKey,
        ttl: Duration,
        max_live: Option<u32>,
    ) -> StoreFuture<'a, Issue>;
    /// [`Store::redeem_token`].
    fn redeem_token<'a>(
        &'a self,
        token: &'a TokenKey,
        keep: Duration,
    ) -> StoreFuture<'a, Redemption>;
    /// [`Store::describe`].
    fn describe(&self) -> String;
}

impl<S: Store> DynStore for S {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Record>> {
        Box::pin(Store::claim(self, key, claim, lease))
    }
    fn claim_with_expiry<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Record>> {
        Box::pin(Store::claim_with_expiry(self, key, claim, lease))
    }
    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        payload: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Fence> {
        Box::pin(Store::complete(self, key, claim, payload, ttl))
    }
    fn release<'a>(&'a self, key: &'a str, claim: &'a Claim) -> StoreFuture<'a, Fence> {
        Box::pin(Store::release(self, key, claim))
    }
    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Fence> {
        Box::pin(Store::renew(self, key, claim, lease))
    }
    fn wait<'a>(
        &'a self,
        key: &'a str,
        holder: &'a Claim,
        timeout: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(Store::wait(self, key, holder, timeout))
    }
    fn inspect<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Inspection> {
        Box::pin(Store::inspect(self, key))
    }
    fn forget<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(Store::forget(self, key))
    }
    fn stats<'a>(&'a self, prefix: &'a str, limit: usize) -> StoreFuture<'a, Stats> {
        Box::pin(Store::stats(self, prefix, limit))
    }
    fn issue_token<'a>(
        &'a self,
        token: &'a TokenKey,
        ttl: Duration,
        max_live: Option<u32>,
    ) -> StoreFuture<'a, Issue> {
        Box::pin(Store::issue_token(self, token, ttl, max_live))
    }
    fn redeem_token<'a>(
        &'a self,
        token: &'a TokenKey,
        keep: Duration,
    ) -> StoreFuture<'a, Redemption> {
        Box::pin(Store::redeem_token(self, token, keep))
    }
    fn describe(&self) -> String {
        Store::describe(self)
    }
}

/// A shared handle to any [`Store`]: what [`with_store`](crate::with_store), the `store = `
/// option and [`Config`](crate::Config) produce. Cloning it is cheap. Its operations are those
/// of [`DynStore`] (each future boxed).
#[derive(Clone)]
pub struct StoreHandle(Arc<dyn DynStore>);

impl StoreHandle {
    /// Wraps a store.
    pub fn new<S: Store>(store: S) -> Self {
        StoreHandle(Arc::new(store))
    }

    /// Wraps a store that is already shared.
    pub fn from_arc<S: Store>(store: Arc<S>) -> Self {
        StoreHandle(store)
    }

    /// The store as its own type, if it is an `S`.
    pub fn downcast_ref<S: Store>(&self) -> Option<&S> {
        let any: &dyn std::any::Any = &*self.0;
        any.downcast_ref::<S>()
    }
}

impl<S: Store> From<S> for StoreHandle {
    fn from(store: S) -> Self {
        StoreHandle::new(store)
    }
}

impl Deref for StoreHandle {
    type Target = dyn DynStore;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoreHandle")
            .field(&self.0.describe())
            .finish()
    }
}
