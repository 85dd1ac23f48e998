//! `cache_err` as `true`, `false`, a typed closure, an untyped closure and a function.
#![deny(warnings)]

use idem::idempotent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[allow(dead_code)]
enum Declined {
    Card,
    Idem(String),
}

impl Declined {
    fn permanent(&self) -> bool {
        matches!(self, Declined::Card)
    }
}

impl From<idem::Error> for Declined {
    fn from(error: idem::Error) -> Self {
        Declined::Idem(error.to_string())
    }
}

fn is_permanent(error: &Declined) -> bool {
    error.permanent()
}

#[idempotent(key = id, cache_err = true)]
async fn always(id: u64) -> Result<u64, Declined> {
    Ok(id)
}

#[idempotent(key = id, cache_err = false)]
async fn never(id: u64) -> Result<u64, Declined> {
    Ok(id)
}

#[idempotent(key = id, cache_err = |e: &Declined| e.permanent())]
async fn typed(id: u64) -> Result<u64, Declined> {
    Ok(id)
}

#[idempotent(key = id, cache_err = |e| matches!(e, Declined::Card))]
async fn untyped(id: u64) -> Result<u64, Declined> {
    Ok(id)
}

#[idempotent(key = id, cache_err = is_permanent)]
async fn function(id: u64) -> Result<u64, Declined> {
    Err(Declined::Card).or(Ok(id))
}

fn main() {
    drop((always(1), never(1), typed(1), untyped(1), function(1)));
}
