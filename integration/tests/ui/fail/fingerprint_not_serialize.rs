use idem::idempotent;

struct Request {
    id: u64,
}

#[idempotent(key = req.id, fingerprint = req)]
async fn charge(req: &Request) -> u64 {
    req.id
}

fn main() {
    drop(charge(&Request { id: 1 }));
}
