// A type error in the body is reported in the body, not on the attribute.
use idem::idempotent;

#[idempotent(key = id)]
async fn charge(id: u64) -> Result<u64, idem::Error> {
    let cents: u64 = "100";
    Ok(id + cents)
}

#[idempotent(key = id)]
async fn quote(id: u64) -> String {
    id
}

fn main() {
    drop(charge(1));
    drop(quote(1));
}
