// The function is still emitted beside the error: `main` finds it, nothing cascades.
use idem::idempotent;

#[idempotent(ttl = "1h")]
async fn charge(id: u64) -> u64 {
    id
}

fn main() {
    drop(charge(1));
}
