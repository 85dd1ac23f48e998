use idem::idempotent;

#[idempotent(key = id, tll = "1h")]
async fn charge(id: u64) -> u64 {
    id
}

fn main() {
    drop(charge(1));
}
