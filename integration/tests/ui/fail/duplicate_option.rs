use idem::idempotent;

#[idempotent(key = id, ttl = "1h", lease = "30s", ttl = "2h")]
async fn charge(id: u64) -> u64 {
    id
}

fn main() {
    drop(charge(1));
}
