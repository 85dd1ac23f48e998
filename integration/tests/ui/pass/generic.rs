//! Generic functions keep their parameters, bounds and where clauses.
#![deny(warnings)]

use std::fmt::Display;

use idem::idempotent;
use serde::Serialize;
use serde::de::DeserializeOwned;

trait Source {
    type Error: From<idem::Error>;
    fn load<T: DeserializeOwned>(&self, id: &str) -> Result<T, Self::Error>;
}

#[idempotent(key = id, ttl = "10m")]
async fn load<'a, T, S: Source + ?Sized>(source: &'a S, id: &'a str) -> Result<T, S::Error>
where
    T: Serialize + DeserializeOwned + Send,
{
    source.load(id)
}

#[idempotent(key = format!("{prefix}-{n}"))]
async fn echo<K: Display, const N: usize>(prefix: K, n: usize) -> Vec<u8> {
    let _ = prefix;
    vec![0; N + n]
}

struct Null;

impl Source for Null {
    type Error = idem::Error;
    fn load<T: DeserializeOwned>(&self, id: &str) -> Result<T, idem::Error> {
        Ok(serde_json::from_str(id).unwrap())
    }
}

fn main() {
    drop(load::<Vec<u8>, Null>(&Null, "[]"));
    drop(echo::<_, 4>("x", 1));
}
