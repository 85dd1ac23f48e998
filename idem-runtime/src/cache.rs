//! The local cache (L1): completed records kept in process, in front of any store, so that
//! replaying a recent result costs no round trip.
//!
//! Only completed records enter it, and each leaves it no later than the store's record
//! expires: its deadline is the instant *before* the command that reported the record was
//! sent, plus the lifetime the store gave the record (the ttl of this process's own
//! completion, or the remaining lifetime a claim reported). The store starts counting that
//! lifetime when it runs the command, which is later, so the store's record outlives the
//! cached copy. A record whose store does not report its remaining lifetime is not cached.
//!
//! Entries keep the envelope bytes as stored: a replay from the cache is decoded and checked
//! against the caller's fingerprint by the same code as a replay from the store, so a key
//! reused with another request is still [`Error::KeyMismatch`](crate::Error::KeyMismatch).
//!
//! The map is `quick_cache`'s (bounded, sharded, Clock-PRO eviction), chosen over `moka` for
//! the cost of a lookup, which has no clock reads or read log (BENCHMARKS.md has the counts).
//! Expiry is checked here, on the engine's clock, so the map needs no timers of its own.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, UnitWeighter};
use tokio::time::Instant;

/// No entry is kept longer than this, whatever the record's ttl: far beyond any useful
/// replay window, and well inside what `Instant` arithmetic can represent.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// The room made up front; the map grows from there up to its capacity as records come.
const FIRST_ROOM: usize = 4_096;

/// A bounded, concurrent map from store keys to completed records. Cloning it is cheap (one
/// reference count) and shares the entries.
#[derive(Clone)]
pub(crate) struct LocalCache(Arc<Shared>);

struct Shared {
    entries: Cache<String, Arc<Cached>>,
    capacity: usize,
}

/// One completed record, as the store holds it, and when the cached copy stops being served.
pub(crate) struct Cached {
    /// The encoded envelope of the result, checked to be UTF-8 (as every envelope is).
    pub(crate) payload: Box<str>,
    deadline: Instant,
}

impl LocalCache {
    /// A cache of at most `capacity` records: when full, the records read least recently and
    /// least often make room.
    pub(crate) fn new(capacity: usize) -> Self {
        LocalCache(Arc::new(Shared {
            entries: Cache::with(
                capacity.min(FIRST_ROOM),
                u64::try_from(capacity).unwrap_or(u64::MAX),
                UnitWeighter,
                DefaultHashBuilder::default(),
                DefaultLifecycle::default(),
            ),
            capacity,
        }))
    }

    /// The completed record of `key`, if it is cached and its deadline has not passed.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Cached>> {
        let cached = self.0.entries.get(key)?;
        let now = Instant::now();
        if now < cached.deadline {
            return Some(cached);
        }
        // Over: free its room now rather than when the cache is full (unless a newer copy of
        // the record took its place meanwhile).
        self.0
            .entries
            .remove_if(key, |newest| newest.deadline <= now);
        None
    }

    /// Drops the record of `key`, if it is cached.
    pub(crate) fn remove(&self, key: &str) {
        self.0.entries.remove(key);
    }

    /// Keeps the completed record of `key` until `sent + lifetime`, where `sent` is an instant
    /// taken before the store was asked for the record and `lifetime` is how long the store
    /// keeps it from when it ran the command.
    pub(crate) fn keep(&self, key: &str, payload: Vec<u8>, sent: Instant, lifetime: Duration) {
        // Stores count expiries in whole milliseconds (Redis `PX` drops the rest): never
        // count on the fraction.
        let lifetime = Duration::from_millis(
            u64::try_from(lifetime.min(LONGEST).as_millis()).unwrap_or(u64::MAX),
        );
        let deadline = sent + lifetime;
        if deadline <= Instant::now() {
            return;
        }
        // Not an envelope: left to the store, whose replay reports it.
        let Ok(payload) = String::from_utf8(payload) else {
            return;
        };
        self.0.entries.insert(
            key.to_owned(),
            Arc::new(Cached {
                payload: payload.into_boxed_str(),
                deadline,
            }),
        );
    }
}

impl fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCache")
            .field("capacity", &self.0.capacity)
            .field("entries", &self.0.entries.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_end_at_their_deadline() {
        let cache = LocalCache::new(10);
        let sent = Instant::now();
        cache.keep("k", b"payload".to_vec(), sent, Duration::from_millis(100));
        assert_eq!(&*cache.get("k").expect("cached").payload, "payload");
        assert!(cache.get("other").is_none());
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(
            cache.get("k").is_some(),
            "still within the record's lifetime"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cache.get("k").is_none(), "the record's lifetime is over");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_before_the_command_and_whole_milliseconds() {
        let cache = LocalCache::new(10);
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(40)).await;
        // Sent 40 ms ago with 50.9 ms to live: 10 ms are left, not 50.9.
        cache.keep("k", b"p".to_vec(), sent, Duration::from_micros(50_900));
        tokio::time::advance(Duration::from_millis(9)).await;
        assert!(cache.get("k").is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cache.get("k").is_none());
        // A record already over by the time it arrives is not kept at all.
        cache.keep("late", b"p".to_vec(), sent, Duration::from_millis(50));
        assert!(cache.get("late").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_record_replaces_the_older_one() {
        let cache = LocalCache::new(10);
        cache.keep(
            "k",
            b"old".to_vec(),
            Instant::now(),
            Duration::from_millis(10),
        );
        cache.keep(
            "k",
            b"new".to_vec(),
            Instant::now(),
            Duration::from_secs(60),
        );
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(&*cache.get("k").expect("the newer deadline").payload, "new");
    }

    #[tokio::test]
    async fn bytes_that_are_no_envelope_are_not_kept() {
        let cache = LocalCache::new(10);
        cache.keep(
            "k",
            b"\xff\xfe".to_vec(),
            Instant::now(),
            Duration::from_secs(60),
        );
        assert!(cache.get("k").is_none());
    }

    #[tokio::test]
    async fn huge_ttls_and_capacities_do_not_overflow() {
        let cache = LocalCache::new(usize::MAX);
        cache.keep("k", b"p".to_vec(), Instant::now(), Duration::MAX);
        assert!(cache.get("k").is_some());
    }

    #[tokio::test]
    async fn it_holds_no_more_than_its_capacity() {
        let cache = LocalCache::new(100);
        for n in 0..1_000 {
            cache.keep(
                &n.to_string(),
                vec![1],
                Instant::now(),
                Duration::from_secs(60),
            );
        }
        let held = (0..1_000)
            .filter(|n| cache.get(&n.to_string()).is_some())
            .count();
        assert!((1..=100).contains(&held), "{held} records held");
    }
}
