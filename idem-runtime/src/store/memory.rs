//! [`MemoryStore`]: the embedded store, for one process.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashbrown::HashTable;
use hashbrown::hash_table::OccupiedEntry;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{Error, StoreError, StoreErrorKind};
use crate::record::{Claim, Record};
use crate::store::token_table::TokenTable;
use crate::store::{Fence, Inspection, Issue, Redemption, Stats, Store, TokenKey};

const SHARDS: usize = 16;

/// The default capacity, in records: [`Config::memory_capacity`](Config#structfield.memory_capacity)'s
/// default, where it is written.
pub const DEFAULT_CAPACITY: usize = crate::config::MEMORY_CAPACITY;

/// An in-process [`Store`]: records in sharded hash tables, expiry by [`Instant`], waiters woken
/// by [`Notify`] (no polling).
///
/// Its guarantee holds within one process: two processes with a `MemoryStore` each run a key
/// once each. It holds at most `capacity` records, exactly, however many tasks claim at once;
/// when full it first drops expired records and then refuses new claims with a
/// [`StoreErrorKind::Full`] error, so that a completed record is never evicted early (which
/// would let its key run again). A full store refuses a claim without looking at its records
/// until one of them may have expired: a flood of new keys costs no sweep per claim. Cloning
/// it shares the records.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<HashTable<Entry>>]>,
    /// One hash per key picks both its shard and its place in the shard's table.
    hasher: RandomState,
    capacity: usize,
    /// Records held across all shards, expired ones not yet dropped included. A new record
    /// reserves its place here before it is inserted, so this never exceeds `capacity`.
    records: AtomicUsize,
    /// No record expires before this (nanoseconds after `epoch`): a lower bound, lowered by
    /// every write and raised only by a sweep, so a full store knows when a sweep can free a
    /// place.
    next_expiry: AtomicU64,
    epoch: Instant,
    /// Held by the one sweep running; other refused claims do not sweep too.
    sweeping: Mutex<()>,
    /// The server-issued tokens, apart from the records: at most `capacity` of them too.
    tokens: TokenTable,
    /// How many sweeps ran, for the tests of their cost.
    #[cfg(test)]
    sweeps: AtomicUsize,
}

/// One record, held in its table's slot. The key and the completed payload share one
/// allocation, so a replay reads two places: the slot, then these bytes; shared, so that the
/// engine's replay takes the payload without copying it (see [`MemoryStore::claim_shared`]).
struct Entry {
    /// The key's bytes, followed by the payload once the call completed.
    bytes: Arc<[u8]>,
    key_len: usize,
    expires_at: Instant,
    /// The claim and its waiters while the call is in progress; `None` once it completed.
    pending: Option<Box<Pending>>,
}

/// A call in progress: who holds the key, and who waits for it.
struct Pending {
    claim: Claim,
    waiters: Option<Arc<Notify>>,
}

/// What a claim of a [`MemoryStore`] found, as the engine takes it: a completed payload
/// shared with the store (a reference counted, not a copy made under the shard's lock).
pub(crate) enum Shared {
    /// A call holds the key.
    InProgress(Claim),
    /// A completed record: its payload is `bytes[start..]`.
    Completed {
        bytes: Arc<[u8]>,
        start: usize,
        expires_in: Duration,
    },
}

impl Shared {
    /// The [`Record`] a store answers with (the payload copied).
    pub(crate) fn into_record(self) -> Record {
        match self {
            Shared::InProgress(claim) => Record::InProgress(claim),
            Shared::Completed {
                bytes,
                start,
                expires_in,
            } => Record::Completed {
                payload: bytes[start..].to_vec(),
                expires_in: Some(expires_in),
            },
        }
    }
}

impl Entry {
    fn claimed(key: &str, claim: &Claim, expires_at: Instant) -> Entry {
        Entry {
            bytes: key.as_bytes().into(),
            key_len: key.len(),
            expires_at,
            pending: Some(Box::new(Pending {
                claim: claim.clone(),
                waiters: None,
            })),
        }
    }

    fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len]
    }

    fn live(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    fn held_by(&self, claim: &Claim, now: Instant) -> bool {
        self.live(now) && self.pending.as_ref().is_some_and(|p| p.claim == *claim)
    }

    /// What a claim of this live entry finds, its payload shared.
    fn shared(&self, now: Instant) -> Shared {
        match &self.pending {
            Some(pending) => Shared::InProgress(pending.claim.clone()),
            None => Shared::Completed {
                bytes: Arc::clone(&self.bytes),
                start: self.key_len,
                expires_in: self.expires_at - now,
            },
        }
    }

    /// What this live entry is, for an operator.
    fn inspection(&self, now: Instant) -> Inspection {
        let left = Some(self.expires_at - now);
        match &self.pending {
            Some(pending) => Inspection::InProgress {
                lease_left: left,
                fingerprint: pending.claim.fingerprint,
            },
            None => Inspection::of_bytes(&self.bytes[self.key_len..], left),
        }
    }

    /// Makes this expired entry `claim`'s, waking whoever waited on the old holder.
    fn claim_anew(&mut self, claim: &Claim, expires_at: Instant) {
        self.wake();
        if self.bytes.len() > self.key_len {
            self.bytes = Arc::from(self.key());
        }
        self.expires_at = expires_at;
        self.pending = Some(Box::new(Pending {
            claim: claim.clone(),
            waiters: None,
        }));
    }

    /// Replaces the claim by the completed `payload`, and wakes the waiters.
    fn complete(&mut self, payload: &[u8], expires_at: Instant) {
        // One allocation of the exact size (the iterator knows its length).
        self.bytes = self.key().iter().chain(payload).copied().collect();
        self.expires_at = expires_at;
        self.wake();
        self.pending = None;
    }

    /// The waiters of the call in progress, registered now if none waited yet.
    fn waiters(&mut self) -> Option<Arc<Notify>> {
        let pending = self.pending.as_mut()?;
        Some(pending.waiters.get_or_insert_with(Default::default).clone())
    }

    fn wake(&mut self) {
        if let Some(waiters) = self.pending.as_mut().and_then(|p| p.waiters.take()) {
            waiters.notify_waiters();
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// A store holding at most [`DEFAULT_CAPACITY`] records.
    pub fn new() -> Self {
        MemoryStore::with_capacity(DEFAULT_CAPACITY)
    }

    /// A store holding at most `config.memory_capacity` records: what [`init`](crate::init)
    /// does for `IDEM_STORE=memory`. It never fails; it is `async` and returns a `Result` as
    /// every store's `connect` does.
    pub async fn connect(config: &Config) -> Result<MemoryStore, Error> {
        Ok(MemoryStore::with_capacity(config.memory_capacity))
    }

    /// A store holding at most `capacity` records (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                hasher: RandomState::new(),
                capacity: capacity.max(1),
                records: AtomicUsize::new(0),
                next_expiry: AtomicU64::new(u64::MAX),
                epoch: Instant::now(),
                sweeping: Mutex::new(()),
                tokens: TokenTable::default(),
                #[cfg(test)]
                sweeps: AtomicUsize::new(0),
            }),
        }
    }

    /// How many records it holds, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.inner.records.load(Ordering::Relaxed)
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `at` as nanoseconds after the epoch.
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.inner.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Notes that a record now expires at `at`.
    fn expires(&self, at: Instant) {
        self.inner
            .next_expiry
            .fetch_min(self.nanos(at), Ordering::Relaxed);
    }

    /// Takes a place for a new record, unless the store is full.
    fn reserve(&self) -> bool {
        self.inner
            .records
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.inner.capacity).then_some(held + 1)
            })
            .is_ok()
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.inner.hasher.hash_one(key)
    }

    /// The shard of the key whose hash is `hash`. Its bits 48 to 51: the table places a key by
    /// the low bits and tells keys apart by the top seven, so the shard takes neither.
    fn shard(&self, hash: u64) -> MutexGuard<'_, HashTable<Entry>> {
        lock(&self.inner.shards[(hash >> 48) as usize % SHARDS])
    }

    /// Applies a fenced change to the entry `claim` holds.
    fn fenced(
        &self,
        key: &str,
        claim: &Claim,
        change: impl FnOnce(OccupiedEntry<'_, Entry>),
    ) -> Fence {
        let now = Instant::now();
        let hash = self.hash(key.as_bytes());
        let mut shard = self.shard(hash);
        match shard.find_entry(hash, |e| e.key() == key.as_bytes()) {
            Ok(entry) if entry.get().held_by(claim, now) => {
                change(entry);
                Fence::Held
            }
            _ => Fence::Lost,
        }
    }

    /// [`Store::claim`], answering with the completed payload shared, not copied: the engine's
    /// claim on the in-process store, which it calls as itself (no boxed future, no copy).
    pub(crate) fn claim_shared(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Option<Shared>, StoreError> {
        match self.try_claim(key, claim, lease) {
            Err(full) if full.kind() == StoreErrorKind::Full && self.sweep_if_due() => {
                self.try_claim(key, claim, lease)
            }
            result => result,
        }
    }

    /// Claims `key` if it is free and the store has room.
    fn try_claim(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Option<Shared>, StoreError> {
        let now = Instant::now();
        let hash = self.hash(key.as_bytes());
        let mut shard = self.shard(hash);
        match shard.find_mut(hash, |e| e.key() == key.as_bytes()) {
            Some(entry) if entry.live(now) => Ok(Some(entry.shared(now))),
            Some(expired) => {
                // The lease or ttl ended: the key is free, and whoever waited on the old
                // holder looks again. (The sweep's bound is at or before the old expiry
                // already; noted anyway, as every write does.)
                let expires_at = now + lease;
                expired.claim_anew(claim, expires_at);
                self.expires(expires_at);
                Ok(None)
            }
            None if !self.reserve() => Err(self.full()),
            None => {
                shard.insert_unique(hash, Entry::claimed(key, claim, now + lease), |e| {
                    self.hash(e.key())
                });
                self.expires(now + lease);
                Ok(None)
            }
        }
    }

    /// Drops the expired records when one may have expired and no other sweep runs; returns
    /// whether it swept. A full store of live records refuses claims without sweeping.
    fn sweep_if_due(&self) -> bool {
        if self.nanos(Instant::now()) < self.inner.next_expiry.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(_sweeping) = self.inner.sweeping.try_lock() else {
            return false;
        };
        self.sweep();
        true
    }

    /// Drops every expired record, one shard at a time, and learns the earliest expiry of the
    /// rest. The bound is reset first: a write during the sweep lowers it again, and every
    /// record written before is seen by the sweep.
    fn sweep(&self) {
        #[cfg(test)]
        self.inner.sweeps.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        self.inner.next_expiry.store(u64::MAX, Ordering::Relaxed);
        for shard in &self.inner.shards {
            let mut shard = lock(shard);
            let before = shard.len();
            let mut earliest = None::<Instant>;
            shard.retain(|entry| {
                let live = entry.live(now);
                if live {
                    earliest = Some(earliest.map_or(entry.expires_at, |e| e.min(entry.expires_at)));
                } else {
                    entry.wake();
                }
                live
            });
            self.inner
                .records
                .fetch_sub(before - shard.len(), Ordering::AcqRel);
            if let Some(earliest) = earliest {
                self.expires(earliest);
            }
        }
    }

    fn full(&self) -> StoreError {
        StoreError::new(
            StoreErrorKind::Full,
            format!(
                "the memory store is full ({} records); raise memory_capacity or shorten the ttl",
                self.inner.capacity
            ),
        )
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a shard is locked cannot leave an entry half-written (each change is a
    // single assignment), so the data stays usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store for MemoryStore {
    async fn claim(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Option<Record>, StoreError> {
        let found = self.claim_shared(key, claim, lease)?;
        Ok(found.map(Shared::into_record))
    }

    async fn complete(
        &self,
        key: &str,
        claim: &Claim,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<Fence, StoreError> {
        let fence = self.fenced(key, claim, |mut entry| {
            let expires_at = Instant::now() + ttl;
            entry.get_mut().complete(payload, expires_at);
            self.expires(expires_at);
        });
        Ok(fence)
    }

    async fn release(&self, key: &str, claim: &Claim) -> Result<Fence, StoreError> {
        let fence = self.fenced(key, claim, |entry| {
            entry.remove().0.wake();
            self.inner.records.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(fence)
    }

    async fn renew(&self, key: &str, claim: &Claim, lease: Duration) -> Result<Fence, StoreError> {
        let fence = self.fenced(key, claim, |mut entry| {
            let expires_at = Instant::now() + lease;
            entry.get_mut().expires_at = expires_at;
            self.expires(expires_at);
        });
        Ok(fence)
    }

    async fn wait(&self, key: &str, holder: &Claim, timeout: Duration) -> Result<(), StoreError> {
        let hash = self.hash(key.as_bytes());
        let same_key = |e: &Entry| e.key() == key.as_bytes();
        let (waiters, lease_end) = {
            let now = Instant::now();
            let mut shard = self.shard(hash);
            match shard.find_mut(hash, same_key) {
                Some(entry) if entry.held_by(holder, now) => match entry.waiters() {
                    Some(waiters) => (waiters, entry.expires_at),
                    None => return Ok(()),
                },
                _ => return Ok(()),
            }
        };
        let woken = waiters.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // The holder may have finished between the look above and `enable`: look again
        // now that no wake-up can be missed.
        let still_held = self
            .shard(hash)
            .find(hash, same_key)
            .is_some_and(|e| e.held_by(holder, Instant::now()));
        if still_held {
            let until = (Instant::now() + timeout).min(lease_end);
            let _ = tokio::time::timeout_at(until, woken).await;
        }
        Ok(())
    }

    async fn inspect(&self, key: &str) -> Result<Inspection, StoreError> {
        let now = Instant::now();
        let hash = self.hash(key.as_bytes());
        let inspection = match self.shard(hash).find(hash, |e| e.key() == key.as_bytes()) {
            Some(entry) if entry.live(now) => entry.inspection(now),
            _ => Inspection::Absent,
        };
        Ok(inspection)
    }

    /// Removes the entry, expired or not, and wakes its waiters; `true` if it was live.
    async fn forget(&self, key: &str) -> Result<bool, StoreError> {
        let now = Instant::now();
        let hash = self.hash(key.as_bytes());
        let found = self
            .shard(hash)
            .find_entry(hash, |e| e.key() == key.as_bytes())
            .ok()
            .map(|entry| entry.remove().0);
        let live = match found {
            Some(mut entry) => {
                self.inner.records.fetch_sub(1, Ordering::AcqRel);
                entry.wake();
                entry.live(now)
            }
            None => false,
        };
        Ok(live)
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }

    /// Walks the shards one at a time, each locked while it is read; [`Stats::store_keys`]
    /// is the records held, expired ones not yet dropped included.
    async fn stats(&self, prefix: &str, limit: usize) -> Result<Stats, StoreError> {
        let now = Instant::now();
        let mut stats = Stats::new(0, 0, true);
        'shards: for shard in self.inner.shards.iter() {
            for entry in lock(shard).iter() {
                if !entry.live(now) || !entry.key().starts_with(prefix.as_bytes()) {
                    continue;
                }
                if stats.total() == limit as u64 {
                    stats.exact = false;
                    break 'shards;
                }
                stats.count(prefix, entry.key(), entry.pending.is_some());
            }
        }
        self.inner.tokens.count(prefix, &mut stats);
        let held = self.inner.records.load(Ordering::Acquire) as u64;
        let stats = stats.with_store_keys(Some(held));
        Ok(stats)
    }

    /// One lock of the token table: the bound's count and the insert in one step.
    async fn issue_token(
        &self,
        token: &TokenKey,
        ttl: Duration,
        max_live: Option<u32>,
    ) -> Result<Issue, StoreError> {
        self.inner
            .tokens
            .issue(token, ttl, max_live, self.inner.capacity)
    }

    /// One lock of the token table: look up by key, mark redeemed.
    async fn redeem_token(
        &self,
        token: &TokenKey,
        keep: Duration,
    ) -> Result<Redemption, StoreError> {
        let redeemed = self.inner.tokens.redeem(token, keep);
        Ok(redeemed)
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.inner.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// Polls a memory store's future, which is ready at once.
    fn now<T>(future: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let waker = std::task::Waker::noop();
        match std::pin::pin!(future).poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => unreachable!("memory store operations are ready at once"),
        }
    }

    fn claim_now(
        store: &MemoryStore,
        key: &str,
        lease: Duration,
    ) -> Result<Option<Record>, StoreError> {
        now(store.claim(key, &Claim::new(None), lease))
    }

    /// Threads claim and release keys of their own on a store with room for a few, so that
    /// nearly every claim races another one for the last place.
    #[test]
    fn the_capacity_is_exact_under_a_race_for_the_last_places() {
        const CAPACITY: usize = 3;
        const THREADS: usize = 8;
        const CLAIMS: usize = 20_000;
        let store = MemoryStore::with_capacity(CAPACITY);
        let held = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let start = Barrier::new(THREADS);
        std::thread::scope(|threads| {
            for t in 0..THREADS {
                let (store, held, most, start) = (&store, &held, &most, &start);
                threads.spawn(move || {
                    start.wait();
                    for n in 0..CLAIMS {
                        let key = format!("{t}-{n}");
                        let claim = Claim::new(None);
                        if now(store.claim(&key, &claim, Duration::from_secs(60))).is_err() {
                            continue;
                        }
                        // Counted after the claim and uncounted before the release: never
                        // more than the records the store holds.
                        let now_held = held.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now_held.max(store.len()), Ordering::SeqCst);
                        held.fetch_sub(1, Ordering::SeqCst);
                        assert_eq!(now(store.release(&key, &claim)).unwrap(), Fence::Held);
                    }
                });
            }
        });
        assert!(
            most.load(Ordering::SeqCst) <= CAPACITY,
            "{most:?} records held at once"
        );
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn a_full_store_of_live_records_refuses_without_sweeping() {
        let store = MemoryStore::with_capacity(1_000);
        for n in 0..1_000 {
            claim_now(&store, &format!("live-{n}"), Duration::from_secs(60)).unwrap();
        }
        for n in 0..10_000 {
            let refused = claim_now(&store, &format!("new-{n}"), Duration::from_secs(60));
            assert_eq!(refused.unwrap_err().kind(), StoreErrorKind::Full);
        }
        assert_eq!(store.inner.sweeps.load(Ordering::Relaxed), 0);
        // A live key still replays (its record is found, not refused).
        assert!(
            claim_now(&store, "live-7", Duration::from_secs(60))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn expired_records_make_room_with_one_sweep() {
        let store = MemoryStore::with_capacity(100);
        for n in 0..100 {
            claim_now(&store, &format!("short-{n}"), Duration::from_millis(5)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        for n in 0..100 {
            assert_eq!(
                claim_now(&store, &format!("next-{n}"), Duration::from_secs(60)).unwrap(),
                None
            );
        }
        assert_eq!(
            store.inner.sweeps.load(Ordering::Relaxed),
            1,
            "one sweep freed every place"
        );
        assert_eq!(store.len(), 100);
        let refused = claim_now(&store, "one-more", Duration::from_secs(60));
        assert_eq!(refused.unwrap_err().kind(), StoreErrorKind::Full);
        assert_eq!(
            store.inner.sweeps.load(Ordering::Relaxed),
            1,
            "the new records are live: no sweep"
        );
    }

    #[tokio::test]
    async fn forget_wakes_the_waiters_and_frees_the_key() {
        let store = MemoryStore::new();
        let holder = Claim::new(None);
        let lease = Duration::from_secs(60);
        assert_eq!(now(store.claim("k", &holder, lease)).unwrap(), None);
        let waiter = {
            let (store, holder) = (store.clone(), holder.clone());
            tokio::spawn(async move { store.wait("k", &holder, lease).await })
        };
        // Forgotten until the waiter has registered: a forget before would leave it nothing
        // to wait for, which ends the wait as well.
        tokio::task::yield_now().await;
        assert!(now(store.forget("k")).unwrap());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is woken")
            .unwrap()
            .unwrap();
        assert_eq!(now(store.inspect("k")).unwrap(), Inspection::Absent);
        assert!(!now(store.forget("k")).unwrap());
        assert_eq!(store.len(), 0);
    }

    /// Paused time: a lease ends exactly at its length. Until then the claim holds the key
    /// and is seen; from that instant the key is free, the old holder is fenced out (whatever
    /// its token: a takeover is told apart by the claim), and a new claim takes it.
    #[tokio::test(start_paused = true)]
    async fn a_claim_holds_until_the_instant_its_lease_ends() {
        let store = MemoryStore::new();
        let lease = Duration::from_secs(10);
        let first = Claim::new(None);
        assert_eq!(now(store.claim("k", &first, lease)).unwrap(), None);
        tokio::time::advance(lease - Duration::from_nanos(1)).await;
        let second = Claim::new(None);
        assert_eq!(
            now(store.claim("k", &second, lease)).unwrap(),
            Some(Record::InProgress(first.clone())),
            "a nanosecond before its end the lease holds"
        );
        assert_eq!(
            now(store.inspect("k")).unwrap(),
            Inspection::InProgress {
                lease_left: Some(Duration::from_nanos(1)),
                fingerprint: None
            }
        );
        let stats = now(store.stats("", 10)).unwrap();
        assert_eq!((stats.in_progress, stats.completed), (1, 0));

        tokio::time::advance(Duration::from_nanos(1)).await;
        assert_eq!(now(store.inspect("k")).unwrap(), Inspection::Absent);
        let stats = now(store.stats("", 10)).unwrap();
        assert_eq!((stats.in_progress, stats.completed), (0, 0));
        assert_eq!(now(store.renew("k", &first, lease)).unwrap(), Fence::Lost);
        assert_eq!(now(store.release("k", &first)).unwrap(), Fence::Lost);
        assert_eq!(store.len(), 1, "a lost release drops nothing");
        assert_eq!(
            now(store.complete("k", &first, b"late", lease)).unwrap(),
            Fence::Lost
        );
        assert_eq!(now(store.claim("k", &second, lease)).unwrap(), None);
        assert_eq!(
            now(store.complete("k", &first, b"late", lease)).unwrap(),
            Fence::Lost
        );
        assert_eq!(
            now(store.complete("k", &second, b"v", lease)).unwrap(),
            Fence::Held
        );
        assert_eq!(
            now(store.claim("k", &Claim::new(None), lease)).unwrap(),
            Some(Record::Completed {
                payload: b"v".to_vec(),
                expires_in: Some(lease)
            })
        );
        assert_eq!(store.len(), 1);
    }

    /// Paused time: a renewal moves the end of the lease to a full lease from the instant of
    /// the renewal, for its holder only; the key is then held until that instant, not before
    /// and not after.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_holds_the_key_a_full_lease_from_its_instant() {
        let store = MemoryStore::new();
        let lease = Duration::from_secs(10);
        let holder = Claim::new(None);
        now(store.claim("k", &holder, lease)).unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            now(store.renew("k", &Claim::new(None), lease)).unwrap(),
            Fence::Lost,
            "only the holder renews"
        );
        assert_eq!(now(store.renew("k", &holder, lease)).unwrap(), Fence::Held);
        assert_eq!(
            now(store.inspect("k")).unwrap(),
            Inspection::InProgress {
                lease_left: Some(lease),
                fingerprint: None
            }
        );
        tokio::time::advance(lease - Duration::from_nanos(1)).await;
        assert_eq!(
            now(store.claim("k", &Claim::new(None), lease)).unwrap(),
            Some(Record::InProgress(holder.clone())),
            "held past its first lease, until the renewed one ends"
        );
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert_eq!(now(store.renew("k", &holder, lease)).unwrap(), Fence::Lost);
        assert_eq!(
            now(store.claim("k", &Claim::new(None), lease)).unwrap(),
            None
        );
    }

    /// The engine's claim shares the completed payload with the store instead of copying it:
    /// every replay holds the record's own allocation, and the store's answer through
    /// [`Store::claim`] is the same bytes.
    #[test]
    fn a_shared_claim_answers_with_the_record_s_own_bytes() {
        let store = MemoryStore::with_capacity(4);
        let (key, claim, lease) = ("idem:s:k", Claim::new(None), Duration::from_secs(60));
        assert!(matches!(now(store.claim(key, &claim, lease)), Ok(None)));
        let payload = b"{\"v\":1,\"ok\":7}";
        now(store.complete(key, &claim, payload, lease)).unwrap();
        let shared = |store: &MemoryStore| match store.claim_shared(key, &Claim::new(None), lease) {
            Ok(Some(Shared::Completed { bytes, start, .. })) => (bytes, start),
            _ => panic!("a completed record"),
        };
        let ((first, start), (second, _)) = (shared(&store), shared(&store));
        assert!(Arc::ptr_eq(&first, &second), "one allocation, shared");
        assert_eq!(&first[start..], payload);
        assert_eq!(&first[..start], key.as_bytes());
        // Held by the store and by both answers.
        assert_eq!(Arc::strong_count(&first), 3);
        match claim_now(&store, key, lease) {
            Ok(Some(Record::Completed {
                payload: copied, ..
            })) => assert_eq!(copied, payload),
            other => panic!("a completed record: {other:?}"),
        }
    }

    /// A completed record expires at its ttl's instant too; a claim then starts anew with no
    /// payload left, and forgetting an expired record says it was not live.
    #[tokio::test(start_paused = true)]
    async fn a_completed_record_is_replayed_until_the_instant_its_ttl_ends() {
        let store = MemoryStore::new();
        let (lease, ttl) = (Duration::from_secs(5), Duration::from_secs(30));
        let first = Claim::new(None);
        now(store.claim("k", &first, lease)).unwrap();
        assert_eq!(
            now(store.complete("k", &first, b"v", ttl)).unwrap(),
            Fence::Held
        );
        tokio::time::advance(ttl - Duration::from_nanos(1)).await;
        assert!(matches!(
            now(store.claim("k", &Claim::new(None), lease)).unwrap(),
            Some(Record::Completed { .. })
        ));
        tokio::time::advance(Duration::from_nanos(1)).await;
        let second = Claim::new(None);
        assert_eq!(now(store.claim("k", &second, lease)).unwrap(), None);
        assert_eq!(
            now(store.claim("k", &Claim::new(None), lease)).unwrap(),
            Some(Record::InProgress(second.clone())),
            "the new claim holds the key, with the old payload gone"
        );
        assert_eq!(
            now(store.complete("k", &second, b"w", ttl)).unwrap(),
            Fence::Held
        );
        assert!(matches!(
            now(store.claim("k", &Claim::new(None), lease)).unwrap(),
            Some(Record::Completed { payload, .. }) if payload == b"w"
        ));
        tokio::time::advance(ttl).await;
        assert!(!now(store.forget("k")).unwrap(), "expired: not live");
        assert_eq!(store.len(), 0);
    }

    /// Only the holder of a live claim is waited for, and no longer than its lease or the
    /// timeout, whichever ends first.
    #[tokio::test(start_paused = true)]
    async fn a_wait_lasts_while_the_holder_holds_and_no_longer() {
        let store = MemoryStore::new();
        let lease = Duration::from_secs(60);
        let holder = Claim::new(None);
        now(store.claim("k", &holder, lease)).unwrap();
        let took = |start: Instant| Instant::now() - start;

        let start = Instant::now();
        store.wait("k", &Claim::new(None), lease).await.unwrap();
        store.wait("absent", &holder, lease).await.unwrap();
        assert_eq!(took(start), Duration::ZERO, "nothing to wait for");

        let start = Instant::now();
        store
            .wait("k", &holder, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            took(start),
            Duration::from_secs(5),
            "the timeout ends the wait"
        );

        let start = Instant::now();
        store.wait("k", &holder, lease * 10).await.unwrap();
        assert_eq!(
            took(start),
            lease - Duration::from_secs(5),
            "the lease ends the wait"
        );

        let start = Instant::now();
        store.wait("k", &holder, lease).await.unwrap();
        assert_eq!(
            took(start),
            Duration::ZERO,
            "an expired holder holds nothing"
        );
    }

    /// Paused time: a full store sweeps at the instant its first record expires, not before.
    #[tokio::test(start_paused = true)]
    async fn a_full_store_sweeps_from_the_instant_a_record_expires() {
        let store = MemoryStore::with_capacity(1);
        let lease = Duration::from_secs(1);
        now(store.claim("a", &Claim::new(None), lease)).unwrap();
        tokio::time::advance(lease - Duration::from_nanos(1)).await;
        let refused = now(store.claim("b", &Claim::new(None), lease));
        assert_eq!(refused.unwrap_err().kind(), StoreErrorKind::Full);
        assert_eq!(store.inner.sweeps.load(Ordering::Relaxed), 0);
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert_eq!(
            now(store.claim("b", &Claim::new(None), lease)).unwrap(),
            None
        );
        assert_eq!(store.inner.sweeps.load(Ordering::Relaxed), 1);
        assert_eq!(store.len(), 1);
    }

    /// A sweep keeps the earliest expiry of the records it keeps, in every shard, so that the
    /// next one runs when they expire.
    #[tokio::test(start_paused = true)]
    async fn a_sweep_learns_when_the_next_record_expires() {
        const KEYS: usize = 256;
        let store = MemoryStore::with_capacity(2 * KEYS + 1);
        let second = Duration::from_secs(1);
        now(store.claim("gone", &Claim::new(None), second)).unwrap();
        for n in 0..KEYS {
            now(store.claim(&format!("soon-{n}"), &Claim::new(None), second * 2)).unwrap();
            now(store.claim(&format!("late-{n}"), &Claim::new(None), second * 60)).unwrap();
        }
        tokio::time::advance(second).await;
        assert_eq!(
            now(store.claim("x", &Claim::new(None), second * 60)).unwrap(),
            None
        );
        assert_eq!(store.inner.sweeps.load(Ordering::Relaxed), 1);
        assert_eq!(store.len(), 2 * KEYS + 1);
        tokio::time::advance(second).await;
        assert_eq!(
            now(store.claim("y", &Claim::new(None), second * 60)).unwrap(),
            None
        );
        assert_eq!(store.inner.sweeps.load(Ordering::Relaxed), 2);
        assert_eq!(store.len(), KEYS + 2);
    }

    /// Keys are spread over every shard (256 keys leave one of 16 empty about once in a
    /// million runs).
    #[test]
    fn keys_are_spread_over_the_shards() {
        let store = MemoryStore::new();
        for n in 0..256 {
            claim_now(&store, &format!("k-{n}"), Duration::from_secs(60)).unwrap();
        }
        let used = store
            .inner
            .shards
            .iter()
            .filter(|shard| !lock(shard).is_empty())
            .count();
        assert_eq!(used, SHARDS);
    }

    /// `connect` honours the configured capacity; a store says what it is and holds.
    #[tokio::test]
    async fn a_connected_store_has_the_configured_capacity() {
        let store = MemoryStore::connect(&Config::default().memory_capacity(1))
            .await
            .unwrap();
        assert!(store.is_empty());
        assert_eq!(
            claim_now(&store, "a", Duration::from_secs(60)).unwrap(),
            None
        );
        assert!(!store.is_empty());
        assert_eq!(store.len(), 1);
        let refused = claim_now(&store, "b", Duration::from_secs(60));
        assert_eq!(refused.unwrap_err().kind(), StoreErrorKind::Full);
        assert_eq!(store.describe(), "memory");
        assert!(format!("{store:?}").contains("capacity: 1"), "{store:?}");
        assert_eq!(MemoryStore::default().inner.capacity, DEFAULT_CAPACITY);
    }
}
