#![deny(warnings)]
//! `std::io::Result<T>` works: `io::Error` carries idempotency failures through
//! `From<idem::Error>`.

use idem::idempotent;

#[idempotent(key = path)]
async fn read_once(path: &str) -> std::io::Result<String> {
    Ok(path.to_owned())
}

fn main() {
    drop(read_once("a.txt"));
}
