//! The tokens of a [`MemoryStore`](super::memory::MemoryStore): a table of their own beside the
//! records (a token key never meets a call key), under one lock, so that issuing within a
//! bound and redeeming are each one atomic step. It holds at most as many tokens as the store
//! holds records (its capacity), expired ones dropped first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Stats;
use super::token::{Issue, Redemption, TokenKey};
use crate::error::{StoreError, StoreErrorKind};

/// How many tokens the table holds before its first sweep of expired ones; later sweeps run
/// when it has doubled since the last, so each token costs O(1) sweeping.
const FIRST_SWEEP: usize = 1024;

#[derive(Default)]
pub(crate) struct TokenTable {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// Each token's expiry and whether it was redeemed, by record key.
    tokens: HashMap<String, Held>,
    /// The expiries of the tokens each group issued within a bound, by group key.
    bounded: HashMap<String, Vec<Instant>>,
    /// The size after the last sweep.
    swept: usize,
}

impl Table {
    /// Drops the expired tokens and the bounds' expired entries.
    fn sweep(&mut self, now: Instant) {
        self.tokens.retain(|_, held| held.expires_at > now);
        self.bounded.retain(|_, issued| {
            issued.retain(|expires_at| *expires_at > now);
            !issued.is_empty()
        });
        self.swept = self.tokens.len();
    }
}

struct Held {
    expires_at: Instant,
    redeemed: bool,
}

impl TokenTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every change is a single insert or assignment: a panic cannot leave one half made.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Issues `key` for `ttl`, within `max_live` when given; a table of `capacity` live tokens
    /// refuses it.
    pub(crate) fn issue(
        &self,
        key: &TokenKey,
        ttl: Duration,
        max_live: Option<u32>,
        capacity: usize,
    ) -> Result<Issue, StoreError> {
        let now = Instant::now();
        let mut table = self.lock();
        let table = &mut *table;
        if table.tokens.len() >= FIRST_SWEEP.max(2 * table.swept) || table.tokens.len() >= capacity
        {
            table.sweep(now);
            if table.tokens.len() >= capacity {
                return Err(StoreError::new(
                    StoreErrorKind::Full,
                    format!(
                        "the memory store holds {capacity} live tokens, its capacity; raise memory_capacity or shorten the tokens' ttl"
                    ),
                ));
            }
        }
        if let Some(max) = max_live {
            let issued = table.bounded.entry(key.group().to_owned()).or_default();
            issued.retain(|expires_at| *expires_at > now);
            if issued.len() >= max as usize {
                return Ok(Issue::Full);
            }
            issued.push(now + ttl);
        }
        table.tokens.insert(
            key.record().to_owned(),
            Held {
                expires_at: now + ttl,
                redeemed: false,
            },
        );
        Ok(Issue::Issued)
    }

    pub(crate) fn redeem(&self, key: &TokenKey, keep: Duration) -> Redemption {
        let now = Instant::now();
        let mut table = self.lock();
        match table.tokens.get_mut(key.record()) {
            Some(held) if held.expires_at > now => {
                if held.redeemed {
                    Redemption::Redeemed
                } else {
                    held.redeemed = true;
                    held.expires_at = now + keep;
                    Redemption::Valid
                }
            }
            _ => Redemption::Unknown,
        }
    }

    /// Counts the live tokens whose keys start with `prefix`.
    pub(crate) fn count(&self, prefix: &str, stats: &mut Stats) {
        let now = Instant::now();
        for (key, held) in &self.lock().tokens {
            if held.expires_at > now && key.starts_with(prefix) {
                stats.count_token(held.redeemed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paused time: a full table refuses a token until one expires, and the bound counts a
    /// scope's tokens until their ttl ends.
    #[tokio::test(start_paused = true)]
    async fn the_capacity_and_the_bound_hold_until_tokens_expire() {
        let table = TokenTable::default();
        let ttl = Duration::from_secs(10);
        let key = |n: u32| TokenKey::new("idem", "s", &format!("t{n}"));
        for n in 0..3 {
            assert_eq!(table.issue(&key(n), ttl, Some(2), 3).unwrap(), {
                if n < 2 { Issue::Issued } else { Issue::Full }
            });
        }
        table.issue(&key(3), ttl, None, 3).unwrap();
        let full = table.issue(&key(4), ttl, None, 3).unwrap_err();
        assert_eq!(full.kind(), StoreErrorKind::Full);
        assert_eq!(table.redeem(&key(0), ttl * 2), Redemption::Valid);
        tokio::time::advance(ttl).await;
        assert_eq!(table.redeem(&key(1), ttl), Redemption::Unknown, "expired");
        assert_eq!(table.redeem(&key(0), ttl), Redemption::Redeemed, "kept");
        assert_eq!(
            table.issue(&key(5), ttl, Some(2), 3).unwrap(),
            Issue::Issued
        );
        assert_eq!(
            table.issue(&key(6), ttl, Some(2), 3).unwrap(),
            Issue::Issued
        );
        let mut stats = Stats::new(0, 0, true);
        table.count("idem:", &mut stats);
        assert_eq!((stats.tokens, stats.redeemed_tokens), (2, 1));
    }
}
