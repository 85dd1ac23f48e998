//! The function every row calls: a charge that returns a small receipt.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idem::idempotent;
use serde::{Deserialize, Serialize};

/// The retention of every record written by the benchmark.
pub const TTL: Duration = Duration::from_secs(3600);

/// A small struct: what "small struct" means in the targets (JSON: 64 bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub order: u64,
    pub amount_cents: u64,
    pub currency: String,
    pub approved: bool,
}

/// The body of the function.
#[inline(never)]
pub fn receipt(order: u64) -> Receipt {
    Receipt {
        order,
        amount_cents: 4_999,
        currency: "EUR".to_owned(),
        approved: true,
    }
}

/// The function called directly: the baseline of the in-process rows.
pub async fn direct(order: u64) -> Receipt {
    receipt(order)
}

/// The same function, idempotent.
#[idempotent(key = order, ttl = "1h", scope = "bench::charge")]
pub async fn charge(order: u64) -> Receipt {
    receipt(order)
}

/// The store key idem uses for `order` (default prefix; `::` in a scope is stored as `.`).
pub fn store_key(order: u64) -> String {
    format!("idem:bench.charge:{order}")
}

static NEXT: AtomicU64 = AtomicU64::new(1_000_000_000);

/// Makes [`fresh`] count from `base`: each process that makes first calls on one server
/// starts from its own, so that one never replays another's records.
#[allow(dead_code)] // used by the instruction counts' children only
pub fn fresh_from(base: u64) {
    NEXT.store(base, Ordering::Relaxed);
}

/// An order never used before in this run: a first call.
pub fn fresh() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
}

/// A pseudo-random number below `n` (xorshift64*): which of the live keys a call asks for.
pub fn below(n: u64) -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    })
}
