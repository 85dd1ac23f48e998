use idem::idempotent;

#[derive(Debug)]
struct PaymentError;

impl From<idem::Error> for PaymentError {
    fn from(_: idem::Error) -> Self {
        PaymentError
    }
}

#[idempotent(key = id, cache_err = true)]
async fn charge(id: u64) -> Result<u64, PaymentError> {
    Ok(id)
}

fn main() {
    drop(charge(1));
}
