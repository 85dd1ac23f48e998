// #[async_trait] on the impl rewrites each `async fn` before #[idempotent] sees it.
use async_trait::async_trait;
use idem::idempotent;

#[async_trait]
trait Quotes {
    async fn quote(&self, id: u64) -> Result<u64, idem::Error>;
}

struct Desk;

#[async_trait]
impl Quotes for Desk {
    #[idempotent(key = id)]
    async fn quote(&self, id: u64) -> Result<u64, idem::Error> {
        Ok(id)
    }
}

fn main() {
    drop(Desk.quote(1));
}
