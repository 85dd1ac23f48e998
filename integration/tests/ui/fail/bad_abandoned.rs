use idem::idempotent;

#[idempotent(key = id, abandoned = "retry")]
async fn charge(id: u64) -> u64 {
    id
}

fn main() {
    drop(charge(1));
}
