use idem::idempotent;

#[idempotent(key = id, ttl = "24 parsecs")]
async fn charge(id: u64) -> u64 {
    id
}

#[idempotent(key = id, lease = 30)]
async fn refund(id: u64) -> u64 {
    id
}

fn main() {
    drop(charge(1));
    drop(refund(1));
}
