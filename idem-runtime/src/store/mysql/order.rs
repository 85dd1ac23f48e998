//! Which statement a claim sends first, learnt from the store's own claims.
//!
//! MySQL has no statement that inserts a row or returns the one in its place, so a claim is a
//! read and an insert, in one order or the other (`BENCHMARKS.md`, "SQLite and MySQL", measures
//! every shape, one-query ones included). Reading first makes a replay one statement and a
//! first call three (the read, the insert, the completion); inserting first makes a first call
//! two and a replay two (the insert that meets the row, the read; an expired row is taken
//! over after the read found nothing). Each order is the better one for the workload where most claims are of its kind, and
//! both are equal near half and half; so the store keeps a count of what its claims found, and
//! inserts first while first calls clearly outnumber the rest.
//!
//! Both orders are the same statements with the same outcomes (the insert never waits on a
//! row lock; a read that finds nothing leads to the insert; an insert that meets a live row
//! leads to the read): only the number of statements differs.

use std::sync::atomic::{AtomicI32, Ordering};

/// Which statement a [`MySqlStore`](super::MySqlStore) claim sends first
/// ([`MySqlOptions::claim_order`](super::MySqlOptions::claim_order)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOrder {
    /// Learnt from the store's own claims (the default): read first, and insert first while
    /// first calls outnumber the claims that found a record by 32 or more of late.
    #[default]
    Learnt,
    /// Always read first: a replay 1 statement, a first call 3 (with the completion).
    ReadFirst,
    /// Always insert first: a replay 2 statements, a first call 2 (with the completion).
    InsertFirst,
}

/// How far the count goes either way: about as many recent claims as it remembers.
const BOUND: i32 = 64;

/// The count at or below which the store inserts first: first calls have outnumbered the
/// claims that found a record by this many lately. The default, and a store with few claims,
/// reads first (a replay then costs one statement, as the README's table says).
const INSERT_FIRST_AT: i32 = -32;

/// The order of one store's claims: fixed, or learnt from a count of them, +1 for each that
/// found a record (a replay or a duplicate), −1 for each that found none (a first call),
/// bounded to ±[`BOUND`].
#[derive(Debug, Default)]
pub(super) struct Order {
    chosen: ClaimOrder,
    count: AtomicI32,
}

impl Order {
    /// The order `chosen`.
    pub(super) fn new(chosen: ClaimOrder) -> Order {
        Order {
            chosen,
            count: AtomicI32::new(0),
        }
    }

    /// Whether the next claim inserts before it reads.
    pub(super) fn insert_first(&self) -> bool {
        match self.chosen {
            ClaimOrder::Learnt => self.count.load(Ordering::Relaxed) <= INSERT_FIRST_AT,
            ClaimOrder::ReadFirst => false,
            ClaimOrder::InsertFirst => true,
        }
    }

    /// Counts one claim: whether it found a record.
    pub(super) fn found(&self, record: bool) {
        if self.chosen != ClaimOrder::Learnt {
            return;
        }
        let step = if record { 1 } else { -1 };
        // Relaxed: a count, read as a hint; no other memory depends on it.
        let _ = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                Some((count + step).clamp(-BOUND, BOUND))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_reads_first_until_first_calls_clearly_outnumber_the_rest() {
        let order = Order::default();
        assert!(!order.insert_first(), "a new store reads first");
        for _ in 0..31 {
            order.found(false);
        }
        assert!(!order.insert_first(), "31 first calls are not yet enough");
        order.found(false);
        assert!(order.insert_first(), "32 first calls more than replays");
        // Bounded: after many first calls, a few dozen replays turn it back.
        for _ in 0..10_000 {
            order.found(false);
        }
        for _ in 0..32 {
            order.found(true);
        }
        assert!(order.insert_first(), "64 − 32 is still at the threshold");
        order.found(true);
        assert!(
            !order.insert_first(),
            "33 replays after the bound read first again"
        );
        for _ in 0..10_000 {
            order.found(true);
        }
        assert_eq!(order.count.load(Ordering::Relaxed), BOUND);
    }

    #[test]
    fn a_chosen_order_is_kept_whatever_the_claims_found() {
        for (chosen, inserts) in [
            (ClaimOrder::ReadFirst, false),
            (ClaimOrder::InsertFirst, true),
        ] {
            let order = Order::new(chosen);
            for found in [false, true] {
                for _ in 0..100 {
                    order.found(found);
                }
                assert_eq!(order.insert_first(), inserts, "{chosen:?}");
            }
        }
    }
}
