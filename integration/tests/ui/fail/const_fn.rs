use idem::idempotent;

#[idempotent(key = id)]
const fn charge(id: u64) -> u64 {
    id
}

fn main() {
    charge(1);
}
