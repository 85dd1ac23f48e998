//! The tokens of a [`MemoryStore`](super::memory::MemoryStore): a table of their own beside the
//! records (a token key never meets a call key), under one lock, so that issuing within a
//! bound and redeeming are each one atomic step.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Stats;
use super::token::{Issue, Redemption, TokenKey};

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

    pub(crate) fn issue(&self, key: &TokenKey, ttl: Duration, max_live: Option<u32>) -> Issue {
        let now = Instant::now();
        let mut table = self.lock();
        let table = &mut *table;
        if let Some(max) = max_live {
            let issued = table.bounded.entry(key.group().to_owned()).or_default();
            issued.retain(|expires_at| *expires_at > now);
            if issued.len() >= max as usize {
                return Issue::Full;
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
        if table.tokens.len() >= FIRST_SWEEP.max(2 * table.swept) {
            table.tokens.retain(|_, held| held.expires_at > now);
            table.bounded.retain(|_, issued| {
                issued.retain(|expires_at| *expires_at > now);
                !issued.is_empty()
            });
            table.swept = table.tokens.len();
        }
        Issue::Issued
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
