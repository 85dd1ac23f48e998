// A plain return type becomes `Result<T, idem::Error>`, which no longer matches the trait.
use idem::idempotent;

trait Quotes {
    async fn quote(&self, id: u64) -> u64;
}

struct Desk;

impl Quotes for Desk {
    #[idempotent(key = id)]
    async fn quote(&self, id: u64) -> u64 {
        id
    }
}

fn main() {
    drop(Desk.quote(1));
}
