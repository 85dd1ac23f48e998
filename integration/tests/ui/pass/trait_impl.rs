//! A trait with `async fn`, implemented with the attribute; and an inherent impl block.
#![deny(warnings)]

use idem::idempotent;

#[derive(Debug, thiserror::Error)]
enum PayError {
    #[error(transparent)]
    Idem(#[from] idem::Error),
}

trait Payments {
    async fn charge(&self, order: u64, cents: u64) -> Result<String, PayError>;
    async fn refund(&self, order: u64) -> Result<(), idem::Error>;
}

struct Gateway;

impl Payments for Gateway {
    #[idempotent(key = order, ttl = "24h")]
    async fn charge(&self, order: u64, cents: u64) -> Result<String, PayError> {
        Ok(format!("{order}:{cents}"))
    }

    // A trait that declares `Result<T, idem::Error>` can be implemented by a plain function.
    #[idempotent(key = order)]
    async fn refund(&self, order: u64) {
        let _ = order;
    }
}

async fn pay<P: Payments>(payments: &P) -> Result<(), PayError> {
    payments.charge(1, 100).await?;
    payments.refund(1).await?;
    Ok(())
}

fn main() {
    drop(pay(&Gateway));
}
