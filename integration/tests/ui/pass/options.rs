//! `store = ...` and duration expressions: the values are ordinary expressions, evaluated
//! before the body, from the arguments and the environment; `abandoned = "fail"` and
//! `"rerun"`.
#![deny(warnings)]

use std::time::Duration;

use idem::{MemoryStore, StoreHandle, idempotent};

const LEASE: Duration = Duration::from_secs(5);

struct Service {
    store: StoreHandle,
    ttl: Duration,
}

impl Service {
    #[idempotent(key = id, store = self.store.clone(), ttl = self.ttl, lease = LEASE)]
    async fn handle(&self, id: u64) -> u64 {
        id
    }
}

#[idempotent(key = id, store = MemoryStore::new(), wait = "0s", lease = "3ms", ttl = "1ms")]
async fn fresh_store(id: u64) -> u64 {
    id
}

#[idempotent(key = id, ttl = Duration::from_secs(60 * days), wait = Duration::ZERO)]
async fn computed(id: u64, days: u64) -> u64 {
    id + days
}

/// What a call does when an earlier attempt was abandoned: fail until an operator decides.
#[idempotent(key = id, abandoned = "fail", lease = "5s")]
async fn charge_once(id: u64) -> u64 {
    id
}

/// Or run again as the next attempt, which the body can read.
#[idempotent(key = id, abandoned = "rerun")]
async fn notify(id: u64) -> u32 {
    let attempt = idem::call_context().and_then(|call| call.attempt());
    attempt.unwrap_or(0) + u32::try_from(id).unwrap_or(0)
}

fn main() {
    drop(charge_once(1));
    drop(notify(1));
    let service = Service {
        store: MemoryStore::new().into(),
        ttl: Duration::from_secs(60),
    };
    drop(service.handle(1));
    drop(fresh_store(1));
    drop(computed(1, 2));
}
