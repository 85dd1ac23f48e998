use idem::idempotent;

#[idempotent(key = id, cache_err = "permanent")]
async fn charge(id: u64) -> Result<u64, idem::Error> {
    Ok(id)
}

fn main() {
    drop(charge(1));
}
