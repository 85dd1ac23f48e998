//! Which statement a claim sends first, learnt from the store's own claims: shared by the
//! SQL stores whose claim is two statements in one order or the other.
//!
//! **MySQL** has no statement that inserts a row or returns the one in its place, so a claim is
//! a read and an insert. Reading first makes a replay one statement and a first call three (the
//! read, the insert, the completion); inserting first makes a first call two and a replay two
//! (the insert that meets the row, the read; an expired row is taken over after the read found
//! nothing). `BENCHMARKS.md`, "SQLite and MySQL", measures every shape, one-query ones included.
//!
//! **PostgreSQL** claims in one statement that reads the live row and inserts only without one
//! (a replay one statement, a first call two); that statement costs more on the server than a
//! bare read by key. Reading first makes a replay that bare read, and a first call three
//! statements (the read, the claim, the completion).
//!
//! Each order is the better one for the workload where most claims are of its kind, so a store
//! keeps a count of what its claims found and reads first only while claims that found a record
//! outnumber first calls enough: MySQL, whose insert-first replay costs a statement more, reads
//! first unless first calls clearly outnumber the rest; PostgreSQL, whose claim-first replay is
//! still one statement, claims first unless replays clearly outnumber first calls.
//!
//! Both orders are the same statements with the same outcomes (a read that finds nothing leads
//! to the claim; a claim that meets a live row reads it): only the number of statements
//! differs.

use std::sync::atomic::{AtomicI32, Ordering};

/// Which statement a claim of a SQL store sends first
/// ([`MySqlOptions::claim_order`](crate::store::mysql::MySqlOptions::claim_order),
/// [`PostgresOptions::claim_order`](crate::store::postgres::PostgresOptions::claim_order)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOrder {
    /// Learnt from the store's own claims (the default). A new store starts in the order that
    /// suits a mix of both kinds of claims (MySQL reads first, PostgreSQL claims first) and
    /// takes the other while claims of the other kind outnumber the rest by 32 or more of late:
    /// MySQL inserts first while first calls do, PostgreSQL reads first while replays and
    /// duplicates do.
    #[default]
    Learnt,
    /// Always read first: a replay 1 statement, a first call 3 (with the completion).
    ReadFirst,
    /// Always insert (claim) first. MySQL: a replay 2 statements (the insert that meets the
    /// row, the read), a first call 2 (with the completion). PostgreSQL: a replay 1 statement
    /// (the claim that reads the live row), a first call 2.
    InsertFirst,
}

/// How far the count goes either way: about as many recent claims as it remembers.
const BOUND: i32 = 64;

/// How far the count must lean away from a store's start before it takes the other order.
const LEAN: i32 = 32;

/// The order a store with a learnt order starts in, and keeps until its claims lean the other
/// way by [`LEAN`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Start {
    /// Reads first; inserts first while first calls outnumber the rest by [`LEAN`] (MySQL).
    #[default]
    ReadFirst,
    /// Claims first; reads first while the claims that found a record outnumber first calls by
    /// [`LEAN`] (PostgreSQL).
    InsertFirst,
}

/// The order of one store's claims: fixed, or learnt from a count of them, +1 for each that
/// found a record (a replay or a duplicate), −1 for each that found none (a first call),
/// bounded to ±[`BOUND`].
#[derive(Debug, Default)]
pub(crate) struct Order {
    chosen: ClaimOrder,
    start: Start,
    count: AtomicI32,
}

impl Order {
    /// The order `chosen`, starting from `start` when it is learnt.
    pub(crate) fn new(chosen: ClaimOrder, start: Start) -> Order {
        Order {
            chosen,
            start,
            count: AtomicI32::new(0),
        }
    }

    /// Whether the next claim inserts before it reads.
    pub(crate) fn insert_first(&self) -> bool {
        match self.chosen {
            ClaimOrder::Learnt => {
                let count = self.count.load(Ordering::Relaxed);
                match self.start {
                    Start::ReadFirst => count <= -LEAN,
                    Start::InsertFirst => count < LEAN,
                }
            }
            ClaimOrder::ReadFirst => false,
            ClaimOrder::InsertFirst => true,
        }
    }

    /// Counts one claim: whether it found a record.
    pub(crate) fn found(&self, record: bool) {
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
    fn a_store_that_starts_claiming_first_reads_first_once_replays_clearly_outnumber_the_rest() {
        let order = Order::new(ClaimOrder::Learnt, Start::InsertFirst);
        assert!(order.insert_first(), "a new store claims first");
        for _ in 0..31 {
            order.found(true);
        }
        assert!(order.insert_first(), "31 replays are not yet enough");
        order.found(true);
        assert!(!order.insert_first(), "32 replays more than first calls");
        for _ in 0..10_000 {
            order.found(true);
        }
        for _ in 0..32 {
            order.found(false);
        }
        assert!(!order.insert_first(), "64 − 32 is still at the threshold");
        order.found(false);
        assert!(
            order.insert_first(),
            "33 first calls after the bound claim first again"
        );
    }

    #[test]
    fn a_chosen_order_is_kept_whatever_the_claims_found() {
        for (chosen, inserts) in [
            (ClaimOrder::ReadFirst, false),
            (ClaimOrder::InsertFirst, true),
        ] {
            let order = Order::new(chosen, Start::ReadFirst);
            for found in [false, true] {
                for _ in 0..100 {
                    order.found(found);
                }
                assert_eq!(order.insert_first(), inserts, "{chosen:?}");
            }
        }
    }
}
