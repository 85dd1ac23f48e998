use std::time::Duration;

use idem::idempotent;

#[idempotent(key = id, ttl = Duration::from_secs(60).as_secs())]
async fn charge(id: u64) -> u64 {
    id
}

fn main() {
    drop(charge(1));
}
