//! [`MemoryStore`]: the embedded store, for one process.

use std::collections::HashMap;
use std::collections::hash_map::{Entry as Slot, RandomState};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{StoreError, StoreErrorKind};
use crate::record::{Claim, Record};
use crate::store::{Fence, Store, StoreFuture};

const SHARDS: usize = 16;

/// The default capacity, in records.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// An in-process [`Store`]: records in sharded hash maps, expiry by [`Instant`], waiters woken
/// by [`Notify`] (no polling).
///
/// Its guarantee holds within one process: two processes with a `MemoryStore` each run a key
/// once each. It holds at most `capacity` records; when full it first drops expired records and
/// then refuses new claims with a [`StoreErrorKind::Full`] error, so that a completed record
/// is never evicted early (which would let its key run again). Cloning it shares the records.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    hasher: RandomState,
    capacity: usize,
    /// Records held across all shards, expired ones not yet dropped included.
    records: AtomicUsize,
}

struct Entry {
    record: Record,
    expires_at: Instant,
    waiters: Option<Arc<Notify>>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    fn held_by(&self, claim: &Claim, now: Instant) -> bool {
        self.live(now) && matches!(&self.record, Record::InProgress(c) if c == claim)
    }

    fn wake(&mut self) {
        if let Some(waiters) = self.waiters.take() {
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

    /// A store holding at most `capacity` records (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                hasher: RandomState::new(),
                capacity: capacity.max(1),
                records: AtomicUsize::new(0),
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

    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, Entry>> {
        let index = self.inner.hasher.hash_one(key) as usize % SHARDS;
        lock(&self.inner.shards[index])
    }

    /// Applies a fenced change to the entry `claim` holds.
    fn fenced(
        &self,
        key: &str,
        claim: &Claim,
        change: impl FnOnce(Slot<'_, String, Entry>),
    ) -> Fence {
        let now = Instant::now();
        let mut shard = self.shard(key);
        let held = shard.get(key).is_some_and(|e| e.held_by(claim, now));
        if !held {
            return Fence::Lost;
        }
        change(shard.entry(key.to_owned()));
        Fence::Held
    }

    /// Claims `key` if it is free and the store has room.
    fn try_claim(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Option<Record>, StoreError> {
        let now = Instant::now();
        let mut shard = self.shard(key);
        match shard.get_mut(key) {
            Some(entry) if entry.live(now) => Ok(Some(match &entry.record {
                Record::Completed { payload, .. } => Record::Completed {
                    payload: payload.clone(),
                    expires_in: Some(entry.expires_at - now),
                },
                held => held.clone(),
            })),
            Some(expired) => {
                // The lease or ttl ended: the key is free, and whoever waited on the old
                // holder looks again.
                expired.wake();
                expired.record = Record::InProgress(claim.clone());
                expired.expires_at = now + lease;
                Ok(None)
            }
            None if self.len() >= self.inner.capacity => Err(self.full()),
            None => {
                self.inner.records.fetch_add(1, Ordering::Relaxed);
                let entry = Entry {
                    record: Record::InProgress(claim.clone()),
                    expires_at: now + lease,
                    waiters: None,
                };
                shard.insert(key.to_owned(), entry);
                Ok(None)
            }
        }
    }

    /// Drops every expired record, one shard at a time.
    fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.inner.shards {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|_, entry| {
                let live = entry.live(now);
                if !live {
                    entry.wake();
                }
                live
            });
            self.inner
                .records
                .fetch_sub(before - shard.len(), Ordering::Relaxed);
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
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Record>> {
        let result = match self.try_claim(key, claim, lease) {
            Err(full) if full.kind() == StoreErrorKind::Full => {
                self.sweep();
                self.try_claim(key, claim, lease)
            }
            result => result,
        };
        Box::pin(std::future::ready(result))
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        payload: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Fence> {
        let fence = self.fenced(key, claim, |slot| {
            if let Slot::Occupied(mut slot) = slot {
                let entry = slot.get_mut();
                entry.record = Record::Completed {
                    payload: payload.to_vec(),
                    expires_in: None,
                };
                entry.expires_at = Instant::now() + ttl;
                entry.wake();
            }
        });
        Box::pin(std::future::ready(Ok(fence)))
    }

    fn release<'a>(&'a self, key: &'a str, claim: &'a Claim) -> StoreFuture<'a, Fence> {
        let fence = self.fenced(key, claim, |slot| {
            if let Slot::Occupied(slot) = slot {
                slot.remove().wake();
                self.inner.records.fetch_sub(1, Ordering::Relaxed);
            }
        });
        Box::pin(std::future::ready(Ok(fence)))
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Fence> {
        let fence = self.fenced(key, claim, |slot| {
            if let Slot::Occupied(mut slot) = slot {
                slot.get_mut().expires_at = Instant::now() + lease;
            }
        });
        Box::pin(std::future::ready(Ok(fence)))
    }

    fn wait<'a>(
        &'a self,
        key: &'a str,
        holder: &'a Claim,
        timeout: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let (waiters, lease_end) = {
                let now = Instant::now();
                let mut shard = self.shard(key);
                match shard.get_mut(key) {
                    Some(entry) if entry.held_by(holder, now) => (
                        entry.waiters.get_or_insert_with(Default::default).clone(),
                        entry.expires_at,
                    ),
                    _ => return Ok(()),
                }
            };
            let woken = waiters.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            // The holder may have finished between the look above and `enable`: look again
            // now that no wake-up can be missed.
            let still_held = self
                .shard(key)
                .get(key)
                .is_some_and(|e| e.held_by(holder, Instant::now()));
            if still_held {
                let until = (Instant::now() + timeout).min(lease_end);
                let _ = tokio::time::timeout_at(until, woken).await;
            }
            Ok(())
        })
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.inner.capacity)
            .finish_non_exhaustive()
    }
}
