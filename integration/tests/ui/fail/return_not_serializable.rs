use idem::idempotent;

struct Receipt {
    id: u64,
}

#[derive(Debug)]
struct PaymentError;

impl From<idem::Error> for PaymentError {
    fn from(_: idem::Error) -> Self {
        PaymentError
    }
}

#[idempotent(key = id)]
async fn charge(id: u64) -> Result<Receipt, PaymentError> {
    Ok(Receipt { id })
}

#[idempotent(key = id)]
async fn quote(id: u64) -> Receipt {
    Receipt { id }
}

fn main() {
    drop(charge(1));
    drop(quote(1));
}
