use idem::idempotent;

#[idempotent(key = id)]
struct Charge {
    id: u64,
}

fn main() {
    let _ = Charge { id: 1 }.id;
}
