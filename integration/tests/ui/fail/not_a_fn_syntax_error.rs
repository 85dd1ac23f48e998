use idem::idempotent;

#[idempotent(key = id)]
async fn charge(id: u64) -> u64 {
    let total = id +;
    total
}

fn main() {}
