//! The calls of this process that wait for an in-flight call, and the calls this store holds.
//!
//! MySQL has no notifications: a waiter is woken by this store's own completion or release
//! of the key (the wake registry of `store/wake.rs`, by key), which covers every holder that
//! claimed through this store. A waiter of any other holder (another process, another store on
//! the same table) cannot be woken: it looks again every `poll_interval`. The store knows which
//! is which by the holder's token, kept here from its claim to its completion or release.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::record::Token;
use crate::store::wake::Registry;

/// A waiter's registration on a key; dropping it forgets the key when no one else waits.
pub(super) type Ticket = crate::store::wake::Ticket<Registry<()>>;

/// The waiters and holders of one store.
#[derive(Default)]
pub(super) struct Waiters {
    registry: Arc<Registry<()>>,
    /// The tokens of the claims this store made and has not ended.
    holding: Mutex<HashSet<Token>>,
}

impl Waiters {
    /// Registers a waiter on `key`. Enable a `notified()` of [`Ticket::wake`] before looking at
    /// the key, so that a completion after the look is not missed.
    pub(super) fn register(&self, key: &str) -> Ticket {
        Ticket::register(&self.registry, key.to_owned())
    }

    /// Wakes the waiters of `key`.
    pub(super) fn wake(&self, key: &str) {
        self.registry.lock().wake(key);
    }

    /// Notes that a claim with `token` is being made through this store, until the claim is
    /// [kept](Making::keep) or the returned guard dropped (the claim was not made, or the
    /// caller went away before it heard).
    pub(super) fn making(&self, token: Token) -> Making<'_> {
        self.holding().insert(token);
        Making {
            waiters: self,
            token,
            kept: false,
        }
    }

    /// Notes that the claim with `token` ended (or was never made).
    pub(super) fn end(&self, token: Token) {
        self.holding().remove(&token);
    }

    /// Whether the claim with `token` was made through this store: its end wakes the waiters.
    pub(super) fn holds(&self, token: Token) -> bool {
        self.holding().contains(&token)
    }

    fn holding(&self) -> std::sync::MutexGuard<'_, HashSet<Token>> {
        // A set of tokens is consistent after any panic.
        self.holding.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A claim being made through the store: noted as held while it lives, and after
/// [`keep`](Making::keep).
pub(super) struct Making<'a> {
    waiters: &'a Waiters,
    token: Token,
    kept: bool,
}

impl Making<'_> {
    /// The claim was made: it stays noted until [`Waiters::end`].
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.waiters.end(self.token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_held_from_its_start_to_its_end() {
        let waiters = Waiters::default();
        let token = Token::random();
        assert!(!waiters.holds(token));
        let making = waiters.making(token);
        assert!(waiters.holds(token), "while the claim is made");
        making.keep();
        assert!(waiters.holds(token), "once it was made");
        waiters.end(token);
        assert!(!waiters.holds(token));
    }

    #[test]
    fn a_claim_not_made_is_not_held() {
        let waiters = Waiters::default();
        let token = Token::random();
        drop(waiters.making(token));
        assert!(!waiters.holds(token));
    }
}
