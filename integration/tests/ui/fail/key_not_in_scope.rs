use idem::idempotent;

struct Request {
    id: u64,
}

#[idempotent(key = request.id)]
async fn charge(req: &Request) -> u64 {
    req.id
}

fn main() {
    drop(charge(&Request { id: 1 }));
}
