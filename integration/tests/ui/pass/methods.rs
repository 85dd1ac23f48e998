//! Methods taking `&self`, `&mut self` and `self`: the key reads the receiver before the body
//! takes it.
#![deny(warnings)]

use idem::idempotent;

#[derive(Debug)]
struct AppError;

impl From<idem::Error> for AppError {
    fn from(_: idem::Error) -> Self {
        AppError
    }
}

struct Account {
    id: u64,
    balance: i64,
}

impl Account {
    #[idempotent(key = self.id, ttl = "1h")]
    async fn balance(&self) -> Result<i64, AppError> {
        Ok(self.balance)
    }

    #[idempotent(key = (self.id, op), scope = "account::credit")]
    async fn credit(&mut self, op: &str, cents: i64) -> Result<i64, AppError> {
        self.balance += cents;
        Ok(self.balance)
    }

    #[idempotent(key = self.id)]
    async fn close(self) -> i64 {
        self.balance
    }
}

async fn use_them() -> Result<(), AppError> {
    let mut account = Account { id: 1, balance: 0 };
    account.credit("op-1", 100).await?;
    let _: i64 = account.balance().await?;
    let closed: Result<i64, idem::Error> = account.close().await;
    closed?;
    Ok(())
}

fn main() {
    drop(use_them());
}
