//! A plain return type `T` (and none at all) becomes `Result<T, idem::Error>`.
#![deny(warnings)]

use std::collections::BTreeMap;

use idem::idempotent;

#[idempotent(key = user)]
async fn count(user: u64) -> u64 {
    user * 2
}

#[idempotent(key = user, ttl = "1h")]
async fn notify(user: u64) {
    let _ = user;
}

#[idempotent(key = user)]
pub async fn lookup(user: u64) -> Option<BTreeMap<String, Vec<u8>>> {
    if user == 0 {
        return None;
    }
    Some(BTreeMap::new())
}

async fn callers() -> Result<(), idem::Error> {
    let n: Result<u64, idem::Error> = count(1).await;
    let unit: Result<(), idem::Error> = notify(1).await;
    let map = lookup(2).await?;
    let _ = (n?, unit?, map);
    Ok(())
}

fn main() {
    drop(callers());
}
