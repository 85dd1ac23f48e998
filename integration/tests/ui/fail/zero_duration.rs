use idem::idempotent;

#[idempotent(key = id, ttl = "0s")]
async fn charge(id: u64) -> u64 {
    id
}

#[idempotent(key = id, lease = "2ms")]
async fn refund(id: u64) -> u64 {
    id
}

fn main() {
    drop(charge(1));
    drop(refund(1));
}
