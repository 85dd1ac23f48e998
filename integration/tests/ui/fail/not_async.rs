use idem::idempotent;

#[idempotent(key = id)]
fn charge(id: u64) -> u64 {
    id
}

fn main() {
    charge(1);
}
