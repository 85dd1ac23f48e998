//! Which statement a claim sends first, learnt from the store's own claims: shared by the
//! SQL stores, whose claim is a read and an insert in one order or the other, or (PostgreSQL)
//! one statement that does both.
//!
//! **MySQL** has no statement that inserts a row or returns the one in its place, so a claim is
//! a read and an insert. Reading first makes a replay one statement and a first call three (the
//! read, the insert, the completion); inserting first makes a first call two and a replay two
//! (the insert that meets the row, the read; an expired row is taken over after the read found
//! nothing). `BENCHMARKS.md`, "SQLite and MySQL", measures every shape, one-query ones included.
//!
//! **PostgreSQL** has all three. Its one-statement claim reads the live row and inserts only
//! without one (a replay one statement, a first call two), but costs the server more than
//! either part alone: more than a bare read by key for a replay, more than a bare upsert for a
//! first call. Reading first makes a replay that bare read and a first call three statements;
//! inserting first (the upsert that takes an absent or expired key, then the read when it met a
//! live row) makes a first call the upsert and the completion, a replay two statements.
//!
//! Each order is the better one for the workload where most claims are of its kind, so a store
//! keeps a count of what its claims found: it reads first while claims that found a record
//! outnumber first calls by [`LEAN`], inserts first while first calls outnumber the rest by as
//! much, and sends its own middle order in between (MySQL reads first, PostgreSQL sends its one
//! statement, whose replay and first call are both one statement short of the worst).
//!
//! Every order is the same statements with the same outcomes (a read that finds nothing leads
//! to the insert; an insert that meets a live row reads it): only the number of statements
//! differs.

use std::sync::atomic::{AtomicI32, Ordering};

/// Which statement a claim of a SQL store sends first
/// ([`MySqlOptions::claim_order`](crate::store::mysql::MySqlOptions::claim_order),
/// [`PostgresOptions::claim_order`](crate::store::postgres::PostgresOptions::claim_order)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOrder {
    /// Learnt from the store's own claims (the default). A store reads first while claims that
    /// found a record (replays and duplicates) outnumber first calls by 32 or more of late,
    /// inserts first while first calls outnumber the rest as much, and otherwise sends the
    /// order that suits a mix of both: MySQL reads first, PostgreSQL sends
    /// [`OneStatement`](ClaimOrder::OneStatement).
    #[default]
    Learnt,
    /// Always read first: a replay 1 statement, a first call 3 (with the completion).
    ReadFirst,
    /// Always insert (claim) first, then read the live row the insert met: a first call 2
    /// statements (with the completion), a replay 2 (the insert that meets the row, the read).
    InsertFirst,
    /// PostgreSQL: always the one statement that claims the key or reads its live row: a
    /// replay 1 statement, a first call 2 (with the completion); each costs the server more
    /// than the bare read or the bare insert. MySQL has no such statement and reads first.
    OneStatement,
}

/// What a claim sends first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum First {
    /// A read of the live row; the insert follows when it finds none.
    Read,
    /// The insert; a read of the live row follows when it meets one.
    Insert,
    /// PostgreSQL's one statement that claims or reads.
    OneStatement,
}

/// How far the count goes either way: about as many recent claims as it remembers.
const BOUND: i32 = 64;

/// How far the count must lean away from a store's start before it takes the other order.
const LEAN: i32 = 32;

/// The order a store with a learnt order sends while neither kind of claim clearly
/// outnumbers the other (and a new store starts in).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Start {
    /// Reads first (MySQL, which has no one-statement claim).
    #[default]
    ReadFirst,
    /// The one statement that claims or reads (PostgreSQL).
    OneStatement,
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
    /// The order `chosen`, in `start` while a learnt count leans neither way.
    pub(crate) fn new(chosen: ClaimOrder, start: Start) -> Order {
        Order {
            chosen,
            start,
            count: AtomicI32::new(0),
        }
    }

    /// What the next claim sends first.
    pub(crate) fn first(&self) -> First {
        let middle = match self.start {
            Start::ReadFirst => First::Read,
            Start::OneStatement => First::OneStatement,
        };
        match self.chosen {
            ClaimOrder::Learnt => match self.count.load(Ordering::Relaxed) {
                count if count >= LEAN => First::Read,
                count if count <= -LEAN => First::Insert,
                _ => middle,
            },
            ClaimOrder::ReadFirst => First::Read,
            ClaimOrder::InsertFirst => First::Insert,
            ClaimOrder::OneStatement => middle,
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
        assert_eq!(order.first(), First::Read, "a new store reads first");
        for _ in 0..31 {
            order.found(false);
        }
        assert_eq!(
            order.first(),
            First::Read,
            "31 first calls are not yet enough"
        );
        order.found(false);
        assert_eq!(
            order.first(),
            First::Insert,
            "32 first calls more than replays"
        );
        // Bounded: after many first calls, a few dozen replays turn it back.
        for _ in 0..10_000 {
            order.found(false);
        }
        for _ in 0..32 {
            order.found(true);
        }
        assert_eq!(
            order.first(),
            First::Insert,
            "64 − 32 is still at the threshold"
        );
        order.found(true);
        assert_eq!(
            order.first(),
            First::Read,
            "33 replays after the bound read first again"
        );
        for _ in 0..10_000 {
            order.found(true);
        }
        assert_eq!(order.count.load(Ordering::Relaxed), BOUND);
        assert_eq!(order.first(), First::Read, "many replays read first");
    }

    #[test]
    fn a_store_with_a_one_statement_claim_sends_it_while_neither_kind_clearly_outnumbers() {
        let order = Order::new(ClaimOrder::Learnt, Start::OneStatement);
        assert_eq!(order.first(), First::OneStatement, "a new store");
        for _ in 0..31 {
            order.found(true);
        }
        assert_eq!(
            order.first(),
            First::OneStatement,
            "31 replays are not yet enough"
        );
        order.found(true);
        assert_eq!(
            order.first(),
            First::Read,
            "32 replays more than first calls"
        );
        for _ in 0..10_000 {
            order.found(true);
        }
        for _ in 0..32 {
            order.found(false);
        }
        assert_eq!(
            order.first(),
            First::Read,
            "64 − 32 is still at the threshold"
        );
        order.found(false);
        assert_eq!(
            order.first(),
            First::OneStatement,
            "33 first calls after the bound: a mix again"
        );
        for _ in 0..63 {
            order.found(false);
        }
        assert_eq!(order.count.load(Ordering::Relaxed), -32);
        assert_eq!(
            order.first(),
            First::Insert,
            "32 first calls more than replays"
        );
        order.found(true);
        assert_eq!(order.first(), First::OneStatement, "a mix again");
    }

    #[test]
    fn a_chosen_order_is_kept_whatever_the_claims_found() {
        for start in [Start::ReadFirst, Start::OneStatement] {
            let middle = match start {
                Start::ReadFirst => First::Read,
                Start::OneStatement => First::OneStatement,
            };
            for (chosen, first) in [
                (ClaimOrder::ReadFirst, First::Read),
                (ClaimOrder::InsertFirst, First::Insert),
                (ClaimOrder::OneStatement, middle),
            ] {
                let order = Order::new(chosen, start);
                for found in [false, true] {
                    for _ in 0..100 {
                        order.found(found);
                    }
                    assert_eq!(order.first(), first, "{chosen:?} on {start:?}");
                }
            }
        }
    }
}
