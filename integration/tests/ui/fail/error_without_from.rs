use idem::idempotent;

#[derive(Debug)]
struct PaymentError;

#[idempotent(key = id)]
async fn charge(id: u64) -> Result<u64, PaymentError> {
    Ok(id)
}

fn main() {
    drop(charge(1));
}
